"""Shared test fixtures: the repo on sys.path, and a small pretrained model of the tiny world.

The model is the tiny world's own build at toy size (a few hundred steps), cached like the real
one, so tests exercise the same `from_pretrained` path as `python train.py`.
"""
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
# Never ask the hub: a test then loads the same weights (the local cache, or --model smol's
# converted GGUF) whether or not this machine is online, and no test waits on a network.
# Set before any test module imports huggingface_hub, which reads it once.
os.environ["HF_HUB_OFFLINE"] = "1"

TEST_BUILD_OVERRIDES = dict(steps=250, batch_size=32, hidden_size=64, intermediate_size=192,
                            num_hidden_layers=2)


@pytest.fixture(scope="session")
def lm_dir() -> Path:
    """HF-format directory of a toy-size tiny-world model (built once per machine)."""
    from tiny.model import BUILD, built_model_dir
    return built_model_dir(0, {**BUILD, **TEST_BUILD_OVERRIDES}, progress=False)


@pytest.fixture(scope="session")
def problem_files(tmp_path_factory) -> tuple[Path, Path]:
    """Hard train / test JSONL files of tiny-world problems (for loop tests, not a real hard set)."""
    from tiny.world import generate_problems
    d = tmp_path_factory.mktemp("problems")
    paths = d / "hard_train.jsonl", d / "hard_test.jsonl"
    for path, seed in zip(paths, (1, 2)):
        rows = generate_problems(8, 3, seed)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


@pytest.fixture
def interrupted_then_resumed(monkeypatch):
    """run(argv, out): `train.py argv --out out` stopped by Ctrl-C once its first outer step is
    logged, then continued with `--resume out`."""
    import train

    def run(argv: list[str], out: Path) -> None:
        original_log_step = train.log_step

        def interrupt_after_step_0(row, bar):
            original_log_step(row, bar)
            if row["step"] == 0:
                raise KeyboardInterrupt
        monkeypatch.setattr(train, "log_step", interrupt_after_step_0)
        with pytest.raises(SystemExit, match="--resume"):
            train.main([*argv, "--out", str(out)])
        monkeypatch.setattr(train, "log_step", original_log_step)
        train.main(["--resume", str(out)])
    return run
