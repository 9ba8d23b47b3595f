"""SOAR on one GPU (arXiv 2601.18778): a teacher writes problems, a student learns from them by RL,
and the teacher is rewarded by the student's measured improvement on problems the base model
never solves. Everything runs in one process on one shared base model with two LoRA adapters.

    python train.py                      # the built-in tiny world: SOAR vs baselines on a CPU
    python train.py --model small        # Qwen2.5-1.5B-Instruct, 4-bit, needs a built hard set
    python train.py --resume runs/tiny   # continue a run from its last complete step
    python report.py runs/tiny           # plots and a Markdown report of a run

Read top to bottom: one outer step as the paper's five steps (the teacher writes datasets ->
Q_R and the baseline -> each dataset's reward -> promotion -> the teacher's update), the pieces
of those steps, a teacher's whole run, the methods of one seed, then main. Every setting is a
flag of config.py; the inner loop (student RLOO) is in student.py, the teacher's sampling and
update in teacher.py, the answer checker and pass@k in rewards.py, the students trained from
scratch and pass@k in evaluate.py, the statistics and the report in summary.py.
"""
import dataclasses
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from tqdm import tqdm

from config import TEACHER_OF, Config, parse_config, student_jobs
from data.benchmarks import load_problems
from data.hard import hard_set_paths
from evaluate import evaluate, sample_teacher_questions, train_fresh_students
from models import (ModelUnavailable, adapter_state, adapter_weights, load_adapter_state,
                    load_model, make_optimizer, resolve_model, save_adapter)
from parallel import Processes, World, chunks, generators, launch, launched
from rewards import learnability
from run_dir import (append_jsonl, atomic_save, atomic_write_text, external_logger,
                     forget_unfinished_steps, load_checkpoint, prepare_run_dir, timed, write_jsonl,
                     write_nothing)
from student import answer, correct_counts, greedy_correct, has_solutions, progress_measures, train_student
from summary import print_summary, summarize, write_report
from teacher import by_length, question_diversity, sample_pairs, split_datasets, teacher_update
from tiny.model import tiny_hard_set, tiny_model_path
from tiny.world import classify, question_quality


# ---- the outer loop: one teacher step, the paper's five steps ------------------------------------

def outer_step(w: World, method: str, seed: int, step: int, state: dict, optimizer, scheduler,
               job: Path) -> dict | None:
    """One step of a teacher, SOAR's ("soar", rewarded by the student copies' progress) or the
    intrinsic one, on the live adapters (the teacher, the baseline student): updates `state`
    (teacher, baseline, moving window, PQ) and returns the step's metrics row (None on all but
    the main process)."""
    times, unit = {}, (seed, method, step)
    # 1. g*n valid (question, answer) pairs from the teacher, split into g datasets
    pairs, drawn, datasets = write_datasets(w, unit, times)
    # 2. Q_R, a fresh draw of the hard train set, and the baseline student's standing on it
    q_r = generators(*unit, "q_r")[1].sample(w.hard_train, min(w.cfg.q_r, len(w.hard_train)))
    baseline = baseline_standing(w, method, q_r, unit, times)
    step_log = {"pairs": pairs, "drawn": drawn, "baseline_acc": baseline["greedy"], "times": times}
    if datasets is None:
        w.say(f"step {step}: only {len(pairs)} valid teacher pairs; no update this step")
        scheduler.step()
        update = {"loss": None, "update": "no valid pairs"}
        step_log |= {"rewards": [], "moving_avg": None, "promoted": None, "update": update}
    else:
        # 3. each dataset's reward: SOAR's from r student copies trained on it, or the intrinsic one
        if method == "soar":
            steps = w.cfg.inner_steps + (w.cfg.promotion_extra_steps if state["n_promotions"] else 0)
            rewards, copy_rewards, copies, step_log["student_updates"] = grounded_rewards(
                w, datasets, q_r, state["baseline"], baseline, steps, unit, times)
            step_log["copy_rewards"] = copy_rewards | {"baseline": baseline}
        else:
            rewards, copies = intrinsic_rewards(w, datasets, unit, times), {}
        dataset_rewards = [statistics.mean(r) for r in rewards]  # R_k: the mean over its copies
        step_log["rewards"] = dataset_rewards
        # 4. promotion: the median copy of the best dataset becomes the baseline, X_k* joins PQ
        state["window"], step_log["moving_avg"], due = update_window(
            state["window"], statistics.mean(dataset_rewards), w.cfg.ma_window, w.cfg.tau)
        step_log["promoted"] = promote(w, state, rewards, copies, datasets, step) if (
            method == "soar" and due) else None
        # 5. the teacher's RLOO update across the g datasets
        step_log["update_rewards"] = teacher_rewards(w.cfg, dataset_rewards, unit)
        with timed(times, "train"):
            step_log["update"] = teacher_update(
                w.model, w.tokenizer, optimizer, scheduler, datasets, step_log["update_rewards"],
                w.cfg) if w.procs.main else {}
    state["teacher"] = adapter_state(w.model, "teacher")
    state["step"] = step + 1
    if not w.procs.main:
        return None
    for record in drawn:
        append_jsonl(job / "questions.jsonl", {"step": step, **record})
    if w.cfg.quality_samples:
        step_log["policy_quality"] = policy_sample(w, unit, step, job, times)
    return metrics_row(w.cfg, method, seed, step, state, step_log)


