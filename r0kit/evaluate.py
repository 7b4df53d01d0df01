"""Evaluation of trained generators (or folders of images) on a prompt set, R0-table style.

Each *source* is one row of the table:

* an exported kstep generator (a folder with ``kstep.json``: a LoRA on its base
  model, or a full pipeline), sampled in its K steps with η = 0;
* a diffusers pipeline folder or hub id (the base model), sampled with ``steps``
  steps of the same deterministic sampler;
* a folder of images, scored as they are (prompts from the PNG ``prompt`` chunk
  or from the prompt file, in sorted file-name order).

Every chosen reward is scored, plus at least one *held-out* reward that was not
trained on: a rise of the trained rewards with a fall of the held-out ones is
the signature of reward hacking. Scoring goes through :mod:`r0kit.score`.

FID is not computed: it needs a reference image set and Inception weights, and
a FID on a few hundred images is not comparable to published numbers; the
table says so rather than printing a number.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from r0kit.errors import InputError, OptionError

#: Weight-free rewards used as held-out indicators when none is named.
DEFAULT_HELD_OUT = ("contrast", "colorfulness", "symmetry")
FID_NOTE = "FID omitted: it needs a reference image set and Inception weights, which r0kit does not load"


@dataclass
class EvalRow:
    label: str
    kind: str  # "generator", "base", "images"
    means: dict[str, float]
    scores: dict[str, list[float]]
    files: list[str]
    prompts: list[str]
    grid: Path | None = None


@dataclass
class Evaluation:
    """The rows of the table and where they were written.

    A run stopped by Ctrl-C or an error after some rows were done keeps them:
    ``interrupted`` or ``error`` says what happened and ``not_done`` lists the
    sources that have no row.
    """

    rows: list[EvalRow]
    rewards: list[str]
    held_out: list[str]
    csv: Path
    summary_csv: Path
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False
    error: BaseException | None = None
    not_done: list[str] = field(default_factory=list)

    def table(self):
        """A rich Table in the shape of the R0 paper's: model | one column per reward."""
        from rich.table import Table

        t = Table(title="evaluation", caption="* held out (not trained on): a reward-hacking indicator")
        t.add_column("model")
        for r in self.rewards:
            t.add_column(r, justify="right")
        for r in self.held_out:
            t.add_column(r + "*", justify="right")
        for row in self.rows:
            t.add_row(row.label, *(_fmt(row.means[r]) for r in self.rewards + self.held_out))
        return t


def _fmt(v: float) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.4g}"


def source_kind(source: str) -> str:
    """``"generator"`` (an export), ``"base"`` (a pipeline folder or hub id) or ``"images"``."""
    from r0kit_r0 import EXPORT_META

    p = Path(source)
    if p.is_dir() and (p / EXPORT_META).is_file():
        return "generator"
    if p.is_dir() and (p / "model_index.json").is_file():
        return "base"
    if p.is_dir():
        return "images"
    if p.exists():
        raise InputError(f"{source!r} is a file; pass an exported generator folder, a pipeline folder or a folder of images")
    if "/" in source and not source.startswith((".", "/")):
        return "base"  # a hub id
    raise InputError(f"{source!r} does not exist; pass an exported generator folder, a pipeline folder, a hub id or a folder of images")


def _generate(gen, prompts: list[str], seed: int, batch_size: int) -> torch.Tensor:
    gen.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            ps = prompts[start : start + batch_size]
            noise = gen.noise_for_seeds([seed + start + i for i in range(len(ps))])
            out.append(gen.sample(ps, noise=noise).images.float().cpu())
    return torch.cat(out)


def evaluate(
    sources: Sequence[str],
    prompts: list[str] | None,
    *,
    rewards: Sequence[str],
    held_out: Sequence[str] = (),
    reward_options: dict[str, dict[str, Any]] | None = None,
    output: str | Path = "r0kit-eval",
    steps: int = 25,
    size: int | None = None,
    seed: int = 0,
    batch_size: int = 4,
    device: str = "auto",
    labels: Sequence[str] | None = None,
) -> Evaluation:
    """Score each source on ``prompts`` with ``rewards`` and the ``held_out`` rewards.

    :param held_out: rewards not trained on; when empty, the first weight-free reward
        of :data:`DEFAULT_HELD_OUT` not among ``rewards`` is used.
    :param steps: sampling steps for base-model sources (exports use their own K).
    :param size: image side for base models (exports use their own; default 512).
    """
    from r0kit.score import build_rewards, list_images

    if not sources:
        raise OptionError("evaluate needs at least one source (an exported generator, a pipeline or an image folder)")
    rewards = list(dict.fromkeys(rewards))
    if not rewards:
        raise OptionError("evaluate needs at least one reward (--reward NAME, or --train-config to take its objective's)")
    held = [h for h in dict.fromkeys(held_out) if h not in rewards]
    if held_out and not held:
        raise OptionError(f"the held-out reward(s) {list(held_out)} are all among the trained rewards; hold out another one")
    if not held:
        held = [next((h for h in DEFAULT_HELD_OUT if h not in rewards), "")]
        if not held[0]:
            raise OptionError("every default held-out reward is trained on; name one with --held-out")
    names = rewards + held
    labels = list(labels) if labels else []
    if len(labels) > len(sources):
        raise OptionError(f"got {len(labels)} --label(s) for {len(sources)} source(s); give at most one per source")
    # Every source is checked before any model loads: a bad third source must not cost two samplings.
    kinds = [source_kind(str(source)) for source in sources]
    for source, kind in zip(sources, kinds):
        if kind == "images":
            _image_prompts(source, list_images(source), prompts)
        elif prompts is None:
            raise OptionError(f"sampling {str(source)!r} needs prompts: pass --prompts-file")
    terms = build_rewards(names, reward_options)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[EvalRow] = []
    used: set[str] = set()
    try:
        for i, source in enumerate(sources):
            rows.append(_evaluate_source(i, source, kinds[i], labels, used, prompts, names, terms, out,
                                         steps=steps, size=size, seed=seed, batch_size=batch_size, device=device))
    except (Exception, KeyboardInterrupt) as exc:
        if not rows:
            raise
        done = len(rows)
        csv_path, summary = _write_csvs(out, rows, names, held)
        return Evaluation(rows, rewards, held, csv_path, summary, [FID_NOTE],
                          interrupted=isinstance(exc, KeyboardInterrupt),
                          error=None if isinstance(exc, KeyboardInterrupt) else exc,
                          not_done=[str(s) for s in sources[done:]])
    csv_path, summary = _write_csvs(out, rows, names, held)
    return Evaluation(rows, rewards, held, csv_path, summary, [FID_NOTE])


