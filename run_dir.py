"""The run directory on disk: JSONL logs, atomic files and checkpoints, resume repair, RNG state,
the optional TensorBoard / W&B mirrors of the metrics, and `timed`, the per-phase seconds every
metrics row carries.

One JSONL contract for every log the project writes (train.py's metrics and questions, the fail@k
builder's results, the report's inputs): one JSON object per line, appended and flushed as it
comes. `read_jsonl` is strict and names the file and line of anything malformed. A kill can tear
only the line being written, the last one; `keep_complete_rows` is how a resuming job drops it
(and the rows it wants redone) before appending again.

One process writes the run directory: in the others `write_nothing()` makes every write here a
no-op, so the code that runs on every process can call them all the same.
"""
import json
import os
import time
from pathlib import Path

import torch


_writing = True


def write_nothing() -> None:
    """From now on every write of this module does nothing in this process."""
    global _writing
    _writing = False


def writable(path: Path) -> bool:
    """Whether this process writes; if so, the file's folder exists."""
    if _writing:
        path.parent.mkdir(parents=True, exist_ok=True)
    return _writing


# ---- JSONL --------------------------------------------------------------------------------------

def to_line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def append_jsonl(path: Path, row: dict) -> None:
    if not writable(path):
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(to_line(row))
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict]:
    """Every row of a JSONL file ([] if there is none); a malformed line is an error naming it."""
    return parse_jsonl(path, path.read_text(encoding="utf-8")) if path.exists() else []


def complete_rows(path: Path) -> list[dict]:
    """The rows of a log a job appends to, less a last line torn by a kill (every line is
    written whole with its newline, so a torn one is a last line without its newline)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    return parse_jsonl(path, text[:text.rfind("\n") + 1])


def parse_jsonl(path: Path, text: str) -> list[dict]:
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: malformed JSON line: {e}") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows) -> None:
    atomic_write_text(path, "".join(to_line(r) for r in rows))


def keep_complete_rows(path: Path, keep) -> list[dict]:
    """Rewrite a log with only its complete rows for which keep(row) holds; returns them."""
    rows = [r for r in complete_rows(path) if keep(r)]
    if path.exists():
        write_jsonl(path, rows)
    return rows


def forget_unfinished_steps(job: Path, steps_done: int) -> None:
    """Drop log lines of steps that were logged but never checkpointed (killed in between),
    including a last line torn by the kill."""
    for name in ("metrics.jsonl", "questions.jsonl", "policy_questions.jsonl"):
        keep_complete_rows(job / name, lambda r: r["step"] < steps_done)


# ---- atomic files and checkpoints ---------------------------------------------------------------

def atomic_write_text(path: Path, text: str) -> None:
    """Write then rename: a kill at any moment leaves the old file or the new one, never half."""
    if not writable(path):
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def atomic_save(obj, path: Path) -> None:
    if not writable(path):
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path):
    if not path.exists():
        return None
    try:
        return torch.load(path, weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise SystemExit(f"error: checkpoint {path} is corrupt ({type(e).__name__}: {e}); "
                         "delete it to restart that part of the run") from None


def prepare_run_dir(run_dir: Path) -> None:
    """A new run needs an empty (or new) directory we can write to; never overwrite a run."""
    if (run_dir / "config.json").exists():
        raise SystemExit(f"error: {run_dir} already holds a run; continue it with "
                         f"`python train.py --resume {run_dir}` or choose another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise SystemExit(f"error: --out {run_dir} is not writable ({e.strerror})") from None


# ---- mirrors of metrics.jsonl -------------------------------------------------------------------

def scalars(row: dict, prefix: str = ""):
    """(name, value) of every number in a metrics row, nested dicts flattened with '/'."""
    for key, value in row.items():
        if isinstance(value, dict):
            yield from scalars(value, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) or key == "promoted":
            yield prefix + key, float(value)


def external_logger(kind: str, run_dir: Path, config: dict):
    """A mirror of metrics.jsonl in TensorBoard or Weights & Biases (kind "none": no mirror).
    Returns log(job, row). Both packages are optional, so they are imported only when asked for."""
    if kind == "tensorboard":
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise SystemExit("error: --log tensorboard needs `pip install tensorboard`") from None
        writer = SummaryWriter(str(run_dir / "tensorboard"))

        def log(job, row):
            for key, value in scalars(row):
                writer.add_scalar(f"{job}/{key}", value, row["step"])
            writer.flush()
        return log
    if kind == "wandb":
        try:
            import wandb
        except ImportError:
            raise SystemExit("error: --log wandb needs `pip install wandb`") from None
        wandb.init(project="soar", name=run_dir.name, dir=str(run_dir), config=config)
        return lambda job, row: wandb.log({f"{job}/{k}": v for k, v in scalars(row)})
    return lambda job, row: None


class timed:
    """`with timed(times, "train"):` adds the block's wall-clock seconds to times["train"]."""

    def __init__(self, times: dict, key: str):
        self.times, self.key = times, key

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        self.times[self.key] = self.times.get(self.key, 0.0) + time.perf_counter() - self.start
