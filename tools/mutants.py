"""Plant known bugs in the method's files, one at a time, and report which ones the tests miss.

    python tools/mutants.py              # every mutant (about 15 minutes on 2 busy CPU cores)
    python tools/mutants.py --list       # what each mutant breaks
    python tools/mutants.py grounded_sign promote_by_max   # only these
    python tools/mutants.py --slow       # also the mutants only slow end-to-end tests can catch
    python tools/mutants.py --check      # only that every mutant still finds its line (instant)

Each mutant is one textual edit of one file: the bug a contributor could plausibly write (a sign,
an index, a strict inequality, a forgotten line). The tree (tracked and new files, as git sees
them) is copied once into a temporary folder; each mutant is applied there, the few tests that
should catch it run (`-x`, fast), and the file is restored. A mutant whose tests still pass
*survived*: either a test is missing, or the mutant changes nothing that matters (docs/testing.md
says which, for every survivor). A mutant whose text is no longer in its file, exactly once, is
*stale*: the code moved, and the mutant must be re-pointed, not silently dropped. The test suite
checks that on every run (`--check`, tests/test_rules.py), so an edit that moves a mutated line
fails `make test` at once and names the mutant, instead of waiting for a mutants run.

General mutation tools (mutmut, cosmic-ray) mutate every operator and rerun the whole suite per
mutant: thousands of runs of an 8-minute suite. These ~25 targeted bugs with targeted tests take
minutes, so they can be run as a habit before a change to the method's files is merged.
"""
import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Mutant:
    name: str
    file: str
    old: str
    new: str
    why: str
    tests: tuple[str, ...]   # pytest arguments: files, node ids, -k expressions
    slow: bool = False       # only an end-to-end run can catch it (minutes): with --slow


RULES = "tests/test_rules.py"
SCRIPTED = (RULES, "-k", "promotion or promoted or pq or extra_steps or mean_over_copies")

