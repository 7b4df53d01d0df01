"""``r0kit optimize``: test-time optimization of one or more prompts.

With no config it runs ReNO on the mini world (the ``reno_mini`` preset: the
initial noise of the world's base model, its rewards, seconds on a CPU), for
the prompts given or the preset's. With ``--generator noise`` or ``--generator
latent`` and another ``--model`` it starts from the ``reno`` preset (SD-Turbo,
SGD-Nesterov lr 5, gradient clip 0.1, 50 steps); ``--preset demo`` optimizes
pixels against weight-free rewards.

Everything the run needs is checked before a model loads or a step is taken:
the values (errors name the flag or config key that set them), the devices,
and the output folder (see the output rule in the README). The results are
written aside and moved into the output folder when the run has them, so a
run that fails early leaves the folder as it found it.

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

from r0kit.commands._common import (
    add_output,
    add_reward_options,
    apply_reward_options,
    describe,
    finite_float,
    int_at_least,
    key_values,
    quiet_library_progress,
)
from r0kit.errors import ConfigError


def add_parser(sub) -> None:
    p = sub.add_parser("optimize", help="optimize images for prompts (test-time)", description=describe(__doc__))
    p.add_argument("prompts", nargs="*", help="prompts (default: the config's, or the preset's)")
    p.add_argument("--config", "-c", type=Path, help="run config TOML (see r0kit/presets/demo.toml)")
    p.add_argument("--preset", default=None, help=f"built-in preset to start from: {', '.join(preset_names('optimize'))} "
                   "(default: demo; reno_mini with --model r0kit-mini; reno with another --model or --generator noise/latent)")
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
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], help="the networks' dtype")
    p.add_argument("--log-every", type=int_at_least(1), default=None, metavar="N", help="log every term's mean every N steps")
    p.add_argument("--steps", type=int, help="optimizer steps (default: the config's)")
    p.add_argument("--seed", type=int, help="seed of the first prompt; prompt i uses seed + i")
    p.add_argument("--lr", type=finite_float, help="learning rate")
    p.add_argument("--optimizer", choices=["sgd", "adam"], help="the optimizer")
    p.add_argument("--grad-clip", type=finite_float, help="clip each prompt's gradient norm to this")
    p.add_argument("--best-by", choices=["reward", "total"], help="rank iterates by the weighted rewards (default, as ReNO) "
                   "or by the total with the regularizers")
    p.add_argument("--normalize-gradients", action="store_true", default=None, help="R0 per-reward gradient normalization")
    add_reward_options(p)
    add_output(p, default=None, what="the output folder (default: the config's, r0kit-out)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (r0kit's, nor the model-loading and download bars of huggingface_hub, transformers and diffusers)")
    p.set_defaults(run=run)


def preset_names(command: str | None = None) -> list[str]:
    """The built-in presets (``r0kit/presets/*.toml``), or only those of ``command``:
    ``"train"`` (``mini`` and ``train*``) or ``"optimize"`` (the others)."""
    folder = resources.files("r0kit") / "presets"
    names = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))
    if command is None:
        return names
    return [n for n in names if _preset_command(n) == command]


def _preset_command(name: str) -> str:
    return "train" if name == "mini" or name.startswith("train") else "optimize"


def preset_path(name: str, command: str | None = None) -> Path:
    """The file of the built-in preset ``name``.

    :raises ConfigError: no such preset, or (with ``command``) a preset of the other command.
    """
    ref = resources.files("r0kit") / "presets" / f"{name}.toml"
    if not ref.is_file():
        raise ConfigError(f"--preset {name!r}: no such preset; built-in presets: {', '.join(preset_names(command))}")
    if command is not None and _preset_command(name) != command:
        other = _preset_command(name)
        raise ConfigError(
            f"--preset {name!r} is a preset of r0kit {other}: run r0kit {other} --preset {name}; "
            f"r0kit {command}'s presets are {', '.join(preset_names(command))}"
        )
    return Path(str(ref))


def describe_source(path: Path) -> str:
    """How to name a config file in a message: a packaged preset by its name, a user's file by its path."""
    presets = Path(str(resources.files("r0kit") / "presets"))
    if path.parent == presets:
        return f"the {path.stem} preset ({path.name})"
    return str(path)


def build_config(args: argparse.Namespace):
    """The validated run config; a bad value is reported as the flag or config key that set it."""
    cfg, _ = build_config_and_origins(args)
    return cfg


def default_preset(generator: str | None, model: str | None) -> str:
    """The preset a run without ``--config``/``--preset`` starts from: ``reno_mini`` for a ``r0kit-mini``
    model (ReNO on the mini world), ``reno`` for a diffusion generator or another model, else ``demo``
    (the offline pixel optimization, which needs no weights)."""
    if model is not None and str(model).startswith("r0kit-mini"):
        return "reno_mini"
    if generator in ("noise", "latent") or model is not None:
        return "reno"
    return "demo"


def build_config_and_origins(args: argparse.Namespace):
    from r0kit.config import load_toml, objective_table, parse_objective, parse_run, read_prompts

    preset = args.preset or default_preset(getattr(args, "generator", None), getattr(args, "model", None))
    source = args.config or preset_path(preset, "optimize")
    where = describe_source(Path(source))
    data: dict[str, Any] = load_toml(source)
    origins: dict[str, str] = {}
    if args.objective is not None:
        table = objective_table(args.objective)
        parse_objective(table, str(args.objective))  # errors name the objective file, not the run config
        data["objective"] = table
        origins["objective"] = f"--objective {args.objective}"
    if args.prompts:
        data["prompts"] = list(args.prompts)
        data.pop("prompts_file", None)
        origins["prompts"] = "the prompt argument(s)"
    if args.prompts_file is not None:
        data["prompts"] = read_prompts(args.prompts_file)
        data.pop("prompts_file", None)
        origins["prompts"] = f"--prompts-file {args.prompts_file}"
    for key, flag in (("steps", "steps"), ("seed", "seed"), ("output", "output"), ("batch_size", "batch_size"),
                      ("device", "device"), ("dtype", "dtype"), ("best_by", "best_by")):
        if getattr(args, flag, None) is not None:
            data[key] = getattr(args, flag)
            origins[key] = "--" + flag.replace("_", "-")
    opt = data.setdefault("optimizer", {})
    for key, attr in (("lr", "lr"), ("name", "optimizer"), ("grad_clip", "grad_clip")):
        if getattr(args, attr) is not None:
            opt[key] = getattr(args, attr)
            origins[f"optimizer.{key}"] = "--" + attr.replace("_", "-")
    gen = data.setdefault("generator", {"name": "pixel"})
    if args.generator is not None and args.generator != gen.get("name"):
        data["generator"] = gen = {"name": args.generator}
        origins["generator.name"] = "--generator"
    if args.model is not None:
        gen["model"] = args.model
        origins["generator.model"] = "--model"
    for key in ("height", "width"):
        if getattr(args, key, None) is not None:
            gen[key] = getattr(args, key)
            origins[f"generator.{key}"] = f"--{key}"
    for key, value in key_values(getattr(args, "generator_option", []) or [], "-G").items():
        flag = origins.get(f"generator.{key}")
        if flag is not None and flag.startswith("--"):  # --model, --height, --width, --generator
            raise ConfigError(f"{flag} and -G {key}={value!r} both set generator.{key}; give it once")
        gen[key] = value
        origins[f"generator.{key}"] = f"-G {key}"
    if args.normalize_gradients:
        data.setdefault("objective", {})["normalize_gradients"] = True
    apply_reward_options(data, getattr(args, "reward_option", []) or [], origins, origins.get("objective", where))
    cfg = parse_run(data, where, origins)
    if cfg.prompts_file is not None and not cfg.prompts:
        base = Path(source).parent
        cfg.prompts = read_prompts(cfg.prompts_file if cfg.prompts_file.is_absolute() else base / cfg.prompts_file)
    if not cfg.prompts:
        raise ConfigError("no prompts: give them as arguments, with --prompts-file, or in the config")
    origins["<source>"] = where
    return cfg, origins


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


def check_devices(cfg, origins: dict[str, str]) -> None:
    """Every device the run names (its own, the generator's, the rewards') exists here."""
    from r0kit.checks import check_device, check_model
    from r0kit.commands._common import check_objective_devices, check_option_devices

    where = origins["<source>"]

    def named(key: str) -> str:
        parts = key.split(".")
        for n in range(len(parts), 0, -1):
            prefix = ".".join(parts[:n])
            if prefix in origins:
                return origins[prefix] if prefix == key else f"{key} in {origins[prefix]}"
        return f"{key} in {where}"

    check_device(cfg.device, named("device"))
    check_option_devices({"generator": cfg.generator.options}, named)
    check_model(cfg.generator.options.get("model"), named("generator.model"))
    check_objective_devices(cfg.objective, named)


def objective_source(args: argparse.Namespace, origins: dict[str, str]) -> str | None:
    """The file the objective came from (--objective, else --config, else the preset), as errors name it."""
    source = args.objective or args.config
    return str(source) if source is not None else origins.get("<source>")


def run(args: argparse.Namespace) -> int:
    import logging

    from r0kit.config import check_objective

    if args.no_progress:
        quiet_library_progress()

    from r0kit.checks import check_output_dir
    from r0kit.io import StagedDir
    from r0kit.optimize import shard_prompts

    cfg, origins = build_config_and_origins(args)
    if isinstance(cfg.generator.model_extra, dict) and isinstance(cfg.generator.model_extra.get("model"), str):
        from r0kit.testing.pipelines import resolve_tiny_model

        cfg.generator.model_extra["model"] = resolve_tiny_model(cfg.generator.model_extra["model"])
    check_devices(cfg, origins)
    check_objective(cfg.objective, objective_source(args, origins), origins)
    if args.log_every:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
        logging.getLogger("r0kit.optimize").setLevel(logging.INFO)
    what = origins.get("output", f"output in {origins['<source>']}")
    from r0kit.outputs import OPTIMIZE_OUTPUTS

    root = check_output_dir(cfg.output, what, overwrite=args.overwrite, outputs=OPTIMIZE_OUTPUTS)
    shard = shard_prompts(cfg.prompts)
    outdir = root / f"rank{shard.rank}" if shard.distributed else root
    if shard.distributed:
        _barrier()  # every rank has checked the output folder before any of them writes to it
        if not shard.prompts:
            print(f"r0kit: rank {shard.rank} has no prompts ({len(cfg.prompts)} for {shard.world_size} processes)", file=sys.stderr)
            return 0
    staged = StagedDir(outdir)
    staged.open()  # proves the folder is writable, before any model loads
    try:
        result, objective = _optimize(cfg, args, shard, origins)
    except BaseException:
        staged.discard()
        raise
    return _finish(result, objective, cfg, shard, staged, getattr(args, "argv", None))


def _optimize(cfg, args, shard, origins):
    import r0kit
    from r0kit.config import build_objective, flags_under
    from r0kit.errors import OptionError
    from r0kit.optimize import optimize_prompts

    device = None
    if shard.distributed and cfg.device == "auto" and shard.device is not None:
        device = str(shard.device)
    objective = build_objective(cfg.objective, objective_source(args, origins), origins)
    try:
        gen = r0kit.generator(cfg.generator.name, **generator_options(cfg, device))
    except OptionError as exc:
        raise OptionError(f"{exc}{flags_under(origins, 'generator.')}") from None
    where = f" (rank {shard.rank} of {shard.world_size})" if shard.distributed else ""
    print(f"r0kit: optimizing {len(shard.prompts)} prompt(s){where} for {cfg.steps} steps: {objective!r}", file=sys.stderr)
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
        best_by=cfg.best_by,
        progress=not args.no_progress,
        log_every=args.log_every,
    )
    return result, objective


def _finish(result, objective, cfg, shard, staged, argv) -> int:
    """Write what the run earned, say where, and pick the exit status."""
    import tempfile

    from r0kit.outputs import save_optimize_outputs

    status = "complete" if not result.stopped else "interrupted" if result.interrupted else "failed" if result.error else "stopped"
    extra = {"generator": cfg.generator.model_dump()}
    shard_info = {"rank": shard.rank, "world_size": shard.world_size, "prompts": len(shard.prompts)} if shard.distributed else None
    if not result.kept:
        staged.discard()
        print(f"r0kit: {result.stopped}. Nothing was written: {str(staged.target)!r} is as it was", file=sys.stderr)
        return _status_code(result)
    try:
        save_optimize_outputs(staged.path, result, objective=repr(objective), extra=extra, status=status,
                              n_prompts=len(shard.prompts), shard=shard_info, argv=argv)
        files = staged.commit()
        where = staged.target
    except KeyboardInterrupt:  # a second Ctrl-C while writing: leave the folder as it was
        staged.discard()
        raise
    except OSError as exc:
        staged.discard()
        rescue = Path(tempfile.mkdtemp(prefix="r0kit-rescue-"))
        try:
            files = save_optimize_outputs(rescue, result, objective=repr(objective), extra=extra, status=status,
                                          n_prompts=len(shard.prompts), shard=shard_info, argv=argv)
        except OSError as again:
            raise ConfigError(
                f"cannot write the results to {str(staged.target)!r} ({exc}) nor to {str(rescue)!r} ({again}); "
                "nothing was kept"
            ) from None
        print(f"r0kit: error: cannot write to {str(staged.target)!r} ({exc}); wrote the results to {str(rescue)!r} instead",
              file=sys.stderr)
        _print_summary(result, shard, files)
        return 2
    _print_summary(result, shard, files)
    if result.stopped:
        n = len(result.kept)
        kept = f"the best iterate{'s' if n != 1 else ''} of {n} prompt{'s' if n != 1 else ''} in {str(where)!r}"
        head = "r0kit: error: " if result.error is not None else "r0kit: "
        print(f"{head}{result.stopped}. Wrote {kept}", file=sys.stderr)
    return _status_code(result)


def _status_code(result) -> int:
    if not result.stopped:
        return 0
    if result.interrupted:
        return 130
    return 2 if result.error is not None else 1


def _print_summary(result, shard, files) -> None:
    def first_last(i: int) -> tuple[float | None, float | None]:
        seen = [rec["values"]["total"][i] for rec in result.history if rec["values"]["total"][i] is not None]
        return (seen[0], seen[-1]) if seen else (None, None)

    pairs = [first_last(i) for i in range(len(result.prompts))]
    print(
        json.dumps(
            {
                "rank": shard.rank,
                "objective_first": [a for a, _ in pairs],
                "objective_last": [b for _, b in pairs],
                "best_step": result.best_step,
                "files": [str(f) for f in files],
            }
        )
    )


def _barrier() -> None:
    from accelerate import PartialState

    PartialState().wait_for_everyone()
