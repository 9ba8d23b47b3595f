"""Pins the tiny world: the exact checker, the generator's difficulty, the student working and the
teacher outputs of the corpus, the tokenizer round trip, the cache key, and the save/load path of
the tiny model (built here with toy settings; the real build is minutes, too slow for tests)."""
import random
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import student
import teacher
from data import tiny_model, tiny_world
from models import encode_prompt, plain_frame

TOY_BUILD = tiny_model.BUILD | {"steps": 4, "batch_size": 8, "vocab_size": 300, "hidden_size": 16,
                                "intermediate_size": 32, "num_hidden_layers": 1,
                                "num_attention_heads": 2, "warmup_steps": 2}


# ---- checker -----------------------------------------------------------------------------------

@pytest.mark.parametrize("question, answer", [
    ("Compute 472+385.", "857"), ("Compute 472+385.", "\\boxed{857}"),
    ("  Compute 999+1.  ", " \\boxed{ 1000 } "), ("Compute 0+0.", "0"), ("Compute 7+12345.", "12352"),
    ("In base 7, compute 452+365.", "1150"), ("In base 7, compute 6+1.", "\\boxed{10}"),
    ("In base 7, compute 452+365.", "01150"), ("In base 2, compute 1+1.", "10"),
    ("In base 10, compute 472+385.", "857"),
])
def test_checker_accepts_right_answers(question, answer):
    assert tiny_world.check_question(question, answer) == {"well_posed": True, "correct": True}


@pytest.mark.parametrize("answer", ["856", "\\boxed{757}", "", "857.5", "x", "\\boxed{}", "-857"])
def test_checker_marks_wrong_answers_to_well_posed_questions(answer):
    assert tiny_world.check_question("Compute 472+385.", answer) == {"well_posed": True,
                                                                      "correct": False}


@pytest.mark.parametrize("answer", ["817", "1140", "\\boxed{1151}"])
def test_checker_grades_rare_base_answers_in_their_base(answer):
    assert tiny_world.check_question("In base 7, compute 452+365.", answer) == {
        "well_posed": True, "correct": False}


@pytest.mark.parametrize("question", [
    "Compute 472+.", "Compute +385.", "Compute 472++385.", "Compute 472+385+.", "Compute 472.",
    "Compute 472+x.", "Compute 1+2+3.", "Compute .", "Compute 0472+385.", "Compute 472+385",
    "compute 472+385.", "Compute 472-385.", "Compute 472 + 385.", "What is 472+385?", "",
    "Compute 472+385. Compute 1+1.", "Compute 1234567890123+1.", "In base 7, compute 19+3.",
    "In base 1, compute 4+5.", "In base 11, compute 4+5.", "In base 07, compute 4+5.",
    "In base 7, compute 4+5", "In base seven, compute 4+5.", "in base 7, compute 4+5.",
    "In base 7 compute 4+5.", "Compute 4+5 in base 7.",
])
def test_checker_marks_ill_posed_questions(question):
    assert tiny_world.check_question(question, "857") == {"well_posed": False, "correct": False}
    assert tiny_world.difficulty(question) is None


def test_difficulty_is_the_longer_operand_and_the_base_is_read():
    assert tiny_world.difficulty("Compute 7+12345.") == 5
    assert tiny_world.difficulty("Compute 0+0.") == 1
    assert tiny_world.base_of("Compute 7+12345.") == 10
    assert tiny_world.base_of("In base 7, compute 6+12345.") == 7
    assert tiny_world.difficulty("In base 7, compute 6+12345.") == 5


# ---- generator and working ---------------------------------------------------------------------

@pytest.mark.parametrize("n_digits, base", [(1, 10), (3, 10), (6, 10), (1, 7), (4, 7)])
def test_generated_problems_have_their_difficulty_base_and_right_answers(n_digits, base):
    rows = tiny_world.generate_problems(40, n_digits, seed=0, base=base)
    assert len({r["problem"] for r in rows}) == 40
    for r in rows:
        assert tiny_world.difficulty(r["problem"]) == r["difficulty"] == n_digits
        assert tiny_world.base_of(r["problem"]) == r["base"] == base
        assert tiny_world.check_question(r["problem"], r["answer"])["correct"]
    assert rows == tiny_world.generate_problems(40, n_digits, seed=0, base=base)
    assert rows != tiny_world.generate_problems(40, n_digits, seed=1, base=base)


def test_generator_refuses_more_problems_than_exist():
    with pytest.raises(ValueError, match="only 49 problems have 1 digits in base 7"):
        tiny_world.generate_problems(50, 1, seed=0, base=7)
    assert len(tiny_world.generate_problems(49, 1, seed=0, base=7)) == 49


def test_solution_works_column_by_column_to_the_right_sum():
    assert tiny_world.solution("Compute 472+385.") == "2+5=7. 7+8=15. 4+3+1=8. \\boxed{857}"
    assert tiny_world.solution("Compute 999+1.") == "9+1=10. 9+0+1=10. 9+0+1=10. \\boxed{1000}"
    assert (tiny_world.solution("In base 7, compute 452+365.")
            == "2+5=10. 5+6+1=15. 4+3+1=11. \\boxed{1150}")
    rng = random.Random(0)
    for _ in range(200):
        base = rng.choice([10, 7, 2])
        a, b = tiny_world.random_pair(rng, rng.randint(1, 8), base, p_unequal=0.5)
        working = tiny_world.solution(tiny_world.question_text(a, b, base))
        boxed = re.search(r"\\boxed\{(\d+)\}$", working)
        assert int(boxed[1], base) == int(a, base) + int(b, base)


