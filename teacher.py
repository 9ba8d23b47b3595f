"""The teacher: its prompt, parsing its (question, answer) pairs, sampling datasets, its RLOO update,
and the diversity of what it writes.

The teacher is the "teacher" LoRA adapter of the shared model. It sees one fixed prompt and no
seed questions (seed examples made the paper's teacher copy them).
"""
import math
import re
from collections import Counter

import torch

from models import activate, policy_gradient_step, update_outcome
from rewards import check_many, extract_boxed, ranks, rloo_advantages, scaled_by_sd
from run_dir import timed
from sampler import encode_prompt, generate

TEACHER_INSTRUCTION = (
    "You are writing a new math problem for a math assistant. "
    "Topics: prealgebra, algebra, number theory, counting and probability, geometry, "
    "intermediate algebra, precalculus. The problem must be original, challenging and take "
    "2-3 steps to solve. Output exactly one problem as <question>...</question> followed by "
    "its final answer as <answer>\\boxed{...}</answer>. Any reasoning goes outside the tags."
)

QA_PATTERN = re.compile(r"<question>(.*?)</question>\s*<answer>(.*?)</answer>", re.DOTALL)


def parse_teacher_output(text: str) -> dict | None:
    """The one (question, answer) pair in a teacher sample, or None if the sample is malformed.

    Valid: exactly one <question> and one <answer> tag, the answer right after the question, a
    non-empty question and a \\boxed{} answer. Whether the math parser can read the answer is
    checked separately (`readable_answers`), in worker processes, because parsing can hang.
    """
    if text.count("<question>") != 1 or text.count("<answer>") != 1:
        return None
    match = QA_PATTERN.search(text)
    if match is None:
        return None
    question, answer_block = match.group(1).strip(), match.group(2)
    gold = extract_boxed(answer_block)
    if not question or gold is None or not gold.strip():
        return None
    return {"problem": question, "answer": gold.strip()}


def question_token_count(tokenizer, completion_ids: list[int]) -> int:
    """How many of a valid sample's tokens it takes to close its question: the tokens that choose
    what to ask, as against the worked answer after them. The decoded prefix contains
    "</question>" from some length on, so a bisection over prefix lengths finds it."""
    low, high = 1, len(completion_ids)
    while low < high:
        mid = (low + high) // 2
        if "</question>" in tokenizer.decode(completion_ids[:mid]):
            high = mid
        else:
            low = mid + 1
    return high


def readable_answers(pairs: list[dict], timeout: float) -> list[bool]:
    """An answer is usable only if the checker accepts it against itself: that is exactly
    'the math parser can read it', and it runs bounded in the checker's worker processes."""
    return check_many([f"\\boxed{{{p['answer']}}}" for p in pairs], [p["answer"] for p in pairs],
                      timeout=timeout)


def sample_pairs(model, tokenizer, count: int, cfg, generator, times) -> tuple[list[dict], list[dict]]:
    """Rejection-sample `count` valid pairs (at most cfg.teacher_max_rounds rounds).

    Returns (valid pairs with their token ids for the update, a record of every sample drawn).
    """
    activate(model, "teacher")
    prompt_ids = [encode_prompt(tokenizer, TEACHER_INSTRUCTION, cfg.use_chat_template)]
    pairs, records = [], []
    for _ in range(cfg.teacher_max_rounds):
        need = count - len(pairs)
        if need <= 0:
            break
        with timed(times, "teacher_sample"):
            rollouts, texts = generate(model, tokenizer, prompt_ids, n=need,
                                       temperature=cfg.teacher_temperature,
                                       max_new_tokens=cfg.teacher_max_tokens,
                                       batch_size=cfg.sample_batch, generator=generator)
        parsed = [parse_teacher_output(t) for t in texts]
        candidates = [i for i, p in enumerate(parsed) if p is not None]
        with timed(times, "check"):
            readable = readable_answers([parsed[i] for i in candidates], cfg.check_timeout)
        valid = {i for i, ok in zip(candidates, readable) if ok}
        for i, text in enumerate(texts):
            records.append({"completion": text, "valid": i in valid, **(parsed[i] or {})})
            if i in valid:
                pairs.append({**parsed[i], "prompt_ids": rollouts.prompt_ids[i],
                              "completion_ids": rollouts.completion_ids[i]})
    return pairs[:count], records


def split_datasets(pairs: list[dict], g: int) -> list[list[dict]] | None:
    """The g datasets X_1..X_g of one step: equal consecutive slices of its valid pairs (a few
    short of g*n when rejection sampling ran out of rounds); None with fewer pairs than datasets."""
    if len(pairs) < g:
        return None
    size = len(pairs) // g
    return [pairs[k * size:(k + 1) * size] for k in range(g)]


