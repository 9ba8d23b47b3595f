"""The fail@k hard set: the problems a model solves 0 times in k samples, split 50/50.

`build_hard(model, tokenizer, problems, k, out_dir=...)` samples student answers (student prompt,
temperature 1) from the model as given, checks them, keeps the problems solved 0 times in k
samples and splits them with a seed into `hard_train.jsonl` / `hard_test.jsonl`, plus
`stats.json` (pool size, histogram of solve counts, samples drawn, settings) in out_dir.
build_hard.py is its command line; the tiny world calls it on its own model.

Sampling goes in rounds: a problem leaves at its first correct answer, and only the problems
still unsolved get more samples, the cumulative count doubling each round (8, 16, 32, 64, 128 for
k=128), so a problem kept as hard has had exactly k samples and none right, as with all k drawn
at once; a solved problem's `n_correct` then counts the correct ones among the samples it took
(`samples` in results.jsonl). `all_k` draws all k for every problem (exact solve counts, the
full cost). Per-problem results go to `results.jsonl` in chunks of problems, each chunk sampled
from its own seeded generator, so an interrupted build resumes where it stopped and ends with
exactly the files an uninterrupted one would have written.
"""
import json
import random
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

import sampler
from parallel import Processes
from rewards import check_many
from run_dir import append_jsonl, atomic_write_text, complete_rows, read_jsonl, write_jsonl
from student import student_message


def tag(name: str) -> str:
    """A folder name for a model or dataset: a local file by its stem, a local folder by its name,
    a preset, benchmark or hub id as is ("/" becomes "--")."""
    path = Path(name)
    if path.is_file():
        return path.stem
    if path.is_dir():
        return path.resolve().name
    return name.replace("/", "--")


def hard_set_paths(hard_dir, model: str, dataset: str) -> tuple[Path, Path]:
    folder = Path(hard_dir) / tag(model) / tag(dataset)
    return folder / "hard_train.jsonl", folder / "hard_test.jsonl"


