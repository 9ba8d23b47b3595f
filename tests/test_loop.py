"""Pins the SOAR loop: adapter isolation and exact restore, teacher parsing, promotion, config
errors, a 4-bit step on CPU, and full runs of train.py (one outer step, resume, kill, report)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import PreTrainedModel

import evaluate
import train
from config import METHODS, SMOKE, Config, parse_config
from models import adapter_state, load_adapter_state, load_model, make_optimizer, policy_gradient_step
from rewards import pass_at_k
from run_dir import load_checkpoint, prepare_run_dir, read_jsonl
from summary import PAIRED, paired_differences, t_quantile, teacher_trends
from teacher import parse_teacher_output, question_diversity, vendi_score
from tiny.world import classify, question_quality

ROOT = train.Path(__file__).resolve().parents[1]


# ---- teacher parsing ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("<question>Compute 2+3.</question><answer>\\boxed{5}</answer>", ("Compute 2+3.", "5")),
    ("I add the digits first. <question> What is 1/2 of 8? </question>\n<answer>So \\boxed{4}.</answer>",
     ("What is 1/2 of 8?", "4")),
    ("<question>Area?</question><answer>\\boxed{\\frac{3}{4}}</answer>", ("Area?", "\\frac{3}{4}")),
])
def test_teacher_parser_accepts_one_tagged_pair(text, expected):
    pair = parse_teacher_output(text)
    assert (pair["problem"], pair["answer"]) == expected


@pytest.mark.parametrize("text", [
    "",
    "Compute 2+3. \\boxed{5}",                                          # no tags
    "<question>Compute 2+3.</question>",                                # no answer
    "<question>Compute 2+3.</question><answer>5</answer>",              # answer not boxed
    "<question></question><answer>\\boxed{5}</answer>",                 # empty question
    "<question>Q1</question><answer>\\boxed{1}</answer><question>Q2</question><answer>\\boxed{2}</answer>",
    "<answer>\\boxed{5}</answer><question>Compute 2+3.</question>",     # answer before question
    "<question>Compute <question>2+3.</question><answer>\\boxed{5}</answer>",  # nested tag
    "<question>Compute 2+3.</question><answer>\\boxed{}</answer>",      # empty box
    "<question>Compute 2+3.</question><answer>\\boxed{5</answer>",      # unclosed box
])
def test_teacher_parser_rejects_malformed_and_adversarial_output(text):
    assert parse_teacher_output(text) is None


def test_diversity_counts_repeats():
    assert question_diversity(["Compute 1+2.", "Compute 1+2."])["distinct"] == 0.5
    varied = question_diversity([f"Compute {a}+{b}." for a in range(9) for b in range(9)])
    same = question_diversity(["Compute 1+2."] * 81)
    assert varied["ngram_entropy"] > same["ngram_entropy"]


def test_vendi_score_counts_effectively_distinct_questions():
    assert vendi_score(["Compute 1+2."] * 8) == pytest.approx(1.0)
    assert vendi_score(["alpha beta", "gamma delta", "epsilon zeta"]) == pytest.approx(3.0)
    assert vendi_score(["alpha beta", "gamma delta"] * 4) == pytest.approx(2.0)
    shared = vendi_score(["Compute 12+34.", "Compute 12+35.", "Compute 98+76."])
    assert 1.0 < shared < 3.0  # overlapping n-grams make questions count less than once each
    assert question_diversity(["alpha beta", "gamma delta"])["vendi"] == pytest.approx(2.0)


def test_t_quantile_matches_student_t_tables():
    assert t_quantile(0.975, 1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile(0.975, 2) == pytest.approx(4.303, abs=1e-3)
    assert t_quantile(0.975, 10) == pytest.approx(2.228, abs=1e-3)


def test_paired_differences_pair_seeds_and_count_wins():
    def result(p):
        return {"pass_at_k": {"8": p}}
    per_seed = {0: {"soar_pq": result(0.5), "hard_only": result(0.1)},
                1: {"soar_pq": result(0.3), "hard_only": result(0.2)},
                2: {"soar_pq": result(0.1), "hard_only": result(0.2)},
                3: {"hard_only": result(0.9)}}  # seed 3 lacks soar_pq: not paired
    cell = paired_differences(per_seed)["soar_pq - hard_only"]["8"]
    assert cell["n_seeds"] == 3 and cell["wins"] == 2
    assert cell["mean"] == pytest.approx((0.4 + 0.1 - 0.1) / 3)
    half = 4.303 * cell["sd"] / 3 ** 0.5
    assert cell["ci95"] == pytest.approx([cell["mean"] - half, cell["mean"] + half], abs=1e-3)
    assert "grounded_t - base_t" not in paired_differences(per_seed)


def test_teacher_trends_are_per_seed_slopes_per_ten_steps(tmp_path):
    # seed 0's stepping-stone share rises 0.01 a step, seed 1's 0.03; a step without the measure
    # (no valid pair that step) is left out, not read as zero
    for seed, rise in ((0, 0.01), (1, 0.03)):
        rows = [{"step": t, "quality": {"stepping_stone": 0.2 + rise * t}} for t in range(5)]
        rows.append({"step": 5, "quality": None})
        path = tmp_path / f"seed{seed}" / "soar" / "metrics.jsonl"
        path.parent.mkdir(parents=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    trends = teacher_trends({seed: tmp_path / f"seed{seed}" for seed in (0, 1)})
    cell = trends["soar"]["stepping_stone / 10 steps"]
    assert cell["mean"] == pytest.approx(0.2) and cell["n_seeds"] == 2
    half = 12.706 * cell["sd"] / 2 ** 0.5
    assert cell["ci95"] == pytest.approx([0.2 - half, 0.2 + half], abs=1e-3)
    assert set(trends) == {"soar"}  # no intrinsic teacher in this run


# ---- promotion ----------------------------------------------------------------------------------

def test_promote_takes_best_dataset_and_its_median_copy():
    rewards = [[0.0, 0.1, 0.2], [0.3, -0.1, 0.6], [0.1, 0.1, 0.1]]
    best, copy = train.best_copy(rewards)
    assert best == 1 and copy == 0  # dataset 1 has the best mean; its median reward is 0.3 (copy 0)


def test_moving_average_promotes_only_with_a_full_window_above_tau():
    window, due = [], []
    for reward in [0.05, 0.05, 0.05, -0.2, 0.0]:
        window, moving_avg, promote_now = train.update_window(window, reward, size=3, tau=0.01)
        due.append(promote_now)
    assert due == [False, False, True, False, False]


# ---- the shared model: adapters, isolation, restore ---------------------------------------------

@pytest.fixture(scope="module")
def shared(lm_dir):
    torch.manual_seed(0)
    return load_model(str(lm_dir), "none", lora_rank=4, lora_alpha=8)


def _one_update(model, tokenizer, role):
    optimizer, _ = make_optimizer(model, role, 1e-2, total_steps=4)
    prompt = tokenizer("User: hi\nAssistant:")["input_ids"]
    return policy_gradient_step(model, role, optimizer, [prompt, prompt],
                                [[5, 6, 7], [8, 9]], torch.tensor([1.0, -1.0]), kl_coef=0.001,
                                pad_token_id=tokenizer.pad_token_id, micro_batch=1,
                                max_new_tokens=8)


@pytest.mark.parametrize("trained, frozen", [("teacher", "student"), ("student", "teacher")])
def test_training_one_role_leaves_the_other_bit_identical(shared, trained, frozen):
    model, tokenizer = shared
    before = {role: adapter_state(model, role) for role in (trained, frozen)}
    assert _one_update(model, tokenizer, trained)["skipped"] == 0
    after = {role: adapter_state(model, role) for role in (trained, frozen)}
    assert all(torch.equal(before[frozen][k], after[frozen][k]) for k in before[frozen])
    assert any(not torch.equal(before[trained][k], after[trained][k]) for k in before[trained])
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


def test_a_student_copy_restores_the_baseline_exactly(shared):
    model, tokenizer = shared
    baseline = adapter_state(model, "student")
    _one_update(model, tokenizer, "student")
    assert any(not torch.equal(baseline[k], v) for k, v in adapter_state(model, "student").items())
    load_adapter_state(model, "student", baseline)
    restored = adapter_state(model, "student")
    assert all(torch.equal(baseline[k], restored[k]) for k in baseline)


def test_an_update_moves_log_probs_towards_rewarded_answers_and_away_from_punished_ones(shared):
    """Pins the sign of the policy gradient and the row/advantage alignment: the log-prob gap
    between two answers widens towards whichever one gets the positive advantage. (The gap, not
    each log-prob: through shared LoRA weights raising one answer can lift the other a little.)"""
    model, tokenizer = shared
    from models import activate
    from sampler import completion_logprobs
    activate(model, "student")
    baseline = adapter_state(model, "student")
    prompt = tokenizer("User: hi\nAssistant:")["input_ids"]
    first, second = [5, 6, 7], [8, 9, 10]

    def gap():
        with torch.no_grad():
            lp, mask = completion_logprobs(model, [prompt, prompt], [first, second],
                                           tokenizer.pad_token_id)
        logp = (lp * mask).sum(1)
        return (logp[0] - logp[1]).item()

    def gap_after(advantages):
        optimizer, _ = make_optimizer(model, "student", 1e-2, total_steps=4)
        for _ in range(3):
            policy_gradient_step(model, "student", optimizer, [prompt, prompt], [first, second],
                                 torch.tensor(advantages), kl_coef=0.001,
                                 pad_token_id=tokenizer.pad_token_id, micro_batch=1, max_new_tokens=8)
        after = gap()
        load_adapter_state(model, "student", baseline)
        return after

    before = gap()
    assert gap_after([1.0, -1.0]) > before + 0.5
    assert gap_after([-1.0, 1.0]) < before - 0.5


def test_non_finite_loss_skips_the_update(shared):
    model, tokenizer = shared
    before = adapter_state(model, "student")
    optimizer, _ = make_optimizer(model, "student", 1e-2, total_steps=4)
    prompt = tokenizer("User: hi\nAssistant:")["input_ids"]
    with pytest.warns(UserWarning, match="non-finite"):
        stats = policy_gradient_step(model, "student", optimizer, [prompt], [[5, 6]],
                                     torch.tensor([float("nan")]), kl_coef=0.001,
                                     pad_token_id=tokenizer.pad_token_id, micro_batch=1,
                                     max_new_tokens=8)
    assert stats["skipped"] == 1
    after = adapter_state(model, "student")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_4bit_base_trains_lora_on_cpu(lm_dir):
    model, tokenizer = load_model(str(lm_dir), "4bit", lora_rank=4, lora_alpha=8)
    assert any("4bit" in type(m).__name__ for m in model.modules())
    before = adapter_state(model, "student")
    assert _one_update(model, tokenizer, "student")["skipped"] == 0
    after = adapter_state(model, "student")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_a_student_step_without_signal_is_reported_as_such_and_changes_nothing(shared):
    from student import rloo_step
    model, tokenizer = shared
    cfg = Config(**{**SMOKE, "chat_template": "off"})
    optimizer, scheduler = make_optimizer(model, "student", 1e-2, total_steps=4)
    before = adapter_state(model, "student")
    # no answer can be right: every reward is 0, so every RLOO advantage is 0
    batch = [{"problem": "Compute 1+2.", "answer": "\\text{never}"}] * 2
    stats = rloo_step(model, tokenizer, optimizer, scheduler, batch, cfg,
                      torch.Generator().manual_seed(0), {})
    assert stats["update"] == "no signal" and stats["reward"] == 0.0
    after = adapter_state(model, "student")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_4bit_lora_gets_gradients_in_every_layer_after_a_pass_without_grad(lm_dir):
    model, tokenizer = load_model(str(lm_dir), "4bit", lora_rank=4, lora_alpha=8)
    model.eval()
    prompt = torch.tensor([tokenizer("User: hi\nAssistant:")["input_ids"]])
    with torch.no_grad():  # as sampling and the KL reference run
        model(input_ids=prompt)
    model.set_adapter("student")
    model(input_ids=prompt).logits.float().pow(2).mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_B" in n and ".student." in n}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())


def _rows(tokenizer):
    prompt = tokenizer("User: hi\nAssistant:")["input_ids"]
    other = tokenizer("User: what is 2 + 2?\nAssistant:")["input_ids"]
    prompts = [prompt, other, prompt, other, prompt]
    completions = [[5, 6, 7], [8, 9], [10], [11, 12, 13, 14], [6, 5]]
    return prompts, completions, torch.tensor([1.0, -0.5, 0.25, -1.0, 0.5])


def _update_state(model, tokenizer, micro_batch):
    """The student adapter after one update on fixed rows, from (and back to) the same start."""
    start = adapter_state(model, "student")
    optimizer, _ = make_optimizer(model, "student", 1e-2, total_steps=4)
    prompts, completions, advantages = _rows(tokenizer)
    stats = policy_gradient_step(model, "student", optimizer, prompts, completions, advantages,
                                 kl_coef=0.001, pad_token_id=tokenizer.pad_token_id,
                                 micro_batch=micro_batch, max_new_tokens=8)
    after = adapter_state(model, "student")
    load_adapter_state(model, "student", start)
    return stats, after


def _assert_same_state(a, b):
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_out_of_memory_in_training_halves_the_micro_batch_and_changes_nothing(shared, monkeypatch):
    import models
    model, tokenizer = shared
    expected_stats, expected = _update_state(model, tokenizer, micro_batch=4)
    seen = []
    real = models.completion_logprobs

    def small_memory(model, prompt_ids, completion_ids, pad_token_id):
        if torch.is_grad_enabled() and len(prompt_ids) > 1:
            raise torch.OutOfMemoryError("injected: CUDA out of memory")
        seen.append(len(prompt_ids))
        return real(model, prompt_ids, completion_ids, pad_token_id)
    monkeypatch.setattr(models, "completion_logprobs", small_memory)
    with pytest.warns(UserWarning, match="out of memory training student on 4 rows at once; "
                                         "retrying with 2"):
        stats, after = _update_state(model, tokenizer, micro_batch=4)
    assert sum(n for n in seen if n == 1) == 5 * 2  # every row once, in the reference and the policy
    assert stats["skipped"] == 0
    assert stats["loss"] == pytest.approx(expected_stats["loss"], abs=1e-6)
    _assert_same_state(after, expected)


def test_out_of_memory_on_a_single_row_says_what_to_do(shared, monkeypatch):
    import models
    model, tokenizer = shared

    def no_memory(*args):
        raise torch.OutOfMemoryError("injected")
    monkeypatch.setattr(models, "completion_logprobs", no_memory)
    with pytest.raises(torch.OutOfMemoryError, match="a single row; lower the token caps"):
        _update_state(model, tokenizer, micro_batch=1)


def test_micro_batch_size_and_row_order_do_not_change_the_update(shared):
    model, tokenizer = shared
    _, whole = _update_state(model, tokenizer, micro_batch=5)
    _, single = _update_state(model, tokenizer, micro_batch=1)
    _assert_same_state(whole, single)


@pytest.mark.parametrize("transformers_api", ["current", "before the rename"])
def test_gradient_checkpointing_recomputes_layers_and_gives_the_same_update(lm_dir, transformers_api,
                                                                          monkeypatch):
    # early 5.x releases, which requirements.txt allows (on one of them, both cases are the same)
    if transformers_api == "before the rename" and hasattr(PreTrainedModel, "activation_checkpointing_enable"):
        monkeypatch.setattr(PreTrainedModel, "gradient_checkpointing_enable",
                            PreTrainedModel.activation_checkpointing_enable)
        for name in ("activation_checkpointing_enable", "is_activation_checkpointing"):
            monkeypatch.delattr(PreTrainedModel, name, raising=False)
    torch.manual_seed(0)
    plain, tokenizer = load_model(str(lm_dir), "none", lora_rank=4, lora_alpha=8)
    torch.manual_seed(0)
    ckpt, _ = load_model(str(lm_dir), "none", lora_rank=4, lora_alpha=8, checkpointing=True)
    load_adapter_state(ckpt, "student", adapter_state(plain, "student"))
    # (train mode, grad enabled) of every run of layer 0's attention. Hooked inside the layer: the
    # checkpointed layer's own hooks see only its outer call, not the recompute in backward.
    calls = {"plain": [], "ckpt": []}
    for name, model in (("plain", plain), ("ckpt", ckpt)):
        attention = model.get_base_model().model.layers[0].self_attn
        attention.register_forward_pre_hook(
            lambda m, a, seen=calls[name]: seen.append((m.training, torch.is_grad_enabled())))
    assert not plain.training and not ckpt.training  # as loaded: no sampling has set the mode yet
    _, expected = _update_state(plain, tokenizer, micro_batch=5)
    _, after = _update_state(ckpt, tokenizer, micro_batch=5)
    _assert_same_state(after, expected)
    # both: the reference forward (eval, no grad), then the policy forward; only the checkpointed
    # model runs the layer again in backward, in train mode, and is back in eval mode after
    assert calls["plain"] == [(False, False), (False, True)]
    assert calls["ckpt"] == [(False, False), (True, True), (True, True)] and not ckpt.training


# ---- the command line ---------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--eval-samples", "4", "--ks", "1,8"], "k=8 is more than --eval-samples 4"),
    (["--methods", "soar_pq,magic"], "--methods: unknown magic"),
    (["--g", "1"], "--g must be at least 2"),
    (["--quant", "3bit"], "--quant"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--probe-every", "0"], "--probe-every must be at least 1"),
    (["--ks", "0,1"], "every k must be at least 1"),
    (["--temperature", "-1"], "--temperature must not be negative"),
    (["--teacher-kl-coef", "-0.1"], "--teacher-kl-coef must not be negative"),
    (["--resume", "runs/x", "--smoke"], "drop --smoke"),
    (["--fresh-students", "0"], "--fresh-students must be at least 1"),
    (["--quality-samples", "-1"], "--quality-samples must not be negative"),
    (["--model", "smol", "--quality-samples", "8"], "only the tiny world can"),
    (["--reward-measure", "loss"], "argument --reward-measure: invalid choice: 'loss'"),
    (["--teacher-advantage", "median"], "argument --teacher-advantage: invalid choice: 'median'"),
    (["--teacher-temperature", "-0.5"], "--teacher-temperature must not be negative"),
    (["--teacher-rewards", "random"], "argument --teacher-rewards: invalid choice: 'random'"),
])
def test_bad_settings_fail_with_a_message_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(argv)
    assert exit_info.value.code != 0
    assert message in capsys.readouterr().err


def test_unknown_model_fails_at_once_with_a_clear_message(tmp_path, problem_files):
    train_file, test_file = problem_files
    start = time.time()
    with pytest.raises(SystemExit, match="not a preset"):
        train.main(["--model", "no-such-model", "--out", str(tmp_path / "run"),
                    "--hard-train", str(train_file), "--hard-test", str(test_file)])
    assert time.time() - start < 20


def test_the_solution_measure_refuses_a_hard_set_without_reference_solutions(tmp_path, lm_dir,
                                                                             problem_files):
    with pytest.raises(SystemExit, match=f"--reward-measure solution .*{problem_files[0]}"):
        train.main(_smoke_args(lm_dir, problem_files, tmp_path / "run", "--reward-measure", "solution"))


def _smoke_args(lm_dir, problem_files, out, *extra):
    train_file, test_file = problem_files
    return ["--model", str(lm_dir), "--smoke", "--out", str(out), "--hard-train", str(train_file),
            "--hard-test", str(test_file), "--sample-every", "0", *extra]


def expected_teacher_update(row: dict) -> str:
    """What the teacher's update must have been, from the rewards its step logged."""
    rewards = row["dataset_rewards"]
    if not rewards:
        return "no valid pairs"
    return "no signal" if len(set(rewards)) == 1 else "applied"


