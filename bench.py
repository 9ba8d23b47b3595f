"""Speed benchmark: the in-process sampler against `model.generate`, one student RLOO step against
TRL's RLOOTrainer on the same work, one SOAR outer step's phases, peak memory, and the share of
the machine's own matmul throughput that decoding reaches. Prints one table.

    python bench.py                     # the tiny model if it is built, else a random Llama
    python bench.py --model small       # any preset, HF id or local directory (GPU: add --quant 4bit)
    python bench.py --metrics runs/x/seed0/soar/metrics.jsonl   # add a SOAR step's phases
    python bench.py --memory small      # predicted GPU memory of a preset, measured on the CPU
    python bench.py --gpu-check         # on a lent GPU machine: those predictions measured (gpu_check.py)
    python bench.py --decode-proxy      # the sampler's two decoders where a step is all overhead

Workload (the student's rollouts): --prompts questions x --group samples at temperature 1, up to
--max-new-tokens. Useful tokens are the tokens before EOS: `generate` keeps decoding rows that
have finished, and that work is not counted for either side. A random model has no reason to
stop, so it gets an EOS-heavy stop set (--mean-len: about vocab/mean-len stop ids, i.e. lengths
roughly geometric with that mean, capped at --max-new-tokens), stored in its generation config
so `generate`, the sampler and TRL all stop on the same ids. Rollout timings are interleaved
across the compared methods and repeated (--repeats) with different seeds; tokens/s is total
tokens over total time. Greedy work is deterministic, so its time is the best of
--greedy-repeats. The machine's load average is printed: other processes slow every number.

The TRL row needs `pip install trl` (not a project requirement); without it the row says so.

--memory builds the preset's model (from its published config, random weights) with 1 and 2
layers at the true width, 4-bit as a run loads it, counts the bytes autograd keeps for backward
per token per layer and for the logits, the weights and the sampler's KV cache per token, and
extrapolates to the true depth and the preset's settings: a prediction of the GPU peak, printed
with the figures it comes from.
"""
import argparse
import dataclasses
import math
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from peft import LoraConfig
from transformers import (AutoModelForCausalLM, AutoTokenizer, DynamicCache, GenerationConfig,
                          LlamaConfig, Qwen2Config,
                          TrainerCallback)

import gpu_check
import models
import sampler
from measure import (PROMPT_TOKENS, RANDOM_VOCAB, hf_generate, linear_params, print_table,
                     random_model_dir, sync, tensor_bytes, timed_call)
from config import PRESETS, Config
from run_dir import read_jsonl, timed
from tiny import world

# rewards, student and tiny.model (which imports both) are imported where they are used: they
# need math-verify, which a lent GPU machine lacks, and `--gpu-check` must start without it.


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="auto", help="preset, HF id or local dir; 'auto' = tiny if built, else "
                   "'random' (a random Llama: hidden 256, 4 layers, vocab 1000)")
    p.add_argument("--quant", default="none", choices=["none", "4bit", "8bit"], help="bitsandbytes quantization")
    p.add_argument("--prompts", type=int, default=8, help="questions per rollout batch")
    p.add_argument("--group", type=int, default=8, help="samples per question (G)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="rollout length cap")
    p.add_argument("--greedy-tokens", type=int, default=64, help="new tokens in the plain greedy comparison")
    p.add_argument("--prompt-len", type=int, default=64, help="random model only: mean prompt length (tokens)")
    p.add_argument("--mean-len", type=int, default=64, help="random model only: mean answer length it stops at")
    p.add_argument("--repeats", type=int, default=3, help="timed rollout repeats per method (interleaved, "
                   "different seeds; tokens/s = total tokens / total time)")
    p.add_argument("--greedy-repeats", type=int, default=7, help="timed greedy repeats (best time counts)")
    p.add_argument("--rloo-steps", type=int, default=1, help="timed RLOO steps per side (after one warm-up step)")
    p.add_argument("--micro-batch", type=int, default=4, help="rows per forward/backward in the RLOO step "
                   "(4: SmolLM2-135M's 8x8 step peaks at 3.0 GiB RSS, at 16 8.3 GiB)")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--skip-trl", action="store_true", help="do not run the TRL comparison")
    p.add_argument("--metrics", type=Path, help="metrics.jsonl of a train.py run: prints its phase times")
    p.add_argument("--memory", choices=sorted(TRUE_SIZES), help="instead: predict a preset's GPU memory "
                   "from its per-layer and logits costs measured on the CPU at its true width")
    p.add_argument("--checkpointing", action="store_true", help="recompute layers in the RLOO step's backward")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--decode-proxy", action="store_true", help="instead: the dynamic decoder against the "
                   "static one (sampler.sample_chunk_static) on a random Llama of the presets' depth (28 "
                   "layers) and a toy width (64), where a decode step's time is nearly all per-step "
                   "overhead; --prompts x --group rows, --max-new-tokens, --repeats")
    p.add_argument("--gpu-check", action="store_true", help="instead: the prepared check for a lent GPU machine "
                   "(gpu_check.py): the presets' peak memory, decode speed against the bandwidth bound, a "
                   "tiny-world outer step; one table and one JSON file in at most 8 minutes; needs CUDA")
    p.add_argument("--dry-run", action="store_true", help="with --gpu-check: the same parts on the CPU at toy "
                   "shapes, in under a minute")
    p.add_argument("--json", type=Path, help="with --gpu-check: the JSON file it writes (default "
                   "runs/gpu_check.json, runs/gpu_check_dry_run.json with --dry-run)")
    args = p.parse_args(argv)
    check_gpu_check_flags(p, args)
    return args


