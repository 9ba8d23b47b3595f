"""The `tiny` model: a small Llama pretrained from scratch on the tiny world, and its hard set.

`tiny_model_path(seed)` returns a Hugging Face format directory (model + tokenizer). The build of
seed 0 ships with the project in tiny/pretrained/, its hard set beside it, so every machine runs
the same model (a build is not bit-identical across CPUs). Any other build, e.g. after a change to
a setting or a prompt, is made on first use and cached under $SOAR_CACHE or ~/.cache/soar, keyed
by a hash of every build setting (the prompts included), so that changing anything rebuilds.
`python -m tiny.model` builds the current settings' model and hard set in the cache; with
`--ship` it also replaces tiny/pretrained/ with them. The corpus uses the exact prompts of
the loop (`sampler.encode_prompt` with `student.student_message` / `teacher.TEACHER_INSTRUCTION`),
so the pretrained model is already a student and a teacher:
- as student it works out sums of 1-5 digits column by column, except that sums asked "quickly"
  it answers in one go the more often the longer they are, always at 5 digits, and a long sum
  answered in one go is wrong: "quickly" 5-digit sums are its hard problems (tiny/world.py);
- as teacher it writes `<question>...</question><answer>\\boxed{...}</answer>` pairs of 1-6
  digits, half of them "quickly", some ill-posed; most of the time it works a sum of up to
  4 digits out inside the answer tag before the box, otherwise it guesses and is mostly wrong.
`tiny_hard_set(seed)` keeps the hard candidates it solves 0 times in 128 samples
(build_hard.py, the same fail@k filter as the real datasets), split 50/50 into hard train and
hard test. `python probes.py` builds both and prints the measurements that show what the
world offers SOAR.
"""
import hashlib
import json
import math
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors, trainers
from tokenizers import models as tokenizer_models
from tqdm import tqdm
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM,
                          PreTrainedTokenizerFast)

import student
import teacher
from data.hard import build_hard
from models import cache_root
from sampler import encode_prompt, plain_frame
from run_dir import read_jsonl
from tiny import world

VERSION = 5  # bump when the build changes in a way the settings below do not show

BUILD = {
    # corpus: the share of student examples, the digit mix of each role, the share of questions
    # asked "quickly" in each role, and the student's habit: the share of "quickly" sums of each
    # length that it works out (the rest it answers in one go). Measured on other builds: with the
    # teacher asking "quickly" in 25% of its questions (not 50%) the student was more responsive
    # (one inner loop on ideal stepping stones: 0.33 and 0.70 hard-train greedy, here 0.16 and
    # 0.22) but the teacher wrote too few stepping stones for its reward to leave 0; a teacher
    # that works out 90% of its answers up to 5 digits left a student that moved less (0.06, 0.10).
    "p_student": 0.7,
    "student_digits": {1: 0.1, 2: 0.15, 3: 0.25, 4: 0.25, 5: 0.25},
    "teacher_digits": {1: 0.08, 2: 0.2, 3: 0.3, 4: 0.22, 5: 0.12, 6: 0.08},
    "p_quick_student": 0.4, "p_quick_teacher": 0.5,
    "quick_working": {1: 0.8, 2: 0.5, 3: 0.2, 4: 0.05, 5: 0.0},
    "teacher_max_working_digits": 4,  # longer teacher problems come without working
    "p_unequal": 0.3,
    "p_working": 0.7, "p_wrong": 0.35, "p_ill_posed": 0.06,
    # tokenizer and model
    "vocab_size": 640,
    "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
    "max_position_embeddings": 256,
    # optimisation
    "steps": 1500, "batch_size": 64, "lr": 2e-3, "warmup_steps": 100, "weight_decay": 0.01,
}
# the hard set: "quickly" sums of these lengths, kept if solved 0 times in k samples
HARD = {"digits": [5], "candidates_per_digit": 256, "k": 128, "max_new_tokens": 64,
        "batch_size": 512}

BOS, EOS, PAD = "<s>", "</s>", "<pad>"


def build_key(seed: int, build: dict) -> str:
    """Hash of everything the build depends on: settings, prompts, seed, version."""
    spec = {"version": VERSION, "seed": seed, "build": build,
            "student_instruction": student.student_message("{problem}"),
            "teacher_instruction": teacher.TEACHER_INSTRUCTION}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


SHIPPED = Path(__file__).resolve().parent / "pretrained"


def cache_dir(seed: int, build: dict) -> Path:
    return cache_root() / "tiny" / f"seed{seed}-{build_key(seed, build)}"