@pytest.mark.slow
def test_one_outer_step_fills_the_run_directory(lm_dir, problem_files, tmp_path):
    out = tmp_path / "run"
    train.main(_smoke_args(lm_dir, problem_files, out, "--methods", "base,soar_ps,soar_pq", "--outer-steps", "1"))
    rows = read_jsonl(out / "seed0" / "soar" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0]
    for key in ("dataset_rewards", "moving_avg", "promoted", "baseline_acc", "valid_rate", "times",
                "student_updates", "teacher_update"):
        assert key in rows[0]
    assert sum(rows[0]["student_updates"].values()) == 2  # g=2 datasets x r=1 copy x 1 inner step
    assert rows[0]["teacher_update"] == expected_teacher_update(rows[0])
    teacher = load_file(out / "seed0" / "soar" / "adapters" / "teacher" / "adapter_model.safetensors")
    moved = any(v.abs().sum() > 0 for k, v in teacher.items() if "lora_B" in k)  # B starts at 0
    assert moved == (rows[0]["teacher_update"] == "applied")
    config = json.loads((out / "config.json").read_text())
    assert config["quant"] == "none" and config["chat_template"] == "off"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["pass_at_k"]) == {"base", "soar_ps", "soar_pq"}
    assert set(summary["pass_at_k"]["base"]) == {"1", "4"}
    for role in ("teacher", "student"):
        assert (out / "seed0" / "soar" / "adapters" / role / "adapter_config.json").exists()
    assert (out / "report.md").exists()


