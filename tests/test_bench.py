"""bench.py end to end on a small random model: the table comes out whatever the comparisons do."""
import pytest

import bench

pytestmark = pytest.mark.slow  # bench.py end to end: over a minute a test on 2 CPU cores


def run_bench(capsys, *extra):
    bench.main(["--model", "random", "--prompts", "2", "--group", "2", "--max-new-tokens", "8",
                "--greedy-tokens", "4", "--repeats", "1", "--greedy-repeats", "1", *extra])
    return capsys.readouterr().out


def test_bench_prints_every_row_and_its_verdicts(capsys):
    out = run_bench(capsys, "--skip-trl")
    for row in ("greedy 2x1, generate", "greedy 2x1, sampler", "rollouts 2x2 T=1, sampler",
                "RLOO step 2x2, ours"):
        assert row in out
    assert "greedy outputs identical to generate: True" in out
    assert "answers" in out and "peak RSS" in out


def test_a_failing_trl_comparison_still_prints_the_table(capsys, monkeypatch):
    def broken(*args):
        raise OSError("no such model")
    monkeypatch.setattr(bench, "bench_trl_rloo", broken)
    out = run_bench(capsys)
    assert "TRL RLOOTrainer" in out and "failed: OSError: no such model" in out
    assert "RLOO step 2x2, ours" in out


# ---- --gpu-check --------------------------------------------------------------------------------

import json  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import gpu_check  # noqa: E402

MEASURED = ("peak, student training step, ", "peak, sampling (after)", "decode tok/s, eager decoder",
            "decode tok/s, static decoder, CUDA graphs", "outer step, projected")


def test_gpu_check_dry_run_prints_every_row_and_writes_them_to_json(capsys, tmp_path, lm_dir):
    # lm_dir: the toy tiny model the dry run's tiny-world step uses, built once for the suite
    path = tmp_path / "check.json"
    bench.main(["--gpu-check", "--dry-run", "--json", str(path)])
    out = capsys.readouterr().out
    report = json.loads(path.read_text())
    assert report["dry_run"] and report["weights"] in ("4-bit NF4", "bf16")
    rows = {(r["part"], r["what"]): r for r in report["rows"]}
    assert [r for r in report["rows"] if r["status"] != "ok"] == []
    for preset in ("small", "paper"):
        for what in MEASURED:
            assert any(p == preset and w.startswith(what) for p, w in rows), (preset, what)
        summary = report["summary"]["presets"][preset]
        assert summary["decode_tok_s"]["eager"] > 0 and summary["decode_tok_s"]["fast"] > 0
        assert summary["train_tok_s"]["before"] > 0
        if report["weights"] != "bf16":  # 4-bit before, bf16 after
            assert summary["train_tok_s"]["after"] > 0
    decode = [r for (p, w), r in rows.items() if p == "small" and w.startswith("decode tok/s")]
    assert all(r["values"]["bound_tokens_per_s"] > 0 and r["values"]["launches"] > 0 for r in decode)
    assert rows[("tiny world", "outer step, tiny preset")]["values"]["seconds"] > 0
    assert "DRY RUN" in out
    for part, what in rows:  # every row is in the printed table
        assert re.search(rf"\| {re.escape(part)} +\| {re.escape(what)} +\|", out), (part, what)
    assert set(report["part_seconds"]) == set(gpu_check.BUDGETS)


def test_a_failing_or_slow_part_becomes_a_row_and_the_next_part_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "BUDGETS", {"slow": 0.3, "oom": 5, "missing": 5, "fine": 5})
    check = gpu_check.Check(torch.device("cpu"), True, tmp_path / "check.json", tmp_path)

    def slow(c):
        c.doing = "waiting"
        time.sleep(5)

    def oom(c):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def missing(c):
        import math_verify_is_not_installed  # noqa: F401

    for name, fn in (("slow", slow), ("oom", oom), ("missing", missing),
                     ("fine", lambda c: c.add("fine", "a figure", "1 s"))):
        check.run(name, fn)
    assert check.part_seconds["slow"] < 2  # stopped at its 0.3 s budget, not after 5 s
    statuses = [(r.part, r.what, r.status) for r in check.rows]
    assert statuses == [("slow", "waiting", "timed out"), ("oom", "(starting)", "out of memory"),
                        ("missing", "(starting)", "missing package"), ("fine", "a figure", "ok")]
    assert "math_verify_is_not_installed" in check.rows[2].notes
    assert len(json.loads((tmp_path / "check.json").read_text())["rows"]) == 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_check_without_a_gpu_stops_at_once_and_says_why(tmp_path):
    with pytest.raises(SystemExit, match="needs a CUDA GPU.*--dry-run"):
        bench.main(["--gpu-check", "--json", str(tmp_path / "check.json")])
    assert not (tmp_path / "check.json").exists()


@pytest.mark.parametrize("argv, flag", [(["--dry-run"], "--dry-run"), (["--json", "x.json"], "--json"),
                                        (["--gpu-check", "--memory", "small"], "--memory")])
def test_gpu_check_flags_are_checked(capsys, argv, flag):
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert flag in capsys.readouterr().err


def test_the_model_configs_are_the_shapes_the_memory_prediction_used():
    for preset, name in gpu_check.PRESET_MODELS.items():
        config = gpu_check.model_config(preset, dry=False)
        for key, value in bench.TRUE_SIZES[preset][1].items():
            assert getattr(config, key) == value, (name, key)
