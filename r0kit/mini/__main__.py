"""``python -m r0kit.mini build`` (train the world's models); see :mod:`r0kit.mini.build`."""

from __future__ import annotations

import sys


COMMANDS = {"build": ("r0kit.mini.build", "train the world's models on the CPU (python -m r0kit.mini build --help)")}
USAGE = "usage: python -m r0kit.mini {build} [options]"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE + "\n\nThe mini world's command line. Commands:")
        for name, (_, what) in COMMANDS.items():
            print(f"  {name:8s}{what}")
        return 0
    if not argv or argv[0] not in COMMANDS:
        what = f"unknown command {argv[0]!r}" if argv else "no command given"
        print(f"{USAGE}\npython -m r0kit.mini: error: {what}; the commands are {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    import importlib

    return int(importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:]) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
