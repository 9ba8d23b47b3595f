"""Pins the sampler: greedy equals `generate`, sampled log-probs equal the training forward's,
grouping, EOS, seeding and length limits, on tiny random Llama and Qwen2 models and under LoRA."""
import contextlib
import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast,
                          Qwen2Config, Qwen2ForCausalLM)

import sampler

CORPUS = ["What is 2 + 3? The answer is \\boxed{5}.", "Solve x + 4 = 9 step by step.",
          "User: compute 12 * 7\nAssistant: 12 * 7 = 84, so \\boxed{84}.",
          "The sum of the angles of a triangle is 180 degrees."] * 20
PROMPTS = ["User: What is 2 + 3?\nAssistant:", "User: Solve x + 4 = 9 step by step, then put the answer "
           "in a box.\nAssistant:", "User: 7\nAssistant:", "Solve"]


def build_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")


def save_and_load(model, tokenizer, path):
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def llama(tokenizer, tmp_path_factory):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return save_and_load(LlamaForCausalLM(config), tokenizer, tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def qwen2(tokenizer, tmp_path_factory):
    torch.manual_seed(1)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return save_and_load(Qwen2ForCausalLM(config), tokenizer, tmp_path_factory.mktemp("qwen2"))


@pytest.fixture(scope="module")
def wide_llama(tokenizer, tmp_path_factory):
    """An output head of 16384 x 256 = 2**22 weights: large enough for sampling on a CPU to stream it."""
    torch.manual_seed(2)
    config = LlamaConfig(vocab_size=16384, hidden_size=256, intermediate_size=256, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return save_and_load(LlamaForCausalLM(config), tokenizer, tmp_path_factory.mktemp("wide_llama"))


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [tokenizer(p, add_special_tokens=True)["input_ids"] for p in PROMPTS]


def generate_greedy(model, prompts, tokenizer, max_new_tokens, eos_ids):
    """Reference: `model.generate` on the same left-padded batch, cut after the first EOS."""
    ids, mask = sampler.left_pad(prompts, tokenizer.pad_token_id, "cpu")
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                         eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id)[:, ids.shape[1]:]
    rows = []
    for row in out.tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))
        rows.append(row[:cut])
    return rows


def greedy(model, prompts, tokenizer, max_new_tokens, eos_ids, **kw):
    return sampler.sample(model, prompts, max_new_tokens=max_new_tokens, temperature=0, eos_token_ids=eos_ids,
                          pad_token_id=tokenizer.pad_token_id, **kw)


def mid_sequence_token(rollouts):
    """A token greedy decoding emits mid-way through some row: used as EOS so rows stop at different steps."""
    return rollouts.completion_ids[0][len(rollouts.completion_ids[0]) // 2]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "wide_llama"])
def test_greedy_equals_generate_on_ragged_prompts(arch, request, tokenizer, prompts):
    model = request.getfixturevalue(arch)
    eos = [tokenizer.eos_token_id]
    first = greedy(model, prompts, tokenizer, 16, eos)
    assert first.completion_ids == generate_greedy(model, prompts, tokenizer, 16, eos)
    # Now with an EOS that rows hit at different steps, so rows leave the batch early (in a batch
    # of more than 8 rows, so that some leave it and some stay aboard as passengers).
    eos = [mid_sequence_token(first)]
    early = greedy(model, prompts * 3, tokenizer, 16, eos)
    assert any(early.finished) and min(map(len, early.completion_ids)) < 16
    assert early.completion_ids == generate_greedy(model, prompts * 3, tokenizer, 16, eos)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "wide_llama"])
def test_sampled_logprobs_equal_completion_logprobs(arch, request, tokenizer, prompts):
    model = request.getfixturevalue(arch)
    r = sampler.sample(model, prompts, n=3, max_new_tokens=12, temperature=1.0,
                       eos_token_ids=list(range(0, model.config.vocab_size, 8)),
                       pad_token_id=tokenizer.pad_token_id, generator=torch.Generator().manual_seed(0))
    assert len({len(c) for c in r.completion_ids}) > 1, "lengths should vary in this test"
    logp, mask = sampler.completion_logprobs(model, r.prompt_ids, r.completion_ids, tokenizer.pad_token_id)
    assert mask.sum(-1).tolist() == [len(c) for c in r.completion_ids]
    for row, lp in enumerate(r.logprobs):
        assert lp.dtype == torch.float32
        torch.testing.assert_close(logp[row, :len(lp)], lp, atol=1e-4, rtol=0)


