"""Score images with registered rewards: a folder of files, or a tensor batch.

>>> from r0kit.score import score_folder
>>> table = score_folder("outputs/", ["hpsv2", "clip"])          # prompts from the PNGs
>>> table = score_folder("imgs/", ["imagereward"], prompts_file="prompts.txt", csv_path="scores.csv")

Prompts come from each PNG's ``prompt`` text chunk (``r0kit optimize``
writes it), or from a prompts file with one prompt per line, matched to the
images in sorted file-name order. Scoring runs without gradients; for
optimization use the rewards through an objective. Every score goes through
:func:`r0kit.objective.call_reward`, the same check of a reward's output that
the objective uses.

Image files are read as people have them (:func:`load_image`): any mode PIL
opens, the EXIF orientation applied, every kind of transparency composited
onto white.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch

from r0kit.errors import InputError, NonFiniteError, OptionError
from r0kit.images import check_images, preprocess

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


@dataclass
class ScoreTable:
    """One row per scored image: its file, prompt, and one score per reward label.

    :ivar skipped: file name -> why it was not scored (``skip_bad=True`` only).
    """

    files: list[str]
    prompts: list[str]
    scores: dict[str, list[float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

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
    """The image files directly in ``folder`` (by suffix, :data:`IMAGE_SUFFIXES`), sorted by name.

    Figures r0kit drew there (``curves.png``, ``contact_sheet.png``: PNGs carrying
    :data:`r0kit.outputs.FIGURE_KEY`) are not images to score, and are left out.

    :raises InputError: ``folder`` is not a folder, or holds no images.
    """
    from r0kit.outputs import is_figure

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise InputError(f"{str(root)!r} is not a folder of images")
    candidates = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    files = [p for p in candidates if not is_figure(p)]
    if not files:
        figures = f" (only r0kit's figures: {', '.join(p.name for p in candidates)})" if candidates else ""
        raise InputError(f"{str(root)!r} holds no images ({', '.join(IMAGE_SUFFIXES)}){figures}")
    return files


#: What transparent pixels are composited onto: white, as transformers' ``convert_to_rgb``
#: does for the CLIP image processor (PickScore). open_clip (CLIP, HPS) and BLIP
#: (ImageReward) convert with PIL's ``convert("RGB")``, which drops the alpha channel
#: and shows whatever colour the transparent pixels happen to store.
BACKGROUND = (255, 255, 255)

#: The value of each high-bit-depth single-channel mode that maps to 1.0. PIL's own
#: ``convert("RGB")`` clips these modes at 255, so a 16-bit image would come out white.
_HIGH_BIT = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}


def load_image(path: str | os.PathLike, *, background: tuple[int, int, int] = BACKGROUND) -> tuple[torch.Tensor, str | None]:
    """``[3, H, W]`` float in [0, 1] and the PNG ``prompt`` text chunk (``None`` if absent).

    The rule, for every mode PIL opens:

    * the EXIF orientation is applied first (``ImageOps.exif_transpose``), as a viewer shows the image;
    * every kind of transparency (an alpha channel: RGBA, LA, PA, RGBa, La; a
      palette entry or a colour marked transparent: P, L, RGB or I;16 with
      ``transparency``, the PNG tRNS chunk) is composited onto ``background``
      (white), as transformers' ``convert_to_rgb`` does;
    * 16- and 32-bit integer greys (I;16*, I) are scaled from [0, 65535] and
      float greys (F) read as [0, 1], keeping their precision;
    * every other mode (1, L, P, RGB, CMYK, YCbCr, LAB, HSV, RGBX) is converted
      with PIL's ``convert("RGB")``, as the upstream scorers do.

    :raises InputError: naming the file, when it cannot be opened or decoded.
    """
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            prompt = (getattr(im, "text", None) or {}).get("prompt")
            return _to_tensor(ImageOps.exif_transpose(im), background, np), prompt
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise InputError(f"cannot read image {str(path)!r}: {exc}") from None


def read_png_prompt(path: str | os.PathLike) -> str | None:
    """The ``prompt`` text chunk of an image file, without decoding its pixels (``None`` if absent)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return (getattr(im, "text", None) or {}).get("prompt")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise InputError(f"cannot read image {str(path)!r}: {exc}") from None


