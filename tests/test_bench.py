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
