"""Objectives: weighted rewards minus weighted regularizers, composed by arithmetic.

>>> obj = 2 * reward("colorfulness") + reward("contrast") - 0.1 * regularizer("tv")

builds the same :class:`Objective` as the TOML table

.. code-block:: toml

    [objective.rewards.colorfulness]
    weight = 2
    [objective.rewards.contrast]
    [objective.regularizers.tv]
    weight = 0.1

Every term carries a signed weight: the objective's per-sample total is
``Σ weight · value``, where a reward's value is its score and a regularizer's
value is its penalty (so ``- 0.1 * regularizer(...)`` subtracts it).

With ``normalize_gradients=True`` the rewards' image gradients are combined
the R0 way, per sample ``g = Σ wᵢ ∇ₓrᵢ / (‖∇ₓrᵢ‖ + ε)``, and pushed back
through whatever produced the images.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Literal

import torch

from r0kit.checks import check_weight
from r0kit.errors import InputError, NonFiniteError, OptionError, PluginError, R0kitError, is_out_of_memory
from r0kit.generator import Sample
from r0kit.images import RewardContract, check_images, preprocess_many

TermKind = Literal["reward", "regularizer"]


@dataclass(frozen=True, eq=False)
class Term:
    """One weighted reward or regularizer. Build with :func:`reward` / :func:`regularizer`."""

    kind: TermKind
    name: str
    module: Callable[..., torch.Tensor]
    options: dict[str, Any] = field(default_factory=dict)
    weight: float = 1.0
    label: str = ""
    contract: RewardContract | None = None
    plugin: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name)

    def named(self, label: str) -> Term:
        """The same term under another label (to use one reward twice)."""
        return replace(self, label=label)

    def spec(self) -> tuple:
        return (self.kind, self.name, self.label, float(self.weight), tuple(sorted(self.options.items(), key=lambda kv: kv[0])))

    # -- arithmetic ---------------------------------------------------------
    def __mul__(self, k: float) -> Term:
        if not isinstance(k, (int, float)) or isinstance(k, bool):
            return NotImplemented
        weight = self.weight * float(k)
        try:
            check_weight(weight)
        except ValueError as exc:
            raise OptionError(f"weight of {self.label!r}: {exc}") from None
        return replace(self, weight=weight)

    __rmul__ = __mul__

    def __truediv__(self, k: float) -> Term:
        return self * (1.0 / k)

    def __neg__(self) -> Term:
        return self * -1.0

    def __pos__(self) -> Term:
        return self

    def __add__(self, other: Term | Objective) -> Objective:
        return Objective([self]) + other

    def __sub__(self, other: Term | Objective) -> Objective:
        return Objective([self]) - other

    def __repr__(self) -> str:
        return self._repr(self.weight)

    # -- a one-term objective -------------------------------------------------
    def evaluate(self, sample: Sample, prompts: list[str], generator: Any = None) -> ObjectiveResult:
        """:meth:`Objective.evaluate` of the objective made of this term alone."""
        return Objective([self]).evaluate(sample, prompts, generator)

    def backward(self, sample: Sample, prompts: list[str], generator: Any = None, **options: Any) -> ObjectiveResult:
        """:meth:`Objective.backward` of the objective made of this term alone."""
        return Objective([self]).backward(sample, prompts, generator, **options)

    def _repr(self, weight: float) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{weight:g}*{self.kind}({self.name!r}{', ' + opts if opts else ''})"


@dataclass
class ObjectiveResult:
    """Per-sample values of one evaluation.

    :ivar total: ``[B]``, ``Σ weight · value``.
    :ivar terms: label -> ``[B]`` unweighted value of each term (detached).
    :ivar weights: label -> signed weight.
    :ivar grad_norms: label -> ``[B]`` per-sample norm of each reward's image
        gradient, filled when gradients were normalized.
    :ivar finite: ``[B]`` bool, whether every term of the sample (and, after a
        normalized backward, its combined image gradient) is finite.
    """

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    weights: dict[str, float]
    grad_norms: dict[str, torch.Tensor] = field(default_factory=dict)
    finite: torch.Tensor | None = None

    def reward_total(self, rewards: Iterable[str]) -> torch.Tensor:
        """``[B]``, the weighted sum of the named terms only (the rewards, leaving the regularizers out)."""
        out = torch.zeros_like(self.total.detach(), dtype=torch.float32)
        for label in rewards:
            v = self.terms[label].float()
            out = out + self.weights[label] * (v.expand_as(out) if v.dim() == 0 else v)
        return out

    def nonfinite_terms(self, i: int) -> list[str]:
        """The labels of the terms whose value for sample ``i`` is NaN or Inf."""
        return [k for k, v in self.terms.items() if not bool(torch.isfinite(v if v.dim() == 0 else v[i]))]

    def as_floats(self) -> dict[str, list[float]]:
        out = {"total": self.total.detach().float().cpu().tolist()}
        out.update({k: v.detach().float().cpu().tolist() for k, v in self.terms.items()})
        return out

    def mean(self) -> dict[str, float]:
        out = {"total": float(self.total.detach().float().mean())}
        out.update({k: float(v.detach().float().mean()) for k, v in self.terms.items()})
        return out


class Objective:
    """A weighted sum of terms, with optional per-reward gradient normalization."""

    def __init__(self, terms: Iterable[Term] = (), *, normalize_gradients: bool = False, eps: float = 1e-8):
        self.normalize_gradients = bool(normalize_gradients)
        self.eps = float(eps)
        # Like terms merge (a + a == 2*a); one label for two different terms is an error.
        merged: dict[str, Term] = {}
        for t in terms:
            prev = merged.get(t.label)
            if prev is None:
                merged[t.label] = t
            elif prev.spec()[:3] == t.spec()[:3] and prev.spec()[4:] == t.spec()[4:]:
                merged[t.label] = replace(prev, weight=prev.weight + t.weight)
            else:
                raise OptionError(
                    f"the objective uses the label {t.label!r} for two different terms ({prev!r} and {t!r}); "
                    "give one of them another label with .named('other') (Python) or a different table key "
                    "with name = '...' (TOML)"
                )
        self.terms: list[Term] = list(merged.values())

    # -- composition ----------------------------------------------------------
    def _join(self, other: Term | Objective, sign: float) -> Objective:
        if isinstance(other, Term):
            extra = [other * sign]
        elif isinstance(other, Objective):
            extra = [t * sign for t in other.terms]
        else:
            return NotImplemented
        return Objective(self.terms + extra, normalize_gradients=self.normalize_gradients, eps=self.eps)

    def __add__(self, other: Term | Objective) -> Objective:
        return self._join(other, 1.0)

    def __sub__(self, other: Term | Objective) -> Objective:
        return self._join(other, -1.0)

    def __mul__(self, k: float) -> Objective:
        if not isinstance(k, (int, float)) or isinstance(k, bool):
            return NotImplemented
        return Objective([t * k for t in self.terms], normalize_gradients=self.normalize_gradients, eps=self.eps)

    __rmul__ = __mul__

    def __neg__(self) -> Objective:
        return self * -1.0

    def with_options(self, *, normalize_gradients: bool | None = None, eps: float | None = None) -> Objective:
        """A copy with the combine options changed."""
        return Objective(
            self.terms,
            normalize_gradients=self.normalize_gradients if normalize_gradients is None else normalize_gradients,
            eps=self.eps if eps is None else eps,
        )

    def spec(self) -> dict[str, Any]:
        """A canonical, comparable description (term order does not matter)."""
        return {
            "terms": sorted(t.spec() for t in self.terms),
            "normalize_gradients": self.normalize_gradients,
            "eps": self.eps,
        }

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Term):
            other = Objective([other], normalize_gradients=self.normalize_gradients, eps=self.eps)
        return isinstance(other, Objective) and self.spec() == other.spec()

    def __hash__(self) -> int:
        return hash(repr(self.spec()))

    def __repr__(self) -> str:
        body = ""
        for i, t in enumerate(self.terms):
            if i == 0:
                body = repr(t)
            else:
                body += f" - {t._repr(-t.weight)}" if t.weight < 0 else f" + {t!r}"
        body = body or "0"
        return f"Objective({body}{', normalize_gradients=True' if self.normalize_gradients else ''})"

    @property
    def rewards(self) -> list[Term]:
        return [t for t in self.terms if t.kind == "reward"]

    @property
    def regularizers(self) -> list[Term]:
        return [t for t in self.terms if t.kind == "regularizer"]

    @property
    def needs_prompts(self) -> bool:
        return any(t.contract is not None and t.contract.needs_prompt for t in self.rewards)

    # -- evaluation -----------------------------------------------------------
    def _check(self, sample: Sample, prompts: list[str]) -> None:
        if not self.terms:
            raise OptionError("the objective has no terms; add at least one reward")
        if not isinstance(sample, Sample):
            raise InputError(
                f"the objective takes a r0kit.Sample, got a {type(sample).__name__}; pass generator.sample(prompts), "
                "or wrap an image batch: r0kit.Sample(images=x) with x [B, 3, H, W] in [0, 1]"
            )
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
            got = f"the str {prompts!r}" if isinstance(prompts, str) else repr(prompts)[:80]
            raise InputError(f"prompts must be a list of str, one per image; got {got} (one prompt: [prompt])")
        check_images(sample.images, name="sample.images")
        if self.needs_prompts and len(prompts) != sample.batch_size:
            raise InputError(
                f"got {len(prompts)} prompt(s) for {sample.batch_size} image(s); pass one prompt per image"
            )

    def _reward_values(self, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        rewards = self.rewards
        inputs = preprocess_many(images, [t.contract for t in rewards])  # type: ignore[misc]
        return {term.label: call_reward(term, x, prompts) for term, x in zip(rewards, inputs)}

    def _regularizer_values(self, sample: Sample, generator: Any) -> dict[str, torch.Tensor]:
        return {term.label: call_regularizer(term, sample, generator) for term in self.regularizers}

    def evaluate(self, sample: Sample, prompts: list[str], generator: Any = None) -> ObjectiveResult:
        """Every term and the total, per sample, keeping the autograd graph."""
        self._check(sample, prompts)
        values = self._reward_values(sample.images, prompts)
        values.update(self._regularizer_values(sample, generator))
        return self._result(values, sample.batch_size)

    def _result(self, values: dict[str, torch.Tensor], batch: int) -> ObjectiveResult:
        total = None
        finite = None
        for term in self.terms:
            v = values[term.label].float()
            v = v.expand(batch) if v.dim() == 0 else v
            contrib = term.weight * v
            total = contrib if total is None else total + contrib
            ok = torch.isfinite(v.detach())
            finite = ok if finite is None else finite & ok
        return ObjectiveResult(
            total=total,  # type: ignore[arg-type]
            terms={k: v.detach() for k, v in values.items()},
            weights={t.label: t.weight for t in self.terms},
            finite=finite,
        )

    def backward(
        self,
        sample: Sample,
        prompts: list[str],
        generator: Any = None,
        *,
        reduction: Literal["sum", "mean"] = "sum",
        nonfinite: Literal["raise", "skip"] = "raise",
    ) -> ObjectiveResult:
        """Evaluate, then back-propagate the *negative* objective (for a minimizing optimizer).

        ``reduction="sum"`` treats every sample as its own problem (test-time
        optimization); ``"mean"`` averages over the batch (training). A regularizer's
        scalar value (one penalty for the batch) is back-propagated once under either,
        so no gradient depends on the batch size.
        With ``nonfinite="raise"`` a NaN or Inf in any value raises
        :class:`NonFiniteError` naming the term, before anything is
        back-propagated. With ``"skip"`` a sample whose values (or combined
        image gradient) are not finite is left out of the backward pass, so the
        others are unaffected, and ``result.finite`` marks it; the gradient rows
        of a skipped sample may hold NaN and are the caller's to discard.
        """
        self._check(sample, prompts)
        if nonfinite not in ("raise", "skip"):
            raise OptionError(f"nonfinite must be 'raise' or 'skip', got {nonfinite!r}")
        skip = nonfinite == "skip"
        scale = 1.0 if reduction == "sum" else 1.0 / sample.batch_size
        if not self.normalize_gradients:
            values = self._reward_values(sample.images, prompts)
            reg_values = self._regularizer_values(sample, generator)
            result = self._result({**values, **reg_values}, sample.batch_size)
            if not skip:
                raise_if_nonfinite(result)
            total = torch.where(result.finite, result.total, torch.zeros_like(result.total)) if skip else result.total
            loss = -total.sum() * scale
            if reduction == "sum":
                # A scalar regularizer is one penalty: the total holds it in every sample's value, and summing
                # those would scale its gradient with the batch size. Count it once.
                for term in self.regularizers:
                    v = reg_values[term.label]
                    if v.dim() == 0 and v.requires_grad:
                        loss = loss + (sample.batch_size - 1) * term.weight * v.float()
            loss.backward()
            return result

        images = sample.images
        leaf = images.detach().requires_grad_(True)
        reward_values = self._reward_values(leaf, prompts)
        reg_values = self._regularizer_values(sample, generator)
        result = self._result({**reward_values, **reg_values}, sample.batch_size)
        if not skip:
            raise_if_nonfinite(result)
        finite = result.finite
        rows = finite.view(-1, *([1] * (images.dim() - 1)))

        grads, weights, labels = [], [], []
        for term in self.rewards:
            v = reward_values[term.label]
            if not v.requires_grad or term.weight == 0.0:
                continue
            (g,) = torch.autograd.grad(v.sum(), leaf, retain_graph=True, allow_unused=True)
            if g is None:
                continue
            grads.append(torch.where(rows, g, torch.zeros_like(g)) if skip else g)
            weights.append(term.weight)
            labels.append(term.label)
        outputs, grad_outputs = [], []
        if grads:
            combined, norms = combine_normalized(grads, weights, self.eps)
            good = torch.isfinite(combined).flatten(1).all(1)
            if skip:
                finite = result.finite = finite & good
                rows = finite.view_as(rows)
                combined = torch.where(rows, combined, torch.zeros_like(combined))
            elif not bool(good.all()):
                bad = [lab for lab, g in zip(labels, grads) if not torch.isfinite(g).all()]
                raise NonFiniteError(f"the image gradient of {', '.join(bad) or 'the rewards'} is NaN or Inf")
            result.grad_norms = {lab: norms[i] for i, lab in enumerate(labels)}
            if images.requires_grad:
                outputs.append(images)
                grad_outputs.append(-combined * scale)
        reg_total = None
        for term in self.regularizers:
            v = reg_values[term.label]
            if skip and v.dim():
                v = torch.where(finite, v, torch.zeros_like(v))
            # A scalar is one penalty: counted once under "sum"; under "mean" (times 1/B below) likewise.
            v = v.sum() if v.dim() else (v * sample.batch_size if reduction == "mean" else v)
            contrib = term.weight * v
            reg_total = contrib if reg_total is None else reg_total + contrib
        if reg_total is not None and reg_total.requires_grad:
            outputs.append(-reg_total * scale)
            grad_outputs.append(torch.ones_like(reg_total))
        if outputs:
            torch.autograd.backward(outputs, grad_outputs)
        return result

    def __call__(self, sample: Sample, prompts: list[str], generator: Any = None) -> ObjectiveResult:
        return self.evaluate(sample, prompts, generator)


def combine_normalized(
    grads: list[torch.Tensor], weights: list[float], eps: float = 1e-8
) -> tuple[torch.Tensor, torch.Tensor]:
    """``Σ wᵢ gᵢ / (‖gᵢ‖ + ε)`` with per-sample norms over all but the batch dim.

    :returns: the combined gradient (shape of each ``gᵢ``) and the norms ``[N, B]``.
    """
    from r0kit.kernels import grad_combine

    return grad_combine(grads, weights, eps)


def _where(term: Term) -> str:
    return f"{term.kind} {term.name!r} (plugin {term.plugin or '?'})"


def call_reward(term: Term, x: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Score the preprocessed batch ``x`` with the reward ``term``: the one place every caller goes through.

    The objective, ``r0kit score`` and ``r0kit evaluate`` all call this, so a
    reward's output contract is checked the same way everywhere (see
    :func:`check_output`). A reward whose contract says it is not
    differentiable runs without autograd.

    :returns: ``[B]``, the unweighted scores (NaN and Inf are the caller's to handle).
    :raises InputError: for an output that breaks the contract, naming the reward and its plugin.
    :raises PluginError: when the reward raises, naming it and its plugin (the original is ``__cause__``).
    """
    with _plugin_call(term):
        if term.contract is not None and not term.contract.differentiable:
            with torch.no_grad():
                v = term.module(x.detach(), prompts)
        else:
            v = term.module(x, prompts)
    return check_output(term, v, x.shape[0])


