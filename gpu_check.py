"""`python bench.py --gpu-check`: the README's GPU predictions measured in one call, on a lent GPU
machine with no network and no model cache, in at most 8 minutes; one table, one JSON file.

Parts, in order, each under its own time budget (`BUDGETS`): a part that fails, runs out of
memory, misses a package or runs out of time becomes a row that says why, and the next one starts.
  card            the device and its measured copy bandwidth (what bounds decoding)
  <preset> build  a model of the preset's exact shape (configs/*.json), random weights, saved
  <preset> train  one student training step at the preset's micro-batch, prompt and answer
                  lengths and checkpointing: its peak memory beside the README's prediction
  <preset> decode sampling at the preset's sample batch: its peak memory, and decode tokens/s of
                  the sampler and of `model.generate` against the bandwidth bound
  tiny world      one outer step of the default (tiny) preset, beside this CPU's time for it
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
from contextlib import contextmanager
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
# GiB, for 4-bit weights, without the ~1 GiB of CUDA context and allocator slack.
PREDICTED_PEAK = {"small": {"train": 11.4, "sample": 6.7}, "paper": {"train": 10.0, "sample": 12.4}}
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

# Seconds per part; they add up to 450, which leaves the 8 minutes room for starting up.
BUDGETS = {"card": 10, "small build": 30, "small train": 40, "small decode": 85,
           "paper build": 50, "paper train": 50, "paper decode": 85, "tiny world": 100}
TOTAL_BUDGET = 450

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
                "decode_tok_s": {"eager": facts.get("decode_tokens_per_s"),
                                 "fast": facts.get("static_decode_tokens_per_s")},
                "train_tok_s": {"before": facts.get("train_tokens_per_s"), "after": None},
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


def preset_model(check: Check, preset: str, s: dict, checkpointing: bool):
    """The preset's saved model, loaded as a run loads it: 4-bit or bf16, both LoRA adapters."""
    if preset not in check.facts:
        raise NotReady(f"no {preset} model: its build did not finish")
    check.doing = "load"
    quant = "4bit" if check.quant.startswith("4-bit") else "none"
    model, _ = models.load_model(str(check.facts[preset]["path"]), quant, s["lora_rank"], s["lora_alpha"],
                                 device=check.device.type, checkpointing=checkpointing, dtype=torch.bfloat16)
    return model


def random_ids(rows: int, length: int, vocab: int, generator: torch.Generator) -> list[list[int]]:
    return torch.randint(1, vocab, (rows, length), generator=generator).tolist()  # 0 is padding


def expected_peak(check: Check, preset: str, kind: str) -> tuple[str, float]:
    """The README's predicted peak (GiB), moved by what bf16 weights add when this run has them."""
    predicted = PREDICTED_PEAK[preset][kind]
    facts = check.facts[preset]
    extra = 0.0 if check.quant.startswith("4-bit") else (facts["bf16_bytes"] - facts["nf4_bytes"]) / GIB
    text = f"{predicted:.1f} GiB (README, 4-bit)"
    if extra:
        text += f"; {predicted + extra:.1f} with bf16 weights (+{extra:.1f})"
    if check.dry:
        text += "; toy shapes here"
    return text, predicted + extra


def peak_row(check: Check, preset: str, kind: str, what: str, notes: str, **values) -> None:
    measured, peak, memory = peak_text(check.device)
    expected, predicted = expected_peak(check, preset, kind)
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
    check.doing = "preset settings"
    s = settings(preset, check.dry, check.device)
    model = preset_model(check, preset, s, checkpointing=s["checkpointing"] == "on")
    check.doing = "student training step"
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
    check.facts[preset] |= dict(train_tokens_per_s=tokens / seconds, tflops=tflops)
    peak_row(check, preset, "train", "peak, student training step",
             retries.note() + f"micro-batch {rows} x ({s['prompt_tokens']} + {s['student_max_tokens']}) tokens, "
             f"checkpointing {s['checkpointing']}, KL {s['kl_coef']}; a step {seconds:.2f} s, "
             f"{tokens / seconds:.0f} tok/s, {tflops:.1f} TFLOP/s at 6 x params a token (README assumes "
             f"{README_STEP['tflops']})", step_s=seconds, tokens=tokens, tflops=tflops)


