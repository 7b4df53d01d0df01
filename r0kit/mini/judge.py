"""The held-out judge: GenEval-style per-attribute accuracy, read off the pixels procedurally.

The judge is never an optimized reward: it has no parameters and no gradient.
It reads an image the way the world draws one:

1. The background is a linear gradient; a plane is fitted per channel to the
   border pixels (twice, dropping the outliers of the first fit).
2. Each pixel is *unmixed*: an antialiased edge pixel is ``α·c + (1 − α)·bg``
   for an object colour ``c``, so for every palette colour the coverage ``α`` is
   the projection of ``pixel − bg`` on ``c − bg``, and the colour is the one
   whose residual is smallest. Pixels whose best residual is large belong to no
   object colour.
3. Connected components of each colour (8-connectivity, coverage ≥ 0.35) are
   the detected objects; specks smaller than :data:`MIN_AREA` pixels are dropped.
4. A component's shape is the template, among the world's shapes drawn by the
   world's own renderer at the component's centroid and area, with the highest
   soft IoU against the component's coverage map. Its size is the nearer of the
   world's sizes, its position the coverage-weighted centroid.

Checks per prompt (each only where the prompt states it), as GenEval scores
them: ``object`` (every named colour-shape pair is present), ``colour``,
``shape``, ``position``, ``size``, ``count`` (exactly n), ``relation`` (the
centroids' order along the axis, by at least :data:`RELATION_MARGIN`), and
``correct`` (all of them).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from r0kit.mini import world as W

#: Components with less coverage mass than this (pixels at 32 px) are noise, not objects.
MIN_AREA = 7.0
#: A pixel belongs to an object colour when its unmixing residual is below this (0-1 RGB units).
MAX_RESIDUAL = 0.14
#: The subject must be this far (fraction of the side) along the relation's axis from the reference.
RELATION_MARGIN = 0.05
#: Shape area per radius² for each template (π r² for the circle; see world._shape_points).
_AREA_PER_R2 = {"circle": math.pi, "square": 2.89, "triangle": 1.8, "diamond": 1.6}
CHECKS: tuple[str, ...] = ("object", "colour", "shape", "position", "size", "count", "relation", "correct")


@dataclass(frozen=True)
class Detection:
    """One detected object: colour, shape, size name, centroid ``(x, y)`` as fractions, area in pixels, template IoU."""

    colour: str
    shape: str
    size: str
    x: float
    y: float
    area: float
    iou: float


def _background(img: np.ndarray) -> np.ndarray:
    h, w, _ = img.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    ring = np.zeros((h, w), bool)
    ring[:2, :] = ring[-2:, :] = ring[:, :2] = ring[:, -2:] = True
    design = np.stack([np.ones(h * w), xs.ravel(), ys.ravel()], 1)
    sel = ring.ravel()
    target = img.reshape(-1, 3).astype(np.float64)
    for _ in range(2):
        coef, *_ = np.linalg.lstsq(design[sel], target[sel], rcond=None)
        resid = np.linalg.norm(design @ coef - target, axis=1)
        keep = ring.ravel() & (resid < max(0.04, float(np.median(resid[ring.ravel()])) * 3))
        if keep.sum() >= 8:
            sel = keep
    return (design @ coef).reshape(h, w, 3)


def _unmix(img: np.ndarray, bg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: the index of the best palette colour (−1 for none) and its coverage α."""
    palette = np.asarray(list(W.COLOURS.values()), np.float64) / 255.0  # [K, 3]
    d = (img - bg)[:, :, None, :]  # [H, W, 1, 3]
    v = palette[None, None, :, :] - bg[:, :, None, :]  # [H, W, K, 3]
    vv = (v * v).sum(-1).clip(1e-6)
    alpha = (d * v).sum(-1) / vv
    resid = np.linalg.norm(d - alpha[..., None] * v, axis=-1)
    resid = np.where(alpha > 0.2, resid, np.inf)
    best = resid.argmin(-1)
    a = np.take_along_axis(alpha, best[..., None], -1)[..., 0]
    r = np.take_along_axis(resid, best[..., None], -1)[..., 0]
    label = np.where(r < MAX_RESIDUAL, best, -1)
    return label, np.clip(a, 0.0, 1.0) * (label >= 0)


def _components(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    h, w = mask.shape
    seen = np.zeros_like(mask, bool)
    out = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        comp, queue = [], deque([(y0, x0)])
        seen[y0, x0] = True
        while queue:
            y, x = queue.popleft()
            comp.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                        seen[yy, xx] = True
                        queue.append((yy, xx))
        out.append(comp)
    return out


def _template(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """The world renderer's coverage map of one shape (white on black)."""
    big = size * W.SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    rr, x, y = r * W.SUPERSAMPLE, cx * big, cy * big
    if shape == "circle":
        draw.ellipse([x - rr, y - rr, x + rr, y + rr], fill=255)
    else:
        draw.polygon(W._shape_points(shape, x, y, rr), fill=255)
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX), np.float64) / 255.0


def _centroid_offset(shape: str) -> float:
    """Vertical offset of a template's centroid from its drawing centre, in radii (the triangle's is below)."""
    return 0.2 if shape == "triangle" else 0.0


