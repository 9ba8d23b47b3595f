"""The one shared base model: loading a preset or any model (optionally 4-bit), the two LoRA
adapters, and the policy-gradient update both roles use.

Teacher and student are two LoRA adapters ("teacher", "student") on ONE frozen base model. The
KL reference is the base with adapters disabled. Adapter weights move in and out as plain state
dicts (`adapter_state` / `load_adapter_state`, or for a while: `with adapter_weights(model,
"student", state):`): that is how the baseline student is kept, how a student copy starts from
it, and how a promotion makes a copy the new baseline.
"""
import logging
import math
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

# bitsandbytes >= 0.50, imported by peft, warns on CPUs with AVX512-BF16 that it cannot fetch an
# optional 4-bit kernel from the Hub and falls back to its own: noise before every command's
# output (and before its error messages), offline or without the `kernels` package
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# and `kernels` >= 0.19, which bitsandbytes asks for that kernel, warns that offline it skips a
# publisher check it would never need
logging.getLogger("kernels._internals.hf_hub").setLevel(logging.ERROR)

import torch  # noqa: E402
from huggingface_hub import model_info, snapshot_download  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig  # noqa: E402

import smol  # noqa: E402
from config import HUB_PRESETS  # noqa: E402
from sampler import OOM, completion_logprobs, halve_after_oom  # noqa: E402

ROLES = ("teacher", "student")


class ModelUnavailable(RuntimeError):
    pass


def cache_root() -> Path:
    """Where the project keeps what it builds or converts: $SOAR_CACHE, else ~/.cache/soar."""
    return Path(os.environ.get("SOAR_CACHE") or Path.home() / ".cache" / "soar")


def resolve_model(name: str) -> str:
    """A preset, a local directory or a hub id -> a path or id `from_pretrained` loads at once.

    A hub model already in the local cache resolves to its snapshot folder, so no network is
    touched; otherwise one short probe of the hub decides, because transformers would retry an
    unreachable hub for half a minute before failing.
    """
    model_id = HUB_PRESETS.get(name, name)
    if Path(model_id).is_dir():
        return model_id
    if "/" not in model_id or Path(model_id).exists() or model_id.startswith((".", "/")):
        raise ModelUnavailable(
            f"--model {name!r}: not a preset ({', '.join(HUB_PRESETS)}), not a local model directory "
            "and not a hub id (owner/name)")
    try:
        return snapshot_download(model_id, local_files_only=True)
    except Exception:  # noqa: BLE001  (not cached: ask the hub)
        pass
    try:
        model_info(model_id, timeout=5)
    except Exception as e:  # noqa: BLE001  (any failure here means we cannot download)
        if name == "smol":
            try:
                return str(smol.smol_model_dir(cache_root()))
            except (FileNotFoundError, ValueError) as missing:
                raise ModelUnavailable(str(missing)) from None
        raise ModelUnavailable(
            f"--model {model_id}: not in the local Hugging Face cache and the hub is unreachable "
            f"({type(e).__name__}). On a machine with internet run `hf download {model_id}`, or "
            "pass --model /path/to/a/local/model (any Hugging Face format directory).") from None
    return model_id


# A model this small (the tiny world's: 0.5M parameters) runs in float32 on a GPU as on a CPU:
# bf16 saves it nothing that matters, and on an H200 its bf16 steps dropped 3 of 48 student
# updates as non-finite, where float32 on the CPU drops none.
FLOAT32_BELOW = 10_000_000


