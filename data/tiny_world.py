"""The tiny world's math domain: multi-digit addition, in base 10 or in a rarely seen base.

A problem is "Compute 472+385." (base 10) or "In base 7, compute 452+365."; its difficulty is the
number of digits of the longer operand. The working adds one digit column per step, right to left,
writing each column sum in the problem's base: "In base 7, compute 452+365." ->
"2+5=10. 5+6+1=15. 4+3+1=11. \\boxed{1150}". The base comes first so that the operands sit at the
same distance from the working in both kinds of problem: the model's way of finding the digit to
add then works in base 7 as it does in base 10, and base 7 differs only in its column facts.

Why this domain. The pretrained tiny model adds base-10 numbers of a few digits reliably, but it
has seen base 7 rarely, so it knows the base-7 column facts (4+5=12 in base 7) only partly: long
base-7 sums, where several columns must all be right, it never gets right (the hard set), while
short base-7 sums it sometimes gets right. Those short sums are the stepping stones: the facts
they teach are the same at every column, so learning them from short sums carries over to long
ones (measured). Difficulty by length alone does not work here: a model fine-tuned on 5-digit sums
still fails 6-digit ones, since it learns positions per length. The answer space grows as
base^digits, so a model that cannot do a sum does not hit its answer by chance in 128 samples.

Everything the loop and the analysis need about the domain lives here: the problem generator, the
exact checker for teacher-written questions, the student working and the teacher outputs that make
up the pretraining corpus (data/tiny_model.py trains on them).
"""
import random
import re

RARE_BASE = 7    # the base the tiny model has seen little of; its long sums are the hard problems
MAX_DIGITS = 12  # longest operand that is still in the domain; longer questions are ill-posed

_QUESTION = re.compile(r"(?:In base ([2-9]|10), compute|Compute) (0|[1-9][0-9]*)\+(0|[1-9][0-9]*)\.")
_BOXED = re.compile(r"\\boxed\{(.*)\}")


def to_base(value: int, base: int) -> str:
    digits = ""
    while True:
        value, digit = divmod(value, base)
        digits = str(digit) + digits
        if value == 0:
            return digits


def question_text(a: str, b: str, base: int = 10) -> str:
    """The problem for operands written (as digit strings) in `base`."""
    return f"Compute {a}+{b}." if base == 10 else f"In base {base}, compute {a}+{b}."


def parse_question(question: str) -> tuple[str, str, int] | None:
    """(A, B, base) of a well-posed question, None for anything else (extra text, leading zeros,
    a digit the base does not have, ...)."""
    match = _QUESTION.fullmatch(question.strip())
    if match is None:
        return None
    base, a, b = int(match[1] or 10), match[2], match[3]
    if max(len(a), len(b)) > MAX_DIGITS or max(int(digit) for digit in a + b) >= base:
        return None
    return a, b, base


def difficulty(question: str) -> int | None:
    """Number of digits of the longer operand, None if the question is ill-posed."""
    parsed = parse_question(question)
    return None if parsed is None else max(len(parsed[0]), len(parsed[1]))


def base_of(question: str) -> int | None:
    parsed = parse_question(question)
    return None if parsed is None else parsed[2]


def gold_answer(question: str) -> str | None:
    """The right answer (digits in the problem's base), None if the question is ill-posed."""
    parsed = parse_question(question)
    if parsed is None:
        return None
    a, b, base = parsed
    return to_base(int(a, base) + int(b, base), base)


def check_question(question: str, answer: str) -> dict:
    """Exact verdict on a teacher-written pair; `answer` with or without its \\boxed{}."""
    gold = gold_answer(question)
    if gold is None:
        return {"well_posed": False, "correct": False}
    answer = answer.strip()
    boxed = _BOXED.fullmatch(answer)
    if boxed is not None:
        answer = boxed[1].strip()
    # a numeral is right when it names the same number: leading zeros are allowed, as math-verify
    # (which grades the student) allows them
    return {"well_posed": True, "correct": re.fullmatch(r"[0-9]+", answer) is not None
            and answer.lstrip("0") == gold.lstrip("0")}


def random_operand(rng: random.Random, n_digits: int, base: int) -> str:
    """Digits of a number with exactly n_digits digits in `base` (0 counts as one digit)."""
    low = base ** (n_digits - 1) if n_digits > 1 else 0
    return to_base(rng.randrange(low, base ** n_digits), base)