def call_regularizer(term: Term, sample: Sample, generator: Any = None) -> torch.Tensor:
    """The regularizer ``term`` on ``sample``: ``[B]``, or ``[]`` for a penalty shared by the batch."""
    with _plugin_call(term):
        v = term.module(sample, generator)
    return check_output(term, v, sample.batch_size)


class _plugin_call:
    """Re-raise an exception from inside a plugin as a :class:`PluginError` that names the plugin.

    r0kit's own errors pass unchanged (they already say what is wrong), and so do
    out-of-memory errors, which the loops report with their own advice.
    """

    def __init__(self, term: Term) -> None:
        self.term = term

    def __enter__(self) -> None:
        return None

    def __exit__(self, tp, exc, tb) -> bool:
        if exc is None or not isinstance(exc, Exception) or isinstance(exc, R0kitError) or is_out_of_memory(exc):
            return False
        raise PluginError(f"{_where(self.term)} raised {type(exc).__name__}: {exc}") from exc


def check_output(term: Term, v: Any, batch: int) -> torch.Tensor:
    """Check a term's output against the contract: a float tensor of shape ``[batch]``.

    A regularizer may also return a scalar ``[]`` (one penalty shared by the
    batch, e.g. a weight penalty). ``[B, 1]``, ``[B + 1]``, an integer tensor
    or a reward's scalar are refused, naming the term and its plugin.
    """
    where = _where(term)
    if not isinstance(v, torch.Tensor):
        raise InputError(f"{where} returned {type(v).__name__}; it must return a torch.Tensor of shape [{batch}]")
    if not v.is_floating_point():
        raise InputError(f"{where} returned a {v.dtype} tensor; it must return floating-point scores, shape [{batch}]")
    if v.dim() == 0 and term.kind == "regularizer":
        return v
    if tuple(v.shape) != (batch,):
        raise InputError(f"{where} returned shape {tuple(v.shape)}; it must return one value per image, shape [{batch}]")
    return v