def _image_prompts(source, files: list[Path], prompts: list[str] | None) -> list[str]:
    """The prompt of each image of a folder source: from the prompt file, or from the PNGs."""
    from r0kit.score import read_png_prompt

    if prompts is not None:
        if len(prompts) != len(files):
            raise InputError(
                f"{str(source)!r} holds {len(files)} image(s) for {len(prompts)} prompt(s); "
                "give one prompt per image, in sorted file-name order"
            )
        return list(prompts)
    found = [read_png_prompt(f) for f in files]
    missing = [f.name for f, p in zip(files, found) if p is None]
    if missing:
        raise InputError(f"{len(missing)} image(s) in {str(source)!r} have no 'prompt' PNG chunk; pass a prompt file")
    return [p or "" for p in found]


def _evaluate_source(i, source, kind, labels, used, prompts, names, terms, out, *, steps, size, seed, batch_size, device) -> EvalRow:
    """One row of the table: sample (or read) the source's images and score them."""
    from r0kit.outputs import contact_sheet, save_png
    from r0kit.score import list_images, load_image, score_tensor

    label = labels[i] if i < len(labels) else Path(str(source).rstrip("/")).name or str(source)
    while label in used:
        label += "'"
    used.add(label)
    if kind == "images":
        files = list_images(source)
        row_prompts = _image_prompts(source, files, prompts)
        loaded = [load_image(f) for f in files]
        shapes = {tuple(im.shape) for im, _ in loaded}
        images = torch.stack([im for im, _ in loaded]) if len(shapes) == 1 else None
        scores = {k: [] for k in names}
        for im, p in zip(loaded, row_prompts):
            v = score_tensor(im[0][None], [p], terms)
            for k in names:
                scores[k].append(float(v[k][0]))
        file_names = [f.name for f in files]
    else:
        gen = _build_generator(str(source), kind, steps=steps, size=size, device=device)
        images = _generate(gen, list(prompts), seed, batch_size)
        row_prompts = list(prompts)
        folder = out / _safe(label)
        file_names = []
        for j, (img, p) in enumerate(zip(images, row_prompts)):
            name = f"{j:05d}.png"
            save_png(folder / name, img, {"prompt": p, "seed": seed + j, "source": str(source)})
            file_names.append(f"{_safe(label)}/{name}")
        v = score_tensor(images, row_prompts, terms, batch_size=batch_size)
        scores = {k: [float(x) for x in v[k]] for k in names}
        del gen
    grid = contact_sheet(out / f"grid-{_safe(label)}.png", images[:16]) if images is not None else None
    means = {k: sum(v) / len(v) for k, v in scores.items()}
    return EvalRow(label, kind, means, scores, file_names, row_prompts, grid)


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label) or "model"


def _build_generator(source: str, kind: str, *, steps: int, size: int | None, device: str):
    from r0kit_r0 import KStepGenerator, load_export

    if kind == "generator":
        over: dict[str, Any] = {"device": device}
        if size is not None:
            over.update(height=size, width=size)
        return load_export(source, **over)
    side = size or 512
    return KStepGenerator(model=source, steps=steps, height=side, width=side, train="none", device=device).eval()


def _write_csvs(out: Path, rows: list[EvalRow], names: list[str], held: list[str]) -> tuple[Path, Path]:
    from r0kit.io import atomic_path

    path = out / "evaluation.csv"
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "file", "prompt", *names])
        for row in rows:
            for i, (f, p) in enumerate(zip(row.files, row.prompts)):
                w.writerow([row.label, f, p, *(f"{row.scores[k][i]:.6g}" for k in names)])
    summary = out / "summary.csv"
    with atomic_path(summary) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "kind", "images", *[k + ("*" if k in held else "") for k in names]])
        for row in rows:
            w.writerow([row.label, row.kind, len(row.files), *(f"{row.means[k]:.6g}" for k in names)])
    return path, summary
