"""What every subcommand shares: the flags' conventions and the checks that run before any work.

Conventions (``tests/test_cli_conventions.py`` walks every parser to hold them):

* a short flag means the same long flag in every command (:data:`SHORT_FLAGS`);
* a command that writes files has ``--output``/``-o`` and ``--overwrite``
  (the output rule: :func:`r0kit.checks.check_output_dir`);
* ``KEY=VALUE`` options (``-G``/``--generator-option``, ``-R``/``--reward-option``)
  read VALUE as TOML, as a config file would (``steps=2``, ``scheduler='ddim'``;
  a bare word that is not TOML is a string), through :func:`key_values`;
* numbers that no config file holds are checked by the argparse types below,
  so an error names the flag.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tomllib
from pathlib import Path
from typing import Any, Callable

from r0kit.errors import ConfigError

#: Each short flag and the one long flag it stands for, in every command.
SHORT_FLAGS: dict[str, str] = {
    "-o": "--output",
    "-c": "--config",
    "-G": "--generator-option",
    "-R": "--reward-option",
    "-r": "--reward",
    "-m": "--metric",
    "-M": "--metric-option",
    "-v": "--verbose",
}


def describe(doc: str | None) -> str:
    """A command's ``--help`` description: the first paragraph of its module docstring, as plain text."""
    return " ".join((doc or "").split("\n\n")[0].replace("``", "").split())


def _output_path(text: str) -> Path:
    """``--output``'s type: ``Path("")`` is the current folder, which an empty argument never meant."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty; give a path, such as -o run1")
    return Path(text)


def add_output(p: argparse.ArgumentParser, *, default: Path | None, what: str, resume: bool = False) -> None:
    """``--output``/``-o`` and ``--overwrite``, worded for ``what`` (a folder, or a file's description)."""
    shown = f" (default {default})" if default is not None else ""
    p.add_argument("--output", "-o", type=_output_path, default=default, metavar="PATH", help=f"where to write: {what}{shown}")
    more = "; it never deletes files the earlier run did not write" if "folder" in what else ""
    p.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace what an earlier run wrote to --output, once this run has results{more}"
        + (" (without it a used folder is refused; --resume continues it)" if resume else " (without it a used one is refused)"),
    )


#: Wider than this, a table printed to a file or pipe is turned (a row per column) rather than one long line.
READABLE_WIDTH = 160


def table_console():
    """The rich Console a command prints its tables to (:func:`r0kit.outputs.console`)."""
    from r0kit.outputs import console

    return console()


def print_evaluation(evaluation: Any) -> None:
    """An :class:`r0kit.evaluate.Evaluation`'s table, turned where it is wider than the terminal (or than
    :data:`READABLE_WIDTH` in a file), then its notes: what ``evaluate`` and ``train`` print."""
    console = table_console()
    console.print(evaluation.table(min(console.width, READABLE_WIDTH)))
    for note in evaluation.notes:
        print(note)


