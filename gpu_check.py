"""`python bench.py --gpu-check`: the README's GPU predictions measured in one call, on a lent GPU
machine with no network and no model cache, in at most 8 minutes; one table, one JSON file.

Parts, in order, each under its own time budget (`BUDGETS`): a part that fails, runs out of
memory, misses a package or runs out of time becomes a row that says why, and the next one starts.
  card            the device and its measured copy bandwidth (what bounds decoding)
  <preset> build  a model of the preset's exact shape (configs/*.json), random weights, saved
  <preset> train  one student training step at the preset's micro-batch, prompt and answer
                  lengths and checkpointing, with 4-bit weights (before) and bf16 ones (after):
                  tokens/s, peak memory beside the README's prediction, where the time goes
  <preset> decode sampling at the preset's sample batch: decode tokens/s of today's eager decoder
                  (before) and of the static one replayed as CUDA graphs from weights dequantized
                  once (after) on the same rows, against the bandwidth bound; the fast path's
                  peak memory; kernels launched and GPU time of a decode step on each path
  tiny world      one outer step of the default (tiny) preset, beside this CPU's time for it
Memory is capped at 24 GiB whatever the card (MEMORY_CAP_GIB).
for the presets `small` (Qwen2.5-1.5B) and `paper` (Llama-3.2-3B). Weights are 4-bit NF4 when
bitsandbytes imports, else bf16 (the table says which, and what bf16 weights add to the
prediction). `--dry-run` runs the same parts on the CPU at toy shapes, in under a minute: that is
what the test suite runs. How to run it on a lent machine: docs/speed.md.

The parts run in this one process (one import of torch and transformers, the same code in a dry
run); a budget is enforced with SIGALRM, which interrupts Python between two operations. A part
stuck inside one long C call cannot be interrupted so: the command in docs/speed.md runs under
`timeout`, and the JSON file is rewritten after every part, so what finished is kept.
"""
import dataclasses
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import measure
import models
import sampler
from config import PRESETS, Config
from run_dir import read_jsonl, write_jsonl

GIB = 2 ** 30
ROOT = Path(__file__).resolve().parent
CONFIGS = ROOT / "configs"
PRESET_MODELS = {"small": "qwen2.5-1.5b.json", "paper": "llama-3.2-3b.json"}

# The README's predicted peaks ("One 24 GB GPU: memory and presets", from `bench.py --memory`),
# GiB, for 4-bit weights, without the ~1 GiB of CUDA context and allocator slack. Sampling holds
# the 4-bit layers dequantized (sampler.dequantized_base): +2.4 and +5.3 GiB (2026-12-07).
PREDICTED_PEAK = {"small": {"train": 11.4, "sample": 9.2}, "paper": {"train": 10.3, "sample": 17.6}}
# The README's time per outer step (an estimate from token counts): ~2 M decoded and ~3.4 M
# trained tokens a step, at an assumed ~6,000 decoded tokens/s and 80 TFLOP/s (6 x params FLOPs
# a trained token): ~12-15 min for Qwen2.5-1.5B, about twice that for Llama-3.2-3B.
README_STEP = {"decode_tokens": 2.0e6, "train_tokens": 3.4e6, "decode_rate": 6000, "tflops": 80,
               "minutes": {"small": "~12-15 min", "paper": "~24-30 min (about twice small)"}}
# One tiny-preset outer step on this project's 2-core CPU, measured with `measure_tiny_step_here()`
# (the same code as the `tiny world` part, device cpu): seconds, and when and how.
# Measured on a busy machine (load average 5.7 before, 8.1 after, on 2 cores; niced): an upper
# bound. An idle one took 48.4 s for an earlier tiny world's step (docs/speed.md).
TINY_STEP_CPU = {"seconds": 228.3, "measured": "2026-11-29, busy: load 5.7-8.1"}

# Seconds per part; they add up to 480, which leaves the 9 minutes of docs/speed.md's command
# room for starting up.
BUDGETS = {"card": 10, "small build": 30, "small train": 60, "small decode": 85,
           "paper build": 50, "paper train": 80, "paper decode": 85, "tiny world": 80}
TOTAL_BUDGET = 480
# Every memory part runs under this cap (`torch.cuda.set_per_process_memory_fraction`): the
# presets are sized for a 24 GB consumer card, and a larger lent card must not hide a peak above it.
MEMORY_CAP_GIB = 24
# Decode steps that both decoders are timed over, on the same rows: today's eager decoder takes
# 70-80 s for the whole 512 (H200, 2026-11-30), more than a part's budget holds twice; the fast
# one is also timed over the whole answer.
COMPARED_TOKENS = 128