def by_length(data: list[dict]) -> list[dict]:
    """A dataset arranged by question length: with common random streams, the same draws then
    meet like questions in every dataset of a step."""
    return sorted(data, key=lambda p: (len(p["problem"]), p["problem"]))


def teacher_update(model, tokenizer, optimizer, scheduler, datasets: list[list[dict]],
                   dataset_rewards: list[float], cfg) -> dict:
    """RLOO across the g datasets: every sample of X_k gets advantage R_k - mean(R_other),
    divided by the SD of the g rewards when cfg.teacher_advantage == "scaled", and the same of the
    rewards' ranks when it is "rank".
    With cfg.teacher_tokens == "question" the advantage moves only the tokens up to the end of the
    question, not the worked answer that makes up most of a sample."""
    rewards = torch.tensor(dataset_rewards, dtype=torch.float32)
    if cfg.teacher_advantage == "rank":
        # a heavy-tailed reward (the solution measure's log ratios) gives one dataset a step's
        # whole update; its order is what tracks the stepping stones
        rewards = ranks(rewards)
    advantages = rloo_advantages(rewards)
    if cfg.teacher_advantage in ("scaled", "rank"):
        # AdamW's second moment remembers a rare large reward for hundreds of steps and shrinks
        # every later step by it; scaled, each step with a signal moves the teacher alike
        advantages = scaled_by_sd(advantages, rewards)
    rows = [(pair, adv) for data, adv in zip(datasets, advantages.tolist()) for pair in data]
    if all(adv == 0 for _, adv in rows):  # all datasets scored the same: no signal
        stats = {"loss": 0.0, "kl": 0.0, "skipped": 0, "update": "no signal"}
    else:
        stats = policy_gradient_step(
            model, "teacher", optimizer,
            [p["prompt_ids"] for p, _ in rows], [p["completion_ids"] for p, _ in rows],
            torch.tensor([adv for _, adv in rows]), kl_coef=cfg.teacher_kl_coef,
            pad_token_id=tokenizer.pad_token_id, micro_batch=cfg.micro_batch,
            max_new_tokens=cfg.teacher_max_tokens,
            scored_tokens=([question_token_count(tokenizer, p["completion_ids"]) for p, _ in rows]
                           if cfg.teacher_tokens == "question" else None))
        stats["update"] = update_outcome(stats)
    scheduler.step()
    return stats


def words(question: str) -> list[str]:
    """Lower-cased words; symbols and digits are tokens of their own, so "3+5*2" has n-grams too."""
    return re.findall(r"[a-z]+|\S", " ".join(question.lower().split()))


def ngram_counts(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(max(1, len(tokens) - n + 1)))


def question_diversity(questions: list[str], n: int = 3) -> dict:
    """Share of distinct questions, the entropy (bits) of their word n-grams, and the Vendi score."""
    if not questions:
        return {"distinct": 0.0, "ngram_entropy": 0.0, "vendi": 0.0}
    normalized = [" ".join(q.lower().split()) for q in questions]
    grams = sum((ngram_counts(words(q), n) for q in questions), Counter())
    total = sum(grams.values())
    entropy = -sum(c / total * math.log2(c / total) for c in grams.values())
    return {"distinct": len(set(normalized)) / len(normalized), "ngram_entropy": entropy,
            "vendi": vendi_score(questions)}


def vendi_score(questions: list[str], ns: tuple[int, ...] = (1, 2)) -> float:
    """The Vendi score (Friedman & Dieng, 2023), the paper's diversity measure: exp of the entropy
    of the eigenvalues of K/n, with K the cosine similarity of the questions' word 1- and 2-gram
    counts. It reads as an effective number of distinct questions: 1 when all are the same, n when
    no two share an n-gram. (The `vendi-score` package computes the same with scikit-learn and
    scipy; these few lines of torch spare the project both.)"""
    if not questions:
        return 0.0
    features = [sum((ngram_counts(words(q), n) for n in ns), Counter()) for q in questions]
    vocab = {g: i for i, g in enumerate({g for f in features for g in f})}
    x = torch.zeros(len(questions), max(1, len(vocab)), dtype=torch.float64)
    for row, f in enumerate(features):
        for gram, count in f.items():
            x[row, vocab[gram]] = count
    x = torch.nn.functional.normalize(x, dim=1)
    eigenvalues = torch.linalg.eigvalsh(x @ x.T / len(questions)).clamp(min=0)
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    # rounded: the eigensolver's last bits vary with the BLAS threads of the process
    return round(math.exp(-(eigenvalues * eigenvalues.log()).sum().item()), 9)