def split_hard(hard: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    order = list(range(len(hard)))
    random.Random(seed).shuffle(order)
    half = len(hard) // 2
    return [hard[i] for i in sorted(order[:half])], [hard[i] for i in sorted(order[half:])]


def round_sizes(k: int, first: int) -> list[int]:
    """Samples per unsolved problem in each round: `first`, then as many as drawn so far (the
    cumulative count doubles), the last round cut so that the rounds add up to exactly k."""
    sizes = []
    while sum(sizes) < k:
        sizes.append(min(max(first, sum(sizes)), k - sum(sizes)))
    return sizes


def build_hard(model, tokenizer, problems: list[dict], k: int, *, out_dir, chat_template: bool,
               max_new_tokens: int = 1024, batch_size: int = 64, chunk_problems: int = 32,
               first_round: int = 8, all_k: bool = False, seed: int = 0,
               check_timeout: float = 5.0, settings: dict | None = None,
               progress: bool = True, procs: Processes | None = None
               ) -> tuple[list[dict], list[dict], dict]:
    """Sample, check, filter and split; returns (hard_train, hard_test, stats) and writes them.
    With `procs` the chunks are spread over the processes and the main one writes the files."""
    out_dir = Path(out_dir)
    rounds = [k] if all_k else round_sizes(k, first_round)
    settings = {**(settings or {}), "k": k, "max_new_tokens": max_new_tokens, "temperature": 1.0,
                "chat_template": chat_template, "chunk_problems": chunk_problems, "seed": seed,
                "batch_size": batch_size, "n_problems": len(problems), "rounds": rounds}
    settings_path = out_dir / "settings.json"
    if settings_path.exists() and json.loads(settings_path.read_text()) != settings:
        raise SystemExit(f"error: {out_dir} holds a build with other settings "
                         f"({settings_path}); delete the folder or choose another --out-dir")
    atomic_write_text(settings_path, json.dumps(settings, indent=1))

    results_path = out_dir / "results.jsonl"
    # Resume: keep the whole chunks already written (a kill can leave a chunk half done).
    results = complete_rows(results_path)
    done = len(results) - len(results) % chunk_problems if len(results) < len(problems) else len(results)
    results = results[:done]
    for i, r in enumerate(results):
        if r["problem"] != problems[i]["problem"]:
            raise SystemExit(f"error: {results_path}:{i + 1} is for another problem than the "
                             f"dataset's problem {i}; delete the folder or choose another --out-dir")
    write_jsonl(results_path, results)  # drop any partial chunk before appending

    def sample_from(start):
        # Each chunk has its own generator, so a resumed build samples exactly what a full one
        # would, whichever process samples it.
        generator = torch.Generator(device=model.device).manual_seed(seed * 1_000_003 + start)
        return count_solved(model, tokenizer, problems[start:start + chunk_problems], rounds,
                            generator, chat_template=chat_template, max_new_tokens=max_new_tokens,
                            batch_size=batch_size, check_timeout=check_timeout)

    spread = procs.map if procs else lambda fn, units: [fn(u) for u in units]
    count = procs.count if procs else 1
    bar = tqdm(total=len(problems), initial=done, desc="fail@k", unit="problem",
               disable=not progress or bool(procs and not procs.main))
    for first in range(done, len(problems), chunk_problems * count):
        starts = list(range(first, min(len(problems), first + chunk_problems * count), chunk_problems))
        for start, rows in zip(starts, spread(sample_from, starts)):
            for j, row in enumerate(rows):
                append_jsonl(results_path, {**problems[start + j], "index": start + j, **row, "k": k})
            bar.update(len(rows))
    bar.close()
    built = finish(out_dir, read_jsonl(results_path), settings, seed) if not procs or procs.main else None
    return procs.broadcast(built) if procs else built


def count_solved(model, tokenizer, chunk: list[dict], rounds: list[int], generator, *,
                 chat_template, max_new_tokens, batch_size, check_timeout) -> list[dict]:
    """{"n_correct", "samples", "tokens"} per problem of the chunk, sampled round by round; a
    problem whose gold does not check against itself cannot grade anything (n_correct None)."""
    valid = check_many([f"\\boxed{{{p['answer']}}}" for p in chunk], [p["answer"] for p in chunk],
                       timeout=check_timeout)
    prompts = [sampler.encode_prompt(tokenizer, student_message(p["problem"]), chat_template)
               for p in chunk]
    rows = [{"n_correct": None if not ok else 0, "samples": 0, "tokens": 0} for ok in valid]
    for n in rounds:
        todo = [j for j, r in enumerate(rows) if r["n_correct"] == 0]
        if not todo:
            break
        rollouts, texts = sampler.generate(model, tokenizer, [prompts[j] for j in todo], n=n,
                                           temperature=1.0, max_new_tokens=max_new_tokens,
                                           batch_size=batch_size, generator=generator)
        correct = check_many(texts, [chunk[j]["answer"] for j in todo for _ in range(n)],
                             timeout=check_timeout)
        for i, j in enumerate(todo):
            rows[j]["n_correct"] += sum(correct[i * n:(i + 1) * n])
            rows[j]["samples"] += n
            rows[j]["tokens"] += sum(map(len, rollouts.completion_ids[i * n:(i + 1) * n]))
    return rows


def finish(out_dir: Path, results: list[dict], settings: dict, seed: int):
    valid = [r for r in results if r["n_correct"] is not None]
    hard = [{key: v for key, v in r.items() if key not in ("n_correct", "k", "samples", "tokens")}
            for r in valid if r["n_correct"] == 0]
    hard_train, hard_test = split_hard(hard, seed)
    histogram = Counter(r["n_correct"] for r in valid)
    stats = {"pool_size": len(results), "invalid_gold": len(results) - len(valid), "n_hard": len(hard),
             "n_train": len(hard_train), "n_test": len(hard_test),
             "solve_count_histogram": {str(c): histogram[c] for c in sorted(histogram)},
             "samples": sum(r["samples"] for r in valid),
             "completion_tokens": sum(r["tokens"] for r in valid),
             "settings": settings}
    write_jsonl(out_dir / "hard_train.jsonl", hard_train)
    write_jsonl(out_dir / "hard_test.jsonl", hard_test)
    atomic_write_text(out_dir / "stats.json", json.dumps(stats, indent=1))
    return hard_train, hard_test, stats
