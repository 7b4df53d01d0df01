"""The test-time optimization loop (the ReNO class).

Optimize the per-problem parameters of a generator (pixels, a latent, an
initial noise) to maximize an objective, for a batch of prompts at once.
Every sample is its own problem, as in ReNO, which optimizes one prompt at a
time: the loss is summed over the batch, the gradient norm is clipped per
sample, a sample that goes NaN stops alone, and the best iterate of each is
kept, ranked by the weighted rewards (the regularizers left out). A prompt
therefore gets the same result at any batch size.

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

from r0kit.errors import OptionError, PluginError, R0kitError, describe_failure, is_out_of_memory
from r0kit.generator import Generator, Sample
from r0kit.objective import Objective, ObjectiveResult, Term

log = logging.getLogger(__name__)


@dataclass
class StepInfo:
    """What a callback sees after each evaluation.

    :ivar result: the objective on the samples still running (``active``), in their order.
    :ivar images: ``[B, 3, H, W]``, detached, every sample of the batch.
    :ivar grad_norm: per sample, the gradient norm before clipping (``None`` on the
        last evaluation and for stopped samples).
    :ivar active: the batch positions of the samples still running.
    """

    step: int
    result: ObjectiveResult
    images: torch.Tensor
    grad_norm: list[float | None] | None
    active: list[int] = field(default_factory=list)


@dataclass
class OptimizeResult:
    """The best iterate of each sample, and the history of every step.

    :ivar images: ``[B, 3, H, W]`` the best image of each sample (zeros where ``best_step`` is ``None``).
    :ivar best_step: the step each best image comes from; ``None`` for a sample that
        never had a finite iterate (nothing is kept for it).
    :ivar best_values: term -> per-sample value at the best step (``"total"`` included).
    :ivar history: one dict per evaluated step: ``{"step", "values": {term: [B]},
        "grad_norm": [B]}``; a sample that was not evaluated at that step (it had
        stopped) holds ``None``.
    :ivar stopped: ``None`` when every sample ran every step, else why and where they stopped.
    :ivar stops: per sample, why it stopped early (``None``: it ran every step).
    :ivar interrupted: the run ended on Ctrl-C.
    :ivar error: the exception (a plugin's, out of memory, ...) that ended the run, if one did.
    :ivar not_run: the indices of prompts a stopped run never started.
    :ivar best_by: what ranked the iterates: ``"reward"`` (the weighted rewards) or ``"total"``.
    """

    images: torch.Tensor
    best_step: list[int | None]
    best_values: dict[str, list[float | None]]
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None
    prompts: list[str] = field(default_factory=list)
    seed: int = 0
    indices: list[int] = field(default_factory=list)
    stops: list[str | None] = field(default_factory=list)
    interrupted: bool = False
    error: BaseException | None = None
    not_run: list[int] = field(default_factory=list)
    best_by: str = "reward"

    @property
    def kept(self) -> list[int]:
        """Positions of the samples that have a best iterate."""
        return [i for i, s in enumerate(self.best_step) if s is not None]


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
    """The best iterate of each sample so far, by a per-sample score (higher is better)."""

    def __init__(self, batch: int) -> None:
        self.score: list[float] = [-math.inf] * batch
        self.step: list[int | None] = [None] * batch
        self.values: dict[str, list[float | None]] = {}
        self.images: torch.Tensor | None = None

    def update(self, step: int, rows: list[int], score: torch.Tensor, values: dict[str, list[float]], images: torch.Tensor) -> None:
        """``rows[j]`` is the batch position of entry ``j`` of ``score``, ``values`` and ``images``."""
        scores = score.tolist()
        for j, i in enumerate(rows):
            if self.step[i] is not None and not scores[j] > self.score[i]:
                continue  # ties keep the earlier iterate
            if self.images is None:
                self.images = torch.zeros((len(self.step), *images.shape[1:]), dtype=images.dtype, device=images.device)
            self.images[i] = images[j]
            self.score[i], self.step[i] = scores[j], step
            for k, v in values.items():
                self.values.setdefault(k, [None] * len(self.step))[i] = v[j]


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
    best_by: Literal["reward", "total"] = "reward",
    callback: Callable[[StepInfo], Any] | None = None,
    progress: bool = False,
    log_every: int | None = None,
) -> OptimizeResult:
    """Maximize ``objective`` over ``generator``'s parameters for ``prompts``.

    Runs ``steps`` updates and ``steps + 1`` evaluations (the last one scores
    the final iterate). Every sample is its own problem, whatever the batch:

    * the loss is the *sum* over samples, so a sample's gradient does not scale with the batch;
    * ``grad_clip`` clips each sample's gradient norm on its own (ReNO's
      ``clip_grad_norm_(noise, 0.1)`` on each prompt's noise), which needs
      every parameter to have the batch as its leading dimension;
    * the best iterate of each sample is kept, ranked by ``best_by``:
      ``"reward"`` (default, as ReNO) is the weighted sum of the rewards
      alone, ``"total"`` includes the regularizers (an objective without
      rewards is ranked by its total);
    * a NaN or Inf in a sample's terms, images or gradient stops that sample
      (its best finite iterate is kept) and the others go on; ``callback(info)``
      runs after every evaluation and stops the run by returning ``True``, or some
      samples by returning one bool per sample.

    Ctrl-C, an exception from a plugin and running out of memory stop every
    sample the same way: the result keeps each one's best iterate and
    :attr:`OptimizeResult.stopped` says what happened (``error`` holds the
    exception). If that happens before any sample has a finite iterate, the
    exception propagates instead, since there is nothing to keep.
    ``log_every=n`` logs the mean of every term every ``n`` steps (logger
    ``r0kit.optimize``, level INFO).

    The loop draws nothing from the global random generator; a generator must
    draw sample ``i``'s start from ``seed + i`` so that results do not depend on
    the batching.
    """
    if not prompts:
        raise OptionError("optimize needs at least one prompt")
    if isinstance(objective, Term):
        objective = Objective([objective])
    if not isinstance(steps, int) or steps < 0:
        raise OptionError(f"steps must be an int >= 0, got {steps!r}")
    if best_by not in ("reward", "total"):
        raise OptionError(f"best_by must be 'reward' or 'total', got {best_by!r}")
    if grad_clip is not None and not (math.isfinite(grad_clip) and grad_clip > 0):
        raise OptionError(f"grad_clip must be a finite number > 0, or None for no clipping; got {grad_clip!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise OptionError(f"lr must be a finite number > 0, got {lr!r}")
    prompts = list(prompts)
    batch = len(prompts)
    torch.manual_seed(seed)
    _plugin(generator, "prepare", lambda: generator.prepare(list(prompts), seed))
    params = [p for p in _plugin(generator, "parameters", generator.parameters) if p.requires_grad]
    if batch > 1:
        shared = [tuple(p.shape) for p in params if p.dim() == 0 or p.shape[0] != batch]
        if shared:
            raise OptionError(
                f"{_name(generator)} has parameter(s) of shape {shared[0]} without a leading batch dimension of {batch}; "
                "each prompt must own its parameters so that prompts stay independent. Optimize one prompt at a "
                "time (batch size 1)"
            )
    opt = make_optimizer(params, optimizer, lr, momentum, nesterov, weight_decay)
    rewards = [t.label for t in objective.rewards]
    best = _Best(batch)
    stops: list[str | None] = [None] * batch
    history: list[dict[str, Any]] = []
    interrupted, error = False, None
    bar = _progress(progress, steps + 1)
    step = 0

    def stop(i: int, why: str) -> None:
        if stops[i] is None:
            stops[i] = f"stopped at step {step}: {why}"

    try:
        for step in range(steps + 1):
            last = step == steps
            if all(stops):
                break
            opt.zero_grad(set_to_none=True)
            sample = _plugin(generator, "sample", lambda: generator.sample(list(prompts)))
            finite_images = torch.isfinite(sample.images.detach()).flatten(1).all(1).tolist()
            for i in range(batch):
                if not finite_images[i]:
                    stop(i, "the generator's images went NaN or Inf (its parameters diverged; lower the learning rate or clip the gradient)")
            rows = [i for i in range(batch) if stops[i] is None]
            if not rows:
                break
            sub, sub_prompts = _subset(sample, prompts, rows)
            if last:
                with torch.no_grad():
                    result = objective.evaluate(sub, sub_prompts, generator)
            else:
                result = objective.backward(sub, sub_prompts, generator, reduction="sum", nonfinite="skip")
            finite = result.finite.tolist()  # type: ignore[union-attr]
            for j, i in enumerate(rows):
                if not finite[j]:
                    bad = result.nonfinite_terms(j)
                    stop(i, f"the term(s) {', '.join(bad)} went NaN or Inf" if bad else "the image gradient went NaN or Inf")
            good = [j for j in range(len(rows)) if finite[j]]
            values = result.as_floats()
            score = result.reward_total(rewards) if best_by == "reward" and rewards else result.total.detach().float()
            best.update(
                step,
                [rows[j] for j in good],
                score[good],
                {k: [v[j] for j in good] for k, v in values.items()},
                sub.images.detach()[good],
            )
            grad_norm: list[float | None] = [None] * batch
            if not last:
                norms = _clip_per_sample(params, batch, [stops[i] is None for i in range(batch)], grad_clip)
                for i in range(batch):
                    if stops[i] is None:
                        grad_norm[i] = norms[i]
                        if not math.isfinite(norms[i]):
                            stop(i, "the gradient went NaN or Inf")
                _zero_stopped(params, batch, [stops[i] is None for i in range(batch)])
            record: dict[str, Any] = {"step": step, "values": {k: [None] * batch for k in values}}
            for j in good:
                for k, v in values.items():
                    record["values"][k][rows[j]] = v[j]
            if not last:
                record["grad_norm"] = grad_norm
            if good:  # a step where every sample went non-finite has nothing to record
                history.append(record)
            if log_every and (step % log_every == 0 or last):
                _log_means(step, steps, record)
            if bar is not None:
                totals = [v for v in record["values"]["total"] if v is not None]
                bar.update(mean=sum(totals) / len(totals) if totals else float("nan"))
            if callback is not None:
                verdict = callback(StepInfo(step, result, sample.images.detach(), grad_norm, rows))
                if verdict is True:
                    for i in range(batch):
                        stop(i, "stopped by the callback")
                    break
                if verdict is not None and verdict is not False:
                    flags = [bool(v) for v in verdict]
                    if len(flags) != batch:
                        raise OptionError(f"the callback returned {len(flags)} stop flag(s) for {batch} sample(s)")
                    for i, f in enumerate(flags):
                        if f:
                            stop(i, "stopped by the callback")
                    _zero_stopped(params, batch, [stops[i] is None for i in range(batch)])
            if not last:
                opt.step()
    except KeyboardInterrupt:
        interrupted = True
        for i in range(batch):
            if stops[i] is None:
                stops[i] = f"interrupted at step {step}"
    except Exception as exc:  # a plugin's error, out of memory, a broken contract mid-run
        if all(s is None for s in best.step):
            raise  # nothing earned: the error is the whole story
        error = exc
        why = describe_failure(exc)
        for i in range(batch):
            if stops[i] is None:
                stops[i] = f"stopped at step {step}: {why}"
        if is_out_of_memory(exc) and torch.cuda.is_available():
            torch.cuda.empty_cache()
    finally:
        if bar is not None:
            bar.close()

    images = best.images if best.images is not None else torch.zeros(0)
    best_values = {"total": [None] * batch} | {k: list(v) for k, v in best.values.items()}
    result = OptimizeResult(
        images=images.float().cpu(),
        best_step=list(best.step),
        best_values=best_values,
        history=history,
        prompts=prompts,
        seed=seed,
        indices=list(range(batch)),
        stops=stops,
        interrupted=interrupted,
        error=error,
        best_by=best_by,
    )
    result.stopped = summarize_stops(result)
    return result


def summarize_stops(result: OptimizeResult) -> str | None:
    """What stopped early and what was kept, one clause per reason; ``None`` when nothing stopped."""
    groups: dict[str, list[int]] = {}
    for pos, why in enumerate(result.stops):
        if why is not None:
            groups.setdefault(why, []).append(pos)
    parts = []
    single = len(result.stops) == 1 and not result.not_run
    for why, positions in groups.items():
        kept = [p for p in positions if result.best_step[p] is not None]
        lost = [p for p in positions if result.best_step[p] is None]
        who = "" if single else f"{_plural('prompt', [result.indices[p] for p in positions])}: "
        if not kept:
            parts.append(f"{who}{why} before any finite iterate, so nothing was kept")
        elif not lost:
            if len(kept) == 1:
                its = "the best finite iterate" if single else "its best iterate"
                parts.append(f"{who}{why}; kept {its} (step {result.best_step[kept[0]]})")
            else:
                parts.append(f"{who}{why}; kept the best iterate of each")
        else:
            parts.append(
                f"{who}{why}; kept the best iterate of {_plural('prompt', [result.indices[p] for p in kept])}; "
                f"{_plural('prompt', [result.indices[p] for p in lost])} had no finite iterate, so nothing was kept for "
                + ("it" if len(lost) == 1 else "them")
            )
    if result.not_run:
        parts.append(f"{_plural('prompt', result.not_run)} not run")
    return "; ".join(parts) or None


def _plural(word: str, indices: list[int]) -> str:
    if len(indices) == 1:
        return f"{word} {indices[0]}"
    if indices == list(range(indices[0], indices[-1] + 1)):
        return f"{word}s {indices[0]}-{indices[-1]}"
    return f"{word}s {', '.join(map(str, indices))}"


def _name(generator: Any) -> str:
    return f"generator {type(generator).__name__}"


def _plugin(generator: Any, method: str, call: Callable[[], Any]) -> Any:
    """Call a generator method; an exception from inside it becomes a :class:`PluginError` naming it."""
    try:
        return call()
    except Exception as exc:
        if isinstance(exc, R0kitError) or is_out_of_memory(exc):
            raise
        raise PluginError(f"{_name(generator)}.{method}() raised {type(exc).__name__}: {exc}") from exc


def _subset(sample: Sample, prompts: list[str], rows: list[int]) -> tuple[Sample, list[str]]:
    """The samples at ``rows``: images and every per-sample state tensor (leading dim B) indexed."""
    batch = sample.batch_size
    if len(rows) == batch:
        return sample, list(prompts)
    idx = torch.tensor(rows, device=sample.images.device)
    state = {
        k: (v.index_select(0, idx.to(v.device)) if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == batch else v)
        for k, v in sample.state.items()
    }
    return Sample(sample.images.index_select(0, idx), state), [prompts[i] for i in rows]


def _log_means(step: int, steps: int, record: dict[str, Any]) -> None:
    def mean(vals: list[float | None]) -> float:
        got = [v for v in vals if v is not None]
        return sum(got) / len(got) if got else float("nan")

    gn = record.get("grad_norm")
    log.info(
        "step %d/%d  %s%s",
        step,
        steps,
        "  ".join(f"{k}={mean(v):+.4g}" for k, v in record["values"].items()),
        f"  grad_norm={mean(gn):.3g}" if gn else "",
    )


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
    ``seed + indices[first prompt of the batch]``; generators draw sample ``i``
    of a batch with ``seed + i``, so every prompt gets the seed ``seed + its
    index``, and the same result, whatever the batching or sharding.

    :param indices: the global index of each prompt (default ``0..n-1``; a shard passes its own).
    :param on_batch: called with each batch's result as soon as it is done.
    :param options: passed to :func:`optimize` (steps, optimizer, lr, callback, ...).

    A batch that stops early (NaN, callback) does not stop the others. Ctrl-C,
    or an error once some prompt has a result, stops the whole run: the
    finished batches and the stopped one's best iterates are kept, and
    :attr:`OptimizeResult.not_run` lists the prompts that were never started.
    """
    if not prompts:
        raise OptionError("optimize needs at least one prompt")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise OptionError(f"batch_size must be an int >= 1, got {batch_size!r}")
    indices = list(range(len(prompts))) if indices is None else list(indices)
    if len(indices) != len(prompts):
        raise OptionError(f"got {len(indices)} indices for {len(prompts)} prompts")
    results: list[OptimizeResult] = []
    not_run: list[int] = []
    interrupted, error = False, None
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        idx = indices[start : start + batch_size]
        try:
            res = optimize(objective, generator, chunk, seed=seed + idx[0], **options)
        except KeyboardInterrupt:  # before the batch's loop began (prepare)
            interrupted, not_run = True, indices[start:]
            break
        except Exception as exc:
            if not any(r.kept for r in results):
                raise
            error, not_run = exc, indices[start:]
            break
        res.seed, res.indices = seed, idx
        results.append(res)
        if on_batch is not None:
            on_batch(res)
        if res.interrupted or res.error is not None:
            not_run = indices[start + len(chunk) :]
            break
    if not results:
        raise KeyboardInterrupt
    merged = merge_results(results)
    merged.interrupted = merged.interrupted or interrupted
    if error is not None:
        merged.error = error  # the batch it ended kept nothing: its prompts are listed as not run
    merged.not_run = not_run
    merged.stopped = summarize_stops(merged)
    if error is not None:
        merged.stopped = f"{describe_failure(error)}; " + (merged.stopped or "")
    elif interrupted and not any(r.interrupted for r in results):
        merged.stopped = "interrupted; " + (merged.stopped or "")
    return merged


def merge_results(results: list[OptimizeResult]) -> OptimizeResult:
    """Concatenate batch results sample-wise; a batch that stopped early has ``None`` in the later history."""
    if not results:
        raise OptionError("no results to merge")
    if len(results) == 1:
        return results[0]
    nsteps = max(len(r.history) for r in results)
    keys = list(dict.fromkeys(k for r in results for rec in r.history for k in rec["values"]))
    history: list[dict[str, Any]] = []
    for s in range(nsteps):
        values: dict[str, list[float | None]] = {k: [] for k in keys}
        grad_norms: list[float | None] = []
        for r in results:
            n = len(r.prompts)
            rec = r.history[s] if s < len(r.history) else None
            for k in keys:
                got = rec["values"].get(k) if rec is not None else None
                values[k].extend(got if got is not None else [None] * n)
            gn = rec.get("grad_norm") if rec is not None else None
            grad_norms.extend(gn if gn is not None else [None] * n)
        record: dict[str, Any] = {"step": s, "values": values}
        if any(g is not None for g in grad_norms):
            record["grad_norm"] = grad_norms
        history.append(record)
    bkeys = list(dict.fromkeys(k for r in results for k in r.best_values))
    best_values = {k: [v for r in results for v in r.best_values.get(k, [None] * len(r.prompts))] for k in bkeys}
    shape = next((r.images.shape[1:] for r in results if r.images.dim() == 4), None)
    images = torch.cat([r.images if r.images.dim() == 4 else torch.zeros((len(r.prompts), *(shape or (3, 1, 1)))) for r in results])
    merged = OptimizeResult(
        images=images,
        best_step=[s for r in results for s in r.best_step],
        best_values=best_values,
        history=history,
        prompts=[p for r in results for p in r.prompts],
        seed=results[0].seed,
        indices=[i for r in results for i in r.indices],
        stops=[s for r in results for s in r.stops] if all(r.stops for r in results) else [None] * sum(len(r.prompts) for r in results),
        interrupted=any(r.interrupted for r in results),
        error=next((r.error for r in results if r.error is not None), None),
        not_run=[i for r in results for i in r.not_run],
        best_by=results[0].best_by,
    )
    for r, offset in zip(results, _offsets(results)):  # a result built by hand may carry only `stopped`
        if r.stopped and not r.stops:
            merged.stops[offset] = r.stopped
    merged.stopped = summarize_stops(merged)
    return merged


def _offsets(results: list[OptimizeResult]) -> list[int]:
    out, n = [], 0
    for r in results:
        out.append(n)
        n += len(r.prompts)
    return out


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


def _clip_per_sample(params: list[torch.Tensor], batch: int, active: list[bool], max_norm: float | None) -> list[float]:
    """Each sample's gradient norm over every parameter (before clipping), and clip it to ``max_norm``.

    Row ``i`` of every parameter belongs to sample ``i`` (for a batch of one, the
    whole parameter does). The norm and the coefficient ``min(1, max_norm /
    (norm + 1e-6))`` are those of ``torch.nn.utils.clip_grad_norm_``, applied to
    each sample alone, as ReNO clips each prompt's noise.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return [0.0] * batch
    per_param = [torch.linalg.vector_norm(g.detach().reshape(batch, -1).float(), dim=1) for g in grads]
    norms = torch.linalg.vector_norm(torch.stack(per_param), dim=0) if len(per_param) > 1 else per_param[0]
    if max_norm is not None:
        coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        coef = torch.where(torch.tensor(active, device=coef.device) & torch.isfinite(coef), coef, torch.ones_like(coef))
        for g in grads:
            g.mul_(coef.to(g.dtype).view(batch, *([1] * (g.dim() - 1))) if g.dim() else coef.to(g.dtype)[0])
    return norms.tolist()


def _zero_stopped(params: list[torch.Tensor], batch: int, active: list[bool]) -> None:
    """Zero the gradient rows of stopped samples, so that a NaN there reaches no parameter."""
    if all(active):
        return
    for p in params:
        if p.grad is None:
            continue
        if p.grad.dim() == 0 or batch == 1:
            p.grad.zero_()
        else:
            mask = torch.tensor([not a for a in active], device=p.grad.device).view(batch, *([1] * (p.grad.dim() - 1)))
            p.grad.masked_fill_(mask, 0.0)


class _progress:
    """A rich progress bar showing the mean objective; a no-op when disabled."""

    def __new__(cls, enabled: bool, total: int):
        if not enabled:
            return None
        return super().__new__(cls)

    def __init__(self, enabled: bool, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from r0kit.outputs import console

        self._p = Progress(
            TextColumn("[bold]optimize"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("objective {task.fields[mean]:+.4f}"),
            TimeElapsedColumn(),
            transient=False,
            console=console(stderr=True),  # as train's and evaluate's: stdout holds what the run printed, maybe piped
        )
        self._task = self._p.add_task("optimize", total=total, mean=float("nan"))
        self._p.start()

    def update(self, mean: float) -> None:
        self._p.update(self._task, advance=1, mean=mean)

    def close(self) -> None:
        self._p.stop()
