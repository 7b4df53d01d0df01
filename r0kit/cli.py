"""The ``r0kit`` command.

Each subcommand is a module under :mod:`r0kit.commands` exposing
``add_parser(subparsers)`` and ``run(args) -> int``. Errors derived from
:class:`~r0kit.errors.R0kitError` print their message, with no traceback,
and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from r0kit.errors import R0kitError

COMMANDS: tuple[str, ...] = (
    "r0kit.commands.plugins",
    "r0kit.commands.optimize",
    "r0kit.commands.score",
    "r0kit.commands.new_plugin",
    "r0kit.commands.bench",
    "r0kit.commands.train",
    "r0kit.commands.evaluate",
)


def build_parser() -> argparse.ArgumentParser:
    from r0kit import __version__

    parser = argparse.ArgumentParser(
        prog="r0kit",
        description="Regularized reward maximization for text-to-image generation.",
    )
    parser.add_argument("--version", action="version", version=f"r0kit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for modname in COMMANDS:
        importlib.import_module(modname).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except R0kitError as exc:
        print(f"r0kit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("r0kit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