# --dry-run: toy shapes and settings, the same code paths, on the CPU in seconds.
TOY_SHAPES = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, vocab_size=512,
                  max_position_embeddings=16384)  # above Llama 3's rope scaling's 8192
TOY_SETTINGS = dict(micro_batch=2, sample_batch=8, group_size=4, prompt_tokens=8, student_max_tokens=8,
                    sample_tokens=6)
# The tiny world's model at the test suite's toy size (tests/conftest.py builds the same one, so
# the two share one cached copy), and a toy outer step.
TOY_TINY_BUILD = dict(steps=250, batch_size=32, hidden_size=64, intermediate_size=192, num_hidden_layers=2)
TOY_TINY_STEP = dict(g=2, n=2, r=1, q_r=4, inner_steps=1, student_batch=2, group_size=2,
                     teacher_max_tokens=48, student_max_tokens=24)


def preset_settings(name: str) -> dict:
    """A preset's run settings (every Config field). The one place this file reads the run's
    configuration: a move of Config and PRESETS is a one-line change here."""
    return dataclasses.asdict(Config(**PRESETS[name].defaults))


# ---- rows, parts and budgets ---------------------------------------------------------------------

@dataclass
class Row:
    part: str
    what: str
    measured: str = ""
    expected: str = ""      # the README's prediction, or the reference the figure is read against
    notes: str = ""
    status: str = "ok"      # ok, timed out, out of memory, missing package, not ready, failed, skipped
    values: dict = field(default_factory=dict)  # the raw numbers, for the JSON file


class PartTimeout(BaseException):
    """A part ran past its budget. A BaseException, so no `except Exception` on the way swallows it."""


class NotReady(RuntimeError):
    """Something a part needs is not there (a build that failed, a tiny model not carried)."""


@contextmanager
def time_limit(seconds: float):
    def expire(signum, frame):
        raise PartTimeout
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def failure(e: BaseException, seconds: float) -> tuple[str, str]:
    """(status, why) of a part that stopped with `e`."""
    if isinstance(e, PartTimeout):
        return "timed out", f"stopped at its {seconds:.0f} s budget"
    if isinstance(e, torch.OutOfMemoryError):
        return "out of memory", str(e).split("\n")[0][:300]
    if isinstance(e, ModuleNotFoundError):
        return "missing package", f"no module {e.name!r}: bring its wheel (docs/speed.md)"
    if isinstance(e, NotReady):
        return "not ready", str(e)
    return "failed", f"{type(e).__name__}: {str(e)[:300]}"


