"""Research probes of the tiny world: does it offer SOAR what the method needs? A run never
imports this file.

    python -m tiny.probes

prints the base model's accuracy by phrasing and length, the hard set, whether short "quickly"
sums are stepping stones to it (accuracy after a short supervised fine-tune on them, against one
on plain sums: `main`), and what SOAR's teacher reward is made of (one student copy's RLOO inner
loop on stepping stones, plain sums and the base teacher's questions: `inner_loop_check`).
"""
import copy
import json
import random
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import student
import train
from models import adapter_state, load_adapter_state, load_model
from rewards import extract_boxed
from sampler import decode, sample
from student import encode_problems, greedy_accuracy, train_student
from teacher import sample_pairs
from tiny import world
from tiny.model import HARD, batch_tensors, encode_example, hard_dir, tiny_hard_set, tiny_model_path

# the stepping-stone check of `main`: supervised steps (batch 32) and learning rate
STONE_STEPS, STONE_LR = 100, 1e-4

def sampled_answers(model, tokenizer, problems: list[dict], n: int, temperature: float,
                    seed: int = 0):
    """n answers per problem with the loop's student prompt and sampler: (rollouts, the boxed
    answers, the gold answer of each row)."""
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
            problems = world.generate_problems(
                min(100, world.n_problems(digits)), digits, 7, quick)
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
        problems = [p for quick, digits in cells for p in world.generate_problems(
            min(256 // len(cells), world.n_problems(digits)), digits, 11, quick)]
        working = [encode_example(tokenizer, student.student_message(p["problem"]),
                                  world.solution(p["problem"])) for p in problems]
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
    cfg, _, _ = train.parse_config([])
    torch.set_num_threads(cfg.threads)  # as train.py runs the preset (and the same each time)
    hard_train, _ = tiny_hard_set(seed)
    model, tokenizer = load_model(str(tiny_model_path(seed)), "none", cfg.lora_rank, cfg.lora_alpha)
    generator, rng = torch.Generator().manual_seed(seed), random.Random(seed)
    base = adapter_state(model, "student")
    datasets = {f"{'quickly' if quick else 'plain'}, 2-4 digits": [
        p for d in (2, 3, 4) for p in world.generate_problems(22, d, 13, quick)]
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