def check_gpu_check_flags(p, args) -> None:
    if not args.gpu_check:
        for flag in ("dry_run", "json"):
            if getattr(args, flag):
                p.error(f"--{flag.replace('_', '-')} only goes with --gpu-check")
        return
    for flag in ("memory", "metrics"):
        if getattr(args, flag):
            p.error(f"--gpu-check runs its own fixed parts: drop --{flag}")
    if args.json is None:
        args.json = Path("runs") / ("gpu_check_dry_run.json" if args.dry_run else "gpu_check.json")
    if args.json.exists() and not args.json.is_file():
        p.error(f"--json {args.json}: not a file")


# ---- models and workloads ---------------------------------------------------------------------


def tiny_model_dir() -> Path | None:
    """The built tiny model's directory, or None if it has not been built (building takes a while)."""
    from tiny import model as tiny_model
    path = tiny_model.model_dir(0, tiny_model.BUILD)
    return path if (path / "config.json").exists() else None


def prompt_texts(kind: str, n: int, prompt_len: int, seed: int) -> list[str]:
    import student
    rng = random.Random(seed)
    if kind == "random":
        lengths = [max(4, int(prompt_len * rng.uniform(0.7, 1.3))) for _ in range(n)]
        return [" ".join(f"w{rng.randrange(RANDOM_VOCAB - 4)}" for _ in range(k)) for k in lengths]
    problems = world.generate_problems(n, 3, seed) if kind == "tiny" else [
        {"problem": f"What is {rng.randrange(100, 999)} + {rng.randrange(100, 999)}?"} for _ in range(n)]
    return [student.student_message(p["problem"]) for p in problems]


def uses_chat_template(kind: str, tokenizer) -> bool:
    return kind == "hub" and tokenizer.chat_template is not None


