"""What sharpens the teacher's learning signal: the checker's exact path for plain integers, and
a policy gradient limited to the tokens of the teacher's question."""
import pytest
import torch

from models import adapter_params, load_model, micro_batch_grads
from rewards import _pool, check_many
from teacher import by_length, question_token_count


@pytest.mark.parametrize("response, gold", [
    (r"so \boxed{12345}", "12345"), (r"\boxed{12345}", "12346"), (r"\boxed{007}", "7"),
    (r"\boxed{-3}", "-3"), (r"\boxed{-3}", "3"), (r"\boxed{3.0}", "3"), (r"\boxed{3}", "3.0"),
    (r"\boxed{1,000}", "1000"), (r"\boxed{x=5}", "5"), ("no box, 5", "5"), (r"\boxed{5}", "5%"),
    (r"\boxed{2}\boxed{5}", "5"), (r"\boxed{ 42 }", "42"), (r"\boxed{\frac{10}{2}}", "5"),
])
def test_plain_integers_get_the_verdict_the_full_checker_gives(response, gold):
    """The in-process comparison is only a shortcut: every pair gets math-verify's verdict."""
    assert check_many([response], [gold]) == _pool().run("check", [(response, gold)], 5.0, False)


def test_plain_integers_never_reach_the_checker_workers(monkeypatch):
    monkeypatch.setattr(_pool(), "run", lambda *a, **k: pytest.fail("sent to a worker"))
    assert check_many([r"\boxed{12}", r"\boxed{13}", "none"], ["12", "12", "12"]) == [True, False, False]


class CharTokenizer:
    def decode(self, ids):
        return "".join(map(chr, ids))


def test_question_tokens_end_with_the_closing_tag():
    text = "<question>What is 2+3?</question><answer>\\boxed{5}</answer>"
    ids = [ord(c) for c in text]
    assert question_token_count(CharTokenizer(), ids) == text.index("</question>") + len("</question>")


def test_the_question_only_gradient_is_the_gradient_of_the_question_alone(lm_dir):
    """Scoring the first k completion tokens is exactly training on those k tokens: causal
    attention makes their log-probs blind to what follows, so nothing of the answer leaks in."""
    torch.manual_seed(0)
    model, tokenizer = load_model(str(lm_dir), "none", lora_rank=4, lora_alpha=8)
    params = list(adapter_params(model, "teacher").values())
    with torch.no_grad():  # LoRA's B starts at zero; give it weights so every gradient flows
        for p in params:
            p.normal_(0, 0.02)
    prompt = tokenizer("User: write\nAssistant:")["input_ids"]
    completions, adv = [[5, 6, 7, 8, 9], [10, 11, 12, 13]], torch.tensor([1.0, -1.0])
    kw = dict(rows=2, kl_coef=0.0, pad_token_id=tokenizer.pad_token_id, max_new_tokens=8)
    from models import activate
    activate(model, "teacher")
    _, _, scored = micro_batch_grads(model, params, [prompt, prompt], completions, adv,
                                     scored_tokens=[2, 3], **kw)
    _, _, alone = micro_batch_grads(model, params, [prompt, prompt], [[5, 6], [10, 11, 12]], adv, **kw)
    _, _, whole = micro_batch_grads(model, params, [prompt, prompt], completions, adv, **kw)
    assert all(torch.allclose(s, a, atol=1e-6) for s, a in zip(scored, alone))
    assert not all(torch.allclose(s, w, atol=1e-6) for s, w in zip(scored, whole))


def test_common_streams_meet_each_dataset_in_order_of_question_length():
    """Copy j of every dataset draws the same batch indices; arranged by length, those indices
    land on like questions in every dataset (and the order does not depend on the dataset's)."""
    data = [{"problem": p} for p in ("Compute 12345+54321.", "Compute 1+2.", "Compute 12+34.")]
    assert [p["problem"] for p in by_length(data)] == ["Compute 1+2.", "Compute 12+34.",
                                                      "Compute 12345+54321."]
    assert by_length(data[::-1]) == by_length(data)


# ---- the solution measure ---------------------------------------------------------------------

