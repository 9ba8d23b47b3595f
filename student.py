"""The student: its prompt, RLOO on (question, answer) pairs, and greedy / pass@k evaluation."""

STUDENT_INSTRUCTION = (
    "Solve the following math problem step by step. "
    "Put the final answer in \\boxed{}."
)


def student_message(problem: str) -> str:
    return f"{STUDENT_INSTRUCTION}\n{problem}"