def load_model(name: str, quant: str = "none", lora_rank: int = 16, lora_alpha: int = 32,
               device: str | None = None, checkpointing: bool = False, adapters: bool = True,
               dtype: torch.dtype | None = None):
    """Load the base once, add the teacher and student LoRA adapters; returns (model, tokenizer).

    With `checkpointing` the training forward keeps only each layer's input and recomputes the
    layer in backward (one more forward, a fraction of the activation memory). Without
    `adapters` the plain base comes back (the hard-set builder: no LoRA kernels on every token).
    `dtype` (default: bf16 on a GPU, float32 on a CPU and for a model under FLOAT32_BELOW
    parameters) is the base's weights and compute dtype.
    """
    path = resolve_model(name)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    requested = dtype
    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    quant_config = {
        "none": None,
        "8bit": BitsAndBytesConfig(load_in_8bit=True),
        "4bit": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                   bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True),
    }[quant]
    base = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, quantization_config=quant_config,
                                                device_map=device)
    if requested is None and quant == "none" and base.num_parameters() < FLOAT32_BELOW:
        base = base.float()
    base.requires_grad_(False)
    if quant == "4bit" and device == "cpu":
        keep_4bit_layers_differentiable(base)
    if checkpointing:
        # renamed from gradient_checkpointing_enable within transformers 5.x, which
        # requirements.txt allows whole
        enable = (getattr(base, "activation_checkpointing_enable", None)
                  or base.gradient_checkpointing_enable)
        enable({"use_reentrant": False})
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not adapters:
        return base.eval(), tokenizer
    lora = LoraConfig(r=lora_rank, lora_alpha=lora_alpha, lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(base, lora, adapter_name="student")
    model.add_adapter("teacher", lora)
    # LoRA's B starts at zero, so both roles start as exactly the base model. The wrapper starts
    # in train mode around a base in eval mode; `checkpointing_mode` reads the wrapper's mode, so
    # a training step before any sampling would not recompute (measured on an H200: 41 GiB where
    # 10 were predicted).
    return model.eval(), tokenizer


def keep_4bit_layers_differentiable(model) -> None:
    """bitsandbytes (0.50) repacks a 4-bit layer that runs without grad in eval mode, on a CPU with
    AVX512-BF16, into an inference-only layout with no backward; from then on no gradient flows
    back through it to the LoRA layers below (measured on SmolLM2: 60 of 210 LoRA B matrices got
    one after a sampling pass). Sampling and the KL reference run exactly so, so the repacking is
    turned off. (bitsandbytes is imported here, not at the top: a GPU machine without it still
    runs everything unquantized, e.g. `bench.py --gpu-check` in bf16.)"""
    import bitsandbytes as bnb
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


# ---- adapters as state dicts -------------------------------------------------------------------

def adapter_params(model, role: str) -> dict[str, torch.nn.Parameter]:
    """The LoRA parameters of one role, selected by adapter name.

    PEFT's `set_adapter` flips `requires_grad` on the other adapters, so `requires_grad` cannot
    tell the roles apart; the adapter name in the parameter name can.
    """
    return {n: p for n, p in model.named_parameters() if "lora_" in n and f".{role}." in n}


def adapter_state(model, role: str) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu", copy=True) for n, p in adapter_params(model, role).items()}


@torch.no_grad()
def load_adapter_state(model, role: str, state: dict[str, torch.Tensor]) -> None:
    params = adapter_params(model, role)
    if params.keys() != state.keys():
        raise ValueError(f"adapter state for {role!r} does not match the model's LoRA layout")
    for n, p in params.items():
        p.copy_(state[n])


@contextmanager
def adapter_weights(model, role: str, state: dict[str, torch.Tensor]):
    """`with adapter_weights(model, "student", state):` the role's adapter holds `state` inside
    the block, and the weights it held before after it."""
    before = adapter_state(model, role)
    load_adapter_state(model, role, state)
    try:
        yield
    finally:
        load_adapter_state(model, role, before)


def activate(model, role: str) -> None:
    model.set_adapter(role)  # also makes exactly this role's LoRA trainable


def save_adapter(model, role: str, state: dict[str, torch.Tensor], out_dir: Path) -> None:
    """Write `state` as the PEFT adapter folder out_dir/role (PEFT names the folder)."""
    with adapter_weights(model, role, state):
        model.save_pretrained(str(out_dir), selected_adapters=[role])


# ---- the policy-gradient update shared by teacher and student -----------------------------------

# The schedule advances once per step, also on steps whose update is skipped (no signal), so
# torch's "scheduler stepped before optimizer" warning is expected and says nothing here.
warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")


def make_optimizer(model, role: str, lr: float, total_steps: int, warmup_steps: int = 0):
    """AdamW over one role's LoRA, with linear warm-up then cosine decay to zero; the caller
    steps the scheduler once per training step."""
    params = list(adapter_params(model, role).values())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)

    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)