def model_dir(seed: int, build: dict) -> Path:
    """Where the model of (seed, build) lives: tiny/pretrained/ when that is its build, else the cache."""
    return SHIPPED if shipped_key() == build_key(seed, build) else cache_dir(seed, build)


def shipped_key() -> str | None:
    try:
        return json.loads((SHIPPED / "build.json").read_text())["key"]
    except (OSError, KeyError, ValueError):
        return None


# ---- corpus ------------------------------------------------------------------------------------

def _draw(rng: random.Random, mix: dict) -> int:
    return rng.choices(list(mix), weights=list(mix.values()))[0]


def corpus_example(rng: random.Random, build: dict) -> tuple[str, str]:
    """(user message, completion) of one pretraining example, student or teacher role."""
    role = "student" if rng.random() < build["p_student"] else "teacher"
    n_digits, quick = _draw(rng, build[f"{role}_digits"]), rng.random() < build[f"p_quick_{role}"]
    if role == "student":
        problem = world.question_text(
            *world.random_pair(rng, n_digits, build["p_unequal"]), quick)
        works = not quick or rng.random() < build["quick_working"][n_digits]
        return student.student_message(problem), (
            world.solution(problem) if works else world.one_go(problem))
    short = n_digits <= build["teacher_max_working_digits"]
    return teacher.TEACHER_INSTRUCTION, world.teacher_output(
        rng, n_digits, quick, p_working=build["p_working"] if short else 0.0,
        p_wrong=build["p_wrong"], p_ill_posed=build["p_ill_posed"])


def corpus(n: int, seed: int, build: dict) -> list[tuple[str, str]]:
    rng = random.Random(f"corpus-{seed}")
    return [corpus_example(rng, build) for _ in range(n)]


# ---- tokenizer ---------------------------------------------------------------------------------

def build_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE with every digit its own token; BOS prepended by add_special_tokens.

    Merges may cross spaces (no word split): the constant instructions, repeated in every
    example, become a handful of tokens, which keeps pretraining and sampling cheap.
    """
    tok = Tokenizer(tokenizer_models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tok.token_to_id(BOS))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS,
                                   pad_token=PAD, padding_side="left")


def encode_example(tokenizer, user_text: str, completion: str) -> tuple[list[int], list[int]]:
    """(prompt ids exactly as the loop builds them, completion ids ending in EOS)."""
    completion_ids = tokenizer(" " + completion, add_special_tokens=False)["input_ids"]
    return encode_prompt(tokenizer, user_text, False), completion_ids + [tokenizer.eos_token_id]


# ---- model and pretraining ---------------------------------------------------------------------

def new_model(tokenizer, build: dict):
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=build["hidden_size"],
        intermediate_size=build["intermediate_size"],
        num_hidden_layers=build["num_hidden_layers"],
        num_attention_heads=build["num_attention_heads"],
        num_key_value_heads=build["num_attention_heads"],
        max_position_embeddings=build["max_position_embeddings"], tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config)


def batch_tensors(examples: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded input ids, attention mask, and labels on completion tokens only."""
    width = max(len(p) + len(c) for p, c in examples)
    ids = torch.full((len(examples), width), pad_id)
    labels = torch.full((len(examples), width), -100)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (p, c) in enumerate(examples):
        ids[i, :len(p) + len(c)] = torch.tensor(p + c)
        labels[i, len(p):len(p) + len(c)] = torch.tensor(c)
        mask[i, :len(p) + len(c)] = 1
    return ids, mask, labels


def pretrain(model, tokenizer, batches: list, build: dict, progress: bool) -> list[float]:
    """Next-token loss on the completions, AdamW with warm-up and cosine decay; returns losses."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=build["lr"], betas=(0.9, 0.98),
                                  weight_decay=build["weight_decay"])
    steps, warmup = len(batches), build["warmup_steps"]
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(
        (s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * s / steps))))
    model.train()
    losses, bar = [], tqdm(range(steps), desc="pretraining the tiny model", disable=not progress)
    for step in bar:
        ids, mask, labels = batch_tensors(batches[step], tokenizer.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return losses


def build_model(out_dir: Path, seed: int, build: dict, progress: bool = True) -> None:
    """Corpus -> tokenizer -> pretrained Llama, saved with save_pretrained into out_dir.

    One thread: the same seed then gives the same weights wherever the torch build is the same
    (a multi-threaded matmul may sum in another order). Measured per step on 2 cores: 0.18 s on
    one thread, 0.11 s on two when the machine is idle, but 0.43 s on one and 0.88 s on two when
    other processes keep it busy.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _build_model(out_dir, seed, build, progress)
    finally:
        torch.set_num_threads(threads)


