"""Score images with registered rewards: a folder of files, or a tensor batch.

>>> from r0kit.score import score_folder
>>> table = score_folder("outputs/", ["hpsv2", "clip"])          # prompts from the PNGs
>>> table = score_folder("imgs/", ["imagereward"], prompts_file="prompts.txt", csv_path="scores.csv")

Prompts come from each PNG's ``prompt`` text chunk (``r0kit optimize``
writes it), or from a prompts file with one prompt per line, matched to the
images in sorted file-name order. Scoring runs without gradients; for
optimization use the rewards through an objective.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from r0kit.errors import InputError, OptionError
from r0kit.images import check_images, preprocess

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class ScoreTable:
    """One row per image: its file, prompt, and one score per reward label."""

    files: list[str]
    prompts: list[str]
    scores: dict[str, list[float]] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        return [
            {"file": f, "prompt": p, **{k: v[i] for k, v in self.scores.items()}}
            for i, (f, p) in enumerate(zip(self.files, self.prompts))
        ]

    def means(self) -> dict[str, float]:
        return {k: sum(v) / len(v) for k, v in self.scores.items() if v}

    def write_csv(self, path: str | os.PathLike) -> Path:
        """Write atomically: the file appears complete or not at all."""
        from r0kit.io import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                w.writerow(["file", "prompt", *self.scores])
                for i, (f, p) in enumerate(zip(self.files, self.prompts)):
                    w.writerow([f, p, *(f"{v[i]:.6g}" for v in self.scores.values())])
        return Path(path)


def list_images(folder: str | os.PathLike) -> list[Path]:
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(f"{str(root)!r} is not a folder of images")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{str(root)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def load_image(path: str | os.PathLike) -> tuple[torch.Tensor, str | None]:
    """``[3, H, W]`` float in [0, 1] and the PNG ``prompt`` text chunk (``None`` if absent)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            prompt = (getattr(im, "text", None) or {}).get("prompt") if hasattr(im, "text") else None
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                if im.getextrema()[3][0] < 255:
                    raise InputError(
                        f"{str(path)!r} has an alpha channel with transparent pixels; flatten it onto a background first"
                    )
            if im.mode not in ("RGB", "L", "RGBA"):
                raise InputError(f"{str(path)!r} has mode {im.mode}; save it as an 8-bit RGB image")
            rgb = im.convert("RGB")
    except InputError:
        raise
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise InputError(f"cannot read image {str(path)!r}: {exc}") from None
    import numpy as np

    arr = np.asarray(rgb, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0, prompt


def read_prompts(path: str | os.PathLike) -> list[str]:
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"cannot read the prompts file {str(path)!r}: {exc}") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise InputError(f"the prompts file {str(path)!r} holds no prompts (one per line)")
    return prompts


def build_rewards(rewards: Sequence[str] | Mapping[str, Any], options: Mapping[str, Mapping[str, Any]] | None = None):
    """Terms from names (or label -> options); ``options[name]`` passes factory options."""
    from r0kit.objective import reward

    if not rewards:
        raise OptionError("name at least one reward, e.g. --reward hpsv2")
    options = dict(options or {})
    names = list(rewards)
    if len(set(names)) != len(names):
        raise OptionError(f"reward(s) named twice: {sorted({n for n in names if names.count(n) > 1})}")
    return [reward(n, **dict(options.get(n, {}))) for n in names]


def score_tensor(images: torch.Tensor, prompts: Sequence[str], terms, *, batch_size: int = 8) -> dict[str, torch.Tensor]:
    """Score an image batch ``[B, 3, H, W]`` in [0, 1] with built terms; label -> ``[B]``."""
    check_images(images)
    if len(prompts) != images.shape[0] and any(t.contract.needs_prompt for t in terms):
        raise InputError(f"got {len(prompts)} prompt(s) for {images.shape[0]} image(s); pass one prompt per image")
    out: dict[str, list[torch.Tensor]] = {t.label: [] for t in terms}
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            chunk = images[start : start + batch_size]
            ps = list(prompts[start : start + batch_size])
            for t in terms:
                out[t.label].append(t.module(preprocess(chunk, t.contract), ps).float().cpu())
    return {k: torch.cat(v) for k, v in out.items()}


def score_folder(
    folder: str | os.PathLike,
    rewards: Sequence[str],
    *,
    prompts_file: str | os.PathLike | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    csv_path: str | os.PathLike | None = None,
    batch_size: int = 8,
) -> ScoreTable:
    """Score every image in ``folder`` with each reward in ``rewards``.

    :raises InputError: for an unreadable image (naming it), a prompt/image
        count mismatch, an image without a prompt when a reward needs one.
    """
    files = list_images(folder)
    loaded = [load_image(f) for f in files]
    from r0kit.plugins import get_host

    needs_prompt = any(get_host().rewards.get(n).contract.needs_prompt for n in rewards)
    if prompts_file is not None:
        prompts = read_prompts(prompts_file)
        if len(prompts) != len(files):
            raise InputError(
                f"the prompts file {str(prompts_file)!r} has {len(prompts)} prompt(s) for {len(files)} image(s) "
                f"in {str(folder)!r}; give one line per image, in sorted file-name order"
            )
    else:
        prompts = [p or "" for _, p in loaded]
        missing = [f.name for f, (_, p) in zip(files, loaded) if p is None]
        if missing and needs_prompt:
            raise InputError(
                f"{len(missing)} image(s) have no 'prompt' PNG text chunk ({', '.join(missing[:3])}"
                f"{', ...' if len(missing) > 3 else ''}); pass --prompts FILE with one prompt per line"
            )
    terms = build_rewards(rewards, options)  # after the cheap checks: building loads weights
    scores: dict[str, list[float]] = {t.label: [] for t in terms}
    for i, ((img, _), prompt) in enumerate(zip(loaded, prompts)):
        values = score_tensor(img[None], [prompt], terms, batch_size=batch_size)
        for k, v in values.items():
            scores[k].append(float(v[0]))
    table = ScoreTable([f.name for f in files], list(prompts), scores)
    if csv_path is not None:
        table.write_csv(csv_path)
    return table