def write_datasets(w: World, unit: tuple, times: dict):
    """(valid pairs, a record of every sample drawn, the g datasets or None with fewer pairs than
    datasets), sampled by the main process and handed to every process."""
    pairs, drawn = w.procs.on_main(lambda: sample_pairs(
        w.model, w.tokenizer, w.cfg.g * w.cfg.n, w.cfg, generators(*unit, "teacher")[0], times))
    return pairs, drawn, split_datasets(pairs, w.cfg.g)


def baseline_standing(w: World, method: str, q_r: list[dict], unit: tuple, times: dict) -> dict:
    """The baseline student's greedy accuracy on Q_R, spread over the processes, and for SOAR's
    teacher its standing by every other measure (each process takes those itself: the same draws
    give the same value)."""
    greedy = spread_greedy_accuracy(w, q_r, times)
    if method != "soar":
        return {"greedy": greedy}
    return progress_measures(w.model, w.tokenizer, q_r, w.cfg, generators(*unit, "measure")[0],
                             times, known={"greedy": greedy})


def grounded_rewards(w: World, datasets, q_r, baseline, baseline_measures: dict, steps: int, unit,
                     times):
    """R_kj = the student's standing on Q_R after training copy j on X_k, minus the baseline's,
    by --reward-measure (greedy accuracy, as the paper, sampled accuracy, or the log probability
    of Q_R's reference solutions); every measure of MEASURES is logged.

    The g x r copies are spread over the processes; each starts from the baseline student. Its
    randomness comes from its own identity: unit + (k, j), or with --copy-streams common unit +
    j alone, so that copy j of every dataset draws the same numbers (each dataset arranged by
    question length, so that like draws meet like questions) and the chance they share cancels
    in the teacher's RLOO differences. Returns (rewards [g][r], every measure's rewards
    {measure: [g][r]}, the copies this process trained {(k, j): adapter state}, how many student
    updates were applied, had no signal (every answer scored the same) or were dropped as
    non-finite).
    """
    cfg, common = w.cfg, w.cfg.copy_streams == "common"
    copies = {}

    def train_copy(kj):
        k, j = kj
        identity = (*unit, "copy", j) if common else (*unit, k, j)
        data = by_length(datasets[k]) if common else datasets[k]
        with adapter_weights(w.model, "student", baseline):
            generator, rng = generators(*identity)
            history = train_student(w.model, w.tokenizer, data, steps, cfg, generator, rng, times)
            measures = progress_measures(w.model, w.tokenizer, q_r, cfg,
                                         generators(*identity, "measure")[0], times)
            copies[kj] = adapter_state(w.model, "student")
        return ({m: v - baseline_measures[m] for m, v in measures.items()},
                Counter(h["update"] for h in history))

    units = [(k, j) for k in range(len(datasets)) for j in range(cfg.r)]
    results = w.procs.map(train_copy, units)
    by_measure = {m: [[results[k * cfg.r + j][0][m] for j in range(cfg.r)]
                      for k in range(len(datasets))] for m in baseline_measures}
    return (by_measure[cfg.reward_measure], by_measure, copies,
            dict(sum((c for _, c in results), Counter())))


