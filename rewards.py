"""Answer checking and the student/teacher reward functions.

`is_correct` / `check_many` judge a response's LAST \\boxed{} against a gold answer with math-verify,
plus a few small guards for its known false positives (see `_vetoed`). Every check runs in a worker
process with a wall-clock bound and no signals: a check that overruns counts as incorrect and its
worker is killed and replaced, so no answer (`\\boxed{10^{10^{10^{10}}}}`, `\\boxed{100000!}`) can hang
training. The reward functions below the checker are small and pure. Its agreement with real
benchmark answers is pinned by tests/test_rewards.py.
"""
from __future__ import annotations

import atexit
import logging
import math
import os
import re
import socket
import subprocess
import sys
import time
from collections import deque
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING

import sympy
from latex2sympy2_extended.latex2sympy2 import NormalizationConfig
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from math_verify.grader import get_pct_val, is_assignment_relation

if TYPE_CHECKING:  # torch is not imported here so that checker workers start light
    import torch

# ---------------------------------------------------------------------------------------------
# Extracting and parsing answers

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")


def extract_boxed(text: str) -> str | None:
    """Content of the LAST \\boxed{...} (or \\fbox{...}) in `text`, nested braces matched."""
    starts = [m.end() for m in _BOX_RE.finditer(text)]
    for start in reversed(starts):  # an unclosed last box falls back to the one before it
        depth = 1
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i].strip()
    return None


def _clean(answer: str) -> str:
    """Light text normalisation before math-verify sees an answer."""
    answer = re.sub(r"(?<!\\)\$", "", answer)  # math delimiters, not \$: "$69$,$84$" -> "69,84"
    # math-verify's unit stripping eats `\mathrm{e}` and everything after it ("1-\frac{1}{"), so
    # \mathrm{e} and \mathrm{i} become plain e and i first.
    answer = re.sub(r"\\(?:mathrm|text|rm)\{\s*([ei])\s*\}", r"\1", answer)
    answer = re.sub(r"_\{\\(max|min)\s*\}", r"_{\1}", answer)  # m_{\max} does not parse; m_{max} does
    return answer.strip()


# The latex inside \boxed is the answer; an anchorless plain expression ("1/2") is the fallback.
_EXTRACTION = (
    LatexExtractionConfig(boxed_match_priority=0, normalization_config=NormalizationConfig(
        basic_latex=True, units=True, malformed_operators=True, nits=True, boxed="all",
        equations=False)),
    ExprExtractionConfig(),
)


def _parse_answer(answer: str) -> list[sympy.Basic]:
    """The sympy objects math-verify reads from an answer (text fallbacks dropped)."""
    parsed = parse("\\boxed{" + _clean(answer) + "}", extraction_config=_EXTRACTION,
                   parsing_timeout=None)  # None: no SIGALRM; the worker's deadline bounds us
    return [p for p in parsed if isinstance(p, (sympy.Basic, sympy.MatrixBase))]


# ---------------------------------------------------------------------------------------------
# Guards against math-verify's false positives

_TIME_RE = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?(am|pm|a\.m\.|p\.m\.)?$")
_ELLIPSIS_RE = re.compile(r"\\ldots|\\cdots|\\dots|\.\.\.")


def _flat(answer: str) -> str:
    """Answer text with formatting removed, for the text-level comparisons of the guards."""
    answer = re.sub(r"\\left|\\right|\\[,;:!]|\\text\{\s*|\\mathrm\{\s*|\s|~", "", _clean(answer))
    return answer.replace("}", "").replace("{", "").lower()


def _clock(answer: str) -> tuple | None:
    """(hours, minutes, seconds, am/pm) when an answer is a clock time like 12:00 or 3:45 p.m."""
    m = _TIME_RE.match(_flat(answer))
    if m is None:
        return None
    suffix = (m.group(4) or "").replace(".", "")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0), suffix


def _number(expr: sympy.Basic):
    """The numeric value an answer stands for (x = 3 stands for 3), or None if not a number."""
    if is_assignment_relation(expr):
        expr = expr.rhs
    if isinstance(expr, sympy.Expr) and expr.is_number:
        return expr
    return None


def _close(a: sympy.Expr, b: sympy.Expr) -> bool:
    """Relative closeness at 40 digits: math-verify compares absolute differences with chop=True,
    so any two tiny numbers (1/2004! and 1/2006!, 2^-99 and 2^-98) come out "equal"."""
    va, vb = sympy.N(a, 40), sympy.N(b, 40)
    scale = max(abs(va), abs(vb))
    tolerance = 1e-5 if a.has(sympy.Float) or b.has(sympy.Float) else 1e-12  # decimals are rounded
    return bool(abs(va - vb) <= tolerance * scale)


