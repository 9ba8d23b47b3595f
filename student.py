"""The student: its prompt, RLOO on (question, answer) pairs, greedy / pass@k evaluation, and the
measures of its standing on Q_R that can reward the teacher.

The student is the "student" LoRA adapter of the shared model. Whoever calls these functions
decides which weights sit in that adapter (the baseline, a throw-away copy, a fresh student).
"""
import math
import random

import torch

from models import activate, make_optimizer, policy_gradient_step, update_outcome
from rewards import binary_reward, check_many, rloo_advantages, shaped_reward
from run_dir import timed
from sampler import completion_logprobs, encode_prompt, generate

STUDENT_INSTRUCTION = (
    "Solve the following math problem step by step. "
    "Put the final answer in \\boxed{}."
)


def student_message(problem: str) -> str:
    return f"{STUDENT_INSTRUCTION}\n{problem}"


def encode_problems(tokenizer, problems: list[dict], chat_template: bool) -> list[list[int]]:
    return [encode_prompt(tokenizer, student_message(p["problem"]), chat_template) for p in problems]


def answer(model, tokenizer, problems, cfg, *, n, temperature, generator=None, progress=None):
    """Sample n student answers per problem; returns texts, grouped by problem."""
    activate(model, "student")
    _, texts = generate(model, tokenizer, encode_problems(tokenizer, problems, cfg.use_chat_template),
                        n=n, temperature=temperature, max_new_tokens=cfg.student_max_tokens,
                        batch_size=cfg.sample_batch, generator=generator, progress=progress)
    return texts


def grade(texts: list[str], problems: list[dict], n: int, cfg) -> list[bool]:
    """Correctness of n answers per problem, in the same grouped order as `texts`."""
    golds = [p["answer"] for p in problems for _ in range(n)]
    return check_many(texts, golds, timeout=cfg.check_timeout)


def rloo_step(model, tokenizer, optimizer, scheduler, batch: list[dict], cfg, generator, times) -> dict:
    """One RLOO step: G answers per question, leave-one-out advantages, a KL-penalized update."""
    G = cfg.group_size
    activate(model, "student")
    prompt_ids = encode_problems(tokenizer, batch, cfg.use_chat_template)
    with timed(times, "student_sample"):
        rollouts, texts = generate(model, tokenizer, prompt_ids, n=G, temperature=cfg.temperature,
                                   max_new_tokens=cfg.student_max_tokens,
                                   batch_size=cfg.sample_batch, generator=generator)
    with timed(times, "check"):
        correct = grade(texts, batch, G, cfg)
    golds = [p["answer"] for p in batch for _ in range(G)]
    if cfg.reward == "shaped":
        rewards = [shaped_reward(t, g, c) for t, g, c in zip(texts, golds, correct)]
    else:
        rewards = [binary_reward(c) for c in correct]
    rewards = torch.tensor(rewards, dtype=torch.float32).view(len(batch), G)
    advantages = rloo_advantages(rewards).flatten()
    stats = {"reward": rewards.mean().item(), "accuracy": sum(correct) / len(correct),
             "loss": 0.0, "kl": 0.0, "skipped": 0, "update": "no signal"}
    with timed(times, "train"):
        # When every answer in every group scored the same, RLOO has no signal and the only
        # gradient left is the KL pull towards the base: we skip the update (and its two
        # forwards, which dominate Hard-Only's cost), and say so in the stats.
        if advantages.abs().sum() > 0:
            stats |= policy_gradient_step(
                model, "student", optimizer, rollouts.prompt_ids, rollouts.completion_ids,
                advantages, kl_coef=cfg.kl_coef, pad_token_id=tokenizer.pad_token_id,
                micro_batch=cfg.micro_batch, max_new_tokens=cfg.student_max_tokens)
            stats["update"] = update_outcome(stats)
    scheduler.step()
    return stats


def train_student(model, tokenizer, problems: list[dict], steps: int, cfg, generator,
                  rng: random.Random, times: dict) -> list[dict]:
    """The inner loop: `steps` RLOO steps on `problems`, from whatever the student adapter holds."""
    optimizer, scheduler = make_optimizer(model, "student", cfg.student_lr, steps)
    history = []
    for _ in range(steps):
        batch = rng.sample(problems, min(cfg.student_batch, len(problems)))
        history.append(rloo_step(model, tokenizer, optimizer, scheduler, batch, cfg, generator, times))
    return history


