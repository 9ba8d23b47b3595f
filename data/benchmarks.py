"""Problem sets as rows {"problem": str, "answer": str, ...the source's other fields}.

`load_problems` reads a local JSONL / JSON / Parquet file (field names settable), or one of the
paper's benchmarks by name, downloaded once and read from the local cache afterwards:

| name            | source                                                   | answer                     |
| --------------- | -------------------------------------------------------- | -------------------------- |
| `math`          | hub dataset `EleutherAI/hendrycks_math` (7 subject configs; MATH, Hendrycks et al.); split `test` (5000, the paper's pool) or `train` (7500) | last `\\boxed{}` of `solution` |
| `math500`       | hub dataset `HuggingFaceH4/MATH-500` (`test.jsonl`)      | `answer`                   |
| `harp`          | `HARP.jsonl.zip` of github.com/aadityasingh/HARP (HARP, Yue et al. 2024; not on the hub) | `answer` |
| `olympiadbench` | hub dataset `Hothan/OlympiadBench`, config `OE_TO_maths_en_COMP` (open-ended, text-only, maths, English) | `final_answer` (several joined by ", ") |

Parquet needs `pyarrow` (`pip install pyarrow`), imported only when a Parquet file is read. An unreachable hub fails within seconds with a
message saying how to pass a local file instead. A bad file fails naming the file and line.
"""
import json
import os
import urllib.request
import zipfile
from pathlib import Path

import huggingface_hub

from rewards import extract_boxed

HUB = {"math": "EleutherAI/hendrycks_math", "math500": "HuggingFaceH4/MATH-500",
       "olympiadbench": "Hothan/OlympiadBench"}
HARP_URL = "https://github.com/aadityasingh/HARP/raw/main/HARP.jsonl.zip"
OLYMPIAD_CONFIG = "OE_TO_maths_en_COMP"
BENCHMARKS = ("math", "math500", "harp", "olympiadbench")


class ProblemFileError(ValueError):
    pass


class BenchmarkUnavailable(RuntimeError):
    pass


def load_problems(path_or_name: str, *, problem_field: str = "problem", answer_field: str = "answer",
                  split: str | None = None) -> list[dict]:
    """Rows of a local file, or of a known benchmark (math, math500, harp, olympiadbench).

    An answer that holds a worked solution (it contains \\boxed{}) is replaced by the content of its
    last box, so a MATH-format file loads with answer_field="solution"."""
    path = Path(path_or_name)
    if path.is_file():
        return read_rows(path, problem_field, answer_field)
    if path_or_name in BENCHMARKS:
        return {"math": load_math, "math500": load_math500, "harp": load_harp,
                "olympiadbench": load_olympiadbench}[path_or_name](split)
    if path.suffix or os.sep in path_or_name:
        raise FileNotFoundError(f"{path_or_name}: no such file")
    raise ValueError(f"{path_or_name!r} is neither a file nor a known benchmark ({', '.join(BENCHMARKS)})")


# ---- local files --------------------------------------------------------------------------------

def read_records(path: Path) -> list[tuple[str, object]]:
    """(where, record) pairs of a JSONL, JSON (a list), Parquet or zipped JSONL file."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return jsonl_records(path.read_text(encoding="utf-8").splitlines(), str(path))
    if suffix == ".zip":  # HARP ships as a zipped JSONL
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith(".jsonl") and not n.startswith("__MACOSX")]
            if len(names) != 1:
                raise ProblemFileError(f"{path}: expected one .jsonl inside the zip, found {names}")
            return jsonl_records(z.read(names[0]).decode("utf-8").splitlines(), f"{path}/{names[0]}")
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ProblemFileError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(data, list):
            raise ProblemFileError(f"{path}: a JSON file must hold a list of rows")
        return [(f"{path}: row {i}", record) for i, record in enumerate(data)]
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ProblemFileError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
        return [(f"{path}: row {i}", r) for i, r in enumerate(pq.read_table(path).to_pylist())]
    raise ProblemFileError(f"{path}: unknown format {suffix!r} (use .jsonl, .json, .parquet)")


def jsonl_records(lines: list[str], name: str) -> list[tuple[str, object]]:
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append((f"{name}:{number}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise ProblemFileError(f"{name}:{number}: not valid JSON ({e.msg})") from None
    return records


def answer_text(value) -> str | None:
    """The gold answer as text: numbers become text, lists are joined, solutions give their box."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        value = ", ".join(value)
    if not isinstance(value, str):
        return None
    if "\\boxed" in value or "\\fbox" in value:
        return extract_boxed(value)
    return value.strip() or None


