"""The run's summary and report, rebuilt from its run directory: what train.py writes at the end
of a run and `python report.py` writes at any point of one.

`summarize` reads a finished run's files (config.json, seed*/*/result.json, the teachers'
metrics.jsonl and the question sets) into summary.json's statistics over seeds: the pass@k
table, paired differences with t intervals, what the teachers wrote and how it changed.
train.py prints that table at the end of a run and writes summary.json; `write_report` reads it
and the metrics logs and writes PNG plots and report.md. Every plot is skipped, with a note in
report.md, when its data is absent (an unfinished run, a run without Intrinsic-T or Hard-Only),
so a report can be made at any point of a run. `summarize` of several runs whose flags differ
only in their seeds pools them as one run.
"""
import json
import math
import statistics
from pathlib import Path

import matplotlib
import mpmath  # sympy's own dependency: Student's t for the paired intervals

matplotlib.use("Agg")  # files only: no display on servers
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from config import METHOD_ORDER, METHODS, TEACHERS, student_jobs  # noqa: E402
from run_dir import read_jsonl  # noqa: E402
from teacher import question_diversity  # noqa: E402
from tiny.world import question_quality  # noqa: E402


def read_json(path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON: {e}") from None


def read_config(run_dir: Path) -> dict:
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir}/config.json not found: not a run directory")
    return read_json(run_dir / "config.json")


# ---- the summary: statistics over seeds, from the run directory ---------------------------------

# {name: (job, file)}: the question sets analysed; a teacher's sample is every fresh student's
QUESTION_SETS = {"soar_pq": ("soar", "promoted_questions.jsonl"),
                 "grounded_t": ("grounded_t", "sampled_questions.jsonl"),
                 "intrinsic_t": ("intrinsic_t", "sampled_questions.jsonl"),
                 "base_t": ("base_t", "sampled_questions.jsonl")}
# (a, b): is a better than b? The paper's comparisons, each measured seed by seed.
PAIRED = (("soar_pq", "hard_only"), ("soar_ps", "hard_only"), ("grounded_t", "base_t"),
          ("grounded_t", "intrinsic_t"), ("soar_pq", "base_t"), ("intrinsic_t", "base_t"))
# What a teacher writes, logged per outer step: (group, measure) of its metrics rows.
TREND_MEASURES = (("quality", "stepping_stone"), ("quality", "quick"), ("quality", "correct"),
                  ("diversity", "vendi"), ("policy_quality", "stepping_stone"),
                  ("policy_quality", "quick"), ("policy_quality", "correct"))


def summarize(*run_dirs: Path) -> dict:
    """summary.json of a finished run, from its files: the pass@k table, paired differences,
    question analysis (in the tiny world, graded by its exact checker) and teacher trends over
    the run's seeds, and its config. Given several runs of the same flags at other seeds, the
    same over all their seeds, with "runs": which seeds came from which run."""
    run_dirs = [Path(d) for d in run_dirs]
    config, seed_dirs = pooled_seeds(run_dirs)
    students = config.get("fresh_students", 1)
    quality = question_quality if config["model"] == "tiny" else None
    per_seed = {seed: read_results(seed_dir, students) for seed, seed_dir in seed_dirs.items()}
    summary = {"pass_at_k": pass_at_k_table(per_seed), "paired_differences": paired_differences(per_seed),
               "question_analysis": question_analysis(seed_dirs, quality, students),
               "teacher_trends": teacher_trends(seed_dirs), "config": config,
               "per_student": {m: per for m in METHODS
                               if (per := {s: r[m]["students"] for s, r in per_seed.items() if m in r})}}
    if len(run_dirs) > 1:
        summary["runs"] = {str(d): [s for s, sd in seed_dirs.items() if sd.parent == d] for d in run_dirs}
    return summary


# Settings that may differ between runs pooled as one: which seeds, and where they were written
POOLABLE = ("seed", "seeds", "out")