def _classify(cov: np.ndarray, cx: float, cy: float, area: float) -> tuple[str, float, float]:
    """``(shape, iou, radius)`` of the best template for a component's coverage map."""
    size = cov.shape[0]
    best = ("circle", -1.0, 0.0)
    for shape in W.SHAPES:
        r = math.sqrt(area / _AREA_PER_R2[shape])
        t = _template(shape, cx / size, (cy - _centroid_offset(shape) * r) / size, r, size)
        iou = float(np.minimum(cov, t).sum() / max(np.maximum(cov, t).sum(), 1e-9))
        if iou > best[1]:
            best = (shape, iou, r)
    return best


def detect(image: np.ndarray) -> list[Detection]:
    """Objects in one ``[H, W, 3]`` image in [0, 1] (float; any square size)."""
    img = np.asarray(image, np.float64)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"detect() takes one [H, W, 3] image, got shape {img.shape}")
    size = img.shape[0]
    scale = (size / W.RESOLUTION) ** 2
    bg = _background(img)
    label, alpha = _unmix(img, bg)
    names = list(W.COLOURS)
    found = []
    for k, colour in enumerate(names):
        cov_k = np.where(label == k, alpha, 0.0)
        for comp in _components(cov_k >= 0.35):
            ys, xs = np.array(comp).T
            # Grow by one pixel to collect the component's antialiased rim.
            keep = np.zeros_like(cov_k, bool)
            keep[ys, xs] = True
            rim = np.zeros_like(keep)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    rim |= np.roll(np.roll(keep, dy, 0), dx, 1)
            cov = np.where(rim, cov_k, 0.0)
            area = float(cov.sum())
            if area < MIN_AREA * scale:
                continue
            yy, xx = np.mgrid[0:size, 0:size]
            cx = float((cov * (xx + 0.5)).sum() / area)
            cy = float((cov * (yy + 0.5)).sum() / area)
            shape, iou, r = _classify(cov, cx, cy, area)
            r32 = r * W.RESOLUTION / size
            size_name = "small" if r32 < math.sqrt(W.SIZES["small"] * W.SIZES["large"]) else "large"
            found.append(Detection(colour, shape, size_name, cx / size, cy / size, area / scale, iou))
    return found


def _at(d: Detection, position: str) -> bool:
    if position == "left":
        return d.x < 0.4
    if position == "right":
        return d.x > 0.6
    if position == "top":
        return d.y < 0.4
    if position == "bottom":
        return d.y > 0.6
    return abs(d.x - 0.5) < 0.15 and abs(d.y - 0.5) < 0.15


def _holds(a: Detection, b: Detection, relation: str) -> bool:
    if relation == "left of":
        return a.x < b.x - RELATION_MARGIN
    if relation == "right of":
        return a.x > b.x + RELATION_MARGIN
    if relation == "above":
        return a.y < b.y - RELATION_MARGIN
    return a.y > b.y + RELATION_MARGIN


def check(prompt: str, image: np.ndarray, detections: list[Detection] | None = None) -> dict[str, bool]:
    """The judge's checks of one image against its prompt: check name -> passed (stated checks only)."""
    st = W.parse_prompt(prompt)
    dets = detect(image) if detections is None else detections

    def matching(pair):
        return [d for d in dets if (d.colour, d.shape) == pair]

    out: dict[str, bool] = {
        "object": all(matching(p) for p in st.pairs),
        "colour": all(any(d.colour == c for d in dets) for c, _ in st.pairs),
        "shape": all(any(d.shape == s for d in dets) for _, s in st.pairs),
    }
    if st.kind == "single":
        m = matching(st.pairs[0])
        if st.position:
            out["position"] = any(_at(d, st.position) for d in m)
        if st.size:
            out["size"] = any(d.size == st.size for d in m)
    elif st.kind == "count":
        out["count"] = len(matching(st.pairs[0])) == st.count
    else:
        a, b = (matching(p) for p in st.pairs)
        out["relation"] = any(_holds(x, y, st.relation) for x in a for y in b)  # type: ignore[arg-type]
    out["correct"] = all(out.values())
    return out


def to_hwc(images) -> list[np.ndarray]:
    """``[B, 3, H, W]`` tensor or array in [0, 1] -> a list of ``[H, W, 3]`` float arrays."""
    arr = images.detach().float().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if arr.ndim != 4 or arr.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(arr.shape)}")
    return list(arr.transpose(0, 2, 3, 1))


def score(prompts: Sequence[str], images) -> list[dict[str, bool]]:
    """:func:`check` for each (prompt, image) of a batch ``[B, 3, H, W]`` in [0, 1]."""
    imgs = to_hwc(images)
    if len(imgs) != len(prompts):
        raise ValueError(f"{len(prompts)} prompt(s) for {len(imgs)} image(s)")
    return [check(p, im) for p, im in zip(prompts, imgs)]


def accuracy(results: Iterable[dict[str, bool]]) -> dict[str, float]:
    """Mean of each check over the results that have it (GenEval's per-category accuracy); NaN where none do."""
    results = list(results)
    out = {}
    for name in CHECKS:
        vals = [r[name] for r in results if name in r]
        out[name] = float(np.mean(vals)) if vals else float("nan")
    return out


__all__ = ["CHECKS", "Detection", "accuracy", "check", "detect", "score", "to_hwc"]
