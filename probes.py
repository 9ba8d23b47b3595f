"""Research probes of the tiny world: does it offer SOAR what the method needs? A run never
imports this file.

    python probes.py
    python probes.py runs/RUN      # what a finished run's SOAR teachers learned
    python probes.py oracle STEPS [--noise SD | --replay FILE | --shuffle FILE] [--seed S] [train.py flags]   # can the teacher learn from a perfect reward?
    python probes.py rewards runs/RUN   # its datasets' stepping stones and rewards, for --replay
    python probes.py repeat runs/RUN [DATASETS COPIES]   # how much of the reward is chance?
    python probes.py chance COPIES [train.py flags]   # ... by random streams and measure
    python probes.py measures runs/RUN SEED STEPS [--inner-steps N]   # which measure tracks a run's stones?
    python probes.py factors runs/RUN [runs/RUN ...]   # which choice moved the teachers' stones?

The first prints the base model's accuracy by phrasing and length, the hard set, whether short
"quickly" sums are stepping stones to it (accuracy after a short supervised fine-tune on them,
against one on plain sums: `main`), and what SOAR's teacher reward is made of (one student copy's
RLOO inner loop on stepping stones, plain sums and the base teacher's questions:
`inner_loop_check`). The second reads a run directory (`teacher_check`); the third trains the
teacher alone on a reward with no student in it, exact, with noise added, or replayed from a
run (`oracle_teacher`);
the fourth writes what a run's datasets earned, for the third to replay (`write_dataset_rewards`);
the fifth retrains student copies on a run's datasets to split its reward into what the
dataset decides and what is chance (`reward_repeatability`); the sixth does it by random streams
and measure on datasets of known stepping stones (`stream_chance`); the seventh retrains the
copies of a run's own datasets as the run did and asks which measure of their standing on Q_R
follows the datasets' stepping stones (`measure_tracking`); the eighth splits the trend of each
teacher's stepping stones into its three choices over the seeds of one or more runs
(`factor_trends`).
"""
import copy
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

import config
import student
from parallel import generators
from summary import mean_ci
from models import activate, adapter_state, load_adapter_state, load_model, make_optimizer
from rewards import extract_boxed
from sampler import decode, encode_prompt, sample
from student import encode_problems, greedy_accuracy, train_student
from run_dir import complete_rows
from teacher import (TEACHER_INSTRUCTION, by_length, sample_pairs, split_datasets, teacher_update,
                     vendi_score)
from tiny import world
from tiny.model import HARD, batch_tensors, encode_example, hard_dir, tiny_hard_set, tiny_model_path

# the stepping-stone check of `main`: supervised steps (batch 32) and learning rate
STONE_STEPS, STONE_LR = 100, 1e-4

def probe_model(cfg, lora_seed: int, world_seed: int = 0):
    """The tiny model of world_seed with the loop's LoRA adapters, their random initialization
    seeded as train.py seeds it, so that a probe gives the same result each time it is run."""
    torch.manual_seed(lora_seed)
    return load_model(str(tiny_model_path(world_seed)), "none", cfg.lora_rank, cfg.lora_alpha)