def encode(tokenizer, texts: list[str], kind: str) -> list[list[int]]:
    if kind == "random":
        return [tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
    chat = uses_chat_template(kind, tokenizer)
    return [sampler.encode_prompt(tokenizer, t, chat_template=chat) for t in texts]


# ---- timing helpers -----------------------------------------------------------------------------


def useful_tokens(rows: list[list[int]], eos: set[int]) -> int:
    """Tokens before the first stop id of each row."""
    return sum(next((i for i, t in enumerate(r) if t in eos), len(r)) for r in rows)


def cut_after_stop(rows: list[list[int]], eos: list[int]) -> list[list[int]]:
    """Each row up to and including its first stop id (what `generate` pads past)."""
    return [r[:next((i + 1 for i, t in enumerate(r) if t in eos), len(r))] for r in rows]


def peak_memory(device) -> str:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    text = f"peak RSS {rss:.0f} MiB"
    if device.type == "cuda":
        text += f", max allocated {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
    return text


def matmul_gflops(device, repeats: int = 5) -> float:
    """The machine's own dense matmul rate: best of a few square products in the model's dtype."""
    n = 4096 if device.type == "cuda" else 1024
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = min(timed_call(lambda: a @ b, device)[1] for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


# ---- 1. sampler vs generate ---------------------------------------------------------------------


def our_sample(model, prompts, *, n, max_new_tokens, temperature, eos, pad_id, seed):
    r = sampler.sample(model, prompts, n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                       eos_token_ids=eos, pad_token_id=pad_id, generator=torch.Generator().manual_seed(seed))
    return r.completion_ids


def bench_greedy(model, prompts, eos, pad_id, args, device, rows):
    """Plain greedy, one row per prompt: outputs must be identical. The work is deterministic, so
    each time is the best of --greedy-repeats (interleaved); prefill is timed as a 1-token run."""
    kw = dict(n=1, temperature=0.0, eos=eos, pad_id=pad_id, seed=0)
    ours = our_sample(model, prompts, max_new_tokens=args.greedy_tokens, **kw)
    theirs = cut_after_stop(hf_generate(model, prompts, max_new_tokens=args.greedy_tokens, **kw), eos)
    identical = ours == theirs
    best = {name: [float("inf"), float("inf")] for name in ("generate", "sampler")}  # [prefill, total]
    for _ in range(args.greedy_repeats):
        for name, fn in (("generate", hf_generate), ("sampler", our_sample)):
            prefill = timed_call(lambda: fn(model, prompts, max_new_tokens=1, **kw), device)[1]
            total = timed_call(lambda: fn(model, prompts, max_new_tokens=args.greedy_tokens, **kw), device)[1]
            best[name] = [min(best[name][0], prefill), min(best[name][1], total)]
    new_tokens = {"generate": sum(map(len, theirs)), "sampler": sum(map(len, ours))}
    for name, (prefill, total) in best.items():
        decoded = new_tokens[name] - len(prompts)
        rows.append([f"greedy {len(prompts)}x1, {name}", f"{sum(map(len, prompts)) / prefill:.0f}",
                     f"{decoded / max(total - prefill, 1e-9):.0f}", f"{new_tokens[name] / total:.0f}",
                     f"best of {args.greedy_repeats}: {total:.3f} s"])
    return identical, best


def bench_rollouts(model, prompts, eos, pad_id, args, device, rows):
    """The student-rollout workload; returns useful tokens/s and decode seconds per method."""
    G, L = args.group, args.max_new_tokens
    stop = set(eos)
    never = [model.config.vocab_size]  # a stop id no row can emit: keeps every row decoding
    repeated = [p for p in prompts for _ in range(G)]
    methods = {
        "generate (num_return_sequences)": lambda s: hf_generate(model, prompts, n=G, max_new_tokens=L,
                                                                temperature=1.0, eos=eos, pad_id=pad_id, seed=s),
        "sampler": lambda s: our_sample(model, prompts, n=G, max_new_tokens=L, temperature=1.0, eos=eos,
                                        pad_id=pad_id, seed=s),
        "sampler, prompt prefilled per row": lambda s: our_sample(model, repeated, n=1, max_new_tokens=L,
                                                                  temperature=1.0, eos=eos, pad_id=pad_id, seed=s),
    }
    totals = {name: [0, 0.0, 0] for name in list(methods) + ["sampler, finished rows kept (emulated)"]}
    for s in range(args.repeats):
        seed = args.seed * 1000 + s
        longest = L
        for name, fn in methods.items():
            out, dt = timed_call(lambda: fn(seed), device)
            totals[name][0] += useful_tokens(out, stop)
            totals[name][1] += dt
            totals[name][2] += len(out)
            if name == "sampler":
                longest = max(len(r) for r in out)
        # Keeping finished rows = every row decodes as long as the batch's longest row did.
        out, dt = timed_call(lambda: our_sample(model, prompts, n=G, max_new_tokens=longest, temperature=1.0,
                                                eos=never, pad_id=pad_id, seed=seed), device)
        key = "sampler, finished rows kept (emulated)"
        totals[key][:2] = [totals[key][0] + useful_tokens(out, stop), totals[key][1] + dt]
    rates = {}
    for name, (tokens, seconds, _) in totals.items():
        rates[name] = tokens / seconds
        rows.append([f"rollouts {len(prompts)}x{G} T=1, {name}", "", "", f"{rates[name]:.0f}",
                     f"{tokens / (len(prompts) * G * args.repeats):.1f} useful tok/row"])
    return rates, totals


# ---- 2. one student RLOO step: ours vs TRL ------------------------------------------------------

def parity_reward(completion_ids: list[list[int]], stop: set[int]) -> list[float]:
    """A stand-in reward both sides compute the same way (answer checking is timed in the SOAR step)."""
    return [float(useful_tokens([c], stop) % 2) for c in completion_ids]


def our_rloo_step(model, tokenizer, prompts, args, optimizer, scheduler, generator):
    import rewards
    eos = sampler.eos_ids(tokenizer, model)
    models.activate(model, "student")
    times = {}
    with timed(times, "sample"):
        r = sampler.sample(model, prompts, n=args.group, max_new_tokens=args.max_new_tokens, temperature=1.0,
                           eos_token_ids=eos, pad_token_id=tokenizer.pad_token_id, generator=generator)
    times["answer tokens"] = statistics.mean(map(len, r.completion_ids))
    reward = torch.tensor(parity_reward(r.completion_ids, set(eos))).view(len(prompts), args.group)
    advantages = rewards.rloo_advantages(reward).flatten()
    with timed(times, "train"):
        models.policy_gradient_step(model, "student", optimizer, r.prompt_ids, r.completion_ids,
                                    advantages, kl_coef=0.001, pad_token_id=tokenizer.pad_token_id,
                                    micro_batch=args.micro_batch, max_new_tokens=args.max_new_tokens)
        scheduler.step()
    return times


def bench_ours_rloo(path, texts, kind, args, device):
    model, tokenizer = models.load_model(path, quant=args.quant, lora_rank=args.lora_rank,
                                         lora_alpha=2 * args.lora_rank, device=device.type,
                                         checkpointing=args.checkpointing)
    prompts = encode(tokenizer, texts, kind)
    optimizer, scheduler = models.make_optimizer(model, "student", lr=1e-5, total_steps=100)
    generator = torch.Generator().manual_seed(args.seed)
    our_rloo_step(model, tokenizer, prompts, args, optimizer, scheduler, generator)  # warm-up
    steps = []
    for _ in range(args.rloo_steps):
        times, total = timed_call(lambda: our_rloo_step(model, tokenizer, prompts, args, optimizer, scheduler,
                                                        generator), device)
        steps.append((total, times))
    del model
    return steps


def trl_prompt(text: str, kind: str, tokenizer):
    """A prompt as TRL's RLOOTrainer takes it, so that TRL tokenizes it to exactly our prompt's
    ids (`encode`): a conversation when we use the chat template, else the same framed text."""
    if uses_chat_template(kind, tokenizer):
        return [{"role": "user", "content": text}]
    return sampler.plain_frame(text) if kind == "tiny" else text


def bench_trl_rloo(path, texts, kind, args, device):
    """TRL's RLOOTrainer on the same model, LoRA, prompts, group, batch, length cap and KL coefficient.
    TRL is not a project requirement, so it is imported here, when the comparison runs."""
    try:
        from datasets import Dataset
        from trl import RLOOConfig, RLOOTrainer
    except ImportError as e:
        return f"not run: {e} (pip install trl)"
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    stop = set(sampler.eos_ids(tokenizer, SimpleNamespace(generation_config=GenerationConfig.from_pretrained(path))))

    def reward(completions, completion_ids, **kw):
        return parity_reward(completion_ids, stop)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.lengths = [], []

        def on_step_begin(self, *a, **k):
            sync(device)
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            sync(device)
            self.times.append(time.perf_counter() - self.start)

        def on_log(self, args, state, control, logs=None, **k):
            if logs and "completions/mean_length" in logs:
                self.lengths.append(float(logs["completions/mean_length"]))

    rows = len(texts) * args.group
    config = RLOOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-"), per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=rows // args.micro_batch, num_generations=args.group,
        max_completion_length=args.max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, beta=0.001,
        learning_rate=1e-5, max_steps=1 + args.rloo_steps, logging_steps=1, save_strategy="no", report_to=[],
        use_cpu=device.type == "cpu", bf16=device.type == "cuda", seed=args.seed, disable_dropout=True,
        chat_template_kwargs={"date_string": sampler.CHAT_DATE},  # the date our prompts carry
        gradient_checkpointing=False)  # TRL's default is on; ours never recomputes activations
    lora = LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank, lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    dataset = Dataset.from_list([{"prompt": trl_prompt(t, kind, tokenizer)} for t in texts]
                                * (1 + args.rloo_steps))
    timer = StepTimer()
    trainer = RLOOTrainer(model=path, reward_funcs=reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=lora, callbacks=[timer])
    if set(trainer.eos_token_ids) != stop:
        return f"not comparable: TRL stops at {sorted(trainer.eos_token_ids)}, we stop at {sorted(stop)}"
    trainer.train()
    return list(zip(timer.times, timer.lengths))[1:]  # (seconds, mean answer tokens); 1st: warm-up


# ---- 3. SOAR outer step phases from a train.py run ---------------------------------------------

def soar_phases(path: Path) -> dict[str, float]:
    lines = read_jsonl(path)
    times = [line["times"] for line in lines if "times" in line]
    if not times:
        raise SystemExit(f"--metrics {path}: no line has a 'times' field")
    return {k: statistics.mean(t.get(k, 0.0) for t in times) for k in times[0]}


# ---- memory: the training step at a preset's true width ------------------------------------------

# The presets' models, from their published configs (no download needed): true widths, any depth.
TRUE_SIZES = {
    "small": (Qwen2Config, dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                                num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                                tie_word_embeddings=True)),
    "paper": (LlamaConfig, dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                                num_attention_heads=24, num_key_value_heads=8, vocab_size=128256,
                                tie_word_embeddings=True)),
}
GIB = 2 ** 30