def pooled_seeds(run_dirs: list[Path]) -> tuple[dict, dict[int, Path]]:
    """(the config of the first run, {seed: its folder}) over runs of the same flags; a run whose
    other flags differ, or that repeats a seed, is an error that names it."""
    config, seed_dirs = None, {}
    for run_dir in run_dirs:
        own = read_config(run_dir)
        config = config or own
        differ = sorted(k for k in config.keys() | own.keys()
                        if k not in POOLABLE and config.get(k) != own.get(k))
        if differ:
            raise ValueError(f"{run_dir}: its flags differ from {run_dirs[0]}'s ({', '.join(differ)}); "
                             "only runs of the same flags pool")
        for seed in range(own["seed"], own["seed"] + own["seeds"]):
            if seed in seed_dirs:
                raise ValueError(f"{run_dir}: seed {seed} is also in {seed_dirs[seed].parent}")
            seed_dirs[seed] = run_dir / f"seed{seed}"
    return config, seed_dirs


def read_results(seed_dir: Path, students: int = 1) -> dict:
    """{method: {"pass_at_k": the mean over its fresh students, "students": each one's}} of the
    evaluated students of one seed that finished."""
    results = {}
    for method in METHODS:
        paths = [seed_dir / job / "result.json" for job in student_jobs(method, students)]
        done = [read_json(path)["pass_at_k"] for path in paths if path.is_file()]
        if done:
            results[method] = {"pass_at_k": {k: statistics.mean(d[k] for d in done) for k in done[0]},
                               "students": done}
    return results


def mean_sd(values: list[float]) -> dict:
    return {"mean": statistics.mean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0, "n_seeds": len(values)}


def pass_at_k_table(per_seed: dict[int, dict]) -> dict:
    """{method: {k: {"mean", "sd", "n_seeds"}}} over the seeds that have the method."""
    table = {}
    for method in METHODS:
        runs = [results[method]["pass_at_k"] for results in per_seed.values() if method in results]
        if runs:
            table[method] = {k: mean_sd([r[k] for r in runs]) for k in runs[0]}
    return table


def t_quantile(p: float, df: int) -> float:
    """Student's t quantile (p > 0.5), by bisection on its CDF."""
    def cdf(t):
        return 1 - mpmath.betainc(df / 2, 0.5, 0, df / (df + t * t), regularized=True) / 2
    return float(mpmath.findroot(lambda t: cdf(t) - p, (0, 1000), solver="bisect"))


def mean_ci(values: list[float]) -> dict:
    """mean_sd with a 95% t interval of the mean (NaN from a single value)."""
    stats = mean_sd(values)
    half = (t_quantile(0.975, len(values) - 1) * stats["sd"] / math.sqrt(len(values))
            if len(values) > 1 else float("nan"))
    return {**stats, "ci95": [stats["mean"] - half, stats["mean"] + half]}


def paired_differences(per_seed: dict[int, dict]) -> dict:
    """Per pair of PAIRED and k: the mean per-seed difference of pass@k, its SD, a 95% t interval
    and the number of seeds where a beat b (seeds that ran both methods)."""
    out = {}
    for a, b in PAIRED:
        runs = [(r[a]["pass_at_k"], r[b]["pass_at_k"]) for r in per_seed.values() if a in r and b in r]
        if not runs:
            continue
        out[f"{a} - {b}"] = row = {}
        for k in runs[0][0]:
            diffs = [pa[k] - pb[k] for pa, pb in runs]
            row[k] = {**mean_ci(diffs), "wins": sum(d > 0 for d in diffs)}
    return out


def teacher_trends(seed_dirs: dict[int, Path]) -> dict:
    """Does a teacher learn? Per teacher (SOAR's, the intrinsic one) and measure, the per-seed
    least-squares slope over outer steps (per 10 steps), with a 95% t interval over seeds."""
    trends = {}
    for method in TEACHERS:
        for group, measure in TREND_MEASURES:
            slopes = seed_slopes(seed_dirs, method, group, measure)
            if slopes:
                trends.setdefault(method, {})[trend_name(group, measure)] = mean_ci(list(slopes.values()))
    return trends


def trend_name(group: str, measure: str) -> str:
    return f"{'policy ' if group == 'policy_quality' else ''}{measure} / 10 steps"


def seed_slopes(seed_dirs: dict[int, Path], method: str, group: str, measure: str) -> dict[int, float]:
    """{seed: least-squares slope of a teacher's logged measure over its outer steps, per 10 steps}
    for the seeds that logged it at two steps or more."""
    slopes = {}
    for seed, seed_dir in seed_dirs.items():
        path = seed_dir / method / "metrics.jsonl"
        points = [(r["step"], r[group][measure]) for r in (read_jsonl(path) if path.exists() else [])
                  if measure in (r.get(group) or {})]
        if len(points) > 1:
            slopes[seed] = 10 * statistics.linear_regression(*zip(*points)).slope
    return slopes