def sampled_answers(model, tokenizer, problems: list[dict], n: int, temperature: float,
                    seed: int = 0):
    """n answers per problem with the loop's student prompt and sampler: (rollouts, the boxed
    answers, the gold answer of each row)."""
    rollouts = sample(model, encode_problems(tokenizer, problems, False), n=n,
                      max_new_tokens=HARD["max_new_tokens"], temperature=temperature,
                      eos_token_ids=[tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id,
                      batch_size=HARD["batch_size"], generator=torch.Generator().manual_seed(seed))
    answers = [(extract_boxed(text) or "").strip()
               for text in decode(tokenizer, rollouts.completion_ids)]
    return rollouts, answers, [p["answer"] for p in problems for _ in range(n)]


def accuracy(model, tokenizer, problems: list[dict], n_samples: int, seed: int = 0) -> dict:
    """Greedy accuracy, the mean accuracy of n_samples answers at temperature 1 (graded exactly),
    and the share of those answers that work the sum out rather than answer in one go."""
    result = {}
    for name, n, temperature in (("greedy", 1, 0.0), ("sampled", n_samples, 1.0)):
        rollouts, answers, golds = sampled_answers(model, tokenizer, problems, n, temperature, seed)
        result[name] = sum(a == g for a, g in zip(answers, golds)) / len(golds)
    result["worked"] = sum(tokenizer.decode(ids).lstrip()[:1].isdigit()
                           for ids in rollouts.completion_ids) / len(golds)
    return result


def own_correct_answers(model, tokenizer, problems: list[dict], n: int, seed: int = 0) -> list:
    """(prompt ids, completion ids) of the model's own right answers: n samples per problem at
    temperature 1, kept if right (training on them is RL with a binary reward, in its simplest
    form: expert iteration)."""
    rollouts, answers, golds = sampled_answers(model, tokenizer, problems, n, 1.0, seed)
    return [(prompt, completion) for prompt, completion, finished, answer, gold in zip(
                rollouts.prompt_ids, rollouts.completion_ids, rollouts.finished, answers, golds)
            if finished and answer == gold]


def fine_tuned(model, tokenizer, examples: list, steps: int, lr: float, seed: int = 0):
    """A copy of the model after `steps` of supervised training (batch 32) on (prompt ids,
    completion ids) examples: a quick stand-in for the student's RL on those problems."""
    tuned = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(tuned.parameters(), lr=lr)
    rng = random.Random(seed)
    for _ in range(steps):
        ids, mask, labels = batch_tensors(rng.choices(examples, k=32), tokenizer.pad_token_id)
        loss = tuned(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return tuned.eval()


def main(seed: int = 0) -> None:
    """Build (or find) the model and hard set, and print: the base model's accuracy by phrasing
    and length; the hard set; and whether short "quickly" sums are stepping stones to the hard set
    (accuracy on it after a short fine-tune on them, against one on plain sums)."""
    path = tiny_model_path(seed)
    print(f"model: {path} (built in {json.loads((path / 'build.json').read_text())['build_seconds']} s)")
    start = time.perf_counter()
    hard_train, hard_test = tiny_hard_set(seed)
    stats = json.loads((hard_dir(seed) / "stats.json").read_text())
    print(f"hard set: {stats['n_hard']} of {stats['pool_size']} candidates solved 0/{HARD['k']} "
          f"-> {len(hard_train)} train / {len(hard_test)} test "
          f"({time.perf_counter() - start:.0f} s); solve counts {stats['solve_count_histogram']}")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    print("base model accuracy (100 problems per cell; sampled = 16 answers at temperature 1, "
          "worked = share of them that work the sum out):")
    for quick in (False, True):
        for digits in range(1, 7):
            problems = world.generate_problems(
                min(100, world.n_problems(digits)), digits, 7, quick)
            acc = accuracy(model, tokenizer, problems, 16)
            print(f"  {'quickly' if quick else 'plain  '} {digits} digits: greedy "
                  f"{acc['greedy']:.2f}  sampled {acc['sampled']:.3f}  worked {acc['worked']:.3f}")
    # the fine-tunes never see a hard problem, so all of them (train and test) measure it
    hard = hard_train + hard_test
    acc = accuracy(model, tokenizer, hard, 16)
    print(f"all {len(hard)} hard problems (greedy / sampled / worked), before: {acc['greedy']:.3f} "
          f"/ {acc['sampled']:.4f} / {acc['worked']:.3f}; after {STONE_STEPS} steps of training on")
    stones = {"quickly, 3-4 digits": [(True, 3), (True, 4)],
              "quickly, 1-2 digits": [(True, 1), (True, 2)],
              "plain, 1-4 digits": [(False, 1), (False, 2), (False, 3), (False, 4)]}
    for name, cells in stones.items():
        problems = [p for quick, digits in cells for p in world.generate_problems(
            min(256 // len(cells), world.n_problems(digits)), digits, 11, quick)]
        working = [encode_example(tokenizer, student.student_message(p["problem"]),
                                  world.solution(p["problem"])) for p in problems]
        own = own_correct_answers(model, tokenizer, problems, 8)
        for examples, what in ((working, "their working"),
                               (own, f"its own {len(own)} right answers of {8 * len(problems)}")):
            tuned = fine_tuned(model, tokenizer, examples, STONE_STEPS, STONE_LR)
            acc = accuracy(tuned, tokenizer, hard, 16)
            print(f"  {name}, {what}: {acc['greedy']:.3f} / {acc['sampled']:.4f} / "
                  f"{acc['worked']:.3f}")


def inner_loop_check(seed: int = 0, copies: int = 2) -> None:
    """What SOAR's teacher reward is made of, measured: one student copy trained by train.py's
    inner loop (tiny preset: RLOO, inner_steps x student_batch questions x group_size answers)
    from the base model, then its greedy accuracy on the hard train set (the reward's measure)
    and its sampled accuracy there. Three datasets: stepping stones ("quickly" sums of 2-4
    digits), plain sums, and the base teacher's own questions (what SOAR's first step trains on)."""
    cfg, _, _ = config.parse_config([])
    torch.set_num_threads(cfg.threads)  # as train.py runs the preset (and the same each time)
    hard_train, _ = tiny_hard_set(seed)
    model, tokenizer = probe_model(cfg, seed, seed)
    generator, rng = torch.Generator().manual_seed(seed), random.Random(seed)
    base = adapter_state(model, "student")
    datasets = {f"{'quickly' if quick else 'plain'}, 2-4 digits": [
        p for d in (2, 3, 4) for p in world.generate_problems(22, d, 13, quick)]
        for quick in (True, False)}
    datasets["the base teacher's questions"] = sample_pairs(model, tokenizer, 64, cfg, generator,
                                                            {})[0]
    print(f"hard train set ({len(hard_train)} problems), greedy / sampled / worked: base model "
          f"{greedy_accuracy(model, tokenizer, hard_train, cfg):.3f}; after one student copy's "
          f"inner loop ({cfg.inner_steps} RLOO steps of {cfg.student_batch} questions x "
          f"{cfg.group_size} answers, lr {cfg.student_lr}, LoRA rank {cfg.lora_rank}):")
    for name, problems in datasets.items():
        results = []
        for _ in range(copies):
            load_adapter_state(model, "student", base)
            train_student(model, tokenizer, problems, cfg.inner_steps, cfg, generator, rng, {})
            acc = accuracy(model, tokenizer, hard_train, 16)
            results.append(f"{greedy_accuracy(model, tokenizer, hard_train, cfg):.3f} / "
                           f"{acc['sampled']:.3f} / {acc['worked']:.3f}")
        print(f"  {name}: " + ", ".join(results))


def p_quickly(model, tokenizer) -> float:
    """The teacher's probability of opening its question with "Quickly, compute" rather than
    "Compute" (the tiny tokenizer has one token for each): the one decision that makes a
    question a stepping stone or not, read from the logits, free of sampling noise."""
    prompt = encode_prompt(tokenizer, TEACHER_INSTRUCTION, False)
    ids = torch.tensor([prompt + tokenizer(" <question>", add_special_tokens=False)["input_ids"]])
    vocab = tokenizer.get_vocab()  # byte-level BPE: \u0120 is a space
    quick, plain = (vocab[token] for token in ("Quickly,\u0120compute\u0120", "Compute\u0120"))
    with torch.no_grad():
        p = model(ids).logits[0, -1].softmax(-1)
    return (p[quick] / (p[quick] + p[plain])).item()


def stones(data: list[dict]) -> int:
    """How many of a dataset's pairs are stepping stones (`world.classify`)."""
    return sum(world.classify(q["problem"], q["answer"])["stepping_stone"] for q in data)


def stone_share(data: list[dict]) -> float:
    return stones(data) / len(data)


def valid_pairs_by_step(job: Path) -> dict[int, list[dict]]:
    """A teacher job's logged valid pairs, by outer step, in the order they were drawn. Reads logs
    a running job may still be appending to."""
    valid = {}
    for q in complete_rows(job / "questions.jsonl"):
        if q["valid"]:
            valid.setdefault(q["step"], []).append(q)
    return valid


def logged_datasets(job: Path, g: int, n: int) -> dict[int, list[list[dict]]]:
    """Each logged step's datasets of one SOAR job, rebuilt from its logged samples as the loop
    built them: the first g*n valid ones, `split_datasets`. A step with fewer valid pairs than g
    had no datasets (the loop logged no rewards for it): it is left out."""
    return {step: datasets for step, pairs in valid_pairs_by_step(job).items()
            if (datasets := split_datasets(pairs[:g * n], g)) is not None}


def unpromoted_datasets(job: Path, g: int, n: int) -> dict[int, list[list[dict]]]:
    """`logged_datasets` of a job whose baseline student never changed (a run with --tau 1e9), so
    that every copy a probe retrains starts, as the run's copies did, from the untrained student."""
    if any(m["n_promotions"] for m in complete_rows(job / "metrics.jsonl")):
        raise SystemExit(f"{job}: a promotion changed the baseline student; use a run with --tau 1e9")
    return logged_datasets(job, g, n)


def write_dataset_rewards(run_dir: Path) -> Path:
    """RUN/dataset_rewards.jsonl: every dataset of a run's SOAR jobs, in order, with its seed,
    number of stepping stones and teacher reward: a small file the replay oracle reads without
    the run."""
    cfg = json.loads((run_dir / "config.json").read_text())
    jobs = sorted(run_dir.glob("seed*/soar"))
    if cfg["model"] != "tiny" or not jobs:
        raise SystemExit(f"{run_dir}: not a tiny-world run with seed*/soar jobs")
    out = run_dir / "dataset_rewards.jsonl"
    with open(out, "w") as f:
        for job in jobs:
            for share, reward in dataset_stones_and_rewards(job, cfg["g"], cfg["n"]):
                row = {"seed": job.parent.name, "stones": round(share * cfg["n"]), "reward": reward}
                f.write(json.dumps(row) + "\n")
    return out


def replayed_rewards(path: Path) -> dict[int, list[float]]:
    """The teacher rewards in a dataset_rewards.jsonl, by the datasets' number of stepping stones."""
    earned = {}
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        try:
            row = json.loads(line)
            earned.setdefault(int(row["stones"]), []).append(float(row["reward"]))
        except (ValueError, KeyError, TypeError) as error:
            raise SystemExit(f"{path}, line {line_no}: not a dataset's stones and reward ({error})")
    if not earned:
        raise SystemExit(f"{path}: no dataset rewards in it")
    return earned


def without_stones(earned: dict[int, list[float]]) -> dict[int, list[float]]:
    """`replayed_rewards` with the stepping stones forgotten: every dataset draws from all of them."""
    return {0: [reward for rewards in earned.values() for reward in rewards]}


def dataset_stones_and_rewards(job: Path, g: int, n: int) -> list[tuple[float, float]]:
    """(share of stepping stones, teacher reward) of every dataset of one SOAR job."""
    datasets_of = logged_datasets(job, g, n)
    rows = []
    for metrics in complete_rows(job / "metrics.jsonl"):
        for data, reward in zip(datasets_of.get(metrics["step"], []), metrics["dataset_rewards"]):
            rows.append((stone_share(data), reward))
    return rows


STONE_FACTORS = ("quick", "stone length, of quick", "right, of those", "stepping stones")


def stone_factors(pairs: list[dict]) -> dict[str, float]:
    """A stepping-stone share as the product of its three choices: asking "quickly", a sum of 2-4
    digits when so asked, and the teacher's right answer to such a sum."""
    checks = [world.classify(p["problem"], p["answer"]) for p in pairs]
    quick = [c for c in checks if c["quick"]]
    stone_length = [c for c in quick if c["digits"] in world.STEPPING_STONE_DIGITS]
    share = lambda part, whole: len(part) / len(whole) if whole else math.nan
    return dict(zip(STONE_FACTORS, (share(quick, checks), share(stone_length, quick),
                                    share([c for c in stone_length if c["correct"]], stone_length),
                                    share([c for c in checks if c["stepping_stone"]], checks))))


def factor_trends(run_dirs: list[Path]) -> None:
    """Which of its choices moved each teacher's stepping-stone share: per teacher (SOAR's, the
    intrinsic one), each factor's share in steps 0-9 and its least-squares slope per 10 steps,
    per seed and as a mean with a 95% t interval over every seed of the runs given."""
    if not any(any(run.glob(f"seed*/{method}/questions.jsonl"))
               for run in run_dirs for method in config.TEACHERS):
        raise SystemExit(f"factors: no teacher's questions.jsonl in {', '.join(map(str, run_dirs))} "
                         "(give run directories with seed*/soar or seed*/intrinsic jobs)")
    for method in config.TEACHERS:
        jobs = [job for run in run_dirs for job in sorted(run.glob(f"seed*/{method}"))
                if (job / "questions.jsonl").exists()]
        if not jobs:
            continue
        print(f"{method} teacher, {len(jobs)} seeds ({', '.join(str(j.parent) for j in jobs)}):")
        factors_by_step = [[(step, stone_factors(pairs)) for step, pairs in
                            sorted(valid_pairs_by_step(job).items())] for job in jobs]
        for name in STONE_FACTORS:
            firsts, slopes = [], []
            for factors in factors_by_step:
                points = [(step, 100 * f[name]) for step, f in factors if not math.isnan(f[name])]
                firsts.append(statistics.mean(v for step, v in points if step < 10))
                slopes.append(10 * statistics.linear_regression(*zip(*points)).slope)
            trend = mean_ci(slopes)
            print(f"  {name:>22}: steps 0-9 {statistics.mean(firsts):5.1f}%; points per 10 steps "
                  f"{trend['mean']:+.2f} [{trend['ci95'][0]:+.2f}, {trend['ci95'][1]:+.2f}] "
                  f"({', '.join(f'{s:+.2f}' for s in slopes)})")


def teacher_check(run_dir: Path) -> None:
    """Did a run's SOAR teachers learn? Whether a dataset's reward tracks its stepping stones
    (the signal the teacher learns from), and the final teachers' p_quickly against the untrained
    model's (whether it learned anything from that signal)."""
    cfg = json.loads((run_dir / "config.json").read_text())
    jobs = sorted(run_dir.glob("seed*/soar"))
    if cfg["model"] != "tiny" or not jobs:
        raise SystemExit(f"{run_dir}: not a tiny-world run with SOAR jobs (model {cfg['model']!r}, "
                         f"{len(jobs)} seed*/soar folders)")
    rows = [row for job in jobs for row in dataset_stones_and_rewards(job, cfg["g"], cfg["n"])]
    stones, rewards = zip(*rows)
    mean = lambda xs: f"{statistics.mean(xs):+.3f}" if xs else "none"
    constant = len(set(stones)) == 1 or len(set(rewards)) == 1  # no correlation to speak of
    corr = "undefined (one side is constant)" if constant else f"{statistics.correlation(stones, rewards):.2f}"
    if not constant:  # reward = a + b * share + noise: the noise in share units, for `oracle --noise`
        slope = statistics.covariance(stones, rewards) / statistics.variance(stones)
        mean_s, mean_r = statistics.mean(stones), statistics.mean(rewards)
        residual = statistics.stdev(r - mean_r - slope * (s - mean_s) for s, r in rows)
        corr += f" (reward = {slope:.3f} x share + noise of SD {residual:.4f}: --noise {residual / slope:.2f})"
    rich = [r for s, r in rows if s >= 0.25]
    poor = [r for s, r in rows if s <= 1 / 16]
    print(f"{run_dir}: {len(rows)} datasets; stepping-stone share vs reward: r = {corr}; mean reward "
          f"{mean(rewards)} ({mean(rich)} with >= 25% stepping stones, {len(rich)} datasets; "
          f"{mean(poor)} with <= 1/16, {len(poor)})")
    path = tiny_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    print(f"p(\"Quickly\") of the teacher's question: untrained {p_quickly(model, tokenizer):.4f}")
    for job in jobs:
        if not (job / "adapters" / "teacher" / "adapter_config.json").exists():
            print(f"  {job.parent.name}: no final teacher yet (the job has not finished)")
            continue
        teacher = PeftModel.from_pretrained(model, str(job / "adapters" / "teacher")).eval()
        print(f"  {job.parent.name} final teacher: {p_quickly(teacher, tokenizer):.4f}")
        model = teacher.unload()


def reward_repeatability(run_dir: Path, n_datasets: int = 8, copies: int = 3, seed: int = 0) -> None:
    """How much of SOAR's teacher reward is the dataset and how much is chance: the first
    n_datasets datasets of a promotion-free run's seed-0 SOAR job (whose baseline student is the
    untrained one at every step), each given to `copies` student copies with their own
    randomness, rewarded as the loop does (greedy accuracy on a Q_R of cfg.q_r hard-train
    problems, one fixed draw, minus the untrained student's). Chance is the spread within a
    dataset; `--r` copies per dataset would divide its variance by r. (The loop draws Q_R afresh
    each step, the same for all of a step's datasets: noise this probe leaves out.)"""
    saved = json.loads((run_dir / "config.json").read_text())
    cfg = config.parse_config(["--g", str(saved["g"]), "--n", str(saved["n"])])[0]
    torch.set_num_threads(cfg.threads)
    job = run_dir / "seed0" / "soar"
    datasets_of = unpromoted_datasets(job, cfg.g, cfg.n)
    datasets = [data for step in sorted(datasets_of) for data in datasets_of[step]]
    hard_train, _ = tiny_hard_set(seed)
    q_r = random.Random(seed).sample(hard_train, min(cfg.q_r, len(hard_train)))
    model, tokenizer = probe_model(cfg, seed, seed)
    base = adapter_state(model, "student")
    base_acc = greedy_accuracy(model, tokenizer, q_r, cfg)
    print(f"{job}: {n_datasets} datasets x {copies} student copies, Q_R {len(q_r)} problems")
    rewards = []
    for k, data in enumerate(datasets[:n_datasets]):
        row = []
        for j in range(copies):
            load_adapter_state(model, "student", base)
            generator, rng = torch.Generator().manual_seed(1000 * k + j), random.Random(1000 * k + j)
            train_student(model, tokenizer, data, cfg.inner_steps, cfg, generator, rng, {})
            row.append(greedy_accuracy(model, tokenizer, q_r, cfg) - base_acc)
        rewards.append(row)
        print(f"  dataset {k}: stepping stones {stone_share(data):.3f}, rewards " + " ".join(f"{r:+.3f}" for r in row),
              flush=True)
    within = statistics.mean(statistics.variance(row) for row in rewards)
    total = statistics.variance([r for row in rewards for r in row])
    print(f"reward variance {total:.5f}, of which within a dataset (chance) {within:.5f}: "
          f"{within / total:.0%}" if total else "every reward was the same")


def stream_chance(copies: int, flags: list[str], seed: int = 0) -> None:
    """How much of a dataset's grounded reward is chance, by random streams and by measure:
    datasets of the base teacher's questions with 0, 2, 4 and 8 of every 16 replaced by stepping
    stones, each given to `copies` student copies trained as the loop trains them, once with
    independent streams (every copy its own draws) and once with common ones (copy j of every
    dataset the same draws, the datasets arranged by question length so that like draws land on
    like questions). Each copy's standing on one fixed Q_R is measured greedily (the paper) and
    by sampling (`student.progress_measures`). Chance is the spread of a dataset's copies; the
    teacher sees rewards centred over the datasets of a step (RLOO), so the centred chance is the
    noise it learns through; divided by the slope of reward over stepping-stone share it is the
    noise in share units that `oracle --noise` takes."""
    cfg = config.parse_config(flags)[0]
    torch.set_num_threads(cfg.threads)
    hard_train, _ = tiny_hard_set(seed)
    q_r = random.Random(seed).sample(hard_train, min(cfg.q_r, len(hard_train)))
    model, tokenizer = probe_model(cfg, seed, seed)
    base = adapter_state(model, "student")
    pairs, _ = sample_pairs(model, tokenizer, 64, cfg, torch.Generator().manual_seed(seed), {})
    filler = [p for p in pairs if not world.classify(p["problem"], p["answer"])["stepping_stone"]]
    stones = [p for d in (2, 3, 4) for p in world.generate_problems(8, d, 17 + seed, True)]
    random.Random(seed).shuffle(stones)
    n = cfg.n
    datasets = [filler[:n - m] + stones[:m] for m in (0, n // 8, n // 4, n // 2)]
    shares = [stone_share(data) for data in datasets]
    start = time.perf_counter()
    base_measures = student.progress_measures(model, tokenizer, q_r, cfg,
                                              torch.Generator().manual_seed(seed), {})
    print(f"{len(datasets)} datasets of {n} (stepping stones {', '.join(f'{s:.3f}' for s in shares)})"
          f" x {copies} copies x 2 stream modes; Q_R {len(q_r)}; baseline {base_measures}", flush=True)
    for streams in ("independent", "common"):
        rewards = {measure: [] for measure in base_measures}
        for k, data in enumerate(datasets):
            data = by_length(data) if streams == "common" else data
            row = {measure: [] for measure in base_measures}
            for j in range(copies):
                identity = (seed, "chance", j) if streams == "common" else (seed, "chance", k, j)
                load_adapter_state(model, "student", base)
                generator, rng = generators(*identity)
                train_student(model, tokenizer, data, cfg.inner_steps, cfg, generator, rng, {})
                measures = student.progress_measures(model, tokenizer, q_r, cfg,
                                                     generators(*identity, "eval")[0], {})
                for measure, value in measures.items():
                    row[measure].append(value - base_measures[measure])
            for measure in rewards:
                rewards[measure].append(row[measure])
            print(f"  {streams:<11} share {shares[k]:.3f}: " + "  ".join(
                f"{m} " + " ".join(f"{r:+.3f}" for r in row[m]) for m in row)
                  + f"  ({time.perf_counter() - start:.0f} s)", flush=True)
        for measure, table in rewards.items():
            report_chance(streams, measure, shares, table)


def measure_tracking(run_dir: Path, seed: int, steps: int, inner_steps: int | None = None) -> None:
    """Which measure of a copy's standing on Q_R follows the stepping stones of the datasets a real
    teacher wrote: the first `steps` logged steps of the run's SOAR job of `seed` (a run without
    promotions, so that every copy starts from the untrained student), copy 0 of each dataset
    retrained with the run's settings and random streams, every measure's reward taken on the
    step's Q_R as the loop takes it. Prints each dataset's rewards, then per measure the
    correlation with the number of stepping stones and the noise around a line in share units
    (the residual SD over the slope: what `oracle --noise` takes). `inner_steps` trains the
    copies for that many steps instead of the run's."""
    cfg = config.Config(**json.loads((run_dir / "config.json").read_text()))
    cfg.inner_steps = inner_steps or cfg.inner_steps
    torch.set_num_threads(1)
    job = run_dir / f"seed{seed}" / "soar"
    datasets_of = unpromoted_datasets(job, cfg.g, cfg.n)
    hard_train, _ = tiny_hard_set()
    model, tokenizer = probe_model(cfg, cfg.seed)  # train.py seeds the LoRA by the run's first seed
    base = adapter_state(model, "student")
    rows, start = [], time.perf_counter()
    for step in sorted(datasets_of)[:steps]:
        unit = (seed, "soar", step)
        q_r = generators(*unit, "q_r")[1].sample(hard_train, min(cfg.q_r, len(hard_train)))
        load_adapter_state(model, "student", base)
        base_measures = student.progress_measures(model, tokenizer, q_r, cfg,
                                                  generators(*unit, "measure")[0], {})
        for k, data in enumerate(datasets_of[step]):
            identity = (*unit, "copy", 0) if cfg.copy_streams == "common" else (*unit, k, 0)
            load_adapter_state(model, "student", base)
            generator, rng = generators(*identity)
            train_student(model, tokenizer, by_length(data) if cfg.copy_streams == "common" else data,
                          cfg.inner_steps, cfg, generator, rng, {})
            measures = student.progress_measures(model, tokenizer, q_r, cfg,
                                                 generators(*identity, "measure")[0], {})
            rows.append({"stones": stones(data), "share": stone_share(data),
                         **{m: v - base_measures[m] for m, v in measures.items()}})
            print(f"  step {step} dataset {k}: {rows[-1]['stones']} stepping stones; " + "  ".join(
                f"{m} {rows[-1][m]:+.4f}" for m in measures) + f"  ({time.perf_counter() - start:.0f} s)",
                  flush=True)
    shares = [row["share"] for row in rows]
    for measure in base_measures:
        rewards = [row[measure] for row in rows]
        if len(set(rewards)) < 2:
            print(f"{measure:<8}: every reward was the same")
            continue
        fit = statistics.linear_regression(shares, rewards)
        residual = statistics.stdev([r - fit.intercept - fit.slope * s for s, r in zip(shares, rewards)])
        print(f"{measure:<8}: correlation with the stepping stones "
              f"{statistics.correlation([row['stones'] for row in rows], rewards):.2f}; noise "
              f"{residual / fit.slope:.2f} share units ({len(rows)} datasets)", flush=True)


def report_chance(streams: str, measure: str, shares: list[float], table: list[list[float]]) -> None:
    """One line of `stream_chance`: slope of reward over share, chance before and after the
    centring over datasets that the teacher's RLOO applies, and the latter in share units."""
    points = [(s, r) for s, row in zip(shares, table) for r in row]
    slope = statistics.linear_regression(*zip(*points)).slope
    chance = math.sqrt(statistics.mean(statistics.variance(row) for row in table))
    centred = [[r - statistics.mean(col) for r, col in zip(row, zip(*table))] for row in table]
    centred_chance = math.sqrt(statistics.mean(statistics.variance(row) for row in centred))
    print(f"{streams:<11} {measure:<7}: reward = {slope:+.3f} x share; chance SD {chance:.4f}, "
          f"centred over datasets {centred_chance:.4f} = {centred_chance / slope:.2f} in share units",
          flush=True)


def take_flag(flags: list[str], name: str, kind, default, check, meaning: str):
    """(the value given by `name VALUE`, `default` without it; the other flags, for train.py)."""
    if name not in flags:
        return default, flags
    at = flags.index(name)
    try:
        value = kind(flags[at + 1])
    except (IndexError, ValueError):
        raise SystemExit(f"{name} needs {meaning}")
    if not check(value):
        raise SystemExit(f"{name} {flags[at + 1]}: not {meaning}")
    return value, flags[:at] + flags[at + 2:]


def oracle_teacher(steps: int, flags: list[str]) -> None:
    """SOAR's teacher update (tiny preset: g datasets of n questions, RLOO across datasets, the
    same optimizer and schedule) with the reward replaced by each dataset's exact share of
    stepping stones: the best signal the students could give. How far p_quickly and the
    stepping-stone share move says how many outer steps the teacher needs to learn from a signal
    this clean. `--noise SD` adds Gaussian noise of that SD to each reward, to match the real
    reward's (`teacher_check` measures it); `--replay FILE` instead draws each dataset's reward
    from the rewards a finished run's datasets with as many stepping stones earned (its noise as
    it came: sparse, with rare large outliers; FILE is the run's dataset_rewards.jsonl, written
    by `python probes.py rewards RUN`); `--shuffle FILE` draws them from all of FILE's
    rewards whatever the dataset's stepping stones: rewards of the same size with no signal, so
    the drift the update alone gives; `--seed S` draws another trajectory. The other
    flags are train.py's (--teacher-lr, --g, --n, --teacher-kl-coef, ...). It ends with the
    trend a run reports, the least-squares slope of the share per 10 steps: from
    --quality-samples more questions a step when given, as train.py measures it."""
    noise, flags = take_flag(flags, "--noise", float, 0.0, lambda x: x >= 0,
                             "a reward noise SD in share units (a number >= 0)")
    rewards_file = "a dataset_rewards.jsonl file (python probes.py rewards RUN)"
    replay, flags = take_flag(flags, "--replay", Path, None, Path.is_file, rewards_file)
    shuffle, flags = take_flag(flags, "--shuffle", Path, None, Path.is_file, rewards_file)
    seed, flags = take_flag(flags, "--seed", int, 0, lambda x: x >= 0, "a seed (an integer >= 0)")
    if sum(map(bool, (noise, replay, shuffle))) > 1:
        raise SystemExit("oracle: --noise, --replay and --shuffle each set the reward's noise; give one")
    earned = (replayed_rewards(replay) if replay else
              without_stones(replayed_rewards(shuffle)) if shuffle else None)
    cfg, _, _ = config.parse_config(flags + ["--outer-steps", str(steps)])
    torch.set_num_threads(cfg.threads)
    model, tokenizer = probe_model(cfg, seed)
    optimizer, scheduler = make_optimizer(model, "teacher", cfg.teacher_lr, steps, cfg.teacher_warmup)
    generator, noise_rng = torch.Generator().manual_seed(seed), random.Random(seed)
    print(f"oracle reward, {steps} steps, teacher lr {cfg.teacher_lr}, g {cfg.g} x n {cfg.n}, "
          f"KL {cfg.teacher_kl_coef}, noise SD {noise}, replay {replay}, shuffle {shuffle}, seed {seed}")
    shares, graded = [], []  # graded: each step's stepping-stone share of --quality-samples more
    for step in range(steps + 1):
        if step % 10 == 0:
            activate(model, "teacher")
            recent = [statistics.mean(col) for col in zip(*shares[-10:])] if shares else [math.nan] * 3
            print(f"  step {step:3d}: p(Quickly) {p_quickly(model, tokenizer):.4f}; last 10 steps' "
                  f"questions: stepping stones {recent[0]:.3f}, right answers {recent[1]:.3f}, "
                  f"Vendi {recent[2]:.2f}", flush=True)
        if step == steps:
            break
        pairs, _ = sample_pairs(model, tokenizer, cfg.g * cfg.n, cfg, generator, {})
        datasets = split_datasets(pairs, cfg.g)
        counts = [stones(data) for data in datasets]
        rewards = [count / len(data) for count, data in zip(counts, datasets)]
        shares.append((statistics.mean(rewards), statistics.mean(
            world.check_question(p["problem"], p["answer"])["correct"] for p in pairs),
            vendi_score([p["problem"] for p in pairs])))
        if cfg.quality_samples:  # as train.py measures the run's trend: from a stream of their own
            sampled, _ = sample_pairs(model, tokenizer, cfg.quality_samples, cfg,
                                      generators(seed, "oracle", step, "quality")[0], {})
            graded.append(stone_share(sampled))
        if earned:
            rewards = [noise_rng.choice(earned[min(count, max(earned))]) for count in counts]
        elif noise:
            rewards = [r + noise_rng.gauss(0.0, noise) for r in rewards]
        teacher_update(model, tokenizer, optimizer, scheduler, datasets, rewards, cfg)
    trend = graded or [share for share, _, _ in shares]
    print(f"stepping-stone trend: {1000 * statistics.linear_regression(range(len(trend)), trend).slope:+.2f} "
          f"points per 10 steps, from {'--quality-samples' if graded else 'the training questions'}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "oracle":
        if len(sys.argv) < 3 or not sys.argv[2].isdigit():
            raise SystemExit("oracle: give the number of steps first: python probes.py oracle 100 ...")
        oracle_teacher(int(sys.argv[2]), sys.argv[3:])
    elif len(sys.argv) > 2 and sys.argv[1] == "repeat":
        if not all(arg.isdigit() and int(arg) > 1 for arg in sys.argv[3:5]):
            raise SystemExit(f"repeat: DATASETS and COPIES are whole numbers above 1, not {sys.argv[3:5]}")
        reward_repeatability(Path(sys.argv[2]), *map(int, sys.argv[3:5]))
    elif len(sys.argv) > 2 and sys.argv[1] == "chance":
        if not (sys.argv[2].isdigit() and int(sys.argv[2]) > 1):
            raise SystemExit(f"chance: COPIES is a whole number above 1, not {sys.argv[2]!r}")
        stream_chance(int(sys.argv[2]), sys.argv[3:])
    elif len(sys.argv) > 4 and sys.argv[1] == "measures":
        if not (sys.argv[3].isdigit() and sys.argv[4].isdigit() and int(sys.argv[4]) > 0):
            raise SystemExit(f"measures: SEED and STEPS are whole numbers, not {sys.argv[3:5]}")
        inner, rest = take_flag(sys.argv[5:], "--inner-steps", int, None, lambda v: v > 0,
                                "a whole number above 0")
        if rest:
            raise SystemExit(f"measures: unknown arguments {rest}")
        measure_tracking(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), inner)
    elif len(sys.argv) > 2 and sys.argv[1] == "factors":
        factor_trends([Path(arg) for arg in sys.argv[2:]])
    elif len(sys.argv) == 3 and sys.argv[1] == "rewards":
        print(write_dataset_rewards(Path(sys.argv[2])))
    elif len(sys.argv) > 1:
        teacher_check(Path(sys.argv[1]))
    else:
        main()
        inner_loop_check()