def shallow_model(preset: str, layers: int, workdir: Path, cfg):
    """The preset's model cut to `layers` layers, random, loaded as a run loads it (4-bit NF4,
    bf16 compute, both LoRA adapters); its weights are what a GPU holds, on the CPU."""
    config_class, sizes = TRUE_SIZES[preset]
    path = workdir / f"{preset}-{layers}"
    if not path.exists():
        torch.manual_seed(0)
        config = config_class(**{**sizes, "num_hidden_layers": layers}, max_position_embeddings=4096)
        AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(path)
        AutoTokenizer.from_pretrained(random_model_dir(workdir / "tok", 64)).save_pretrained(path)
    model, _ = models.load_model(str(path), "4bit", cfg.lora_rank, cfg.lora_alpha, device="cpu",
                                 dtype=torch.bfloat16)
    return model


def saved_bytes(model, rows: int, prompt: int, completion: int, autocast: bool) -> int:
    """Bytes autograd keeps for backward in one policy forward (distinct storages, the model's own
    weights not counted), as `models.micro_batch_grads` runs it, without checkpointing."""
    prompts = [[5 + i] * prompt for i in range(rows)]
    completions = [[7 + i] * completion for i in range(rows)]
    weights = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in weights:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    models.activate(model, "student")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sampler.completion_logprobs(model, prompts, completions, pad_token_id=0)
    return sum(seen.values())


