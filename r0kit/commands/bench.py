"""``r0kit bench kernels [...]``: the kernel throughput benchmark (arguments pass through)."""

from __future__ import annotations

import argparse

from r0kit.commands._common import describe


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks (kernels)", description=describe(__doc__))
    p.add_argument("suite", choices=["kernels"], help="which benchmark suite")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the suite (try: r0kit bench kernels --help)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from r0kit.kernels.bench import main

    return int(main(list(args.args)) or 0)