def quiet_library_progress() -> None:
    """``--no-progress``: the model-loading and download bars of huggingface_hub, transformers and
    diffusers go too, not only r0kit's own. Call it before any model loads: huggingface_hub and
    transformers read ``HF_HUB_DISABLE_PROGRESS_BARS`` at import, r0kit's diffusers loader reads it
    when it loads a model."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules:  # imported already: it read the variable too early
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def committed_table(p: argparse.ArgumentParser, args: argparse.Namespace, measured: tuple[str, ...], table: Path,
                    writes: Callable[[Path], list[Path]] = lambda out: [out]) -> Path:
    """``args.out``, or ``table`` (a committed results file, or folder of them) when every option in
    ``measured`` has its default.

    A benchmark run with another model, config or sample count measures something else, so writing it
    into the committed results folder would lose a committed table: such a run must name an ``--out``
    outside that folder. Every file ``writes(out)`` names then goes through the output rule
    (:func:`r0kit.checks.check_output_file`): elsewhere, replacing one needs ``--overwrite`` (the parser
    must have that flag); the committed tables are rewritten by a default run without it, as git keeps
    what they held.

    :raises SystemExit: (``p.error``) ``--out`` is missing or lies in the committed results folder while an
        option in ``measured`` changed, or names another file there than ``table``; or a file the run
        writes cannot be written (an existing one elsewhere without ``--overwrite``, a folder in its place).
    """
    from r0kit.checks import check_output_file
    from r0kit.errors import ConfigError

    changed = [f"--{k.replace('_', '-')}" for k in measured if getattr(args, k) != p.get_default(k)]
    folder = (table if not table.suffix else table.parent).resolve()
    given = None if args.out is None else Path(args.out).expanduser()
    out = table.resolve() if given is None else given.resolve()
    in_results = out == folder or folder in out.parents
    if in_results:  # in the committed results: only this run's own table
        if changed:
            verb = "changes" if len(changed) == 1 else "change"
            p.error(f"{', '.join(changed)} {verb} what is measured, so the run must not write into {folder} "
                    f"(the committed tables); give --out somewhere else")
        if out != table.resolve():
            p.error(f"--out {str(args.out)!r} is in {folder} (the committed tables) but is not this run's table "
                    f"{table}; leave --out out, or give somewhere else")
    path = table if given is None else given
    try:
        for f in writes(path):
            check_output_file(f, "--out", overwrite=args.overwrite or in_results)
    except ConfigError as exc:
        p.error(str(exc))
    return path


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an int >= ``low``."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
        return v

    parse.__name__ = f"int>={low}"
    return parse


def finite_float(text: str) -> float:
    """An argparse type: a finite float (``inf`` and ``nan`` are refused here, ranges by the config)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return v