@pytest.mark.slow
def test_every_method_runs_and_lands_in_the_table_and_the_paired_comparisons(lm_dir, problem_files,
                                                                           tmp_path):
    out = tmp_path / "run"
    train.main(_smoke_args(lm_dir, problem_files, out, "--seeds", "2"))
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["pass_at_k"]) == set(METHODS)
    assert set(summary["paired_differences"]) == {f"{a} - {b}" for a, b in PAIRED}
    assert all(cell["n_seeds"] == 2 for row in summary["paired_differences"].values()
               for cell in row.values())
    for seed in (0, 1):  # Grounded-T's questions come from SOAR's final teacher
        assert (out / f"seed{seed}" / "grounded_t" / "sampled_questions.jsonl").exists()
    # the table is pass@k averaged over problems (from each result.json's counts), then seeds
    for method, row in summary["pass_at_k"].items():
        for k, cell in row.items():
            per_seed = []
            for seed in (0, 1):
                result = json.loads((out / f"seed{seed}" / method / "result.json").read_text())
                counts = result["correct_counts"]
                assert len(counts) == len(read_jsonl(problem_files[1]))
                per_seed.append(sum(pass_at_k(4, c, int(k)) for c in counts) / len(counts))
            assert cell["mean"] == pytest.approx(sum(per_seed) / 2)
    assert "Grounded-T" in (out / "report.md").read_text()