def test_a_reference_solution_is_tokenized_as_the_tiny_model_learned_its_answers(lm_dir):
    from student import solution_ids, student_message
    from tiny.model import encode_example
    from tiny.world import solution
    tokenizer = load_model(str(lm_dir), "none", lora_rank=4, lora_alpha=8)[1]
    problem = "Quickly, compute 4721+385."
    _, learned = encode_example(tokenizer, student_message(problem), solution(problem))
    assert solution_ids(tokenizer, solution(problem), chat_template=False) == learned[:-1]  # no EOS


def test_the_solution_measure_is_the_log_of_the_mean_probability_of_the_solutions(lm_dir):
    """exp(measure) of one problem is the product of its solution's next-token probabilities,
    scored token by token on the unpadded sequence; of two problems whose prompts and solutions
    differ in length (so that one is padded), the mean of each one's alone."""
    import math
    from types import SimpleNamespace
    from student import encode_problems, solution_ids, solution_log_probability
    torch.manual_seed(0)
    model, tokenizer = load_model(str(lm_dir), "none", lora_rank=4, lora_alpha=8)
    cfg = SimpleNamespace(use_chat_template=False, micro_batch=16)
    problems = [{"problem": "Compute 12+7.", "solution": "2+7=9. 1+0=1. \\boxed{19}"},
                {"problem": "Quickly, compute 4721+385.", "solution": "\\boxed{5106}"}]

    def by_hand(row):
        prompt = encode_problems(tokenizer, [row], False)[0]
        target = solution_ids(tokenizer, row["solution"], False)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + target])).logits[0].log_softmax(-1)
        return sum(logits[len(prompt) - 1 + t, tok].item() for t, tok in enumerate(target))

    alone = [solution_log_probability(model, tokenizer, [row], cfg, {}) for row in problems]
    assert alone == pytest.approx([by_hand(row) for row in problems], abs=1e-4)
    both = solution_log_probability(model, tokenizer, problems, cfg, {})
    assert both == pytest.approx(math.log(sum(math.exp(a) for a in alone) / 2), abs=1e-4)
    # micro-batches of one give the same value
    assert solution_log_probability(model, tokenizer, problems, SimpleNamespace(
        use_chat_template=False, micro_batch=1), {}) == pytest.approx(both, abs=1e-5)


def test_the_tiny_hard_set_carries_each_problem_s_worked_solution(tmp_path, monkeypatch):
    import json
    from tiny import model as tiny_model
    from tiny.world import generate_problems, solution
    rows = generate_problems(3, 5, seed=0, quick=True)
    for name in ("hard_train.jsonl", "hard_test.jsonl", "stats.json"):  # a finished build
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(tiny_model, "tiny_model_path", lambda seed, progress: tmp_path)
    monkeypatch.setattr(tiny_model, "hard_dir", lambda seed: tmp_path)
    hard_train, hard_test = tiny_model.tiny_hard_set(progress=False)
    assert [row["solution"] for row in hard_train] == [solution(row["problem"]) for row in rows]
    assert [row["problem"] for row in hard_test] == [row["problem"] for row in rows]


def test_the_teacher_samples_at_its_own_temperature_and_the_student_at_its_own(monkeypatch):
    import student
    import teacher
    from config import Config
    drawn = {}

    def recorder(role):
        def generate(*args, temperature, **kwargs):
            drawn[role] = temperature
            raise StopIteration  # the temperature asked for is all this test needs
        return generate
    for module in (teacher, student):
        monkeypatch.setattr(module, "generate", recorder(module.__name__))
        monkeypatch.setattr(module, "activate", lambda *a: None)
        monkeypatch.setattr(module, "encode_prompt", lambda *a: [1])
    cfg = Config(temperature=0.9, teacher_temperature=0.6)
    with pytest.raises(StopIteration):
        teacher.sample_pairs(None, None, 4, cfg, None, {})
    with pytest.raises(StopIteration):
        student.rloo_step(None, None, None, None, [{"problem": "Compute 1+2.", "answer": "3"}], cfg, None, {})
    assert drawn == {"teacher": 0.6, "student": 0.9}
