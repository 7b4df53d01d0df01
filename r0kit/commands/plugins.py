"""``r0kit plugins``: what is registered, by which plugin, and what failed to load."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("plugins", help="list rewards, regularizers and generators, and plugin status")
    p.add_argument("--verbose", "-v", action="store_true", help="show reward contracts and plugin load errors in full")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from r0kit.plugins import get_host

    host = get_host()
    console = Console(width=200 if args.verbose else None)
    table = Table(title="r0kit plugins")
    for col in ("name", "kind", "plugin", "version", "status"):
        table.add_column(col)
    if args.verbose:
        table.add_column("contract / description")
    for registry in host.registries.values():
        for e in registry:
            st = host.statuses.get(e.plugin)
            row = [e.name, e.kind, e.plugin, st.version if st else "?", "ok"]
            if args.verbose:
                row.append((e.contract.describe() + " | " if e.contract is not None else "") + e.description)
            table.add_row(*row)
    for st in host.statuses.values():
        if not st.ok:
            reason = st.error if args.verbose else st.error.splitlines()[0][:120]
            row = ["-", "-", st.name, st.version, f"[red]failed: {reason}"]
            if args.verbose:
                row.append("")
            table.add_row(*row)
    console.print(table)
    return 0