def layer_input_bytes(model, rows: int, tokens: int) -> int:
    """Bytes of one layer's input per token: what a checkpointed layer keeps until backward."""
    sizes = []
    layer = model.get_base_model().model.layers[0]
    handle = layer.register_forward_pre_hook(lambda m, a: sizes.append(a[0].nbytes))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        sampler.completion_logprobs(model, [[5] * tokens] * rows, [[6]] * rows, pad_token_id=0)
    handle.remove()
    return sizes[0] // (rows * (tokens + 1))


def measured_kv_bytes_per_token(model, tokens: int = 16) -> int:
    """Sampler KV cache bytes per token per layer, read off a real prefill's cache."""
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=torch.full((1, tokens), 5), **{sampler.cache_kwarg(model): cache},
              use_cache=True, logits_to_keep=1)
    layer = cache.layers[0]
    return (layer.keys.nbytes + layer.values.nbytes) // tokens


def measure_memory(preset: str, workdir: Path) -> dict:
    """Per-layer and per-token figures at the preset's true width from 1- and 2-layer models."""
    cfg = Config(**PRESETS[preset].defaults)
    rows, prompt, completion = 2, 48, 48  # small enough for a CPU; every figure is per token
    tokens = rows * (prompt + completion)
    m = {"cfg": cfg, "layers": TRUE_SIZES[preset][1]["num_hidden_layers"],
         "vocab": TRUE_SIZES[preset][1]["vocab_size"]}
    per_depth = {}
    for layers in (1, 2):
        model = shallow_model(preset, layers, workdir, cfg)
        per_depth[layers] = {"bytes": tensor_bytes(model) | {"dequantized": dequantized_bytes(model)},
                             "saved": saved_bytes(model, rows, prompt, completion, autocast=True),
                             "saved_fp32_lora": saved_bytes(model, rows, prompt, completion, autocast=False)}
        if layers == 1:
            m["layer_input"] = layer_input_bytes(model, rows, prompt)
            m["kv_per_token_layer"] = measured_kv_bytes_per_token(model)
        del model
    one, two = per_depth[1], per_depth[2]
    m["layer_saved"] = (two["saved"] - one["saved"]) / tokens
    m["layer_saved_fp32_lora"] = (two["saved_fp32_lora"] - one["saved_fp32_lora"]) / tokens
    m["head_saved"] = (one["saved"] - m["layer_saved"] * tokens) / (rows * completion)  # logits & co
    for key in ("base", "adapter", "dequantized"):
        per_layer = two["bytes"][key] - one["bytes"][key]
        m[key] = one["bytes"][key] - per_layer + m["layers"] * per_layer
    return m