@pytest.mark.slow
def test_the_policy_sample_is_kept_with_its_grades_and_recounts_the_logged_shares(tmp_path):
    """--quality-samples: the questions behind each step's policy_quality, on the shipped tiny model."""
    out = tmp_path / "run"
    train.main(["--smoke", "--methods", "soar_ps", "--quality-samples", "6", "--out", str(out),
                "--sample-every", "0"])
    rows = read_jsonl(out / "seed0" / "soar" / "metrics.jsonl")
    kept = read_jsonl(out / "seed0" / "soar" / "policy_questions.jsonl")
    for row in rows:
        questions = [q for q in kept if q["step"] == row["step"]]
        assert len(questions) == 6
        assert all(q == {**q, **classify(q["problem"], q["answer"])} for q in questions)
        assert row["policy_quality"] == question_quality(questions)


@pytest.mark.slow
def test_the_first_outer_step_does_not_depend_on_the_number_of_steps(lm_dir, problem_files, tmp_path):
    """A long run's first steps can be re-run short: its step-0 row is the short run's."""
    rows = {}
    for steps in (1, 3):
        out = tmp_path / f"steps{steps}"
        train.main(_smoke_args(lm_dir, problem_files, out, "--methods", "soar_ps,soar_pq", "--outer-steps",
                               str(steps), "--reward", "shaped", "--group-size", "4"))
        rows[steps] = read_jsonl(out / "seed0" / "soar" / "metrics.jsonl")
    assert [len(rows[1]), len(rows[3])] == [1, 3]
    strip = lambda row: {k: v for k, v in row.items() if k != "times"}  # noqa: E731
    assert strip(rows[3][0]) == strip(rows[1][0])