def _vetoed(gold: sympy.Basic, pred: sympy.Basic) -> bool:
    """True when two numbers differ. Checked BEFORE math-verify: it also spares numeric pairs its
    simplify(), which can run for minutes (log 2/(log 2 - log 3) vs 2021*505*337)."""
    ga, pa = _number(gold), _number(pred)
    if ga is not None and pa is not None:
        try:
            # 10% also counts as 10, as math-verify allows
            return not (_close(ga, pa) or _close(get_pct_val(ga, ga), get_pct_val(pa, pa)))
        except (TypeError, ValueError, ArithmeticError):  # zoo, nan: keep math-verify's verdict
            return False
    return False


def _check(response: str, gold: str) -> bool:
    """The whole check, run inside a worker process."""
    box = extract_boxed(response)
    if box is None:
        return False
    # Clock times (12:00 reads as 12/0 = zoo) and "1, 3, 5, \ldots" (math-verify drops the dots
    # and keeps one element) are compared as text.
    if _clock(gold) is not None or _clock(box) is not None:
        return _clock(gold) == _clock(box)
    golds = _parse_answer(gold)
    if not golds:
        return False
    if _ELLIPSIS_RE.search(gold) or _ELLIPSIS_RE.search(box):
        return _flat(gold) == _flat(box)
    preds = _parse_answer(box)
    return any(not _vetoed(g, p) and verify(g, p, timeout_seconds=None) for g in golds for p in preds)


def _parse_gold_task(answer: str):
    return _parse_answer(answer) or _clock(answer)


# ---------------------------------------------------------------------------------------------
# Worker pool: bounded wall-clock per task, no signals.

def _worker_main(fd: int) -> None:
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # no "timeout disabled" warnings
    conn = Connection(fd)
    tasks = {"check": _check, "parse_gold": _parse_gold_task}
    conn.send("ready")
    while True:
        try:
            index, name, args = conn.recv()
        except EOFError:
            return
        try:
            result = tasks[name](*args)
        except Exception:  # a parser crash on odd input is a wrong answer, not a dead worker
            result = None
        try:
            conn.send((index, result))
        except Exception:  # unpicklable sympy object: its text is enough for callers
            conn.send((index, str(result)))


class _Worker:
    """A fresh interpreter that imports this module and serves tasks over a socket. A plain
    subprocess rather than multiprocessing: spawn/forkserver would re-run the caller's main script
    in every worker, and fork is unsafe once torch/CUDA threads exist."""

    def __init__(self):
        ours, theirs = socket.socketpair()
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
                f"import rewards; rewards._worker_main({theirs.fileno()})")
        self.proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(theirs.fileno(),))
        theirs.close()
        self.conn = Connection(ours.detach())
        self.ready = False
        self.task: int | None = None
        self.deadline = math.inf

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.conn.close()


class CheckerPool:
    """Worker processes that run checks, each with its own wall-clock deadline."""

    def __init__(self, n_workers: int | None = None):
        self.workers = [_Worker() for _ in range(n_workers or len(os.sched_getaffinity(0)))]
        self.timed_out = 0  # checks that hit their bound (counted as incorrect)

    def run(self, name: str, args_list: list[tuple], timeout: float, default) -> list:
        results = [default] * len(args_list)
        todo = deque(range(len(args_list)))
        while todo or any(w.task is not None for w in self.workers):
            now = time.monotonic()
            for w in self.workers:
                if w.ready and w.task is None and todo:
                    w.task = todo.popleft()
                    w.conn.send((w.task, name, args_list[w.task]))
                    w.deadline = now + timeout
            next_deadline = min(w.deadline for w in self.workers)
            for conn in wait([w.conn for w in self.workers], max(0.0, min(next_deadline - now, 1.0))):
                w = next(w for w in self.workers if w.conn is conn)
                try:
                    message = conn.recv()
                except (EOFError, OSError):  # worker died (e.g. out of memory): its task failed
                    if not w.ready:
                        raise RuntimeError(f"answer-checker worker failed to start "
                                           f"(exit code {w.proc.wait()})")
                    self._replace(w)
                    continue
                if message == "ready":
                    w.ready = True
                else:
                    index, value = message
                    results[index] = default if value is None else value
                    w.task, w.deadline = None, math.inf
            now = time.monotonic()
            for w in self.workers:
                if w.task is not None and now > w.deadline:
                    self.timed_out += 1
                    self._replace(w)  # its result stays `default`
        return results

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self.workers[self.workers.index(worker)] = _Worker()

    def close(self) -> None:
        for w in self.workers:
            w.kill()
        self.workers = []