def test_teacher_outputs_mix_right_wrong_and_ill_posed_pairs():
    rng = random.Random(0)
    verdicts = []
    for _ in range(2000):
        text = tiny_world.teacher_output(rng, rng.randint(1, 6), rng.choice([10, 7]),
                                         p_working=0.3, p_wrong=0.3, p_ill_posed=0.1)
        pair = re.fullmatch(r"<question>(.*)</question><answer>(.*)</answer>", text)
        assert pair, text
        working, boxed = re.fullmatch(r"(.*?) ?(\\boxed\{[0-9]+\})", pair[2]).groups()
        verdict = tiny_world.check_question(pair[1], boxed)
        if working:  # worked answers are the working's, and right
            assert pair[2] == tiny_world.solution(pair[1]) and verdict["correct"]
        verdicts.append(verdict)
    ill = sum(not v["well_posed"] for v in verdicts) / len(verdicts)
    wrong = sum(v["well_posed"] and not v["correct"] for v in verdicts) / len(verdicts)
    assert 0.05 < ill < 0.15 and 0.1 < wrong < 0.3


def test_corpus_teacher_works_out_only_sums_the_student_is_taught():
    worked = 0
    for user, completion in tiny_model.corpus(3000, seed=0, build=tiny_model.BUILD):
        if user == teacher.TEACHER_INSTRUCTION and "=" in completion:
            question = re.search(r"<question>(.*)</question>", completion)[1]
            assert tiny_world.difficulty(question) <= tiny_model.BUILD["teacher_max_working_digits"]
            worked += 1
    assert worked > 200


def test_corpus_mixes_roles_and_bases_as_configured():
    examples = tiny_model.corpus(4000, seed=0, build=tiny_model.BUILD)
    prompts = [u for u, c in examples if u != teacher.TEACHER_INSTRUCTION]
    assert abs(len(prompts) / len(examples) - tiny_model.BUILD["p_student"]) < 0.03
    share_rare = sum(f"base {tiny_world.RARE_BASE}" in u for u in prompts) / len(prompts)
    assert abs(share_rare - tiny_model.BUILD["p_rare_student"]) < 0.01


# ---- tokenizer ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy_texts():
    return tiny_model.corpus(400, seed=0, build=TOY_BUILD)


@pytest.fixture(scope="module")
def toy_tokenizer(toy_texts, tmp_path_factory):
    tok = tiny_model.build_tokenizer([plain_frame(u) + " " + c for u, c in toy_texts],
                                     tiny_model.BUILD["vocab_size"])
    path = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def test_tokenizer_round_trips_and_keeps_digits_apart(toy_tokenizer, toy_texts):
    tok = toy_tokenizer
    assert tok.eos_token == tiny_model.EOS and tok.pad_token == tiny_model.PAD
    assert tok.chat_template is None
    for user, completion in toy_texts[:50]:
        text = plain_frame(user) + " " + completion
        ids = tok(text, add_special_tokens=True)["input_ids"]
        assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text
    pieces = tok.convert_ids_to_tokens(tok("Compute 472+385.", add_special_tokens=False)["input_ids"])
    assert all(len(p) == 1 for p in pieces if any(ch.isdigit() for ch in p))


def test_constant_prompts_compress(toy_tokenizer):
    n_teacher = len(encode_prompt(toy_tokenizer, teacher.TEACHER_INSTRUCTION, False))
    n_student = len(encode_prompt(toy_tokenizer, student.student_message("Compute 1+2."), False))
    assert n_teacher < len(teacher.TEACHER_INSTRUCTION) / 4 and n_student < 20


# ---- cache key and the save/load path ----------------------------------------------------------

def test_cache_key_is_deterministic_and_covers_seed_and_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("SOAR_CACHE", str(tmp_path))
    key = tiny_model.build_key(0, tiny_model.BUILD)
    assert key == tiny_model.build_key(0, dict(tiny_model.BUILD))
    assert key != tiny_model.build_key(1, tiny_model.BUILD)
    assert key != tiny_model.build_key(0, tiny_model.BUILD | {"steps": 1})
    assert tiny_model.model_dir(0, tiny_model.BUILD).is_relative_to(tmp_path)


def test_toy_build_saves_a_loadable_deterministic_model(tmp_path, monkeypatch):
    monkeypatch.setenv("SOAR_CACHE", str(tmp_path))
    monkeypatch.setattr(tiny_model, "BUILD", TOY_BUILD)
    path = tiny_model.tiny_model_path(seed=0, progress=False)
    assert path == tiny_model.model_dir(0, TOY_BUILD)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    ids = torch.tensor([encode_prompt(tok, student.student_message("Compute 1+2."), False)])
    assert model(input_ids=ids).logits.shape[-1] == len(tok)
    assert model.config.eos_token_id == tok.eos_token_id

    again = tmp_path / "again"
    again.mkdir()
    tiny_model.build_model(again, 0, TOY_BUILD, progress=False)
    rebuilt = AutoModelForCausalLM.from_pretrained(again)
    for (name, p), (_, q) in zip(model.state_dict().items(), rebuilt.state_dict().items()):
        assert torch.equal(p, q), name
    assert tiny_model.tiny_model_path(seed=0, progress=False) == path  # cached: no rebuild