class Check:
    """What the parts share: the device, the rows so far, figures that later parts use (the
    bandwidth, each preset's model), and the JSON file, rewritten after every part."""

    def __init__(self, device: torch.device, dry: bool, json_path: Path, workdir: Path):
        self.device, self.dry, self.json_path, self.workdir = device, dry, json_path, workdir
        self.rows: list[Row] = []
        self.facts: dict = {}
        self.part_seconds: dict[str, float] = {}
        self.doing = ""  # the measurement under way: what a failure row names
        self.start = time.monotonic()
        self.deadline = self.start + TOTAL_BUDGET
        self.quant, self.quant_why = weights_kind(device)

    def add(self, part: str, what: str, measured: str = "", expected: str = "", notes: str = "", **values):
        self.rows.append(Row(part, what, measured, expected, notes, values=values))

    def run(self, part: str, fn, *args, budget: float | None = None) -> None:
        """fn(self, *args) under the part's budget (or `budget`), and what is left of the run's."""
        left = self.deadline - time.monotonic()
        seconds = min(budget or BUDGETS[part], left)
        if left < 1:
            self.rows.append(Row(part, "(the whole part)", "SKIPPED", status="skipped",
                                 notes=f"the run's {TOTAL_BUDGET} s were spent"))
            return
        self.doing, start, problem = "(starting)", time.perf_counter(), None
        try:
            with time_limit(seconds):
                fn(self, *args)
        except BaseException as e:  # noqa: BLE001  (every failure becomes a row; Ctrl-C still stops)
            if isinstance(e, KeyboardInterrupt):
                raise
            problem = failure(e, seconds)
        # Freed only here, after the handler: the exception's traceback held the part's tensors.
        if problem:
            status, why = problem
            self.rows.append(Row(part, self.doing, status.upper(), status=status, notes=why))
        self.part_seconds[part] = round(time.perf_counter() - start, 2)
        free_memory(self.device)
        self.save()

    def summary(self) -> dict:
        """The figures that runs on other cards and other commits compare, None where not measured."""
        presets = {}
        for preset in PRESET_MODELS:
            facts = self.facts.get(preset, {})
            peaks = {r.what: r.values.get("peak_gib") for r in self.rows
                     if r.part == preset and "peak_gib" in r.values}
            # no part times a whole outer step of a preset: its projection from the measured rates
            projected = [r.values["minutes"] * 60 for r in self.rows
                         if r.part == preset and "minutes" in r.values]
            presets[preset] = {
                "decode_tok_s": {"eager": facts.get("eager_decode_tokens_per_s"),
                                 "fast": facts.get("fast_decode_tokens_per_s")},
                "decode_tokens_compared": facts.get("compared_tokens"),
                "decode_tok_s_fast_whole_answer": facts.get("decode_tokens_per_s"),
                "train_tok_s": {"before": facts.get("train_tokens_per_s", {}).get("before"),
                                "after": facts.get("train_tokens_per_s", {}).get("after")},
                "outer_step_s": None, "outer_step_s_projected": projected[0] if projected else None,
                "peak_gib": peaks}
        return {"card": self.facts.get("device"), "presets": presets}

    def save(self) -> None:
        report = {"written": time.strftime("%Y-%m-%d %H:%M:%S"), "dry_run": self.dry, "device": self.facts.get("device", str(self.device)),
                  "weights": self.quant, "weights_why": self.quant_why, "versions": versions(),
                  "wall_s": round(time.monotonic() - self.start, 1), "part_seconds": self.part_seconds,
                  "summary": self.summary(), "rows": [dataclasses.asdict(r) for r in self.rows]}
        self.json_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.json_path.with_name(self.json_path.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(self.json_path)  # a run killed mid-write leaves the previous part's file


def weights_kind(device: torch.device) -> tuple[str, str]:
    """("4-bit NF4", why) when bitsandbytes imports and quantizes on `device`, else ("bf16", why).
    A quantization is tried because a wheel can import and still lack a binary for the card's CUDA."""
    try:
        import bitsandbytes as bnb
    except Exception as e:  # noqa: BLE001  (missing, or broken)
        return "bf16", f"bitsandbytes does not import: {type(e).__name__}: {str(e)[:120]}"
    try:
        bnb.functional.quantize_4bit(torch.ones(64, 64, dtype=torch.bfloat16, device=device), quant_type="nf4")
    except Exception as e:  # noqa: BLE001
        return "bf16", f"bitsandbytes {bnb.__version__} does not quantize here: {type(e).__name__}: {str(e)[:120]}"
    return "4-bit NF4", f"bitsandbytes {bnb.__version__}"


def versions() -> dict:
    out = {"torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("transformers", "peft", "bitsandbytes", "math_verify"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001
            out[name] = None
    return out


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(device: torch.device) -> None:
    free_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_text(device: torch.device) -> tuple[str, float | None, str]:
    """The allocator's peak since `reset_peak` (GiB; a dash on a CPU, which has none), and a note
    with what the allocator reserved and the card had in use (CUDA context included)."""
    if device.type != "cuda":
        return "- (CPU)", None, ""
    peak = torch.cuda.max_memory_allocated() / GIB
    free, total = torch.cuda.mem_get_info()
    return (f"{peak:.2f} GiB", peak, f"reserved at most {torch.cuda.max_memory_reserved() / GIB:.2f} GiB, "
            f"card memory in use after it (CUDA context included) {(total - free) / GIB:.2f} GiB; ")


# ---- the card --------------------------------------------------------------------------------------

def copy_bandwidth(device: torch.device, repeats: int = 10) -> float:
    """Bytes/s of a large device-to-device copy, read and write counted: the rate a decode step
    that streams the weights and the KV cache can at best read them."""
    n = GIB if device.type == "cuda" else 64 * 2 ** 20
    src = torch.empty(n, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(measure.timed_call(lambda: dst.copy_(src), device)[1] for _ in range(repeats))
    return 2 * n / best


def card_part(check: Check) -> None:
    check.doing = "device"
    if check.device.type == "cuda":
        props = torch.cuda.get_device_properties(check.device)
        name, notes = props.name, f"{props.total_memory / GIB:.0f} GiB, CUDA {torch.version.cuda}"
    else:
        name, notes = "CPU (dry run)", f"torch threads: {torch.get_num_threads()}"
    check.facts["device"] = name
    if check.device.type == "cuda":
        fraction = min(1.0, MEMORY_CAP_GIB * GIB / props.total_memory)
        torch.cuda.set_per_process_memory_fraction(fraction)
        notes += f"; memory capped at {MEMORY_CAP_GIB} GiB (fraction {fraction:.3f})"
    check.add("card", "device", name, notes=notes + f"; weights {check.quant} ({check.quant_why})")
    check.doing = "copy bandwidth"
    bandwidth = copy_bandwidth(check.device)
    check.facts["bandwidth"] = bandwidth
    check.add("card", "copy bandwidth", f"{bandwidth / 1e9:.0f} GB/s",
              notes="device-to-device copy, read + write bytes, best of 10", bytes_per_s=bandwidth)


# ---- the presets' models ---------------------------------------------------------------------------

def settings(preset: str, dry: bool, device: torch.device) -> dict:
    """What a run of the preset does in the steps measured here."""
    s = preset_settings(preset)
    out = dict(micro_batch=s["micro_batch"], sample_batch=s["sample_batch"], group_size=s["group_size"],
               prompt_tokens=measure.PROMPT_TOKENS, student_max_tokens=s["student_max_tokens"],
               sample_tokens=max(s["student_max_tokens"], s["teacher_max_tokens"]),
               lora_rank=s["lora_rank"], lora_alpha=s["lora_alpha"], kl_coef=s["kl_coef"],
               lr=s["student_lr"], checkpointing=s["checkpointing"])
    if out["checkpointing"] == "auto":  # as train.py resolves it
        out["checkpointing"] = "on" if device.type == "cuda" else "off"
    return out | (TOY_SETTINGS if dry else {})


def model_config(preset: str, dry: bool):
    values = json.loads((CONFIGS / PRESET_MODELS[preset]).read_text())
    return AutoConfig.for_model(**(values | (TOY_SHAPES if dry else {})))


def weight_bytes(model) -> tuple[int, int]:
    """(bf16 bytes, 4-bit NF4 bytes) of a bf16 model's weights: what a 4-bit load keeps of it. The
    decoder layers' linear weights go to 4 bits with one 8-bit constant per 64 weights and one
    float32 per 256 of those (double quantization); embeddings, norms and biases stay bf16."""
    bf16 = sum(p.numel() for p in model.parameters()) * 2
    linear = sum(m.weight.numel() for name, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and ".layers." in name)
    return bf16, bf16 - 2 * linear + linear // 2 + linear // 64 + linear // (64 * 256) * 4


def build_part(check: Check, preset: str) -> None:
    check.doing = "build"
    start = time.perf_counter()
    config = model_config(preset, check.dry)
    torch.manual_seed(0)
    with torch.device(check.device):  # random init where the model runs: seconds, not minutes
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    params = measure.linear_params(model)
    bf16, nf4 = weight_bytes(model)
    path = check.workdir / preset
    model.save_pretrained(path)
    del model
    tokenizer_dir = check.workdir / "tokenizer"
    if not tokenizer_dir.exists():  # a word-level tokenizer: the check feeds token ids directly
        AutoTokenizer.from_pretrained(measure.random_model_dir(check.workdir / "random", 64)).save_pretrained(tokenizer_dir)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)
    check.facts[preset] = dict(path=path, params=params, bf16_bytes=bf16, nf4_bytes=nf4, config=config)
    check.add(preset, "model", f"{params / 1e6:,.1f}M linear params",
              notes=f"configs/{PRESET_MODELS[preset]}{' at toy shapes' if check.dry else ''}, random weights "
                    f"({bf16 / GIB:.2f} GiB in bf16, {nf4 / GIB:.2f} GiB in 4-bit), built and saved in "
                    f"{time.perf_counter() - start:.1f} s", params=params, bf16_bytes=bf16, nf4_bytes=nf4)


def preset_model(check: Check, preset: str, s: dict, checkpointing: bool, quant: str | None = None):
    """The preset's saved model, loaded as a run loads it: 4-bit or bf16 (`quant`, by default the
    check's), both LoRA adapters."""
    if preset not in check.facts:
        raise NotReady(f"no {preset} model: its build did not finish")
    check.doing = "load"
    quant = "4bit" if (quant or check.quant).startswith("4-bit") else "none"
    model, _ = models.load_model(str(check.facts[preset]["path"]), quant, s["lora_rank"], s["lora_alpha"],
                                 device=check.device.type, checkpointing=checkpointing, dtype=torch.bfloat16)
    return model


def random_ids(rows: int, length: int, vocab: int, generator: torch.Generator) -> list[list[int]]:
    return torch.randint(1, vocab, (rows, length), generator=generator).tolist()  # 0 is padding


def expected_peak(check: Check, preset: str, kind: str, quant: str) -> tuple[str, float]:
    """The README's predicted peak (GiB), moved by what bf16 weights add where `quant` is bf16."""
    predicted = PREDICTED_PEAK[preset][kind]
    facts = check.facts[preset]
    extra = 0.0 if quant.startswith("4-bit") else (facts["bf16_bytes"] - facts["nf4_bytes"]) / GIB
    text = f"{predicted:.1f} GiB (README, 4-bit)"
    if extra:
        text += f"; {predicted + extra:.1f} with bf16 weights (+{extra:.1f})"
    if check.dry:
        text += "; toy shapes here"
    return text, predicted + extra


def peak_row(check: Check, preset: str, kind: str, what: str, notes: str, quant: str | None = None,
             **values) -> None:
    measured, peak, memory = peak_text(check.device)
    expected, predicted = expected_peak(check, preset, kind, quant or check.quant)
    notes = memory + notes
    if peak is not None and not check.dry:
        notes = f"measured / predicted {peak / predicted:.2f}; " + notes
    check.add(preset, what, measured, expected, notes, peak_gib=peak, predicted_gib=predicted, **values)


class oom_retries:
    """Collects the warnings that sampler.py and models.py give when they halve a batch after
    running out of memory: a peak measured after a retry is not the preset's peak."""

    def __enter__(self):
        self.context = warnings.catch_warnings(record=True)
        self.caught = self.context.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self.context.__exit__(*exc)

    def note(self) -> str:
        halved = [str(w.message) for w in self.caught if "out of memory" in str(w.message)]
        return f"OUT OF MEMORY, batch halved {len(halved)}x: {halved[0][:120]}; " if halved else ""


def train_part(check: Check, preset: str) -> None:
    """The student's training step with the weights a run loads (4-bit where bitsandbytes works:
    before) and with bf16 weights (after): bf16 skips dequantizing every weight in every forward
    and backward, at the memory of the bf16 weights."""
    check.doing = "preset settings"
    s = settings(preset, check.dry, check.device)
    kinds = [("before", check.quant)] + ([("after", "bf16")] if check.quant != "bf16" else [])
    for when, quant in kinds:
        model = preset_model(check, preset, s, checkpointing=s["checkpointing"] == "on", quant=quant)
        check.doing = f"student training step, {quant} weights"
        rows, vocab = s["micro_batch"], model.config.vocab_size
        generator = torch.Generator().manual_seed(0)
        prompts = random_ids(rows, s["prompt_tokens"], vocab, generator)
        answers = random_ids(rows, s["student_max_tokens"], vocab, generator)
        advantages = torch.randn(rows, generator=generator)
        optimizer, _ = models.make_optimizer(model, "student", s["lr"], total_steps=10)
        reset_peak(check.device)
        step = lambda: models.policy_gradient_step(  # noqa: E731
            model, "student", optimizer, prompts, answers, advantages, kl_coef=s["kl_coef"], pad_token_id=0,
            micro_batch=s["micro_batch"], max_new_tokens=s["student_max_tokens"])
        with oom_retries() as retries:
            measure.timed_call(step, check.device)  # the first step also sets up the optimizer's moments
            seconds = measure.timed_call(step, check.device)[1]
        tokens = rows * (s["prompt_tokens"] + s["student_max_tokens"])
        tflops = 6 * check.facts[preset]["params"] * tokens / seconds / 1e12
        check.facts[preset].setdefault("train_tokens_per_s", {})[when] = tokens / seconds
        check.facts[preset]["tflops"] = tflops
        peak_row(check, preset, "train", f"peak, student training step, {quant} weights",
                 retries.note() + f"{when}: micro-batch {rows} x ({s['prompt_tokens']} + {s['student_max_tokens']}) "
                 f"tokens, checkpointing {s['checkpointing']}, KL {s['kl_coef']}; a step {seconds:.2f} s, "
                 f"{tokens / seconds:.0f} tok/s, {tflops:.1f} TFLOP/s at 6 x params a token (README assumes "
                 f"{README_STEP['tflops']}); where the time goes: {profile(step, check.device)}",
                 quant, step_s=seconds, tokens=tokens, tflops=tflops, tokens_per_s=tokens / seconds)
        del model, optimizer
        free_memory(check.device)


def profiled(device: torch.device) -> list:
    """What torch.profiler records: the host, and the GPU's kernels where there is one."""
    return [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])


def profile(fn, device: torch.device, top: int = 5) -> str:
    """One call of fn under torch.profiler: its `top` operators by their own time on the device
    (on a CPU, by their own CPU time), each with its share, and how many kernels it launched."""
    with torch.profiler.profile(activities=profiled(device)) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.key_averages()
    own = (lambda e: e.self_device_time_total) if device.type == "cuda" else (lambda e: e.self_cpu_time_total)
    total = sum(own(e) for e in events) or 1
    ranked = sorted(events, key=own, reverse=True)[:top]
    return ", ".join(f"{e.key} {own(e) / total:.0%}" for e in ranked)


def config_kv_bytes_per_token(config) -> int:
    """Bytes of bf16 keys and values one token keeps in one layer."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_key_value_heads * head_dim * 2


@contextmanager
def path_before():
    """Sampling as it was before the fast path: each 4-bit layer dequantized in every step."""
    real = sampler.dequantized_base
    sampler.dequantized_base = lambda model: nullcontext()
    try:
        yield
    finally:
        sampler.dequantized_base = real


def step_profile(fn, device: torch.device, steps: int = 8) -> dict:
    """Per decode step of a `steps`-step rollout (its prefill included, a ninth): kernels
    launched on the GPU (operators run, on a CPU), host time, and the GPU's busy time."""
    fn(steps + 1)  # warm-up: a fast path captures its graphs here
    with torch.profiler.profile(activities=profiled(device)) as prof:
        start = time.perf_counter()
        fn(steps + 1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    events = prof.events()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    launched = len(kernels) if device.type == "cuda" else sum(e.cpu_parent is None for e in events)
    busy = sum(e.device_time for e in kernels) / 1e6  # microseconds
    forwards = steps + 1
    return dict(launches=launched / forwards, host_ms=wall / forwards * 1e3,
                gpu_busy_ms=busy / forwards * 1e3 if kernels else None)


def decode_part(check: Check, preset: str) -> None:
    """Today's eager decoder (before) and the fast path (after: the static decoder replayed as CUDA
    graphs, sampling from weights dequantized once), on the same rows and lengths; then the fast
    path over the whole answer, with its peak memory."""
    check.doing = "preset settings"
    s = settings(preset, check.dry, check.device)
    model = preset_model(check, preset, s, checkpointing=False)
    models.activate(model, "student")
    model.eval()
    group, length, prompt_len = s["group_size"], s["sample_tokens"], s["prompt_tokens"]
    prompts = random_ids(max(1, s["sample_batch"] // group), prompt_len, model.config.vocab_size,
                         torch.Generator().manual_seed(0))
    rows = len(prompts) * group
    never = [model.config.vocab_size]  # a stop id no row can draw: every row decodes `length` tokens

    def before(tokens):
        with path_before():
            return sampler.sample(model, prompts, n=group, max_new_tokens=tokens, temperature=1.0,
                                  eos_token_ids=never, pad_token_id=0, batch_size=rows,
                                  generator=torch.Generator().manual_seed(0), static=False)

    def after(tokens):
        return sampler.sample(model, prompts, n=group, max_new_tokens=tokens, temperature=1.0,
                              eos_token_ids=never, pad_token_id=0, batch_size=rows,
                              generator=torch.Generator().manual_seed(0), static=True)

    # Bytes one decode step reads: the weights (base and the active adapter) and, on average over
    # the answer, the KV cache of every row at its mean length.
    config, weights = model.config, measure.tensor_bytes(model)
    kv = rows * (prompt_len + length / 2) * config.num_hidden_layers * config_kv_bytes_per_token(config)
    step_bytes = weights["base"] + weights["adapter"] + kv
    bandwidth = check.facts.get("bandwidth")
    bound = rows * bandwidth / step_bytes if bandwidth else None
    compared = min(COMPARED_TOKENS, length)

    def rate(fn, tokens):
        fn(2)  # warm-up
        seconds = (measure.timed_call(lambda: fn(1), check.device)[1],
                   measure.timed_call(lambda: fn(tokens), check.device)[1])
        return rows * (tokens - 1) / max(seconds[1] - seconds[0], 1e-9), seconds

    rates = {}
    with torch.no_grad(), oom_retries() as retries:
        for name, fn in (("before", before), ("after", after)):
            check.doing = f"decoding {rows} rows x {compared} tokens, {name}"
            rates[name], seconds = rate(fn, compared)
            check.doing = f"profile of a decode step, {name}"
            prof = step_profile(fn, check.device)
            share = f"{rates[name] / bound:.0%} of the bound" if bound else "no bandwidth measured"
            what = {"before": "eager decoder, 4-bit dequantized every step (before)",
                    "after": "static decoder, CUDA graphs, dequantized once (after)"}[name]
            vs = f"; after / before {rates['after'] / rates['before']:.2f}x" if name == "after" else ""
            busy = "-" if prof["gpu_busy_ms"] is None else f"{prof['gpu_busy_ms']:.1f}"
            check.add(preset, f"decode tok/s, {what}", f"{rates[name]:.0f} tok/s",
                      f"bound {bound:.0f} tok/s" if bound else "",
                      f"{share}; {rows} rows x {compared} tokens in {seconds[1]:.2f} s, prefill "
                      f"{seconds[0]:.2f} s{vs}; a step: {prof['launches']:.0f} "
                      f"{'kernels' if check.device.type == 'cuda' else 'operators'}, host "
                      f"{prof['host_ms']:.1f} ms, GPU busy {busy} ms",
                      tokens_per_s=rates[name], tokens=compared, bound_tokens_per_s=bound,
                      step_bytes=step_bytes, **prof)
        check.doing = f"sampling {rows} rows x {length} tokens, after"
        reset_peak(check.device)
        whole, seconds = rate(after, length)
    peak_row(check, preset, "sample", "peak, sampling (after)",
             retries.note() + f"{rows} rows ({len(prompts)} prompts x {group}) of {prompt_len} + {length} "
             f"tokens: {whole:.0f} tok/s over the whole answer ({seconds[1]:.2f} s), "
             f"{f'{whole / bound:.0%} of the bound; ' if bound else ''}"
             f"{step_bytes / GIB:.2f} GiB read a step (weights {weights['base'] / GIB:.2f}, KV cache "
             f"{kv / GIB:.2f} at the mean length)", rows=rows, tokens_per_s=whole)
    check.facts[preset] |= dict(eager_decode_tokens_per_s=rates["before"], compared_tokens=compared,
                                fast_decode_tokens_per_s=rates["after"], decode_tokens_per_s=whole)


def projection(check: Check, preset: str) -> None:
    """The README's time per outer step, redone with the measured rates: the fast decoder over
    whole answers, and training with the weights `--quant auto` loads (4-bit), bf16 beside it."""
    facts = check.facts.get(preset, {})
    train = facts.get("train_tokens_per_s", {})
    if "decode_tokens_per_s" not in facts or "before" not in train:
        raise NotReady("needs both the decode and the training rate")
    check.doing = "projection"
    decode_min = README_STEP["decode_tokens"] / facts["decode_tokens_per_s"] / 60
    train_min = {when: README_STEP["train_tokens"] / rate / 60 for when, rate in train.items()}
    bf16 = (f"; with bf16 weights (--quant none) training takes {train_min['after']:.1f} min, the step "
            f"{decode_min + train_min['after']:.1f} min" if "after" in train_min else "")
    check.add(preset, "outer step, projected", f"{decode_min + train_min['before']:.1f} min",
              f"at most 5 min (the goal); {README_STEP['minutes'][preset]} (README's estimate)",
              f"README's token counts at the measured rates: decoding {README_STEP['decode_tokens'] / 1e6:.1f} M "
              f"tokens {decode_min:.1f} min (the fast decoder, every row to the cap), training "
              f"{README_STEP['train_tokens'] / 1e6:.1f} M tokens {train_min['before']:.1f} min ({check.quant} "
              f"weights){bf16}", minutes=decode_min + train_min["before"])


# ---- one tiny-world outer step --------------------------------------------------------------------

def tiny_model_and_hard_set(dry: bool):
    """(model dir, hard train, hard test): the carried tiny model and hard set, or in a dry run
    the test suite's toy model (built here if missing, in seconds) and a few hard-kind sums."""
    from tiny import model as tiny_model
    from tiny import world
    if dry:
        build = tiny_model.BUILD | TOY_TINY_BUILD
        path = tiny_model.model_dir(0, build)
        if not (path / "config.json").exists():
            path.mkdir(parents=True, exist_ok=True)
            tiny_model.build_model(path, 0, build, progress=False)
        return path, world.generate_problems(8, 5, 1, quick=True), world.generate_problems(8, 5, 2, quick=True)
    path, hard = tiny_model.model_dir(0, tiny_model.BUILD), tiny_model.hard_dir(0)
    if not (hard / "stats.json").exists():  # building them takes minutes: they travel with the check
        raise NotReady(f"the tiny model and its hard set are not in {hard.parent.parent} (set SOAR_CACHE "
                       "to the carried folder: docs/speed.md)")
    return path, *tiny_model.tiny_hard_set(0, progress=False)


def tiny_world_part(check: Check) -> None:
    """One outer step of the tiny preset, run as `python train.py` runs it (a run of one step of
    SOAR's teacher, its promoted student evaluated on two hard problems); timed from the phase
    times its metrics row logs."""
    check.doing = "tiny world: model and hard set"
    path, hard_train, hard_test = tiny_model_and_hard_set(check.dry)
    out = check.workdir / "tiny"
    for name, rows in (("hard_train", hard_train), ("hard_test", hard_test[:2])):
        write_jsonl(out / f"{name}.jsonl", rows)
    values = preset_settings("tiny") | dict(
        model=str(path), hard_train=str(out / "hard_train.jsonl"), out=str(out / "run"),
        hard_test=str(out / "hard_test.jsonl"), outer_steps=1, seeds=1, methods="soar_ps",
        eval_samples=1, ks="1", checkpointing="on" if check.device.type == "cuda" else "off")
    values |= TOY_TINY_STEP if check.dry else {}
    cfg = Config(**values)
    argv = [arg for k, v in values.items() for arg in ("--" + k.replace("_", "-"), str(v))]
    check.doing = "tiny world: one outer step (python train.py)"
    env = os.environ | ({} if check.device.type == "cuda" else {"CUDA_VISIBLE_DEVICES": ""})
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"train.py failed: {done.stderr.strip()[-500:]}")
    row = read_jsonl(out / "run" / "seed0" / "soar" / "metrics.jsonl")[0]
    times, updates = row["times"], row["student_updates"]
    seconds = sum(times.values())
    reference = TINY_STEP_CPU["seconds"]
    expected = (f"{reference:.1f} s on the 2-core CPU ({TINY_STEP_CPU['measured']})" if reference
                else "CPU reference not measured yet")
    if check.dry:
        expected += "; toy settings here"
    ratio = f"CPU / this {reference / seconds:.1f}x; " if reference and not check.dry else ""
    check.add("tiny world", "outer step, tiny preset", f"{seconds:.1f} s", expected,
              ratio + ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
              + f"; g {cfg.g}, n {cfg.n}, r {cfg.r}, {cfg.inner_steps} inner steps, checkpointing {cfg.checkpointing}"
              + f"; student updates {sum(updates.values())}: {updates.get('non-finite', 0)} non-finite",
              seconds=seconds, times=times, student_updates=updates)


def measure_tiny_step_here() -> Row:
    """The `tiny world` part at its real settings on this machine's CPU: the reference that
    TINY_STEP_CPU records (needs the built tiny model and hard set, a few minutes)."""
    workdir = Path(tempfile.mkdtemp(prefix="tiny-step-"))
    check = Check(torch.device("cpu"), False, workdir / "check.json", workdir)
    check.deadline = float("inf")  # a reference, not a lent machine: no budget
    load = os.getloadavg()[0]
    check.run("tiny world", tiny_world_part, budget=3600)
    row = check.rows[-1]
    print(f"load average {load:.1f} before, {os.getloadavg()[0]:.1f} after: {row}")
    return row


# ---- the table and the whole run -----------------------------------------------------------------

def print_report(check: Check) -> None:
    print(f"\n--gpu-check on {check.facts.get('device', check.device)}: weights {check.quant} "
          f"({check.quant_why}){'; DRY RUN, toy shapes on the CPU' if check.dry else ''}")
    measure.print_table(["part", "what", "measured", "README / reference", "notes"],
                      [[r.part, r.what, r.measured, r.expected, r.notes] for r in check.rows])
    wall = time.monotonic() - check.start
    print(f"\nparts: {', '.join(f'{k} {v:.0f} s' for k, v in check.part_seconds.items())}; "
          f"whole check {wall:.0f} s; {sum(r.status != 'ok' for r in check.rows)} rows not ok; "
          f"written to {check.json_path}")


def run(dry: bool, json_path: Path) -> Check:
    if not dry and not torch.cuda.is_available():
        raise SystemExit(f"--gpu-check needs a CUDA GPU, and this machine has none visible to torch "
                         f"{torch.__version__} (CUDA build: {torch.version.cuda}). On a CPU, "
                         "`python bench.py --gpu-check --dry-run` runs the same parts at toy shapes.")
    device = torch.device("cuda" if not dry else "cpu")
    workdir = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    check = Check(device, dry, json_path, workdir)
    threads = torch.get_num_threads()
    if dry:  # toy shapes: a second thread only adds overhead, and the test suite's machine is busy
        torch.set_num_threads(1)
    try:
        check.run("card", card_part)
        for preset in PRESET_MODELS:
            check.run(f"{preset} build", build_part, preset)
            check.run(f"{preset} train", train_part, preset)
            check.run(f"{preset} decode", decode_part, preset)
            shutil.rmtree(workdir / preset, ignore_errors=True)  # gigabytes of the lent machine's disk
            try:
                projection(check, preset)
            except NotReady as e:
                check.rows.append(Row(preset, "outer step, projected", "NOT READY", status="not ready", notes=str(e)))
        check.run("tiny world", tiny_world_part)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        torch.set_num_threads(threads)
        check.save()
    print_report(check)
    return check