def to_problem(where: str, record, problem_field: str, answer_field: str) -> dict:
    if not isinstance(record, dict):
        raise ProblemFileError(f"{where}: a row must be an object, got {type(record).__name__}")
    for field in (problem_field, answer_field):
        if field not in record:
            raise ProblemFileError(f"{where}: no field {field!r} (fields: {', '.join(record)}); "
                                   f"set the field names (problem_field / answer_field)")
    problem, answer = record[problem_field], answer_text(record[answer_field])
    if not isinstance(problem, str) or not problem.strip():
        raise ProblemFileError(f"{where}: field {problem_field!r} must be non-empty text")
    if answer is None:
        raise ProblemFileError(f"{where}: field {answer_field!r} holds no answer "
                               f"({str(record[answer_field])[:60]!r})")
    return {**record, "problem": problem, "answer": answer}


def read_rows(path: Path, problem_field: str = "problem", answer_field: str = "answer") -> list[dict]:
    rows = [to_problem(where, r, problem_field, answer_field) for where, r in read_records(path)]
    if not rows:
        raise ProblemFileError(f"{path}: no problems in the file")
    return rows


# ---- benchmarks ---------------------------------------------------------------------------------

def local_file_hint(name: str) -> str:
    return (f"or pass a local file instead of {name!r}: a .jsonl/.json/.parquet path with "
            f"'problem' and 'answer' fields (other names: --problem-field / --answer-field)")


def hub_snapshot(name: str, patterns: list[str]) -> Path:
    """Local folder of a hub dataset's files: from the cache, else downloaded; fails fast offline."""
    repo = HUB[name]
    try:
        return Path(huggingface_hub.snapshot_download(repo, repo_type="dataset", allow_patterns=patterns,
                                      local_files_only=True))
    except Exception:  # noqa: BLE001 (not cached yet)
        pass
    try:  # one short probe: the hub client itself retries an unreachable host for ~25 s
        huggingface_hub.HfApi().dataset_info(repo, timeout=5)
    except Exception as e:  # noqa: BLE001
        raise BenchmarkUnavailable(
            f"{name}: hub dataset {repo} is not cached and the Hugging Face hub is unreachable "
            f"({type(e).__name__}). Download it where there is internet "
            f"(`hf download {repo} --repo-type dataset`), {local_file_hint(name)}") from None
    return Path(huggingface_hub.snapshot_download(repo, repo_type="dataset", allow_patterns=patterns))


def snapshot_rows(folder: Path, pattern: str) -> list[tuple[str, object]]:
    files = sorted(folder.glob(pattern))
    if not files:
        raise BenchmarkUnavailable(f"{folder}: no files matching {pattern} (has the dataset moved?)")
    return [item for f in files for item in read_records(f)]


def load_math(split: str | None) -> list[dict]:
    split = split or "test"
    folder = hub_snapshot("math", [f"*/{split}-*.parquet"])
    return [to_problem(where, r, "problem", "solution")
            for where, r in snapshot_rows(folder, f"*/{split}-*.parquet")]


def load_math500(split: str | None) -> list[dict]:
    if split not in (None, "test"):
        raise ValueError(f"math500 has only a test split, not {split!r}")
    return read_rows(hub_snapshot("math500", ["test.jsonl"]) / "test.jsonl")


def load_olympiadbench(split: str | None) -> list[dict]:
    folder = hub_snapshot("olympiadbench", [f"{OLYMPIAD_CONFIG}/*"])
    records = snapshot_rows(folder, f"{OLYMPIAD_CONFIG}/{split or ''}*.parquet")
    # Rows without a final answer (proof-style leftovers) cannot be auto-verified.
    return [to_problem(where, r, "question", "final_answer") for where, r in records
            if answer_text(r.get("final_answer")) is not None]


def load_harp(split: str | None) -> list[dict]:
    if split not in (None, "test"):
        raise ValueError(f"harp has one split (its 4780 short-answer problems), not {split!r}")
    cache = Path(os.environ.get("SOAR_CACHE", Path.home() / ".cache" / "soar")) / "HARP.jsonl.zip"
    if not cache.exists():
        try:
            with urllib.request.urlopen(HARP_URL, timeout=10) as response:
                data = response.read()
        except OSError as e:
            raise BenchmarkUnavailable(
                f"harp: cannot download {HARP_URL} ({e}). Fetch it where there is internet and "
                f"put it at {cache}, {local_file_hint('harp')}") from None
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(data)
    return read_rows(cache)
