"""What bench.py and gpu_check.py both measure with: timing on any device, a random model with
a word-level tokenizer, `model.generate` as the reference sampler, the bytes and multiplied
weights of a model, and a plain text table."""
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers import models as tokenizer_models
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import sampler

RANDOM_CONFIG = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=4, max_position_embeddings=1024)
RANDOM_VOCAB = 1000
PROMPT_TOKENS = 160  # a chat-templated student prompt with a MATH problem (upper end); teacher's ~110


def random_model_dir(out: Path, mean_len: int, **shape) -> Path:
    """A random Llama with a word-level tokenizer, saved in HF format; its stop set is EOS-heavy.
    `shape` overrides RANDOM_CONFIG (e.g. num_hidden_layers)."""
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + [f"w{i}" for i in range(RANDOM_VOCAB - len(specials))])}
    tok = Tokenizer(tokenizer_models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=RANDOM_VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                         **(RANDOM_CONFIG | shape))
    model = LlamaForCausalLM(config)
    stop_ids = [2] + list(range(len(specials), len(specials) + RANDOM_VOCAB // mean_len - 1))
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=stop_ids, pad_token_id=0)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_call(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def linear_params(model) -> int:
    """Weights that every decoded token multiplies (all Linear layers, LoRA included, lm_head included)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def hf_generate(model, prompts, *, n, max_new_tokens, temperature, eos, pad_id, seed):
    ids, mask = sampler.left_pad(prompts, pad_id, sampler.model_device(model))
    config = GenerationConfig(do_sample=temperature > 0, temperature=temperature or None, top_k=0, top_p=1.0,
                              max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=pad_id,
                              repetition_penalty=1.0,
                              num_return_sequences=n)
    torch.manual_seed(seed)
    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    return out[:, ids.shape[1]:].tolist()


def tensor_bytes(model) -> dict[str, int]:
    """Bytes of the base weights (4-bit packed + quantization constants) and of one adapter."""
    base = adapter = 0
    for name, p in model.named_parameters():
        if "lora_" in name:
            adapter += p.nbytes if ".student." in name else 0
            continue
        base += p.nbytes
        state = getattr(p, "quant_state", None)
        if state is not None:
            base += state.absmax.nbytes + state.code.nbytes
            if state.nested:
                base += state.state2.absmax.nbytes + state.state2.code.nbytes
    return {"base": base, "adapter": adapter}


def print_table(header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))