def greedy_correct(model, tokenizer, problems: list[dict], cfg, times=None) -> list[bool]:
    """Whether the student answers each problem correctly with greedy decoding."""
    times = {} if times is None else times
    with timed(times, "eval"):
        texts = answer(model, tokenizer, problems, cfg, n=1, temperature=0.0)
        return grade(texts, problems, 1, cfg)


def greedy_accuracy(model, tokenizer, problems: list[dict], cfg, times=None) -> float:
    """Share of problems the student answers correctly with greedy decoding (SOAR's reward signal)."""
    correct = greedy_correct(model, tokenizer, problems, cfg, times)
    return sum(correct) / len(correct)


def sampled_accuracy(model, tokenizer, problems: list[dict], cfg, generator, times) -> float:
    """Mean accuracy of cfg.measure_samples answers per problem at the run's temperature: unlike
    greedy accuracy it also counts a problem the student solves some of the time."""
    with timed(times, "eval"):
        counts = correct_counts(model, tokenizer, problems, cfg.measure_samples, cfg, generator)
    return sum(counts) / (cfg.measure_samples * len(problems))


def solution_log_probability(model, tokenizer, problems: list[dict], cfg, times) -> float:
    """log of the mean, over the problems, of the probability that the student writes each one's
    reference solution (its row's "solution", in the student's own format), teacher-forced at
    temperature 1. That probability is the student's expected accuracy along the reference path,
    exact without sampling, and it moves before greedy accuracy does: a copy that has half
    unlearned a habit earns for it. In log space a difference is how many times likelier the
    student has become, so a copy that crossed greedy's threshold does not drown the rest."""
    activate(model, "student")
    prompts = encode_problems(tokenizer, problems, cfg.use_chat_template)
    solutions = [solution_ids(tokenizer, p["solution"], cfg.use_chat_template) for p in problems]
    logps = []
    with timed(times, "eval"), torch.no_grad():
        for at in range(0, len(problems), cfg.micro_batch):
            logp, mask = completion_logprobs(model, prompts[at:at + cfg.micro_batch],
                                             solutions[at:at + cfg.micro_batch], tokenizer.pad_token_id)
            logps.append((logp * mask).sum(dim=1))
    return (torch.logsumexp(torch.cat(logps), dim=0) - math.log(len(problems))).item()


def solution_ids(tokenizer, solution: str, chat_template: bool) -> list[int]:
    """A reference solution's tokens as the student would write them after its prompt: the plain
    frame ends "Assistant:" and its answers begin with a space; a chat template's do not."""
    return tokenizer(solution if chat_template else " " + solution, add_special_tokens=False)["input_ids"]


def has_solutions(problems: list[dict]) -> bool:
    return all("solution" in p for p in problems)


# The measures of the student's standing on Q_R, any of which can reward the teacher
# (--reward-measure); every one that applies is logged. Each is f(model, tokenizer, q_r, cfg,
# generator, times); "solution" applies where Q_R's rows hold reference solutions.
MEASURES = {
    "greedy": lambda model, tokenizer, q_r, cfg, generator, times:  # the paper's
        greedy_accuracy(model, tokenizer, q_r, cfg, times),
    "sampled": sampled_accuracy,
    "solution": lambda model, tokenizer, q_r, cfg, generator, times:
        solution_log_probability(model, tokenizer, q_r, cfg, times),
}


def progress_measures(model, tokenizer, q_r: list[dict], cfg, generator, times,
                      known: dict | None = None) -> dict:
    """The student's standing on Q_R by every measure that applies, in MEASURES' order (the
    sampled one draws from `generator`); `known` holds measures already taken, not taken again."""
    known = known or {}
    return {name: known[name] if name in known else
            measure(model, tokenizer, q_r, cfg, generator, times)
            for name, measure in MEASURES.items() if name != "solution" or has_solutions(q_r)}


def correct_counts(model, tokenizer, problems: list[dict], n: int, cfg, generator,
                   progress=None) -> list[int]:
    """How many of n sampled answers are correct, per problem (for pass@k and learnability)."""
    texts = answer(model, tokenizer, problems, cfg, n=n, temperature=cfg.temperature,
                   generator=generator, progress=progress)
    correct = grade(texts, problems, n, cfg)
    return [sum(correct[i * n:(i + 1) * n]) for i in range(len(problems))]
