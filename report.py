"""The report of a run, rewritten from its run directory at any point of the run.

    python report.py RUN_DIR                   # plots and report.md (and summary.json's table)
    python report.py --pool OUT RUN_DIR ...    # runs of the same flags at other seeds, as one
    python report.py --paired TEST CONTROL     # a run against its control, seed by seed, and a plot

The statistics and plots themselves live in summary.py, which train.py also calls at the end of
a run.
"""
import json
import sys
from pathlib import Path

from summary import paired_with_control, print_summary, summarize, write_against_control, write_report

USAGE = ("usage: python report.py RUN_DIR\n"
         "       python report.py --pool OUT RUN_DIR...   (runs of the same flags at other seeds: "
         "their summary over all seeds, in OUT/summary.json)\n"
         "       python report.py --paired TEST CONTROL   (a run against its control at the same "
         "seeds, in TEST/paired_with_CONTROL.json and TEST/against_CONTROL.png)")


def pool(out: Path, run_dirs: list[Path]) -> Path:
    summary = summarize(*run_dirs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print_summary(summary)
    return out / "summary.json"


def paired(test: Path, control: Path) -> tuple[Path, Path]:
    """Test minus control per seed: SOAR's teacher's trends and Grounded-T's pass@k."""
    result = paired_with_control(test, control)
    print(f"{test} - {control}, paired by seed {result['seeds']}: mean [95% t interval] (seeds test > control)")
    for name, row in [*result["teacher_trends"].items(),
                      *((f"grounded_t pass@{k}", v) for k, v in result.get("grounded_t pass@k", {}).items())]:
        low, high = row["ci95"]
        print(f"  {name:34s} {row['mean']:+.4f} [{low:+.4f}, {high:+.4f}] ({row['wins']}/{row['n_seeds']})")
    out = test / f"paired_with_{control.name}.json"
    out.write_text(json.dumps(result, indent=1))
    return out, write_against_control(test, control)


def main(args: list[str]) -> None:
    if not (len(args) == 1 or (len(args) >= 3 and args[0] == "--pool")
            or (len(args) == 3 and args[0] == "--paired")):
        sys.exit(USAGE)
    try:
        if args[0] == "--paired":
            written = paired(Path(args[1]), Path(args[2]))
        else:
            written = (write_report(Path(args[0])) if len(args) == 1
                       else [pool(Path(args[1]), [Path(a) for a in args[2:]])])
        for path in written:
            print(path)
    except (OSError, ValueError) as e:
        sys.exit(f"report: {e}")


if __name__ == "__main__":
    main(sys.argv[1:])