@pytest.mark.parametrize("rows", [1, 2, 3, 7, 8, 9])
def test_streamed_linear_gives_the_head_s_own_logits(rows):
    head = torch.nn.Linear(32, 48)
    x = torch.randn(rows, 5, 32)
    torch.testing.assert_close(sampler.streamed_linear(head, x), head(x))


def test_sampling_streams_a_wide_head_only_while_it_samples(wide_llama, llama, tokenizer, prompts, monkeypatch):
    calls = []
    monkeypatch.setattr(sampler, "streamed_linear", lambda head, x: calls.append(x.shape) or head.weight.new_zeros(
        *x.shape[:-1], head.out_features))
    greedy(llama, prompts, tokenizer, 4, [tokenizer.eos_token_id])
    assert calls == []  # a small head is left alone
    greedy(wide_llama, prompts, tokenizer, 4, [tokenizer.eos_token_id])
    assert len(calls) == 4  # the prefill and three decoding steps
    head = wide_llama.get_output_embeddings()
    assert "forward" not in vars(head)  # the model's own head is back
    assert head(torch.ones(1, 256)).abs().sum() > 0


@pytest.mark.parametrize("decoding, kept", [
    ([1] * 10, list(range(10))),                     # nothing finished: all rows stay
    ([1, 0] * 5, [0, 1, 2, 3, 4, 5, 6, 8]),         # 5 decode: the first 3 finished ride along
    ([0] * 9 + [1], [0, 1, 2, 3, 4, 5, 6, 9]),       # 1 decodes: 8 rows
    ([0] * 16 + [1] * 9, list(range(7)) + list(range(16, 25))),  # 9 decode: 16 rows
    ([1, 0, 1], [0, 1, 2]),                          # a batch under 8 rows keeps every row
    ([0, 0, 0], []),                                 # all finished: nothing left to decode
])
def test_finished_rows_leave_the_batch_in_steps_of_eight(decoding, kept):
    assert sampler.rows_to_keep(torch.tensor(decoding, dtype=torch.bool)).tolist() == kept


def test_rows_are_grouped_by_prompt_and_share_its_prefill(llama, tokenizer, prompts):
    n = 4
    # batch_size 5 splits groups across chunks: grouping and cache copies must survive that.
    r = greedy(llama, prompts, tokenizer, 10, [tokenizer.eos_token_id], n=n, batch_size=5)
    single = greedy(llama, prompts, tokenizer, 10, [tokenizer.eos_token_id])
    assert len(r.completion_ids) == n * len(prompts)
    for i, p in enumerate(prompts):
        for j in range(n):
            assert r.prompt_ids[i * n + j] == p
            assert r.completion_ids[i * n + j] == single.completion_ids[i]