def _to_tensor(im, background: tuple[int, int, int], np) -> torch.Tensor:
    from PIL import Image

    transparency = im.info.get("transparency")
    if im.mode in _HIGH_BIT:
        arr = np.asarray(im, dtype=np.float64)
        rgb = np.repeat(np.clip(arr / _HIGH_BIT[im.mode], 0.0, 1.0)[None], 3, axis=0)
        if isinstance(transparency, int) and im.mode != "F":  # tRNS: one grey value is transparent
            alpha = (arr != transparency)[None]
            bg = np.asarray(background, dtype=np.float64).reshape(3, 1, 1) / 255.0
            rgb = np.where(alpha, rgb, bg)
        return torch.from_numpy(rgb.astype(np.float32))
    if im.mode == "La":  # premultiplied: PIL converts it only by way of RGBa
        im = im.convert("RGBa")
    if im.mode == "RGBa":
        im = im.convert("RGBA")
    if "A" in im.getbands() or transparency is not None:
        rgba = im.convert("RGBA")
        rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (*background, 255)), rgba).convert("RGB")
    else:
        rgb = im.convert("RGB")
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0


def check_rewards(rewards: Sequence[str] | Mapping[str, Any], options: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Every reward name and its options against the registry, without building one: a typo in the
    last is found before the first model loads.

    :raises OptionError: no reward, a reward named twice, or options a factory does not take;
    :raises UnknownNameError: a name no plugin registers.
    """
    from r0kit.plugins import get_host

    if not rewards:
        raise OptionError("name at least one reward, e.g. --reward hpsv2")
    names = list(rewards)
    if len(set(names)) != len(names):
        raise OptionError(f"reward(s) named twice: {sorted({n for n in names if names.count(n) > 1})}")
    host = get_host()
    for n in names:
        host.rewards.get(n).check_options(dict((options or {}).get(n, {})))


def build_rewards(rewards: Sequence[str] | Mapping[str, Any], options: Mapping[str, Mapping[str, Any]] | None = None):
    """Terms from names (or label -> options); ``options[name]`` passes factory options (checked first, :func:`check_rewards`)."""
    from r0kit.objective import reward

    check_rewards(rewards, options)
    options = dict(options or {})
    return [reward(n, **dict(options.get(n, {}))) for n in list(rewards)]


def score_tensor(
    images: torch.Tensor,
    prompts: Sequence[str],
    terms,
    *,
    batch_size: int = 8,
    nonfinite: Literal["raise", "keep"] = "raise",
) -> dict[str, torch.Tensor]:
    """Score an image batch ``[B, 3, H, W]`` in [0, 1] with built terms; label -> ``[B]``.

    :param nonfinite: ``"raise"`` a :class:`NonFiniteError` naming the reward and the
        image when a score is NaN or Inf, or ``"keep"`` it for the caller.
    """
    from r0kit.objective import call_reward

    check_images(images)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise OptionError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if len(prompts) != images.shape[0] and any(t.contract.needs_prompt for t in terms):
        raise InputError(f"got {len(prompts)} prompt(s) for {images.shape[0]} image(s); pass one prompt per image")
    out: dict[str, list[torch.Tensor]] = {t.label: [] for t in terms}
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            chunk = images[start : start + batch_size]
            ps = list(prompts[start : start + batch_size])
            for t in terms:
                out[t.label].append(call_reward(t, preprocess(chunk, t.contract), ps).float().cpu())
    scores = {k: torch.cat(v) for k, v in out.items()}
    if nonfinite == "raise":
        for t in terms:
            bad = (~torch.isfinite(scores[t.label])).nonzero().flatten().tolist()
            if bad:
                raise NonFiniteError(f"reward {t.name!r} (plugin {t.plugin or '?'}) scored image(s) {bad} as NaN or Inf")
    return scores


def score_folder(
    folder: str | os.PathLike,
    rewards: Sequence[str],
    *,
    prompts_file: str | os.PathLike | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    csv_path: str | os.PathLike | None = None,
    batch_size: int = 8,
    skip_bad: bool = False,
) -> ScoreTable:
    """Score every image in ``folder`` with each reward in ``rewards``.

    Every file is read, and every prompt matched, before a reward model loads.
    Consecutive images of the same size are scored ``batch_size`` at a time.

    :param skip_bad: score the others when a file cannot be read or a reward
        scores it NaN or Inf; the table's ``skipped`` says which and why.
    :raises InputError: for an unreadable image or a NaN score (naming the file;
        without ``skip_bad``), a prompt/image count mismatch, an image without a
        prompt when a reward needs one.
    """
    from r0kit.config import read_prompts
    from r0kit.plugins import get_host

    files = list_images(folder)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise OptionError(f"batch_size must be an int >= 1, got {batch_size!r}")
    needs_prompt = any(get_host().rewards.get(n).contract.needs_prompt for n in rewards)
    skipped: dict[str, str] = {}
    found: dict[Path, tuple[tuple[int, ...], str | None]] = {}  # file -> (shape, PNG prompt); pixels are read again to score
    for f in files:
        try:
            img, prompt = load_image(f)
        except InputError as exc:
            if not skip_bad:
                raise InputError(f"{exc}; pass --skip-bad to score the other images") from None
            skipped[f.name] = str(exc)
            continue
        found[f] = (tuple(img.shape), prompt)
    if prompts_file is not None:
        listed = read_prompts(prompts_file)
        if len(listed) != len(files):
            raise InputError(
                f"the prompts file {str(prompts_file)!r} has {len(listed)} prompt(s) for {len(files)} image(s) "
                f"in {str(folder)!r}; give one line per image, in sorted file-name order"
            )
        prompt_of = dict(zip(files, listed))
    else:
        prompt_of = {f: p or "" for f, (_, p) in found.items()}
        missing = [f.name for f, (_, p) in found.items() if p is None]
        if missing and needs_prompt:
            raise InputError(
                f"{len(missing)} image(s) have no 'prompt' PNG text chunk ({', '.join(missing[:3])}"
                f"{', ...' if len(missing) > 3 else ''}); pass --prompts-file FILE with one prompt per line"
            )
    if not found:
        raise InputError(f"no image in {str(folder)!r} could be read: " + "; ".join(skipped.values()))
    terms = build_rewards(rewards, options)  # after the cheap checks: building loads weights
    scores: dict[Path, dict[str, float]] = {}
    for group in _same_size_batches(list(found), {f: shape for f, (shape, _) in found.items()}, batch_size):
        images = torch.stack([load_image(f)[0] for f in group])
        values = score_tensor(images, [prompt_of[f] for f in group], terms, batch_size=batch_size, nonfinite="keep")
        for j, f in enumerate(group):
            row = {k: float(v[j]) for k, v in values.items()}
            bad = [k for k, v in row.items() if v != v or v in (float("inf"), float("-inf"))]
            if bad:
                why = f"{', '.join(bad)} scored {f.name!r} as NaN or Inf"
                if not skip_bad:
                    raise InputError(f"{why}; pass --skip-bad to score the other images")
                skipped[f.name] = why
            else:
                scores[f] = row
    kept = [f for f in files if f in scores]
    table = ScoreTable(
        [f.name for f in kept],
        [prompt_of[f] for f in kept],
        {t.label: [scores[f][t.label] for f in kept] for t in terms},
        skipped={f.name: skipped[f.name] for f in files if f.name in skipped},
    )
    if csv_path is not None:
        table.write_csv(csv_path)
    return table


def _same_size_batches(files: list[Path], shape: dict[Path, tuple[int, ...]], size: int) -> list[list[Path]]:
    """Runs of consecutive files with the same image size, each at most ``size`` long."""
    out: list[list[Path]] = []
    for f in files:
        if out and len(out[-1]) < size and shape[out[-1][0]] == shape[f]:
            out[-1].append(f)
        else:
            out.append([f])
    return out