def paired_with_control(test_dir: Path, control_dir: Path) -> dict:
    """A run against its control at the same seeds (e.g. --teacher-rewards shuffled): per measure
    of SOAR's teacher, the per-seed difference of slopes (test - control, per 10 steps), and per k
    Grounded-T's pass@k difference; each with its 95% t interval over the paired seeds and wins."""
    test, control = pooled_seeds([Path(test_dir)])[1], pooled_seeds([Path(control_dir)])[1]
    out = {"seeds": sorted(test.keys() & control.keys()), "teacher_trends": {}}
    for group, measure in TREND_MEASURES:
        a, b = (seed_slopes(dirs, "soar", group, measure) for dirs in (test, control))
        if a.keys() & b.keys():
            out["teacher_trends"][trend_name(group, measure)] = paired(a, b)
    a, b = grounded_t_pass_at_k(Path(test_dir), test), grounded_t_pass_at_k(Path(control_dir), control)
    if a.keys() & b.keys():
        ks = a[min(a.keys() & b.keys())]
        out["grounded_t pass@k"] = {k: paired({s: v[k] for s, v in a.items()},
                                              {s: v[k] for s, v in b.items()}) for k in ks}
    return out


def paired(a: dict[int, float], b: dict[int, float]) -> dict:
    """a - b over the seeds both have: mean_ci, the seeds where a > b, and each seed's difference."""
    diffs = {s: a[s] - b[s] for s in sorted(a.keys() & b.keys())}
    return {**mean_ci(list(diffs.values())), "wins": sum(d > 0 for d in diffs.values()),
            "per_seed": diffs}


def grounded_t_pass_at_k(run_dir: Path, seed_dirs: dict[int, Path]) -> dict[int, dict]:
    """{seed: Grounded-T's pass@k, the mean over its fresh students} of the seeds that have it."""
    students = read_config(run_dir).get("fresh_students", 1)
    results = {seed: read_results(d, students) for seed, d in seed_dirs.items()}
    return {seed: r["grounded_t"]["pass_at_k"] for seed, r in results.items() if "grounded_t" in r}


def question_analysis(seed_dirs: dict[int, Path], quality=None, students: int = 1) -> dict:
    """Per question set (PQ, the teachers' samples): size and diversity, and with `quality` (in
    the tiny world, its exact checker) the share of well-posed questions and of correct answers."""
    analysis = {}
    for name, (job, file) in QUESTION_SETS.items():
        jobs = [job] if name == "soar_pq" else student_jobs(job, students)
        per_seed = [[q for j in jobs for q in read_jsonl(seed_dir / j / file)]
                    for seed_dir in seed_dirs.values()]
        per_seed = [qs for qs in per_seed if qs]
        if not per_seed:
            continue
        stats = [{"n": len(qs), **question_diversity([q["problem"] for q in qs]),
                  **(quality(qs) if quality else {})} for qs in per_seed]
        analysis[name] = {key: mean_sd([s[key] for s in stats]) for key in stats[0]}
    return analysis


def print_summary(summary: dict) -> None:
    """The pass@k table, the paired differences and the teachers' trends, as a run ends."""
    print_pass_at_k(summary["pass_at_k"], summary["paired_differences"])
    for teacher, trends in summary.get("teacher_trends", {}).items():
        print(f"\n{teacher} teacher, change per 10 outer steps: mean [95% t interval] over seeds")
        for measure, c in trends.items():
            print(f"  {measure.removesuffix(' / 10 steps'):<26}{c['mean']:>+9.4f} "
                  f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]   ({c['n_seeds']} seeds)")


def print_pass_at_k(table: dict, paired: dict) -> None:
    ks = list(next(iter(table.values())).keys()) if table else []
    print("\npass@k (%) on the hard test set, mean ± SD over seeds")
    print(f"{'method':<12}" + "".join(f"{'@' + k:>14}" for k in ks) + "   seeds")
    for method, row in table.items():
        cells = "".join(f"{100 * row[k]['mean']:>8.1f} ± {100 * row[k]['sd']:<4.1f}" for k in ks)
        print(f"{method:<12}{cells}   {row[ks[0]]['n_seeds']}")
    if not paired:
        return
    ks = list(next(iter(paired.values())).keys())
    print("\npaired differences of pass@k (points) over seeds: mean [95% t interval] (seeds a > b)")
    print(f"{'a - b':<26}" + "".join(f"{'@' + k:>27}" for k in ks))
    for pair, row in paired.items():
        print(f"{pair:<26}" + "".join(
            f"{100 * c['mean']:>+7.1f} [{100 * c['ci95'][0]:+6.1f},{100 * c['ci95'][1]:+6.1f}] "
            f"({c['wins']}/{c['n_seeds']})" for c in row.values()))


