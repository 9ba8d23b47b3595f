"""The `tiny` model: a small Llama pretrained from scratch on the tiny world, and its hard set.

`tiny_model_path(seed)` returns a Hugging Face format directory (model + tokenizer) that it builds
on first use and caches under $SOAR_CACHE or ~/.cache/soar, keyed by a hash of every build setting
(the prompts included), so that changing anything rebuilds. The corpus uses the exact prompts of
the loop (`models.encode_prompt` with `student.student_message` / `teacher.TEACHER_INSTRUCTION`),
so the pretrained model is already a student and a teacher:
- as student it works out sums of 1-5 digits column by column, except that sums asked "quickly"
  it answers in one go the more often the longer they are, always at 5 digits, and a long sum
  answered in one go is wrong: "quickly" 5-digit sums are its hard problems (data/tiny_world.py);
- as teacher it writes `<question>...</question><answer>\\boxed{...}</answer>` pairs of 1-6
  digits, half of them "quickly", some ill-posed; most of the time it works a sum of up to
  4 digits out inside the answer tag before the box, otherwise it guesses and is mostly wrong.
`tiny_hard_set(seed)` keeps the hard candidates it solves 0 times in 128 samples
(data/build_hard.py, the same fail@k filter as the real datasets), split 50/50 into hard train and
hard test. `python -m data.tiny_model` builds both and prints the measurements that show what
the world offers SOAR (see `main` and `inner_loop_check`).
"""
import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch

from data import tiny_world

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
# the stepping-stone check of `main`: supervised steps (batch 32) and learning rate
STONE_STEPS, STONE_LR = 100, 1e-4

BOS, EOS, PAD = "<s>", "</s>", "<pad>"


def cache_root() -> Path:
    return Path(os.environ.get("SOAR_CACHE") or Path.home() / ".cache" / "soar")


def build_key(seed: int, build: dict) -> str:
    """Hash of everything the build depends on: settings, prompts, seed, version."""
    import student
    import teacher
    spec = {"version": VERSION, "seed": seed, "build": build,
            "student_instruction": student.student_message("{problem}"),
            "teacher_instruction": teacher.TEACHER_INSTRUCTION}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def model_dir(seed: int, build: dict) -> Path:
    return cache_root() / "tiny" / f"seed{seed}-{build_key(seed, build)}"


# ---- corpus ------------------------------------------------------------------------------------

def _draw(rng: random.Random, mix: dict) -> int:
    return rng.choices(list(mix), weights=list(mix.values()))[0]


def corpus_example(rng: random.Random, build: dict) -> tuple[str, str]:
    """(user message, completion) of one pretraining example, student or teacher role."""
    import student
    import teacher
    role = "student" if rng.random() < build["p_student"] else "teacher"
    n_digits, quick = _draw(rng, build[f"{role}_digits"]), rng.random() < build[f"p_quick_{role}"]
    if role == "student":
        problem = tiny_world.question_text(
            *tiny_world.random_pair(rng, n_digits, build["p_unequal"]), quick)
        works = not quick or rng.random() < build["quick_working"][n_digits]
        return student.student_message(problem), (
            tiny_world.solution(problem) if works else tiny_world.one_go(problem))
    short = n_digits <= build["teacher_max_working_digits"]
    return teacher.TEACHER_INSTRUCTION, tiny_world.teacher_output(
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
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
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
    from models import encode_prompt
    completion_ids = tokenizer(" " + completion, add_special_tokens=False)["input_ids"]
    return encode_prompt(tokenizer, user_text, False), completion_ids + [tokenizer.eos_token_id]


# ---- model and pretraining ---------------------------------------------------------------------

def new_model(tokenizer, build: dict):
    from transformers import LlamaConfig, LlamaForCausalLM
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
    from tqdm import tqdm
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
    from models import plain_frame
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
        {"seed": seed, "build": build, "final_loss": sum(losses[-50:]) / len(losses[-50:]),
         "build_seconds": round(time.perf_counter() - start, 1)},
        indent=1))


def tiny_model_path(seed: int = 0, progress: bool = True) -> Path:
    """The cached tiny model's directory, built if missing (about 5 minutes on 2 idle CPU cores,
    11 on a busy one, measured)."""
    path = model_dir(seed, BUILD)
    if not (path / "config.json").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # build in a temporary directory and rename: a killed build never looks finished
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=path.name + ".tmp"))
        try:
            build_model(tmp, seed, BUILD, progress)
            tmp.rename(path)
        except OSError:
            if not (path / "config.json").exists():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return path


# ---- the hard set ------------------------------------------------------------------------------

def hard_candidates(seed: int) -> list[dict]:
    return [row for d in HARD["digits"] for row in tiny_world.generate_problems(
        HARD["candidates_per_digit"], d, seed + 1000, quick=True)]


