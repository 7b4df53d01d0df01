"""What runs write: PNGs with text metadata, step logs, reward-curve plots, contact sheets.

Every write is atomic (:mod:`r0kit.io`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence

import torch

from r0kit.io import atomic_path


def console(*, stderr: bool = False):
    """The rich Console r0kit prints tables and progress to: the terminal's width on a terminal, no
    limit on a pipe or file (rich would take 80 columns there, cutting table cells to an ellipsis and
    wrapping each logged line mid-field). ``stderr`` for progress bars and logged lines."""
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr) if stream.isatty() else Console(stderr=stderr, width=100_000)


def to_pil(image: torch.Tensor):
    from PIL import Image

    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype("uint8")
    return Image.fromarray(arr)


#: The PNG text chunk that marks a figure r0kit drew (curves, contact sheets, before/after grids):
#: :func:`r0kit.score.list_images` skips such files, so scoring a run's folder scores its images only.
FIGURE_KEY = "r0kit-figure"


def is_figure(path: str | Path) -> bool:
    """Whether ``path`` is a PNG that r0kit wrote as a figure (it carries :data:`FIGURE_KEY`)."""
    from PIL import Image

    if Path(path).suffix.lower() != ".png":
        return False
    try:
        with Image.open(path) as im:  # the chunks before the pixels: no decode (r0kit writes the key there)
            return FIGURE_KEY in im.info
    except Exception:  # unreadable: not ours to skip; the loader reports it by name
        return False


def save_png(path: str | Path, image: torch.Tensor, metadata: dict[str, Any] | None = None) -> Path:
    """Save a ``[3, H, W]`` image in [0, 1] as PNG, with string text chunks for ``metadata``."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for k, v in (metadata or {}).items():
        info.add_text(str(k), v if isinstance(v, str) else json.dumps(v, default=str))
    with atomic_path(path) as tmp:
        to_pil(image).save(tmp, format="PNG", pnginfo=info)
    return Path(path)


def read_png_metadata(path: str | Path) -> dict[str, str]:
    from PIL import Image

    with Image.open(path) as im:
        return dict(getattr(im, "text", {}) or {})


def write_history_csv(path: str | Path, history: list[dict[str, Any]], prompts: Sequence[str]) -> Path:
    """One row per step and sample: ``step, sample, prompt, total, <term>..., grad_norm``.

    A sample that was not evaluated at a step (it had stopped) has no row for it.
    ``grad_norm`` is the sample's own gradient norm before clipping (empty on the
    last evaluation, which takes no step).
    """
    terms: list[str] = []
    for rec in history:
        for k in rec["values"]:
            if k not in terms:
                terms.append(k)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "sample", "prompt", *terms, "grad_norm"])
        for rec in history:
            totals = rec["values"]["total"]
            norms = rec.get("grad_norm") or [None] * len(totals)
            for i, total in enumerate(totals):
                if total is None:
                    continue
                vals = [rec["values"][t][i] if i < len(rec["values"].get(t, [])) else "" for t in terms]
                w.writerow([rec["step"], i, prompts[i] if i < len(prompts) else "", *vals, "" if norms[i] is None else norms[i]])
    return Path(path)


