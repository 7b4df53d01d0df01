"""``r0kit optimize``: test-time optimization of one or more prompts.

With no arguments it runs the built-in offline preset (``demo``), which needs
no weights and finishes in seconds on a CPU. With ``--generator noise`` or
``--generator latent`` and no config it starts from the ``reno`` preset
(SD-Turbo, SGD-Nesterov lr 5, gradient clip 0.1, 50 steps).

Under ``accelerate launch`` the prompts are sharded across the processes;
each process writes its images under ``<output>/rank<r>/`` with a
``shard.json`` naming the global index of each prompt.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from r0kit.errors import ConfigError


def add_parser(sub) -> None:
    p = sub.add_parser("optimize", help="optimize images for prompts (test-time)")
    p.add_argument("prompts", nargs="*", help="prompts (default: the config's, or the preset's)")
    p.add_argument("--config", "-c", type=Path, help="run config TOML (see r0kit/presets/demo.toml)")
    p.add_argument("--preset", default=None, help="built-in preset to start from (default: demo when no --config)")
    p.add_argument("--objective", type=Path, help="TOML file whose [objective] table replaces the config's")
    p.add_argument("--prompts-file", type=Path, help="text (one per line) or JSONL file of prompts")
    p.add_argument("--generator", help="generator name (r0kit plugins lists them)")
    p.add_argument("--model", help="model hub id or local folder, passed to the generator as model=")
    p.add_argument("--height", type=int, help="image height, passed to the generator")
    p.add_argument("--width", type=int, help="image width, passed to the generator")
    p.add_argument(
        "--generator-option",
        "-G",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a generator option; VALUE is read as TOML (steps=2, scheduler='ddim', gradient_checkpointing=true)",
    )
    p.add_argument("--batch-size", type=int, help="prompts optimized together (default: the config's, 1)")
    p.add_argument("--device", help="cuda, cuda:1, cpu or auto (default: the config's)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--log-every", type=int, default=None, metavar="N", help="log every term's mean every N steps")
    p.add_argument("--steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", choices=["sgd", "adam"])
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--normalize-gradients", action="store_true", default=None, help="R0 per-reward gradient normalization")
    p.add_argument("--output", "-o", type=Path, help="output folder (default r0kit-out)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def preset_path(name: str) -> Path:
    ref = resources.files("r0kit") / "presets" / f"{name}.toml"
    if not ref.is_file():
        known = sorted(p.name[:-5] for p in (resources.files("r0kit") / "presets").iterdir() if p.name.endswith(".toml"))
        raise ConfigError(f"unknown preset {name!r}; built-in presets: {', '.join(known)}")
    return Path(str(ref))


def build_config(args: argparse.Namespace):
    from r0kit.config import load_toml, objective_table, parse_objective, parse_run, read_prompts

    preset = args.preset or ("reno" if getattr(args, "generator", None) in ("noise", "latent") else "demo")
    source = args.config or preset_path(preset)
    data: dict[str, Any] = load_toml(source)
    if args.objective is not None:
        table = objective_table(args.objective)
        parse_objective(table, str(args.objective))  # errors name the objective file, not the run config
        data["objective"] = table
    if args.prompts:
        data["prompts"] = list(args.prompts)
        data.pop("prompts_file", None)
    if args.prompts_file is not None:
        data["prompts"] = read_prompts(args.prompts_file)
        data.pop("prompts_file", None)
    for key, attr in (("steps", "steps"), ("seed", "seed"), ("output", "output")):
        if getattr(args, attr) is not None:
            data[key] = getattr(args, attr)
    opt = data.setdefault("optimizer", {})
    for key, attr in (("lr", "lr"), ("name", "optimizer"), ("grad_clip", "grad_clip")):
        if getattr(args, attr) is not None:
            opt[key] = getattr(args, attr)
    gen = data.setdefault("generator", {"name": "pixel"})
    if args.generator is not None and args.generator != gen.get("name"):
        data["generator"] = gen = {"name": args.generator}
    if args.model is not None:
        gen["model"] = args.model
    for key in ("height", "width"):
        if getattr(args, key, None) is not None:
            gen[key] = getattr(args, key)
    gen.update(_parse_options(getattr(args, "generator_option", []) or []))
    for key in ("batch_size", "device", "dtype"):
        if getattr(args, key, None) is not None:
            data[key] = getattr(args, key)
    if args.normalize_gradients:
        data.setdefault("objective", {})["normalize_gradients"] = True
    cfg = parse_run(data, str(source))
    if cfg.prompts_file is not None and not cfg.prompts:
        base = Path(source).parent
        cfg.prompts = read_prompts(cfg.prompts_file if cfg.prompts_file.is_absolute() else base / cfg.prompts_file)
    if not cfg.prompts:
        raise ConfigError("no prompts: give them as arguments, with --prompts-file, or in the config")
    return cfg


def _parse_options(items: list[str]) -> dict[str, Any]:
    import tomllib

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(f"--generator-option {item!r}: expected KEY=VALUE, e.g. steps=2 or scheduler='ddim'")
        try:
            out[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = raw  # a bare string
    return out


def generator_options(cfg, device: str | None = None) -> dict[str, Any]:
    """The generator's options, with the run's device and dtype added where the generator takes them."""
    import inspect

    from r0kit.plugins import get_host

    options = cfg.generator.options
    entry = get_host().generators.get(cfg.generator.name)
    try:
        accepted = inspect.signature(entry.factory).parameters
    except (TypeError, ValueError):
        accepted = {}
    dev = device if device is not None else (cfg.device if cfg.device != "auto" else None)
    if dev is not None and "device" in accepted and "device" not in options:
        options["device"] = dev
    if cfg.dtype != "float32" and "dtype" in accepted and "dtype" not in options:
        options["dtype"] = cfg.dtype
    return options


def run(args: argparse.Namespace) -> int:
    import logging

    import r0kit
    from r0kit.config import build_objective
    from r0kit.io import atomic_path
    from r0kit.optimize import optimize_prompts, shard_prompts
    from r0kit.outputs import save_optimize_outputs

    cfg = build_config(args)
    if args.log_every:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
        logging.getLogger("r0kit.optimize").setLevel(logging.INFO)
    shard = shard_prompts(cfg.prompts)
    outdir = Path(cfg.output)
    if shard.distributed:
        outdir = outdir / f"rank{shard.rank}"
        if not shard.prompts:
            print(f"r0kit: rank {shard.rank} has no prompts ({len(cfg.prompts)} for {shard.world_size} processes)", file=sys.stderr)
            return 0
    device = None
    if shard.distributed and cfg.device == "auto" and shard.device is not None:
        device = str(shard.device)
    objective = build_objective(cfg.objective)
    gen = r0kit.generator(cfg.generator.name, **generator_options(cfg, device))
    where = f" (rank {shard.rank} of {shard.world_size})" if shard.distributed else ""
    print(
        f"r0kit: optimizing {len(shard.prompts)} prompt(s){where} for {cfg.steps} steps: {objective!r}", file=sys.stderr
    )
    result = optimize_prompts(
        objective,
        gen,
        shard.prompts,
        indices=shard.indices,
        batch_size=cfg.batch_size,
        steps=cfg.steps,
        seed=cfg.seed,
        optimizer=cfg.optimizer.name,
        lr=cfg.optimizer.lr,
        momentum=cfg.optimizer.momentum,
        nesterov=cfg.optimizer.nesterov,
        weight_decay=cfg.optimizer.weight_decay,
        grad_clip=cfg.optimizer.grad_clip,
        progress=not args.no_progress,
        log_every=args.log_every,
    )
    files = save_optimize_outputs(
        outdir, result, objective=repr(objective), extra={"generator": cfg.generator.model_dump()}
    )
    if shard.distributed:
        shard_file = outdir / "shard.json"
        with atomic_path(shard_file) as tmp:
            tmp.write_text(
                json.dumps(
                    {"rank": shard.rank, "world_size": shard.world_size, "indices": result.indices, "prompts": result.prompts},
                    indent=1,
                )
            )
        files.append(shard_file)
    first, last = result.history[0]["values"]["total"], result.history[-1]["values"]["total"]
    print(
        json.dumps(
            {
                "rank": shard.rank,
                "objective_first": first,
                "objective_last": last,
                "best_step": result.best_step,
                "files": [str(f) for f in files],
            },
            indent=None,
        )
    )
    if result.stopped:
        print(f"r0kit: {result.stopped}", file=sys.stderr)
        return 130 if "interrupted" in result.stopped else 1
    return 0