def intrinsic_rewards(w: World, datasets, unit, times) -> list[list[float]]:
    """Intrinsic-T's "learnability": per question 1 - s if the baseline student's success rate s
    is above 0, else 0; a dataset's reward [R_k] is the mean. No student is trained."""
    def learnability_of(k):
        with timed(times, "eval"):
            counts = correct_counts(w.model, w.tokenizer, datasets[k], w.cfg.intrinsic_samples,
                                    w.cfg, generators(*unit, k)[0])
        return statistics.mean(learnability(c / w.cfg.intrinsic_samples) for c in counts)

    return [[r] for r in w.procs.map(learnability_of, list(range(len(datasets))))]


def spread_greedy_accuracy(w: World, problems: list[dict], times: dict) -> float:
    """Greedy accuracy with the problems split over the processes, one sampler batch a unit."""
    correct = w.procs.map(lambda part: greedy_correct(w.model, w.tokenizer, part, w.cfg, times),
                          chunks(problems, w.cfg.sample_batch))
    correct = [c for part in correct for c in part]
    return sum(correct) / len(correct)


def update_window(window: list[float], mean_reward: float, size: int, tau: float):
    """Moving average of the teacher reward; a promotion is due when a full window clears tau."""
    window = (window + [mean_reward])[-size:]
    moving_avg = statistics.mean(window)
    return window, moving_avg, len(window) == size and moving_avg > tau