def plot_curves(path: str | Path, history: list[dict[str, Any]], title: str = "") -> Path:
    """One panel per term: the value at every step, one line per sample."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    terms = list(history[0]["values"]) if history else ["total"]
    steps = [rec["step"] for rec in history]
    nan = float("nan")
    fig, axes = plt.subplots(1, len(terms), figsize=(3.2 * len(terms), 2.8), squeeze=False)
    for ax, term in zip(axes[0], terms):
        n = len(history[0]["values"][term]) if history else 0
        for i in range(n):
            ys = [rec["values"][term][i] for rec in history]  # None: the sample had stopped
            ax.plot(steps, [nan if y is None else y for y in ys], lw=1.2, label=f"sample {i}")
        ax.set_title(term)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={FIGURE_KEY: "curves"})
    plt.close(fig)
    return Path(path)


def contact_sheet(path: str | Path, images: torch.Tensor, nrow: int | None = None) -> Path:
    """A grid of ``[B, 3, H, W]`` images in [0, 1], marked as a figure (:data:`FIGURE_KEY`)."""
    import math

    from torchvision.utils import make_grid

    nrow = nrow or max(1, math.ceil(math.sqrt(images.shape[0])))
    grid = make_grid(images.detach().float().clamp(0, 1).cpu(), nrow=nrow, padding=2, pad_value=1.0)
    return save_png(path, grid, {FIGURE_KEY: "contact sheet"})


def image_name(position: int, n_prompts: int) -> str:
    """``image.png`` for a run of one prompt, else ``image_<position>.png`` (the prompt's place in the run)."""
    return "image.png" if n_prompts == 1 else f"image_{position:03d}.png"


#: What every optimization run writes, whatever its prompts: a used output folder holding one of these
#: that no run's manifest lists is refused before the run (:func:`r0kit.checks.check_output_dir`).
OPTIMIZE_OUTPUTS = ("log.csv", "curves.png")


def save_optimize_outputs(
    outdir: str | Path,
    result,
    *,
    objective: str,
    extra: dict[str, Any] | None = None,
    status: str = "complete",
    n_prompts: int | None = None,
    shard: dict[str, Any] | None = None,
    argv: list[str] | None = None,
) -> list[Path]:
    """Write what an optimization run earned into ``outdir``; returns the paths.

    * the best image of every prompt that has one (PNG with prompt, seed, objective,
      best step and values in its text chunks), named by :func:`image_name`;
    * ``log.csv`` (every term at every step), ``curves.png``, and for a run of
      several prompts ``contact_sheet.png``;
    * ``shard.json`` (the global index of each prompt) for one rank of a sharded run;
    * the manifest ``r0kit-run.json``: the command, the status, why the run stopped,
      and per prompt its image, best step and stop reason, or that it was not run.

    ``n_prompts`` is the number of prompts the run was given (default: the result's);
    prompts a stopped run never started are listed in the manifest. ``argv`` is the
    command line recorded there (default: this process's).
    """
    import sys

    from r0kit import __version__
    from r0kit.checks import MANIFEST
    from r0kit.io import write_json

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    n_prompts = n_prompts or len(result.prompts)
    files: list[Path] = []
    entries = []
    for i, prompt in enumerate(result.prompts):
        index = result.indices[i] if result.indices else i
        entry: dict[str, Any] = {"index": index, "prompt": prompt, "best_step": result.best_step[i],
                                 "stopped": result.stops[i] if result.stops else None, "image": None}
        if result.best_step[i] is not None:
            meta = {
                "prompt": prompt,
                # The seed that reproduces this image alone: sample i of a run draws from seed + its index.
                "seed": str(result.seed + index),
                "objective": objective,
                "best_step": str(result.best_step[i]),
                "best_by": result.best_by,
                "values": {k: v[i] for k, v in result.best_values.items()},
                "software": "r0kit",
            }
            meta.update(extra or {})
            name = image_name(i, n_prompts)
            files.append(save_png(outdir / name, result.images[i], meta))
            entry["image"] = name
        entries.append(entry)
    log_csv, curves = OPTIMIZE_OUTPUTS
    files.append(write_history_csv(outdir / log_csv, result.history, result.prompts))
    files.append(plot_curves(outdir / curves, result.history, title=objective))
    kept = result.kept
    if n_prompts > 1 and kept:
        files.append(contact_sheet(outdir / "contact_sheet.png", result.images[kept]))
    if shard is not None:
        files.append(write_json(outdir / "shard.json", {**shard, "indices": result.indices, "prompts": result.prompts}))
    manifest = {
        "command": "optimize",
        "argv": list(argv) if argv is not None else sys.argv[1:],
        "r0kit": __version__,
        "status": status,
        "stopped": result.stopped,
        "best_by": result.best_by,
        "prompts": entries + [{"index": i, "image": None, "stopped": "not run"} for i in result.not_run],
        "files": sorted([f.name for f in files] + [MANIFEST]),
    }
    files.append(write_json(outdir / MANIFEST, manifest))
    return files
