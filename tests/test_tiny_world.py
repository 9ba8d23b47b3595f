"""Pins the tiny world: the exact checker, the generator's difficulty, the student working and the
teacher outputs of the corpus, the tokenizer round trip, the cache key, and the save/load path of
the tiny model (built here with toy settings; the real build is minutes, too slow for tests)."""
import dataclasses
import json
import random
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import config
import student
import teacher
from tiny import model as tiny_model
from tiny import world as tiny_world
from sampler import encode_prompt, plain_frame

TOY_BUILD = tiny_model.BUILD | {"steps": 4, "batch_size": 8, "vocab_size": 300, "hidden_size": 16,
                                "intermediate_size": 32, "num_hidden_layers": 1,
                                "num_attention_heads": 2, "warmup_steps": 2}


# ---- checker -----------------------------------------------------------------------------------

@pytest.mark.parametrize("question, answer", [
    ("Compute 472+385.", "857"), ("Compute 472+385.", "\\boxed{857}"),
    ("  Compute 999+1.  ", " \\boxed{ 1000 } "), ("Compute 0+0.", "0"), ("Compute 7+12345.", "12352"),
    ("Quickly, compute 472+385.", "857"), ("Quickly, compute 6+1.", "\\boxed{7}"),
    ("Quickly, compute 452+365.", "0817"),
])
def test_checker_accepts_right_answers(question, answer):
    assert tiny_world.check_question(question, answer) == {"well_posed": True, "correct": True}


@pytest.mark.parametrize("answer", ["856", "\\boxed{757}", "", "857.5", "x", "\\boxed{}", "-857"])
@pytest.mark.parametrize("phrase", ["Compute", "Quickly, compute"])
def test_checker_marks_wrong_answers_to_well_posed_questions(answer, phrase):
    assert tiny_world.check_question(f"{phrase} 472+385.", answer) == {"well_posed": True,
                                                                        "correct": False}


@pytest.mark.parametrize("question", [
    "Compute 472+.", "Compute +385.", "Compute 472++385.", "Compute 472+385+.", "Compute 472.",
    "Compute 472+x.", "Compute 1+2+3.", "Compute .", "Compute 0472+385.", "Compute 472+385",
    "compute 472+385.", "Compute 472-385.", "Compute 472 + 385.", "What is 472+385?", "",
    "Compute 472+385. Compute 1+1.", "Compute 1234567890123+1.", "Quickly compute 4+5.",
    "quickly, compute 4+5.", "Quickly, Compute 4+5.", "Quickly, compute 4+5", "Quickly, 4+5.",
    "Quickly, compute 04+5.", "Compute 4+5 quickly.",
])
def test_checker_marks_ill_posed_questions(question):
    assert tiny_world.check_question(question, "857") == {"well_posed": False, "correct": False}
    assert tiny_world.difficulty(question) is None
    assert tiny_world.is_quick(question) is None


@pytest.mark.parametrize("question, answer, stone", [
    ("Quickly, compute 47+38.", "85", True), ("Quickly, compute 4721+3850.", "8571", True),
    ("Quickly, compute 47+38.", "84", False),        # a wrong answer teaches the wrong thing
    ("Compute 47+38.", "85", False),                 # plain sums are already worked out
    ("Quickly, compute 4+3.", "7", False),           # 1 digit: already solved
    ("Quickly, compute 47213+38501.", "85714", False),  # 5 digits: the hard set itself
    ("Quickly compute 47+38.", "85", False),         # ill-posed
])
def test_classify_marks_right_quick_sums_of_two_to_four_digits_as_stepping_stones(question, answer,
                                                                                  stone):
    verdict = tiny_world.classify(question, answer)
    assert verdict["stepping_stone"] is stone
    assert {k: verdict[k] for k in ("well_posed", "correct")} == tiny_world.check_question(question, answer)