def best_copy(rewards: list[list[float]]) -> tuple[int, int]:
    """The best dataset k* (first among ties) and, of its copies, the one with the median reward."""
    means = [statistics.mean(r) for r in rewards]
    best = max(range(len(means)), key=means.__getitem__)
    order = sorted(range(len(rewards[best])), key=rewards[best].__getitem__)
    return best, order[(len(order) - 1) // 2]


def promote(w: World, state: dict, rewards, copies: dict, datasets, step: int) -> int:
    """The median copy of the best dataset becomes the baseline student (sent from the process
    that trained it) and that dataset joins PQ; returns the dataset's index."""
    best, copy = best_copy(rewards)
    state["baseline"] = w.procs.broadcast(copies.get((best, copy)),
                                          src=w.procs.owner(best * w.cfg.r + copy))
    load_adapter_state(w.model, "student", state["baseline"])
    state["promoted_questions"] += [{"problem": p["problem"], "answer": p["answer"], "step": step}
                                    for p in datasets[best]]
    state["n_promotions"] += 1
    state["window"] = []  # later rewards are measured against the new baseline: a fresh average
    return best


def teacher_rewards(cfg: Config, dataset_rewards: list[float], unit: tuple) -> list[float]:
    """What the teacher's update is given: each dataset's reward, or with --teacher-rewards
    shuffled the same rewards permuted across the datasets (the control)."""
    if cfg.teacher_rewards == "measured":
        return dataset_rewards
    order = torch.randperm(len(dataset_rewards), generator=generators(*unit, "shuffle")[0])
    return [dataset_rewards[i] for i in order.tolist()]


def policy_sample(w: World, unit: tuple, step: int, job: Path, times: dict) -> dict:
    """Tiny world: what the teacher writes now, measured on a larger sample of its questions from
    its own draws, graded exactly and never trained on. The questions are kept with their grades
    (policy_questions.jsonl), so that the trend the summary reports can be recounted from text."""
    with timed(times, "quality_sample"):
        sampled, _ = sample_pairs(w.model, w.tokenizer, w.cfg.quality_samples, w.cfg,
                                  generators(*unit, "quality")[0], {})
    for pair in sampled:
        append_jsonl(job / "policy_questions.jsonl", {
            "step": step, "problem": pair["problem"], "answer": pair["answer"],
            **classify(pair["problem"], pair["answer"])})
    return question_quality(sampled)


def metrics_row(cfg: Config, method: str, seed: int, step: int, state: dict, log: dict) -> dict:
    """The step's line of metrics.jsonl."""
    pairs, rewards, update = log["pairs"], log["rewards"], log["update"]
    row = {"method": method, "seed": seed, "step": step, "dataset_rewards": rewards,
           "mean_reward": statistics.mean(rewards) if rewards else None,
           "moving_avg": log["moving_avg"], "promoted": log["promoted"] is not None,
           "promoted_dataset": log["promoted"], "n_promotions": state["n_promotions"],
           "n_promoted_questions": len(state["promoted_questions"]),
           "baseline_acc": log["baseline_acc"], "valid_rate": len(pairs) / len(log["drawn"]),
           "teacher_loss": update["loss"], "teacher_update": update["update"],
           "student_updates": log.get("student_updates", {}),
           "diversity": question_diversity([p["problem"] for p in pairs]),
           "times": {k: round(v, 3) for k, v in log["times"].items()}}
    if pairs:
        row |= {"sample_question": pairs[0]["problem"], "sample_answer": pairs[0]["answer"]}
    if cfg.teacher_rewards == "shuffled":
        row["update_rewards"] = log.get("update_rewards", [])
    if "copy_rewards" in log:  # the copies' rewards by every measure, the chosen one or not
        row["copy_rewards"] = log["copy_rewards"]
    if cfg.model == "tiny" and pairs:  # the tiny world grades any question exactly
        row["quality"] = question_quality(pairs)
    if "policy_quality" in log:
        row["policy_quality"] = log["policy_quality"]
    return row


def run_teacher(w: World, method: str, seed: int, job: Path) -> dict:
    """SOAR's outer loop (method "soar"), or the same loop with the intrinsic reward ("intrinsic").

    The teacher lives on the main process (it samples, is updated, is saved); the student work of
    each step is spread over all processes. Every step is logged and checkpointed, and a run
    resumes from its last complete step. Returns the final state: teacher and baseline-student
    adapters and the promoted questions (the teacher's is current on the main process only).
    """
    cfg, model, procs = w.cfg, w.model, w.procs
    optimizer, scheduler = make_optimizer(model, "teacher", cfg.teacher_lr, cfg.outer_steps,
                                          cfg.teacher_warmup)
    state = {"step": 0, "teacher": w.fresh_teacher, "baseline": w.fresh_student, "window": [],
             "n_promotions": 0, "promoted_questions": []}
    ckpt = procs.on_main(lambda: load_checkpoint(job / "checkpoint.pt"))
    if ckpt is not None:
        state = ckpt["state"]
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
    forget_unfinished_steps(job, state["step"])

    bar = w.bar(iterable=range(state["step"], cfg.outer_steps), desc=f"seed {seed} {method} teacher",
                initial=state["step"], total=cfg.outer_steps)
    with adapter_weights(model, "teacher", state["teacher"]), \
            adapter_weights(model, "student", state["baseline"]):
        for step in bar:
            row = outer_step(w, method, seed, step, state, optimizer, scheduler, job)
            if procs.main:
                append_jsonl(job / "metrics.jsonl", row)
                w.log_external(f"seed{seed}/{method}", row)
                atomic_save({"state": state, "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict()}, job / "checkpoint.pt")
                log_step(row, bar)
                if cfg.sample_every and step % cfg.sample_every == 0 and "sample_question" in row:
                    show_sample(w, row)

    write_jsonl(job / "promoted_questions.jsonl", state["promoted_questions"])
    if procs.main:  # PEFT format, one folder per role: adapters/teacher and adapters/student (the baseline)
        save_adapter(model, "teacher", state["teacher"], job / "adapters")
        save_adapter(model, "student", state["baseline"], job / "adapters")
    return state


def log_step(row: dict, bar) -> None:
    fmt = lambda x: "  -  " if x is None else f"{x:+.3f}"  # noqa: E731
    t = row["times"]
    bar.write(f"[{row['method']} s{row['seed']} step {row['step']:3d}] reward {fmt(row['mean_reward'])} "
              f"ma {fmt(row['moving_avg'])} valid {row['valid_rate']:.2f} "
              f"base_acc {row['baseline_acc']:.3f} promoted {'YES' if row['promoted'] else 'no '} "
              f"(total {row['n_promotions']}) | gen {t.get('teacher_sample', 0) + t.get('student_sample', 0):.1f}s "
              f"check {t.get('check', 0):.1f}s train {t.get('train', 0):.1f}s eval {t.get('eval', 0):.1f}s")
    updates = row["student_updates"]
    if updates:
        bar.write(f"  updates: student {updates.get('applied', 0)} of {sum(updates.values())} applied "
                  f"({updates.get('no signal', 0)} without signal, {updates.get('non-finite', 0)} "
                  f"non-finite); teacher {row['teacher_update']}")
    elif row["teacher_update"] != "applied":
        bar.write(f"  updates: teacher {row['teacher_update']}")


def show_sample(w: World, row: dict) -> None:
    """The step's first teacher question and the baseline student's greedy answer to it."""
    pair = {"problem": row["sample_question"], "answer": row["sample_answer"]}
    response = answer(w.model, w.tokenizer, [pair], w.cfg, n=1, temperature=0.0)[0]
    tqdm.write(f"  teacher Q: {pair['problem'][:300]!r} A: {pair['answer']!r}\n"
               f"  student:   {response[:300]!r}")


# ---- the methods of one seed --------------------------------------------------------------------

def run_seed(w: World, seed: int, run_dir: Path) -> None:
    """Every requested method for one seed; each job writes its result.json in the seed's folder."""
    cfg = w.cfg
    methods = cfg.methods.split(",")
    seed_dir = run_dir / f"seed{seed}"

    hard = [(w.hard_train, cfg.fresh_steps)]
    jobs = {}  # {job folder: the (questions, steps) phases of its fresh student}
    if "base" in methods:
        evaluate(w, None, "base", seed, seed_dir / "base")
    if any(TEACHER_OF.get(m) == "soar" for m in methods):
        soar = run_teacher(w, "soar", seed, seed_dir / "soar")
    if "soar_ps" in methods:
        evaluate(w, soar["baseline"], "soar_ps", seed, seed_dir / "soar_ps")
    if "soar_pq" in methods:
        pq = soar["promoted_questions"]
        jobs |= {job: ([(pq, cfg.pq_steps)] if pq else []) + hard
                 for job in student_jobs("soar_pq", cfg.fresh_students)}
    if "hard_only" in methods:
        jobs |= {job: hard for job in student_jobs("hard_only", cfg.fresh_students)}
    # Students of questions sampled from a teacher: the trained SOAR teacher (Grounded-T), the
    # intrinsic-reward teacher (Intrinsic-T) and the untrained model (Base-T). Each student gets
    # its own sample of the teacher's questions.
    teachers = {"grounded_t": lambda: soar["teacher"],
                "intrinsic_t": lambda: run_teacher(w, "intrinsic", seed, seed_dir / "intrinsic")["teacher"],
                "base_t": lambda: w.fresh_teacher}
    for name in [m for m in teachers if m in methods]:
        teacher = teachers[name]()
        for job in student_jobs(name, cfg.fresh_students):
            questions = sample_teacher_questions(w, teacher, seed, job, seed_dir / job)
            if not questions:
                w.say(f"seed {seed} {job}: the teacher wrote no valid question; "
                      "its student trains on the hard set alone")
            jobs[job] = ([(questions, cfg.pq_steps)] if questions else []) + hard
    train_fresh_students(w, seed, jobs, seed_dir)


# ---- main ---------------------------------------------------------------------------------------

def load_hard_sets(cfg: Config) -> tuple[list[dict], list[dict]]:
    if cfg.hard_train or cfg.hard_test:
        if not (cfg.hard_train and cfg.hard_test):
            raise SystemExit("error: give both --hard-train and --hard-test")
        return load_problems(cfg.hard_train), load_problems(cfg.hard_test)
    if cfg.model == "tiny":
        return tiny_hard_set()
    train_path, test_path = hard_set_paths(cfg.hard_dir, cfg.model, cfg.dataset)
    if not train_path.exists():
        raise SystemExit(
            f"error: no hard set for --model {cfg.model} --dataset {cfg.dataset} in {cfg.hard_dir}/. "
            f"Build it first (long: k samples per problem):\n"
            f"  python build_hard.py --model {cfg.model} --dataset {cfg.dataset} --k 128\n"
            f"or pass your own files with --hard-train FILE --hard-test FILE")
    return load_problems(str(train_path)), load_problems(str(test_path))


def main(argv: list[str]) -> None:
    # the run's wall time counts from the launcher's start: the processes it starts inherit it
    started = float(os.environ.get("SOAR_RUN_STARTED", time.time())) if launched() else time.time()
    os.environ["SOAR_RUN_STARTED"] = str(started)
    cfg, resuming, processes = parse_config(argv, description=__doc__.split("\n\n")[0])
    run_dir = Path(cfg.out)
    if processes > 1 and not launched():
        if not resuming:
            prepare_run_dir(run_dir)  # fail here, before any process starts
        start_processes(processes, argv, run_dir)
        return
    procs = Processes()
    if not procs.main:
        write_nothing()  # one process writes the run directory
    elif not resuming:
        prepare_run_dir(run_dir)
    try:
        with procs.main_first():  # for tiny: the main process builds the model and its hard set
            hard_train, hard_test = load_hard_sets(cfg)
            # fails at once when the model cannot be had
            path = str(tiny_model_path()) if cfg.model == "tiny" else resolve_model(cfg.model)
    except (ModelUnavailable, OSError, ValueError, RuntimeError) as e:
        raise SystemExit(f"error: {e}") from None
    if cfg.reward_measure == "solution" and not has_solutions(hard_train):
        raise SystemExit(f"error: --reward-measure solution needs every hard-train row "
                         f"({cfg.hard_train or 'the hard set of --model ' + cfg.model}) to hold a "
                         f"reference \"solution\" in the student's own format; the tiny world's do")
    if cfg.q_r > len(hard_train) and procs.main:
        tqdm.write(f"warning: --q-r {cfg.q_r} is more than the {len(hard_train)} hard train "
                   "problems; Q_R will be the whole hard train set")
    if cfg.quant == "auto":
        cfg.quant = "4bit" if torch.cuda.is_available() and cfg.model != "tiny" else "none"
    if cfg.threads:
        # A tiny model's matmuls are too small to split across cores: one thread is faster, and
        # far faster when other processes (the answer checkers) want the other core.
        torch.set_num_threads(cfg.threads)
    elif procs.count > 1 and procs.device.type == "cpu":  # the cores are shared by the processes
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // procs.count))
    if cfg.checkpointing == "auto":
        cfg.checkpointing = "on" if torch.cuda.is_available() else "off"
    torch.manual_seed(cfg.seed)  # LoRA's A matrices: the same in every process and every run
    model, tokenizer = load_model(path, cfg.quant, cfg.lora_rank, cfg.lora_alpha,
                                  device=str(procs.device), checkpointing=cfg.checkpointing == "on")
    if cfg.chat_template == "auto":
        cfg.chat_template = "on" if tokenizer.chat_template else "off"
    if not resuming:
        atomic_write_text(run_dir / "config.json", json.dumps(dataclasses.asdict(cfg), indent=1))
    w = World(cfg, model, tokenizer, hard_train, hard_test, procs)
    if procs.main:
        w.log_external = external_logger(cfg.log, run_dir, dataclasses.asdict(cfg))
    w.say(f"model {cfg.model} ({path}): hard train {len(hard_train)}, hard test {len(hard_test)} problems; "
          f"run directory {run_dir}; {procs.count} process{'es' if procs.count > 1 else ''}")
    try:
        for seed in range(cfg.seed, cfg.seed + cfg.seeds):
            run_seed(w, seed, run_dir)
    except KeyboardInterrupt:
        raise SystemExit(f"\ninterrupted: every completed step is saved; continue with "
                         f"`python train.py --resume {run_dir}`") from None
    procs.close()
    if not procs.main:
        return
    summary = summarize(run_dir)
    # the hard set's size tells apart builds of the tiny model made on different CPUs, whose
    # rows differ: a reader re-running the first steps checks it before comparing them
    summary["run"] = {"argv": argv, "processes": procs.count, "cpus": os.cpu_count(),
                      "wall_seconds": round(time.time() - started, 1), "resumed": resuming,
                      "hard_problems": {"train": len(hard_train), "test": len(hard_test)}}
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
    print_summary(summary)
    write_report(run_dir)
    print(f"\nsummary: {run_dir / 'summary.json'}   report: {run_dir / 'report.md'}")


def start_processes(processes: int, argv: list[str], run_dir: Path) -> None:
    """This run on `processes` processes; a process that fails ends the run, and says so."""
    try:
        launch(processes, argv)
    except ChildFailedError as e:
        rank, failure = next(iter(e.failures.items()))
        raise SystemExit(f"error: process {rank} of {processes} failed (exit code "
                         f"{failure.exitcode}; its error is printed above) and the run stopped. "
                         f"Every completed step is saved: continue with "
                         f"`python train.py --resume {run_dir}`") from None


if __name__ == "__main__":
    main(sys.argv[1:])
