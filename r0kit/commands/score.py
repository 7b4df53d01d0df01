"""``r0kit score FOLDER --reward hpsv2 --reward clip [--prompts FILE] [--csv out.csv]``.

Scores every image in a folder with the named rewards and prints a table
(one row per image, then the means). Prompts come from the PNGs' ``prompt``
text chunk, or from ``--prompts`` (one per line, in sorted file-name order).
``--option reward.key=value`` passes a factory option, e.g.
``--option hpsv2.version=2.0`` or ``--option clip.device=cpu``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from r0kit.errors import OptionError


def add_parser(sub) -> None:
    p = sub.add_parser("score", help="score a folder of images with rewards")
    p.add_argument("folder", help="folder of images (png, jpg, webp, bmp)")
    p.add_argument("--reward", "-r", action="append", required=True, dest="rewards", metavar="NAME",
                   help="a registered reward; repeat for several (r0kit plugins lists them)")
    p.add_argument("--prompts", metavar="FILE", help="one prompt per line, matched to the images in sorted order")
    p.add_argument("--csv", metavar="PATH", help="also write the scores to this CSV file")
    p.add_argument("--option", "-o", action="append", default=[], metavar="REWARD.KEY=VALUE",
                   help="a reward factory option; the value is read as JSON when it parses, else as a string")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.set_defaults(run=run)


def parse_options(items: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        name, dot, opt = key.partition(".")
        if not sep or not dot or not name or not opt:
            raise OptionError(f"--option {item!r} must look like reward.key=value, e.g. hpsv2.version=2.0")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out.setdefault(name, {})[opt] = value
    return out


def run(args: argparse.Namespace) -> int:
    from r0kit.score import score_folder

    options = parse_options(args.option)
    unknown = sorted(set(options) - set(args.rewards))
    if unknown:
        raise OptionError(f"--option names reward(s) {unknown} that no --reward selects")
    table = score_folder(args.folder, args.rewards, prompts_file=args.prompts, options=options,
                         csv_path=args.csv, batch_size=args.batch_size)
    _print(table, args.csv)
    return 0


def _print(table, csv_path) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"r0kit score: {len(table.files)} image(s)")
    t.add_column("file", overflow="fold")
    t.add_column("prompt", overflow="fold", max_width=48)
    for label in table.scores:
        t.add_column(label, justify="right")
    for row in table.rows():
        t.add_row(row["file"], row["prompt"], *(f"{row[k]:.4f}" for k in table.scores))
    means = table.means()
    t.add_row("mean", "", *(f"{means[k]:.4f}" for k in table.scores), style="bold")
    console = Console()
    console.print(t)
    if csv_path:
        console.print(f"wrote {csv_path}")