MUTANTS = [
    # -- the teacher's update
    Mutant("teacher_advantage_sign", "teacher.py",
           "advantages = rloo_advantages(rewards)",
           "advantages = -rloo_advantages(rewards)",
           "the teacher is pushed towards its low-reward datasets",
           (RULES, "-k", "teacher_sample or teacher_update_moves")),
    Mutant("teacher_advantage_to_other_dataset", "teacher.py",
           "zip(datasets, advantages.tolist())", "zip(datasets, advantages.tolist()[::-1])",
           "each dataset's samples get another dataset's advantage",
           (RULES, "-k", "teacher_sample or teacher_update_moves")),
    # -- the grounded reward
    Mutant("grounded_sign", "train.py",
           "{m: v - baseline_measures[m] for m, v in measures.items()}",
           "{m: baseline_measures[m] - v for m, v in measures.items()}",
           "baseline minus copy: the teacher is rewarded for datasets that hurt the student",
           (RULES, "-k", "grounded")),
    Mutant("copy_index", "train.py", "results[k * cfg.r + j]", "results[j * len(datasets) + k]",
           "copy (k, j) is given another copy's reward when r > 1",
           (RULES, "-k", "grounded")),
    Mutant("copy_starts_from_last_copy", "train.py",
           "with adapter_weights(w.model, \"student\", baseline):",
           "with adapter_weights(w.model, \"student\", copies.get((k, j - 1), baseline)):",
           "a copy trains on from the dataset's previous copy instead of from the baseline",
           (RULES, "-k", "grounded")),
    Mutant("common_streams_ignored", "train.py",
           "identity = (*unit, \"copy\", j) if common else (*unit, k, j)",
           "identity = (*unit, k, j)",
           "--copy-streams common gives every copy its own draws: no chance cancels",
           (RULES, "-k", "grounded")),
    Mutant("reward_measure_ignored", "train.py",
           "return (by_measure[cfg.reward_measure], by_measure",
           "return (by_measure[\"greedy\"], by_measure",
           "--reward-measure sampled still rewards the teacher with greedy accuracy",
           (RULES, "-k", "grounded")),
    Mutant("dataset_reward_by_max", "train.py",
           "dataset_rewards = [statistics.mean(r) for r in rewards]",
           "dataset_rewards = [max(r) for r in rewards]",
           "R_k is the best copy's reward, not the mean over copies",
           SCRIPTED),
    # -- promotion
    Mutant("promote_by_max", "train.py", "means = [statistics.mean(r) for r in rewards]",
           "means = [max(r) for r in rewards]", "the best dataset by its best copy, not its mean",
           (RULES, "-k", "promotion")),
    Mutant("promote_by_last", "train.py", "means = [statistics.mean(r) for r in rewards]",
           "means = [r[-1] for r in rewards]", "the best dataset by its last copy, not its mean",
           (RULES, "-k", "promotion")),
    Mutant("promote_first_copy", "train.py", "return best, order[(len(order) - 1) // 2]",
           "return best, 0", "the first copy is promoted, not the median one",
           (RULES, "-k", "promotion or promoted")),
    Mutant("promote_upper_median", "train.py", "return best, order[(len(order) - 1) // 2]",
           "return best, order[len(order) // 2]",
           "for even r, the upper of the two middle copies (the project pins the lower)",
           (RULES, "-k", "median_copy")),
    Mutant("promote_unsorted_middle", "train.py", "return best, order[(len(order) - 1) // 2]",
           "return best, (len(order) - 1) // 2",
           "the middle copy by index, not by reward",
           (RULES, "-k", "median_copy")),
    Mutant("window_not_full", "train.py", "len(window) == size and moving_avg > tau",
           "moving_avg > tau", "a promotion before the window is full",
           (RULES, "-k", "window or promotion_happens")),
    Mutant("tau_not_strict", "train.py", "len(window) == size and moving_avg > tau",
           "len(window) == size and moving_avg >= tau", "a promotion at exactly tau",
           (RULES, "-k", "tau or promotion_happens")),
    Mutant("window_not_reset", "train.py", "state[\"window\"] = []  # later", "pass  # later",
           "the old baseline's rewards still count after a promotion", SCRIPTED),
    Mutant("pq_from_other_dataset", "train.py", "for p in datasets[best]]",
           "for p in datasets[0]]", "PQ gets the first dataset, not the promoted one",
           SCRIPTED),
    Mutant("broadcast_from_main", "train.py", "src=w.procs.owner(best * w.cfg.r + copy))", "src=0)",
           "the promoted copy is taken from process 0, which may not have trained it", SCRIPTED),
    Mutant("baseline_not_loaded_after_promotion", "train.py",
           "    load_adapter_state(w.model, \"student\", state[\"baseline\"])\n", "",
           "the next step's baseline accuracy is measured on the old student", SCRIPTED),
    Mutant("extra_steps_from_the_start", "train.py",
           "(w.cfg.promotion_extra_steps if state[\"n_promotions\"] else 0)",
           "w.cfg.promotion_extra_steps", "inner loops are lengthened before any promotion", SCRIPTED),
    Mutant("intrinsic_promotes", "train.py", "method == \"soar\" and due)", "due)",
           "the intrinsic teacher, which trains no student, tries to promote one",
           (RULES, "-k", "intrinsic")),
    Mutant("q_r_fixed", "train.py", "q_r = generators(*unit, \"q_r\")[1]",
           "q_r = generators(seed, \"q_r\")[1]", "the same Q_R at every step, not a fresh draw",
           (RULES, "-k", "q_r")),
    Mutant("no_extra_steps", "train.py",
           "steps = w.cfg.inner_steps + (w.cfg.promotion_extra_steps if state[\"n_promotions\"] else 0)",
           "steps = w.cfg.inner_steps", "inner loops are not lengthened after a promotion", SCRIPTED),
    # -- the student's RLOO step and the policy gradient
    Mutant("student_advantage_sign", "student.py", "advantages = rloo_advantages(rewards).flatten()",
           "advantages = -rloo_advantages(rewards).flatten()", "the student learns its wrong answers",
           (RULES, "-k", "student_step")),
    Mutant("student_groups_misread", "student.py", ".view(len(batch), G)", ".view(G, len(batch))",
           "rewards grouped across questions instead of per question", (RULES, "-k", "student_step")),
    Mutant("policy_gradient_sign", "models.py", "per_row = (-adv * logp * scored", "per_row = (adv * logp * scored",
           "every update moves away from rewarded answers", (RULES, "-k", "moves_probability")),
    Mutant("scored_tokens_ignored", "models.py",
           "scored = mask & (columns < torch.tensor(scored_tokens",
           "scored = mask | (columns < torch.tensor(scored_tokens",
           "--teacher-tokens question still moves the worked answer's tokens",
           ("tests/test_teacher_signal.py", "-k", "question_only")),
    Mutant("question_tokens_not_passed", "teacher.py",
           "if cfg.teacher_tokens == \"question\" else None",
           "if cfg.teacher_tokens == \"questions\" else None",
           "--teacher-tokens question never reaches the policy gradient",
           (RULES, "-k", "leave_one_out_advantage")),
    Mutant("scaled_advantage_not_applied", "teacher.py",
           'if cfg.teacher_advantage in ("scaled", "rank"):', 'if cfg.teacher_advantage in ("scale", "rank"):',
           "--teacher-advantage scaled never scales the teacher's advantages",
           (RULES, "-k", "leave_one_out_advantage")),
    Mutant("shuffled_control_not_shuffled", "train.py",
           "return [dataset_rewards[i] for i in order.tolist()]",
           "return [dataset_rewards[i] for i in sorted(order.tolist())]",
           "--teacher-rewards shuffled gives the update the measured rewards in their own order",
           (RULES, "-k", "shuffled")),
    Mutant("shuffled_control_always", "train.py", 'if cfg.teacher_rewards == "measured":',
           'if False:',
           "the teacher's update gets shuffled rewards in every run, not only in the control",
           (RULES, "-k", "rewarded_with_each_dataset")),
    Mutant("scaled_by_variance", "rewards.py", "return advantages / sd if", "return advantages / sd ** 2 if",
           "the scaled advantage divides by the rewards' variance: it still grows with the rewards' size",
           ("tests/test_rewards.py", "-k", "scaled")),
    Mutant("integer_path_as_text", "rewards.py",
           "return int(box) == int(gold) if",
           "return box == gold.strip() if",
           "the checker's integer path compares text: \\boxed{007} is not 7 (math-verify says it is)",
           ("tests/test_teacher_signal.py", "-k", "plain_integers")),
    Mutant("kl_sign", "models.py", "+ kl_coef * kl).sum(1)", "- kl_coef * kl).sum(1)",
           "the KL term pushes away from the base model", (RULES, "-k", "kl_term")),
    Mutant("rloo_baseline_includes_self", "rewards.py", "/ (group - 1)", "/ group",
           "the leave-one-out baseline divides by G: advantages no longer sum to zero",
           ("tests/test_rewards.py", "-k", "rloo")),
    Mutant("teacher_kl_of_the_student", "teacher.py", "kl_coef=cfg.teacher_kl_coef,",
           "kl_coef=cfg.kl_coef,", "the teacher's update takes the student's KL coefficient",
           (RULES, "-k", "leave_one_out_advantage")),
    # -- the model as the transformers versions requirements.txt allows load and run it
    Mutant("cache_by_one_name", "sampler.py", 'for name in ("cache", "past_key_values"):',
           'for name in ("cache",):',
           "the sampler passes its KV cache by the newer name only: older 5.x forwards ignore it",
           ("tests/test_sampler.py", "-k", "cache")),
    # -- the GPU decoder's fixed buffers and its graphs (run on the CPU with a stand-in graph)
    Mutant("graph_capture_not_rewound", "sampler.py",
           "        for layer, length in zip(layers, before):",
           "        for layer, length in zip(layers, []):",
           "a graph's first replay decodes after the warm-up already advanced the cache: every "
           "later step reads a stale key", ("tests/test_sampler.py", "-k", "replayed_from_a_graph")),
    Mutant("graph_kept_when_it_disagrees", "sampler.py",
           "if gap <= 0.05 * eager.float().abs().max().item():", "if True:",
           "a graph whose replay disagrees with the eager step is kept", ("tests/test_sampler.py", "-k", "fails_or_disagrees")),
    Mutant("bucket_buffers_not_compacted", "sampler.py",
           "            buffer[:k] = buffer[:w][rows]\n", "            pass\n",
           "moving to a smaller bucket keeps the token, position and mask rows of the wrong rows",
           ("tests/test_sampler.py", "-k", "static_decoder_gives")),
    Mutant("dequantized_weight_of_another_layer", "sampler.py",
           "for layer, weight in zip(layers, weights or []):",
           "for layer, weight in zip(layers, (weights or [])[::-1]):",
           "a 4-bit layer samples with another layer's dequantized weight",
           ("tests/test_sampler.py", "-k", "dequantized_once")),
    Mutant("loaded_in_mixed_modes", "models.py", "    return model.eval(), tokenizer",
           "    return model, tokenizer",
           "the LoRA wrapper is loaded in train mode around a base in eval mode: a training step "
           "before any sampling does not recompute", ("tests/test_loop.py", "-k", "checkpointing")),
    # -- learning-rate schedules
    Mutant("warmup_off_by_one", "models.py", "return (step + 1) / warmup_steps",
           "return step / warmup_steps", "the first warm-up step has learning rate 0",
           (RULES, "-k", "learning_rate")),
    # -- the solution measure
    Mutant("solution_mean_log_probability", "student.py",
           "(torch.logsumexp(torch.cat(logps), dim=0) - math.log(len(problems)))",
           "torch.cat(logps).mean()",
           "the mean log probability of the solutions, not the log of their mean probability: "
           "every problem's arithmetic swings it",
           ("tests/test_teacher_signal.py", "-k", "solution")),
    Mutant("solution_without_the_answer_s_space", "student.py",
           "solution if chat_template else \" \" + solution", "solution",
           "the solution scored without the space the tiny model's answers begin with",
           ("tests/test_teacher_signal.py", "-k", "solution")),
    Mutant("solution_padding_scored", "student.py", "logps.append((logp * mask).sum(dim=1))",
           "logps.append(logp.sum(dim=1))", "a shorter solution's padding counts in its probability",
           ("tests/test_teacher_signal.py", "-k", "solution")),
    Mutant("baseline_without_graded_measures", "train.py",
           "    if method != \"soar\":\n        return {\"greedy\": greedy}\n",
           "    return {\"greedy\": greedy}\n",
           "the baseline's sampled and solution measures are not measured", (RULES, "-k", "logs_every")),
    Mutant("linear_decay", "models.py", "return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))",
           "return 1 - min(1.0, progress)", "a linear decay instead of the cosine",
           (RULES, "-k", "learning_rate")),
    Mutant("inner_schedule_length", "student.py",
           "make_optimizer(model, \"student\", cfg.student_lr, steps)",
           "make_optimizer(model, \"student\", cfg.student_lr, cfg.inner_steps)",
           "an inner loop with extra steps decays over inner_steps and trains its last steps at lr 0",
           (RULES, "-k", "inner_loop_schedules")),
    # -- evaluation
    Mutant("pass_at_k_of_mean_count", "evaluate.py",
           "statistics.mean(pass_at_k(cfg.eval_samples, c, k) for c in counts)",
           "pass_at_k(cfg.eval_samples, round(statistics.mean(counts)), k)",
           "pass@k of the average problem instead of the average of pass@k", (RULES, "-k", "pass_at_k")),
    Mutant("table_of_one_seed", "summary.py", "{k: mean_sd([r[k] for r in runs]) for k in runs[0]}",
           "{k: mean_sd([runs[-1][k]]) for k in runs[0]}", "the table shows the last seed, not the mean",
           (RULES, "-k", "pass_at_k")),
    # -- several fresh students, and a run's first steps re-run short (end to end)
    Mutant("fresh_students_share_questions", "train.py",
           "sample_teacher_questions(w, teacher, seed, job, seed_dir / job)",
           "sample_teacher_questions(w, teacher, seed, name, seed_dir / job)",
           "every fresh student of a teacher trains on the same sample of its questions",
           ("tests/test_loop.py", "-k", "each_fresh_student"), slow=True),
    Mutant("table_of_first_student", "summary.py",
           "{k: statistics.mean(d[k] for d in done) for k in done[0]}", "{k: done[0][k] for k in done[0]}",
           "the table shows a method's first fresh student, not their mean",
           ("tests/test_report.py", "-k", "mean_of_its_fresh_students")),
    Mutant("step_0_depends_on_the_run_length", "train.py", "generators(*unit, \"teacher\")[0]",
           "generators(*unit, \"teacher\", cfg.outer_steps)[0]",
           "the teacher's draws depend on --outer-steps, so a long run's first steps cannot be re-run short",
           ("tests/test_loop.py", "-k", "first_outer_step"), slow=True),
    # -- resume (end to end)
    Mutant("fresh_student_resumes_without_optimizer", "evaluate.py",
           "        step, student = ckpt[\"step\"], ckpt[\"student\"]\n"
           "        optimizer.load_state_dict(ckpt[\"optimizer\"])\n",
           "        step, student = ckpt[\"step\"], ckpt[\"student\"]\n",
           "a fresh student resumed mid-training restarts AdamW's moments",
           ("tests/test_loop.py", "-k", "middle_of_a_fresh_student"), slow=True),
]


