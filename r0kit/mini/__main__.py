"""``python -m r0kit.mini build`` (train the world's models); see :mod:`r0kit.mini.build`."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"build": "r0kit.mini.build"}
    if not argv or argv[0] not in commands:
        print(f"usage: python -m r0kit.mini {{{','.join(commands)}}} [options]", file=sys.stderr)
        return 2
    import importlib

    return int(importlib.import_module(commands[argv[0]]).main(argv[1:]) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