# ---- the report: plots and report.md ------------------------------------------------------------

KS = ("1", "4", "8", "16", "32")
LABELS = {"base": "Base", "hard_only": "Hard-Only", "soar_ps": "SOAR-PS", "soar_pq": "SOAR-PQ",
          "grounded_t": "Grounded-T", "intrinsic_t": "Intrinsic-T", "base_t": "Base-T",
          "soar": "SOAR", "intrinsic": "Intrinsic"}  # the teachers; *-T are the students they feed
COLORS = {"base": "0.45", "hard_only": "tab:red", "soar_ps": "tab:green", "soar_pq": "tab:blue",
          "grounded_t": "tab:cyan", "intrinsic_t": "tab:orange", "base_t": "tab:purple",
          "soar": "tab:blue", "intrinsic": "tab:orange"}
SAMPLES_PER_SEED = 5
STYLE = {"font.size": 11, "axes.titlesize": 12, "legend.fontsize": 9, "figure.dpi": 110}


def label(method):
    return LABELS.get(method, method)


def ordered(methods):
    return sorted(methods, key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else 99, m))


def load_metrics(run_dir):
    """{method: {seed: rows sorted by step}} from RUN_DIR/seed{S}/{method}/metrics.jsonl."""
    runs = {}
    for path in sorted(run_dir.glob("seed*/*/metrics.jsonl")):
        seed = path.parent.parent.name.removeprefix("seed")
        if not seed.isdigit():
            continue  # not a seed{S} folder of this run
        seed = int(seed)
        rows = sorted(read_jsonl(path), key=lambda r: r.get("step", 0))
        runs.setdefault(path.parent.name, {})[seed] = rows
    return runs


def series(rows, key, sub=None):
    """(steps, values) of the rows that logged `key` (or key[sub])."""
    pairs = [(r["step"], r[key] if sub is None else r[key].get(sub)) for r in rows
             if r.get(key) is not None and "step" in r]
    pairs = [(s, v) for s, v in pairs if v is not None]
    return [s for s, _ in pairs], [v for _, v in pairs]


def plot_seeds_and_mean(ax, per_seed, color, name):
    """Each seed faint, their mean per step bold: many noisy seeds stay readable."""
    by_step = {}
    for steps, values in per_seed:
        ax.plot(steps, values, color=color, alpha=0.3, lw=1)
        for step, value in zip(steps, values):
            by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    ax.plot(steps, [sum(by_step[s]) / len(by_step[s]) for s in steps], color=color, lw=2.2,
            marker=".", label=f"{name} (mean of {len(per_seed)} seeds; faint: each seed)"
            if len(per_seed) > 1 else name)