def policy_gradient_step(model, role: str, optimizer, prompt_ids, completion_ids,
                         advantages: torch.Tensor, *, kl_coef: float, pad_token_id: int,
                         micro_batch: int, max_new_tokens: int, max_grad_norm: float = 1.0,
                         scored_tokens: list[int] | None = None) -> dict:
    """One RLOO update: loss = -A * sum_t log pi(y_t) + kl_coef * sum_t KL_t, averaged over rows.

    `scored_tokens[r]`, when given, limits row r's policy-gradient term to its first that many
    completion tokens (the teacher's question without its worked answer); KL covers every token.

    Sums are divided by max_new_tokens (a constant), not by each row's length, so long and short
    answers weigh what their tokens weigh. KL_t is the k3 estimator against the base model
    (adapters disabled). A non-finite loss skips the update and is reported, never applied.

    Rows go through in micro-batches of rows of similar length, so little of a forward is padding.
    Each micro-batch's gradient is added to the total only once it is complete: an out-of-memory
    error halves the micro-batch and retries it, and the update is the one an unsplit step makes.
    """
    activate(model, role)
    params = list(adapter_params(model, role).values())
    rows = len(completion_ids)
    order = sorted(range(rows), key=lambda r: len(prompt_ids[r]) + len(completion_ids[r]))
    grads = [torch.zeros_like(p) for p in params]
    total_loss, total_kl, start = 0.0, 0.0, 0
    while start < rows:
        part = order[start:start + micro_batch]
        try:
            loss, kl, part_grads = micro_batch_grads(
                model, params, [prompt_ids[r] for r in part], [completion_ids[r] for r in part],
                advantages[part], rows=rows, kl_coef=kl_coef, pad_token_id=pad_token_id,
                max_new_tokens=max_new_tokens,
                scored_tokens=None if scored_tokens is None else [scored_tokens[r] for r in part])
        except torch.OutOfMemoryError:
            part_grads = OOM  # halved outside the handler, once its traceback's tensors are freed
        if part_grads is OOM:
            micro_batch = halve_after_oom(min(micro_batch, len(part)), f"training {role} on",
                                          "--micro-batch")
            continue
        if part_grads is None:
            warnings.warn(f"non-finite {role} loss; update skipped")
            return {"loss": float("nan"), "kl": float("nan"), "skipped": 1}
        for g, pg in zip(grads, part_grads):
            g += pg
        total_loss, total_kl, start = total_loss + loss, total_kl + kl, start + len(part)
    if not all(torch.isfinite(g).all() for g in grads):
        warnings.warn(f"non-finite {role} gradient; update skipped")
        return {"loss": total_loss, "kl": total_kl, "skipped": 1}
    for p, g in zip(params, grads):
        p.grad = g
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": total_loss, "kl": total_kl, "skipped": 0}


def update_outcome(stats: dict) -> str:
    """What became of a policy-gradient step that was taken: "applied", or "non-finite" (dropped)."""
    return "non-finite" if stats["skipped"] else "applied"


def micro_batch_grads(model, params, prompt_ids, completion_ids, advantages, *, rows, kl_coef,
                      pad_token_id, max_new_tokens, scored_tokens=None):
    """(loss, mean KL, gradients) of one micro-batch's share of the step's loss; gradients are
    None when the loss is not finite. Nothing is written to the parameters' .grad."""
    device = params[0].device
    with compute_dtype(model, device):
        ref_logp = None
        if kl_coef:  # the reference forward costs a full forward; without a KL term it is skipped
            with torch.no_grad(), model.disable_adapter():
                ref_logp, _ = completion_logprobs(model, prompt_ids, completion_ids, pad_token_id)
        with checkpointing_mode(model):
            logp, mask = completion_logprobs(model, prompt_ids, completion_ids, pad_token_id)
            kl = torch.zeros_like(logp)
            if ref_logp is not None:
                delta = (ref_logp - logp).clamp(-20, 20)
                kl = (torch.exp(delta) - delta - 1) * mask
            adv = advantages.to(device).unsqueeze(1)
            scored = mask
            if scored_tokens is not None:
                columns = torch.arange(mask.shape[1], device=device)
                scored = mask & (columns < torch.tensor(scored_tokens, device=device).unsqueeze(1))
            per_row = (-adv * logp * scored + kl_coef * kl).sum(1) / max_new_tokens
            loss = per_row.sum() / rows
            mean_kl = (kl.sum(1) / mask.sum(1).clamp(min=1)).sum().item() / rows
            if not torch.isfinite(loss):
                return loss.item(), mean_kl, None
            grads = torch.autograd.grad(loss, params)
    return loss.item(), mean_kl, grads


def compute_dtype(model, device: torch.device):
    """A bf16 base (the GPU default) runs the training forwards under bf16 autocast. PEFT keeps
    the LoRA weights in float32, so without it every LoRA layer casts its input to float32 and
    keeps that copy for backward: 143 instead of 114-117 KiB per token per layer at Qwen2.5-1.5B's
    width (`bench.py --memory small`)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=model.dtype == torch.bfloat16)


class checkpointing_mode:
    """Train mode for the policy forward and its backward when the model checkpoints activations:
    transformers recomputes layers only in train mode. LoRA dropout is 0 and the presets' models
    have no other dropout, so train mode changes nothing else. Eval mode is restored after."""

    def __init__(self, model):
        self.model = model
        # the layers' own flag: the model's property for it changed its name within transformers 5.x
        checkpointing = any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
        self.switch = checkpointing and not model.training

    def __enter__(self):
        if self.switch:
            self.model.train()

    def __exit__(self, *exc):
        if self.switch:
            self.model.eval()
