"""``r0kit evaluate``: score trained generators, base models or image folders on a prompt set.

    r0kit evaluate r0kit-train/export stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        --prompts-file eval.txt --train-config train.toml --held-out pickscore

prints a table shaped like the R0 paper's (model | one column per reward; held-out
rewards marked ``*``) and writes ``evaluation.csv``, ``summary.csv`` and one grid
image per model under ``--output``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="score generators or image folders on prompts (R0-style table)")
    p.add_argument("sources", nargs="+", help="exported generator folders, pipeline folders/hub ids, or image folders")
    p.add_argument("--prompts-file", type=Path, help="prompts, one a line (.txt) or JSONL")
    p.add_argument("--reward", action="append", default=[], help="a reward to score (repeatable)")
    p.add_argument("--held-out", action="append", default=[], help="a reward not trained on (repeatable)")
    p.add_argument("--train-config", type=Path, help="take the trained rewards (and options) from this training TOML")
    p.add_argument("--label", action="append", default=[], help="row label of each source, in order")
    p.add_argument("--steps", type=int, default=25, help="sampling steps for base models (default 25)")
    p.add_argument("--size", type=int, help="image side for base models (default 512, exports use their own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--output", "-o", type=Path, default=Path("r0kit-eval"))
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from r0kit.config import load_toml, parse_objective, read_prompts
    from r0kit.evaluate import evaluate

    rewards = list(args.reward)
    options: dict = {}
    if args.train_config is not None:
        obj = parse_objective(load_toml(args.train_config).get("objective", {}), str(args.train_config))
        for label, t in obj.rewards.items():
            name = t.name or label
            rewards.append(name)
            options[name] = t.options
    prompts = read_prompts(args.prompts_file) if args.prompts_file is not None else None
    result = evaluate(
        args.sources,
        prompts,
        rewards=rewards,
        held_out=args.held_out,
        reward_options=options,
        output=args.output,
        steps=args.steps,
        size=args.size,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        labels=args.label,
    )
    Console().print(result.table())
    for note in result.notes:
        print(note)
    print(f"wrote {result.csv}, {result.summary_csv} and {len(result.rows)} grid image(s) under {args.output}")
    return 0
