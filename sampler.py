"""In-process batched sampler: KV-cache decoding written over the model's own forward.

The one path a sample takes, prompt in, rollouts out: `encode_prompt` (the plain frame or the
chat template), `generate` (texts and the rollouts with the per-token log-probs training needs,
from `sample`), and `completion_logprobs` (the same log-probs again, with grad, in one forward).
Works for any Hugging Face causal LM or PeftModel (whatever adapter is active, or inside
`with model.disable_adapter():`).

Two decoders give the same rollouts from the same seed; `sample` picks each device's faster one.
On a CPU, `sample_chunk` (see bench.py for the measurements against `model.generate`):
- a prompt is prefilled once per group and its KV cache copied to its n rows;
- a row leaves the batch once it emits EOS, so late steps only pay for live rows (finished rows
  leave in steps of 8: `rows_to_keep`);
- the loop does only what sampling needs: no logits processors, no stopping-criteria objects;
- a large output head is computed as W @ h^T (`streamed_head`), which a shrinking batch does
  not slow down.
On a GPU, where a decode step's time is launching its kernels, `sample_chunk_static`: a KV cache
preallocated for the rollout, row buckets of fixed widths, the draw on the device, and each step
replayed as a CUDA graph (`DecodeStep`). A 4-bit base samples from weights dequantized once per
call (`dequantized_base`).
Prompts are left padded and every forward gets explicit position ids, so a row's tokens see the
same positions as they would alone. A batch that runs out of GPU memory is retried in halves.
"""
import functools
import inspect
import sys
import types
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm import tqdm
from transformers import DynamicCache, StaticCache


@dataclass
class Rollouts:
    prompt_ids: list[list[int]]      # one per row; rows are grouped: row i*n+j = sample j of prompt i
    completion_ids: list[list[int]]  # generated tokens, EOS included if emitted, no padding
    logprobs: list[torch.Tensor]     # float32 [len(completion_ids[r])]: log-softmax of the RAW logits
    finished: list[bool]             # True if EOS was emitted, False if cut at max_new_tokens


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def left_pad(rows: list[list[int]], pad_token_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, L], attention mask [B, L]) with every row right-aligned."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    # Padding gets position 0; it is masked out, so its value only has to be a valid index.
    return (mask.cumsum(-1) - 1).clamp(min=0)


