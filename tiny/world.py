"""The tiny world's math domain: multi-digit addition, asked in two ways.

A problem is "Compute 472+385." or "Quickly, compute 472+385."; its difficulty is the number of
digits of the longer operand. The working adds one digit column per step, right to left:
"2+5=7. 7+8=15. 4+3+1=8. \\boxed{857}". The phrase comes first, so that the operands sit at the
same distance from the working in both kinds of problem and the model's way of finding the digits
to add is the same for both.

Why this domain. The hard problems must be ones the base model never solves although it could,
and that a few RL steps on easier problems teach it to solve: SOAR's premise is a latent skill that
the right stepping stones bring out. (An earlier world made the hard problems need a skill the
model barely had, sums in a rarely seen base; one student's RL inner loop then could not move them
even on ideal stepping stones, and the teacher's reward was all zeros: see the README.) Here the
skill is there and a habit hides it. In the pretraining text a sum asked for "quickly" is worked
out less often the longer it is, and otherwise answered in one go, which the tiny model cannot do
for long sums (it adds long numbers only column by column): "quickly" 5-digit sums are always
answered in one go, and wrong, although the same sums asked plainly are worked out and right. Short
"quickly" sums are the stepping stones: they are sometimes worked out, RL rewards the working, and
the habit of answering in one go weakens for the long ones too (measured by
`python probes.py`). Plain sums teach nothing: the student already works them out.
The answer space grows as 10^digits, so a one-go guess does not hit a long sum by chance.

Everything the loop and the analysis need about the domain lives here: the problem generator, the
exact checker for teacher-written questions, the student completions and the teacher outputs that
make up the pretraining corpus (tiny/model.py trains on them).
"""
import random
import re
import statistics

QUICK, PLAIN = "Quickly, compute", "Compute"
MAX_DIGITS = 12  # longest operand that is still in the domain; longer questions are ill-posed

_QUESTION = re.compile(r"(Quickly, compute|Compute) (0|[1-9][0-9]*)\+(0|[1-9][0-9]*)\.")
_BOXED = re.compile(r"\\boxed\{(.*)\}")


def question_text(a: str, b: str, quick: bool = False) -> str:
    return f"{QUICK if quick else PLAIN} {a}+{b}."


def parse_question(question: str) -> tuple[str, str, bool] | None:
    """(A, B, quick) of a well-posed question, None for anything else (extra text, leading
    zeros, operands that are too long, ...)."""
    match = _QUESTION.fullmatch(question.strip())
    if match is None or max(len(match[2]), len(match[3])) > MAX_DIGITS:
        return None
    return match[2], match[3], match[1] == QUICK


def difficulty(question: str) -> int | None:
    """Number of digits of the longer operand, None if the question is ill-posed."""
    parsed = parse_question(question)
    return None if parsed is None else max(len(parsed[0]), len(parsed[1]))


def is_quick(question: str) -> bool | None:
    parsed = parse_question(question)
    return None if parsed is None else parsed[2]


def gold_answer(question: str) -> str | None:
    """The right answer, None if the question is ill-posed."""
    parsed = parse_question(question)
    return None if parsed is None else str(int(parsed[0]) + int(parsed[1]))


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


# "Quickly" sums this long with the right answer are what one student inner loop learns the hard
# set from (measured by `python probes.py`: 0.19-0.24 hard-train greedy after 16 RLOO steps on
# them, 0.00 on plain sums); 1-digit ones are already solved and 5-digit ones are the hard set.
STEPPING_STONE_DIGITS = (2, 3, 4)


def classify(question: str, answer: str) -> dict:
    """What a teacher-written pair is, exactly: check_question's verdict, the phrasing, the length,
    and whether it is a useful stepping stone by the world's own measure."""
    verdict = check_question(question, answer)
    parsed = parse_question(question)
    digits = None if parsed is None else max(len(parsed[0]), len(parsed[1]))
    quick = parsed is not None and parsed[2]
    return {**verdict, "quick": quick, "digits": digits,
            "stepping_stone": quick and verdict["correct"] and digits in STEPPING_STONE_DIGITS}


def question_quality(pairs: list[dict]) -> dict:
    """Shares of well-posed questions, correct teacher answers, "quickly" sums, and stepping
    stones (right-answered "quickly" sums of 2-4 digits) among (question, answer) pairs."""
    checks = [classify(p["problem"], p["answer"]) for p in pairs]
    return {key: statistics.mean(c[key] for c in checks)
            for key in ("well_posed", "correct", "quick", "stepping_stone")}


def random_operand(rng: random.Random, n_digits: int) -> str:
    """A number with exactly n_digits digits (0 counts as one digit)."""
    return str(rng.randrange(10 ** (n_digits - 1) if n_digits > 1 else 0, 10 ** n_digits))