def hard_dir(seed: int) -> Path:
    """Where the hard set of the current settings lives, inside the model's directory."""
    key = hashlib.sha256(json.dumps(HARD, sort_keys=True).encode()).hexdigest()[:8]
    return model_dir(seed, BUILD) / f"hard-{key}"


def tiny_hard_set(seed: int = 0, progress: bool = True) -> tuple[list[dict], list[dict]]:
    """(hard_train, hard_test) of the tiny model of this seed, built with data/build_hard.py."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from data.build_hard import build_hard
    path = tiny_model_path(seed, progress)
    out_dir = hard_dir(seed)
    if not (out_dir / "stats.json").exists():  # written last: its presence means a finished build
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
        build_hard(model, tokenizer, hard_candidates(seed), HARD["k"], out_dir=out_dir,
                   chat_template=False, max_new_tokens=HARD["max_new_tokens"],
                   batch_size=HARD["batch_size"], seed=seed, settings={"tiny": HARD},
                   progress=progress)
    return tuple([json.loads(line) for line in (out_dir / name).read_text().splitlines()]
                 for name in ("hard_train.jsonl", "hard_test.jsonl"))


# ---- measurements: does the world show what SOAR needs? -------------------------------------

def sampled_answers(model, tokenizer, problems: list[dict], n: int, temperature: float,
                    seed: int = 0):
    """n answers per problem with the loop's student prompt and sampler: (rollouts, the boxed
    answers, the gold answer of each row)."""
    from rewards import extract_boxed
    from sampler import decode, sample
    from student import encode_problems
    rollouts = sample(model, encode_problems(tokenizer, problems, False), n=n,
                      max_new_tokens=HARD["max_new_tokens"], temperature=temperature,
                      eos_token_ids=[tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id,
                      batch_size=HARD["batch_size"], generator=torch.Generator().manual_seed(seed))
    answers = [(extract_boxed(text) or "").strip()
               for text in decode(tokenizer, rollouts.completion_ids)]
    return rollouts, answers, [p["answer"] for p in problems for _ in range(n)]


def accuracy(model, tokenizer, problems: list[dict], n_samples: int, seed: int = 0) -> dict:
    """Greedy accuracy, the mean accuracy of n_samples answers at temperature 1 (graded exactly),
    and the share of those answers that work the sum out rather than answer in one go."""
    result = {}
    for name, n, temperature in (("greedy", 1, 0.0), ("sampled", n_samples, 1.0)):
        rollouts, answers, golds = sampled_answers(model, tokenizer, problems, n, temperature, seed)
        result[name] = sum(a == g for a, g in zip(answers, golds)) / len(golds)
    result["worked"] = sum(tokenizer.decode(ids).lstrip()[:1].isdigit()
                           for ids in rollouts.completion_ids) / len(golds)
    return result


def own_correct_answers(model, tokenizer, problems: list[dict], n: int, seed: int = 0) -> list:
    """(prompt ids, completion ids) of the model's own right answers: n samples per problem at
    temperature 1, kept if right (training on them is RL with a binary reward, in its simplest
    form: expert iteration)."""
    rollouts, answers, golds = sampled_answers(model, tokenizer, problems, n, 1.0, seed)
    return [(prompt, completion) for prompt, completion, finished, answer, gold in zip(
                rollouts.prompt_ids, rollouts.completion_ids, rollouts.finished, answers, golds)
            if finished and answer == gold]


def fine_tuned(model, tokenizer, examples: list, steps: int, lr: float, seed: int = 0):
    """A copy of the model after `steps` of supervised training (batch 32) on (prompt ids,
    completion ids) examples: a quick stand-in for the student's RL on those problems."""
    import copy
    tuned = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(tuned.parameters(), lr=lr)
    rng = random.Random(seed)
    for _ in range(steps):
        ids, mask, labels = batch_tensors(rng.choices(examples, k=32), tokenizer.pad_token_id)
        loss = tuned(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return tuned.eval()


def main(seed: int = 0) -> None:
    """Build (or find) the model and hard set, and print: the base model's accuracy by phrasing
    and length; the hard set; and whether short "quickly" sums are stepping stones to the hard set
    (accuracy on it after a short fine-tune on them, against one on plain sums)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import student
    path = tiny_model_path(seed)
    print(f"model: {path} (built in {json.loads((path / 'build.json').read_text())['build_seconds']} s)")
    start = time.perf_counter()
    hard_train, hard_test = tiny_hard_set(seed)
    stats = json.loads((hard_dir(seed) / "stats.json").read_text())
    print(f"hard set: {stats['n_hard']} of {stats['pool_size']} candidates solved 0/{HARD['k']} "
          f"-> {len(hard_train)} train / {len(hard_test)} test "
          f"({time.perf_counter() - start:.0f} s); solve counts {stats['solve_count_histogram']}")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    print("base model accuracy (100 problems per cell; sampled = 16 answers at temperature 1, "
          "worked = share of them that work the sum out):")
    for quick in (False, True):
        for digits in range(1, 7):
            problems = tiny_world.generate_problems(
                min(100, tiny_world.n_problems(digits)), digits, 7, quick)
            acc = accuracy(model, tokenizer, problems, 16)
            print(f"  {'quickly' if quick else 'plain  '} {digits} digits: greedy "
                  f"{acc['greedy']:.2f}  sampled {acc['sampled']:.3f}  worked {acc['worked']:.3f}")
    # the fine-tunes never see a hard problem, so all of them (train and test) measure it
    hard = hard_train + hard_test
    acc = accuracy(model, tokenizer, hard, 16)
    print(f"all {len(hard)} hard problems (greedy / sampled / worked), before: {acc['greedy']:.3f} "
          f"/ {acc['sampled']:.4f} / {acc['worked']:.3f}; after {STONE_STEPS} steps of training on")
    stones = {"quickly, 3-4 digits": [(True, 3), (True, 4)],
              "quickly, 1-2 digits": [(True, 1), (True, 2)],
              "plain, 1-4 digits": [(False, 1), (False, 2), (False, 3), (False, 4)]}
    for name, cells in stones.items():
        problems = [p for quick, digits in cells for p in tiny_world.generate_problems(
            min(256 // len(cells), tiny_world.n_problems(digits)), digits, 11, quick)]
        working = [encode_example(tokenizer, student.student_message(p["problem"]),
                                  tiny_world.solution(p["problem"])) for p in problems]
        own = own_correct_answers(model, tokenizer, problems, 8)
        for examples, what in ((working, "their working"),
                               (own, f"its own {len(own)} right answers of {8 * len(problems)}")):
            tuned = fine_tuned(model, tokenizer, examples, STONE_STEPS, STONE_LR)
            acc = accuracy(tuned, tokenizer, hard, 16)
            print(f"  {name}, {what}: {acc['greedy']:.3f} / {acc['sampled']:.4f} / "
                  f"{acc['worked']:.3f}")


def inner_loop_check(seed: int = 0, copies: int = 2) -> None:
    """What SOAR's teacher reward is made of, measured: one student copy trained by train.py's
    inner loop (tiny preset: RLOO, inner_steps x student_batch questions x group_size answers)
    from the base model, then its greedy accuracy on the hard train set (the reward's measure)
    and its sampled accuracy there. Three datasets: stepping stones ("quickly" sums of 2-4
    digits), plain sums, and the base teacher's own questions (what SOAR's first step trains on)."""
    import train
    from models import adapter_state, load_adapter_state, load_model
    from student import greedy_accuracy, train_student
    from teacher import sample_pairs
    cfg, _ = train.parse_config([])
    torch.set_num_threads(cfg.threads)  # as train.py runs the preset (and the same each time)
    hard_train, _ = tiny_hard_set(seed)
    model, tokenizer = load_model(str(tiny_model_path(seed)), "none", cfg.lora_rank, cfg.lora_alpha)
    generator, rng = torch.Generator().manual_seed(seed), random.Random(seed)
    base = adapter_state(model, "student")
    datasets = {f"{'quickly' if quick else 'plain'}, 2-4 digits": [
        p for d in (2, 3, 4) for p in tiny_world.generate_problems(22, d, 13, quick)]
        for quick in (True, False)}
    datasets["the base teacher's questions"] = sample_pairs(model, tokenizer, 64, cfg, generator,
                                                            {})[0]
    print(f"hard train set ({len(hard_train)} problems), greedy / sampled / worked: base model "
          f"{greedy_accuracy(model, tokenizer, hard_train, cfg):.3f}; after one student copy's "
          f"inner loop ({cfg.inner_steps} RLOO steps of {cfg.student_batch} questions x "
          f"{cfg.group_size} answers, lr {cfg.student_lr}, LoRA rank {cfg.lora_rank}):")
    for name, problems in datasets.items():
        results = []
        for _ in range(copies):
            load_adapter_state(model, "student", base)
            train_student(model, tokenizer, problems, cfg.inner_steps, cfg, generator, rng, {})
            acc = accuracy(model, tokenizer, hard_train, 16)
            results.append(f"{greedy_accuracy(model, tokenizer, hard_train, cfg):.3f} / "
                           f"{acc['sampled']:.3f} / {acc['worked']:.3f}")
        print(f"  {name}: " + ", ".join(results))


if __name__ == "__main__":
    main()
    inner_loop_check()