def draw(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row: argmax at temperature 0, else inverse-CDF sampling of softmax(logits / T).

    Only one uniform number per row comes from `generator`, on the generator's own device, so a
    seed gives the same rollouts whatever device the model is on and without a host sync.
    """
    if temperature == 0:
        return logits.argmax(-1)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(logits.shape[0], 1, generator=generator, device=gen_device).to(logits.device)
    return inverse_cdf(logits, temperature, u)


def inverse_cdf(logits: torch.Tensor, temperature: float, u: torch.Tensor) -> torch.Tensor:
    """The token of each row at which the cumulative softmax(logits / T) reaches u [B, 1]."""
    cdf = torch.softmax(logits.float() / temperature, dim=-1).cumsum(-1)
    # Scaling by the last cdf entry keeps u inside the float32 cumsum's range, so no out-of-vocab index.
    return torch.searchsorted(cdf, u * cdf[:, -1:]).squeeze(-1)


def check_sample_args(prompt_ids, n, max_new_tokens, temperature, eos_token_ids, batch_size):
    if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
        raise ValueError("sampler.sample: prompt_ids must be a non-empty list of non-empty token lists")
    if n < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"sampler.sample: n ({n}), max_new_tokens ({max_new_tokens}) and batch_size "
                         f"({batch_size}) must all be >= 1")
    if temperature < 0:
        raise ValueError(f"sampler.sample: temperature must be >= 0, got {temperature}")
    if not eos_token_ids:
        raise ValueError("sampler.sample: eos_token_ids must name at least one token")


@torch.no_grad()
def sample(model, prompt_ids: list[list[int]], *, n: int = 1, max_new_tokens: int,
           temperature: float = 1.0, eos_token_ids: list[int], pad_token_id: int,
           batch_size: int = 64, generator: torch.Generator | None = None,
           progress: str | None = None, static: bool | None = None) -> Rollouts:
    """n completions per prompt; row i*n+j of the result is sample j of prompt i. Temperature 0 is
    greedy. `static` decodes with `sample_chunk_static` (the same tokens, in fixed shapes, replayed
    as CUDA graphs on a GPU), else with `sample_chunk`; by default the static decoder on a GPU and
    the dynamic one on a CPU, each device's faster path."""
    check_sample_args(prompt_ids, n, max_new_tokens, temperature, eos_token_ids, batch_size)
    if static is None:
        static = model_device(model).type == "cuda"
    prompt_of_row = [i for i in range(len(prompt_ids)) for _ in range(n)]
    completions, logprobs, finished = [], [], []
    was_training = model.training
    if was_training:  # sampling under (LoRA) dropout is never what a caller means
        model.eval()  # (walks every module: skipped when there is nothing to switch)
    bar = tqdm(total=len(prompt_of_row), desc=progress, disable=progress is None)
    start = 0
    try:
        with streamed_head(model), dequantized_base(model):
            while start < len(prompt_of_row):
                chunk = prompt_of_row[start:start + batch_size]
                # An out-of-memory chunk is retried in halves from the same generator state: no row is lost.
                state = generator.get_state() if generator is not None else None
                try:
                    c, lp, f = (sample_chunk_static if static else sample_chunk)(
                        model, prompt_ids, chunk, max_new_tokens, temperature, eos_token_ids,
                        pad_token_id, generator)
                except torch.OutOfMemoryError:
                    c = OOM  # halved outside the handler, once its traceback's tensors are freed
                if c is OOM:
                    batch_size = halve_after_oom(min(batch_size, len(chunk)), "sampling", "--sample-batch")
                    if state is not None:
                        generator.set_state(state)
                    continue
                start += len(chunk)
                completions += c
                logprobs += lp
                finished += f
                bar.update(len(chunk))
    finally:
        bar.close()
        if was_training:
            model.train()
    return Rollouts([list(prompt_ids[i]) for i in prompt_of_row], completions, logprobs, finished)


OOM = object()  # marks a batch that ran out of memory


def streamed_linear(head: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """head(x) computed as (W @ x^T)^T, rows padded to a multiple of 8."""
    rows = x.reshape(-1, x.shape[-1])
    padded = torch.cat([rows, rows.new_zeros(-len(rows) % 8, rows.shape[1])])
    out = (head.weight @ padded.T)[:, :len(rows)].T.contiguous()
    if head.bias is not None:
        out += head.bias
    return out.reshape(*x.shape[:-1], -1)


@contextmanager
def streamed_head(model):
    """While sampling on a CPU, the output head computes W @ h^T instead of h @ W^T.

    Decoding gives the head a few rows at a time, and the CPU's matrix product for h @ W^T with a
    wide W is up to 3x slower at some row counts than at others: on SmolLM2 (W 49152 x 576, 2
    threads) a step's head took 19 ms at 8 rows and 38 ms at 7, so the first finished row made
    the sampler slower than `generate`, which keeps all rows. W @ h^T, padded to a multiple of 8
    rows, streams W once whatever the row count. Only for a plain nn.Linear head too large for the
    CPU's caches (a small head is fast either way); training's forwards keep the model's own head.
    """
    head = model.get_output_embeddings()
    if (model_device(model).type != "cpu" or type(head) is not torch.nn.Linear
            or head.weight.numel() < 2 ** 22):
        yield
        return
    head.forward = types.MethodType(streamed_linear, head)
    try:
        yield
    finally:
        del head.forward


@contextmanager
def dequantized_base(model):
    """While sampling, each 4-bit base layer multiplies by its weight dequantized once, in its
    compute dtype, instead of dequantizing it again in every decode step.

    For a batch of rows bitsandbytes' forward dequantizes the whole 4-bit weight and multiplies
    in the compute dtype (its fused kernel serves only a few rows); doing it once per `sample`
    call gives the same numbers and leaves a decode step one matrix product a layer. It costs the
    base's weights in the compute dtype for as long as sampling lasts (3 GiB for Qwen2.5-1.5B);
    where that does not fit, sampling stays on the 4-bit path and says so. The base is frozen,
    so a copy made at the start of a call is never stale.
    """
    bnb = sys.modules.get("bitsandbytes")  # no 4-bit layer exists unless a model loaded it
    layers = [m for m in model.modules() if bnb is not None and isinstance(m, bnb.nn.Linear4bit)]
    try:
        weights = [bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state)
                   .to(m.compute_dtype or m.weight.quant_state.dtype) for m in layers]
    except torch.OutOfMemoryError:
        weights = None  # handled outside the handler, once its traceback's tensors are freed
    if weights is None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        warnings.warn("sampler: the 4-bit base does not fit in memory dequantized; sampling "
                      "dequantizes each layer in every step instead (slower)")
        layers = []
    for layer, weight in zip(layers, weights or []):
        layer.forward = types.MethodType(functools.partial(dense_forward, weight=weight), layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def dense_forward(layer, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A 4-bit layer's forward with its weight already dequantized: what bitsandbytes computes."""
    bias = None if layer.bias is None else layer.bias.to(weight.dtype)
    return torch.nn.functional.linear(x.to(weight.dtype), weight, bias).to(x.dtype)


def halve_after_oom(batch: int, what: str, flag: str) -> int:
    """The batch to retry with after an out-of-memory error, or a clear error at batch 1."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if batch == 1:
        raise torch.OutOfMemoryError(f"out of memory {what} a single row; lower the token caps, "
                                     "use --quant 4bit or a smaller model")
    warnings.warn(f"out of memory {what} {batch} rows at once; retrying with {batch // 2} "
                  f"(set {flag} to {batch // 2} or less to avoid the retries)")
    return batch // 2


def sample_chunk(model, prompt_ids, prompt_of_row, max_new_tokens, temperature, eos_token_ids,
                 pad_token_id, generator):
    """Decode one batch of rows to the end; returns (completions, logprobs, finished) per row."""
    device = model_device(model)
    # Prefill each distinct prompt once, then copy its cache to all its rows.
    distinct = sorted(set(prompt_of_row))
    ids, mask = left_pad([prompt_ids[i] for i in distinct], pad_token_id, device)
    cache = DynamicCache(config=model.config)
    cache_arg = {cache_kwarg(model): cache}
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                **cache_arg, use_cache=True, logits_to_keep=1)
    if cache.get_seq_length() != ids.shape[1]:
        raise RuntimeError(f"{type(model).__name__} did not fill the KV cache it was given: decoding "
                           "would see no context (an unsupported transformers version?)")
    logits = out.logits[:, -1]
    if len(distinct) < len(prompt_of_row):  # n > 1: give each row its prompt's cache
        slot = {prompt: k for k, prompt in enumerate(distinct)}
        row_to_prefill = torch.tensor([slot[i] for i in prompt_of_row], device=device)
        cache.batch_select_indices(row_to_prefill)
        logits, mask = logits[row_to_prefill], mask[row_to_prefill]
    next_position = mask.sum(-1)

    rows = len(prompt_of_row)
    tokens = torch.full((rows, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    token_logprobs = torch.zeros((rows, max_new_tokens), dtype=torch.float32, device=device)
    lengths = torch.full((rows,), max_new_tokens, dtype=torch.long, device=device)
    live = torch.arange(rows, device=device)  # which chunk row each batch row is
    decoding = torch.ones(rows, dtype=torch.bool, device=device)  # False: finished, kept as a passenger
    eos = torch.tensor(eos_token_ids, device=device)
    for step in range(max_new_tokens):
        # Passengers draw nothing, so a seed gives the same rollouts whichever rows are aboard.
        decoding_logits, decoding_rows = logits[decoding], live[decoding]
        drawn = draw(decoding_logits, temperature, generator)
        tokens[decoding_rows, step] = drawn
        token_logprobs[decoding_rows, step] = torch.log_softmax(
            decoding_logits.float(), -1).gather(-1, drawn[:, None]).squeeze(-1)
        token = torch.full_like(live, pad_token_id)
        token[decoding] = drawn
        if step == max_new_tokens - 1:
            break
        done = decoding & torch.isin(token, eos)
        if done.any():
            lengths[live[done]] = step + 1
            decoding &= ~done
            keep = rows_to_keep(decoding)
            if len(keep) == 0:
                break
            if len(keep) < len(decoding):
                cache.batch_select_indices(keep)
                live, token, mask, next_position = live[keep], token[keep], mask[keep], next_position[keep]
                decoding = decoding[keep]
        mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=-1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_position[:, None],
                    **cache_arg, use_cache=True)
        logits = out.logits[:, -1]
        next_position = next_position + 1

    return finished_rows(tokens, token_logprobs, lengths, eos_token_ids)


def finished_rows(tokens, token_logprobs, lengths, eos_token_ids):
    """(completions, logprobs, finished) per row, each cut to its length, on the CPU."""
    tokens, token_logprobs, lengths = tokens.cpu(), token_logprobs.cpu(), lengths.tolist()
    completions = [tokens[r, :lengths[r]].tolist() for r in range(len(lengths))]
    logprobs = [token_logprobs[r, :lengths[r]].clone() for r in range(len(lengths))]
    return completions, logprobs, [c[-1] in eos_token_ids for c in completions]


# Row buckets of the static decoder: a batch keeps its width until its live rows fit the next one
BUCKETS = (256, 128, 64, 32, 16, 8)


def bucket_of(rows: int) -> int:
    """The smallest bucket that holds `rows` rows (or `rows` itself, beyond the largest)."""
    return min([b for b in BUCKETS if b >= rows], default=rows)


def sample_chunk_static(model, prompt_ids, prompt_of_row, max_new_tokens, temperature,
                        eos_token_ids, pad_token_id, generator, check_every: int = 8):
    """`sample_chunk`'s rollouts, decoded as a GPU wants them: a KV cache preallocated for the
    whole rollout (StaticCache), a batch whose width changes only at a few bucket sizes (a
    finished row rides along until the live rows fit the next bucket), the next token drawn on
    the device, and finishing checked every `check_every` steps instead of every step, so that
    a decode step has fixed shapes, needs no host sync, and is replayed as a CUDA graph on a GPU
    (`DecodeStep`).

    The draws are sample_chunk's: it takes one uniform number per decoding row and step, in row
    order, from `generator`. Here the rollout's whole block is drawn up front, each decoding
    row picks its own number by counting the decoding rows before it, and the generator is then
    left where sample_chunk leaves it (a CPU generator's stream splits exactly: rand(a) then
    rand(b) is rand(a + b)). So a seed gives the same tokens on either path.
    """
    device = model_device(model)
    rows, distinct = len(prompt_of_row), sorted(set(prompt_of_row))
    width = max(len(prompt_ids[i]) for i in distinct)
    ids, mask = left_pad([prompt_ids[i] for i in distinct], pad_token_id, device)
    cache = StaticCache(config=model.config, max_cache_len=width + max_new_tokens)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                **{cache_kwarg(model): cache}, use_cache=True, logits_to_keep=1)
    slot = {prompt: k for k, prompt in enumerate(distinct)}
    row_to_prefill = torch.tensor([slot[i] for i in prompt_of_row], device=device)
    select_rows(cache, row_to_prefill)
    logits, mask = out.logits[:, -1][row_to_prefill], mask[row_to_prefill]
    next_position = mask.sum(-1)
    # the attention mask of the whole rollout: a column is switched on as its token is fed
    step_forward = DecodeStep(model, cache, torch.cat([mask, mask.new_zeros(rows, max_new_tokens)], 1),
                              graphs=uses_graphs(device))

    state = generator.get_state() if generator is not None else None
    uniforms = None if temperature == 0 else torch.rand(
        rows * max_new_tokens, generator=generator,
        device=generator.device if generator is not None else "cpu").to(device)
    used = torch.zeros((), dtype=torch.long, device=device)  # uniforms taken so far
    tokens = torch.full((rows, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    token_logprobs = torch.zeros((rows, max_new_tokens), dtype=torch.float32, device=device)
    lengths = torch.full((rows,), max_new_tokens, dtype=torch.long, device=device)
    live = torch.arange(rows, device=device)  # which chunk row each batch row is
    decoding = torch.ones(rows, dtype=torch.bool, device=device)
    eos = torch.tensor(eos_token_ids, device=device)
    for step in range(max_new_tokens):
        if temperature == 0:
            drawn = logits.argmax(-1)
        else:  # decoding row i takes uniform number `used + (decoding rows before i)`
            pick = (used + decoding.long().cumsum(0) - 1).clamp(0, len(uniforms) - 1)
            drawn = inverse_cdf(logits, temperature, uniforms[pick][:, None])
            used += decoding.sum()
        token = torch.where(decoding, drawn, pad_token_id)
        logprob = torch.log_softmax(logits.float(), -1).gather(-1, drawn[:, None]).squeeze(-1)
        tokens[live, step] = torch.where(decoding, drawn, tokens[live, step])
        token_logprobs[live, step] = torch.where(decoding, logprob, token_logprobs[live, step])
        if step == max_new_tokens - 1:
            break
        done = decoding & torch.isin(token, eos)
        lengths[live] = torch.where(done, step + 1, lengths[live])
        decoding &= ~done
        if (step + 1) % check_every == 0:  # the one host sync: stop, or move to a smaller bucket
            still = int(decoding.sum())
            if still == 0:
                break
            if bucket_of(still) < len(live):
                keep = torch.cat([decoding.nonzero().squeeze(-1), (~decoding).nonzero().squeeze(-1)])
                keep = keep[:bucket_of(still)].sort().values
                step_forward.keep(keep)
                live, token, next_position, decoding = live[keep], token[keep], next_position[keep], decoding[keep]
        logits = step_forward(token, next_position, column=width + step)
        next_position = next_position + 1
    if uniforms is not None and generator is not None:  # leave the generator as sample_chunk does
        generator.set_state(state)
        torch.rand(int(used), generator=generator, device=generator.device)

    return finished_rows(tokens, token_logprobs, lengths, eos_token_ids)


def uses_graphs(device: torch.device) -> bool:
    return device.type == "cuda"


class DecodeStep:
    """The static decoder's decode forward, over inputs that never move: on a GPU it is captured
    once per bucket width as a CUDA graph and replayed, so a step costs a few launches instead of
    the thousands of small kernels an eager forward sends from Python.

    A graph replays its kernels on the addresses it recorded, so every tensor a step reads stays
    where it is: the token, position and attention buffers are allocated once at the rollout's
    full width and a bucket uses their first rows; moving to a smaller bucket compacts them, and
    the KV cache, in place. The attention goes in as a 4D additive mask (0 where a row attends),
    which transformers uses as given, so no mask is built inside the step. On a CPU the same step
    runs eagerly over the same buffers (what the tests pin). A graph's first replay is checked
    against an eager forward of the same inputs; a capture that fails or disagrees leaves the
    rollout eager, with a warning.
    """

    def __init__(self, model, cache: StaticCache, mask: torch.Tensor, graphs: bool):
        self.model, self.cache, self.cache_arg = model, cache, cache_kwarg(model)
        self.width = len(mask)  # rows in the current bucket
        dtype = model.get_input_embeddings().weight.dtype
        self.token = mask.new_zeros(len(mask), 1)
        self.position = mask.new_zeros(len(mask), 1)
        self.bias = torch.zeros((*mask.shape[:1], 1, 1, mask.shape[1]), dtype=dtype, device=mask.device)
        self.bias.masked_fill_(mask[:, None, None, :] == 0, torch.finfo(dtype).min)
        self.full_cache = [(layer.keys, layer.values) for layer in cache.layers]
        self.graphs = {} if graphs else None  # bucket width -> replay()

    def keep(self, rows: torch.Tensor) -> None:
        """Keep these batch rows, in this order, as the first len(rows) rows of every buffer."""
        k, w = len(rows), self.width
        for buffer in (self.token, self.position, self.bias):
            buffer[:k] = buffer[:w][rows]
        for layer, (keys, values) in zip(self.cache.layers, self.full_cache):
            keys[:k], values[:k] = keys[:w][rows], values[:w][rows]
            layer.keys, layer.values, layer.batch_size = keys[:k], values[:k], k
        self.width = k

    def __call__(self, token: torch.Tensor, position: torch.Tensor, column: int) -> torch.Tensor:
        """The next logits [width, V] of rows fed `token` at `position`, cache column `column`."""
        w = self.width
        self.token[:w, 0] = token
        self.position[:w, 0] = position
        self.bias[:w, 0, 0, column] = 0
        if self.graphs is None:
            return self.forward()
        if w not in self.graphs:
            return self.capture()
        return self.graphs[w]()

    def forward(self) -> torch.Tensor:
        w = self.width
        out = self.model(input_ids=self.token[:w], attention_mask=self.bias[:w],
                         position_ids=self.position[:w], **{self.cache_arg: self.cache}, use_cache=True)
        return out.logits[:, -1]

    def capture(self) -> torch.Tensor:
        """This step run eagerly (which also warms up what a capture cannot set up), then
        captured at this bucket's width and replayed; the eager logits if the two disagree."""
        layers = [layer for layer in self.cache.layers if isinstance(getattr(layer, "cumulative_length", None), torch.Tensor)]
        before = [layer.cumulative_length.clone() for layer in layers]
        eager = self.forward().clone()
        after = [layer.cumulative_length.clone() for layer in layers]
        for layer, length in zip(layers, before):  # the replay writes this step's keys again, at the same place
            layer.cumulative_length.copy_(length)
        try:
            replay = cuda_graph(self.forward)
            replayed = replay()
        except RuntimeError as err:  # not out of memory: that halves the batch, in `sample`
            if isinstance(err, torch.OutOfMemoryError):
                raise
            problem = f"capturing it failed ({str(err).splitlines()[0][:200]})"
        else:
            gap = (replayed.float() - eager.float()).abs().max().item()
            if gap <= 0.05 * eager.float().abs().max().item():
                self.graphs[self.width] = replay
                return replayed
            problem = f"its replay's logits differ from the eager forward's by up to {gap:.3g}"
        for layer, length in zip(layers, after):
            layer.cumulative_length.copy_(length)
        warnings.warn(f"sampler: a decode step of {self.width} rows as a CUDA graph: {problem}; "
                      "this rollout decodes eagerly")
        self.graphs = None
        return eager


def cuda_graph(forward):
    """`forward` captured as a CUDA graph; returns a function that replays it and gives its output
    (the same tensor each time, overwritten by each replay)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = forward()

    def replay():
        graph.replay()
        return out
    return replay


def select_rows(cache: StaticCache, rows: torch.Tensor) -> None:
    """Keep these batch rows of a static cache, in this order (StaticLayer has no batch_select)."""
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[rows], layer.values[rows]
        layer.batch_size = len(rows)


def cache_kwarg(model) -> str:
    """The name the model's forward takes its KV cache by. transformers renamed `past_key_values`
    to `cache` within 5.x (requirements.txt allows every 5.x); a forward given the other name
    takes it into **kwargs unused and decodes each token without context."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = inspect.signature(base.forward).parameters
    for name in ("cache", "past_key_values"):
        if name in names:
            return name
    raise TypeError(f"{type(base).__name__}.forward takes neither `cache` nor `past_key_values`")


def rows_to_keep(decoding: torch.Tensor) -> torch.Tensor:
    """Batch rows to decode on: the rows still decoding, plus as many finished ones as bring the
    batch to a multiple of 8 (never more than it has).

    A finished row leaves the batch so that later steps skip its work, but only in steps of 8
    rows: on a CPU a matrix product with 7 rows took longer than with 8 (20% in a layer of
    SmolLM2, 2x in its output head), so one row finishing early made a step slower, not faster.
    """
    n = int(decoding.sum())
    width = min(len(decoding), -(-n // 8) * 8)
    passengers = (~decoding).nonzero().squeeze(-1)[:width - n]
    return torch.cat([decoding.nonzero().squeeze(-1), passengers]).sort().values


def completion_logprobs(model, prompt_ids: list[list[int]], completion_ids: list[list[int]],
                        pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward (WITH grad if enabled) over prompt+completion rows; returns (logp [B, T] float32,
    mask [B, T] bool) for the completion tokens, T = max completion length.

    Rows are laid out [left pad | prompt | completion | right pad], so every row's completion
    starts at the same column and only the last T+1 positions need logits.
    """
    if len(prompt_ids) != len(completion_ids) or not prompt_ids:
        raise ValueError(f"sampler.completion_logprobs: {len(prompt_ids)} prompts vs "
                         f"{len(completion_ids)} completions (need the same, > 0)")
    device = model_device(model)
    prompt_width = max(len(p) for p in prompt_ids)
    T = max(len(c) for c in completion_ids)
    ids = torch.full((len(prompt_ids), prompt_width + T), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        ids[i, prompt_width - len(p):prompt_width + len(c)] = torch.tensor(list(p) + list(c), dtype=torch.long)
        mask[i, prompt_width - len(p):prompt_width + len(c)] = 1
    ids, mask = ids.to(device), mask.to(device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                use_cache=False, logits_to_keep=T + 1)
    logits = out.logits[:, :-1]  # position t predicts token t+1: the last T+1 positions give the T completion tokens
    targets = ids[:, prompt_width:]
    logp = selective_log_softmax(logits, targets)
    return logp, mask[:, prompt_width:].bool()


class SelectedLogSoftmax(torch.autograd.Function):
    """log_softmax(logits)[targets] in float32, at the memory cost of one float32 [T, V] row.

    Autograd's own log_softmax keeps its float32 [T, V] output for backward, one per row: with a
    150k-token vocabulary that is gigabytes per micro-batch. Here only what the caller already
    holds (the logits, in their own dtype) and one logsumexp per token are kept; backward
    recomputes softmax one row at a time: d logp / d logits = onehot(target) - softmax(logits).
    """

    @staticmethod
    def forward(ctx, logits, targets):
        lse = torch.stack([row.float().logsumexp(-1) for row in logits])  # [B, T]
        picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1).float()
        ctx.save_for_backward(logits, targets, lse)
        return picked - lse

    @staticmethod
    def backward(ctx, grad_out):
        logits, targets, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for b in range(logits.shape[0]):
            g = grad_out[b].unsqueeze(-1)  # [T, 1] float32
            row = (logits[b].float() - lse[b].unsqueeze(-1)).exp_().mul_(-g)
            row.scatter_add_(-1, targets[b].unsqueeze(-1), g)
            grad[b] = row
        return grad, None


def selective_log_softmax(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[targets] in float32, one row at a time so a [B, T, V] float32 copy never
    exists, in the forward or for backward."""
    return SelectedLogSoftmax.apply(logits, targets)


def decode(tokenizer, completion_ids) -> list[str]:
    return tokenizer.batch_decode(completion_ids, skip_special_tokens=True)


# ---- prompts in, texts out: the one path every role samples by ------------------------------

def eos_ids(tokenizer, model) -> list[int]:
    ids = model.generation_config.eos_token_id if model.generation_config else None
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    return sorted({*ids, tokenizer.eos_token_id} - {None})


def plain_frame(user_text: str) -> str:
    return f"User: {user_text}\nAssistant:"


# Llama 3.x chat templates write "Today Date: <date_string>" into every prompt, today's date
# unless one is given: a fixed one (the templates' own fallback) keeps a hard set built one day
# and a run on another on the same prompts. Templates that do not use it ignore it.
CHAT_DATE = "26 Jul 2024"


def encode_prompt(tokenizer, user_text: str, chat_template: bool) -> list[int]:
    """Token ids of one prompt, special tokens included exactly once.

    With `chat_template` the user text goes through the tokenizer's chat template; otherwise it
    is wrapped in the paper's plain "User: ... Assistant:" frame (the tiny model's format).
    """
    if chat_template:
        return list(tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}], add_generation_prompt=True, tokenize=True,
            return_dict=False, date_string=CHAT_DATE))
    return tokenizer(plain_frame(user_text), add_special_tokens=True)["input_ids"]


def generate(model, tokenizer, prompt_ids, *, n, temperature, max_new_tokens, batch_size,
             generator=None, progress=None):
    """Sample with the active adapter; returns (Rollouts, completion texts)."""
    rollouts = sample(model, prompt_ids, n=n, max_new_tokens=max_new_tokens,
                      temperature=temperature, eos_token_ids=eos_ids(tokenizer, model),
                      pad_token_id=tokenizer.pad_token_id, batch_size=batch_size,
                      generator=generator, progress=progress)
    return rollouts, decode(tokenizer, rollouts.completion_ids)
