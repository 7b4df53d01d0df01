"""``r0kit plugins``: what is registered, by which plugin, and what failed to load.

``r0kit plugins`` prints one table row per reward, regularizer and
generator, and one per plugin that failed. ``--verbose`` prints, as plain
text that never wraps or truncates: every plugin with its source, version,
status and what it registered (or, for a failed one, the full reason), then
every reward with its full input contract, then the regularizers and
generators with their descriptions and factory options.
"""

from __future__ import annotations

import argparse

from r0kit.commands._common import describe, table_console
from typing import Any


def add_parser(sub) -> None:
    p = sub.add_parser("plugins", help="list rewards, regularizers and generators, and plugin status",
                       description=describe(__doc__))
    p.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="show every plugin's version, each reward's contract, and load errors in full",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import warnings

    from r0kit.errors import R0kitWarning
    from r0kit.plugins import get_host

    with warnings.catch_warnings():  # this command lists the failures itself
        warnings.simplefilter("ignore", R0kitWarning)
        host = get_host()
    if args.verbose:
        print(render_verbose(host), end="")
    else:
        _print_table(host)
    return 0


def _print_table(host: Any) -> None:
    from rich.table import Table

    console = table_console()
    table = Table(title="r0kit plugins")
    for col in ("name", "kind", "plugin", "version", "status"):
        table.add_column(col, overflow="fold")
    for registry in host.registries.values():
        for e in registry:
            st = host.statuses.get(e.plugin)
            table.add_row(e.name, e.kind, e.plugin, st.version if st else "?", "ok")
    for st in host.statuses.values():
        if not st.ok:
            # the first line only (a repr'd exception holds its newlines escaped), --verbose has the rest
            reason = st.error.replace("\\n", "\n").split("\n")[0][:120]
            table.add_row("-", "-", st.name, st.version, f"failed: {reason}", style="red")
    for name in host.blocked:
        table.add_row("-", "-", name, "", "not loaded: R0KIT_LOAD_PLUGINS leaves it out", style="yellow")
    console.print(table)
    for message in host.selection_warnings():
        if message.startswith("R0KIT_LOAD_PLUGINS"):
            console.print(f"warning: {message}", style="yellow", highlight=False)
    if any(not st.ok for st in host.statuses.values()):
        console.print("r0kit plugins --verbose shows the full reasons.")


def _contract_lines(contract: Any) -> list[str]:
    if contract.size is None:
        size = "native (the generator's resolution, no resize, no crop)"
    else:
        aa = ", antialiased" if contract.antialias and contract.resize in ("bilinear", "bicubic") else ""
        crop = {"center": "center crop", "pad": "longest side, zero padding (letterbox)"}.get(contract.crop, "no crop (aspect not kept)")
        size = f"{contract.size}x{contract.size}, {contract.resize} resize{aa}, {crop}"
    fmt = lambda vals: "(" + ", ".join(f"{v:g}" for v in vals) + ")"  # noqa: E731
    return [
        f"input: {size}",
        f"mean: {fmt(contract.mean)}  std: {fmt(contract.std)}",
        f"needs prompt: {'yes' if contract.needs_prompt else 'no'}  differentiable: {'yes' if contract.differentiable else 'no'}",
    ]


def render_verbose(host: Any) -> str:
    """The ``--verbose`` report as text."""
    lines: list[str] = ["Plugins:"]
    counts: dict[str, dict[str, int]] = {}
    for registry in host.registries.values():
        for e in registry:
            counts.setdefault(e.plugin, {}).setdefault(e.kind, 0)
            counts[e.plugin][e.kind] += 1
    for st in sorted(host.statuses.values(), key=lambda s: (not s.ok, s.name)):
        if st.ok:
            made = ", ".join(f"{n} {k}{'s' if n != 1 else ''}" for k, n in counts.get(st.name, {}).items()) or "nothing"
            lines.append(f"  {st.name} {st.version} ({st.source}): ok, registered {made}")
        else:
            lines.append(f"  {st.name} {st.version} ({st.source}): FAILED to load")
            lines += [f"      {line}" for line in st.error.splitlines() or ["(no reason recorded)"]]
    for name in host.blocked:
        lines.append(f"  {name}: not loaded, R0KIT_LOAD_PLUGINS leaves it out")
    if not host.statuses and not host.blocked:
        lines.append("  none")
    for kind, registry in host.registries.items():
        lines += ["", f"{kind.capitalize()}s:"]
        if not len(registry):
            lines.append("  none")
        for e in registry:
            st = host.statuses.get(e.plugin)
            lines.append(f"  {e.name}  (plugin {e.plugin} {st.version if st else '?'})")
            if e.description:
                lines.append(f"      {e.description}")
            if e.contract is not None:
                lines += [f"      {line}" for line in _contract_lines(e.contract)]
            opts = e.accepted_options()
            lines.append(f"      options: {', '.join(opts) if opts else 'none'}")
    return "\n".join(lines) + "\n"