def step_axis(ax, xlabel):
    ax.set_xlabel(xlabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no step 0.5 on short runs


def teacher_methods(runs):
    return ordered(m for m, seeds in runs.items()
                   if any("mean_reward" in r for rows in seeds.values() for r in rows))


def plot_teacher_reward(runs, config):
    methods = teacher_methods(runs)
    if not methods:
        return None
    fig, axes = plt.subplots(1, len(methods), figsize=(6.5 * len(methods), 5), squeeze=False,
                             layout="constrained")
    seeds = sorted({seed for m in methods for seed in runs[m]})
    handles = [Line2D([], [], color=f"C{i % 10}", lw=2.2, label=f"seed {s}")
               for i, s in enumerate(seeds)]
    handles += [Line2D([], [], color="0.3", alpha=0.4, marker=".", label="reward per step"),
                Line2D([], [], color="0.3", lw=2.2, label="moving average")]
    any_promotion = False
    for ax, method in zip(axes[0], methods):
        for seed, rows in runs[method].items():
            color = f"C{seeds.index(seed) % 10}"
            ax.plot(*series(rows, "mean_reward"), color=color, alpha=0.35, lw=1, marker=".")
            ax.plot(*series(rows, "moving_avg"), color=color, lw=2.2)
            promoted = [r for r in rows if r.get("promoted") and r.get("moving_avg") is not None]
            ax.scatter([r["step"] for r in promoted], [r["moving_avg"] for r in promoted],
                       marker="*", s=180, color=color, edgecolor="black", zorder=3)
            any_promotion |= bool(promoted)
        # tau thresholds SOAR's improvement reward; Intrinsic-T's learnability has another scale
        if "tau" in config and method == "soar":
            ax.axhline(0, color="0.7", lw=0.8)
            ax.axhline(config["tau"], color="black", ls="--", lw=1.2)
        ax.set(title=f"{label(method)} teacher reward", ylabel="reward")
        step_axis(ax, "outer step")
    if any_promotion:
        handles.append(Line2D([], [], color="0.3", marker="*", ls="", ms=12, mec="black",
                              label="promotion"))
    if "tau" in config and "soar" in methods:
        handles.append(Line2D([], [], color="black", ls="--", label=f"tau = {config['tau']}"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles))
    return fig


def plot_hard_train_acc(runs):
    soar = runs.get("soar", {})
    students = ordered(m for m, seeds in runs.items()
                       if any("hard_train_acc" in r for rows in seeds.values() for r in rows))
    if not any(series(rows, "baseline_acc")[0] for rows in soar.values()) and not students:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True, layout="constrained")
    for i, (seed, rows) in enumerate(sorted(soar.items())):
        # dashes keep seeds with equal accuracies (common on small Q_R) visible on top of each other
        left.plot(*series(rows, "baseline_acc"), color=f"C{i % 10}", marker=".",
                  ls=("-", "--", ":", "-.")[i % 4], label=f"seed {seed}")
    left.set(title="SOAR baseline student", ylabel="hard-train accuracy")
    step_axis(left, "outer step")
    for method in students:
        plot_seeds_and_mean(right, [series(rows, "hard_train_acc") for rows in
                                    runs[method].values()], COLORS.get(method), label(method))
    right.set_title("Student-only runs")
    step_axis(right, "student RL step")
    for ax in (left, right):
        if ax.lines:
            ax.axhline(0, color="0.8", lw=0.8)  # accuracies read against zero
            ax.legend(loc="best")
        else:
            ax.set_axis_off()
            ax.text(0.5, 0.5, "no data yet", ha="center", transform=ax.transAxes, color="0.5")
    return fig


def plot_per_method(runs, panels, title):
    """One panel per (key, sub, ylabel); teacher methods overlaid."""
    methods = teacher_methods(runs)
    if not any(series(rows, key, sub)[0] for m in methods for rows in runs[m].values()
               for key, sub, _ in panels):
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False,
                             layout="constrained")
    for ax, (key, sub, ylabel) in zip(axes[0], panels):
        for method in methods:
            plot_seeds_and_mean(ax, [series(rows, key, sub) for rows in runs[method].values()],
                                COLORS.get(method), label(method))
        ax.set(title=f"{title}: {ylabel}" if len(panels) > 1 else title, ylabel=ylabel)
        step_axis(ax, "outer step")
        ax.legend(loc="best")
    return fig


def plot_teacher_learning(runs, summary):
    """Per outer step, the share of stepping stones among each teacher's questions (tiny world;
    its larger graded sample with --quality-samples), with the untrained teacher's share (Base-T's
    questions) as a dashed line once the run is done."""
    logged = [r for teacher in runs.values() for rows in teacher.values() for r in rows]
    group = "policy_quality" if any("policy_quality" in r for r in logged) else "quality"
    fig = plot_per_method(runs, [(group, "stepping_stone", "stepping-stone share"),
                                 (group, "quick", '"quickly" share')], "Teacher questions")
    base = ((summary or {}).get("question_analysis") or {}).get("base_t") or {}
    if fig is not None and "stepping_stone" in base:
        for ax, key in zip(fig.axes, ("stepping_stone", "quick")):
            ax.axhline(base[key]["mean"], color=COLORS["base_t"], linestyle="--",
                       label="untrained teacher (Base-T's questions)")
            ax.legend(loc="best")
    return fig


