"""The teacher: its prompt, parsing its (question, answer) pairs, sampling datasets, and its RLOO update."""

TEACHER_INSTRUCTION = (
    "You are writing a new math problem for a math assistant. "
    "Topics: prealgebra, algebra, number theory, counting and probability, geometry, "
    "intermediate algebra, precalculus. The problem must be original, challenging and take "
    "2-3 steps to solve. Output exactly one problem as <question>...</question> followed by "
    "its final answer as <answer>\\boxed{...}</answer>. Any reasoning goes outside the tags."
)
