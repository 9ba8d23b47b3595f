"""The fail@k hard-set builder: the problems a model solves 0 times in k samples, split 50/50.

    python build_hard.py --model small --dataset math --k 128 --out-dir hard_sets

writes `hard_train.jsonl`, `hard_test.jsonl`, `stats.json` and the per-problem `results.jsonl`
under `<out-dir>/<model tag>/<dataset tag>/`, where `train.py --model M --dataset D` finds them.
An interrupted build resumes where it stopped. How the set is sampled and split: data/hard.py.
"""
import argparse
import sys

import torch

import models
from config import HUB_PRESETS, Config
from data.benchmarks import load_problems
from data.hard import build_hard, hard_set_paths
from parallel import Processes, launch, launched
from run_dir import write_nothing


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help=f"preset ({', '.join(HUB_PRESETS)}), hub id or local path")
    p.add_argument("--dataset", required=True,
                   help="math, math500, harp, olympiadbench, or a local .jsonl/.json/.parquet file")
    p.add_argument("--split", default=None, help="benchmark split (math: test = the paper's pool)")
    p.add_argument("--problem-field", default="problem")
    p.add_argument("--answer-field", default="answer",
                   help="a field holding a worked solution gives the last \\boxed{} in it")
    p.add_argument("--k", type=int, default=128, help="samples per problem (paper 128)")
    p.add_argument("--out-dir", default=Config.hard_dir, help="writes <out-dir>/<model>/<dataset>/")
    p.add_argument("--quant", default="auto", choices=["auto", "4bit", "8bit", "none"],
                   help="auto = 4bit on GPU, else none")
    p.add_argument("--chat-template", default="auto", choices=["auto", "on", "off"],
                   help="auto = on when the tokenizer has one")
    p.add_argument("--max-new-tokens", type=int, default=1024, help="paper 1024")
    p.add_argument("--batch-size", type=int, default=64, help="rows decoded at once")
    p.add_argument("--chunk-problems", type=int, default=32, help="problems sampled together (resume unit)")
    p.add_argument("--first-round", type=int, default=8,
                   help="samples per problem in the first round; each round doubles the total drawn")
    p.add_argument("--all-k", action="store_true",
                   help="draw all k samples for every problem (exact solve counts, no early stop)")
    p.add_argument("--limit", type=int, default=None, help="only the first N problems (a trial run)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--processes", type=int, default=1, metavar="N",
                   help="sample on N processes of this machine (CPU cores or GPUs); each chunk "
                        "has its own seeded generator (default: 1, or what accelerate launch / "
                        "torchrun started)")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    if args.k < 1 or args.first_round < 1 or args.processes < 1:
        p.error("--k, --first-round and --processes must be at least 1")

    if args.model == "tiny":
        p.error("--model tiny: the tiny world builds its own hard set (train.py does it on first use)")
    if args.processes > 1 and not launched():
        launch(args.processes, argv)
        return
    procs = Processes()
    if not procs.main:
        write_nothing()
    quant = args.quant
    if quant == "auto":
        quant = "4bit" if torch.cuda.is_available() else "none"
    try:
        problems = load_problems(args.dataset, problem_field=args.problem_field,
                                 answer_field=args.answer_field, split=args.split)[:args.limit]
        with procs.main_first():  # a conversion or download happens once
            model, tokenizer = models.load_model(args.model, quant, adapters=False,
                                                 device=str(procs.device))
    except (models.ModelUnavailable, OSError, ValueError, RuntimeError) as e:
        raise SystemExit(f"error: {e}") from None
    chat_template = {"on": True, "off": False}.get(args.chat_template,
                                                   getattr(tokenizer, "chat_template", None) is not None)
    train_path, _ = hard_set_paths(args.out_dir, args.model, args.dataset)
    settings = {"model": args.model, "dataset": args.dataset, "split": args.split, "quant": quant,
                "limit": args.limit}
    _, _, stats = build_hard(model, tokenizer, problems, args.k, out_dir=train_path.parent,
                             chat_template=chat_template, max_new_tokens=args.max_new_tokens,
                             batch_size=args.batch_size, chunk_problems=args.chunk_problems,
                             first_round=args.first_round, all_k=args.all_k, seed=args.seed,
                             settings=settings, procs=procs)
    procs.close()
    if procs.main:
        print(f"{stats['n_hard']} of {stats['pool_size']} problems solved 0/{args.k} times "
              f"({stats['invalid_gold']} dropped: unparsable gold) -> {stats['n_train']} train / "
              f"{stats['n_test']} test in {train_path.parent}")


if __name__ == "__main__":
    main()
