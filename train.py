"""SOAR on one GPU (arXiv 2601.18778): a teacher writes problems, a student learns from them by RL,
and the teacher is rewarded by the student's measured improvement on problems the base model
never solves. Everything runs in one process on one shared base model with two LoRA adapters.

    python train.py                      # the built-in tiny world: SOAR vs baselines on a CPU
    python train.py --model small        # Qwen2.5-1.5B-Instruct, 4-bit, needs a built hard set
    python train.py --resume runs/tiny   # continue a run from its last complete step
    python train.py report runs/tiny     # plots and a Markdown report of a run

Read top to bottom: the config, then the outer loop (teacher sampling -> grounded reward ->
promotion -> teacher update), then the students trained from scratch for evaluation, then
evaluation and the summary. The inner loop (student RLOO) is in student.py, the teacher's
sampling and update in teacher.py, the answer checker and pass@k in rewards.py.
"""
import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import mpmath  # sympy's own dependency: Student's t for the paired intervals
import torch
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from tqdm import tqdm

from build_hard import hard_set_paths
from data.benchmarks import load_problems
from models import (ModelUnavailable, adapter_state, load_adapter_state, load_model,
                    make_optimizer, resolve_model, save_adapter, timed)
from parallel import Processes, generators, launch, launched
from report import write_report
from rewards import learnability, pass_at_k
from run_dir import (append_jsonl, atomic_save, atomic_write_text, external_logger,
                     forget_unfinished_steps, load_checkpoint, prepare_run_dir, read_jsonl,
                     write_jsonl, write_nothing)
from student import (answer, correct_counts, greedy_accuracy, greedy_correct, progress_measures,
                     rloo_step, sampled_accuracy, train_student)
from teacher import question_diversity, sample_pairs, split_datasets, teacher_update
from tiny.model import tiny_hard_set, tiny_model_path
from tiny.world import classify


# ---- config: every setting is a flag; presets only change defaults ------------------------------

def setting(default, help):
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    # what to run
    model: str = setting("tiny", "preset (tiny, small, paper), local HF model dir, or hub id")
    out: str = setting("", "run directory; empty: runs/<model>, or runs/smoke with --smoke")
    seed: int = setting(0, "first seed; seeds are seed, seed+1, ...")
    seeds: int = setting(1, "how many seeds (mean and SD in the table)")
    methods: str = setting("base,soar,hard_only",
                           "comma list of: base, soar (gives soar_ps and soar_pq), hard_only, "
                           "grounded_t, intrinsic_t, base_t")
    hard_train: str = setting("", "hard train set (JSONL, problem/answer); default: the built one")
    hard_test: str = setting("", "hard test set (JSONL); default: the built one")
    dataset: str = setting("math", "which built hard set to use when --hard-train is not given")
    hard_dir: str = setting("hard_sets", "where build_hard.py writes hard sets")
    # the model
    quant: str = setting("auto", "4bit, 8bit or none; auto = 4bit on GPU for hub models, else none")
    lora_rank: int = setting(16, "LoRA rank of both adapters")
    lora_alpha: int = setting(32, "LoRA alpha")
    chat_template: str = setting("auto", "on, off or auto (on when the tokenizer has one)")
    # outer loop (teacher)
    outer_steps: int = setting(50, "teacher steps (paper: up to 200)")
    g: int = setting(4, "datasets per teacher step (paper 4)")
    n: int = setting(32, "questions per dataset (paper 64)")
    r: int = setting(2, "student copies trained per dataset (paper 4)")
    q_r: int = setting(32, "hard-train questions in Q_R, redrawn each step (paper 64)")
    tau: float = setting(0.01, "promotion threshold on the moving-average reward (paper 0.01)")
    ma_window: int = setting(3, "moving-average window of the teacher reward (paper 3)")
    promotion_extra_steps: int = setting(5, "extra inner steps once a student has been promoted (paper 5)")
    teacher_lr: float = setting(1e-4, "teacher LoRA learning rate (paper 1e-5, full fine-tuning)")
    teacher_warmup: int = setting(20, "teacher warm-up steps (paper 20)")
    teacher_tokens: str = setting("all", "tokens the teacher's advantage moves: all of a sample "
                                  "(paper) or question (up to </question>, not the worked answer)")
    teacher_max_tokens: int = setting(384, "teacher max new tokens (paper 512)")
    teacher_max_rounds: int = setting(4, "rejection-sampling rounds for valid teacher pairs")
    intrinsic_samples: int = setting(8, "student answers per question for the Intrinsic-T reward (paper 32)")
    # inner loop (student)
    inner_steps: int = setting(10, "student RLOO steps per copy (paper 10)")
    student_batch: int = setting(8, "questions per student step (paper 8)")
    group_size: int = setting(8, "answers per question, G (paper 32)")
    student_lr: float = setting(1e-4, "student LoRA learning rate (paper 1e-5, full fine-tuning)")
    student_max_tokens: int = setting(512, "student max new tokens (paper 1024)")
    temperature: float = setting(1.0, "sampling temperature of both roles (paper 1.0)")
    kl_coef: float = setting(0.001, "KL penalty to the base model (paper 0.001)")
    reward_measure: str = setting("greedy", "the student's standing on Q_R that rewards the teacher: "
                                  "greedy accuracy (paper) or sampled (mean accuracy of "
                                  "--measure-samples answers per problem); both are logged")
    measure_samples: int = setting(4, "sampled answers per Q_R problem for the sampled measure")
    copy_streams: str = setting("independent", "random streams of the student copies: independent "
                                "(each copy its own) or common (copy j of every dataset the same "
                                "draws, so chance cancels in the teacher's RLOO differences)")
    reward: str = setting("binary", "student reward: binary or shaped (the paper's printed shaping)")
    # students trained from scratch for evaluation
    fresh_steps: int = setting(64, "RLOO steps on the hard train set (Hard-Only, and after PQ)")
    pq_steps: int = setting(64, "RLOO steps on PQ / teacher-sampled questions before the hard set")
    sampled_questions: int = setting(128, "questions sampled from a teacher for Grounded-T, Intrinsic-T, "
                                           "Base-T (paper 128)")
    probe_every: int = setting(8, "fresh students: greedy hard-train accuracy every this many steps")
    # evaluation
    eval_samples: int = setting(32, "samples per hard-test problem for pass@k (paper 32)")
    ks: str = setting("1,4,8,16,32", "k values of pass@k")
    # engineering
    micro_batch: int = setting(16, "rows per forward/backward in training (memory bound)")
    sample_batch: int = setting(128, "rows decoded at once by the sampler (memory bound)")
    checkpointing: str = setting("auto", "recompute each layer in backward instead of keeping its "
                                 "activations: on, off, or auto (on on a GPU)")
    check_timeout: float = setting(5.0, "seconds an answer check may take (then: wrong)")
    sample_every: int = setting(5, "print a teacher question and student answer every N steps")
    log: str = setting("none", "also send metrics to tensorboard or wandb (package must be installed)")
    threads: int = setting(0, "torch CPU threads; 0: torch's default")

    @property
    def use_chat_template(self) -> bool:
        return self.chat_template == "on"