def plot_against_control(test_dir: Path, control_dir: Path):
    """The SOAR teacher's graded shares per outer step in a run and in its control (e.g. the
    same teacher on shuffled rewards), each seed faint and their mean bold."""
    test, control = (load_metrics(Path(d)).get("soar", {}) for d in (test_dir, control_dir))
    logged = [r for rows in test.values() for r in rows]
    group = "policy_quality" if any("policy_quality" in r for r in logged) else "quality"
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), layout="constrained")
    for ax, (measure, ylabel) in zip(axes, (("stepping_stone", "stepping-stone share"),
                                            ("quick", '"quickly" share'))):
        for runs, color, name in ((test, COLORS["soar"], f"SOAR teacher, {Path(test_dir).name}"),
                                  (control, "0.4", f"its control, {Path(control_dir).name}")):
            plot_seeds_and_mean(ax, [series(rows, group, measure) for rows in runs.values()], color, name)
        ax.set(title=f"Teacher questions: {ylabel}", ylabel=ylabel)
        step_axis(ax, "outer step")
        ax.legend(loc="best")
    return fig


def write_against_control(test_dir: Path, control_dir: Path) -> Path:
    out = Path(test_dir) / f"against_{Path(control_dir).name}.png"
    with plt.rc_context(STYLE):
        fig = plot_against_control(test_dir, control_dir)
        fig.savefig(out)
        plt.close(fig)
    return out


def plot_pass_at_k(summary):
    table = (summary or {}).get("pass_at_k") or {}
    if not table:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    methods = ordered(table)
    for i, method in enumerate(methods):
        ks = [k for k in KS if k in table[method]]
        dodge = 2 ** (0.06 * (i - (len(methods) - 1) / 2))  # keep error bars apart on a log axis
        ax.errorbar([int(k) * dodge for k in ks], [100 * table[method][k]["mean"] for k in ks],
                    yerr=[100 * (table[method][k].get("sd") or 0) for k in ks], capsize=3,
                    marker="o", color=COLORS.get(method), label=label(method))
    ax.set_xscale("log", base=2)
    ax.set_xticks([int(k) for k in KS], KS)
    ax.set_ylim(bottom=0)
    ax.set(title="Hard-test pass@k (mean ± sd over seeds)", xlabel="k", ylabel="pass@k (%)")
    ax.legend(loc="upper left")
    return fig


def fmt(value):
    if isinstance(value, dict) and "ci95" in value:  # an estimate with its interval
        return f"{value['mean']:+.3g} [{value['ci95'][0]:+.3g}, {value['ci95'][1]:+.3g}]"
    if isinstance(value, dict) and "mean" in value:  # a statistic over seeds
        return f"{value['mean']:.3g} ± {value.get('sd') or 0:.2g}"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (dict, list)):
        return "`" + json.dumps(value) + "`"
    return str(value)


def md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]


def pass_at_k_md(table):
    rows = []
    for method in ordered(table):
        cells = [table[method].get(k) for k in KS]
        n_seeds = next((c["n_seeds"] for c in cells if c and "n_seeds" in c), "?")
        rows.append([label(method)] + [f"{100 * c['mean']:.1f} ± {100 * (c.get('sd') or 0):.1f}"
                                       if c else "–" for c in cells] + [n_seeds])
    return md_table(["method"] + [f"@{k}" for k in KS] + ["n_seeds"], rows)


def paired_md(paired):
    rows = [[pair] + [f"{100 * c['mean']:+.1f} [{100 * c['ci95'][0]:+.1f}, {100 * c['ci95'][1]:+.1f}], "
                      f"{c['wins']}/{c['n_seeds']}" if c else "–" for c in map(row.get, KS)]
            for pair, row in paired.items()]
    return md_table(["a - b"] + [f"@{k}" for k in KS], rows)


def generic_md(analysis):
    """A dict of dicts becomes rows x columns; anything else a key / value table."""
    if analysis and all(isinstance(v, dict) for v in analysis.values()):
        columns = list(dict.fromkeys(c for v in analysis.values() for c in v))
        return md_table([""] + columns, [[label(k)] + [v.get(c, "–") for c in columns]
                                         for k, v in analysis.items()])
    return md_table(["key", "value"], [[k, v] for k, v in analysis.items()])


def progress_md(runs):
    rows = [[label(m), seed, len(rows), rows[-1].get("step", "?") if rows else "–",
             rows[-1].get("n_promotions", "–") if rows else "–"]
            for m in ordered(runs) for seed, rows in sorted(runs[m].items())]
    return md_table(["method", "seed", "lines", "last step", "promotions"], rows)


