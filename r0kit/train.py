"""The R0 training loop: a K-step generator trained by regularized reward maximization.

There is no diffusion or distillation loss: each step samples images from the
generator (random η per sample and step), evaluates the objective (rewards,
optionally with per-reward gradient normalization, minus regularizers such as
``weight_l2``), back-propagates it into the trainable weights and steps the
optimizer. It runs on accelerate: ``accelerate launch -m r0kit.cli train ...``
gives DDP (each rank takes its part of every global batch: prompts, noise and η
are those one process would draw for the combined batch), an FSDP plugin of
``fsdp_version: 2`` shards the backbone (see :mod:`r0kit.sharding` and the
README: ``accelerate launch --config_file fsdp.yaml -m r0kit.cli train ...``),
``mixed_precision`` autocasts the networks, and the trackers log the values.

A training config (TOML)::

    steps = 2000
    batch_size = 4
    prompts_file = "prompts.txt"
    [generator]            # the kstep generator's options
    model = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    steps = 4
    eta = [0.0, 1.0]
    [optimizer]
    lr = 1e-4
    [objective]
    normalize_gradients = true
    [objective.rewards.hpsv2]
    [objective.regularizers.weight_l2]
    weight = 1e-3

Checkpoints (``<output>/checkpoints/step-NNNNNNN/``) hold safetensors files
for the trainable weights, the optimizer, the EMA and every RNG (torch, CUDA,
numpy, python and the sampler's generator), plus ``state.json`` with the step,
a fingerprint of what must not change across a resume, and the sha256 of every
file. They are written into a temporary folder and renamed, so a crash leaves
either the previous checkpoint or the new one. Resuming continues bit-exactly:
N steps, stop, resume, M steps gives the same weights as N + M steps in one run
(CPU, fp32), because the prompts of a step depend only on (seed, step, rank),
every random draw of the sampler comes from the saved generator, and the text
caches (the model's and the rewards') hold values that depend on the prompt
alone, not on which prompts a run met before (each is encoded by itself).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from r0kit.checks import MAX_LR, MAX_SEED, check_eta_range
from r0kit.config import (
    PATH_FIELD,
    ObjectiveConfig,
    StrictFloat,
    StrictModel,
    check_objective,
    check_prompts,
    format_validation_error,
    load_toml,
    read_prompts,
)
from r0kit.errors import ConfigError, NonFiniteError, OptionError, RunError, WeightsError, describe_failure, is_out_of_memory
from r0kit.sharding import full_tensor, is_sharded, shard_like

CHECKPOINT_FILES = ("trainable.safetensors", "optimizer.safetensors", "rng.safetensors")


# ---------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------
class KStepConfig(BaseModel):
    """The ``[generator]`` table. The named keys are validated here; any other key is passed to the factory."""

    model_config = ConfigDict(extra="allow", strict=True)
    name: str = "kstep"
    model: str
    steps: int = 4
    eta: tuple[float, float] = (0.0, 1.0)  # any input goes through check_eta_range first (_eta)
    train: Literal["lora", "full"] = "lora"
    lora_rank: int = Field(16, ge=1)
    height: int | None = Field(None, ge=8)  # None: the model's native size (the generator's default)
    width: int | None = Field(None, ge=8)
    backprop_steps: int | None = None
    intermediate_supervision: bool = False

    @field_validator("steps")
    @classmethod
    def _k(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"K (the number of sampling steps) must be at least 1, got {v}")
        return v

    @field_validator("eta", mode="before")
    @classmethod
    def _eta(cls, v: Any) -> Any:
        try:
            return check_eta_range(v)  # the kstep generator's own rule
        except OptionError as exc:  # pydantic reports a ValueError under the key
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _backprop(self) -> KStepConfig:
        if self.backprop_steps is not None and not 1 <= self.backprop_steps <= self.steps:
            raise ValueError(f"backprop_steps must lie in [1, steps={self.steps}], got {self.backprop_steps}")
        return self

    def options(self) -> dict[str, Any]:
        out = self.model_dump(exclude={"name"})
        out["eta"] = list(self.eta)
        out.update(self.model_extra or {})
        return out


class TrainOptimizerConfig(StrictModel):
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = Field(1e-4, gt=0, le=MAX_LR, allow_inf_nan=False)
    betas: tuple[StrictFloat, StrictFloat] = Field((0.9, 0.999), strict=False)
    eps: float = Field(1e-8, gt=0, le=1, allow_inf_nan=False)
    weight_decay: float = Field(0.0, ge=0, le=1e3, allow_inf_nan=False)
    momentum: float = Field(0.9, ge=0, lt=1, allow_inf_nan=False)
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0, allow_inf_nan=False)

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"betas must each lie in [0, 1), got {list(v)}")
        return v


class EMAConfig(StrictModel):
    enabled: bool = False
    decay: float = Field(0.999, gt=0, lt=1, allow_inf_nan=False)


class EvaluateConfig(StrictModel):
    """The ``[evaluate]`` table: after training, compare the export with baselines on held-out prompts.

    The trained rewards (with their options) are scored, plus ``held_out`` rewards and ``metrics``
    (see :func:`r0kit.evaluate.evaluate`); the table, a before/after grid and the reward curves are
    written under ``output/evaluation``.
    """

    prompts: list[str] = Field(default_factory=list)
    prompts_file: Path | None = Field(None, **PATH_FIELD)
    baselines: list[str] = Field(default_factory=list, description="base models, MODEL@K for K steps")
    guidance: float = Field(1.0, ge=0, allow_inf_nan=False)
    seeds: int = Field(1, ge=1)
    seed: int = Field(1000, ge=0, le=MAX_SEED)
    held_out: list[str] = Field(default_factory=list)
    metrics: list[str] = Field(default_factory=list)
    metric_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    batch_size: int = Field(16, ge=1)
    grid_prompts: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _prompts(self) -> EvaluateConfig:
        if not self.prompts and self.prompts_file is None:
            raise ValueError("give prompts = [...] or prompts_file = 'eval.txt' for the evaluation")
        return self


class TrainConfig(StrictModel):
    """A training run (``r0kit train``)."""

    prompts: list[str] = Field(default_factory=list)
    prompts_file: Path | None = Field(None, **PATH_FIELD)
    sample_prompts: list[str] = Field(default_factory=list)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    steps: int = Field(1000, ge=1, le=10_000_000)
    batch_size: int = Field(1, ge=1)
    grad_accum: int = Field(1, ge=1)
    mixed_precision: Literal["no", "bf16"] = "no"
    gradient_checkpointing: bool = False
    output: Path = Field(Path("r0kit-train"), **PATH_FIELD)
    log_every: int = Field(1, ge=1)
    sample_every: int = Field(0, ge=0)
    checkpoint_every: int = Field(0, ge=0)
    keep_checkpoints: int = Field(2, ge=1)
    trackers: list[Literal["csv", "tensorboard"]] = Field(default_factory=lambda: ["csv"])
    export: bool = True
    generator: KStepConfig
    optimizer: TrainOptimizerConfig = TrainOptimizerConfig()
    ema: EMAConfig = EMAConfig()
    objective: ObjectiveConfig
    evaluate: EvaluateConfig | None = None

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _mp(cls, v: Any) -> Any:
        if v == "fp16":
            raise ValueError(
                "fp16 is not supported: the objective back-propagates its own (normalized) image gradient, "
                "which fp16 loss scaling cannot wrap; use 'bf16' or 'no'"
            )
        return v

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, v: list[str]) -> list[str]:
        check_prompts(v)  # whether there are prompts at all is checked by train(), which can name --prompts-file
        return v


def parse_train(data: dict[str, Any], source: str = "<dict>", origins: dict[str, str] | None = None) -> TrainConfig:
    """Validate a training config; ``origins`` names the flags that set keys (see ``format_validation_error``)."""
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(exc, source, root_model=TrainConfig, what="training config", origins=origins) from None


def load_train_config(path: str | Path) -> TrainConfig:
    """Read and validate a training TOML; relative paths resolve against its folder."""
    cfg = parse_train(load_toml(path), str(path))
    base = Path(path).parent
    if cfg.prompts_file is not None and not cfg.prompts_file.is_absolute():
        cfg.prompts_file = base / cfg.prompts_file
    if cfg.evaluate is not None and cfg.evaluate.prompts_file is not None and not cfg.evaluate.prompts_file.is_absolute():
        cfg.evaluate.prompts_file = base / cfg.evaluate.prompts_file
    model = Path(cfg.generator.model)
    if not model.is_absolute() and (base / model).exists():
        cfg.generator.model = str(base / model)
    return cfg


# ---------------------------------------------------------------------------
# trackers
# ---------------------------------------------------------------------------
def _csv_tracker_class():
    from accelerate.tracking import GeneralTracker, on_main_process

    class CSVTracker(GeneralTracker):
        """Appends one row per ``log`` call to ``<logging_dir>/<run_name>/metrics.csv``; new keys widen the header."""

        name = "csv"
        requires_logging_directory = True

        def __init__(self, run_name: str, logging_dir: str | os.PathLike, resume_step: int | None = None):
            # Nothing is written here: the file is (re)written by store_init_configuration,
            # which accelerator.init_trackers calls once the run has started.
            super().__init__()
            self.run_name = run_name
            self.path = Path(logging_dir) / run_name / "metrics.csv"
            self.resume_step = resume_step
            self.columns: list[str] = ["step"]

        def _start(self) -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            rows: list[dict[str, str]] = []
            if self.resume_step is not None and self.path.is_file():  # keep the rows up to the resumed step
                with self.path.open(newline="") as f:
                    reader = csv.DictReader(f)
                    self.columns = list(reader.fieldnames or ["step"])
                    rows = [r for r in reader if int(float(r["step"])) <= self.resume_step]
            self._rewrite(rows)

        @property
        def tracker(self):
            return self.path

        def _rewrite(self, rows: list[dict[str, Any]]) -> None:
            from r0kit.io import atomic_path

            with atomic_path(self.path) as tmp, tmp.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.columns, restval="")
                w.writeheader()
                w.writerows(rows)

        @on_main_process
        def store_init_configuration(self, values: dict) -> None:
            from r0kit.io import write_json

            self._start()
            write_json(self.path.parent / "config.json", values)

        @on_main_process
        def log(self, values: dict, step: int | None = None, **kwargs) -> None:
            row = {"step": step, **{k: v for k, v in values.items() if isinstance(v, (int, float, str))}}
            new = [k for k in row if k not in self.columns]
            if new:
                with self.path.open(newline="") as f:
                    rows = list(csv.DictReader(f))
                self.columns += new
                self._rewrite(rows)
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.columns, restval="").writerow(row)

    return CSVTracker


def tensorboard_available() -> bool:
    from accelerate.utils import is_tensorboard_available

    return bool(is_tensorboard_available())


# ---------------------------------------------------------------------------
# small pieces
# ---------------------------------------------------------------------------
class EMA:
    """Exponential moving average of the trainable tensors: ``ē ← d·ē + (1 − d)·θ``."""

    def __init__(self, named: list[tuple[str, torch.Tensor]], decay: float):
        self.decay = float(decay)
        self.shadow = {n: p.detach().clone().float() for n, p in named}

    @torch.no_grad()
    def update(self, named: list[tuple[str, torch.Tensor]]) -> None:
        for n, p in named:
            self.shadow[n].lerp_(p.detach().float(), 1.0 - self.decay)


def batch_prompts(prompts: list[str], seed: int, step: int, micro: int, batch: int, rank: int, world: int, accum: int) -> list[str]:
    """The prompts of (step, micro-batch, rank): a fresh permutation of the set per epoch, from (seed, epoch) only."""
    n = len(prompts)
    start = ((step * accum + micro) * world + rank) * batch
    out = []
    perms: dict[int, list[int]] = {}
    for i in range(start, start + batch):
        epoch, pos = divmod(i, n)
        if epoch not in perms:
            perms[epoch] = torch.randperm(n, generator=torch.Generator("cpu").manual_seed(seed * 1_000_003 + epoch)).tolist()
        out.append(prompts[perms[epoch][pos]])
    return out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _lr_at(cfg: TrainOptimizerConfig, step: int) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr


def make_optimizer(cfg: TrainOptimizerConfig, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


#: Term options that place or pace a reward, not what it computes: a run resumes across them
#: (as the generator's device is not in its options either).
PLACEMENT_OPTIONS = ("device", "gradient_checkpointing")


def objective_fingerprint(spec: dict[str, Any]) -> dict[str, Any]:
    """An objective's :meth:`~r0kit.objective.Objective.spec` (as JSON) keyed by term, ``rewards.<label>`` ->
    name, weight and options, without :data:`PLACEMENT_OPTIONS`: a resume names what differs term by term."""
    if "terms" not in spec or not isinstance(spec["terms"], list):
        return spec  # already keyed
    out: dict[str, Any] = {}
    for kind, name, label, weight, options in spec["terms"]:
        opts = {str(k): v for k, v in options if k not in PLACEMENT_OPTIONS}
        out[f"{kind}s.{label}"] = {"name": name, "weight": weight, "options": opts}
    out.update({k: v for k, v in spec.items() if k != "terms"})
    return out


def fingerprint(cfg: TrainConfig, gen: Any, objective: Any, prompts: list[str], world: int) -> dict[str, Any]:
    """What a resumed run must share with the checkpoint to continue exactly."""
    opt = cfg.optimizer.model_dump()
    opt.pop("warmup_steps", None)
    return {
        "generator": {k: v for k, v in gen.options().items()},
        "trainable": {n: list(p.shape) for n, p in gen.named_parameters()},
        "objective": objective_fingerprint(json.loads(json.dumps(objective.spec(), default=str))),
        "optimizer": json.loads(json.dumps(opt)),
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "grad_accum": cfg.grad_accum,
        "num_processes": world,
        "prompts_sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
        "ema": cfg.ema.model_dump(),
    }


def _differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for k in sorted(set(saved) | set(current), key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in saved:
                out.append(f"{key}: not in the checkpoint, {current[k]!r} now")
            elif k not in current:
                out.append(f"{key}: {saved[k]!r} in the checkpoint, absent now")
            else:
                out.extend(_differences(saved[k], current[k], key))
        return out
    if saved != current:
        s, c = repr(saved), repr(current)
        return [f"{prefix}: checkpoint {s[:200]}, config {c[:200]}"]
    return []


# ---------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------
def _rng_state(sampler: torch.Generator) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors = {"torch_cpu": torch.get_rng_state(), "sampler": sampler.get_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    meta = {
        "numpy": json.dumps([kind, int(pos), int(has_gauss), float(cached)]),
        "python": json.dumps(random.getstate()),
    }
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, str], sampler: torch.Generator) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    sampler.set_state(tensors["sampler"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda_")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, cached = json.loads(meta["numpy"])
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = json.loads(meta["python"])
    random.setstate((version, tuple(internal), gauss))


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{idx}.{k}"] = full_tensor(v).detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": json.dumps(sd["param_groups"]), "scalars": json.dumps(scalars)}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        _, idx, k = key.split(".", 2)
        state.setdefault(int(idx), {})[k] = v
    for key, v in json.loads(meta["scalars"]).items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    for group in opt.param_groups:  # FSDP2: per-parameter state is sharded as its parameter is
        for p in group["params"]:
            st = opt.state.get(p, {})
            for k, v in st.items():
                if is_sharded(p) and isinstance(v, torch.Tensor) and tuple(v.shape) == tuple(p.shape):
                    st[k] = shard_like(v, p)


def save_checkpoint(
    folder: Path,
    *,
    step: int,
    gen: Any,
    optimizer: torch.optim.Optimizer,
    sampler: torch.Generator,
    ema: EMA | None,
    fp: dict[str, Any],
    write: bool = True,
    steps: int | None = None,
) -> Path:
    """Write ``folder`` atomically (a temporary sibling renamed into place).

    ``steps`` is the run's target step count, recorded so that a resume can say when it trains
    to another length than the run that wrote the checkpoint (``state.json``'s ``"steps"``).

    Sharded (FSDP2) weights, optimizer state and EMA are gathered whole first, which every
    rank must do: each calls this, and only the one with ``write=True`` writes.
    """
    from safetensors.torch import save_file

    trainable = {n: full_tensor(p).detach().cpu().contiguous() for n, p in gen.named_parameters()}
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    shadow = {n: full_tensor(v).cpu().contiguous() for n, v in ema.shadow.items()} if ema is not None else None
    folder = Path(folder)
    if not write:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(trainable, str(tmp / "trainable.safetensors"))
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"), metadata=opt_meta)
        t, meta = _rng_state(sampler)
        save_file(t, str(tmp / "rng.safetensors"), metadata=meta)
        files = list(CHECKPOINT_FILES)
        if shadow is not None:
            save_file(shadow, str(tmp / "ema.safetensors"))
            files.append("ema.safetensors")
        state = {"step": step, "fingerprint": fp, "files": {f: _sha256(tmp / f) for f in files}, "time": time.time()}
        if steps is not None:
            state["steps"] = int(steps)
        (tmp / "state.json").write_text(json.dumps(state, indent=2, default=str))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def read_checkpoint_state(folder: str | Path) -> dict[str, Any]:
    """``state.json`` of a checkpoint, after verifying every file's checksum.

    :raises WeightsError: naming the missing, unreadable or corrupt file.
    """
    folder = Path(folder)
    sj = folder / "state.json"
    if not folder.is_dir():
        raise WeightsError(f"checkpoint {str(folder)!r} does not exist")
    if not sj.is_file():
        raise WeightsError(f"checkpoint {str(folder)!r} is incomplete: {str(sj)!r} is missing; resume from another checkpoint")
    try:
        state = json.loads(sj.read_text())
        files = dict(state["files"])
        int(state["step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WeightsError(f"checkpoint file {str(sj)!r} is corrupt ({exc}); resume from another checkpoint") from None
    for name, digest in files.items():
        p = folder / name
        if not p.is_file():
            raise WeightsError(f"checkpoint file {str(p)!r} is missing; resume from another checkpoint")
        if _sha256(p) != digest:
            raise WeightsError(
                f"checkpoint file {str(p)!r} is corrupt (its sha256 does not match state.json); "
                "resume from another checkpoint"
            )
    return state


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types
        raise WeightsError(f"checkpoint file {str(path)!r} cannot be read ({exc}); resume from another checkpoint") from None


def find_checkpoints(output: Path) -> list[Path]:
    root = Path(output) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")), key=lambda p: p.name)


def resolve_resume(resume: str | Path | None, output: Path) -> Path | None:
    """The checkpoint folder to resume from: ``resume`` itself, or for ``"latest"`` the newest complete one.

    :raises ConfigError: for ``"latest"`` when ``output`` holds no complete checkpoint.
    """
    if resume is None:
        return None
    if str(resume) == "latest":
        found = complete_checkpoints(output)
        if not found:
            raise ConfigError(
                f"--resume latest: {str(Path(output) / 'checkpoints')!r} holds no complete checkpoint to resume from; "
                "start the run without --resume (with --overwrite where the folder holds an earlier run's files), "
                "or pass a checkpoint folder"
            )
        return found[-1]
    return Path(resume)


def continue_flags(steps: int, origins: Mapping[str, str] | None) -> str:
    """The flags of ``r0kit train`` that continue a stopped run: ``--resume latest``, and ``--steps N``
    when the run's length came from the command line (``origins["steps"]``), which a resume would not
    otherwise repeat."""
    return "--resume latest" + (f" --steps {steps}" if origins and "steps" in origins else "")


def complete_checkpoints(output: str | Path) -> list[Path]:
    """The checkpoints under ``output`` that a run can resume from (their ``state.json`` was written), oldest first."""
    return [p for p in find_checkpoints(Path(output)) if (p / "state.json").is_file()]


def resume_hint(output: str | Path) -> str:
    """``"--resume latest"`` where ``output`` holds a checkpoint to resume from, else ``""``: a refusal of a
    used folder suggests it only where it would work."""
    return "--resume latest" if Path(output).is_dir() and complete_checkpoints(output) else ""


# ---------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------
@dataclass
class TrainResult:
    step: int
    output: Path
    checkpoint: Path | None
    export: Path | None
    history: list[dict[str, float]] = field(default_factory=list)
    interrupted: bool = False


class _TrainProgress:
    """A rich progress bar on stderr: steps done, rate, time left, the loss and each term; the logged
    lines print above it (:attr:`console`)."""

    def __init__(self, start: int, end: int, labels: list[str]) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        from r0kit.outputs import console

        self.console = console(stderr=True)
        self.labels = labels
        self._p = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("<"),
            TimeRemainingColumn(), TextColumn("{task.fields[values]}"), console=self.console, transient=False,
        )
        self._task = self._p.add_task("train", total=end, completed=start, values="")
        self._p.start()

    def update(self, step: int, values: dict[str, float]) -> None:
        shown = [f"loss {values.get('loss', float('nan')):+.4f}"] + [f"{k} {values[k]:.4g}" for k in self.labels if k in values]
        self._p.update(self._task, completed=step, values="  ".join(shown))

    def close(self) -> None:
        self._p.stop()


def _line(step: int, total: int, values: dict[str, float], labels: list[str], rate: float) -> str:
    parts = [f"step {step}/{total}", f"loss {values.get('loss', float('nan')):+.4f}"]
    parts += [f"{k} {values[k]:.4g}" for k in labels if k in values]
    if "grad_norm" in values:
        parts.append(f"|g| {values['grad_norm']:.3g}")
    parts.append(f"lr {values.get('lr', 0):.2g}")
    parts.append(f"{rate:.2f} step/s")
    return "  ".join(parts)


#: What a training run writes at the top of its output folder.
TRAIN_OUTPUTS = ("checkpoints", "logs", "samples", "export", "evaluation")


def record_written(output: str | Path, name: str) -> None:
    """Add every file under ``output/name`` to the ``written`` list of the run's manifest (the
    ``[evaluate]`` table's outputs, written after the run itself ended), so that a later
    ``--overwrite`` replaces them rather than refusing them as the user's."""
    from r0kit.checks import MANIFEST
    from r0kit.io import files_under, read_manifest, write_json

    manifest = read_manifest(output)
    if not isinstance(manifest.get("written"), list):
        return
    manifest["written"] = sorted(set(manifest["written"]) | set(files_under(output, name)))
    write_json(Path(output) / MANIFEST, manifest)


def train(
    cfg: TrainConfig,
    *,
    resume: str | Path | None = None,
    overwrite: bool = False,
    max_steps: int | None = None,
    progress: bool = False,
    verbose: bool = False,
    generator: Any = None,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    source: str | None = None,
    origins: Mapping[str, str] | None = None,
    argv: Sequence[str] | None = None,
) -> TrainResult:
    """Train ``cfg.generator`` on ``cfg.objective``; returns where things were written.

    The output folder follows the output rule (:func:`r0kit.checks.check_output_dir`):
    a folder that already holds files needs ``resume`` (continue that run) or
    ``overwrite`` (replace it). Everything is checked, and the model built, before
    anything is written; the earlier run's files are only deleted once this run
    has completed a step.

    Every way the loop can end keeps a checkpoint of the last completed step:
    Ctrl-C returns with ``interrupted=True``; a NaN, an exception from a plugin,
    running out of memory or a failed write raises :class:`~r0kit.errors.RunError`
    naming the checkpoint to resume from (the original exception is its cause). A
    run that ends before completing a step leaves the folder as it found it.

    :param resume: a checkpoint folder, or ``"latest"`` (the newest under ``output``;
        an error when there is none).
    :param overwrite: replace the run already in ``output``.
    :param max_steps: stop (with a checkpoint) once this global step is reached, before ``cfg.steps``.
    :param progress: a rich progress bar on stderr, with a line of the logged values printed above it every
        ``cfg.log_every`` steps, and the checkpoint and step a resumed run continues from.
    :param verbose: the same lines without a bar: printed plainly on stderr (``r0kit train --no-progress``).
    :param generator: an already built generator to train instead of building ``cfg.generator``.
    :param callback: called with ``(step, logged values)`` after each optimizer step.
    :param source, origins: the config file and, per dotted key, the command-line flag that set it
        (``--reward-option clip.scale``), named in the objective's errors.
    :param argv: the command line, recorded in the output folder's ``r0kit-run.json``.
    """
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    from r0kit.checks import MANIFEST, check_output_dir
    from r0kit.config import build_objective
    from r0kit.io import ClaimedDir
    from r0kit.objective import generator as build_generator

    if resume is not None and overwrite:
        raise ConfigError("--resume continues the run in the output folder and --overwrite replaces it; give one of them")
    if not cfg.prompts and cfg.prompts_file is None:
        raise ConfigError("no training prompts: set prompts = [...] or prompts_file = '...' (one prompt a line, or JSONL)")
    prompts = list(cfg.prompts) if cfg.prompts else read_prompts(cfg.prompts_file)  # type: ignore[arg-type]
    output = Path(cfg.output)
    ckpt_path = resolve_resume(resume, output)
    resume_state = read_checkpoint_state(ckpt_path) if ckpt_path is not None else None
    start_step = int(resume_state["step"]) if resume_state else 0
    if start_step >= cfg.steps:
        raise ConfigError(
            f"{str(ckpt_path)!r} is at step {start_step}, and the run trains {cfg.steps} steps: there is nothing left "
            f"to train; pass --steps N with N above {start_step} to train further"
        )
    if max_steps is not None and max_steps <= start_step:
        raise ConfigError(
            f"{str(ckpt_path)!r} is at step {start_step}, and --max-steps {max_steps} would stop the run before it "
            f"trains a step; pass --max-steps N with N above {start_step}, or leave it out"
        )
    check_output_dir(output, "output", overwrite=overwrite, resume=resume is not None, resume_hint=resume_hint(output),
                     outputs=TRAIN_OUTPUTS)
    check_objective(cfg.objective, source, origins)  # a reward option's typo is found before anything loads

    trackers: list[Any] = []
    if "csv" in cfg.trackers:
        trackers.append(_csv_tracker_class()("train", output / "logs", resume_step=start_step if resume_state else None))
    if "tensorboard" in cfg.trackers and tensorboard_available():
        trackers.append("tensorboard")
    accelerator = Accelerator(
        # without CUDA, accelerate treats a multi-process launch as MULTI_CPU (gloo) only when told:
        # otherwise every process trains alone on the same output folder (as r0kit.optimize.shard_prompts)
        cpu=not torch.cuda.is_available(),
        mixed_precision=cfg.mixed_precision,
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=str(output), logging_dir=str(output / "logs")),
    )
    rank, world = accelerator.process_index, accelerator.num_processes

    gen_opts = cfg.generator.options()
    if cfg.gradient_checkpointing:
        gen_opts["gradient_checkpointing"] = True
    gen_opts.setdefault("device", str(accelerator.device))
    # the rewards before the generator: a bad reward option is found before the model loads
    objective = build_objective(cfg.objective, source, origins)
    if generator is None:
        generator = build_generator(cfg.generator.name, **gen_opts)
    gen = generator
    gen.train(True)
    named = gen.named_parameters()
    params = [p for _, p in named]
    if not params:
        raise OptionError("the generator has no trainable parameters; set generator.train to 'lora' or 'full'")
    optimizer = make_optimizer(cfg.optimizer, params)
    unet = gen.unet
    wrapped, optimizer = accelerator.prepare(unet, optimizer)
    gen.set_forward_module(wrapped)
    named = gen.named_parameters()  # under FSDP2, prepare replaced them by their shards
    params = [p for _, p in named]
    sharded = any(is_sharded(p) for p in params)
    ema = EMA(named, cfg.ema.decay) if cfg.ema.enabled else None
    # One stream on every rank: each rank keeps its rows of the global batch's draws (KStepGenerator.sample).
    sampler = torch.Generator("cpu").manual_seed(cfg.seed * 7919)
    fp = fingerprint(cfg, gen, objective, prompts, world)

    if resume_state is not None:
        _restore(ckpt_path, resume_state, fp, named, optimizer, ema, sampler)  # type: ignore[arg-type]
    else:
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % (2**32))
        random.seed(cfg.seed)

    # Start-up is over: only now is the output folder touched.
    claim = ClaimedDir(output, replace=overwrite, replace_names=TRAIN_OUTPUTS + (MANIFEST,),
                       backup=("logs/train/metrics.csv", "logs/train/config.json", MANIFEST) if resume_state else ())
    main_process = accelerator.is_main_process
    if main_process:
        claim.start()
    labels = [t.label for t in objective.terms]
    sample_prompts = list(cfg.sample_prompts) or prompts[: min(4, len(prompts))]
    end = min(cfg.steps, max_steps) if max_steps is not None else cfg.steps
    step = start_step
    history: list[dict[str, float]] = []
    last_ckpt: Path | None = ckpt_path
    interrupted = False
    failure: BaseException | None = None
    bar = _TrainProgress(start_step, end, labels) if progress and main_process else None
    console = bar.console if bar is not None else None

    def say(text: str) -> None:
        """A line of the run's log on stderr: above the progress bar, or plain without one (``verbose``)."""
        if console is not None:
            console.print(text, highlight=False, markup=False)  # a path may hold [brackets]
        elif verbose and main_process:
            print(text, file=sys.stderr, flush=True)

    if resume_state is not None:
        say(f"resuming from checkpoint {ckpt_path} at step {start_step} (of {cfg.steps})")
        target = resume_state.get("steps")
        if isinstance(target, int) and start_step < target != cfg.steps:  # a run cut short, resumed to another length
            say(f"note: the run that wrote it was training to step {target}; this one trains to {cfg.steps} "
                f"(pass --steps {target} to keep its length)")
    t0 = time.perf_counter()
    sampler_state = sampler.get_state()

    def checkpoint() -> Path:
        path = output / "checkpoints" / f"step-{step:07d}"
        if main_process or sharded:  # sharded tensors are gathered by every rank
            save_checkpoint(path, step=step, gen=gen, optimizer=optimizer, sampler=sampler, ema=ema, fp=fp,
                            write=main_process, steps=cfg.steps)
        if main_process:
            old = find_checkpoints(output)
            for p in old[: max(0, len(old) - cfg.keep_checkpoints)]:
                if p != path:
                    shutil.rmtree(p, ignore_errors=True)
        accelerator.wait_for_everyone()
        return path

    def manifest(status: str) -> None:
        if main_process:
            from r0kit.io import write_json

            # every output the run may write, from its start: after a kill, --overwrite replaces them all;
            # once it ends, "written" lists each file it wrote, so a later --overwrite keeps the user's files
            # inside those folders (ClaimedDir refuses to replace them)
            names = sorted(TRAIN_OUTPUTS)
            written = {} if status == "running" else {"written": claim.written(TRAIN_OUTPUTS)}
            write_json(output / MANIFEST, {"command": "train", "argv": list(argv) if argv is not None else None,
                                           "status": status, "step": step, "steps": cfg.steps,
                                           "checkpoint": str(last_ckpt) if last_ckpt else None,
                                           "files": names + [MANIFEST], **written})

    try:
        accelerator.init_trackers("train", config=json.loads(json.dumps(cfg.model_dump(mode="json"), default=str)))
        manifest("running")
        while step < end:
            sampler_state = sampler.get_state()
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(cfg.optimizer, step)
            sums: dict[str, float] = {}
            for micro in range(cfg.grad_accum):
                bp = batch_prompts(prompts, cfg.seed, step, micro, cfg.batch_size, rank, world, cfg.grad_accum)
                sync = contextlib.nullcontext() if micro == cfg.grad_accum - 1 else accelerator.no_sync(wrapped)
                with sync, accelerator.autocast():
                    sample = gen.sample(bp, generator=sampler, shard=(rank, world))
                    result = objective.backward(sample, bp, gen, reduction="mean")
                for k, v in result.mean().items():
                    sums[k] = sums.get(k, 0.0) + v / cfg.grad_accum
            if cfg.grad_accum > 1:
                for p in params:
                    if p.grad is not None:
                        p.grad.div_(cfg.grad_accum)
            if cfg.optimizer.grad_clip is not None:
                gnorm = float(full_tensor(accelerator.clip_grad_norm_(params, cfg.optimizer.grad_clip)))
            else:
                gs = [p.grad for p in params if p.grad is not None]
                gnorm = float(full_tensor(torch.nn.utils.get_total_norm(gs))) if gs else 0.0
            if not math.isfinite(gnorm):
                raise NonFiniteError(
                    f"the gradient went NaN or Inf at step {step + 1}; lower optimizer.lr or raise a regularizer's weight"
                )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(named)
            step += 1
            sampler_state = sampler.get_state()  # from here on, a stop keeps this completed step
            values = {"loss": -sums.pop("total"), **sums, "grad_norm": gnorm, "lr": optimizer.param_groups[0]["lr"]}
            history.append({"step": step, **values})
            if bar is not None:
                bar.update(step, values)
            if step % cfg.log_every == 0 or step == end:
                accelerator.log(values, step=step)
                if console is not None or verbose:
                    say(_line(step, cfg.steps, values, labels, (step - start_step) / max(time.perf_counter() - t0, 1e-9)))
            if callback is not None:
                callback(step, values)
            if cfg.sample_every and step % cfg.sample_every == 0 and (main_process or sharded):
                sample_grid(gen, sample_prompts, output / "samples" / f"step-{step:07d}.png", seed=cfg.seed, ema=ema,
                            write=main_process)
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < end:
                last_ckpt = checkpoint()
    except KeyboardInterrupt:
        interrupted = True
        say(f"interrupted: writing a checkpoint at step {step}")
    except Exception as exc:  # a NaN, a plugin's error, out of memory, a failed write
        failure = exc
    if bar is not None:
        bar.close()
    sampler.set_state(sampler_state)  # a step cut short is redone on resume
    for p in params:  # a partial step's gradients must not leak into the checkpoint's next step
        p.grad = None
    if failure is not None and is_out_of_memory(failure) and torch.cuda.is_available():
        torch.cuda.empty_cache()

    earned = step > start_step
    if not earned:
        if main_process:
            claim.rollback()
        _end(accelerator, gen, unet)
        if failure is not None:
            raise failure
        return TrainResult(step=step, output=output, checkpoint=ckpt_path, export=None, history=history, interrupted=interrupted)

    export_path = None
    try:
        last_ckpt = checkpoint()
        if main_process:
            claim.keep()
        if failure is None and not interrupted and step >= cfg.steps and cfg.export and (main_process or sharded):
            weights = ema.shadow if ema is not None else None
            if sharded:  # the export is written from whole tensors, which every rank gathers
                weights = {n: full_tensor(v).detach() for n, v in (weights or dict(named)).items()}
            if main_process:
                export_path = gen.export(output / "export", weights=weights)
            if cfg.sample_every:
                sample_grid(gen, sample_prompts, output / "samples" / "final.png", seed=cfg.seed, ema=ema,
                            write=main_process)
        manifest("interrupted" if interrupted else "failed" if failure is not None else "complete" if step >= cfg.steps else "stopped")
    except Exception as exc:  # writing the checkpoint or the export failed
        if failure is None:
            failure = exc
        else:
            failure.add_note(f"then writing the checkpoint failed too: {exc}")
        found = [p for p in find_checkpoints(output) if (p / "state.json").is_file()]
        last_ckpt = found[-1] if found else None
        if main_process:
            claim.keep()
    finally:
        _end(accelerator, gen, unet)
    if failure is not None:
        where = (
            f"the last checkpoint is {str(last_ckpt)!r} (step {last_ckpt.name.removeprefix('step-').lstrip('0') or '0'}); "
            f"continue with {continue_flags(cfg.steps, origins)}"
            if last_ckpt is not None
            else "no checkpoint could be written"
        )
        raise RunError(f"training stopped after step {step}: {describe_failure(failure)}; {where}") from failure
    return TrainResult(step=step, output=output, checkpoint=last_ckpt, export=export_path, history=history, interrupted=interrupted)