# Defaults per preset (flags still win). `small` and `paper` are sized for one 24 GB GPU in 4-bit
# by `python bench.py --memory small|paper`: per-layer and logits memory measured on the CPU at
# the true width, extrapolated to depth (a prediction; no GPU run has confirmed it yet).
PRESETS = {
    # The tiny world on a 2-core CPU: all methods and 3 seeds in 25 minutes (18 with --processes 2).
    # One copy's inner loop needs 16 steps of 16 questions to move the hard set (8 gave almost
    # only zero rewards); student lr 2e-3 was no better; teacher lr 1e-3 wrecked the teacher's
    # arithmetic. 3 datasets a step keep the run short, too few for the teacher to learn: its
    # reward is mostly chance, and it needs 250-600 steps of ~8 datasets (README).
    "tiny": dict(quant="none", chat_template="off", seeds=3,
                 methods="base,soar,hard_only,grounded_t,intrinsic_t,base_t", lora_rank=16, lora_alpha=32,
                 outer_steps=6, g=3, n=16, r=1, q_r=64, inner_steps=16, student_batch=16,
                 promotion_extra_steps=0, teacher_lr=3e-4, student_lr=1e-3, teacher_warmup=2,
                 teacher_max_tokens=64, student_max_tokens=64, fresh_steps=20, pq_steps=12,
                 sampled_questions=64, probe_every=4, sample_every=3, micro_batch=64,
                 sample_batch=256, threads=1),
    # Qwen2.5-1.5B: 114-117 KiB per token per layer kept for backward under bf16 autocast (143
    # KiB with float32 LoRA inputs); 4 rows of 160 + 512 tokens without checkpointing predict
    # 11.4 GiB and spare the recompute (8 rows: 20.7). Sampling 256 rows: 6.7 GiB.
    "small": dict(micro_batch=4, sample_batch=256, checkpointing="off"),
    # Llama-3.2-3B: 155 KiB per token per layer kept for backward, so 4 rows of 672 tokens
    # without checkpointing already predict 15.2 GiB; checkpointed, 16 rows predict 10.0 GiB.
    # Sampling 128 rows holds a 4 KiB/token/layer KV cache: 12.4 GiB, the run's predicted peak.
    "paper": dict(micro_batch=16, sample_batch=128, checkpointing="on"),
}
# --smoke: the same pipeline at toy sizes (every method, the table, summary.json, the plots).
SMOKE = dict(seeds=1, outer_steps=2, g=2, n=4, r=1, q_r=4, inner_steps=1, student_batch=2,
             group_size=2, teacher_max_tokens=48, student_max_tokens=48, fresh_steps=2,
             pq_steps=1, sampled_questions=4, eval_samples=4, ks="1,4", intrinsic_samples=2,
             probe_every=1, methods="base,soar,hard_only,grounded_t,intrinsic_t,base_t",
             threads=1)
ALL_METHODS = ("base", "soar", "hard_only", "grounded_t", "intrinsic_t", "base_t")


