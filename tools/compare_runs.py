"""Whether two run directories hold the same run: every JSON and JSONL file compared, apart from
wall-clock fields, and the files only one of them has.

    python tools/compare_runs.py BEFORE AFTER [FIELD ...]   # FIELDs: more keys to ignore

How a change that should not change behaviour is shown not to: the same command (`python
train.py --smoke --out ...`, or a short real run) before and after it, then this. Checkpoints,
weights, plots and report.md are skipped (their bytes carry times or pickling order); the
adapters' weights are covered by the metrics they produce. Exits 1 when anything differs.
"""
import json
import sys
from pathlib import Path

TIMES = {"times", "wall_seconds", "build_seconds"}
SKIPPED = {".pt", ".safetensors", ".png", ".md"}


def without(value, ignored: set):
    if isinstance(value, dict):
        return {k: without(v, ignored) for k, v in value.items() if k not in ignored}
    if isinstance(value, list):
        return [without(v, ignored) for v in value]
    return value


def load(path: Path, ignored: set):
    if path.suffix == ".jsonl":
        return [without(json.loads(line), ignored) for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".json":
        return without(json.loads(path.read_text()), ignored)
    return path.read_bytes()


def differences(before: Path, after: Path, ignored: set) -> list[str]:
    files = [{p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.suffix not in SKIPPED}
             for root in (before, after)]
    out = [f"only in {root}: {name}" for root, names, other in ((before, *files), (after, *files[::-1]))
           for name in sorted(names - other)]
    for name in sorted(files[0] & files[1]):
        a, b = load(before / name, ignored), load(after / name, ignored)
        if a != b:
            keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k)) if isinstance(a, dict) else []
            out.append(f"differs: {name}" + (f" ({', '.join(keys)})" if keys else ""))
    return out


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__.split("\n\n")[1])
    found = differences(Path(sys.argv[1]), Path(sys.argv[2]), TIMES | set(sys.argv[3:]))
    print("\n".join(found) or "the same run, apart from times")
    sys.exit(1 if found else 0)