def _end(accelerator: Any, gen: Any, unet: Any) -> None:
    accelerator.end_training()
    gen.set_forward_module(unet)


def _restore(ckpt_path: Path, resume_state: dict[str, Any], fp: dict[str, Any], named, optimizer, ema, sampler) -> None:
    """Load a checkpoint's weights, optimizer, EMA and RNG state, after checking it fits this run."""
    saved = dict(resume_state["fingerprint"])
    if isinstance(saved.get("objective"), dict):  # a checkpoint of an earlier r0kit lists the terms unkeyed
        saved["objective"] = objective_fingerprint(saved["objective"])
    diffs = _differences(saved, fp)
    if diffs:
        raise ConfigError(
            f"cannot resume from {str(ckpt_path)!r}: it was written by another model or config:\n  "
            + "\n  ".join(diffs)
            + "\nresume with the checkpoint's config (the same --config or --preset, --prompts-file and --reward-option "
            "flags), or start a new run in another output folder"
        )
    weights, _ = _read_safetensors(ckpt_path / "trainable.safetensors")
    missing = [n for n, _ in named if n not in weights]
    if missing:
        raise WeightsError(f"checkpoint file {str(ckpt_path / 'trainable.safetensors')!r} lacks {missing[:3]}")
    with torch.no_grad():
        for n, p in named:
            p.copy_(shard_like(weights[n], p))
    t, meta = _read_safetensors(ckpt_path / "optimizer.safetensors")
    try:
        _load_optimizer(optimizer, t, meta)
    except (KeyError, ValueError, json.JSONDecodeError) as exc:
        raise WeightsError(f"checkpoint file {str(ckpt_path / 'optimizer.safetensors')!r} is corrupt ({exc})") from None
    if ema is not None:
        t, _ = _read_safetensors(ckpt_path / "ema.safetensors")
        ema.shadow = {n: shard_like(t[n], p).float() for n, p in named}
    t, meta = _read_safetensors(ckpt_path / "rng.safetensors")
    try:
        _set_rng_state(t, meta, sampler)
    except (KeyError, ValueError, RuntimeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"checkpoint file {str(ckpt_path / 'rng.safetensors')!r} is corrupt ({exc})") from None


@torch.no_grad()
def sample_grid(gen: Any, prompts: list[str], path: Path, *, seed: int = 0, ema: EMA | None = None, write: bool = True) -> Path:
    """A contact sheet of ``prompts`` sampled with η = 0 from fixed noise (EMA weights when given).

    Under FSDP2 every rank samples (the network's forward is collective) and only ``write=True`` writes.
    """
    from r0kit.outputs import contact_sheet

    saved = None
    if ema is not None:
        saved = {n: p.detach().clone() for n, p in gen.named_parameters()}
        for n, p in gen.named_parameters():
            p.copy_(ema.shadow[n].to(p.dtype))
    was = gen.training
    gen.eval()
    try:
        images = gen.sample(prompts, noise=gen.noise_for_seeds([seed + i for i in range(len(prompts))])).images
    finally:
        gen.train(was)
        if saved is not None:
            for n, p in gen.named_parameters():
                p.copy_(saved[n])
    return contact_sheet(path, images) if write else path