def _build_model(out_dir: Path, seed: int, build: dict, progress: bool) -> None:
    start = time.perf_counter()
    torch.manual_seed(seed)
    texts = corpus(build["steps"] * build["batch_size"], seed, build)
    tokenizer = build_tokenizer([plain_frame(u) + " " + c for u, c in texts[:4000]],
                                build["vocab_size"])
    examples = [encode_example(tokenizer, u, c) for u, c in texts]
    model = new_model(tokenizer, build)
    size = build["batch_size"]
    batches = [examples[i:i + size] for i in range(0, len(examples), size)]
    losses = pretrain(model, tokenizer, batches, build, progress)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "build.json").write_text(json.dumps(
        {"seed": seed, "key": build_key(seed, build), "build": build,
         "final_loss": sum(losses[-50:]) / len(losses[-50:]),
         "build_seconds": round(time.perf_counter() - start, 1)},
        indent=1))


def tiny_model_path(seed: int = 0, progress: bool = True) -> Path:
    """The cached tiny model's directory, built if missing (about 5 minutes on 2 idle CPU cores,
    11 on a busy one, measured)."""
    return built_model_dir(seed, BUILD, progress)


def built_model_dir(seed: int, build: dict, progress: bool) -> Path:
    """The model of (seed, build), the shipped one or else the cached one, built if missing: beside
    its place and renamed into it, so a killed build never looks finished and two builds at once
    both end with one whole model."""
    path = model_dir(seed, build)
    if not (path / "config.json").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=path.name + ".tmp"))
        try:
            build_model(tmp, seed, build, progress)
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache is for every user
            tmp.rename(path)
        except OSError:
            if not (path / "config.json").exists():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return path


# ---- the hard set ------------------------------------------------------------------------------

def hard_candidates(seed: int) -> list[dict]:
    return [row for d in HARD["digits"] for row in world.generate_problems(
        HARD["candidates_per_digit"], d, seed + 1000, quick=True)]


def hard_dir(seed: int) -> Path:
    """Where the hard set of the current settings lives, inside the model's directory."""
    key = hashlib.sha256(json.dumps(HARD, sort_keys=True).encode()).hexdigest()[:8]
    return model_dir(seed, BUILD) / f"hard-{key}"


def tiny_hard_set(seed: int = 0, progress: bool = True) -> tuple[list[dict], list[dict]]:
    """(hard_train, hard_test) of the tiny model of this seed, built with data/hard.py's filter."""
    path = tiny_model_path(seed, progress)
    out_dir = hard_dir(seed)
    if not (out_dir / "stats.json").exists():  # written last: its presence means a finished build
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
        # All k samples at once, in chunks of 8: the hard set every earlier build of this world
        # found (a builder in rounds draws other samples, so it would find another one), and
        # exact solve counts for `python probes.py`; the tiny model takes a minute either way.
        build_hard(model, tokenizer, hard_candidates(seed), HARD["k"], out_dir=out_dir,
                   chat_template=False, max_new_tokens=HARD["max_new_tokens"],
                   batch_size=HARD["batch_size"], chunk_problems=8, all_k=True, seed=seed,
                   settings={"tiny": HARD}, progress=progress)
    # each with the worked solution the student writes, for --reward-measure solution
    return tuple([{**row, "solution": world.solution(row["problem"])} for row in read_jsonl(out_dir / name)]
                 for name in ("hard_train.jsonl", "hard_test.jsonl"))


# ---- the builder's command ---------------------------------------------------------------------

def ship(seed: int = 0) -> Path:
    """Replace tiny/pretrained/ with the cached build of the current settings and its hard set."""
    source = cache_dir(seed, BUILD)
    if not (source / "config.json").exists():
        raise FileNotFoundError(f"no build of the current settings in {source}: run `python -m tiny.model`")
    shutil.rmtree(SHIPPED, ignore_errors=True)
    shutil.copytree(source, SHIPPED)
    info = json.loads((SHIPPED / "build.json").read_text())
    (SHIPPED / "build.json").write_text(json.dumps({**info, "key": build_key(seed, BUILD)}, indent=1))
    return SHIPPED


def main(argv: list[str]) -> None:
    """`python -m tiny.model [--ship]`: build the current settings' model and hard set in the
    cache (minutes), print their sizes, and with --ship make them the shipped ones."""
    if argv not in ([], ["--ship"]):
        raise SystemExit("usage: python -m tiny.model [--ship]")
    path = built_model_dir(0, BUILD, progress=True)
    train, test = tiny_hard_set(0)
    print(f"model {path}: hard train {len(train)}, hard test {len(test)} problems")
    if argv == ["--ship"]:
        print(f"shipped: {ship(0)} (commit it)")


if __name__ == "__main__":
    main(sys.argv[1:])