def test_sampled_groups_follow_their_prompt(llama, tokenizer, prompts):
    n = 3
    r = sampler.sample(llama, prompts, n=n, max_new_tokens=8, eos_token_ids=[tokenizer.eos_token_id],
                       pad_token_id=tokenizer.pad_token_id, generator=torch.Generator().manual_seed(3))
    for row in range(len(r.completion_ids)):
        assert r.prompt_ids[row] == prompts[row // n]
    logp, _ = sampler.completion_logprobs(llama, r.prompt_ids, r.completion_ids, tokenizer.pad_token_id)
    torch.testing.assert_close(logp[:, :8], torch.stack(r.logprobs), atol=1e-4, rtol=0)


def test_eos_stops_a_row_and_nothing_follows_it(llama, tokenizer, prompts):
    eos = list(range(4, len(tokenizer), 3))  # a third of the vocabulary: rows stop early and at varied steps
    r = sampler.sample(llama, prompts, n=4, max_new_tokens=20, eos_token_ids=eos,
                       pad_token_id=tokenizer.pad_token_id, generator=torch.Generator().manual_seed(1))
    assert len({len(c) for c in r.completion_ids}) > 2
    for c, lp, done in zip(r.completion_ids, r.logprobs, r.finished):
        assert len(lp) == len(c)
        assert not any(t in eos for t in c[:-1])
        assert done == (c[-1] in eos)
        assert done or len(c) == 20


def test_same_generator_seed_gives_identical_rollouts(llama, tokenizer, prompts):
    def run(seed):
        return sampler.sample(llama, prompts, n=2, max_new_tokens=10, eos_token_ids=[tokenizer.eos_token_id],
                              pad_token_id=tokenizer.pad_token_id, generator=torch.Generator().manual_seed(seed))
    a, b, c = run(7), run(7), run(8)
    assert a.completion_ids == b.completion_ids and a.finished == b.finished
    assert all(torch.equal(x, y) for x, y in zip(a.logprobs, b.logprobs))
    assert a.completion_ids != c.completion_ids


def test_max_new_tokens_is_respected(llama, tokenizer, prompts):
    r = sampler.sample(llama, prompts, n=2, max_new_tokens=5, eos_token_ids=[tokenizer.eos_token_id],
                       pad_token_id=tokenizer.pad_token_id, generator=torch.Generator().manual_seed(0))
    for c, done in zip(r.completion_ids, r.finished):
        assert len(c) <= 5
        assert done or len(c) == 5


def test_draw_follows_the_tempered_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -30.0]]).repeat(40000, 1)
    gen = torch.Generator().manual_seed(0)
    for temperature in (1.0, 0.5):
        counts = torch.bincount(sampler.draw(logits, temperature, gen), minlength=5).float() / len(logits)
        torch.testing.assert_close(counts, torch.softmax(logits[0] / temperature, -1), atol=0.01, rtol=0)
    assert sampler.draw(logits[:2], 0.0, gen).tolist() == [0, 0]


def test_peft_adapters_and_disabled_adapter(llama, tokenizer, prompts):
    lora = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(copy.deepcopy(llama), LoraConfig(**lora), adapter_name="teacher")
    model.add_adapter("student", LoraConfig(**lora))
    eos = [tokenizer.eos_token_id]
    outputs = {}
    for name in ("teacher", "student"):
        model.set_adapter(name)
        outputs[name] = greedy(model, prompts, tokenizer, 12, eos).completion_ids
        assert outputs[name] == generate_greedy(model, prompts, tokenizer, 12, eos)
        r = sampler.sample(model, prompts, n=2, max_new_tokens=8, eos_token_ids=eos,
                           pad_token_id=tokenizer.pad_token_id, generator=torch.Generator().manual_seed(0))
        logp, _ = sampler.completion_logprobs(model, r.prompt_ids, r.completion_ids, tokenizer.pad_token_id)
        torch.testing.assert_close(logp[:, :8], torch.stack(r.logprobs), atol=1e-4, rtol=0)
    with model.disable_adapter():
        outputs["base"] = greedy(model, prompts, tokenizer, 12, eos).completion_ids
    assert outputs["teacher"] != outputs["student"]
    assert outputs["base"] == greedy(llama, prompts, tokenizer, 12, eos).completion_ids


def test_completion_logprobs_carries_grad_for_training(llama, tokenizer, prompts):
    completions = [[5, 6, 7], [8], [9, 10], [11, 12, 13, 14]]
    logp, mask = sampler.completion_logprobs(llama, prompts, completions, tokenizer.pad_token_id)
    assert logp.shape == mask.shape == (4, 4) and logp.requires_grad
    (logp * mask).sum().backward()
    assert llama.lm_head.weight.grad is not None
    llama.zero_grad(set_to_none=True)