def promoted_md(run_dir):
    lines = []
    for path in sorted(run_dir.glob("seed*/soar/promoted_questions.jsonl")):
        rows = read_jsonl(path)
        spread = rows[:: max(1, len(rows) // SAMPLES_PER_SEED)][:SAMPLES_PER_SEED]
        lines += ["", f"**{path.parent.parent.name}** ({len(rows)} promoted questions)", ""]
        for row in spread:
            question = " ".join(str(row.get("problem", row.get("question", "?"))).split())
            step = f"step {row['step']}: " if "step" in row else ""
            lines.append(f"- {step}{question[:400]}  → answer `{row.get('answer', '?')}`")
    return lines or ["No promoted questions yet."]


def plots(runs, config, summary):
    """(file name, title, what it needs, thunk returning a figure or None when that is absent)."""
    return [
        ("teacher_reward.png", "Teacher reward", "teacher metrics",
         lambda: plot_teacher_reward(runs, config)),
        ("hard_train_acc.png", "Hard-train accuracy", "baseline_acc or hard_train_acc metrics",
         lambda: plot_hard_train_acc(runs)),
        ("valid_rate.png", "Teacher valid rate", "valid_rate metrics", lambda: plot_per_method(
            runs, [("valid_rate", None, "valid share of teacher samples")], "Teacher valid rate")),
        ("diversity.png", "Question diversity", "diversity metrics", lambda: plot_per_method(
            runs, [("diversity", "distinct", "distinct-question share"),
                   ("diversity", "ngram_entropy", "n-gram entropy (bits)"),
                   ("diversity", "vendi", "Vendi score (1-2-gram cosine)")], "Diversity")),
        ("quality.png", "Question quality (exact checker)", "quality metrics (tiny world only)",
         lambda: plot_per_method(runs, [("quality", "well_posed", "well-posed share"),
                                        ("quality", "correct", "correct-answer share")],
                                 "Quality")),
        ("teacher_learning.png", "What the teachers write (exact checker)",
         "quality metrics (tiny world only)", lambda: plot_teacher_learning(runs, summary)),
        ("pass_at_k.png", "Hard-test pass@k", "pass_at_k in summary.json",
         lambda: plot_pass_at_k(summary)),
    ]


def write_report(run_dir: Path) -> list[Path]:
    """Write the plots and report.md into run_dir; return the paths written."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    summary_path = run_dir / "summary.json"
    summary = read_json(summary_path) if summary_path.is_file() else None
    runs = load_metrics(run_dir)
    md = [f"# SOAR run report: `{run_dir.name}`", ""]
    if summary is None:
        md += ["**Unfinished run**: no summary.json yet, so no pass@k table or question analysis; "
               "the plots show the steps logged so far.", ""]
    else:
        md += ["## Hard-test pass@k (%, mean ± sd over seeds)", ""]
        md += pass_at_k_md(summary.get("pass_at_k") or {}) + [""]
        if summary.get("paired_differences"):
            md += ["## Paired differences over seeds (pass@k points: mean [95% t interval], wins)", ""]
            md += paired_md(summary["paired_differences"]) + [""]
        if summary.get("question_analysis"):
            md += ["## Question analysis", ""] + generic_md(summary["question_analysis"]) + [""]
        if summary.get("teacher_trends"):
            md += ["## How each teacher's questions change over outer steps",
                   "", "Per-seed least-squares slope per 10 outer steps: mean [95% t interval] "
                   "over seeds.", ""] + generic_md(summary["teacher_trends"]) + [""]
    md += ["## Progress", ""] + (progress_md(runs) if runs else ["No metrics.jsonl yet."]) + [""]
    written = []
    with plt.rc_context(STYLE):
        for filename, title, needs, make in plots(runs, config, summary):
            fig = make()
            md += [f"## {title}", ""]
            if fig is None:
                md += [f"_Skipped: this run has no {needs} yet._", ""]
                continue
            fig.savefig(run_dir / filename)
            plt.close(fig)
            written.append(run_dir / filename)
            md += [f"![{title}]({filename})", ""]
    md += ["## Sample promoted questions"] + promoted_md(run_dir)
    md += ["", "## Config", "", "```json", json.dumps(config, indent=2), "```", ""]
    (run_dir / "report.md").write_text("\n".join(md))
    return written + [run_dir / "report.md"]
