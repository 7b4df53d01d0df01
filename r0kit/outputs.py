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


def to_pil(image: torch.Tensor):
    from PIL import Image

    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype("uint8")
    return Image.fromarray(arr)


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
    """One row per step and sample: ``step, sample, prompt, total, <term>..., grad_norm``."""
    terms: list[str] = []
    for rec in history:
        for k in rec["values"]:
            if k not in terms:
                terms.append(k)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "sample", "prompt", *terms, "grad_norm"])
        for rec in history:
            n = len(rec["values"]["total"])
            for i in range(n):
                w.writerow(
                    [rec["step"], i, prompts[i] if i < len(prompts) else "", *(rec["values"][t][i] for t in terms), rec.get("grad_norm", "")]
                )
    return Path(path)


def plot_curves(path: str | Path, history: list[dict[str, Any]], title: str = "") -> Path:
    """One panel per term: the value at every step, one line per sample."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    terms = list(history[0]["values"]) if history else ["total"]
    steps = [rec["step"] for rec in history]
    fig, axes = plt.subplots(1, len(terms), figsize=(3.2 * len(terms), 2.8), squeeze=False)
    for ax, term in zip(axes[0], terms):
        n = len(history[0]["values"][term]) if history else 0
        for i in range(n):
            ax.plot(steps, [rec["values"][term][i] for rec in history], lw=1.2, label=f"sample {i}")
        ax.set_title(term)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def contact_sheet(path: str | Path, images: torch.Tensor, nrow: int | None = None) -> Path:
    """A grid of ``[B, 3, H, W]`` images in [0, 1]."""
    import math

    from torchvision.utils import make_grid

    nrow = nrow or max(1, math.ceil(math.sqrt(images.shape[0])))
    grid = make_grid(images.detach().float().clamp(0, 1).cpu(), nrow=nrow, padding=2, pad_value=1.0)
    return save_png(path, grid)


def save_optimize_outputs(
    outdir: str | Path, result, *, objective: str, extra: dict[str, Any] | None = None
) -> list[Path]:
    """Write the best images (PNG with prompt, seed, objective and values), the step log,
    the reward curves and, for several prompts, a contact sheet. Returns the paths."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    n = result.images.shape[0]
    for i in range(n):
        meta = {
            "prompt": result.prompts[i],
            # The seed that reproduces this image alone: sample i of a run draws from seed + its index.
            "seed": str(result.seed + (result.indices[i] if result.indices else i)),
            "objective": objective,
            "best_step": str(result.best_step[i]),
            "values": {k: v[i] for k, v in result.best_values.items()},
            "software": "r0kit",
        }
        meta.update(extra or {})
        name = "image.png" if n == 1 else f"image_{i:03d}.png"
        files.append(save_png(outdir / name, result.images[i], meta))
    files.append(write_history_csv(outdir / "log.csv", result.history, result.prompts))
    files.append(plot_curves(outdir / "curves.png", result.history, title=objective))
    if n > 1:
        files.append(contact_sheet(outdir / "contact_sheet.png", result.images))
    return files