def test_decode_skips_special_tokens(tokenizer):
    ids = tokenizer("\\boxed{5}", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert sampler.decode(tokenizer, [ids]) == ["\\boxed{5}"]


def test_bad_arguments_say_what_is_wrong(llama, tokenizer, prompts):
    with pytest.raises(ValueError, match="max_new_tokens"):
        sampler.sample(llama, prompts, max_new_tokens=0, eos_token_ids=[2], pad_token_id=0)
    with pytest.raises(ValueError, match="eos_token_ids"):
        sampler.sample(llama, prompts, max_new_tokens=4, eos_token_ids=[], pad_token_id=0)
    with pytest.raises(ValueError, match="non-empty"):
        sampler.sample(llama, [[]], max_new_tokens=4, eos_token_ids=[2], pad_token_id=0)


@pytest.mark.parametrize("training", [True, False])
def test_sampling_leaves_the_train_or_eval_mode_as_it_found_it(llama, tokenizer, prompts, training):
    llama.train(training)
    seen = []
    handle = llama.model.layers[0].register_forward_pre_hook(lambda m, a: seen.append(m.training))
    try:
        sampler.sample(llama, prompts, n=1, max_new_tokens=3, temperature=0.0,
                       eos_token_ids=[tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id)
    finally:
        handle.remove()
        mode = llama.training
        llama.eval()
    assert seen and not any(seen)  # never sampled under dropout
    assert mode == training


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selective_log_softmax_matches_plain_log_softmax_in_value_and_gradient(dtype):
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 5, 50, generator=gen) * 4).to(dtype)
    targets = torch.randint(0, 50, (3, 5), generator=gen)
    weights = torch.randn(3, 5, generator=gen)
    ours = logits.clone().requires_grad_()
    plain = logits.clone().requires_grad_()
    value = sampler.selective_log_softmax(ours, targets)
    expected = plain.float().log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, expected, atol=1e-5, rtol=0)
    (value * weights).sum().backward()
    (expected * weights).sum().backward()
    assert ours.grad.dtype == dtype
    torch.testing.assert_close(ours.grad, plain.grad, atol=1e-6 if dtype == torch.float32 else 1e-2, rtol=0)


