"""The test-time optimization loop (the ReNO class).

Optimize the per-problem parameters of a generator (pixels, a latent, an
initial noise) to maximize an objective, for a batch of prompts at once:
every sample is its own problem, and the best iterate of each is kept.

ReNO's defaults are ``optimizer="sgd"`` (Nesterov momentum 0.9), ``lr=5``,
``grad_clip=0.1`` and 50 steps.

:func:`optimize` runs one batch; :func:`optimize_prompts` runs any number of
prompts in batches and merges the results; :func:`shard_prompts` gives this
process its share of the prompts under ``accelerate launch`` (through
accelerate's ``PartialState.split_between_processes``).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch

from r0kit.errors import NonFiniteError, OptionError
from r0kit.generator import Generator
from r0kit.objective import Objective, ObjectiveResult, Term, raise_if_nonfinite

log = logging.getLogger(__name__)


@dataclass
class StepInfo:
    """What a callback sees after each evaluation."""

    step: int
    result: ObjectiveResult
    images: torch.Tensor  # detached, [B, 3, H, W]
    grad_norm: float | None


@dataclass
class OptimizeResult:
    """The best iterate of each sample, and the history of every step.

    :ivar images: ``[B, 3, H, W]`` the best image of each sample.
    :ivar best_step: the step each best image comes from.
    :ivar best_values: term -> per-sample value at the best step (``"total"`` included).
    :ivar history: one dict per evaluated step: ``{"step", "values": {term: [B floats]}}``.
    :ivar stopped: ``None`` when all steps ran, else why it stopped early.
    """

    images: torch.Tensor
    best_step: list[int]
    best_values: dict[str, list[float]]
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None
    prompts: list[str] = field(default_factory=list)
    seed: int = 0
    indices: list[int] = field(default_factory=list)


def make_optimizer(
    params: list[torch.Tensor],
    name: Literal["adam", "sgd"] = "sgd",
    lr: float = 5.0,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    if not params:
        raise OptionError("the generator exposes no parameters to optimize; did prepare() run?")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise OptionError(f"unknown optimizer {name!r}; use 'sgd' or 'adam'")


class _Best:
    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.images: torch.Tensor | None = None
        self.step: list[int] = []
        self.values: dict[str, torch.Tensor] = {}

    def update(self, step: int, result: ObjectiveResult, images: torch.Tensor) -> None:
        total = result.total.detach()
        images = images.detach()
        if self.total is None:
            self.total, self.images = total.clone(), images.clone()
            self.step = [step] * total.shape[0]
            self.values = {k: v.detach().float().clone() for k, v in result.terms.items()}
            return
        better = total > self.total
        if not bool(better.any()):
            return
        self.total = torch.where(better, total, self.total)
        self.images[better] = images[better]  # type: ignore[index]
        for k, v in result.terms.items():
            v = v.detach().float()
            if v.dim() == 0:
                v = v.expand_as(total)
            self.values[k] = torch.where(better, v, self.values[k])
        for i in better.nonzero().flatten().tolist():
            self.step[i] = step


def optimize(
    objective: Objective,
    generator: Generator,
    prompts: list[str],
    *,
    steps: int = 50,
    seed: int = 0,
    optimizer: Literal["adam", "sgd"] = "sgd",
    lr: float = 5.0,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 0.0,
    grad_clip: float | None = 0.1,
    callback: Callable[[StepInfo], bool | None] | None = None,
    progress: bool = False,
    log_every: int | None = None,
) -> OptimizeResult:
    """Maximize ``objective`` over ``generator``'s parameters for ``prompts``.

    Runs ``steps`` updates and ``steps + 1`` evaluations (the last one scores
    the final iterate). ``callback(info)`` runs after every evaluation; if it
    returns ``True`` the loop stops. A NaN or Inf in any term stops the loop
    with :attr:`OptimizeResult.stopped` naming the term, keeping the best
    finite iterate; images that are NaN or Inf (a diverged parameter) stop it
    the same way; Ctrl-C stops it the same way. ``log_every=n`` logs the mean of
    every term every ``n`` steps (logger ``r0kit.optimize``, level INFO).
    """
    if not prompts:
        raise OptionError("optimize needs at least one prompt")
    if isinstance(objective, Term):
        objective = Objective([objective])
    if steps < 0:
        raise OptionError(f"steps must be >= 0, got {steps}")
    torch.manual_seed(seed)
    generator.prepare(list(prompts), seed)
    params = [p for p in generator.parameters() if p.requires_grad]
    opt = make_optimizer(params, optimizer, lr, momentum, nesterov, weight_decay)
    best = _Best()
    history: list[dict[str, Any]] = []
    stopped: str | None = None
    bar = _progress(progress, steps + 1)

    try:
        for step in range(steps + 1):
            last = step == steps
            opt.zero_grad(set_to_none=True)
            sample = generator.sample(list(prompts))
            if not _finite(sample.images):
                stopped = (
                    f"stopped at step {step}: the generator's images went NaN or Inf "
                    f"(its parameters diverged; lower the learning rate or clip the gradient); kept the best finite iterate"
                )
                break
            try:
                if last:
                    with torch.no_grad():
                        result = objective.evaluate(sample, list(prompts), generator)
                    raise_if_nonfinite(result)
                else:
                    result = objective.backward(sample, list(prompts), generator, reduction="sum")
            except NonFiniteError as exc:
                stopped = f"stopped at step {step}: {exc}; kept the best finite iterate"
                break
            best.update(step, result, sample.images)
            grad_norm = None
            if not last:
                grad_norm = _clip(params, grad_clip)
                if grad_norm is not None and not math.isfinite(grad_norm):
                    stopped = f"stopped at step {step}: the gradient went NaN or Inf; kept the best finite iterate"
                    break
            record = {"step": step, "values": result.as_floats()}
            if grad_norm is not None:
                record["grad_norm"] = grad_norm
            history.append(record)
            if log_every and (step % log_every == 0 or last):
                means = result.mean()
                log.info(
                    "step %d/%d  %s%s",
                    step,
                    steps,
                    "  ".join(f"{k}={v:+.4g}" for k, v in means.items()),
                    f"  grad_norm={grad_norm:.3g}" if grad_norm is not None else "",
                )
            if bar is not None:
                bar.update(mean=float(result.total.detach().mean()))
            if callback is not None and callback(StepInfo(step, result, sample.images.detach(), grad_norm)):
                stopped = f"stopped at step {step} by the callback"
                break
            if not last:
                opt.step()
    except KeyboardInterrupt:
        stopped = "interrupted; kept the best iterate so far"
    finally:
        if bar is not None:
            bar.close()

    if best.images is None:
        raise NonFiniteError(stopped or "no finite iterate was produced")
    best_values = {"total": best.total.float().cpu().tolist()}  # type: ignore[union-attr]
    best_values.update({k: v.cpu().tolist() for k, v in best.values.items()})
    return OptimizeResult(
        images=best.images.float().cpu(),
        best_step=best.step,
        best_values=best_values,
        history=history,
        stopped=stopped,
        prompts=list(prompts),
        seed=seed,
        indices=list(range(len(prompts))),
    )


def _finite(t: torch.Tensor) -> bool:
    with torch.no_grad():
        return bool(torch.isfinite(t).all())


def optimize_prompts(
    objective: Objective,
    generator: Generator,
    prompts: list[str],
    *,
    batch_size: int = 1,
    seed: int = 0,
    indices: list[int] | None = None,
    on_batch: Callable[[OptimizeResult], None] | None = None,
    **options: Any,
) -> OptimizeResult:
    """Optimize any number of prompts, ``batch_size`` at a time, and merge the results.

    Each batch is its own :func:`optimize` call, prepared with seed
    ``seed + indices[first prompt of the batch]``; the diffusers generators draw
    sample ``i`` of a batch with ``seed + i``, so every prompt gets the seed
    ``seed + its index`` whatever the batching or sharding.

    :param indices: the global index of each prompt (default ``0..n-1``; a shard passes its own).
    :param on_batch: called with each batch's result as soon as it is done.
    :param options: passed to :func:`optimize` (steps, optimizer, lr, callback, ...).

    A batch that stops early (NaN, callback) does not stop the others; Ctrl-C
    stops the whole run after keeping the interrupted batch's best iterate.
    """
    if not prompts:
        raise OptionError("optimize needs at least one prompt")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise OptionError(f"batch_size must be an int >= 1, got {batch_size!r}")
    indices = list(range(len(prompts))) if indices is None else list(indices)
    if len(indices) != len(prompts):
        raise OptionError(f"got {len(indices)} indices for {len(prompts)} prompts")
    results: list[OptimizeResult] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        idx = indices[start : start + batch_size]
        res = optimize(objective, generator, chunk, seed=seed + idx[0], **options)
        res.seed, res.indices = seed, idx
        results.append(res)
        if on_batch is not None:
            on_batch(res)
        if res.stopped and res.stopped.startswith("interrupted"):
            break
    return merge_results(results)


def merge_results(results: list[OptimizeResult]) -> OptimizeResult:
    """Concatenate batch results sample-wise; a batch that stopped early is padded with NaN in the history."""
    if not results:
        raise OptionError("no results to merge")
    if len(results) == 1:
        return results[0]
    nsteps = max(len(r.history) for r in results)
    history: list[dict[str, Any]] = []
    for s in range(nsteps):
        values: dict[str, list[float]] = {}
        grad_norms = []
        keys: list[str] = []
        for r in results:
            for rec in r.history:
                keys += [k for k in rec["values"] if k not in keys]
        for r in results:
            n = len(r.prompts)
            rec = r.history[s] if s < len(r.history) else None
            for k in keys:
                vals = rec["values"].get(k) if rec is not None else None
                values.setdefault(k, []).extend(vals if vals is not None else [float("nan")] * n)
            if rec is not None and "grad_norm" in rec:
                grad_norms.append(rec["grad_norm"])
        record: dict[str, Any] = {"step": s, "values": values}
        if grad_norms:
            record["grad_norm"] = grad_norms[0] if len(grad_norms) == 1 else max(grad_norms)
        history.append(record)
    keys = list(dict.fromkeys(k for r in results for k in r.best_values))
    best_values = {
        k: [v for r in results for v in r.best_values.get(k, [float("nan")] * len(r.prompts))] for k in keys
    }
    stops = [f"prompts {r.indices[0]}-{r.indices[-1]}: {r.stopped}" for r in results if r.stopped]
    return OptimizeResult(
        images=torch.cat([r.images for r in results]),
        best_step=[s for r in results for s in r.best_step],
        best_values=best_values,
        history=history,
        stopped="; ".join(stops) or None,
        prompts=[p for r in results for p in r.prompts],
        seed=results[0].seed,
        indices=[i for r in results for i in r.indices],
    )


@dataclass
class Shard:
    """This process's share of the prompts."""

    indices: list[int]
    prompts: list[str]
    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_distributed() -> bool:
    """True under ``accelerate launch`` (or torchrun) with more than one process."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def shard_prompts(prompts: list[str], state: Any = None) -> Shard:
    """Split ``prompts`` across processes with accelerate's ``split_between_processes``.

    In a single process (no ``accelerate launch``) this is the identity and
    imports nothing. ``state`` is an ``accelerate.PartialState`` (default: the
    current one).
    """
    if state is None:
        if not launched_distributed():
            return Shard(list(range(len(prompts))), list(prompts))
        try:
            from accelerate import PartialState
        except ImportError:
            raise OptionError(
                "running under a multi-process launcher needs accelerate to shard the prompts; "
                "pip install 'r0kit[diffusers]'"
            ) from None
        # without a GPU, accelerate forms a multi-process CPU group (gloo) only when asked for the CPU
        state = PartialState(cpu=not torch.cuda.is_available())
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if int(state.num_processes) != world:
            raise OptionError(
                f"launched as {world} processes but accelerate formed a group of {state.num_processes}; "
                "every process would optimize every prompt. Launch with `accelerate launch --multi_gpu "
                "--num_processes N` (on a machine without GPUs this uses gloo on the CPU)"
            )
    with state.split_between_processes(list(range(len(prompts)))) as idx:
        idx = list(idx)
    return Shard(idx, [prompts[i] for i in idx], int(state.process_index), int(state.num_processes), state.device)


def _clip(params: list[torch.Tensor], max_norm: float | None) -> float | None:
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return None
    if max_norm is None:
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in grads])))
    return float(torch.nn.utils.clip_grad_norm_(grads, max_norm))


class _progress:
    """A rich progress bar showing the mean objective; a no-op when disabled."""

    def __new__(cls, enabled: bool, total: int):
        if not enabled:
            return None
        return super().__new__(cls)

    def __init__(self, enabled: bool, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._p = Progress(
            TextColumn("[bold]optimize"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("objective {task.fields[mean]:+.4f}"),
            TimeElapsedColumn(),
            transient=False,
        )
        self._task = self._p.add_task("optimize", total=total, mean=float("nan"))
        self._p.start()

    def update(self, mean: float) -> None:
        self._p.update(self._task, advance=1, mean=mean)

    def close(self) -> None:
        self._p.stop()