def copy_tree(dest: Path) -> None:
    """Tracked and untracked-but-not-ignored files: what a commit of the working tree would hold."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def stale(mutants: list[Mutant], root: Path = ROOT) -> list[str]:
    """Why each mutant that cannot be planted as written cannot: its file or its test file is
    gone, or its text is not in its file exactly once."""
    problems = []
    for m in mutants:
        path, tests = root / m.file, root / m.tests[0].split("::")[0]
        if not path.is_file() or not tests.is_file():
            problems.append(f"{m.name}: {m.file if not path.is_file() else m.tests[0]} does not exist")
        elif (count := path.read_text().count(m.old)) != 1:
            problems.append(f"{m.name}: its text is in {m.file} {count} times, not once: re-point it")
    return problems


def pytest(tree: Path, args: tuple[str, ...]) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                           "-W", "ignore", *args], cwd=tree, capture_output=True, text=True)
    return done.returncode, done.stdout[-2000:] + done.stderr[-2000:]


def baseline_runs(mutants: list[Mutant]) -> list[tuple[str, ...]]:
    """The mutants' test selections merged into one pytest run per test file."""
    selections: dict[str, list[str]] = {}
    for m in mutants:
        file, *rest = m.tests
        expression = rest[1] if rest[:1] == ["-k"] else None
        selections.setdefault(file, [])
        if expression is None or None in selections[file]:
            selections[file] = [None]
        else:
            selections[file].append(f"({expression})")
    return [(file,) if None in exprs else (file, "-k", " or ".join(dict.fromkeys(exprs)))
            for file, exprs in selections.items()]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="run only these mutants")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--slow", action="store_true", help="also the mutants that need slow tests")
    parser.add_argument("--verbose", action="store_true", help="print the tests' output of survivors")
    parser.add_argument("--check", action="store_true",
                        help="only check that every mutant still finds its line, and exit")
    args = parser.parse_args(argv)
    unknown = set(args.names) - {m.name for m in MUTANTS}
    if unknown:
        parser.error(f"unknown mutants: {', '.join(sorted(unknown))}")
    chosen = [m for m in MUTANTS if (m.name in args.names) if args.names] or \
             [m for m in MUTANTS if args.slow or not m.slow]
    if args.check:
        problems = stale(MUTANTS)
        print("\n".join(problems) or f"all {len(MUTANTS)} mutants find their lines")
        return 1 if problems else 0
    if args.list:
        for m in chosen:
            print(f"{m.name:<40} {m.file:<11} {m.why}")
        return 0
    results = []
    print(f"{len(chosen)} mutants; the unmutated tree first", flush=True)
    with tempfile.TemporaryDirectory(prefix="soar-mutants-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        # the unmutated tree must pass the very tests that judge the mutants (one run per file)
        for tests in baseline_runs(chosen):
            code, out = pytest(tree, tests)
            if code != 0:
                print(f"the unmutated tree fails {' '.join(tests)}:\n{out}")
                return 2
        for m in chosen:
            path = tree / m.file
            original = path.read_text()
            if stale([m], tree):
                results.append((m, "stale", 0.0))
                print(f"{m.name:<40} stale: {stale([m], tree)[0]}")
                continue
            path.write_text(original.replace(m.old, m.new))
            start = time.monotonic()
            try:
                code, out = pytest(tree, m.tests)
            finally:
                path.write_text(original)
            verdict = {0: "SURVIVED", 1: "killed"}.get(code, f"error (pytest exit {code})")
            results.append((m, verdict, time.monotonic() - start))
            print(f"{m.name:<40} {verdict:<10} {results[-1][2]:5.0f} s", flush=True)
            if code != 1 and args.verbose:
                print(out)
    print("\n| mutant | file | the bug | result |\n|---|---|---|---|")
    for m, verdict, _ in results:
        print(f"| `{m.name}` | {m.file} | {m.why} | {verdict} |")
    survivors = [m.name for m, verdict, _ in results if verdict != "killed"]
    print(f"\n{len(results) - len(survivors)} of {len(results)} killed"
          + (f"; not killed: {', '.join(survivors)}" if survivors else ""))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