def key_values(items: list[str], flag: str, *, dotted: bool = False, example: str | None = None) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` items (``NAME.KEY=VALUE`` when ``dotted``) with TOML values.

    :param example: the item the error shows (default: a reward option when ``dotted``, else a generator option).
    :returns: ``{key: value}``, or ``{name: {key: value}}`` when ``dotted``.
    :raises ConfigError: naming ``flag`` and the item, for an item of the wrong shape.
    """
    out: dict[str, Any] = {}
    example = example or ("hpsv2.version='2.0'" if dotted else "steps=2 or scheduler='ddim'")
    shape = "NAME.KEY=VALUE" if dotted else "KEY=VALUE"
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        name, dot, opt = key.partition(".") if dotted else ("", "", key)
        if not sep or (dotted and not (dot and name)) or not opt.isidentifier():
            raise ConfigError(f"{flag} {item!r}: expected {shape}, e.g. {flag} {example}")
        value = toml_value(raw)
        if dotted:
            out.setdefault(name, {})[opt] = value
        else:
            out[opt] = value
    return out


REWARD_OPTION_HELP = ("an option of one of the objective's rewards, by its table key; VALUE is read as TOML and "
                      "replaces the config's (hpsv2.checkpoint='HPS_v2.1_compressed.pt', clip.device='cpu'); the "
                      "table's reserved key weight takes the reward's weight (clip.weight=0.5)")


def add_reward_options(p: argparse.ArgumentParser) -> None:
    """``--reward-option/-R REWARD.KEY=VALUE`` for a command whose rewards come from a config's [objective]."""
    p.add_argument("--reward-option", "-R", action="append", default=[], metavar="REWARD.KEY=VALUE", help=REWARD_OPTION_HELP)


def apply_reward_options(data: dict[str, Any], items: list[str], origins: dict[str, str], where: str) -> None:
    """Set each ``REWARD.KEY=VALUE`` of ``--reward-option`` in ``data``'s ``[objective.rewards.REWARD]`` table.

    :raises ConfigError: a malformed item, or a reward the objective (from ``where``) does not have.
    """
    if not items:
        return
    rewards = data.get("objective", {}).get("rewards", {}) if isinstance(data.get("objective"), dict) else {}
    for label, options in key_values(items, "--reward-option", dotted=True).items():
        table = rewards.get(label) if isinstance(rewards, dict) else None
        if not isinstance(table, dict):
            known = ", ".join(sorted(rewards)) if isinstance(rewards, dict) and rewards else "none"
            raise ConfigError(f"--reward-option {label}.…: the objective ({where}) has no reward {label!r}; its rewards: {known}")
        for key, value in options.items():
            table[key] = value
            origins[f"objective.rewards.{label}.{key}"] = f"--reward-option {label}.{key}"


def toml_value(raw: str) -> Any:
    """``raw`` read as a TOML value (``2`` -> 2, ``'a'`` -> "a", ``[1, 2]``), or as a bare string if it is not TOML."""
    try:
        return tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return raw.strip()


def check_option_devices(options: dict[str, Any], what: Callable[[str], str]) -> None:
    """Check every ``device`` option in a (possibly nested) options table; ``what(path)`` names it."""
    from r0kit.checks import check_device

    def walk(table: dict[str, Any], path: str) -> None:
        for k, v in table.items():
            key = f"{path}.{k}" if path else str(k)
            if isinstance(v, dict):
                walk(v, key)
            elif k == "device" and isinstance(v, str):
                check_device(v, what(key))

    walk(options, "")


def check_objective_devices(objective: Any, what: Callable[[str], str]) -> None:
    """:func:`check_option_devices` over every term of a config's ``[objective]`` (``objective.rewards.<label>.device``)."""
    terms = {kind: {label: t.options for label, t in getattr(objective, kind).items()} for kind in ("rewards", "regularizers")}
    check_option_devices({"objective": terms}, what)


def train_config(path: Path, flag: str = "--train-config") -> Path:
    """A training config named on the command line: a TOML file, or the name of a train preset (``mini``).

    :raises ConfigError: neither, naming ``flag`` and the presets.
    """
    from r0kit.commands.optimize import preset_names, preset_path

    if path.exists():
        return path
    if path.name == str(path) and not path.suffix and str(path) in preset_names("train"):
        return preset_path(str(path), "train")
    raise ConfigError(f"{flag} {str(path)!r} does not exist; pass a training TOML, or a train preset's name "
                      f"({', '.join(preset_names('train'))})")


def config_rewards(config: Path | None, *, load: bool = True, flag: str = "--config") -> tuple[list[Any], Path]:
    """The reward terms of a train config's ``[objective]`` (a TOML file or a train preset's name; default the
    ``mini`` preset's), and the config's path.

    The benchmark scripts that score a training objective's rewards share this. ``load=False`` only
    parses and checks the table (every reward and option known, weights valid, devices available) and
    returns no terms, so a script can refuse a bad config before any model loads.

    :raises ConfigError: the file is missing or not TOML, or has no valid ``[objective]``.
    :raises OptionError: a term asks for a device this machine lacks.
    :raises R0kitError: (with ``load``) a reward fails to load, e.g. its weights are not available offline.
    """
    from r0kit.commands.optimize import preset_path
    from r0kit.config import build_objective, check_objective, objective_table, parse_objective

    path = preset_path("mini") if config is None else train_config(config, flag)
    cfg = parse_objective(objective_table(path), str(path))
    check_objective(cfg, str(path))
    check_objective_devices(cfg, lambda key: f"{key} in {path}")
    if not load:
        return [], path
    return [t for t in build_objective(cfg, str(path)).terms if t.kind == "reward"], path


def write_table(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` (dicts with the same keys, in order) to the CSV ``path``, real numbers that are not
    whole ones (Python or numpy floats) to 4 significant digits, making its folder; the benchmark scripts'
    one table writer.

    :raises ValueError: ``rows`` is empty, or a row's keys differ from the first row's.
    """
    import csv
    import numbers

    if not rows:
        raise ValueError("write_table: no rows to write")
    keys = list(rows[0])
    bad = next((i for i, r in enumerate(rows) if list(r) != keys), None)
    if bad is not None:
        raise ValueError(f"write_table: row {bad} has keys {list(rows[bad])}, the first row {keys}")
    real = lambda v: isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral)  # noqa: E731
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows({k: (f"{float(v):.4g}" if real(v) else v) for k, v in r.items()} for r in rows)
    return path