def config_kv_bytes_per_token(config) -> int:
    """Bytes of bf16 keys and values one token keeps in one layer."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_key_value_heads * head_dim * 2


def decode_part(check: Check, preset: str) -> None:
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

    def ours(tokens, static=False):
        return sampler.sample(model, prompts, n=group, max_new_tokens=tokens, temperature=1.0,
                              eos_token_ids=never, pad_token_id=0, batch_size=rows,
                              generator=torch.Generator().manual_seed(0), static=static)

    def theirs(tokens):
        return measure.hf_generate(model, prompts, n=group, max_new_tokens=tokens, temperature=1.0,
                                 eos=never, pad_id=0, seed=0)

    # Bytes one decode step reads: the weights (base and the active adapter) and, on average over
    # the answer, the KV cache of every row at its mean length.
    config, weights = model.config, measure.tensor_bytes(model)
    kv = rows * (prompt_len + length / 2) * config.num_hidden_layers * config_kv_bytes_per_token(config)
    step_bytes = weights["base"] + weights["adapter"] + kv
    bandwidth = check.facts.get("bandwidth")
    bound = rows * bandwidth / step_bytes if bandwidth else None

    check.doing = "sampler warm-up"
    ours(2)
    reset_peak(check.device)
    check.doing = f"sampling {rows} rows"
    with torch.no_grad(), oom_retries() as retries:
        prefill = measure.timed_call(lambda: ours(1), check.device)[1]
        total = measure.timed_call(lambda: ours(length), check.device)[1]
    peak_row(check, preset, "sample", "peak, sampling",
             retries.note() + f"{rows} rows ({len(prompts)} prompts x {group}) of {prompt_len} + {length} "
             f"tokens", rows=rows)
    rates = {}
    static = lambda tokens: ours(tokens, static=True)  # noqa: E731
    for name, fn, seconds in (("sampler", ours, (prefill, total)), ("sampler, static", static, None),
                              ("model.generate", theirs, None)):
        check.doing = f"decoding, {name}"
        if seconds is None:
            with torch.no_grad():
                fn(2)  # warm-up
                seconds = (measure.timed_call(lambda: fn(1), check.device)[1],
                           measure.timed_call(lambda: fn(length), check.device)[1])
        rates[name] = rows * (length - 1) / max(seconds[1] - seconds[0], 1e-9)
        share = f"{rates[name] / bound:.0%} of the bound" if bound else "no bandwidth measured"
        vs = {"sampler": "", "sampler, static": f"; static / sampler {rates[name] / rates['sampler']:.2f}x",
              "model.generate": f"; sampler / generate {rates['sampler'] / rates[name]:.2f}x"}[name]
        check.add(preset, f"decode tok/s, {name}", f"{rates[name]:.0f} tok/s",
                  f"bound {bound:.0f} tok/s" if bound else "",
                  f"{share}: {step_bytes / GIB:.2f} GiB read a step (weights {weights['base'] / GIB:.2f}, "
                  f"KV cache {kv / GIB:.2f} at the mean length); {rows} rows x {length} tokens in "
                  f"{seconds[1]:.2f} s, prefill {seconds[0]:.2f} s{vs}",
                  tokens_per_s=rates[name], bound_tokens_per_s=bound, step_bytes=step_bytes)
    check.facts[preset]["decode_tokens_per_s"] = rates["sampler"]
    check.facts[preset]["static_decode_tokens_per_s"] = rates["sampler, static"]


def projection(check: Check, preset: str) -> None:
    """The README's time per outer step, redone with the measured rates."""
    facts = check.facts.get(preset, {})
    if "decode_tokens_per_s" not in facts or "train_tokens_per_s" not in facts:
        raise NotReady("needs both the decode and the training rate")
    check.doing = "projection"
    decode_min = README_STEP["decode_tokens"] / facts["decode_tokens_per_s"] / 60
    train_min = README_STEP["train_tokens"] / facts["train_tokens_per_s"] / 60
    check.add(preset, "outer step, projected", f"{decode_min + train_min:.1f} min",
              f"{README_STEP['minutes'][preset]} (README)",
              f"README's token counts at the measured rates: decoding {README_STEP['decode_tokens'] / 1e6:.1f} M "
              f"tokens {decode_min:.1f} min, training {README_STEP['train_tokens'] / 1e6:.1f} M tokens "
              f"{train_min:.1f} min (README assumed {README_STEP['decode_rate']:,} tok/s and "
              f"{README_STEP['tflops']} TFLOP/s; here the sampler at the sample batch, every row to the cap)",
              minutes=decode_min + train_min)


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
    times = read_jsonl(out / "run" / "seed0" / "soar" / "metrics.jsonl")[0]["times"]
    seconds = sum(times.values())
    reference = TINY_STEP_CPU["seconds"]
    expected = (f"{reference:.1f} s on the 2-core CPU ({TINY_STEP_CPU['measured']})" if reference
                else "CPU reference not measured yet")
    if check.dry:
        expected += "; toy settings here"
    ratio = f"CPU / this {reference / seconds:.1f}x; " if reference and not check.dry else ""
    check.add("tiny world", "outer step, tiny preset", f"{seconds:.1f} s", expected,
              ratio + ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
              + f"; g {cfg.g}, n {cfg.n}, r {cfg.r}, {cfg.inner_steps} inner steps, checkpointing {cfg.checkpointing}",
              seconds=seconds, times=times)


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