def random_pair(rng: random.Random, n_digits: int, base: int, p_unequal: float = 0.0):
    """Two operands, the longer with n_digits; with p_unequal the other one is shorter."""
    other = rng.randint(1, n_digits) if rng.random() < p_unequal else n_digits
    pair = (random_operand(rng, n_digits, base), random_operand(rng, other, base))
    return pair if rng.random() < 0.5 else pair[::-1]


def n_problems(n_digits: int, base: int = 10) -> int:
    """How many problems have both operands of exactly n_digits digits."""
    return ((base - 1) * base ** (n_digits - 1) if n_digits > 1 else base) ** 2


def generate_problems(n: int, n_digits: int, seed: int, base: int = 10) -> list[dict]:
    """n distinct problems whose operands both have n_digits digits, as {"problem", "answer"}
    rows (plus their "difficulty" and "base")."""
    n_possible = n_problems(n_digits, base)
    if n > n_possible:
        raise ValueError(f"only {n_possible} problems have {n_digits} digits in base {base}, "
                         f"asked {n}")
    rng, seen, rows = random.Random(f"problems-{n_digits}-{base}-{seed}"), set(), []
    while len(rows) < n:
        problem = question_text(random_operand(rng, n_digits, base),
                                random_operand(rng, n_digits, base), base)
        if problem not in seen:
            seen.add(problem)
            rows.append({"problem": problem, "answer": gold_answer(problem),
                         "difficulty": n_digits, "base": base})
    return rows


def working_steps(a: str, b: str, base: int) -> list[tuple[int, int, int, int]]:
    """(digit of a, digit of b, carry in, column sum) per column, right to left."""
    da, db = a[::-1], b[::-1]
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        steps.append((x, y, carry, x + y + carry))
        carry = (x + y + carry) // base
    return steps


def solution(problem: str) -> str:
    """The correct step-by-step student completion for a well-posed problem (EOS not included)."""
    parsed = parse_question(problem)
    if parsed is None:
        raise ValueError(f"not a tiny-world problem: {problem!r}")
    a, b, base = parsed
    steps = working_steps(a, b, base)
    lines = [f"{x}+{y}+{c}={to_base(s, base)}." if c else f"{x}+{y}={to_base(s, base)}."
             for x, y, c, s in steps]
    return " ".join(lines) + f" \\boxed{{{gold_answer(problem)}}}"


def wrong_answer(rng: random.Random, gold: str, base: int) -> str:
    """A plausible wrong answer: one digit changed, or a carry forgotten."""
    while True:
        i = rng.randrange(len(gold))
        if rng.random() < 0.5 and i > 0 and gold[i] != "0":  # a carry into digit i forgotten
            candidate = gold[:i] + str(int(gold[i]) - 1) + gold[i + 1:]
        else:
            candidate = gold[:i] + str(rng.randrange(base)) + gold[i + 1:]
        if candidate != gold and (candidate[0] != "0" or len(candidate) == 1):
            return candidate


def ill_posed_question(rng: random.Random, a: str, b: str, base: int) -> str:
    """Text that looks like a problem but is not one of the domain."""
    compute = "Compute" if base == 10 else f"In base {base}, compute"
    return rng.choice([
        f"{compute} {a}+.", f"{compute} +{b}.", f"{compute} {a}++{b}.", f"{compute} {a}.",
        f"{compute} {a}+x.", f"{compute} {a}+{b}+{a}.", f"In base 1, compute {a}+{b}.",
        f"In base {RARE_BASE}, compute {a}9+{b}8.",
    ])


def teacher_output(rng: random.Random, n_digits: int, base: int, *, p_working: float,
                   p_wrong: float, p_ill_posed: float) -> str:
    """One teacher completion: the question tag, then the answer tag, in which the answer may
    follow the working (the last \\boxed{} in the answer tag is the answer).

    Working sits right after the question, as the student's does after its prompt, so the teacher
    gets its answers right about as often as the student would; a bare answer is a guess (the
    model cannot add long numbers in one go) and the corpus makes p_wrong of them wrong.
    """
    a, b = random_pair(rng, n_digits, base, p_unequal=0.3)
    question = question_text(a, b, base)
    gold = gold_answer(question)
    if rng.random() < p_ill_posed:
        question = ill_posed_question(rng, a, b, base)
    elif rng.random() < p_working:
        return f"<question>{question}</question><answer>{solution(question)}</answer>"
    answer = wrong_answer(rng, gold, base) if rng.random() < p_wrong else gold
    return f"<question>{question}</question><answer>\\boxed{{{answer}}}</answer>"