def dequantized_bytes(model) -> int:
    """What sampling adds by holding the 4-bit layers' weights dequantized (sampler.dequantized_base)."""
    import bitsandbytes as bnb
    return sum(2 * math.prod(m.weight.quant_state.shape) for m in model.modules()
               if isinstance(m, bnb.nn.Linear4bit))


def predict_peak(m: dict, **settings) -> dict:
    """Predicted GPU peak (bytes) of a training step and of sampling at the preset's settings
    (or at `settings` instead)."""
    cfg, L, V = dataclasses.replace(m["cfg"], **settings), m["layers"], m["vocab"]
    adapters = 6 * m["adapter"]  # both adapters; the trained one's gradient sum, a micro-batch's
    #                              gradients and two AdamW moments, all float32
    train = {}
    for role, completion in (("student", cfg.student_max_tokens), ("teacher", cfg.teacher_max_tokens)):
        tokens = cfg.micro_batch * (PROMPT_TOKENS + completion)
        checkpointing = cfg.checkpointing != "off"  # auto = on, on a GPU
        kept = m["layer_input"] if checkpointing else m["layer_saved"]
        layers = tokens * (L * kept + (m["layer_saved"] if checkpointing else 0))  # + one recompute
        # logits kept for backward, their gradient (same size), one float32 row in the backward
        head = cfg.micro_batch * completion * 2 * m["head_saved"] + completion * V * 4 * 2
        train[role] = m["base"] + adapters + layers + head
    rows = cfg.sample_batch
    kv = rows * (PROMPT_TOKENS + max(cfg.student_max_tokens, cfg.teacher_max_tokens)) * L * m["kv_per_token_layer"]
    sample = (m["base"] + m["dequantized"] + adapters + kv * (1 + 1 / L)  # a layer's cache being
              + rows * V * (2 + 4 * 3))  # appended to; the step's bf16 logits and the sampler's
    #                                      float32 softmax, cdf, log-softmax
    return {"train_student": train["student"], "train_teacher": train["teacher"], "sample": sample}


def memory_report(preset: str) -> None:
    m = measure_memory(preset, Path(tempfile.mkdtemp(prefix="bench-memory-")))
    cfg, peak = m["cfg"], predict_peak(m)
    print(f"--memory {preset}: measured on CPU at the true width ({TRUE_SIZES[preset][1]['hidden_size']}, "
          f"vocab {m['vocab']}), 1 and 2 layers, extrapolated to {m['layers']}: a PREDICTION")
    print(f"  base weights, 4-bit NF4 + constants, bf16 embeddings: {m['base'] / GIB:.2f} GiB; "
          f"one LoRA adapter (r={cfg.lora_rank}, fp32): {m['adapter'] / 2**20:.0f} MiB")
    print(f"  saved for backward per token per layer: {m['layer_saved'] / 1024:.1f} KiB under bf16 "
          f"autocast, {m['layer_saved_fp32_lora'] / 1024:.1f} KiB without (float32 LoRA inputs); "
          f"checkpointed: {m['layer_input'] / 1024:.1f} KiB (the layer input)")
    print(f"  logits and head per completion token: {m['head_saved'] / 2**20:.2f} MiB kept "
          f"(+ as much again for their gradient)")
    print(f"  sampler KV cache per token per layer: {m['kv_per_token_layer'] / 1024:.1f} KiB; the 4-bit "
          f"layers dequantized once while sampling: {m['dequantized'] / GIB:.2f} GiB")
    print(f"  settings: micro-batch {cfg.micro_batch}, sample batch {cfg.sample_batch}, checkpointing "
          f"{cfg.checkpointing}, prompt {PROMPT_TOKENS} + student {cfg.student_max_tokens} / teacher "
          f"{cfg.teacher_max_tokens} new tokens")
    for name, value in peak.items():
        print(f"  predicted peak, {name.replace('_', ' ')}: {value / GIB:.1f} GiB")
    print(f"  predicted peak of a run: {max(peak.values()) / GIB:.1f} GiB "
          "(+ about 1 GiB of CUDA context and allocator slack, not measured)")
    print("  student training peak (GiB) at other settings, micro-batch: " + ", ".join(
        f"{mb}: {predict_peak(m, micro_batch=mb, checkpointing='off')['train_student'] / GIB:.1f} / "
        f"{predict_peak(m, micro_batch=mb, checkpointing='on')['train_student'] / GIB:.1f}"
        for mb in (1, 2, 4, 8, 16, 32)) + " (checkpointing off / on)")


