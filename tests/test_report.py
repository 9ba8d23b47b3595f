"""report.py on synthetic run directories that follow the metrics.jsonl / summary.json contract."""
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from summary import KS, paired_with_control, summarize, write_report

ROOT = Path(__file__).resolve().parents[1]
PLOTS = ["teacher_reward.png", "hard_train_acc.png", "valid_rate.png", "diversity.png",
         "quality.png", "teacher_learning.png", "pass_at_k.png"]


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def teacher_rows(method, seed, steps, rng):
    rows, window, n_promotions = [], [], 0
    for step in range(steps):
        collapse = step / steps if method == "intrinsic_t" else 0.0
        center = 0.3 + 0.4 * collapse if method == "intrinsic_t" else 0.004 + 0.0006 * step
        rewards = [rng.gauss(center, 0.02) for _ in range(4)]
        window = (window + [sum(rewards) / 4])[-3:]
        promoted = method == "soar" and sum(window) / len(window) > 0.01 and step % 4 == 3
        n_promotions += promoted
        rows.append({
            "method": method, "seed": seed, "step": step, "dataset_rewards": rewards,
            "mean_reward": window[-1], "moving_avg": sum(window) / len(window),
            "promoted": promoted, "promoted_dataset": 1 if promoted else None,
            "n_promotions": n_promotions, "n_promoted_questions": 16 * n_promotions,
            "baseline_acc": 0.02 + 0.01 * n_promotions,
            "valid_rate": min(1, rng.uniform(0.5, 0.7) + 0.01 * step),
            "teacher_loss": rng.random(),
            "diversity": {"distinct": rng.uniform(0.85, 0.95) - 0.6 * collapse,
                          "ngram_entropy": rng.uniform(5, 5.3) - 2 * collapse,
                          "vendi": rng.uniform(20, 30) - 15 * collapse},
            "quality": {"well_posed": rng.uniform(0.6, 0.7) + 0.2 * collapse,
                        "correct": rng.uniform(0.3, 0.4) + 0.2 * collapse,
                        "quick": rng.uniform(0.4, 0.6), "stepping_stone": 0.1 + 0.01 * step},
            "times": {"teacher_sample": 1.0, "student_sample": 4.0, "check": 0.3, "train": 3.0},
            "sample_question": "What is 2+3?", "sample_answer": "5"})
    return rows