def parse_config(argv) -> tuple[Config, bool, int]:
    """Flags -> Config; returns (config, resuming, processes to start)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(flag, type=type(f.default), default=None,
                            help=f"{f.metadata['help']} (default: {f.default!r}, presets may change it)")
    parser.add_argument("--smoke", action="store_true", help="toy sizes, every method, in minutes")
    parser.add_argument("--resume", metavar="DIR", help="continue the run in DIR")
    parser.add_argument("--processes", type=int, default=1, metavar="N",
                        help="run on N processes of this machine (CPU cores or GPUs); every unit of "
                             "work draws from its own seeded generators (default: 1, or what "
                             "accelerate launch / torchrun started)")
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    given = {k: v for k, v in vars(args).items()
             if v is not None and k not in ("smoke", "resume", "processes")}
    if args.resume:
        if given or args.smoke:
            flags = [*given, *(["smoke"] if args.smoke else [])]
            parser.error(f"--resume takes its settings from {args.resume}/config.json; "
                         f"drop {', '.join('--' + k.replace('_', '-') for k in flags)}")
        path = Path(args.resume) / "config.json"
        try:
            return Config(**json.loads(path.read_text())), True, args.processes
        except (OSError, ValueError, TypeError) as e:
            parser.error(f"--resume {args.resume}: cannot read {path} ({e})")
    model = given.get("model", Config.model)
    values = {**PRESETS.get(model, {}), **(SMOKE if args.smoke else {}), **given}
    if not values.get("out"):
        values["out"] = "runs/" + ("smoke" if args.smoke else Path(model.rstrip("/")).name)
    cfg = Config(**values)
    problem = config_problem(cfg)
    if problem:
        parser.error(problem)
    return cfg, False, args.processes


def config_problem(cfg: Config) -> str | None:
    """The first impossible setting, as a message naming the flag, or None."""
    methods = cfg.methods.split(",")
    bad = [m for m in methods if m not in ALL_METHODS]
    if bad:
        return f"--methods: unknown {', '.join(bad)} (choose from {', '.join(ALL_METHODS)})"
    try:
        ks = [int(k) for k in cfg.ks.split(",")]
    except ValueError:
        return f"--ks: expected comma-separated integers, got {cfg.ks!r}"
    if max(ks) > cfg.eval_samples:
        return f"--ks: k={max(ks)} is more than --eval-samples {cfg.eval_samples}"
    if cfg.quant not in ("auto", "4bit", "8bit", "none"):
        return f"--quant: {cfg.quant!r} is not one of auto, 4bit, 8bit, none"
    if cfg.chat_template not in ("auto", "on", "off"):
        return f"--chat-template: {cfg.chat_template!r} is not one of auto, on, off"
    if cfg.checkpointing not in ("auto", "on", "off"):
        return f"--checkpointing: {cfg.checkpointing!r} is not one of auto, on, off"
    if cfg.log not in ("none", "tensorboard", "wandb"):
        return f"--log: {cfg.log!r} is not one of none, tensorboard, wandb"
    if cfg.reward_measure not in ("greedy", "sampled"):
        return f"--reward-measure: {cfg.reward_measure!r} is not one of greedy, sampled"
    if cfg.copy_streams not in ("independent", "common"):
        return f"--copy-streams: {cfg.copy_streams!r} is not one of independent, common"
    if cfg.teacher_tokens not in ("all", "question"):
        return f"--teacher-tokens: {cfg.teacher_tokens!r} is not one of all, question"
    if cfg.reward not in ("binary", "shaped"):
        return f"--reward: {cfg.reward!r} is not one of binary, shaped"
    if min(ks) < 1:
        return f"--ks: every k must be at least 1, got {cfg.ks!r}"
    positive = ["seeds", "outer_steps", "g", "n", "r", "q_r", "inner_steps", "student_batch",
                "group_size", "eval_samples", "micro_batch", "sample_batch", "ma_window",
                "teacher_max_rounds", "teacher_max_tokens", "student_max_tokens",
                "intrinsic_samples", "sampled_questions", "probe_every", "lora_rank",
                "measure_samples"]
    for name in positive:
        if getattr(cfg, name) < 1:
            return f"--{name.replace('_', '-')} must be at least 1"
    for name in ("fresh_steps", "pq_steps", "promotion_extra_steps", "teacher_warmup", "temperature",
                 "kl_coef", "teacher_lr", "student_lr"):
        if getattr(cfg, name) < 0:
            return f"--{name.replace('_', '-')} must not be negative"
    if cfg.check_timeout <= 0:
        return "--check-timeout must be positive"
    if cfg.g < 2:
        return "--g must be at least 2: the teacher's RLOO baseline needs another dataset"
    if cfg.group_size < 2:
        return "--group-size must be at least 2: RLOO's baseline needs another answer"
    return None


# ---- what every stage shares --------------------------------------------------------------------

class World:
    """What every stage of a run shares: the config, the model, its tokenizer, the data, and this
    process's place among the run's processes."""

    def __init__(self, cfg: Config, model, tokenizer, hard_train, hard_test, procs: Processes):
        self.cfg, self.model, self.tokenizer = cfg, model, tokenizer
        self.hard_train, self.hard_test = hard_train, hard_test
        self.procs = procs
        self.fresh_student = adapter_state(model, "student")  # LoRA B = 0: the base model
        self.fresh_teacher = adapter_state(model, "teacher")
        self.log_external = lambda job, row: None  # set by main for --log
        # the tiny world can grade any question exactly
        self.quality = classify if cfg.model == "tiny" else None

    def say(self, text: str) -> None:
        """Print once per run, from the main process."""
        if self.procs.main:
            tqdm.write(text)

    def bar(self, **kw):
        return tqdm(disable=not self.procs.main, dynamic_ncols=True, **kw)


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def spread_greedy_accuracy(w: World, problems: list[dict], times: dict) -> float:
    """Greedy accuracy with the problems split over the processes, one sampler batch a unit."""
    correct = w.procs.map(lambda part: greedy_correct(w.model, w.tokenizer, part, w.cfg, times),
                          chunks(problems, w.cfg.sample_batch))
    correct = [c for part in correct for c in part]
    return sum(correct) / len(correct)


# ---- the outer loop: one teacher (grounded = SOAR, or intrinsic) --------------------------------

def grounded_rewards(w: World, datasets, q_r, baseline, baseline_measures, steps, unit, times):
    """R_kj = the student's standing on Q_R after training copy j on X_k, minus the baseline's,
    by --reward-measure (greedy accuracy, as the paper, or sampled accuracy).

    The g x r copies are spread over the processes; each starts from the baseline student. Its
    randomness comes from its own identity: unit + (k, j), or with --copy-streams common unit +
    j alone, so that copy j of every dataset draws the same numbers (each dataset arranged by
    question length, so that like draws meet like questions) and the chance they share cancels
    in the teacher's RLOO differences. Returns (rewards [g][r], every measure's rewards
    {measure: [g][r]}, the copies this process trained {(k, j): adapter state}, how many student
    updates were applied, had no signal (every answer scored the same) or were dropped as
    non-finite).
    """
    copies, common = {}, w.cfg.copy_streams == "common"

    def train_copy(kj):
        k, j = kj
        identity = (*unit, "copy", j) if common else (*unit, k, j)
        data = by_length(datasets[k]) if common else datasets[k]
        load_adapter_state(w.model, "student", baseline)
        generator, rng = generators(*identity)
        history = train_student(w.model, w.tokenizer, data, steps, w.cfg, generator, rng, times)
        measures = progress_measures(w.model, w.tokenizer, q_r, w.cfg,
                                     generators(*identity, "measure")[0], times)
        copies[kj] = adapter_state(w.model, "student")
        return ({m: v - baseline_measures[m] for m, v in measures.items()},
                Counter(h["update"] for h in history))

    units = [(k, j) for k in range(len(datasets)) for j in range(w.cfg.r)]
    results = w.procs.map(train_copy, units)
    load_adapter_state(w.model, "student", baseline)
    by_measure = {m: [[results[k * w.cfg.r + j][0][m] for j in range(w.cfg.r)]
                      for k in range(len(datasets))] for m in baseline_measures}
    return (by_measure[w.cfg.reward_measure], by_measure, copies,
            dict(sum((c for _, c in results), Counter())))


def by_length(data: list[dict]) -> list[dict]:
    return sorted(data, key=lambda p: (len(p["problem"]), p["problem"]))


def intrinsic_rewards(w: World, datasets, unit, times):
    """Intrinsic-T's "learnability": per question 1 - s if the baseline student's success rate s
    is above 0, else 0; a dataset's reward is the mean. No student is trained."""
    def learnability_of(k):
        with timed(times, "eval"):
            counts = correct_counts(w.model, w.tokenizer, datasets[k], w.cfg.intrinsic_samples,
                                    w.cfg, generators(*unit, k)[0])
        return statistics.mean(learnability(c / w.cfg.intrinsic_samples) for c in counts)

    return [[r] for r in w.procs.map(learnability_of, list(range(len(datasets))))], {}, {}