def raise_if_nonfinite(result: ObjectiveResult) -> None:
    """Raise :class:`NonFiniteError` naming every term of ``result`` that holds NaN or Inf."""
    bad = [k for k, v in result.terms.items() if not torch.isfinite(v).all()]
    if bad:
        raise NonFiniteError(f"the term(s) {', '.join(bad)} went NaN or Inf")


# -- building terms from the registries ------------------------------------------


def reward(name: str, *, label: str = "", **options: Any) -> Term:
    """Instantiate the registered reward ``name`` with ``options`` as a weight-1 term."""
    from r0kit.plugins import get_host

    entry = get_host().rewards.get(name)
    module = entry.create(**options)
    return Term("reward", name, module, dict(options), 1.0, label or name, instance_contract(module, entry.contract), entry.plugin)


def instance_contract(module: Any, registered: RewardContract | None) -> RewardContract | None:
    """The contract a reward instance declares (its ``contract`` attribute), else the registered one.

    A reward whose input depends on its options (a CLIP model repository brings its own image
    size and normalization) sets ``contract`` on the instance; the plugin's registered contract
    describes the defaults.
    """
    own = getattr(module, "contract", None)
    if own is None:
        return registered
    if not isinstance(own, RewardContract):
        raise OptionError(f"the reward's contract attribute is a {type(own).__name__}, not an r0kit.RewardContract")
    return own


def regularizer(name: str, *, label: str = "", **options: Any) -> Term:
    """Instantiate the registered regularizer ``name`` as a weight-1 term (subtract it)."""
    from r0kit.plugins import get_host

    entry = get_host().regularizers.get(name)
    module = entry.create(**options)
    return Term("regularizer", name, module, dict(options), 1.0, label or name, None, entry.plugin)


def generator(name: str, **options: Any) -> Any:
    """Instantiate the registered generator ``name``."""
    from r0kit.plugins import get_host

    return get_host().generators.get(name).create(**options)
