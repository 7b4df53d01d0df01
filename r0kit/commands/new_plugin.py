"""``r0kit new-plugin NAME --kind reward``: scaffold a plugin package that works as generated.

It writes ``pyproject.toml`` (with the ``r0kit`` entry point), the plugin
module ``r0kit_<NAME>.py``, a ``conftest.py`` and ``tests/test_<NAME>.py``,
whose conformance test passes before any edit.
"""

from __future__ import annotations

import argparse

from r0kit.commands._common import add_output, describe
from r0kit.scaffold import KINDS


def add_parser(sub) -> None:
    p = sub.add_parser("new-plugin", help="scaffold a plugin package (pyproject, module, test)",
                       description=describe(__doc__))
    p.add_argument("name", help="the name it registers; a Python identifier such as 'sharpness'")
    p.add_argument("--kind", choices=KINDS, default="reward", help="what the plugin registers")
    add_output(p, default=None, what="the package folder (default ./r0kit-NAME)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from r0kit.checks import check_output_dir
    from r0kit.errors import ConfigError
    from r0kit.plugins import get_host
    from r0kit.scaffold import check_name, default_dir, write

    check_name(args.name)
    check_output_dir(args.output or default_dir(args.name), "--output", overwrite=args.overwrite)
    registry = get_host().registries[args.kind]
    if args.name in registry:
        raise ConfigError(
            f"a {args.kind} named {args.name!r} is already registered by plugin "
            f"{registry.get(args.name).plugin!r}; pick another name"
        )
    target, files = write(args.name, args.kind, args.output, overwrite=args.overwrite)
    print(f"created the {args.kind} plugin r0kit_{args.name} in {target}:")
    for f in files:
        print(f"  {f.relative_to(target)}")
    print(f"next: cd {target} && pip install -e '.[test]' && pytest && r0kit plugins --verbose")
    return 0
