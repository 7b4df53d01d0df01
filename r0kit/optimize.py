"""The test-time optimization loop (the ReNO class).

Optimize the per-problem parameters of a generator (pixels, a latent, an
initial noise) to maximize an objective, for a batch of prompts at once:
every sample is its own problem, and the best iterate of each is kept.

ReNO's defaults are ``optimizer="sgd"`` (Nesterov momentum 0.9), ``lr=5``,
``grad_clip=0.1`` and 50 steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch

from r0kit.errors import NonFiniteError, OptionError
from r0kit.generator import Generator
from r0kit.objective import Objective, ObjectiveResult


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
) -> OptimizeResult:
    """Maximize ``objective`` over ``generator``'s parameters for ``prompts``.

    Runs ``steps`` updates and ``steps + 1`` evaluations (the last one scores
    the final iterate). ``callback(info)`` runs after every evaluation; if it
    returns ``True`` the loop stops. A NaN or Inf in any term stops the loop
    with :attr:`OptimizeResult.stopped` naming the term, keeping the best
    finite iterate; Ctrl-C stops it the same way.
    """
    if not prompts:
        raise OptionError("optimize needs at least one prompt")
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
            try:
                if last:
                    with torch.no_grad():
                        result = objective.evaluate(sample, list(prompts), generator)
                    _check_finite(result)
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
    )


def _check_finite(result: ObjectiveResult) -> None:
    bad = [k for k, v in result.terms.items() if not torch.isfinite(v).all()]
    if bad:
        raise NonFiniteError(f"the term(s) {', '.join(bad)} went NaN or Inf")


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
