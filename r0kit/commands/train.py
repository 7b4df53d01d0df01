"""``r0kit train``: train a K-step generator by regularized reward maximization (R0).

``r0kit train --config train.toml`` runs the config (see ``r0kit/presets/train_r0.toml``);
``--resume latest`` continues from the newest checkpoint under the output folder.
Multi-GPU: ``accelerate launch -m r0kit.cli train --config train.toml`` (DDP), or with an FSDP
config file (``fsdp_version: 2``) to shard SD3/FLUX-size networks; ``--dry-run`` prints the memory a
run needs before anything is loaded.
Ctrl-C writes a checkpoint before exiting.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a K-step generator with rewards (R0)")
    p.add_argument("--config", "-c", type=Path, help="training config TOML (default: the train_r0 preset)")
    p.add_argument("--preset", help="built-in preset to start from (train_r0, train_r0plus, train_tiny)")
    p.add_argument("--resume", help="a checkpoint folder, or 'latest' (the newest under the output folder)")
    p.add_argument("--model", help="override generator.model (hub id or pipeline folder)")
    p.add_argument("--prompts-file", type=Path, help="override prompts_file (.txt one a line, or .jsonl)")
    p.add_argument("--steps", type=int, help="override steps (total optimizer steps)")
    p.add_argument("--max-steps", type=int, help="stop at this step with a checkpoint (resume later)")
    p.add_argument("--output", "-o", type=Path, help="override output folder")
    p.add_argument("--no-progress", action="store_true", help="no per-step progress line")
    p.add_argument(
        "--dry-run", action="store_true",
        help="print the memory the run needs (weights, gradients, optimizer state, activations with and without "
        "checkpointing, per FSDP process count) from the model's configs alone, and exit",
    )
    p.set_defaults(run=run)


def build_config(args: argparse.Namespace):
    from r0kit.commands.optimize import preset_path
    from r0kit.config import load_toml
    from r0kit.train import load_train_config, parse_train

    source = args.config or preset_path(args.preset or "train_r0")
    cfg = load_train_config(source)
    data = cfg.model_dump(mode="python")
    data["generator"] = {**cfg.generator.model_dump(), **(cfg.generator.model_extra or {})}
    data["objective"] = load_toml(source).get("objective", {})
    if args.model:
        data["generator"]["model"] = args.model
    if args.prompts_file is not None:
        data["prompts_file"] = args.prompts_file
        data["prompts"] = []
    if args.steps is not None:
        data["steps"] = args.steps
    if args.output is not None:
        data["output"] = args.output
    return parse_train(data, str(source))


def run(args: argparse.Namespace) -> int:
    from r0kit.train import train

    cfg = build_config(args)
    if args.dry_run:
        from r0kit.memory import estimate_training

        print(estimate_training(cfg).table())
        return 0
    result = train(cfg, resume=args.resume, max_steps=args.max_steps, progress=not args.no_progress)
    where = f"checkpoint {result.checkpoint}" if result.checkpoint else "no checkpoint"
    if result.interrupted:
        print(f"interrupted at step {result.step}; wrote {where}; continue with --resume latest", file=sys.stderr)
        return 130
    print(f"trained to step {result.step}; {where}" + (f"; export {result.export}" if result.export else ""))
    return 0