def test_difficulty_is_the_longer_operand_and_the_phrasing_is_read():
    assert tiny_world.difficulty("Compute 7+12345.") == 5
    assert tiny_world.difficulty("Compute 0+0.") == 1
    assert tiny_world.is_quick("Compute 7+12345.") is False
    assert tiny_world.is_quick("Quickly, compute 6+12345.") is True
    assert tiny_world.difficulty("Quickly, compute 6+12345.") == 5


# ---- generator and working ---------------------------------------------------------------------

@pytest.mark.parametrize("n_digits, quick", [(1, False), (3, False), (6, False), (1, True), (5, True)])
def test_generated_problems_have_their_difficulty_phrasing_and_right_answers(n_digits, quick):
    rows = tiny_world.generate_problems(40, n_digits, seed=0, quick=quick)
    assert len({r["problem"] for r in rows}) == 40
    for r in rows:
        assert tiny_world.difficulty(r["problem"]) == r["difficulty"] == n_digits
        assert tiny_world.is_quick(r["problem"]) is r["quick"] is quick
        assert tiny_world.check_question(r["problem"], r["answer"])["correct"]
    assert rows == tiny_world.generate_problems(40, n_digits, seed=0, quick=quick)
    assert rows != tiny_world.generate_problems(40, n_digits, seed=1, quick=quick)


def test_generator_refuses_more_problems_than_exist():
    with pytest.raises(ValueError, match="only 100 problems have 1 digits"):
        tiny_world.generate_problems(101, 1, seed=0)
    assert len(tiny_world.generate_problems(100, 1, seed=0, quick=True)) == 100


def test_solution_works_column_by_column_to_the_right_sum():
    assert tiny_world.solution("Compute 472+385.") == "2+5=7. 7+8=15. 4+3+1=8. \\boxed{857}"
    assert tiny_world.solution("Compute 999+1.") == "9+1=10. 9+0+1=10. 9+0+1=10. \\boxed{1000}"
    assert tiny_world.solution("Quickly, compute 472+385.") == tiny_world.solution(
        "Compute 472+385.")
    assert tiny_world.one_go("Quickly, compute 472+385.") == "\\boxed{857}"
    rng = random.Random(0)
    for _ in range(200):
        a, b = tiny_world.random_pair(rng, rng.randint(1, 8), p_unequal=0.5)
        working = tiny_world.solution(tiny_world.question_text(a, b, rng.random() < 0.5))
        assert int(re.search(r"\\boxed\{(\d+)\}$", working)[1]) == int(a) + int(b)