@pytest.mark.slow
def test_each_fresh_student_has_its_own_questions_and_the_table_averages_them(lm_dir, problem_files,
                                                                             tmp_path):
    out = tmp_path / "run"
    argv = _smoke_args(lm_dir, problem_files, out, "--methods", "base_t,hard_only",
                       "--fresh-students", "3")
    train.main(argv)
    for method in ("base_t", "hard_only"):
        assert [(out / "seed0" / job / "result.json").is_file()
                for job in (method, f"{method}.1", f"{method}.2")] == [True] * 3
    questions = [read_jsonl(out / "seed0" / job / "sampled_questions.jsonl")
                 for job in ("base_t", "base_t.1", "base_t.2")]
    assert questions[0] != questions[1] != questions[2]
    summary = json.loads((out / "summary.json").read_text())
    # what a teacher wrote is analysed over every student's sample of its questions
    assert summary["question_analysis"]["base_t"]["n"]["mean"] == sum(map(len, questions))
    students = [json.loads((out / "seed0" / job / "result.json").read_text())["pass_at_k"]
                for job in ("hard_only", "hard_only.1", "hard_only.2")]
    assert summary["per_student"]["hard_only"]["0"] == students
    for k, cell in summary["pass_at_k"]["hard_only"].items():
        assert cell["mean"] == pytest.approx(sum(s[k] for s in students) / 3)
    run = summary["run"]
    assert run["argv"] == argv and run["processes"] == 1 and run["cpus"] == os.cpu_count()
    assert 0 < run["wall_seconds"] < 600 and run["resumed"] is False
    assert run["hard_problems"] == {"train": len(read_jsonl(problem_files[0])),
                                    "test": len(read_jsonl(problem_files[1]))}