def random_pair(rng: random.Random, n_digits: int, p_unequal: float = 0.0):
    """Two operands, the longer with n_digits; with p_unequal the other one is shorter."""
    other = rng.randint(1, n_digits) if rng.random() < p_unequal else n_digits
    pair = (random_operand(rng, n_digits), random_operand(rng, other))
    return pair if rng.random() < 0.5 else pair[::-1]


def n_problems(n_digits: int) -> int:
    """How many problems (of one phrasing) have both operands of exactly n_digits digits."""
    return (9 * 10 ** (n_digits - 1) if n_digits > 1 else 10) ** 2


def generate_problems(n: int, n_digits: int, seed: int, quick: bool = False) -> list[dict]:
    """n distinct problems whose operands both have n_digits digits, as {"problem", "answer"}
    rows (plus their "difficulty" and whether they are "quick")."""
    if n > n_problems(n_digits):
        raise ValueError(f"only {n_problems(n_digits)} problems have {n_digits} digits, asked {n}")
    rng, seen, rows = random.Random(f"problems-{n_digits}-{quick}-{seed}"), set(), []
    while len(rows) < n:
        problem = question_text(random_operand(rng, n_digits), random_operand(rng, n_digits), quick)
        if problem not in seen:
            seen.add(problem)
            rows.append({"problem": problem, "answer": gold_answer(problem),
                         "difficulty": n_digits, "quick": quick})
    return rows


def solution(problem: str) -> str:
    """The worked-out student completion for a well-posed problem (EOS not included)."""
    parsed = parse_question(problem)
    if parsed is None:
        raise ValueError(f"not a tiny-world problem: {problem!r}")
    da, db = parsed[0][::-1], parsed[1][::-1]
    lines, carry = [], 0
    for i in range(max(len(da), len(db))):
        x, y = int(da[i]) if i < len(da) else 0, int(db[i]) if i < len(db) else 0
        lines.append(f"{x}+{y}+{carry}={x + y + carry}." if carry else f"{x}+{y}={x + y}.")
        carry = (x + y + carry) // 10
    return " ".join(lines) + f" \\boxed{{{gold_answer(problem)}}}"


def one_go(problem: str) -> str:
    """The completion that answers in one go: the right sum, bare. (The corpus holds right
    sums; the tiny model still gets long ones wrong, since it cannot add them in one go.)"""
    return f"\\boxed{{{gold_answer(problem)}}}"


def wrong_answer(rng: random.Random, gold: str) -> str:
    """A plausible wrong answer: one digit changed, or a carry forgotten."""
    while True:
        i = rng.randrange(len(gold))
        if rng.random() < 0.5 and i > 0 and gold[i] != "0":  # a carry into digit i forgotten
            candidate = gold[:i] + str(int(gold[i]) - 1) + gold[i + 1:]
        else:
            candidate = gold[:i] + str(rng.randrange(10)) + gold[i + 1:]
        if candidate != gold and (candidate[0] != "0" or len(candidate) == 1):
            return candidate


def ill_posed_question(rng: random.Random, a: str, b: str, quick: bool) -> str:
    """Text that looks like a problem but is not one of the domain."""
    compute = QUICK if quick else PLAIN
    return rng.choice([
        f"{compute} {a}+.", f"{compute} +{b}.", f"{compute} {a}++{b}.", f"{compute} {a}.",
        f"{compute} {a}+x.", f"{compute} {a}+{b}+{a}.", f"Quickly compute {a}+{b}.",
        f"{compute} 0{a}+{b}.",
    ])


def teacher_output(rng: random.Random, n_digits: int, quick: bool, *, p_working: float,
                   p_wrong: float, p_ill_posed: float) -> str:
    """One teacher completion: the question tag, then the answer tag, in which the answer may
    follow the working (the last \\boxed{} in the answer tag is the answer).

    Working sits right after the question, as the student's does after its prompt, so the teacher
    gets its answers right about as often as the student would; a bare answer is a guess (the
    model cannot add long numbers in one go) and the corpus makes p_wrong of them wrong.
    """
    a, b = random_pair(rng, n_digits, p_unequal=0.3)
    question = question_text(a, b, quick)
    gold = gold_answer(question)
    if rng.random() < p_ill_posed:
        question = ill_posed_question(rng, a, b, quick)
    elif rng.random() < p_working:
        return f"<question>{question}</question><answer>{solution(question)}</answer>"
    answer = wrong_answer(rng, gold) if rng.random() < p_wrong else gold
    return f"<question>{question}</question><answer>\\boxed{{{answer}}}</answer>"