def test_selective_log_softmax_keeps_no_float32_copy_of_the_logits_for_backward():
    logits = torch.randn(2, 4, 1000, dtype=torch.bfloat16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        sampler.selective_log_softmax(logits, torch.zeros(2, 4, dtype=torch.long))
    big = [t for t in saved if t.numel() >= logits.numel()]
    assert all(t.dtype == torch.bfloat16 for t in big) and sum(t.numel() for t in big) == logits.numel()


def test_out_of_memory_in_sampling_halves_the_batch_and_loses_no_row(llama, tokenizer, prompts, monkeypatch):
    eos = [tokenizer.eos_token_id]
    expected = greedy(llama, prompts, tokenizer, 6, eos, n=3, batch_size=8)
    real = sampler.sample_chunk
    sizes = []

    def small_memory(model, prompt_ids, prompt_of_row, *args):
        if len(prompt_of_row) > 3:
            raise torch.OutOfMemoryError("injected: CUDA out of memory")
        sizes.append(len(prompt_of_row))
        return real(model, prompt_ids, prompt_of_row, *args)
    monkeypatch.setattr(sampler, "sample_chunk", small_memory)
    with pytest.warns(UserWarning, match="out of memory sampling 8 rows at once; retrying with 4"):
        r = greedy(llama, prompts, tokenizer, 6, eos, n=3, batch_size=8)
    assert sum(sizes) == 12 and max(sizes) == 2
    assert r.completion_ids == expected.completion_ids and r.prompt_ids == expected.prompt_ids
    # A sampled batch is retried from the generator state it started from.
    gen = torch.Generator().manual_seed(5)
    sampled = sampler.sample(llama, prompts, n=1, max_new_tokens=4, eos_token_ids=eos, batch_size=4,
                             pad_token_id=tokenizer.pad_token_id, generator=gen)
    monkeypatch.setattr(sampler, "sample_chunk", real)
    assert len(sampled.completion_ids) == 4
    gen = torch.Generator().manual_seed(5)
    unsplit = sampler.sample(llama, prompts[:2], n=1, max_new_tokens=4, eos_token_ids=eos, batch_size=2,
                             pad_token_id=tokenizer.pad_token_id, generator=gen)
    assert sampled.completion_ids[:2] == unsplit.completion_ids


class _Renamed(torch.nn.Module):  # transformers' forward since `past_key_values` became `cache`
    def forward(self, input_ids, cache=None, **kwargs):
        raise NotImplementedError


class _BeforeRename(torch.nn.Module):  # early 5.x releases, which requirements.txt allows
    def forward(self, input_ids, past_key_values=None, **kwargs):
        raise NotImplementedError


class _Wrapped(torch.nn.Module):  # a PeftModel: the base model's forward decides
    def __init__(self, base):
        super().__init__()
        self.base = base

    def get_base_model(self):
        return self.base

    def forward(self, *args, **kwargs):
        raise NotImplementedError


def test_the_cache_goes_by_the_name_the_model_s_forward_takes():
    assert sampler.cache_kwarg(_Renamed()) == "cache"
    assert sampler.cache_kwarg(_BeforeRename()) == "past_key_values"
    assert sampler.cache_kwarg(_Wrapped(_BeforeRename())) == "past_key_values"


class _Around(torch.nn.Module):
    """A model around a real one: its weights, config and output head; each test's forward."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()


class _DropsCache(_Around):
    """A model that takes the cache by name and never uses it."""

    def forward(self, input_ids, cache=None, past_key_values=None, **kwargs):
        return self.inner(input_ids=input_ids, **kwargs)


def test_a_model_that_leaves_the_cache_empty_stops_sampling_with_a_clear_error(llama, tokenizer):
    prompt = tokenizer(PROMPTS[0])["input_ids"]
    with pytest.raises(RuntimeError, match="did not fill the KV cache"):
        sampler.sample(_DropsCache(llama), [prompt], n=2, max_new_tokens=4, temperature=1.0,
                       eos_token_ids=[tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id)


class _CacheByItsOldName(_Around):
    """A model whose forward takes the cache as `past_key_values`, as transformers 5.17's does, and
    swallows any other name into **kwargs unused."""

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=None, logits_to_keep=0, **kwargs):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          **{sampler.cache_kwarg(self.inner): past_key_values}, use_cache=use_cache,
                          logits_to_keep=logits_to_keep)


def test_a_model_that_takes_the_cache_by_its_old_name_samples_the_same(llama, tokenizer):
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS[:2]]
    kw = dict(n=1, max_new_tokens=8, temperature=0.0, eos_token_ids=[tokenizer.eos_token_id],
              pad_token_id=tokenizer.pad_token_id)
    assert (sampler.sample(_CacheByItsOldName(llama), prompts, **kw).completion_ids
            == sampler.sample(llama, prompts, **kw).completion_ids)


# ---- the static decoder: the same rollouts in the fixed shapes a GPU wants ------------------------

@pytest.fixture(scope="module")
def tiny_lora(lm_dir):
    """The toy tiny-world model (it answers and stops, unlike a random one) with both adapters,
    each given its own non-zero LoRA weights, and its student prompts."""
    from models import adapter_state, load_adapter_state, load_model
    from student import student_message
    model, tok = load_model(str(lm_dir), "none")
    for k, role in enumerate(("student", "teacher")):
        torch.manual_seed(k)
        load_adapter_state(model, role, {n: torch.randn_like(p) * 0.005
                                         for n, p in adapter_state(model, role).items()})
    prompts = [sampler.encode_prompt(tok, student_message(f"Quickly, compute {a}+{b}."), False)
               for a, b in ((1, 2), (123, 45), (98765, 4321), (7, 8), (55, 555))]
    return model, tok, prompts


def both_decoders(model, tok, prompts, temperature, **kw):
    """(dynamic rollouts, static rollouts, the generator's next draws after each), same seed."""
    out = []
    for static in (False, True):
        gen = torch.Generator().manual_seed(11)
        r = sampler.sample(model, prompts, max_new_tokens=32, temperature=temperature, generator=gen,
                           eos_token_ids=sampler.eos_ids(tok, model), pad_token_id=tok.pad_token_id,
                           static=static, **kw)
        out.append((r, torch.rand(4, generator=gen)))
    return out


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_static_decoder_gives_the_dynamic_one_s_tokens_draws_and_generator_state(
        tiny_lora, temperature, monkeypatch):
    """40 rows: finished rows ride along until the live ones fit a smaller bucket (40 -> 32 -> ...),
    rows finish inside a bucket, and both roles decode exactly as the dynamic decoder does."""
    from models import activate
    model, tok, prompts = tiny_lora
    widths, real_keep = [], sampler.DecodeStep.keep
    monkeypatch.setattr(sampler.DecodeStep, "keep", lambda step, rows: widths.append(len(rows)) or real_keep(step, rows))
    for role in ("student", "teacher"):
        activate(model, role)
        (dyn, dyn_next), (static, static_next) = both_decoders(model, tok, prompts, temperature, n=8,
                                                               batch_size=64)
        assert static.completion_ids == dyn.completion_ids and static.finished == dyn.finished
        for a, b in zip(static.logprobs, dyn.logprobs):
            assert torch.allclose(a, b, atol=1e-4)
        assert torch.equal(static_next, dyn_next)  # the generator is left where the dynamic one leaves it
        lengths = sorted(map(len, dyn.completion_ids))
        assert lengths[0] < lengths[-1] and any(dyn.finished)  # rows end at different steps
    assert widths and all(w < 40 for w in widths)  # 40 rows decoded, then fewer


def test_the_static_decoder_sees_an_adapter_updated_between_two_calls(tiny_lora):
    from models import activate, adapter_state, adapter_weights
    model, tok, prompts = tiny_lora
    activate(model, "student")
    before = both_decoders(model, tok, prompts, 1.0, n=2)[1][0]
    moved = {n: p + 0.2 for n, p in adapter_state(model, "student").items()}
    with adapter_weights(model, "student", moved):
        (dyn, _), (static, _) = both_decoders(model, tok, prompts, 1.0, n=2)
    assert static.completion_ids == dyn.completion_ids != before.completion_ids


def graphs_faked(monkeypatch, replay_error=0.0, capture_error=None):
    """The static decoder's CUDA-graph path on a CPU: a "capture" runs nothing (as a real one
    runs no kernel) and a "replay" runs the step eagerly again; the captures made are listed."""
    captured = []

    def fake_cuda_graph(forward):
        if capture_error:
            raise RuntimeError(capture_error)
        captured.append(True)
        return lambda: forward() + replay_error
    monkeypatch.setattr(sampler, "uses_graphs", lambda device: True)
    monkeypatch.setattr(sampler, "cuda_graph", fake_cuda_graph)
    return captured


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_decode_steps_replayed_from_a_graph_per_bucket_give_the_dynamic_decoder_s_rollouts(
        tiny_lora, temperature, monkeypatch):
    """The capture's eager warm-up writes the step's keys once and is rewound, so the replay
    that follows decodes from the same cache; one graph per bucket width serves every step."""
    model, tok, prompts = tiny_lora
    captured = graphs_faked(monkeypatch)
    (dyn, dyn_next), (static, static_next) = both_decoders(model, tok, prompts, temperature, n=8,
                                                           batch_size=64)
    assert static.completion_ids == dyn.completion_ids and torch.equal(static_next, dyn_next)
    for a, b in zip(static.logprobs, dyn.logprobs):
        assert torch.allclose(a, b, atol=1e-4)
    assert 2 <= len(captured) < 32  # 40 rows, then smaller buckets: far fewer captures than steps


@pytest.mark.parametrize("fault", ["replay", "capture"])
def test_a_graph_that_fails_or_disagrees_with_the_eager_step_leaves_the_rollout_eager(
        tiny_lora, fault, monkeypatch):
    model, tok, prompts = tiny_lora
    if fault == "replay":
        graphs_faked(monkeypatch, replay_error=100.0)
    else:
        graphs_faked(monkeypatch, capture_error="operation not permitted when stream is capturing")
    with pytest.warns(UserWarning, match="as a CUDA graph: .*this rollout decodes eagerly"):
        (dyn, _), (static, _) = both_decoders(model, tok, prompts, 1.0, n=4)
    assert static.completion_ids == dyn.completion_ids


@pytest.mark.slow
def test_out_of_memory_in_the_static_decoder_halves_the_batch_and_loses_no_row(tiny_lora, monkeypatch):
    model, tok, prompts = tiny_lora
    # a chunk draws its rows' numbers step by step, so rows retried in chunks of 2 draw what
    # chunks of 2 draw
    expected = both_decoders(model, tok, prompts, 1.0, n=1, batch_size=2)[1]
    real = sampler.sample_chunk_static

    def small_memory(model, prompt_ids, prompt_of_row, *args):
        if len(prompt_of_row) > 3:
            raise torch.OutOfMemoryError("injected: CUDA out of memory")
        return real(model, prompt_ids, prompt_of_row, *args)
    monkeypatch.setattr(sampler, "sample_chunk_static", small_memory)
    with pytest.warns(UserWarning, match="sampling 4 rows at once; retrying with 2"):
        split = both_decoders(model, tok, prompts, 1.0, n=1, batch_size=4)[1]
    assert split[0].completion_ids == expected[0].completion_ids
    assert torch.equal(split[1], expected[1])


def test_the_lora_weights_keep_their_storage_through_loads_updates_and_role_switches(tiny_lora):
    """A captured CUDA graph reads its tensors at fixed addresses, so everything the loop does to
    the adapters (a copy starting from the baseline, a promotion, an RLOO update, a switch of
    role) must write into the LoRA weights' own storage, never replace it."""
    from models import (activate, adapter_state, adapter_weights, load_adapter_state, make_optimizer,
                        policy_gradient_step)
    model, tok, prompts = tiny_lora
    lora = lambda: {n: p.data_ptr() for n, p in model.named_parameters() if "lora_" in n}  # noqa: E731
    before = lora()
    moved = {n: p + 0.1 for n, p in adapter_state(model, "student").items()}
    with adapter_weights(model, "student", moved):
        activate(model, "teacher")
        activate(model, "student")
        optimizer, _ = make_optimizer(model, "student", 1e-3, 10)
        rollouts = sampler.sample(model, prompts[:2], n=2, max_new_tokens=8, temperature=1.0,
                                  eos_token_ids=sampler.eos_ids(tok, model),
                                  pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(0))
        stats = policy_gradient_step(model, "student", optimizer, rollouts.prompt_ids,
                                     rollouts.completion_ids, torch.tensor([1.0, -1.0, 0.5, -0.5]),
                                     kl_coef=0.001, pad_token_id=tok.pad_token_id, micro_batch=4,
                                     max_new_tokens=8)
        assert stats["skipped"] == 0
    load_adapter_state(model, "teacher", adapter_state(model, "teacher"))
    assert lora() == before


# ---- a 4-bit base samples from weights dequantized once ---------------------------------------

@pytest.fixture(scope="module")
def tiny_4bit(lm_dir):
    from models import load_model
    from student import student_message
    model, tok = load_model(str(lm_dir), "4bit", lora_rank=4, lora_alpha=8)
    prompts = [sampler.encode_prompt(tok, student_message(f"Quickly, compute {a}+{b}."), False)
               for a, b in ((1, 2), (123, 45), (98765, 4321))]
    return model, tok, prompts


def sample_seeded(model, tok, prompts, n):
    return sampler.sample(model, prompts, n=n, max_new_tokens=32, temperature=1.0,
                          generator=torch.Generator().manual_seed(11), eos_token_ids=sampler.eos_ids(tok, model),
                          pad_token_id=tok.pad_token_id)


def test_a_4bit_base_samples_the_same_from_weights_dequantized_once(tiny_4bit, monkeypatch):
    import bitsandbytes as bnb
    model, tok, prompts = tiny_4bit
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    dequantizations = []
    real = bnb.functional.dequantize_4bit
    monkeypatch.setattr(bnb.functional, "dequantize_4bit",
                        lambda *a, **k: dequantizations.append(1) or real(*a, **k))
    once = sample_seeded(model, tok, prompts, 4)
    assert len(dequantizations) == len(layers) > 0  # once per layer for the whole call
    assert all("forward" not in vars(m) for m in layers)  # the 4-bit forward is back after sampling
    monkeypatch.setattr(sampler, "dequantized_base", lambda model: contextlib.nullcontext())
    every_step = sample_seeded(model, tok, prompts, 4)
    assert once.completion_ids == every_step.completion_ids
    for a, b in zip(once.logprobs, every_step.logprobs):
        assert torch.allclose(a, b, atol=1e-4)


def test_a_4bit_base_too_large_to_dequantize_samples_on_the_4bit_path(tiny_4bit, monkeypatch):
    import bitsandbytes as bnb
    model, tok, prompts = tiny_4bit
    monkeypatch.setattr(bnb.functional, "dequantize_4bit",
                        lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError("injected")))
    with pytest.warns(UserWarning, match="does not fit in memory dequantized"):
        r = sample_seeded(model, tok, prompts, 2)
    assert len(r.completion_ids) == 6
