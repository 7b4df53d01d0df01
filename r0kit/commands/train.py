"""``r0kit train``: train a K-step generator by regularized reward maximization (R0).

``r0kit train`` with no config runs the built-in ``mini`` preset: R0 on the mini world, then the
comparison of its ``[evaluate]`` table (the export against the base model at 4 and 25 steps).
``r0kit train --config train.toml`` runs a config (see ``r0kit/presets/train_r0.toml``);
``r0kit train --preset train_tiny`` tries the whole loop on a CPU in seconds, without weights.
``--resume latest`` continues from the newest checkpoint under the output folder;
``--overwrite`` replaces the run there. Multi-GPU:
``accelerate launch -m r0kit.cli train --config train.toml`` (DDP), or with an FSDP
config file (``fsdp_version: 2``) to shard SD3/FLUX-size networks; ``--dry-run`` prints
the memory a run needs from the model's configs alone. Every way a run ends (Ctrl-C,
a NaN, an error) keeps a checkpoint of its last completed step.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from r0kit.commands._common import (
    add_output,
    add_reward_options,
    apply_reward_options,
    check_objective_devices,
    describe,
    int_at_least,
    quiet_library_progress,
    print_evaluation,
)


def add_parser(sub) -> None:
    from r0kit.commands.optimize import preset_names

    trainable = preset_names("train")
    p = sub.add_parser("train", help="train a K-step generator with rewards (R0)", description=describe(__doc__))
    p.add_argument("--config", "-c", type=Path, help="training config TOML (default: the mini preset)")
    p.add_argument("--preset", help=f"built-in preset to start from: {', '.join(trainable)}")
    p.add_argument("--resume", help="a checkpoint folder, or 'latest' (the newest under the output folder)")
    p.add_argument("--model", help="override generator.model (hub id or pipeline folder)")
    p.add_argument("--prompts-file", type=Path, help="the training prompts (.txt one a line, or .jsonl)")
    p.add_argument("--steps", type=int, help="override steps (total optimizer steps)")
    p.add_argument("--max-steps", type=int_at_least(1), help="stop at this step with a checkpoint (resume later)")
    add_reward_options(p)
    add_output(p, default=None, what="the output folder (default: the config's)", resume=True)
    p.add_argument("--no-progress", action="store_true", help="no progress bars: the training bar (its line every log_every steps is printed plainly instead), the evaluation's, and the model-loading and download bars of huggingface_hub, transformers and diffusers")
    p.add_argument(
        "--dry-run", action="store_true",
        help="print the memory the run needs (weights, gradients, optimizer state, activations with and without "
        "checkpointing, per FSDP process count) from the model's configs alone, and exit",
    )
    p.set_defaults(run=run)


def build_config(args: argparse.Namespace):
    """The validated training config; a bad value is reported as the flag or config key that set it."""
    from r0kit.commands.optimize import describe_source, preset_path
    from r0kit.config import load_toml
    from r0kit.errors import ConfigError
    from r0kit.train import parse_train

    source = args.config or preset_path(args.preset or "mini", "train")
    where = describe_source(Path(source))
    data = load_toml(source)
    origins: dict[str, str] = {}
    base = Path(source).parent
    for table in (data, data.get("evaluate")):
        if isinstance(table, dict) and isinstance(table.get("prompts_file"), str) and not Path(table["prompts_file"]).is_absolute():
            table["prompts_file"] = str(base / table["prompts_file"])
    gen = data.setdefault("generator", {})
    if isinstance(gen, dict) and isinstance(gen.get("model"), str):
        model = Path(gen["model"])
        if not model.is_absolute() and (base / model).exists():
            gen["model"] = str(base / model)
    if args.model:
        gen["model"] = args.model
        origins["generator.model"] = "--model"
    if args.prompts_file is not None:
        data["prompts_file"] = args.prompts_file
        data["prompts"] = []
        origins["prompts_file"] = "--prompts-file"
    if args.steps is not None:
        data["steps"] = args.steps
        origins["steps"] = "--steps"
    if args.output is not None:
        data["output"] = args.output
        origins["output"] = "--output"
    apply_reward_options(data, args.reward_option, origins, where)
    if not data.get("prompts") and not data.get("prompts_file"):
        raise ConfigError(
            f"no training prompts: pass --prompts-file FILE (one prompt a line, or JSONL), "
            f"or set prompts = [...] or prompts_file = '...' in --config ({where} has neither)"
        )
    if isinstance(gen, dict) and not gen.get("model"):
        raise ConfigError(f"no model to train: pass --model (a hub id or a pipeline folder), or set generator.model in {where}")
    return parse_train(data, where, origins), origins, where


def run(args: argparse.Namespace) -> int:
    if args.no_progress:
        quiet_library_progress()
    from r0kit.checks import check_device, check_model, check_output_dir
    from r0kit.config import check_objective, read_prompts
    from r0kit.errors import ConfigError
    from r0kit.testing.pipelines import resolve_tiny_model
    from r0kit.train import read_checkpoint_state, resolve_resume, train

    if args.resume is not None and args.overwrite:
        raise ConfigError("--resume continues the run in the output folder and --overwrite replaces it; give one of them")
    cfg, origins, where = build_config(args)
    check_objective(cfg.objective, where, origins)  # a reward's option typo, before anything loads
    check_objective_devices(cfg.objective, lambda key: origins.get(key, f"{key} in {where}"))
    if args.dry_run:  # nothing is written, so the output folder is not checked
        from r0kit.memory import estimate_training

        check_model(cfg.generator.model, origins.get("generator.model", f"generator.model in {where}"))
        cfg.generator.model = resolve_tiny_model(cfg.generator.model)
        print(estimate_training(cfg).table())
        return 0
    what = origins.get("output", f"output in {where}")
    from r0kit.train import TRAIN_OUTPUTS, continue_flags, resume_hint

    check_output_dir(cfg.output, what, overwrite=args.overwrite, resume=args.resume is not None, resume_hint=resume_hint(cfg.output),
                     outputs=TRAIN_OUTPUTS)
    device = cfg.generator.model_extra.get("device") if cfg.generator.model_extra else None
    if isinstance(device, str):
        check_device(device, f"generator.device in {where}")
    if not cfg.prompts:
        read_prompts(cfg.prompts_file)  # a missing or empty file is found before any model loads
    if cfg.evaluate is not None:
        from r0kit.evaluate import check_training_evaluation

        check_training_evaluation(cfg)  # a bad baseline, metric or option is found before training, not after
    ckpt = resolve_resume(args.resume, Path(cfg.output))
    if ckpt is not None:
        read_checkpoint_state(ckpt)
    check_model(cfg.generator.model, origins.get("generator.model", f"generator.model in {where}"))
    cfg.generator.model = resolve_tiny_model(cfg.generator.model)
    result = train(cfg, resume=args.resume, overwrite=args.overwrite, max_steps=args.max_steps, progress=not args.no_progress,
                   verbose=True, source=where, origins=origins, argv=getattr(args, "argv", None))
    go_on = continue_flags(cfg.steps, origins)
    if result.interrupted:
        if result.checkpoint is None:
            print(f"interrupted before the first step; {str(cfg.output)!r} is as it was", file=sys.stderr)
        else:
            print(f"interrupted at step {result.step}; the last checkpoint is {result.checkpoint}; "
                  f"continue with {go_on}", file=sys.stderr)
        return 130
    where_ckpt = f"checkpoint {result.checkpoint}" if result.checkpoint else "no checkpoint"
    print(f"trained to step {result.step}; {where_ckpt}" + (f"; export {result.export}" if result.export else "")
          + (f"; {cfg.steps - result.step} steps to go: continue with {go_on}" if result.step < cfg.steps else ""))
    if cfg.evaluate is not None and result.export is not None:
        from r0kit.evaluate import evaluate_training

        evaluation, files = evaluate_training(cfg, result.export, progress=not args.no_progress)
        print_evaluation(evaluation)
        print("wrote " + ", ".join(str(f) for f in [evaluation.summary_csv, evaluation.csv, *files]))
    return 0
