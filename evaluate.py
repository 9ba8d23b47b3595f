"""Evaluation: pass@k on the hard test set, and the students trained from scratch to be evaluated.

A fresh student starts from the base model's LoRA and is trained by RLOO on phases of questions:
Hard-Only on the hard train set; SOAR-PQ on SOAR's promoted questions, then the hard train set;
Grounded-T, Intrinsic-T and Base-T on questions sampled from a teacher, then the hard train set.
Every student's log, checkpoint and result.json lie in its job folder, so a killed run resumes
here as anywhere, whatever its number of processes.
"""
import json
import statistics
from pathlib import Path

from models import adapter_state, adapter_weights, make_optimizer
from parallel import World, chunks, generators
from rewards import pass_at_k
from run_dir import (append_jsonl, atomic_save, atomic_write_text, forget_unfinished_steps,
                     load_checkpoint, read_jsonl, write_jsonl)
from student import correct_counts, greedy_accuracy, rloo_step
from teacher import sample_pairs


# ---- pass@k -------------------------------------------------------------------------------------

def read_result(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or torn by a kill while being written: evaluate again
        return None


def pass_at_k_result(w: World, name: str, seed: int, student: dict | None, spread: bool) -> dict:
    """pass@k on the hard test set from eval_samples answers per problem (None = base model).
    The problems go in units of one sampler batch, each with its own generator; `spread` splits
    the units over the processes (else this process does them all)."""
    cfg = w.cfg
    parts = chunks(w.hard_test, max(1, cfg.sample_batch // cfg.eval_samples))
    bar = w.bar(total=len(parts), desc=f"seed {seed} eval {name}", leave=False)

    def count(i):
        counts = correct_counts(w.model, w.tokenizer, parts[i], cfg.eval_samples, cfg,
                                generators(seed, name, "eval", i)[0])
        bar.update(w.procs.count if spread else 1)
        return counts

    units = list(range(len(parts)))
    with adapter_weights(w.model, "student", student if student is not None else w.fresh_student):
        counts = [c for part in (w.procs.map(count, units) if spread else map(count, units))
                  for c in part]
    bar.close()
    ks = [int(k) for k in cfg.ks.split(",")]
    return {"method": name, "seed": seed, "correct_counts": counts,
            "pass_at_k": {str(k): statistics.mean(pass_at_k(cfg.eval_samples, c, k) for c in counts)
                          for k in ks}}


def evaluate(w: World, student: dict | None, name: str, seed: int, job: Path) -> dict:
    """pass@k of one student, spread over the processes; saved, and read back on resume."""
    result = w.procs.on_main(lambda: read_result(job / "result.json"))
    if result is None:
        result = pass_at_k_result(w, name, seed, student, spread=True)
        atomic_write_text(job / "result.json", json.dumps(result, indent=1))
    return result


# ---- students trained from scratch --------------------------------------------------------------

def fresh_student_steps(w: World, name: str, seed: int, phases: list[tuple[list[dict], int]],
                        ckpt: dict | None):
    """A fresh student (the base model's LoRA) trained by RLOO on each (problems, steps) phase in
    turn: Hard-Only is [(hard_train, fresh_steps)], SOAR-PQ is [(PQ, pq_steps), (hard_train, ...)].
    Yields (metrics row, checkpoint) after every step; each step draws from its own generators."""
    cfg, model, tokenizer = w.cfg, w.model, w.tokenizer
    total = sum(steps for _, steps in phases)
    optimizer, scheduler = make_optimizer(model, "student", cfg.student_lr, total)
    step, student = 0, w.fresh_student
    if ckpt is not None:
        step, student = ckpt["step"], ckpt["student"]
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
    schedule = [problems for problems, steps in phases for _ in range(steps)]
    probe = generators(seed, "probe")[1].sample(w.hard_train, min(cfg.q_r, len(w.hard_train)))
    with adapter_weights(model, "student", student):
        for step in w.bar(iterable=range(step, total), desc=f"seed {seed} {name} student",
                          initial=step, total=total):
            times = {}
            generator, rng = generators(seed, name, step)
            batch = rng.sample(schedule[step], min(cfg.student_batch, len(schedule[step])))
            stats = rloo_step(model, tokenizer, optimizer, scheduler, batch, cfg, generator, times)
            row = {"method": name, "seed": seed, "step": step, "train_reward": stats["reward"],
                   "update": stats["update"], "times": {k: round(v, 3) for k, v in times.items()}}
            if (step + 1) % cfg.probe_every == 0 or step + 1 == total:
                row["hard_train_acc"] = greedy_accuracy(model, tokenizer, probe, cfg, row["times"])
            yield row, {"step": step + 1, "student": adapter_state(model, "student"),
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}


def train_fresh_students(w: World, seed: int, jobs: dict[str, list], seed_dir: Path) -> dict:
    """Train and evaluate the fresh students of `jobs` ({method: phases}); returns {method: result}.

    Each process takes one student at a time, and the processes step together so that the main
    process can write every student's log and checkpoint as it goes (and a killed run resumes
    from them, whatever its number of processes)."""
    procs, names, results = w.procs, list(jobs), {}
    for start in range(0, len(names), procs.count):
        batch = names[start:start + procs.count]
        saved = procs.on_main(lambda: [(load_checkpoint(seed_dir / n / "checkpoint.pt"),
                                        read_result(seed_dir / n / "result.json")) for n in batch])
        for name, (ckpt, _) in zip(batch, saved):
            forget_unfinished_steps(seed_dir / name, ckpt["step"] if ckpt else 0)
        mine = batch[procs.rank] if procs.rank < len(batch) else None
        ckpt, result = saved[procs.rank] if mine else (None, None)
        steps = fresh_student_steps(w, mine, seed, jobs[mine], ckpt) if mine and not result else iter(())
        student = ckpt["student"] if ckpt else w.fresh_student  # the latest, as it trains
        while True:  # one step of every process's student, then the main process writes them
            stepped = next(steps, None)
            if stepped:
                student = stepped[1]["student"]
            done = procs.gather([(mine, *stepped)] if stepped else [])
            if not done:
                break
            for name, row, checkpoint in done:
                append_jsonl(seed_dir / name / "metrics.jsonl", row)
                atomic_save(checkpoint, seed_dir / name / "checkpoint.pt")
                w.log_external(f"seed{seed}/{name}", row)
        if mine and not result:
            result = pass_at_k_result(w, mine, seed, student, spread=False)
        for name, res in procs.gather([(mine, result)] if mine else []):
            atomic_write_text(seed_dir / name / "result.json", json.dumps(res, indent=1))
            results[name] = res
    return results


def sample_teacher_questions(w: World, teacher: dict, seed: int, name: str, job: Path) -> list[dict]:
    """`sampled_questions` valid questions from a teacher (Grounded-T, Intrinsic-T, Base-T),
    written by the main process and saved for reuse."""
    path = job / "sampled_questions.jsonl"

    def sample_or_read():
        if path.exists():
            return read_jsonl(path)
        with adapter_weights(w.model, "teacher", teacher):
            pairs, _ = sample_pairs(w.model, w.tokenizer, w.cfg.sampled_questions, w.cfg,
                                    generators(seed, name, "questions")[0], {})
        questions = [{"problem": p["problem"], "answer": p["answer"]} for p in pairs]
        write_jsonl(path, questions)
        return questions
    return w.procs.on_main(sample_or_read)