def update_window(window: list[float], mean_reward: float, size: int, tau: float):
    """Moving average of the teacher reward; a promotion is due when a full window clears tau."""
    window = (window + [mean_reward])[-size:]
    moving_avg = statistics.mean(window)
    return window, moving_avg, len(window) == size and moving_avg > tau


def promote(rewards: list[list[float]]) -> tuple[int, int]:
    """The best dataset k* (first among ties) and, of its copies, the one with the median reward."""
    means = [statistics.mean(r) for r in rewards]
    best = max(range(len(means)), key=means.__getitem__)
    order = sorted(range(len(rewards[best])), key=rewards[best].__getitem__)
    return best, order[(len(order) - 1) // 2]


def run_teacher(w: World, method: str, seed: int, job: Path) -> dict:
    """SOAR's outer loop (method "soar"), or the same loop with the intrinsic reward ("intrinsic").

    The teacher lives on the main process (it samples, is updated, is saved); the student work of
    each step is spread over all processes. Returns the final state: teacher and baseline-student
    adapters and the promoted questions (the teacher's is current on the main process only).
    """
    cfg, model, tokenizer, procs = w.cfg, w.model, w.tokenizer, w.procs
    grounded = method == "soar"
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
    load_adapter_state(model, "teacher", state["teacher"])
    load_adapter_state(model, "student", state["baseline"])

    bar = w.bar(iterable=range(state["step"], cfg.outer_steps), desc=f"seed {seed} {method} teacher",
                initial=state["step"], total=cfg.outer_steps)
    for step in bar:
        times, unit = {}, (seed, method, step)
        # 1. g*n valid (question, answer) pairs from the teacher, split into g datasets.
        pairs, drawn = procs.on_main(lambda: sample_pairs(
            model, tokenizer, cfg.g * cfg.n, cfg, generators(*unit, "teacher")[0], times))
        for rec in drawn:
            append_jsonl(job / "questions.jsonl", {"step": step, **rec})
        valid_rate = len(pairs) / len(drawn)
        datasets = split_datasets(pairs, cfg.g)
        if datasets is None:
            w.say(f"step {step}: only {len(pairs)} valid teacher pairs; no update this step")

        # 2-3. the reward of each dataset
        q_r = generators(*unit, "q_r")[1].sample(w.hard_train, min(cfg.q_r, len(w.hard_train)))
        baseline_acc = spread_greedy_accuracy(w, q_r, times)
        promoted, best, measures = False, None, None
        if datasets is not None:
            if grounded:
                steps = cfg.inner_steps + (cfg.promotion_extra_steps if state["n_promotions"] else 0)
                # every process measures the baseline itself: the same draws give the same value
                baseline_measures = {"greedy": baseline_acc, "sampled": sampled_accuracy(
                    model, tokenizer, q_r, cfg, generators(*unit, "measure")[0], times)}
                rewards, measures, copies, student_updates = grounded_rewards(
                    w, datasets, q_r, state["baseline"], baseline_measures, steps, unit, times)
                measures["baseline"] = baseline_measures
            else:
                rewards, copies, student_updates = intrinsic_rewards(w, datasets, unit, times)
            dataset_rewards = [statistics.mean(r) for r in rewards]

            # 4. promotion: when the moving average of the mean reward clears tau, the median copy
            # of the best dataset becomes the baseline and that dataset joins PQ.
            state["window"], moving_avg, due = update_window(
                state["window"], statistics.mean(dataset_rewards), cfg.ma_window, cfg.tau)
            if grounded and due:
                best, copy = promote(rewards)
                state["baseline"] = procs.broadcast(copies.get((best, copy)),
                                                    src=procs.owner(best * cfg.r + copy))
                load_adapter_state(model, "student", state["baseline"])
                state["promoted_questions"] += [{"problem": p["problem"], "answer": p["answer"],
                                                 "step": step} for p in datasets[best]]
                state["n_promotions"] += 1
                # Later rewards are measured against the new baseline: start a fresh average.
                state["window"] = []
                promoted = True

            # 5. the teacher's RLOO update across the g datasets
            with timed(times, "train"):
                update = teacher_update(model, tokenizer, optimizer, scheduler, datasets,
                                        dataset_rewards, cfg) if procs.main else {}
        else:
            dataset_rewards, moving_avg, student_updates = [], None, {}
            update = {"loss": None, "update": "no valid pairs"}
            scheduler.step()

        state["teacher"] = adapter_state(model, "teacher")
        state["step"] = step + 1
        if procs.main:
            row = teacher_row(w, method, seed, step, state, pairs, valid_rate, dataset_rewards,
                              moving_avg, promoted, best, baseline_acc, update, student_updates, times)
            if measures is not None:  # the copies' rewards by every measure, the chosen one or not
                row["copy_rewards"] = measures
            append_jsonl(job / "metrics.jsonl", row)
            w.log_external(f"seed{seed}/{method}", row)
            atomic_save({"state": state, "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict()}, job / "checkpoint.pt")
            log_step(row, bar)
            if cfg.sample_every and step % cfg.sample_every == 0 and pairs:
                show_sample(w, pairs[0])

    write_jsonl(job / "promoted_questions.jsonl", state["promoted_questions"])
    if procs.main:  # PEFT format, one folder per role: adapters/teacher and adapters/student (the baseline)
        save_adapter(model, "teacher", state["teacher"], job / "adapters")
        save_adapter(model, "student", state["baseline"], job / "adapters")
    return state


def teacher_row(w: World, method, seed, step, state, pairs, valid_rate, dataset_rewards,
                moving_avg, promoted, best, baseline_acc, update, student_updates, times) -> dict:
    """One outer step as a line of metrics.jsonl."""
    row = {"method": method, "seed": seed, "step": step, "dataset_rewards": dataset_rewards,
           "mean_reward": statistics.mean(dataset_rewards) if dataset_rewards else None,
           "moving_avg": moving_avg, "promoted": promoted, "promoted_dataset": best,
           "n_promotions": state["n_promotions"],
           "n_promoted_questions": len(state["promoted_questions"]),
           "baseline_acc": baseline_acc, "valid_rate": valid_rate,
           "teacher_loss": update["loss"], "teacher_update": update["update"],
           "student_updates": student_updates,
           "diversity": question_diversity([p["problem"] for p in pairs]),
           "times": {k: round(v, 3) for k, v in times.items()}}
    if pairs:
        row |= {"sample_question": pairs[0]["problem"], "sample_answer": pairs[0]["answer"]}
    if w.quality and pairs:
        row["quality"] = question_quality(w, pairs)
    return row


def question_quality(w: World, pairs) -> dict:
    """Tiny world only: shares of well-posed questions, correct teacher answers, "quickly" sums,
    and stepping stones (right-answered "quickly" sums of 2-4 digits)."""
    checks = [w.quality(p["problem"], p["answer"]) for p in pairs]
    return {key: statistics.mean(c[key] for c in checks)
            for key in ("well_posed", "correct", "quick", "stepping_stone")}


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


def show_sample(w: World, pair: dict) -> None:
    response = answer(w.model, w.tokenizer, [pair], w.cfg, n=1, temperature=0.0)[0]
    tqdm.write(f"  teacher Q: {pair['problem'][:300]!r} A: {pair['answer']!r}\n"
               f"  student:   {response[:300]!r}")


# ---- students trained from scratch, for evaluation ----------------------------------------------

def fresh_student_steps(w: World, name: str, seed: int, phases: list[tuple[list[dict], int]],
                        ckpt: dict | None):
    """A fresh student (the base model's LoRA) trained by RLOO on each (problems, steps) phase in
    turn: Hard-Only is [(hard_train, fresh_steps)], SOAR-PQ is [(PQ, pq_steps), (hard_train, ...)].
    Yields (metrics row, checkpoint) after every step; each step draws from its own generators."""
    cfg, model, tokenizer = w.cfg, w.model, w.tokenizer
    total = sum(steps for _, steps in phases)
    optimizer, scheduler = make_optimizer(model, "student", cfg.student_lr, total)
    step, student = 0, w.fresh_student
    if ckpt is not None:
        step, student = ckpt["step"], ckpt["student"]
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
    load_adapter_state(model, "student", student)
    schedule = [problems for problems, steps in phases for _ in range(steps)]
    probe = generators(seed, "probe")[1].sample(w.hard_train, min(cfg.q_r, len(w.hard_train)))
    for step in w.bar(iterable=range(step, total), desc=f"seed {seed} {name} student", initial=step,
                      total=total):
        times = {}
        generator, rng = generators(seed, name, step)
        batch = rng.sample(schedule[step], min(cfg.student_batch, len(schedule[step])))
        stats = rloo_step(model, tokenizer, optimizer, scheduler, batch, cfg, generator, times)
        row = {"method": name, "seed": seed, "step": step, "train_reward": stats["reward"],
               "update": stats["update"], "times": {k: round(v, 3) for k, v in times.items()}}
        if (step + 1) % cfg.probe_every == 0 or step + 1 == total:
            row["hard_train_acc"] = greedy_accuracy(model, tokenizer, probe, cfg, row["times"])
        yield row, {"step": step + 1, "student": adapter_state(model, "student"),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}


def train_fresh_students(w: World, seed: int, jobs: dict[str, list], seed_dir: Path) -> dict:
    """Train and evaluate the fresh students of `jobs` ({method: phases}); returns {method: result}.

    Each process takes one student at a time, and the processes step together so that the main
    process can write every student's log and checkpoint as it goes (and a killed run resumes
    from them, whatever its number of processes)."""
    procs, names, results = w.procs, list(jobs), {}
    for start in range(0, len(names), procs.count):
        batch = names[start:start + procs.count]
        saved = procs.on_main(lambda: [(load_checkpoint(seed_dir / n / "checkpoint.pt"),
                                        read_result(seed_dir / n / "result.json")) for n in batch])
        for name, (ckpt, _) in zip(batch, saved):
            forget_unfinished_steps(seed_dir / name, ckpt["step"] if ckpt else 0)
        mine = batch[procs.rank] if procs.rank < len(batch) else None
        ckpt, result = saved[procs.rank] if mine else (None, None)
        steps = fresh_student_steps(w, mine, seed, jobs[mine], ckpt) if mine and not result else iter(())
        while True:  # one step of every process's student, then the main process writes them
            stepped = next(steps, None)
            done = procs.gather([(mine, *stepped)] if stepped else [])
            if not done:
                break
            for name, row, checkpoint in done:
                append_jsonl(seed_dir / name / "metrics.jsonl", row)
                atomic_save(checkpoint, seed_dir / name / "checkpoint.pt")
                w.log_external(f"seed{seed}/{name}", row)
        if mine and not result:
            result = pass_at_k_result(w, mine, seed, adapter_state(w.model, "student"), spread=False)
        for name, res in procs.gather([(mine, result)] if mine else []):
            atomic_write_text(seed_dir / name / "result.json", json.dumps(res, indent=1))
            results[name] = res
    return results


def sample_teacher_questions(w: World, teacher: dict, seed: int, name: str, job: Path) -> list[dict]:
    """`sampled_questions` valid questions from a teacher (Grounded-T, Intrinsic-T, Base-T),
    written by the main process and saved for reuse."""
    path = job / "sampled_questions.jsonl"

    def sample_or_read():
        if path.exists():
            return read_jsonl(path)
        load_adapter_state(w.model, "teacher", teacher)
        pairs, _ = sample_pairs(w.model, w.tokenizer, w.cfg.sampled_questions, w.cfg,
                                generators(seed, name, "questions")[0], {})
        questions = [{"problem": p["problem"], "answer": p["answer"]} for p in pairs]
        write_jsonl(path, questions)
        return questions
    return w.procs.on_main(sample_or_read)


# ---- evaluation ---------------------------------------------------------------------------------

def read_result(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or torn by a kill while being written: evaluate again
        return None


def pass_at_k_result(w: World, name: str, seed: int, student: dict | None, spread: bool) -> dict:
    """pass@k on the hard test set from eval_samples answers per problem (None = base model).
    The problems go in units of one sampler batch, each with its own generator; `spread` splits
    the units over the processes (else this process does them all)."""
    cfg = w.cfg
    load_adapter_state(w.model, "student", student if student is not None else w.fresh_student)
    parts = chunks(w.hard_test, max(1, cfg.sample_batch // cfg.eval_samples))
    bar = w.bar(total=len(parts), desc=f"seed {seed} eval {name}", leave=False)

    def count(i):
        counts = correct_counts(w.model, w.tokenizer, parts[i], cfg.eval_samples, cfg,
                                generators(seed, name, "eval", i)[0])
        bar.update(w.procs.count if spread else 1)
        return counts

    units = list(range(len(parts)))
    counts = [c for part in (w.procs.map(count, units) if spread else map(count, units)) for c in part]
    bar.close()
    ks = [int(k) for k in cfg.ks.split(",")]
    return {"method": name, "seed": seed, "correct_counts": counts,
            "pass_at_k": {str(k): statistics.mean(pass_at_k(cfg.eval_samples, c, k) for c in counts)
                          for k in ks}}


def evaluate(w: World, student: dict | None, name: str, seed: int, job: Path) -> dict:
    """pass@k of one student, spread over the processes; saved, and read back on resume."""
    result = w.procs.on_main(lambda: read_result(job / "result.json"))
    if result is None:
        result = pass_at_k_result(w, name, seed, student, spread=True)
        atomic_write_text(job / "result.json", json.dumps(result, indent=1))
    return result


def run_seed(w: World, seed: int, run_dir: Path) -> dict:
    """Every requested method for one seed; returns {method: pass@k result}."""
    cfg = w.cfg
    methods = cfg.methods.split(",")
    seed_dir = run_dir / f"seed{seed}"

    hard = [(w.hard_train, cfg.fresh_steps)]
    results, jobs = {}, {}
    if "base" in methods:
        results["base"] = evaluate(w, None, "base", seed, seed_dir / "base")
    if "soar" in methods or "grounded_t" in methods:
        soar = run_teacher(w, "soar", seed, seed_dir / "soar")
    if "soar" in methods:
        results["soar_ps"] = evaluate(w, soar["baseline"], "soar_ps", seed, seed_dir / "soar_ps")
        pq = soar["promoted_questions"]
        jobs["soar_pq"] = ([(pq, cfg.pq_steps)] if pq else []) + hard
    if "hard_only" in methods:
        jobs["hard_only"] = hard
    # Students of questions sampled from a teacher: the trained SOAR teacher (Grounded-T), the
    # intrinsic-reward teacher (Intrinsic-T) and the untrained model (Base-T).
    teachers = {"grounded_t": lambda: soar["teacher"],
                "intrinsic_t": lambda: run_teacher(w, "intrinsic", seed, seed_dir / "intrinsic")["teacher"],
                "base_t": lambda: w.fresh_teacher}
    for name in [m for m in teachers if m in methods]:
        questions = sample_teacher_questions(w, teachers[name](), seed, name, seed_dir / name)
        if not questions:
            w.say(f"seed {seed} {name}: the teacher wrote no valid question; "
                  "its student trains on the hard set alone")
        jobs[name] = ([(questions, cfg.pq_steps)] if questions else []) + hard
    return results | train_fresh_students(w, seed, jobs, seed_dir)


# ---- summary: the pass@k table over seeds, and what the teachers wrote --------------------------

METHOD_ORDER = ("base", "hard_only", "soar_ps", "soar_pq", "grounded_t", "intrinsic_t", "base_t")
QUESTION_SETS = {"soar_pq": "soar/promoted_questions.jsonl",
                 "grounded_t": "grounded_t/sampled_questions.jsonl",
                 "intrinsic_t": "intrinsic_t/sampled_questions.jsonl",
                 "base_t": "base_t/sampled_questions.jsonl"}


def mean_sd(values: list[float]) -> dict:
    return {"mean": statistics.mean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0, "n_seeds": len(values)}


def pass_at_k_table(per_seed: dict[int, dict]) -> dict:
    """{method: {k: {"mean", "sd", "n_seeds"}}} over the seeds that have the method."""
    table = {}
    for method in METHOD_ORDER:
        runs = [results[method]["pass_at_k"] for results in per_seed.values() if method in results]
        if runs:
            table[method] = {k: mean_sd([r[k] for r in runs]) for k in runs[0]}
    return table


# (a, b): is a better than b? The paper's comparisons, each measured seed by seed.
PAIRED = (("soar_pq", "hard_only"), ("soar_ps", "hard_only"), ("grounded_t", "base_t"),
          ("grounded_t", "intrinsic_t"), ("soar_pq", "base_t"), ("intrinsic_t", "base_t"))


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile (p > 0.5), by bisection on its CDF."""
    def cdf(t):
        return 1 - mpmath.betainc(df / 2, 0.5, 0, df / (df + t * t), regularized=True) / 2
    return float(mpmath.findroot(lambda t: cdf(t) - p, (0, 1000), solver="bisect"))


def paired_differences(per_seed: dict[int, dict]) -> dict:
    """Per pair of PAIRED and k: the mean per-seed difference of pass@k, its SD, a 95% t interval
    and the number of seeds where a beat b (seeds that ran both methods)."""
    out = {}
    for a, b in PAIRED:
        runs = [(r[a]["pass_at_k"], r[b]["pass_at_k"]) for r in per_seed.values() if a in r and b in r]
        if not runs:
            continue
        out[f"{a} - {b}"] = row = {}
        for k in runs[0][0]:
            diffs = [pa[k] - pb[k] for pa, pb in runs]
            row[k] = {**mean_ci(diffs), "wins": sum(d > 0 for d in diffs)}
    return out


def mean_ci(values: list[float]) -> dict:
    """mean_sd with a 95% t interval of the mean (NaN from a single value)."""
    stats = mean_sd(values)
    half = (t_quantile(0.975, len(values) - 1) * stats["sd"] / math.sqrt(len(values))
            if len(values) > 1 else float("nan"))
    return {**stats, "ci95": [stats["mean"] - half, stats["mean"] + half]}


# What a teacher writes, logged per outer step: (group, measure) of its metrics rows.
TREND_MEASURES = (("quality", "stepping_stone"), ("quality", "quick"), ("quality", "correct"),
                  ("diversity", "vendi"))


def teacher_trends(run_dir: Path, seeds) -> dict:
    """Does a teacher learn? Per teacher (SOAR's, the intrinsic one) and measure, the per-seed
    least-squares slope over outer steps (per 10 steps), with a 95% t interval over seeds."""
    trends = {}
    for method in ("soar", "intrinsic"):
        runs = [read_jsonl(path) for s in seeds
                if (path := run_dir / f"seed{s}" / method / "metrics.jsonl").exists()]
        for group, measure in TREND_MEASURES:
            slopes = []
            for rows in runs:
                points = [(r["step"], r[group][measure]) for r in rows
                          if measure in (r.get(group) or {})]
                if len(points) > 1:
                    slopes.append(10 * statistics.linear_regression(*zip(*points)).slope)
            if slopes:
                trends.setdefault(method, {})[f"{measure} / 10 steps"] = mean_ci(slopes)
    return trends


def question_analysis(w: World, run_dir: Path, seeds) -> dict:
    """Per question set (PQ, Intrinsic-T's and Base-T's samples): size and diversity, and in the
    tiny world the exact share of well-posed questions and of correct answers."""
    analysis = {}
    for name, rel in QUESTION_SETS.items():
        per_seed = [read_jsonl(run_dir / f"seed{s}" / rel) for s in seeds]
        per_seed = [qs for qs in per_seed if qs]
        if not per_seed:
            continue
        stats = [{"n": len(qs), **question_diversity([q["problem"] for q in qs]),
                  **(question_quality(w, qs) if w.quality else {})} for qs in per_seed]
        analysis[name] = {key: mean_sd([s[key] for s in stats]) for key in stats[0]}
    return analysis


def print_table(table: dict) -> None:
    ks = list(next(iter(table.values())).keys()) if table else []
    print("\npass@k (%) on the hard test set, mean ± SD over seeds")
    print(f"{'method':<12}" + "".join(f"{'@' + k:>14}" for k in ks) + "   seeds")
    for method, row in table.items():
        cells = "".join(f"{100 * row[k]['mean']:>8.1f} ± {100 * row[k]['sd']:<4.1f}" for k in ks)
        print(f"{method:<12}{cells}   {row[ks[0]]['n_seeds']}")


def print_paired(paired: dict) -> None:
    if not paired:
        return
    ks = list(next(iter(paired.values())).keys())
    print("\npaired differences of pass@k (points) over seeds: mean [95% t interval] (seeds a > b)")
    print(f"{'a - b':<26}" + "".join(f"{'@' + k:>27}" for k in ks))
    for pair, row in paired.items():
        print(f"{pair:<26}" + "".join(
            f"{100 * c['mean']:>+7.1f} [{100 * c['ci95'][0]:+6.1f},{100 * c['ci95'][1]:+6.1f}] "
            f"({c['wins']}/{c['n_seeds']})" for c in row.values()))


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
    if argv[:1] == ["report"]:
        if len(argv) != 2:
            raise SystemExit("usage: python train.py report RUN_DIR")
        for path in write_report(Path(argv[1])):
            print(path)
        return
    cfg, resuming, processes = parse_config(argv)
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
    seeds = range(cfg.seed, cfg.seed + cfg.seeds)
    try:
        per_seed = {seed: run_seed(w, seed, run_dir) for seed in seeds}
    except KeyboardInterrupt:
        raise SystemExit(f"\ninterrupted: every completed step is saved; continue with "
                         f"`python train.py --resume {run_dir}`") from None
    procs.close()
    if not procs.main:
        return
    table = pass_at_k_table(per_seed)
    summary = {"pass_at_k": table, "paired_differences": paired_differences(per_seed),
               "question_analysis": question_analysis(w, run_dir, seeds),
               "teacher_trends": teacher_trends(run_dir, seeds), "config": dataclasses.asdict(cfg)}
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=1))
    print_table(table)
    print_paired(summary["paired_differences"])
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