def comparable_run(out) -> dict:
    """Everything a run wrote that does not measure time: every log line, result and summary."""
    def strip(row):
        return {k: v for k, v in row.items() if k != "times"}
    logs = {str(p.relative_to(out)): [strip(r) for r in read_jsonl(p)]
            for p in sorted(out.glob("seed*/*/*.jsonl"))}
    results = {str(p.relative_to(out)): json.loads(p.read_text()) for p in out.glob("seed*/*/result.json")}
    return {"logs": logs, "results": results,
            "summary": json.loads((out / "summary.json").read_text())["pass_at_k"]}


@pytest.mark.slow
def test_two_processes_give_exactly_the_results_of_one(lm_dir, problem_files, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    # g=3 datasets x r=3 copies: 9 units on 2 processes, so the copy indexing k * r + j and the
    # broadcast of the promoted (median) copy from the process that trained it both run, on one
    # process and on two; a promotion at every step, after which inner loops take 1 + 1 steps;
    # the shaped reward's credit for a boxed answer gives the toy model's students a signal.
    args = ["--methods", "base,soar_ps,soar_pq,hard_only,grounded_t", "--outer-steps", "2", "--ma-window", "1",
            "--tau", "-1", "--g", "3", "--r", "3", "--promotion-extra-steps", "1", "--group-size", "4",
            "--reward", "shaped"]
    train.main(_smoke_args(lm_dir, problem_files, one, *args))
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "--processes", "2",
                           *_smoke_args(lm_dir, problem_files, two, *args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    logs = comparable_run(one)["logs"]
    # Only applied updates make the comparison bite (an unseeded LoRA init, for one, shows only
    # once a gradient step has used it).
    assert any(r["student_updates"].get("applied") for r in logs["seed0/soar/metrics.jsonl"])
    # g x r copies, each of inner_steps (1), plus the extra step once a student is promoted
    assert [sum(r["student_updates"].values()) for r in logs["seed0/soar/metrics.jsonl"]] == [9, 18]
    assert all(r["update"] == "applied" for r in logs["seed0/hard_only/metrics.jsonl"])
    assert comparable_run(two) == comparable_run(one)
    assert done.stdout.count("pass@k (%) on the hard test set") == 1  # printed by one process
    assert "2 processes" in done.stdout


def a_process_runs_with(text: str) -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_text(errors="replace"):
                return True
        except OSError:  # ended meanwhile
            continue
    return False


@pytest.mark.slow
def test_a_run_killed_on_two_processes_resumes_on_one_to_the_same_results(lm_dir, problem_files,
                                                                          tmp_path):
    args = ["--methods", "soar_ps,soar_pq,hard_only", "--outer-steps", "3", "--g", "3", "--reward", "shaped"]
    train.main(_smoke_args(lm_dir, problem_files, tmp_path / "full", *args))
    out = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--processes", "2",
                             *_smoke_args(lm_dir, problem_files, out, *args)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    metrics = out / "seed0" / "soar" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher; its processes must end with it
    proc.wait()
    while time.time() < deadline and a_process_runs_with(str(out)):
        time.sleep(0.2)
    assert not a_process_runs_with(str(out)), "a process outlived its launcher"
    assert metrics.read_text().count("\n") < 3, "the run finished before it could be killed"
    train.main(["--resume", str(out)])
    full = comparable_run(tmp_path / "full")
    assert any(r["update"] == "applied" for r in full["logs"]["seed0/hard_only/metrics.jsonl"])
    assert comparable_run(out) == full


@pytest.mark.slow
def test_a_failing_process_ends_the_run_with_a_message(lm_dir, problem_files, tmp_path):
    # process 1 fails at its first stage; process 0 would wait for it at the next collective
    script = tmp_path / "failing_train.py"
    script.write_text(f"import os, sys; sys.path.insert(0, {str(ROOT)!r}); import train\n"
                      "if os.environ.get('RANK') == '1':\n"
                      "    train.run_seed = lambda *args: 1 / 0\n"
                      "train.main(sys.argv[1:])\n")
    start = time.time()
    done = subprocess.run([sys.executable, str(script), "--processes", "2",
                           *_smoke_args(lm_dir, problem_files, tmp_path / "run")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and time.time() - start < 120
    assert "ZeroDivisionError" in done.stderr
    assert "error: process 1 of 2 failed" in done.stderr and "--resume" in done.stderr


def test_an_existing_run_is_never_overwritten(lm_dir, problem_files, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match="already holds a run"):
        train.main(_smoke_args(lm_dir, problem_files, out))
    assert (out / "config.json").read_text() == "{}"


@pytest.mark.slow
def test_resumed_run_matches_an_uninterrupted_one(lm_dir, problem_files, tmp_path,
                                                 interrupted_then_resumed):
    # tau -1 with a window of 1 promotes at every step, so the resumed state holds a promotion.
    args = ["--methods", "soar_ps,soar_pq", "--outer-steps", "2", "--ma-window", "1", "--tau", "-1",
            "--promotion-extra-steps", "1", "--reward", "shaped"]
    train.main(_smoke_args(lm_dir, problem_files, tmp_path / "full", *args))
    interrupted_then_resumed(_smoke_args(lm_dir, problem_files, tmp_path / "cut", *args),
                             tmp_path / "cut")

    def comparable(run):
        rows = read_jsonl(tmp_path / run / "seed0" / "soar" / "metrics.jsonl")
        return [{k: v for k, v in r.items() if k != "times"} for r in rows]

    assert [r["step"] for r in comparable("cut")] == [0, 1]
    assert comparable("cut")[0]["promoted"]
    assert comparable("cut") == comparable("full")
    full = json.loads((tmp_path / "full" / "summary.json").read_text())["pass_at_k"]
    cut = json.loads((tmp_path / "cut" / "summary.json").read_text())["pass_at_k"]
    assert cut == full


@pytest.mark.slow
def test_a_run_interrupted_in_the_middle_of_a_fresh_student_resumes_to_the_same_results(
        lm_dir, problem_files, tmp_path, monkeypatch):
    # 3 steps of Hard-Only's fresh student; the interrupt comes once its first step is saved.
    # Groups of 4 and the shaped reward give every step a signal, so every step updates.
    args = ["--methods", "hard_only", "--fresh-steps", "3", "--group-size", "4", "--reward", "shaped"]
    train.main(_smoke_args(lm_dir, problem_files, tmp_path / "full", *args))
    out = tmp_path / "cut"
    job = out / "seed0" / "hard_only"
    real_save = evaluate.atomic_save  # the fresh students' checkpoints are evaluate.py's

    def save_then_interrupt(obj, path):
        real_save(obj, path)
        if path == job / "checkpoint.pt":
            raise KeyboardInterrupt
    monkeypatch.setattr(evaluate, "atomic_save", save_then_interrupt)
    with pytest.raises(SystemExit, match="--resume"):
        train.main(_smoke_args(lm_dir, problem_files, out, *args))
    monkeypatch.setattr(evaluate, "atomic_save", real_save)
    assert len(read_jsonl(job / "metrics.jsonl")) == 1 and not (job / "result.json").exists()
    train.main(["--resume", str(out)])
    full = comparable_run(tmp_path / "full")
    assert [r["update"] for r in full["logs"]["seed0/hard_only/metrics.jsonl"]] == ["applied"] * 3
    assert comparable_run(out) == full
    # the final student itself: a resume that lost AdamW's moments (or the schedule) moves the
    # weights by less than a sampled token would show
    ends = [load_checkpoint(run / "seed0" / "hard_only" / "checkpoint.pt")
            for run in (tmp_path / "full", out)]
    assert ends[0]["step"] == ends[1]["step"] == 3
    for name, weights in ends[0]["student"].items():  # a resume repeats the same float operations
        torch.testing.assert_close(ends[1]["student"][name], weights, atol=1e-8, rtol=1e-6)


@pytest.mark.slow
def test_sigkill_mid_run_loses_at_most_the_step_in_progress(lm_dir, problem_files, tmp_path):
    args = ["--methods", "soar_ps,soar_pq", "--outer-steps", "3", "--reward", "shaped"]
    train.main(_smoke_args(lm_dir, problem_files, tmp_path / "full", *args))
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), *_smoke_args(lm_dir, problem_files, out, *args)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = out / "seed0" / "soar" / "metrics.jsonl"
    deadline = time.time() + 240
    def lines_logged():
        return metrics.read_text().count("\n") if metrics.exists() else 0

    while time.time() < deadline and lines_logged() < 1:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert lines_logged() >= 1, "the run never got through a step"
    # the kill landed mid-run: steps were left to do and nothing was summed up
    assert lines_logged() < 3 and not (out / "summary.json").exists(), \
        "the run finished before it could be killed"
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "--resume", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [r["step"] for r in read_jsonl(metrics)] == [0, 1, 2]
    assert comparable_run(out) == comparable_run(tmp_path / "full")


@pytest.mark.slow
def test_corrupt_checkpoint_is_named_and_left_in_place(lm_dir, problem_files, tmp_path):
    out = tmp_path / "run"
    train.main(_smoke_args(lm_dir, problem_files, out, "--methods", "soar_ps,soar_pq", "--outer-steps", "1"))
    checkpoint = out / "seed0" / "soar" / "checkpoint.pt"
    checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="checkpoint .*checkpoint.pt is corrupt"):
        train.main(["--resume", str(out)])
    assert checkpoint.read_bytes() == b"not a checkpoint"


def test_resume_of_a_folder_without_a_run_says_so(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_config(["--resume", str(tmp_path)])
    assert "cannot read" in capsys.readouterr().err


def test_unwritable_output_fails_with_a_message(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SystemExit, match="is not writable"):
        prepare_run_dir(blocker / "run")  # a folder under a file can never be made