def make_run(root, *, seeds=2, steps=12, methods=("soar", "intrinsic_t", "hard_only"),
             summary=True):
    rng = random.Random(0)
    (root / "config.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"tau": 0.01, "seeds": seeds, "g": 4, "n": 16}))
    for seed in range(seeds):
        for method in methods:
            path = root / f"seed{seed}" / method / "metrics.jsonl"
            if method == "hard_only":
                write_jsonl(path, [{"method": method, "seed": seed, "step": s, "train_reward": 0.0,
                                    "hard_train_acc": 0.01 * (rng.random() < 0.2), "times": {}}
                                   for s in range(steps * 2)])
            else:
                write_jsonl(path, teacher_rows(method, seed, steps, rng))
        write_jsonl(root / f"seed{seed}" / "soar" / "promoted_questions.jsonl",
                    [{"problem": f"Compute {a} * ({a} + 7) - 3 | step by step.",
                      "answer": str(a * (a + 7) - 3), "step": 3 + a % 4} for a in range(32)])
    if summary:
        pass_at_k = {m: {k: {"mean": base * (1 - math.exp(-int(k) / 12)), "sd": 0.01 * base * 10,
                             "n_seeds": seeds} for k in ("1", "4", "8", "16", "32")}
                     for m, base in [("base", 0.06), ("hard_only", 0.08), ("soar_ps", 0.15),
                                     ("soar_pq", 0.18), ("intrinsic_t", 0.12)]}
        def stat(mean, sd):  # what train.question_analysis writes: a statistic over seeds
            return {"mean": mean, "sd": sd, "n_seeds": seeds}
        analysis = {"soar_pq": {"well_posed": stat(0.65, 0.05), "correct": stat(0.33, 0.1),
                                "n": stat(128, 0.0)},
                    "intrinsic_t": {"well_posed": stat(0.8, 0.02), "correct": stat(0.55, 0.1),
                                    "n": stat(128, 0.0)}}
        analysis["base_t"] = {"stepping_stone": stat(0.12, 0.02), "quick": stat(0.5, 0.05)}
        paired = {"soar_pq - hard_only": {k: {"mean": 0.1, "sd": 0.02, "n_seeds": seeds,
                                              "ci95": [0.05, 0.15], "wins": seeds} for k in KS}}
        (root / "summary.json").write_text(json.dumps(
            {"pass_at_k": pass_at_k, "paired_differences": paired, "question_analysis": analysis,
             "config": {}}))
    return root


def test_full_run_writes_every_plot_and_the_tables(tmp_path):
    paths = write_report(make_run(tmp_path))
    assert sorted(p.name for p in paths) == sorted(PLOTS + ["report.md"])
    for name in PLOTS:
        assert (tmp_path / name).stat().st_size > 10_000
    md = (tmp_path / "report.md").read_text()
    assert "| SOAR-PQ | 1.4 ± 1.8 |" in md  # 0.18 * (1 - e^(-1/12)) = 1.4 %
    assert "| Hard-Only |" in md and "| Intrinsic-T | " in md and "| 2 |" in md
    assert "| SOAR-PQ | 0.65 ± 0.05 | 0.33 ± 0.1 | 128 ± 0 |" in md
    assert "![Teacher reward](teacher_reward.png)" in md
    assert "| soar_pq - hard_only | +10.0 [+5.0, +15.0], 2/2 |" in md
    assert "Compute 0 * (0 + 7) - 3" in md and "**seed1**" in md
    assert "Skipped" not in md and "Unfinished" not in md


def test_unfinished_run_without_summary_still_reports(tmp_path):
    paths = write_report(make_run(tmp_path, methods=("soar",), steps=3, summary=False))
    md = (tmp_path / "report.md").read_text()
    assert "Unfinished run" in md
    assert {p.name for p in paths} == set(PLOTS + ["report.md"]) - {"pass_at_k.png"}
    assert "_Skipped: this run has no pass_at_k in summary.json yet._" in md


def test_run_with_no_metrics_yet_reports_every_plot_skipped(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert write_report(tmp_path) == [tmp_path / "report.md"]
    assert (tmp_path / "report.md").read_text().count("Skipped") == len(PLOTS)


def test_malformed_metrics_line_names_file_and_line(tmp_path):
    make_run(tmp_path, seeds=1, steps=3)
    path = tmp_path / "seed0" / "soar" / "metrics.jsonl"
    path.write_text(path.read_text() + '{"step": 3, "mean_rew\n')
    with pytest.raises(ValueError, match=rf"{path}:4: malformed JSON line"):
        write_report(tmp_path)


def test_cli_exits_nonzero_with_one_line_for_a_non_run_dir(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "report.py"), str(tmp_path)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr.strip() == f"report: {tmp_path}/config.json not found: not a run directory"


@pytest.mark.parametrize("name", ["kl_s11", "kl_shuffled_s11", "replication", "replication_control"])
def test_the_committed_teacher_learns_runs_hold_what_a_reader_needs_to_check_them(name):
    """docs/runs/*: the flags that made it, on at most 2 processes, every seed's teacher log
    complete and every fresh student's result, so that its whole summary can be recomputed and
    its first steps re-run."""
    run = ROOT / "docs" / "runs" / name
    summary = json.loads((run / "summary.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert summary["run"]["processes"] <= 2 and summary["run"]["wall_seconds"] > 0
    argv = summary["run"]["argv"]  # the flags, or a resume that took them from config.json
    assert summary["run"]["cpus"] >= 1 and ("--outer-steps" in argv or argv[:1] == ["--resume"])
    seeds = range(config["seed"], config["seed"] + config["seeds"])
    assert len(seeds) >= 3
    for seed in seeds:
        rows = [json.loads(line) for line in (run / f"seed{seed}" / "soar" / "metrics.jsonl").open()]
        assert [r["step"] for r in rows] == list(range(config["outer_steps"]))
    recomputed = json.loads(json.dumps(summarize(run)))  # JSON's keys and floats, as written
    assert recomputed == {key: value for key, value in summary.items() if key != "run"}


def make_seeds(run, first, rises, **flags):
    """A run of seeds first, first+1, ... whose SOAR teacher's policy stepping-stone share rises
    by rises[i] a step in seed first+i."""
    config = {"model": "tiny", "seed": first, "seeds": len(rises), "out": str(run), "g": 6, **flags}
    (run / "config.json").parent.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps(config))
    for seed, rise in enumerate(rises, first):
        write_jsonl(run / f"seed{seed}" / "soar" / "metrics.jsonl",
                    [{"step": t, "policy_quality": {"stepping_stone": 0.1 + rise * t}} for t in range(6)])
    return run


def test_runs_of_the_same_flags_at_other_seeds_pool_into_one_summary(tmp_path):
    first = make_seeds(tmp_path / "a", 0, [0.001, 0.002, 0.003])
    second = make_seeds(tmp_path / "b", 3, [0.004, 0.005])
    summary = summarize(first, second)
    trend = summary["teacher_trends"]["soar"]["policy stepping_stone / 10 steps"]
    assert trend["n_seeds"] == 5 and trend["mean"] == pytest.approx(0.03)
    assert summary["runs"] == {str(first): [0, 1, 2], str(second): [3, 4]}
    alone = summarize(first)["teacher_trends"]["soar"]["policy stepping_stone / 10 steps"]
    assert alone["n_seeds"] == 3 and alone["mean"] == pytest.approx(0.02)


def test_pooling_refuses_runs_whose_flags_differ_or_whose_seeds_repeat(tmp_path):
    first = make_seeds(tmp_path / "a", 0, [0.001, 0.002])
    other_flags = make_seeds(tmp_path / "b", 2, [0.001], g=8)
    with pytest.raises(ValueError, match=r"b: its flags differ from .*a's \(g\)"):
        summarize(first, other_flags)
    same_seed = make_seeds(tmp_path / "c", 1, [0.001])
    with pytest.raises(ValueError, match=r"c: seed 1 is also in .*a$"):
        summarize(first, same_seed)


def test_cli_pools_runs_into_a_summary_and_prints_the_teachers_trends(tmp_path):
    runs = [make_seeds(tmp_path / "a", 0, [0.001, 0.002]), make_seeds(tmp_path / "b", 2, [0.003])]
    out = tmp_path / "pooled"
    result = subprocess.run([sys.executable, str(ROOT / "report.py"), "--pool", str(out), *map(str, runs)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "summary.json").read_text())["runs"] == {str(runs[0]): [0, 1], str(runs[1]): [2]}
    assert "soar teacher, change per 10 outer steps" in result.stdout
    assert "policy stepping_stone       +0.0200 [" in result.stdout and "(3 seeds)" in result.stdout
    no_runs = subprocess.run([sys.executable, str(ROOT / "report.py"), "--pool", str(out)],
                             capture_output=True, text=True, cwd=ROOT)
    assert no_runs.returncode == 1 and no_runs.stderr.startswith("usage: python report.py RUN_DIR")


def test_a_run_against_its_control_is_the_per_seed_difference_of_slopes(tmp_path):
    test = make_seeds(tmp_path / "test", 5, [0.004, 0.001, 0.006])
    control = make_seeds(tmp_path / "control", 5, [0.001, 0.002, 0.001, 0.009])  # seed 8: no pair
    paired = paired_with_control(test, control)
    trend = paired["teacher_trends"]["policy stepping_stone / 10 steps"]
    assert paired["seeds"] == [5, 6, 7] and trend["n_seeds"] == 3 and trend["wins"] == 2
    assert trend["per_seed"] == pytest.approx({5: 0.03, 6: -0.01, 7: 0.05})
    assert trend["mean"] == pytest.approx(0.07 / 3)
    assert "grounded_t pass@k" not in paired  # neither run evaluated Grounded-T


def test_a_methods_row_is_the_mean_of_its_fresh_students(tmp_path):
    from summary import read_results
    for job, p in (("base_t", 0.1), ("base_t.1", 0.4), ("base_t.2", 0.7), ("base_t.3", 0.9)):
        (tmp_path / job).mkdir()
        (tmp_path / job / "result.json").write_text(json.dumps({"pass_at_k": {"1": p, "4": p / 2}}))
    results = read_results(tmp_path, students=3)  # a 4th student's folder is not this run's
    assert results["base_t"]["pass_at_k"] == pytest.approx({"1": 0.4, "4": 0.2})
    assert [s["1"] for s in results["base_t"]["students"]] == [0.1, 0.4, 0.7]


def test_two_runs_are_the_same_run_when_only_their_times_differ(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    from compare_runs import TIMES, differences
    for name, (reward, seconds) in {"a": (0.5, 1.0), "b": (0.5, 9.0), "c": (0.25, 1.0)}.items():
        write_jsonl(tmp_path / name / "seed0" / "soar" / "metrics.jsonl",
                    [{"step": 0, "mean_reward": reward, "times": {"train": seconds}}])
    assert differences(tmp_path / "a", tmp_path / "b", TIMES) == []
    assert differences(tmp_path / "a", tmp_path / "c", TIMES) == ["differs: seed0/soar/metrics.jsonl"]
    (tmp_path / "c" / "extra.json").write_text("{}")
    assert f"only in {tmp_path / 'c'}: extra.json" in differences(tmp_path / "a", tmp_path / "c", TIMES)


def test_the_cli_writes_a_run_against_its_control_and_plots_both_teachers(tmp_path):
    test = make_seeds(tmp_path / "test", 5, [0.004, 0.001, 0.006])
    control = make_seeds(tmp_path / "control", 5, [0.001, 0.002, 0.001])
    result = subprocess.run([sys.executable, str(ROOT / "report.py"), "--paired", str(test), str(control)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "policy stepping_stone" in result.stdout and "(2/3)" in result.stdout
    written = json.loads((test / "paired_with_control.json").read_text())
    assert written["seeds"] == [5, 6, 7]
    assert (test / "against_control.png").stat().st_size > 10_000
