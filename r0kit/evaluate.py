"""Evaluation of trained generators (or folders of images) on a prompt set, R0-table style.

Each *source* is one row of the table:

* an exported kstep generator (a folder with ``kstep.json``: a LoRA on its base
  model, or a full pipeline), sampled in its K steps with η = 0;
* a diffusers pipeline folder, hub id or built-in short name (the base model),
  sampled with ``steps`` steps of the same deterministic sampler; ``MODEL@K``
  samples it in K steps (``r0kit-mini@4 r0kit-mini@25`` puts both in one table);
* a folder of images, scored as they are (prompts from the PNG ``prompt`` chunk
  or from the prompt file, in sorted file-name order).

Every chosen reward is scored, plus *held-out* judges that were not trained on:
held-out rewards, and *metrics* (``r0kit_register_metrics``) computed over each
row's whole image set, such as FID (``fid``, Inception-v3 against a reference
folder) or the mini world's GenEval-style accuracy. A rise of the trained
rewards with a fall of the held-out judges is the signature of reward hacking.
Scoring goes through :mod:`r0kit.score`; rewards are shown in R0's table units
(:data:`DISPLAY`: HPS ×100, CLIP score ×100, ...).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from r0kit.errors import InputError, OptionError

#: Weight-free rewards used as held-out indicators when no held-out reward or metric is named.
DEFAULT_HELD_OUT = ("contrast", "colorfulness", "symmetry")
FID_NOTE = "FID not computed: add --metric fid -M fid.reference=FOLDER (a folder of reference images; Inception-v3 weights, see r0kit.metrics)"
#: Rewards shown in R0's table units: name -> (column title, multiplier) (R0, Table 1).
DISPLAY: dict[str, tuple[str, float]] = {
    "hpsv2": ("HPS", 100.0),
    "aesthetic": ("Aes", 1.0),
    "clip": ("CLIP score", 1.0),  # the clip reward is already 100·cos
    "imagereward": ("ImageReward", 1.0),
    "pickscore": ("PickScore", 1.0),
}


@dataclass
class EvalRow:
    label: str
    kind: str  # "generator", "base", "images"
    means: dict[str, float]
    scores: dict[str, list[float]]
    files: list[str]
    prompts: list[str]
    grid: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    images: torch.Tensor | None = field(default=None, repr=False)


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

    metrics: list[str] = field(default_factory=list)
    #: Metric outputs where lower is better (FID), as their metrics declare; rewards and every other
    #: output are higher-is-better.
    lower_is_better: set[str] = field(default_factory=set)

    def best(self, key: str) -> float | None:
        """The best value of column ``key`` over the rows (lowest for :attr:`lower_is_better`, else highest);
        ``None`` when no row has a finite value, or fewer than two rows."""
        values = [v for v in (self.value(r, key) for r in self.rows) if math.isfinite(v)]
        if len(self.rows) < 2 or not values:
            return None
        return min(values) if key in self.lower_is_better else max(values)

    def columns(self) -> list[tuple[str, str, float]]:
        """``(key, title, multiplier)`` of every table column: rewards in R0's units, held-out ones
        and metric values marked ``*``."""
        cols = []
        for r in self.rewards + self.held_out:
            title, k = DISPLAY.get(r, (r, 1.0))
            if k != 1.0:
                title += f" ×{k:g}"
            cols.append((r, title + ("*" if r in self.held_out else ""), k))
        for m in self.metrics:
            cols.append((m, m + "*", 1.0))
        return cols

    def value(self, row: EvalRow, key: str) -> float:
        return row.metrics[key] if key in self.metrics else row.means[key]

    def table(self, width: int | None = None):
        """A rich Table in the shape of the R0 paper's: model | one column per reward and metric.

        :param width: the console's width in characters; when the paper's shape does not fit in it
            (rich would cut every column to an ellipsis), the table is turned: one row per reward and
            metric, one column per model. Cells never end in an ellipsis: where even the turned table
            is too wide, they wrap.
        """
        from rich.console import Console
        from rich.table import Table

        cols = self.columns()
        best = {key: self.best(key) for key, _, _ in cols}

        def cell(row: EvalRow, key: str, k: float) -> str:
            v = self.value(row, key)
            return f"[bold]{_fmt(v * k)}[/bold]" if v == best[key] else _fmt(v * k)

        t = Table(title="evaluation")
        t.add_column("model", overflow="fold")
        for _, title, _ in cols:
            t.add_column(title, justify="right", overflow="fold")
        for row in self.rows:
            t.add_row(row.label, *(cell(row, key, k) for key, _, k in cols))
        turn = width is not None and Console(width=100_000).measure(t).maximum > width
        if turn:
            t = Table(title="evaluation")
            t.add_column("", overflow="fold")
            for row in self.rows:
                t.add_column(row.label, justify="right", overflow="fold")
            for key, title, k in cols:
                t.add_row(title, *(cell(row, key, k) for row in self.rows))
        notes = ["* held out (not trained on): a reward-hacking indicator"] if any(title.endswith("*") for _, title, _ in cols) else []
        if len(self.rows) > 1:
            lower = sorted(k for k, _, _ in cols if k in self.lower_is_better)
            notes.append(f"bold: the best of each {'row' if turn else 'column'}"
                         + (f" (lowest for {', '.join(lower)}; highest for the rest)" if lower else " (highest)"))
        t.caption = "\n".join(notes) or None
        return t


def _fmt(v: float) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.4g}"


def parse_source(source: str) -> tuple[str, int | None]:
    """``"MODEL@K"`` -> ``("MODEL", K)``; any other source -> ``(source, None)``.

    :raises InputError: a ``@`` suffix that is not a positive step count.
    """
    base, sep, steps = str(source).rpartition("@")
    if not sep or Path(str(source)).exists():
        return str(source), None
    if not steps.isdigit() or int(steps) < 1:
        raise InputError(f"{source!r}: the part after '@' must be a number of sampling steps, such as r0kit-mini@4")
    return base, int(steps)


def source_kind(source: str) -> str:
    """``"generator"`` (an export), ``"base"`` (a pipeline folder, hub id or built-in name) or ``"images"``."""
    from r0kit.weights import BUILTIN_MODELS

    if source in BUILTIN_MODELS:
        return "base"
    p = Path(source)
    if p.is_dir() and export_entry(p) is not None:
        return "generator"
    if p.is_dir() and (p / "model_index.json").is_file():
        return "base"
    if p.is_dir() and (p / "export").is_dir() and export_entry(p / "export") is not None:
        raise InputError(f"{source!r} is a training run's folder; pass its exported generator, {str(p / 'export')!r}")
    if p.is_dir():
        _check_not_an_unloaded_export(p)
        return "images"
    if p.exists():
        raise InputError(f"{source!r} is a file; pass an exported generator folder, a pipeline folder or a folder of images")
    if "/" in source and not source.startswith((".", "/")):
        if p.parent.is_dir():  # 'run9/export' where ./run9 exists: a local path with a typo, not a hub id
            raise InputError(f"{source!r} does not exist (there is a local folder {str(p.parent)!r}, so it is read as a path, "
                             f"not a hub id); pass an exported generator folder, a pipeline folder or a folder of images")
        return "base"  # a hub id
    raise InputError(f"{source!r} does not exist; pass an exported generator folder, a pipeline folder, a hub id or a folder of images")


def _check_not_an_unloaded_export(folder: Path) -> None:
    """A folder with no images but a JSON file (an export's meta, ``kstep.json``, ...) is most likely an
    export whose generator plugin is not loaded: say so rather than "holds no images".

    :raises InputError: naming the loaded generators that export and why others may be missing.
    """
    from r0kit.plugins import get_host
    from r0kit.score import IMAGE_SUFFIXES

    files = [f for f in folder.iterdir() if f.is_file()]
    if any(f.suffix.lower() in IMAGE_SUFFIXES for f in files) or not any(f.suffix == ".json" for f in files):
        return
    host = get_host()
    exporters = sorted(f"{e.name} ({e.factory.export_meta})" for e in host.generators.entries.values()
                       if isinstance(getattr(e.factory, "export_meta", None), str))
    why = host.explain_missing("generator")
    raise InputError(
        f"{str(folder)!r} holds no images and is not the export of a loaded generator plugin "
        f"(those that export, with their meta file: {', '.join(exporters) or 'none is loaded'}) "
        f"nor a pipeline folder (no model_index.json). If a generator plugin wrote it, load that plugin"
        + (f": {why}" if why else " (r0kit plugins lists what is loaded).")
    )


def _generate(gen, prompts: list[str], seed: int, batch_size: int, progress: Any = None) -> torch.Tensor:
    """Image ``i`` from the noise of seed ``seed + i``, whatever the batching."""
    gen.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            ps = prompts[start : start + batch_size]
            noise = gen.noise_for_seeds([seed + start + i for i in range(len(ps))])
            out.append(gen.sample(ps, noise=noise).images.float().cpu())
            if progress is not None:
                progress(len(ps))
    return torch.cat(out)


def build_metrics(names: Sequence[str], options: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Instantiate the registered metrics ``names`` with their options (unknown names and options fail first)."""
    from r0kit.plugins import get_host

    options = options or {}
    unknown = set(options) - set(names)
    if unknown:
        raise OptionError(f"options given for metric(s) {sorted(unknown)} that are not evaluated; add --metric {sorted(unknown)[0]}")
    host = get_host()
    entries = {n: host.metrics.get(n) for n in dict.fromkeys(names)}
    for n, e in entries.items():
        e.check_options(options.get(n, {}))
    return {n: (e, e.create(**options.get(n, {}))) for n, e in entries.items()}


def check_sources(sources: Sequence[str], prompts: list[str] | None) -> tuple[list[tuple[str, int | None]], list[str]]:
    """Parse and classify every source (:func:`parse_source`, :func:`source_kind`) before any model loads.

    :returns: the parsed ``(source, K)`` pairs and each one's kind.
    :raises InputError: a source that does not exist, a file, ``@K`` on an export or image folder,
        or an image folder whose prompts cannot be read.
    :raises OptionError: a source to sample with no prompts.
    """
    from r0kit.score import list_images

    parsed = [parse_source(str(source)) for source in sources]
    kinds = [source_kind(src) for src, _ in parsed]
    for (source, k), kind in zip(parsed, kinds):
        if k is not None and kind != "base":
            raise InputError(f"'@{k}' applies to base models only; {source!r} is {'an export' if kind == 'generator' else 'an image folder'}")
        if kind == "images":
            _image_prompts(source, list_images(source), prompts)
        elif prompts is None:
            raise OptionError(f"sampling {str(source)!r} needs prompts: pass --prompts-file")
    return parsed, kinds


def check_metric_needs(metrics: dict[str, Any], *, seeds: int, prompts: int, prompt_list: Sequence[str] = ()) -> None:
    """Refuse, before any sampling, metrics a generated row cannot feed.

    A metric object may declare ``min_images_per_prompt`` (diversity across seeds: 2) and
    ``min_images`` (FID's covariance: 2); a generated row holds ``seeds`` images of each of
    ``prompts`` prompts. A metric that judges only some prompts (the mini world's judge reads
    its own grammar) may define ``check_prompts(prompts)``, raising :class:`InputError`; it is
    called with ``prompt_list``.

    :raises OptionError: naming the metric and the ``--seeds`` it needs.
    :raises InputError: naming the metric and a prompt it cannot judge.
    """
    for name, (_, metric) in metrics.items():
        check = getattr(metric, "check_prompts", None)
        if prompt_list and callable(check):
            try:
                check(list(prompt_list))
            except InputError as exc:
                raise InputError(f"metric {name!r}: {exc}") from None
        per_prompt = int(getattr(metric, "min_images_per_prompt", 1))
        if seeds < per_prompt:
            raise OptionError(f"metric {name!r} needs {per_prompt} images of each prompt; evaluate with --seeds {per_prompt} or more")
        least = int(getattr(metric, "min_images", 1))
        if prompts and seeds * prompts < least:
            raise OptionError(f"metric {name!r} needs at least {least} images; use more prompts or --seeds {-(-least // prompts)}")


def check_training_evaluation(cfg: Any) -> None:
    """Everything in a training config's ``[evaluate]`` table that can be checked before training:
    its prompts, baselines, held-out reward names, guidance, and metrics (built, so their options
    and weights are checked) against its seeds. :func:`evaluate_training` runs after the training.

    :raises ConfigError: naming the ``[evaluate]`` table and what is wrong in it.
    """
    from r0kit.config import read_prompts
    from r0kit.diffusion import check_guidance_scale
    from r0kit.errors import ConfigError, R0kitError
    from r0kit.plugins import get_host

    ev = cfg.evaluate
    if ev is None:
        return
    try:
        prompts = list(ev.prompts) if ev.prompts else read_prompts(ev.prompts_file)
        check_sources(ev.baselines, prompts)
        check_guidance_scale(ev.guidance, "evaluate.guidance")
        host = get_host()
        for name in ev.held_out:
            host.rewards.get(name)
        check_metric_needs(build_metrics(ev.metrics, ev.metric_options), seeds=ev.seeds, prompts=len(prompts), prompt_list=prompts)
    except R0kitError as exc:
        raise ConfigError(f"the config's [evaluate] table, checked before training: {exc}") from None


def compute_metrics(metrics: dict[str, Any], images: torch.Tensor, prompts: list[str]) -> dict[str, float]:
    """Every metric over one image set; each output goes through :func:`r0kit.metrics.check_metric_values`."""
    from r0kit.metrics import check_images, check_metric_values

    out: dict[str, float] = {}
    for name, (entry, metric) in metrics.items():
        check_images(images, prompts, name=name)
        values = check_metric_values(metric(images, prompts), name=name, plugin=entry.plugin)
        clash = set(values) & set(out)
        if clash:
            raise OptionError(f"metric {name!r} returns {sorted(clash)}, which another metric already returned")
        out.update(values)
    return out


def evaluate(
    sources: Sequence[str],
    prompts: list[str] | None,
    *,
    rewards: Sequence[str] = (),
    held_out: Sequence[str] = (),
    reward_options: dict[str, dict[str, Any]] | None = None,
    metrics: Sequence[str] = (),
    metric_options: dict[str, dict[str, Any]] | None = None,
    output: str | Path = "r0kit-eval",
    steps: int = 25,
    size: int | None = None,
    seed: int = 0,
    seeds: int = 1,
    guidance: float = 1.0,
    batch_size: int = 4,
    device: str = "auto",
    labels: Sequence[str] | None = None,
    progress: bool = False,
) -> Evaluation:
    """Score each source on ``prompts`` with ``rewards``, the ``held_out`` rewards and the ``metrics``.

    :param held_out: rewards not trained on; when empty and no metric is named, the first
        weight-free reward of :data:`DEFAULT_HELD_OUT` not among ``rewards`` is used.
    :param metrics: registered metrics, computed over each row's whole image set.
    :param steps: sampling steps for base-model sources without ``@K`` (exports use their own K).
    :param size: image side for base models (exports use their own; default: the model's native size).
    :param seeds: images per prompt for generated rows (image ``i`` of the row, prompt ``i // seeds``,
        uses seed ``seed + i``); diversity metrics need 2 or more.
    :param guidance: classifier-free guidance scale for base models, >= 0 (0 or 1 = none; exports sample without).
    """
    from r0kit.score import build_rewards, check_rewards

    if not sources:
        raise OptionError("evaluate needs at least one source (an exported generator, a pipeline or an image folder)")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise OptionError(f"seeds must be a positive integer, got {seeds!r}")
    from r0kit.diffusion import check_guidance_scale

    guidance = check_guidance_scale(guidance)
    rewards = list(dict.fromkeys(rewards))
    if not rewards and not metrics:
        raise OptionError(
            "evaluate needs at least one reward or metric (--reward NAME, --metric NAME, or --train-config to take "
            "its objective's rewards)"
        )
    held = [h for h in dict.fromkeys(held_out) if h not in rewards]
    if held_out and not held:
        raise OptionError(f"the held-out reward(s) {list(held_out)} are all among the trained rewards; hold out another one")
    if not held and not metrics:
        held = [next((h for h in DEFAULT_HELD_OUT if h not in rewards), "")]
        if not held[0]:
            raise OptionError("every default held-out reward is trained on; name one with --held-out")
    names = rewards + held
    labels = list(labels) if labels else []
    if len(labels) > len(sources):
        raise OptionError(f"got {len(labels)} --label(s) for {len(sources)} source(s); give at most one per source")
    blank = [i + 1 for i, label in enumerate(labels) if not isinstance(label, str) or not label.strip()]
    if blank:
        raise OptionError(f"--label number {', '.join(map(str, blank))} is empty; a label names its row in the table and its folder")
    # Every source is checked before any model loads: a bad third source must not cost two samplings.
    parsed, kinds = check_sources(sources, prompts)
    if names:
        check_rewards(names, reward_options)  # before the metrics load their networks
    elif reward_options:
        raise OptionError(f"--reward-option names reward(s) {sorted(reward_options)} that no --reward selects")
    built_metrics = build_metrics(metrics, metric_options)
    # outputs a metric declares lower-is-better (FID); the table marks each column's best by it
    lower = {str(k) for _, m in built_metrics.values() for k in getattr(m, "lower_is_better", ())}
    if any(kind != "images" for kind in kinds):
        check_metric_needs(built_metrics, seeds=seeds, prompts=len(prompts or []), prompt_list=prompts or ())
    terms = build_rewards(names, reward_options) if names else []
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[EvalRow] = []
    used: set[str] = set()
    options = dict(steps=steps, size=size, seed=seed, seeds=seeds, guidance=guidance, batch_size=batch_size,
                   device=device, progress=progress)
    try:
        for i, (source, src_steps) in enumerate(parsed):
            rows.append(_evaluate_source(i, source, src_steps, kinds[i], labels, used, prompts, names, terms,
                                         built_metrics, out, **options))
    except (Exception, KeyboardInterrupt) as exc:
        if not rows:
            raise
        done = len(rows)
        return _finish(out, rows, rewards, held, names, lower_is_better=lower, interrupted=isinstance(exc, KeyboardInterrupt),
                       error=None if isinstance(exc, KeyboardInterrupt) else exc, not_done=[str(s) for s in sources[done:]])
    return _finish(out, rows, rewards, held, names, lower_is_better=lower)


def _finish(out: Path, rows: list[EvalRow], rewards: list[str], held: list[str], names: list[str], **state: Any) -> Evaluation:
    metric_keys = list(dict.fromkeys(k for r in rows for k in r.metrics))
    csv_path, summary = _write_csvs(out, rows, names, held, metric_keys)
    # R0's table has an FID column: say how to get one, unless some FID (fid, mini_fid, ...) was computed
    notes = [] if any(k == "fid" or k.endswith("_fid") for k in metric_keys) else [FID_NOTE]
    return Evaluation(rows, rewards, held, csv_path, summary, notes, metrics=metric_keys, **state)


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


def _evaluate_source(i, source, src_steps, kind, labels, used, prompts, names, terms, metrics, out, *, steps, size, seed,
                     seeds, guidance, batch_size, device, progress) -> EvalRow:
    """One row of the table: sample (or read) the source's images, score them and compute the metrics."""
    from r0kit.outputs import contact_sheet, save_png
    from r0kit.score import list_images, load_image, score_tensor

    path = Path(str(source).rstrip("/"))
    default = path.name or str(source)
    if kind == "generator" and path.parent.name:  # a run's export: "run/export", as train's [evaluate] labels it
        default = f"{path.parent.name}/{path.name}"
    label = labels[i] if i < len(labels) else (f"{default}@{src_steps}" if src_steps else default)
    # labels and their folder names are both unique: "a b" and "a/b" would share the folder a_b
    while label in used or _safe(label) in {_safe(u) for u in used}:
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
        if metrics and images is None:
            raise InputError(f"{str(source)!r} holds images of different sizes; metrics need one size")
    else:
        gen = _build_generator(str(source), kind, steps=src_steps or steps, size=size, device=device, guidance=guidance)
        row_prompts = [p for p in prompts for _ in range(seeds)]
        images = _generate(gen, row_prompts, seed, batch_size, _progress_bar(label, len(row_prompts)) if progress else None)
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
    row_metrics = compute_metrics(metrics, images, row_prompts) if metrics else {}
    return EvalRow(label, kind, means, scores, file_names, row_prompts, grid, row_metrics, images)


def _progress_bar(label: str, total: int):
    """A rich progress bar for one row's sampling; returns ``advance(n)``, closing itself when full."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from r0kit.outputs import console

    # on stderr, as train's bar is: stdout carries the table, which may be piped to a file;
    # the count and time come first so that a narrow terminal cuts the label, not them
    bar = Progress(MofNCompleteColumn(), TimeElapsedColumn(), BarColumn(), TextColumn(f"[bold]sampling {label}"),
                   console=console(stderr=True))
    task = bar.add_task(label, total=total)
    bar.start()
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        bar.update(task, advance=n)
        if done >= total:
            bar.stop()

    return advance


def _safe(label: str) -> str:
    """A row's folder name: letters, digits, ``-_.`` kept, anything else ``_``; never ``.``, ``..`` or hidden."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in label) or "model"
    return "_" + name if name.startswith(".") else name


def export_entry(folder: Path) -> Any:
    """The registered generator whose export ``folder`` is (its factory's ``export_meta`` file is
    there; see the ``r0kit_register_generators`` hook), or ``None``."""
    from r0kit.plugins import get_host

    for entry in get_host().generators.entries.values():
        meta = getattr(entry.factory, "export_meta", None)
        if isinstance(meta, str) and callable(getattr(entry.factory, "from_export", None)) and (folder / meta).is_file():
            return entry
    return None


#: The generator a base model is sampled with (``MODEL@K``: K steps, frozen), by its registered name.
BASE_GENERATOR = "kstep"


def _build_generator(source: str, kind: str, *, steps: int, size: int | None, device: str, guidance: float = 1.0):
    from r0kit.plugins import get_host

    side: dict[str, Any] = {"height": size, "width": size} if size is not None else {}
    try:
        if kind == "generator":
            entry = export_entry(Path(source))
            if entry is None:  # source_kind found it; it can only be gone since
                raise InputError(f"{source!r} is no longer an exported generator folder")
            return entry.factory.from_export(source, device=device, **side)
        gen = get_host().generators.get(BASE_GENERATOR).create(
            model=source, steps=steps, train="none", device=device, guidance_scale=guidance, **side
        )
    except OptionError as exc:
        # the generator's height or width is at fault; the user typed --size
        if size is not None and exc.option in ("height", "width"):
            raise OptionError(f"--size {size} does not fit {source!r}: {exc}") from None
        raise
    return gen.eval()


def _write_csvs(out: Path, rows: list[EvalRow], names: list[str], held: list[str], metric_keys: Sequence[str] = ()) -> tuple[Path, Path]:
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
        w.writerow(["model", "kind", "images", *[k + ("*" if k in held else "") for k in names], *metric_keys])
        for row in rows:
            w.writerow(
                [row.label, row.kind, len(row.files), *(f"{row.means[k]:.6g}" for k in names)]
                + [f"{row.metrics[k]:.6g}" if k in row.metrics else "" for k in metric_keys]
            )
    return path, summary


def evaluate_training(cfg: Any, export: str | Path, *, progress: bool = False) -> tuple[Evaluation, list[Path]]:
    """The ``[evaluate]`` table of a training config: the export against its baselines.

    Rewards are the training objective's (with their options). Writes, under
    ``<output>/evaluation``, the CSVs and grids of :func:`evaluate`, ``before_after.png``
    (one row per prompt, one column per model, the same noise in every column) and
    ``curves.png`` (the training reward curves, from ``logs/train.csv``).

    :returns: the evaluation and the extra files written.
    """
    from r0kit.config import read_prompts
    from r0kit.outputs import contact_sheet

    ev = cfg.evaluate
    prompts = list(ev.prompts) if ev.prompts else read_prompts(ev.prompts_file)
    rewards, options = [], {}
    for label, term in cfg.objective.rewards.items():
        name = term.name or label
        rewards.append(name)
        options[name] = dict(term.options)
    out = Path(cfg.output) / "evaluation"
    labels = [*(b for b in ev.baselines), f"{Path(cfg.output).name}/export"]
    result = evaluate(
        [*ev.baselines, str(export)],
        prompts,
        rewards=rewards,
        held_out=ev.held_out,
        reward_options=options,
        metrics=ev.metrics,
        metric_options=ev.metric_options,
        output=out,
        seed=ev.seed,
        seeds=ev.seeds,
        guidance=ev.guidance,
        batch_size=ev.batch_size,
        device=str(cfg.generator.model_extra.get("device", "auto")) if cfg.generator.model_extra else "auto",
        labels=labels,
        progress=progress,
    )
    written = []
    n = min(ev.grid_prompts, len(prompts))
    idx = [i * ev.seeds for i in range(n)]  # the first seed of each of the first n prompts
    columns = [r.images[idx] for r in result.rows if r.images is not None]
    if columns:
        grid = torch.stack(columns, 1).flatten(0, 1)  # row-major: prompt by prompt, one column per model
        written.append(contact_sheet(out / "before_after.png", grid, nrow=len(columns)))
        from r0kit.io import write_text

        write_text(
            out / "before_after.txt",
            "columns: " + " | ".join(r.label for r in result.rows if r.images is not None) + "\n"
            + "".join(f"row {i + 1}: {prompts[i]}\n" for i in range(n)),
        )
    log = Path(cfg.output) / "logs" / "train" / "metrics.csv"
    if log.is_file():
        written.append(plot_training_curves(log, out / "curves.png", [*rewards, "loss"]))
    from r0kit.train import record_written

    record_written(cfg.output, out.name)  # the run's manifest owns its evaluation/ too
    return result, written


def plot_training_curves(log_csv: str | Path, path: str | Path, columns: Sequence[str]) -> Path:
    """The training log's ``columns`` against the step (one panel each), via :func:`r0kit.outputs.plot_curves`."""
    from r0kit.outputs import plot_curves

    with open(log_csv, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    keep = [c for c in columns if rows and c in rows[0]]
    history = [
        {"step": int(float(r["step"])), "values": {c: [float(r[c])] for c in keep if r.get(c) not in (None, "")}}
        for r in rows
    ]
    history = [h for h in history if len(h["values"]) == len(keep)]
    return plot_curves(path, history, title="R0 training: mean over the batch at each logged step")
