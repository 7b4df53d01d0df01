"""``r0kit score FOLDER --reward hpsv2 --reward clip [--prompts-file FILE] [-o scores.csv]``.

Scores every image in a folder with the named rewards and prints a table
(one row per image, then the means). Prompts come from the PNGs' ``prompt``
text chunk, or from ``--prompts-file`` (one per line, in sorted file-name
order). ``--reward-option``/``-R reward.key=value`` passes a factory option,
its value read as TOML: ``-R hpsv2.version='2.0'`` or ``-R clip.device=cpu``.
``--skip-bad`` scores the rest of the folder when a file cannot be read (or
scores NaN), and lists the files it skipped.
"""

from __future__ import annotations

import argparse
import sys

from r0kit.commands._common import add_output, describe, int_at_least, key_values, table_console
from r0kit.errors import OptionError


def add_parser(sub) -> None:
    p = sub.add_parser("score", help="score a folder of images with rewards", description=describe(__doc__))
    p.add_argument("folder", help="folder of images (png, jpg, webp, bmp, tif, gif)")
    p.add_argument("--reward", "-r", action="append", required=True, dest="rewards", metavar="NAME",
                   help="a registered reward; repeat for several (r0kit plugins lists them)")
    p.add_argument("--prompts-file", metavar="FILE",
                   help="one prompt per line (or JSONL), matched to the images in sorted file-name order")
    add_output(p, default=None, what="a CSV file of the scores (default: none, the table only)")
    p.add_argument("--reward-option", "-R", action="append", default=[],
                   metavar="REWARD.KEY=VALUE", help="a reward factory option; VALUE is read as TOML (clip.device='cpu')")
    p.add_argument("--batch-size", type=int_at_least(1), default=8, help="images per forward pass (default 8)")
    p.add_argument("--skip-bad", action="store_true",
                   help="score the other images when a file cannot be read or scores NaN; list the skipped ones")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from r0kit.checks import check_output_file
    from r0kit.commands._common import check_option_devices
    from r0kit.score import score_folder

    options = key_values(args.reward_option, "--reward-option", dotted=True)
    unknown = sorted(set(options) - set(args.rewards))
    if unknown:
        raise OptionError(f"--reward-option names reward(s) {unknown} that no --reward selects")
    check_option_devices(options, lambda key: f"--reward-option {key}")
    csv_path = check_output_file(Path(args.output), "--output", overwrite=args.overwrite) if args.output else None
    if csv_path is not None:
        from r0kit.score import IMAGE_SUFFIXES

        if csv_path.suffix.lower() in IMAGE_SUFFIXES:
            raise OptionError(f"--output {str(csv_path)!r} names an image file, but score writes a CSV table; "
                              f"give a .csv name, e.g. -o {str(csv_path.with_suffix('.csv'))!r}")
    table = score_folder(args.folder, args.rewards, prompts_file=args.prompts_file, options=options,
                         csv_path=csv_path, batch_size=args.batch_size, skip_bad=args.skip_bad)
    _print(table, csv_path)
    if table.skipped:
        print(f"r0kit: warning: skipped {len(table.skipped)} image(s):", file=sys.stderr)
        for name, why in table.skipped.items():
            print(f"  {name}: {why}", file=sys.stderr)
    return 0


def _print(table, csv_path) -> None:
    from rich.table import Table

    t = Table(title=f"r0kit score: {len(table.files)} image(s)")
    t.add_column("file", overflow="fold")
    t.add_column("prompt", overflow="fold", max_width=48)
    for label in table.scores:
        t.add_column(label, justify="right")
    for row in table.rows():
        t.add_row(row["file"], row["prompt"], *(f"{row[k]:.4f}" for k in table.scores))
    means = table.means()
    if means:
        t.add_row("mean", "", *(f"{means[k]:.4f}" for k in table.scores), style="bold")
    console = table_console()
    console.print(t)
    if csv_path:
        console.print(f"wrote {csv_path}")
