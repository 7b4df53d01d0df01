"""Plot kernel benchmark CSVs and print a summary table.

    python benchmarks/kernels/plot.py --csv benchmarks/results/kernels_<device>.csv --out benchmarks/results [--summary]

One PNG per (device, dtype, op): GB/s (p50, with p20–p80 bars) against size, one line per
provider, one panel per mode, and the measured copy bandwidth as a dashed line. The summary
table (latest measurement of each case) gives, per op and size, the full-pass time of each provider, the
fused kernel's speedup over eager and torch.compile, its % of copy bandwidth, its peak
memory relative to eager and its host time per full pass.

``--crossover FILE`` writes, per device and op, the size (elements) below which the torch
reference's full pass was faster than the kernels' (eager and torch.compile separately), in the
format of ``r0kit/kernels/crossover.json``, which the dispatcher reads.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import sys
from collections import defaultdict


def _f(x: str) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def load(paths: list[str]) -> list[dict]:
    rows = []
    for p in paths:
        with open(p, newline="") as fh:
            rows += list(csv.DictReader(fh))
    # the CSV is appended to: keep the latest measurement of each (device, dtype, op, size, provider, mode)
    latest: dict[tuple, dict] = {}
    for r in rows:
        key = (r["device"], r["dtype"], r["op"], r["size"], r["provider"], r["mode"])
        if key not in latest or r["date"] >= latest[key]["date"]:
            latest[key] = r
    return list(latest.values())


def plot(rows: list[dict], out: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["device"], r["dtype"], r["op"])].append(r)
    for (device, dtype, op), rs in sorted(groups.items()):
        modes = [m for m in ("forward", "backward", "full") if any(r["mode"] == m and r["ms_p50"] for r in rs)]
        if not modes:
            continue
        fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 4), squeeze=False)
        for ax, mode in zip(axes[0], modes):
            sel = [r for r in rs if r["mode"] == mode and r["ms_p50"]]
            sizes = sorted({r["size"] for r in sel}, key=lambda s: min(_f(r["bytes"]) for r in sel if r["size"] == s))
            for provider in sorted({r["provider"] for r in sel}):
                pts = {r["size"]: r for r in sel if r["provider"] == provider}
                xs = [i for i, s in enumerate(sizes) if s in pts]
                ys = [_f(pts[sizes[i]]["gbps"]) for i in xs]
                lo = [y - _f(pts[sizes[i]]["bytes"]) / (_f(pts[sizes[i]]["ms_p80"]) * 1e6) for i, y in zip(xs, ys)]
                hi = [_f(pts[sizes[i]]["bytes"]) / (_f(pts[sizes[i]]["ms_p20"]) * 1e6) - y for i, y in zip(xs, ys)]
                lo, hi = [max(0.0, v) for v in lo], [max(0.0, v) for v in hi]
                ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=provider)
            copy = _f(sel[0]["copy_gbps"]) if sel else math.nan
            if not math.isnan(copy):
                ax.axhline(copy, ls="--", c="gray", lw=1, label=f"copy {copy:.0f} GB/s")
            ax.set_xticks(range(len(sizes)))
            ax.set_xticklabels(sizes, rotation=30, ha="right", fontsize=7)
            ax.set_ylabel("GB/s (counted minimal bytes, p50)")
            ax.set_title(f"{op} {mode}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"{device} · {dtype}", fontsize=9)
        fig.tight_layout()
        slug = re.sub(r"[^a-z0-9]+", "-", f"{device}-{dtype}-{op}".lower()).strip("-")
        path = os.path.join(out, f"kernels_{slug}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def summary(rows: list[dict]) -> str:
    by = defaultdict(dict)
    for r in rows:
        if r["mode"] == "full" and r["ms_p50"]:
            by[(r["device"], r["dtype"], r["op"], r["size"])][r["provider"]] = r
    head = (f"{'op':12s} {'size':34s} {'dtype':8s} {'eager ms':>9s} {'compile':>9s} {'triton':>9s} {'x eager':>8s} "
            f"{'x comp.':>8s} {'%copy':>6s} {'mem/eager':>9s} {'host us':>8s} check")
    lines = [head, "-" * len(head)]
    for (device, dtype, op, size), prov in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][2], _f(next(iter(kv[1].values()))["bytes"]))):
        e, c = prov.get("eager"), prov.get("compile")
        t = prov.get("triton") or prov.get("auto")
        ms = lambda r: _f(r["ms_p50"]) if r else math.nan  # noqa: E731
        peak = _f(t["peak_mb"]) / _f(e["peak_mb"]) if t and e and _f(e["peak_mb"]) > 0 else math.nan
        host = _f(t.get("host_us", "")) if t else math.nan
        lines.append(
            f"{op:12s} {size:34s} {dtype:8s} {ms(e):9.4f} {ms(c):9.4f} {ms(t):9.4f} "
            f"{ms(e) / ms(t):8.2f} {ms(c) / ms(t):8.2f} {(_f(t['pct_copy_bw']) if t else math.nan):6.1f} {peak:9.2f} "
            f"{host:8.1f} {t['check'] if t else '-'}"
        )
    devices = sorted({r["device"] for r in rows})
    return f"devices: {', '.join(devices)}\n" + "\n".join(lines)


def crossover(rows: list[dict]) -> dict:
    """``{"devices": {device: {op: {"eager": n, "compile": n}}}}`` from the fp32 full-pass rows.

    ``n``: the smallest measured size from which the kernels were at least as fast as the baseline
    at every larger measured size (so the reference runs below it); 2**62 when they lost at the
    largest size (the reference everywhere). Ops the kernels won everywhere are left out.
    """
    runs: dict = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if r["mode"] == "full" and r["ms_p50"] and r.get("numel") and r["dtype"] == "float32" and r["check"] in ("ok", "ref"):
            runs[(r["device"], r["op"])][int(r["numel"])][r["provider"]] = _f(r["ms_p50"])
    out: dict = {}
    for (device, op), by_size in runs.items():
        for base in ("eager", "compile"):
            sizes = sorted(n for n, prov in by_size.items() if "triton" in prov and base in prov)
            if not sizes:
                continue
            below = 0
            for i in range(len(sizes) - 1, -1, -1):  # down from the largest size while the kernels win
                if by_size[sizes[i]]["triton"] > by_size[sizes[i]][base]:
                    below = sizes[i + 1] if i + 1 < len(sizes) else 2**62
                    break
            if below:
                out.setdefault(device, {}).setdefault(op, {})[base] = below
    return {"devices": out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--csv", nargs="+", required=True)
    ap.add_argument("--out", default=None, help="folder for the PNGs (default: the first CSV's folder)")
    ap.add_argument("--summary", action="store_true", help="print the summary table")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--crossover", default=None, help="write the measured crossover sizes to this JSON file")
    args = ap.parse_args(argv)
    rows = load(args.csv)
    if not rows:
        print("no rows", file=sys.stderr)
        return 1
    out = args.out or os.path.dirname(os.path.abspath(args.csv[0]))
    os.makedirs(out, exist_ok=True)
    if not args.no_plots:
        for p in plot(rows, out):
            print(f"wrote {p}")
    if args.summary:
        print(summary(rows))
    if args.crossover:
        import json

        data = crossover(rows)
        data["about"] = "measured by benchmarks/kernels/plot.py --crossover; copy the devices into r0kit/kernels/crossover.json"
        with open(args.crossover, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
        print(f"wrote {args.crossover}: {json.dumps(data['devices'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
