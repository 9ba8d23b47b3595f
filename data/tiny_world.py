"""The tiny world's math domain: multi-digit addition with digit-by-digit working.

A problem is "Compute A+B." with A, B non-negative integers; its difficulty is the number of digits
of the longer operand. The working adds one digit column per step, right to left, with the carry:
"Compute 472+385." -> "2+5=7. 7+8=15. 4+3+1=8. \\boxed{857}". Every step is a one-digit lookup, so
the skill is the same at every length and failing on longer numbers is a length-generalization
failure, the kind that easier, slightly shorter problems (stepping stones) can fix. The answer space
grows as 10^digits, so a model that cannot add long numbers does not hit the answer by chance (with
a one-digit answer, 128 samples would always find it and fail@128 would be empty).

Everything the loop and the analysis need about the domain lives here: the problem generator, the
exact checker for teacher-written questions, the student working and the teacher outputs that make
up the pretraining corpus (data/tiny_model.py trains on them).
"""
import random
import re

MAX_DIGITS = 12  # longest operand that is still in the domain; longer questions are ill-posed

_QUESTION = re.compile(r"Compute (0|[1-9][0-9]*)\+(0|[1-9][0-9]*)\.")
_BOXED = re.compile(r"\\boxed\{(.*)\}")


def question_text(a: int, b: int) -> str:
    return f"Compute {a}+{b}."


def parse_question(question: str) -> tuple[int, int] | None:
    """(A, B) of a well-posed question, None for anything else (extra text, leading zeros, ...)."""
    match = _QUESTION.fullmatch(question.strip())
    if match is None or max(len(match[1]), len(match[2])) > MAX_DIGITS:
        return None
    return int(match[1]), int(match[2])


def difficulty(question: str) -> int | None:
    """Number of digits of the longer operand, None if the question is ill-posed."""
    operands = parse_question(question)
    return None if operands is None else max(len(str(x)) for x in operands)


def _parse_answer(answer: str) -> int | None:
    answer = answer.strip()
    boxed = _BOXED.fullmatch(answer)
    if boxed is not None:
        answer = boxed[1].strip()
    return int(answer) if re.fullmatch(r"-?[0-9]+", answer) else None


def check_question(question: str, answer: str) -> dict:
    """Exact verdict on a teacher-written pair; `answer` with or without its \\boxed{}."""
    operands = parse_question(question)
    if operands is None:
        return {"well_posed": False, "correct": False}
    return {"well_posed": True, "correct": _parse_answer(answer) == sum(operands)}


def random_operand(rng: random.Random, n_digits: int) -> int:
    """A number with exactly n_digits digits (0 counts as one digit)."""
    return rng.randrange(10 ** (n_digits - 1) if n_digits > 1 else 0, 10 ** n_digits)


def random_pair(rng: random.Random, n_digits: int, p_unequal: float = 0.0) -> tuple[int, int]:
    """Two operands, the longer with n_digits; with p_unequal the other one is shorter."""
    other = rng.randint(1, n_digits) if rng.random() < p_unequal else n_digits
    pair = (random_operand(rng, n_digits), random_operand(rng, other))
    return pair if rng.random() < 0.5 else pair[::-1]


def make_problem(a: int, b: int) -> dict:
    return {"problem": question_text(a, b), "answer": str(a + b)}


def generate_problems(n: int, n_digits: int, seed: int) -> list[dict]:
    """n distinct problems whose operands both have n_digits digits, as {"problem", "answer"} rows."""
    rng, seen, rows = random.Random(f"problems-{n_digits}-{seed}"), set(), []
    if n > 10 ** (2 * n_digits):
        raise ValueError(f"only {10 ** (2 * n_digits)} problems have {n_digits} digits, asked {n}")
    while len(rows) < n:
        a, b = random_operand(rng, n_digits), random_operand(rng, n_digits)
        if (a, b) not in seen:
            seen.add((a, b))
            rows.append(make_problem(a, b) | {"difficulty": n_digits})
    return rows


def working_steps(a: int, b: int) -> list[tuple[int, int, int, int]]:
    """(digit of a, digit of b, carry in, column sum) per column, right to left."""
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        steps.append((x, y, carry, x + y + carry))
        carry = (x + y + carry) // 10
    return steps


def render_working(steps: list[tuple[int, int, int, int]]) -> str:
    """The student's text for given column steps; the boxed answer follows from the column sums."""
    lines = [f"{x}+{y}+{c}={s}." if c else f"{x}+{y}={s}." for x, y, c, s in steps]
    digits = [s % 10 for *_, s in steps][::-1]
    answer = ("1" if steps[-1][3] >= 10 else "") + "".join(map(str, digits))
    return " ".join(lines) + f" \\boxed{{{answer}}}"


def solution(problem: str) -> str:
    """The correct step-by-step student completion for a well-posed problem (EOS not included)."""
    operands = parse_question(problem)
    if operands is None:
        raise ValueError(f"not a tiny-world problem: {problem!r}")
    return render_working(working_steps(*operands))


def wrong_answer(rng: random.Random, a: int, b: int) -> int:
    """A plausible wrong sum: one dropped carry or one changed digit."""
    total = str(a + b)
    while True:
        if rng.random() < 0.5 and len(total) > 1:
            candidate = a + b - 10 ** rng.randrange(1, len(total))  # a carry forgotten
        else:
            i = rng.randrange(len(total))
            candidate = int(total[:i] + str(rng.randrange(10)) + total[i + 1:])
        if candidate != a + b and candidate >= 0:
            return candidate


def ill_posed_question(rng: random.Random, a: int, b: int) -> str:
    """Text that looks like a problem but is not one of the domain."""
    return rng.choice([
        f"Compute {a}+.", f"Compute +{b}.", f"Compute {a}++{b}.", f"Compute {a}+{b}+.",
        f"Compute {a}.", f"Compute {a}+x.", f"Compute {a}+{b}+{a}.", "Compute .",
    ])


def teacher_output(rng: random.Random, n_digits: int, *, p_working: float, p_wrong: float,
                   p_ill_posed: float) -> str:
    """One teacher completion: optional working, then the question and answer tags.

    The caller sets p_working to 0 beyond the lengths the student is taught: worked long sums
    would teach the student's skill through the teacher's role.
    """
    a, b = random_pair(rng, n_digits, p_unequal=0.3)
    if rng.random() < p_ill_posed:
        question, answer = ill_posed_question(rng, a, b), a + b + rng.randrange(-3, 4)
        return f"<question>{question}</question><answer>\\boxed{{{max(answer, 0)}}}</answer>"
    question = question_text(a, b)
    if rng.random() < p_working:  # worked-out answers are right: the teacher can earn correctness
        tags = f"<question>{question}</question><answer>\\boxed{{{a + b}}}</answer>"
        return f"{question} {render_working(working_steps(a, b))} {tags}"
    answer = wrong_answer(rng, a, b) if rng.random() < p_wrong else a + b
    return f"<question>{question}</question><answer>\\boxed{{{answer}}}</answer>"
