"""``r0kit optimize``: test-time optimization of one or more prompts.

With no arguments it runs the built-in offline preset (``demo``), which needs
no weights and finishes in seconds on a CPU.
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
    from r0kit.config import load_objective_config, load_toml, parse_run, read_prompts

    source = args.config or preset_path(args.preset or "demo")
    data: dict[str, Any] = load_toml(source)
    if args.objective is not None:
        data["objective"] = load_objective_config(args.objective).model_dump()
        data["objective"] = _flatten_terms(data["objective"])
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
    if args.normalize_gradients:
        data.setdefault("objective", {})["normalize_gradients"] = True
    cfg = parse_run(data, str(source))
    if cfg.prompts_file is not None and not cfg.prompts:
        base = Path(source).parent
        cfg.prompts = read_prompts(cfg.prompts_file if cfg.prompts_file.is_absolute() else base / cfg.prompts_file)
    if not cfg.prompts:
        raise ConfigError("no prompts: give them as arguments, with --prompts-file, or in the config")
    return cfg


def _flatten_terms(obj: dict[str, Any]) -> dict[str, Any]:
    # TermConfig.model_dump() already inlines extras; drop None names.
    for table in ("rewards", "regularizers"):
        for term in obj.get(table, {}).values():
            if term.get("name") is None:
                term.pop("name", None)
    return obj


def run(args: argparse.Namespace) -> int:
    import r0kit
    from r0kit.config import build_objective
    from r0kit.optimize import optimize
    from r0kit.outputs import save_optimize_outputs

    cfg = build_config(args)
    objective = build_objective(cfg.objective)
    gen = r0kit.generator(cfg.generator.name, **cfg.generator.options)
    print(f"r0kit: optimizing {len(cfg.prompts)} prompt(s) for {cfg.steps} steps: {objective!r}", file=sys.stderr)
    result = optimize(
        objective,
        gen,
        cfg.prompts,
        steps=cfg.steps,
        seed=cfg.seed,
        optimizer=cfg.optimizer.name,
        lr=cfg.optimizer.lr,
        momentum=cfg.optimizer.momentum,
        nesterov=cfg.optimizer.nesterov,
        weight_decay=cfg.optimizer.weight_decay,
        grad_clip=cfg.optimizer.grad_clip,
        progress=not args.no_progress,
    )
    files = save_optimize_outputs(
        cfg.output, result, objective=repr(objective), extra={"generator": cfg.generator.model_dump()}
    )
    first, last = result.history[0]["values"]["total"], result.history[-1]["values"]["total"]
    print(
        json.dumps(
            {"objective_first": first, "objective_last": last, "best_step": result.best_step, "files": [str(f) for f in files]},
            indent=None,
        )
    )
    if result.stopped:
        print(f"r0kit: {result.stopped}", file=sys.stderr)
        return 130 if result.stopped.startswith("interrupted") else 1
    return 0