# ---- the two decoders where a step is all overhead ----------------------------------------------

PROXY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=28, num_attention_heads=4,
                   num_key_value_heads=2)


def decode_proxy(args) -> None:
    """Today's decoder (`sample_chunk`: a growing cache, finished rows dropped) against the static
    one (`sample_chunk_static`: a preallocated cache, fixed buckets, the draw on the device), on
    the same rows and seeds, interleaved; both adapters attached as in a run. On a CPU this
    measures what each path costs per step without a CUDA graph; the graph is what the static
    path's fixed shapes are for."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    path = random_model_dir(Path(tempfile.mkdtemp(prefix="bench-proxy-")), args.mean_len, **PROXY_SHAPE)
    model, tokenizer = models.load_model(str(path), "none", lora_rank=args.lora_rank,
                                         lora_alpha=2 * args.lora_rank, device=device.type)
    models.activate(model, "student")
    rng = random.Random(args.seed)
    prompts = [[1] + [rng.randrange(4, RANDOM_VOCAB) for _ in range(rng.randint(8, 24))]
               for _ in range(args.prompts)]
    eos, pad_id = sampler.eos_ids(tokenizer, model), tokenizer.pad_token_id
    totals = {False: [0, 0.0], True: [0, 0.0]}
    same = True
    for repeat in range(args.repeats + 1):  # the first round warms up, untimed
        outputs = {}
        for static in (False, True):
            gen = torch.Generator().manual_seed(args.seed + repeat)
            r, seconds = timed_call(lambda: sampler.sample(
                model, prompts, n=args.group, max_new_tokens=args.max_new_tokens, temperature=1.0,
                eos_token_ids=eos, pad_token_id=pad_id, batch_size=args.prompts * args.group,
                generator=gen, static=static), device)
            outputs[static] = r.completion_ids
            if repeat:
                totals[static][0] += sum(map(len, r.completion_ids))
                totals[static][1] += seconds
        same &= outputs[False] == outputs[True]
    rows = [[name, f"{tokens:,}", f"{seconds:.2f} s", f"{tokens / seconds:,.0f}"]
            for name, (tokens, seconds) in (("dynamic (today)", totals[False]),
                                            ("static", totals[True]))]
    print(f"decode proxy on {device}: {PROXY_SHAPE['num_hidden_layers']} layers, width "
          f"{PROXY_SHAPE['hidden_size']}, {args.prompts * args.group} rows, up to "
          f"{args.max_new_tokens} tokens, {args.repeats} repeats, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}")
    print_table(["decoder", "tokens", "time", "tokens/s"], rows)
    print(f"- static / dynamic tokens/s: {totals[True][0] / totals[True][1] / (totals[False][0] / totals[False][1]):.2f}x")
    print(f"- the same tokens from both decoders: {same}")


# ---- main ---------------------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gpu_check:
        gpu_check.run(args.dry_run, args.json)
        return
    if args.memory:
        return memory_report(args.memory)
    if args.decode_proxy:
        return decode_proxy(args)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    if args.model == "auto":
        args.model = "tiny" if tiny_model_dir() else "random"
    if args.model == "random":
        path, kind = str(random_model_dir(workdir / "random", args.mean_len)), "random"
    elif args.model == "tiny":
        from tiny import model as tiny_model
        path, kind = str(tiny_model.tiny_model_path()), "tiny"
    else:  # a preset or hub id -> the folder the run would load (the TRL comparison needs it too)
        path, kind = models.resolve_model(args.model), "hub"
    texts = prompt_texts(kind, args.prompts, args.prompt_len, args.seed)

    model, tokenizer = models.load_model(path, quant=args.quant, lora_rank=args.lora_rank,
                                         lora_alpha=2 * args.lora_rank, device=device.type)
    models.activate(model, "student")
    model.eval()
    prompts = encode(tokenizer, texts, kind)
    eos, pad_id = sampler.eos_ids(tokenizer, model), tokenizer.pad_token_id
    room = getattr(model.config, "max_position_embeddings", None)
    if room and max(map(len, prompts)) + args.max_new_tokens > room:
        args.max_new_tokens = room - max(map(len, prompts))
        print(f"--max-new-tokens lowered to {args.max_new_tokens}: the model has {room} positions")
    load_before = os.getloadavg()[0]
    gflops = matmul_gflops(device)
    params = linear_params(model)
    print(f"model {args.model} ({path}): {params / 1e6:.2f}M linear params, device {device}, "
          f"{torch.get_num_threads()} threads, matmul {gflops:.1f} GFLOP/s, load average {load_before:.1f}")

    rows, notes = [], []
    with torch.no_grad():
        our_sample(model, prompts, n=1, max_new_tokens=4, temperature=1.0, eos=eos, pad_id=pad_id, seed=0)
        hf_generate(model, prompts, n=1, max_new_tokens=4, temperature=1.0, eos=eos, pad_id=pad_id, seed=0)
        identical, greedy_times = bench_greedy(model, prompts, eos, pad_id, args, device, rows)
        rates, totals = bench_rollouts(model, prompts, eos, pad_id, args, device, rows)
    notes.append(f"greedy outputs identical to generate: {identical}")
    speedup = rates["sampler"] / rates["generate (num_return_sequences)"]
    notes.append(f"rollout useful tokens/s, sampler / generate: {speedup:.2f}x (target >= 2x: "
                 f"{'met' if speedup >= 2 else 'NOT met'})")
    g_time, s_time = greedy_times["generate"][1], greedy_times["sampler"][1]
    notes.append(f"greedy time, generate / sampler: {g_time / s_time:.3f}x (target: never slower: "
                 f"{'met' if s_time <= g_time else 'NOT met'})")
    decoded = totals["sampler"][0]
    share = 2 * params * decoded / totals["sampler"][1] / 1e9 / gflops
    notes.append(f"rollout decoding reaches {share:.1%} of the measured matmul rate "
                 f"(2 x {params / 1e6:.2f}M params x useful tokens / time; attention FLOPs not counted)")
    notes.append(f"after sampling: {peak_memory(device)}")
    del model

    ours = bench_ours_rloo(path, texts, kind, args, device)
    for total, phases in ours:
        rows.append([f"RLOO step {args.prompts}x{args.group}, ours", "", "", "",
                     f"{total:.2f} s (sample {phases['sample']:.2f} s, train {phases['train']:.2f} s; "
                     f"answers {phases['answer tokens']:.1f} tokens)"])
    notes.append(f"after our RLOO steps: {peak_memory(device)}")
    if not args.skip_trl:
        try:
            trl = bench_trl_rloo(path, texts, kind, args, device)
        except Exception as e:  # noqa: BLE001  (an optional comparison must not lose the table)
            trl = f"failed: {type(e).__name__}: {str(e)[:200]}"
        if isinstance(trl, str):
            rows.append([f"RLOO step {args.prompts}x{args.group}, TRL RLOOTrainer", "", "", "", trl])
        else:
            for t, length in trl:
                rows.append([f"RLOO step {args.prompts}x{args.group}, TRL RLOOTrainer", "", "", "",
                             f"{t:.2f} s (answers {length:.1f} tokens)"])
            ratio = statistics.mean(t for t, _ in trl) / statistics.mean(t for t, _ in ours)
            lengths = (statistics.mean(n for _, n in trl),
                       statistics.mean(p["answer tokens"] for _, p in ours))
            same_work = abs(lengths[0] - lengths[1]) <= 0.25 * lengths[1]
            notes.append(f"RLOO step, TRL / ours: {ratio:.2f}x (target >= 1.5x: {'met' if ratio >= 1.5 else 'NOT met'})"
                         + ("" if same_work else f"; NOT the same work: answers of {lengths[0]:.1f} "
                            f"tokens (TRL) against {lengths[1]:.1f} (ours)"))
            notes.append(f"after TRL: {peak_memory(device)}")
    if args.metrics:
        phases = soar_phases(args.metrics)
        rows.append(["SOAR outer step (from --metrics)", "", "", "",
                     ", ".join(f"{k} {v:.2f} s" for k, v in phases.items()) + f"; total {sum(phases.values()):.2f} s"])
    else:
        notes.append("SOAR outer step phases: not measured here (pass --metrics run/.../metrics.jsonl)")

    print()
    print_table(["what", "prefill tok/s", "decode tok/s", "useful tok/s", "notes"], rows)
    print()
    for n in notes:
        print("- " + n)
    print(f"- load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")


if __name__ == "__main__":
    sys.exit(main())