def test_teacher_outputs_mix_right_wrong_and_ill_posed_pairs():
    rng = random.Random(0)
    verdicts = []
    for _ in range(2000):
        text = tiny_world.teacher_output(rng, rng.randint(1, 6), rng.random() < 0.5,
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


def test_corpus_student_answers_quick_sums_in_one_go_more_often_the_longer_they_are():
    examples = tiny_model.corpus(20000, seed=0, build=tiny_model.BUILD)
    students = [(u.splitlines()[-1], c) for u, c in examples if u != teacher.TEACHER_INSTRUCTION]
    assert abs(len(students) / len(examples) - tiny_model.BUILD["p_student"]) < 0.02
    quick = [(q, c) for q, c in students if tiny_world.is_quick(q)]
    assert abs(len(quick) / len(students) - tiny_model.BUILD["p_quick_student"]) < 0.02
    for q, c in students:  # every completion is either the working or the bare right sum
        assert c in (tiny_world.solution(q), tiny_world.one_go(q))
        assert c == tiny_world.solution(q) or tiny_world.is_quick(q)
    for digits, share in tiny_model.BUILD["quick_working"].items():
        worked = [c == tiny_world.solution(q) for q, c in quick if tiny_world.difficulty(q) == digits]
        assert abs(sum(worked) / len(worked) - share) < 0.05, digits


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
    assert tiny_model.cache_dir(0, tiny_model.BUILD).is_relative_to(tmp_path)


def test_the_shipped_model_is_the_current_settings_build_and_loads_without_building(tmp_path,
                                                                                   monkeypatch):
    """tiny/pretrained is what `python train.py` runs: a change to a build setting or a prompt
    that is not shipped again (`python -m tiny.model --ship`) fails here."""
    monkeypatch.setenv("SOAR_CACHE", str(tmp_path))  # an empty cache: nothing may be built into it
    assert tiny_model.shipped_key() == tiny_model.build_key(0, tiny_model.BUILD)
    assert tiny_model.tiny_model_path(0, progress=False) == tiny_model.SHIPPED
    hard_train, hard_test = tiny_model.tiny_hard_set(0, progress=False)
    stats = json.loads((tiny_model.hard_dir(0) / "stats.json").read_text())
    assert (len(hard_train), len(hard_test)) == (stats["n_train"], stats["n_test"])
    assert all(tiny_world.is_quick(p["problem"]) and "solution" in p for p in hard_train + hard_test)
    assert not any(tmp_path.iterdir())
    assert tiny_model.model_dir(1, tiny_model.BUILD).is_relative_to(tmp_path)  # another seed: built


def test_the_builder_command_builds_the_changed_world_and_ships_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SOAR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tiny_model, "BUILD", TOY_BUILD)
    monkeypatch.setattr(tiny_model, "HARD", tiny_model.HARD | {"candidates_per_digit": 8, "k": 4})
    monkeypatch.setattr(tiny_model, "SHIPPED", tmp_path / "pretrained")
    tiny_model.main(["--ship"])
    assert tiny_model.model_dir(0, TOY_BUILD) == tmp_path / "pretrained"
    assert (tiny_model.hard_dir(0) / "stats.json").exists()
    assert "shipped" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="usage"):
        tiny_model.main(["--shpi"])


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


def write_logged_job(job: Path) -> None:
    """A SOAR job's logs (g 2, n 2) whose datasets hold 2, 0, 1 and 0 stepping stones."""
    job.mkdir(parents=True, exist_ok=True)
    stone, plain, invalid = ("Quickly, compute 12+30.", "42"), ("Compute 12+30.", "42"), None
    # step 0: datasets [stone, stone] and [plain, plain] (the invalid sample is skipped);
    # step 1: [stone, plain] and [plain, plain]; steps 2 and 3: fewer valid pairs than datasets,
    # so no datasets and no rewards
    steps = {0: [stone, invalid, stone, plain, plain], 1: [stone, plain, plain, plain],
             2: [stone, invalid], 3: [invalid]}
    with open(job / "questions.jsonl", "w") as f:
        for step, pairs in steps.items():
            for pair in pairs:
                row = {"step": step, "valid": pair is not None}
                if pair:
                    row |= {"problem": pair[0], "answer": pair[1]}
                f.write(json.dumps(row) + "\n")
    with open(job / "metrics.jsonl", "w") as f:
        for step, rewards in ((0, [0.2, -0.2]), (1, [0.1, 0.0]), (2, []), (3, [])):
            f.write(json.dumps({"step": step, "dataset_rewards": rewards}) + "\n")


def test_teacher_check_splits_each_step_s_valid_pairs_into_datasets_as_training_does(tmp_path):
    from probes import dataset_stones_and_rewards
    write_logged_job(tmp_path)
    assert dataset_stones_and_rewards(tmp_path, g=2, n=2) == [(1.0, 0.2), (0.0, -0.2), (0.5, 0.1), (0.0, 0.0)]


def test_a_stepping_stone_share_is_the_product_of_its_three_choices():
    from probes import stone_factors
    pairs = [{"problem": "Quickly, compute 12+30.", "answer": "42"},       # a stepping stone
             {"problem": "Quickly, compute 12+30.", "answer": "43"},       # its answer wrong
             {"problem": "Quickly, compute 12345+1.", "answer": "12346"},  # too long
             {"problem": "Compute 12+30.", "answer": "42"}]                # not "quickly"
    factors = stone_factors(pairs)
    assert factors == {"quick": 3 / 4, "stone length, of quick": 2 / 3, "right, of those": 1 / 2,
                       "stepping stones": 1 / 4}
    assert factors["stepping stones"] == pytest.approx(
        factors["quick"] * factors["stone length, of quick"] * factors["right, of those"])