_POOL: CheckerPool | None = None


def _pool() -> CheckerPool:
    global _POOL
    if _POOL is None:
        _POOL = CheckerPool()
        atexit.register(_POOL.close)
    return _POOL


# ---------------------------------------------------------------------------------------------
# Public checking API

_INTEGER_RE = re.compile(r"-?\d{1,50}")


def _integer_verdict(response: str, gold: str) -> bool | None:
    """The check's verdict when the last box and the gold are both plain integers, else None.
    Exact, and hundreds of times cheaper than a round trip to a worker: most answers of
    integer-answer worlds (and many of MATH's) need no parser."""
    if not _INTEGER_RE.fullmatch(gold.strip()):
        return None
    box = extract_boxed(response)
    if box is None:
        return False
    return int(box) == int(gold) if _INTEGER_RE.fullmatch(box) else None


def check_many(responses: list[str], golds: list[str], timeout: float = 5.0) -> list[bool]:
    """is_correct for many (response, gold) pairs: plain integers compared here, the rest spread
    over all cores."""
    if len(responses) != len(golds):
        raise ValueError(f"check_many: {len(responses)} responses but {len(golds)} golds")
    verdicts = [_integer_verdict(r, g) for r, g in zip(responses, golds)]
    rest = [i for i, v in enumerate(verdicts) if v is None]
    if rest:
        checked = _pool().run("check", [(responses[i], golds[i]) for i in rest], timeout, default=False)
        for i, v in zip(rest, checked):
            verdicts[i] = v
    return verdicts


def is_correct(response: str, gold: str, timeout: float = 5.0) -> bool:
    """True iff the response's last \\boxed{} equals the gold answer (no box: False; unparsable
    gold: False, and callers should have dropped that question via `parse_gold`)."""
    return check_many([response], [gold], timeout)[0]


def parse_gold(answer: str, timeout: float = 5.0):
    """math-verify's reading of a gold answer (written without \\boxed), or None if it has none."""
    return _pool().run("parse_gold", [(answer,)], timeout, default=None)[0]


# ---------------------------------------------------------------------------------------------
# Rewards and metrics (pure)

def binary_reward(correct: bool) -> float:
    return 1.0 if correct else 0.0


# SOAR.md lists the paper's shaped reward levels without trustworthy magnitudes; these are ours,
# ordered as the paper orders them.
SHAPED_CORRECT, SHAPED_CONTAINS_ANSWER, SHAPED_BOXED_WRONG, SHAPED_NO_BOX = 1.0, 0.2, 0.1, 0.0


def shaped_reward(response: str, gold: str, correct: bool) -> float:
    """Boxed and correct > boxed, wrong, but the gold appears in the response > boxed, wrong > no box."""
    box = extract_boxed(response)
    if box is None:
        return SHAPED_NO_BOX
    if correct:
        return SHAPED_CORRECT
    gold_text = _flat(gold)
    if gold_text and gold_text in _flat(response):
        return SHAPED_CONTAINS_ANSWER
    return SHAPED_BOXED_WRONG


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Leave-one-out advantages along the last dim: r_i - mean_{j != i} r_j (zero for G == 1)."""
    group = rewards.shape[-1]
    if group < 2:
        return rewards - rewards
    baseline = (rewards.sum(-1, keepdim=True) - rewards) / (group - 1)
    return rewards - baseline


def scaled_by_sd(advantages: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """Advantages divided by the SD of the rewards they came from (all zero when the rewards are
    equal): every step with any signal then weighs alike in the optimizer's running averages."""
    sd = rewards.std(unbiased=False)
    return advantages / sd if sd > 0 else advantages - advantages


def ranks(rewards: torch.Tensor) -> torch.Tensor:
    """Each reward's rank among the others (0 the lowest; tied rewards share their mean rank)."""
    below = (rewards[None, :] < rewards[:, None]).sum(1).float()
    tied = (rewards[None, :] == rewards[:, None]).sum(1).float()
    return below + (tied - 1) / 2


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def learnability(success_rate: float) -> float:
    """Intrinsic-T reward of one question: 0 if never solved, else 1 - success rate."""
    return 0.0 if success_rate == 0 else 1.0 - success_rate