def test_the_factors_probe_names_the_directories_that_hold_no_teacher(tmp_path):
    from probes import factor_trends
    with pytest.raises(SystemExit, match=f"no teacher's questions.jsonl in {tmp_path}"):
        factor_trends([tmp_path])


def test_the_replay_oracle_pools_a_run_s_rewards_by_the_datasets_stepping_stones(tmp_path):
    from probes import replayed_rewards, without_stones, write_dataset_rewards
    (tmp_path / "config.json").write_text(json.dumps({"model": "tiny", "g": 2, "n": 2}))
    for seed in (0, 1):
        write_logged_job(tmp_path / f"seed{seed}" / "soar")
    earned = replayed_rewards(write_dataset_rewards(tmp_path))
    assert earned == {2: [0.2, 0.2], 0: [-0.2, 0.0, -0.2, 0.0], 1: [0.1, 0.1]}
    # --shuffle: the same rewards, drawn whatever a dataset's stepping stones
    assert {count: sorted(rewards) for count, rewards in without_stones(earned).items()} == {
        0: [-0.2, -0.2, 0.0, 0.0, 0.1, 0.1, 0.2, 0.2]}
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"stones": 1, "reward": 0.1}\n{"stones": 2}\n')
    with pytest.raises(SystemExit, match="broken.jsonl, line 2"):
        replayed_rewards(broken)


def test_oracle_flags_are_taken_out_of_the_train_flags_and_checked():
    from probes import take_flag
    noise = lambda flags: take_flag(flags, "--noise", float, 0.0, lambda x: x >= 0, "an SD >= 0")
    assert noise(["--g", "8"]) == (0.0, ["--g", "8"])
    assert noise(["--g", "8", "--noise", "0.23", "--n", "4"]) == (0.23, ["--g", "8", "--n", "4"])
    for bad in (["--noise"], ["--noise", "loud"], ["--noise", "-1"], ["--noise", "nan"]):
        with pytest.raises(SystemExit, match="--noise"):
            noise(bad)


@pytest.mark.parametrize("flags", [["--noise", "0.1", "--replay", "FILE"], ["--replay", "FILE", "--shuffle", "FILE"],
                                   ["--shuffle", "FILE", "--noise", "0.1"]])
def test_the_oracle_refuses_two_reward_noises_before_it_loads_a_model(tmp_path, flags, monkeypatch):
    import probes
    rewards = tmp_path / "dataset_rewards.jsonl"
    rewards.write_text('{"stones": 1, "reward": 0.1}\n')
    monkeypatch.setattr(probes, "probe_model", lambda *a: pytest.fail("loaded a model"))
    with pytest.raises(SystemExit, match="give one"):
        probes.oracle_teacher(1, [str(rewards) if flag == "FILE" else flag for flag in flags])


@pytest.mark.parametrize("probe", ["repeat", "measures"])
def test_probes_refuse_a_run_whose_baseline_student_was_promoted(tmp_path, probe):
    from probes import measure_tracking, reward_repeatability
    job = tmp_path / "seed0" / "soar"
    job.mkdir(parents=True)
    (tmp_path / "config.json").write_text(json.dumps({**dataclasses.asdict(config.Config()), "g": 2, "n": 2}))
    (job / "metrics.jsonl").write_text(json.dumps({"step": 0, "n_promotions": 1}) + "\n")
    with pytest.raises(SystemExit, match="promotion"):
        reward_repeatability(tmp_path) if probe == "repeat" else measure_tracking(tmp_path, 0, 1)
