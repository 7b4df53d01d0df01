"""Conformance checks: run a reward, regularizer or generator through its contract.

Every check runs, whatever the others found, and each failure is reported
under its own name, so one run tells a plugin author everything that is wrong::

    report = check_reward("vignette", radius=0.6)
    assert report.ok, report          # or: assert_conforms("vignette", radius=0.6)
    report.failures                   # {"batch_independence": "sample 1 scored ..."}

Reward checks
    ``output_shape``        a float tensor of shape ``[B]`` at every input H×W tried
    ``finite_output``       finite scores on random images
    ``contract``            the declared contract is honoured: the reward runs on the
                            core-preprocessed input at every H×W tried, leaves that shared
                            input unchanged, reads the prompts when (and only when)
                            ``needs_prompt`` says so, and is connected to the image when
                            ``differentiable`` says so
    ``finite_gradient``     a finite, non-zero gradient reaches the raw image
    ``eval_determinism``    the same input scores the same twice in eval mode
    ``extreme_inputs``      all-black and all-white images give finite scores and gradients
    ``batch_independence``  a sample scores the same alone and in a batch, and its score
                            has no gradient with respect to the other samples
    ``pairing``             permuting images and prompts together permutes the scores
    ``objective``           the reward works as a term of an :class:`~r0kit.Objective`

Regularizer checks: ``output_shape`` (``[B]`` or a scalar), ``finite_output``,
``finite_gradient`` (to the generator's parameters), ``eval_determinism``,
``extreme_inputs`` and, for per-sample penalties, ``batch_independence``.

Generator checks: ``protocol``, ``prepare``, ``parameters``, ``sample_contract``
(a :class:`~r0kit.Sample` of ``[B, 3, H, W]`` images in [0, 1], one per prompt),
``differentiable`` (finite gradients to every parameter), ``seed_determinism``
and ``optimizer_step`` (one step on the parameters changes the images).

Metric checks: ``needs`` (``min_images`` / ``min_images_per_prompt``, when declared,
are ints >= 1), ``output`` (a non-empty ``dict[str, float]`` of finite numbers from a
set of images with prompts, at every H×W tried), ``inputs_unchanged``,
``determinism`` (the same set gives the same numbers) and ``order`` (shuffling the
images with their prompts gives the same numbers: a metric is over a set).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

from r0kit.generator import Generator, Sample
from r0kit.images import RewardContract, check_images, preprocess
from r0kit.objective import Objective, Term

DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((64, 64), (48, 80), (81, 57))
DEFAULT_PROMPTS: tuple[str, ...] = (
    "a red apple on a wooden table",
    "a photograph of a dog running in the snow",
    "an oil painting of a lighthouse at night",
    "a watercolor map of an imaginary island",
    "a bowl of ramen, studio lighting",
    "a cat wearing sunglasses, digital art",
)


@dataclass
class ConformanceReport:
    """The outcome of one conformance run.

    :ivar kind: ``"reward"``, ``"regularizer"``, ``"generator"`` or ``"metric"``.
    :ivar name: the name (or label) checked.
    :ivar passed: names of the checks that passed.
    :ivar failures: check name -> what is wrong.
    :ivar skipped: check name -> why it does not apply.
    """

    kind: str
    name: str
    passed: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        head = f"{self.kind} {self.name!r}: " + (
            "conforms" if self.ok else f"{len(self.failures)} conformance failure(s)"
        )
        lines = [head]
        lines += [f"  FAIL {k}: {v}" for k, v in self.failures.items()]
        lines += [f"  skip {k}: {v}" for k, v in self.skipped.items()]
        if self.passed:
            lines.append(f"  passed: {', '.join(self.passed)}")
        return "\n".join(lines)


class _Skip(Exception):
    """Raised inside a check that does not apply."""


class _Runner:
    def __init__(self, report: ConformanceReport) -> None:
        self.report = report

    def run(self, name: str, fn: Callable[[], None]) -> bool:
        try:
            fn()
        except _Skip as exc:
            self.report.skipped[name] = str(exc)
            return False
        except AssertionError as exc:
            self.report.failures[name] = str(exc) or "assertion failed"
            return False
        except Exception as exc:  # a crash is a failure of that check, not of the run
            self.report.failures[name] = f"raised {type(exc).__name__}: {exc}"
            return False
        self.report.passed.append(name)
        return True


@contextlib.contextmanager
def _eval_mode(module: Any) -> Iterator[None]:
    if isinstance(module, torch.nn.Module):
        was = module.training
        module.eval()
        try:
            yield
        finally:
            module.train(was)
    else:
        yield


def _close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> bool:
    return a.shape == b.shape and torch.allclose(a.detach().float(), b.detach().float(), atol=atol, rtol=rtol)


def _fmt(t: torch.Tensor) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in t.detach().float().flatten().tolist()[:8]) + "]"


def _prompts(prompts: Sequence[str] | None, batch: int) -> list[str]:
    ps = list(prompts) if prompts is not None else [DEFAULT_PROMPTS[i % len(DEFAULT_PROMPTS)] for i in range(batch)]
    if len(ps) != batch:
        raise ValueError(f"pass {batch} prompts (one per sample), got {len(ps)}")
    if len(set(ps)) != len(ps):
        raise ValueError("the prompts must be distinct, or the pairing check cannot see a swap")
    return ps


def _resolve(kind: str, target: Any, options: dict[str, Any]) -> Any:
    """Build a term (reward/regularizer) or an instance (generator) from a name."""
    import r0kit

    if isinstance(target, str):
        return {"reward": r0kit.reward, "regularizer": r0kit.regularizer, "generator": r0kit.generator}[kind](
            target, **options
        )
    if kind in ("reward", "regularizer") and not isinstance(target, Term):
        raise TypeError(f"expected a registered {kind} name or an r0kit Term, got {type(target).__name__}")
    if isinstance(target, Term) and target.kind != kind:
        raise TypeError(f"expected a {kind} term, got a {target.kind} term")
    return target


def _no_options_unless_named(kind: str, target: Any, options: dict[str, Any]) -> None:
    if options and not isinstance(target, str):
        build = "get_host().metrics.get(name).create(**options)" if kind == "metric" else f"r0kit.{kind}(name, **options)"
        raise TypeError(
            f"options {sorted(options)} only apply when the {kind} is given by name; "
            f"build it with its options first, e.g. {build}"
        )


@contextlib.contextmanager
def _at(hw: tuple[int, int]) -> Iterator[None]:
    """Prefix the input size to whatever goes wrong inside."""
    where = f"{hw[0]}x{hw[1]}"
    try:
        yield
    except AssertionError as exc:
        msg = str(exc)
        raise AssertionError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    except _Skip:
        raise
    except Exception as exc:
        raise AssertionError(f"{where}: raised {type(exc).__name__}: {exc}") from None


def _label(target: Any) -> str:
    if isinstance(target, str):
        return target
    if isinstance(target, Term):
        return target.label
    return type(target).__name__


# --------------------------------------------------------------------------- rewards


def check_reward(
    name_or_term: str | Term,
    *,
    sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
    batch: int = 3,
    prompts: Sequence[str] | None = None,
    seed: int = 0,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    **options: Any,
) -> ConformanceReport:
    """Run a reward through the contract; return a :class:`ConformanceReport`.

    :param name_or_term: a registered reward name (built with ``options``) or
        a term from :func:`r0kit.reward`.
    :param sizes: the input ``(H, W)`` sizes tried; the first is used by the
        checks that need only one.
    :param batch: the batch size (at least 2, for the batch checks).
    :param prompts: ``batch`` distinct prompts (default: built-in ones).
    :param options: the reward's factory options, when it is given by name.
    """
    _no_options_unless_named("reward", name_or_term, options)
    report = ConformanceReport("reward", _label(name_or_term))
    runner = _Runner(report)
    holder: dict[str, Any] = {}

    def build() -> None:
        if batch < 2:
            raise ValueError("batch must be at least 2")
        holder["prompts"] = _prompts(prompts, batch)
        holder["term"] = _resolve("reward", name_or_term, options)
        assert callable(holder["term"].module), (
            f"the factory returned {type(holder['term'].module).__name__}, which is not callable"
        )
        assert isinstance(holder["term"].contract, RewardContract), (
            f"the reward has no RewardContract (got {holder['term'].contract!r})"
        )

    if not runner.run("build", build):
        return report
    term: Term = holder["term"]
    ps: list[str] = holder["prompts"]
    module, contract = term.module, term.contract
    assert contract is not None
    gen = torch.Generator().manual_seed(seed)
    images = {hw: torch.rand(batch, 3, *hw, generator=gen) for hw in sizes}
    first = images[sizes[0]]

    def score(x: torch.Tensor, prompts_: list[str], *, grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        leaf = x.detach().clone().requires_grad_(grad)
        inp = preprocess(leaf, contract)
        with _eval_mode(module), (contextlib.nullcontext() if contract.differentiable else torch.no_grad()):
            out = module(inp, prompts_)
        return out, leaf

    def output_shape() -> None:
        bad = []
        for hw, x in images.items():
            try:
                out, _ = score(x, ps)
            except Exception as exc:
                bad.append(f"{hw[0]}x{hw[1]}: raised {type(exc).__name__}: {exc}")
                continue
            if not isinstance(out, torch.Tensor):
                bad.append(f"{hw[0]}x{hw[1]}: returned {type(out).__name__}, not a torch.Tensor")
            elif tuple(out.shape) != (batch,):
                bad.append(f"{hw[0]}x{hw[1]}: returned shape {tuple(out.shape)}, expected [{batch}]")
            elif not out.is_floating_point():
                bad.append(f"{hw[0]}x{hw[1]}: returned dtype {out.dtype}, expected a float dtype")
        assert not bad, "; ".join(bad)

    def finite_output() -> None:
        for hw, x in images.items():
            with _at(hw):
                out, _ = score(x, ps)
                assert torch.isfinite(out).all(), f"non-finite scores {_fmt(out)}"

    def contract_check() -> None:
        problems = []
        for hw, x in images.items():
            inp = preprocess(x, contract)
            if contract.size is not None and tuple(inp.shape[-2:]) != (contract.size, contract.size):
                problems.append(f"{hw[0]}x{hw[1]}: the core produced {tuple(inp.shape)} for size={contract.size}")
            before = inp.clone()
            try:
                with _eval_mode(module), torch.no_grad():
                    module(inp, ps)
            except Exception as exc:
                problems.append(f"{hw[0]}x{hw[1]}: fails on the core-preprocessed input {tuple(inp.shape)}: {type(exc).__name__}: {exc}")
                continue
            if not torch.equal(before, inp):
                problems.append(
                    "the reward modified its input in place; the core shares one preprocessed tensor "
                    "between rewards with the same contract, so clone before editing"
                )
                break
        x = first
        a, _ = score(x, ps)
        b, _ = score(x, [p + ", upside down, in green" for p in ps[::-1]])
        if contract.needs_prompt and _close(a, b, atol, rtol):
            problems.append(
                "needs_prompt=True but the scores do not change with the prompts; declare needs_prompt=False"
            )
        if not contract.needs_prompt and not _close(a, b, atol, rtol):
            problems.append(
                f"needs_prompt=False but the scores change with the prompts ({_fmt(a)} vs {_fmt(b)}); "
                "declare needs_prompt=True"
            )
        if contract.differentiable:
            out, _ = score(x, ps, grad=True)
            if isinstance(out, torch.Tensor) and not out.requires_grad:
                problems.append(
                    "differentiable=True but the scores are not connected to the image "
                    "(detached, computed under no_grad, or through numpy); declare differentiable=False"
                )
        assert not problems, "; ".join(problems)

    def finite_gradient() -> None:
        if not contract.differentiable:
            raise _Skip("the contract declares differentiable=False")
        for hw, x in images.items():
            with _at(hw):
                out, leaf = score(x, ps, grad=True)
                assert out.requires_grad, "the scores are not connected to the image"
                (g,) = torch.autograd.grad(out.sum(), leaf, allow_unused=True)
                assert g is not None, "no gradient reaches the image"
                assert torch.isfinite(g).all(), "the image gradient has NaN or Inf"
                assert g.abs().sum() > 0, "the image gradient is zero everywhere on random images"

    def eval_determinism() -> None:
        a, _ = score(first, ps)
        b, _ = score(first, ps)
        assert _close(a, b, atol, rtol), f"two calls in eval mode gave {_fmt(a)} and {_fmt(b)}"

    def extreme_inputs() -> None:
        bad = []
        h, w = sizes[0]
        for label, fill in (("all black", 0.0), ("all white", 1.0)):
            x = torch.full((batch, 3, h, w), fill)
            out, leaf = score(x, ps, grad=contract.differentiable)
            if not torch.isfinite(out).all():
                bad.append(f"{label}: scores {_fmt(out)}")
                continue
            if contract.differentiable and out.requires_grad:
                (g,) = torch.autograd.grad(out.sum(), leaf, allow_unused=True)
                if g is not None and not torch.isfinite(g).all():
                    bad.append(f"{label}: the image gradient has NaN or Inf")
        assert not bad, "; ".join(bad)

    def batch_independence() -> None:
        full, leaf = score(first, ps, grad=contract.differentiable)
        for i in range(batch):
            alone, _ = score(first[i : i + 1], [ps[i]])
            assert _close(alone.reshape(-1), full[i : i + 1].reshape(-1), atol, rtol), (
                f"sample {i} scores {_fmt(alone)} alone but {_fmt(full[i:i+1])} in a batch of {batch}"
            )
        if contract.differentiable and full.requires_grad:
            (g,) = torch.autograd.grad(full[0], leaf, allow_unused=True)
            if g is not None:
                leak = g[1:].abs().max().item()
                assert leak == 0.0, f"the score of sample 0 has a gradient (max {leak:.3g}) with respect to other samples"

    def pairing() -> None:
        perm = list(range(batch))[::-1]
        if batch > 2:
            perm = perm[1:] + perm[:1]
        full, _ = score(first, ps)
        permuted, _ = score(first[perm], [ps[i] for i in perm])
        assert _close(permuted, full[perm], atol, rtol), (
            f"permuting images and prompts by {perm} gave {_fmt(permuted)}, expected {_fmt(full[perm])}; "
            "each score must come from its own image and its own prompt, in order"
        )

    def objective() -> None:
        obj = Objective([term * 2.0])
        with _eval_mode(module):
            res = obj.evaluate(Sample(first.clone()), ps)
        direct, _ = score(first, ps)
        assert _close(res.total, 2.0 * direct, atol, rtol), (
            f"the objective total {_fmt(res.total)} is not 2 x the score {_fmt(direct)}"
        )

    for name, fn in (
        ("output_shape", output_shape),
        ("finite_output", finite_output),
        ("contract", contract_check),
        ("finite_gradient", finite_gradient),
        ("eval_determinism", eval_determinism),
        ("extreme_inputs", extreme_inputs),
        ("batch_independence", batch_independence),
        ("pairing", pairing),
        ("objective", objective),
    ):
        runner.run(name, fn)
    return report


# --------------------------------------------------------------------------- regularizers


def _slice_sample(sample: Sample, i: int) -> Sample:
    b = sample.batch_size
    state = {k: (v[i : i + 1] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == b else v) for k, v in sample.state.items()}
    return Sample(sample.images[i : i + 1], state)


def check_regularizer(
    name_or_term: str | Term,
    *,
    generator: Any = "pixel",
    generator_options: dict[str, Any] | None = None,
    batch: int = 2,
    prompts: Sequence[str] | None = None,
    seed: int = 0,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    **options: Any,
) -> ConformanceReport:
    """Run a regularizer on the samples of a generator; return a :class:`ConformanceReport`.

    :param generator: a registered generator name (built with
        ``generator_options``; default a 32x32 ``pixel``) or a generator object.
    :param options: the regularizer's factory options, when it is given by name.
    """
    _no_options_unless_named("regularizer", name_or_term, options)
    report = ConformanceReport("regularizer", _label(name_or_term))
    runner = _Runner(report)
    holder: dict[str, Any] = {}

    def build() -> None:
        import r0kit

        ps = _prompts(prompts, batch)
        holder["term"] = term = _resolve("regularizer", name_or_term, options)
        assert callable(term.module), f"the factory returned {type(term.module).__name__}, which is not callable"
        gopts = dict(generator_options or ({"height": 32, "width": 32} if generator == "pixel" else {}))
        gen = r0kit.generator(generator, **gopts) if isinstance(generator, str) else generator
        gen.prepare(ps, seed)
        holder["gen"] = gen
        holder["prompts"] = ps

    if not runner.run("build", build):
        return report
    term: Term = holder["term"]
    gen, ps = holder["gen"], holder["prompts"]
    module = term.module

    def value(sample: Sample) -> Any:
        with _eval_mode(module):
            return module(sample, gen)

    def fresh() -> Sample:
        return gen.sample(ps, torch.Generator().manual_seed(seed))

    def output_shape() -> None:
        v = value(fresh())
        assert isinstance(v, torch.Tensor), f"returned {type(v).__name__}, not a torch.Tensor"
        assert tuple(v.shape) in ((batch,), ()), f"returned shape {tuple(v.shape)}, expected [{batch}] or a scalar"
        assert v.is_floating_point(), f"returned dtype {v.dtype}, expected a float dtype"

    def finite_output() -> None:
        v = value(fresh())
        assert torch.isfinite(v).all(), f"non-finite penalty {_fmt(v)}"

    def finite_gradient() -> None:
        params = [p for p in gen.parameters()]
        v = value(fresh())
        assert v.requires_grad, "the penalty is not connected to the generator's parameters or images"
        grads = torch.autograd.grad(v.sum(), params, allow_unused=True)
        assert any(g is not None for g in grads), "no gradient reaches any of the generator's parameters"
        for i, g in enumerate(grads):
            assert g is None or torch.isfinite(g).all(), f"the gradient to parameter {i} has NaN or Inf"

    def eval_determinism() -> None:
        s = fresh()
        a, b = value(s), value(s)
        assert _close(a, b, atol, rtol), f"two calls gave {_fmt(a)} and {_fmt(b)}"

    def extreme_inputs() -> None:
        s = fresh()
        bad = []
        for label, fill in (("all black", 0.0), ("all white", 1.0)):
            v = value(Sample(torch.full_like(s.images, fill), s.state))
            if not torch.isfinite(v).all():
                bad.append(f"{label}: penalty {_fmt(v)}")
        assert not bad, "; ".join(bad)

    def batch_independence() -> None:
        s = fresh()
        full = value(s)
        if full.dim() == 0:
            raise _Skip("the penalty is one scalar for the batch")
        for i in range(batch):
            alone = value(_slice_sample(s, i))
            assert _close(alone.reshape(-1), full[i : i + 1], atol, rtol), (
                f"sample {i} has penalty {_fmt(alone)} alone but {_fmt(full[i:i+1])} in a batch of {batch}"
            )

    for name, fn in (
        ("output_shape", output_shape),
        ("finite_output", finite_output),
        ("finite_gradient", finite_gradient),
        ("eval_determinism", eval_determinism),
        ("extreme_inputs", extreme_inputs),
        ("batch_independence", batch_independence),
    ):
        runner.run(name, fn)
    return report


# --------------------------------------------------------------------------- generators


def check_generator(
    name_or_generator: Any,
    *,
    batch: int = 2,
    prompts: Sequence[str] | None = None,
    seed: int = 0,
    atol: float = 1e-6,
    rtol: float = 1e-5,
    **options: Any,
) -> ConformanceReport:
    """Run a generator through the prepare / parameters / sample contract.

    :param name_or_generator: a registered generator name (built with
        ``options``) or a generator object.
    """
    _no_options_unless_named("generator", name_or_generator, options)
    report = ConformanceReport("generator", _label(name_or_generator))
    runner = _Runner(report)
    holder: dict[str, Any] = {}

    def build() -> None:
        holder["prompts"] = _prompts(prompts, batch)
        holder["gen"] = _resolve("generator", name_or_generator, options)

    if not runner.run("build", build):
        return report
    gen, ps = holder["gen"], holder["prompts"]

    def draw(prompts_: list[str], s: int = seed) -> Sample:
        gen.prepare(prompts_, s)
        return gen.sample(prompts_, torch.Generator().manual_seed(s))

    def protocol() -> None:
        missing = [m for m in ("prepare", "parameters", "sample") if not callable(getattr(gen, m, None))]
        assert not missing, f"missing method(s) {', '.join(missing)} of r0kit.Generator"
        assert isinstance(gen, Generator)

    def prepare() -> None:
        gen.prepare(ps, seed)

    def parameters() -> None:
        gen.prepare(ps, seed)
        params = list(gen.parameters())
        assert params, "parameters() is empty: there is nothing to optimize"
        for i, p in enumerate(params):
            assert isinstance(p, torch.Tensor), f"parameter {i} is a {type(p).__name__}, not a tensor"
            assert p.requires_grad, f"parameter {i} does not require grad"
            assert p.is_leaf, f"parameter {i} is not a leaf tensor, so an optimizer cannot update it"
        torch.optim.SGD(params, lr=0.1)

    def sample_contract() -> None:
        for prompts_ in (ps, ps[:1]):
            s = draw(prompts_)
            assert isinstance(s, Sample), f"sample() returned {type(s).__name__}, not an r0kit.Sample"
            check_images(s.images, name="sample.images", tol=0.0)
            assert s.batch_size == len(prompts_), f"{len(prompts_)} prompt(s) gave {s.batch_size} image(s)"
            for key, v in s.state.items():
                assert isinstance(v, torch.Tensor), f"sample.state[{key!r}] is a {type(v).__name__}, not a tensor"
            if "param" in s.state:
                assert s.state["param"].shape[0] == len(prompts_), (
                    f"sample.state['param'] has leading dim {s.state['param'].shape[0]}, expected {len(prompts_)}"
                )

    def differentiable() -> None:
        s = draw(ps)
        params = list(gen.parameters())
        assert s.images.requires_grad, "the images are not connected to the parameters"
        w = torch.rand(s.images.shape, generator=torch.Generator().manual_seed(seed + 1))
        grads = torch.autograd.grad((s.images * w).sum(), params, allow_unused=True)
        for i, g in enumerate(grads):
            assert g is not None, f"no gradient reaches parameter {i}"
            assert torch.isfinite(g).all(), f"the gradient to parameter {i} has NaN or Inf"
        assert any(g.abs().sum() > 0 for g in grads if g is not None), "every parameter gradient is zero"

    def seed_determinism() -> None:
        a = draw(ps).images.detach().clone()
        b = draw(ps).images.detach().clone()
        assert _close(a, b, atol, rtol), (
            f"prepare(prompts, seed={seed}) and sample() twice gave different images "
            f"(max difference {(a - b).abs().max().item():.3g})"
        )

    def optimizer_step() -> None:
        s = draw(ps)
        params = list(gen.parameters())
        before = s.images.detach().clone()
        opt = torch.optim.SGD(params, lr=1.0)
        opt.zero_grad()
        (-s.images.mean()).backward()
        opt.step()
        after = gen.sample(ps, torch.Generator().manual_seed(seed)).images.detach()
        diff = (after - before).abs().max().item()
        assert math.isfinite(diff) and diff > 0, "one optimizer step on parameters() did not change the images"

    for name, fn in (
        ("protocol", protocol),
        ("prepare", prepare),
        ("parameters", parameters),
        ("sample_contract", sample_contract),
        ("differentiable", differentiable),
        ("seed_determinism", seed_determinism),
        ("optimizer_step", optimizer_step),
    ):
        runner.run(name, fn)
    return report


# --------------------------------------------------------------------------- metrics


def check_metric(
    name_or_metric: Any,
    *,
    images: int = 8,
    sizes: Sequence[tuple[int, int]] = ((32, 32), (48, 40)),
    prompts: Sequence[str] | None = None,
    seed: int = 0,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    **options: Any,
) -> ConformanceReport:
    """Run a metric through its contract: ``metric(images [N, 3, H, W] in [0, 1], prompts) -> {name: float}``.

    :param name_or_metric: a registered metric name (built with ``options``) or a metric object.
    :param images: how many images the set holds at least (and at least the metric's ``min_images``);
        each prompt repeats twice, or as often as the metric's ``min_images_per_prompt`` asks.
    """
    _no_options_unless_named("metric", name_or_metric, options)
    report = ConformanceReport("metric", _label(name_or_metric))
    runner = _Runner(report)
    holder: dict[str, Any] = {}

    def build() -> None:
        if isinstance(name_or_metric, str):
            from r0kit.plugins import get_host

            holder["metric"] = get_host().metrics.get(name_or_metric).create(**options)
        else:
            holder["metric"] = name_or_metric
        assert callable(holder["metric"]), f"a metric must be callable, got a {type(holder['metric']).__name__}"

    if not runner.run("build", build):
        return report
    metric = holder["metric"]
    declared = getattr(metric, "min_images_per_prompt", None)
    per_prompt = max(2, declared) if isinstance(declared, int) and not isinstance(declared, bool) else 2
    count = -(-images // per_prompt)  # prompts enough for ``images`` images
    base = list(prompts) if prompts is not None else [DEFAULT_PROMPTS[i % len(DEFAULT_PROMPTS)] for i in range(count)]
    ps = [p for p in base for _ in range(per_prompt)]  # every prompt whole: at least ``images`` images
    g = torch.Generator().manual_seed(seed)
    sets = {hw: torch.rand(len(ps), 3, *hw, generator=g) for hw in sizes}

    def needs() -> None:
        for attr in ("min_images", "min_images_per_prompt"):
            v = getattr(metric, attr, None)
            if v is not None:
                assert isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"{attr} must be an int >= 1, got {v!r}"
        least = getattr(metric, "min_images", None) or 1
        if least > len(ps):
            raise _Skip(f"the metric needs {least} images; pass images={least} or more")

    def values(x: torch.Tensor, prompts_: list[str]) -> dict[str, float]:
        out = metric(x, prompts_)
        assert isinstance(out, dict) and out, f"a metric must return a non-empty dict of name -> number, got {type(out).__name__}"
        for k, v in out.items():
            assert isinstance(k, str) and k, f"metric names must be non-empty strings, got {k!r}"
            assert isinstance(v, (int, float)) and not isinstance(v, bool), f"{k!r} is a {type(v).__name__}, not a number"
            assert math.isfinite(v), f"{k!r} is {v}"
        return {k: float(v) for k, v in out.items()}

    def output() -> None:
        for hw, x in sets.items():
            with _at(hw):
                holder[hw] = values(x, ps)
        keys = {tuple(sorted(v)) for hw, v in holder.items() if isinstance(hw, tuple)}
        assert len(keys) == 1, f"the names change with the image size: {sorted(keys)}"

    def inputs_unchanged() -> None:
        for hw, x in sets.items():
            before = x.clone()
            with _at(hw):
                metric(x, list(ps))
            assert torch.equal(x, before), f"{hw[0]}x{hw[1]}: the metric changed the images it was given"

    def determinism() -> None:
        for hw, x in sets.items():
            a, b = values(x, ps), values(x, ps)
            bad = [k for k in a if not math.isclose(a[k], b[k], rel_tol=rtol, abs_tol=atol)]
            assert not bad, f"{hw[0]}x{hw[1]}: the same images gave {', '.join(f'{k} {a[k]:.6g} then {b[k]:.6g}' for k in bad)}"

    def order() -> None:
        perm = torch.randperm(len(ps), generator=torch.Generator().manual_seed(seed + 1))
        for hw, x in sets.items():
            a, b = values(x, ps), values(x[perm], [ps[i] for i in perm.tolist()])
            bad = [k for k in a if not math.isclose(a[k], b[k], rel_tol=rtol, abs_tol=atol)]
            assert not bad, (
                f"{hw[0]}x{hw[1]}: shuffling the images with their prompts changed "
                + ", ".join(f"{k} ({a[k]:.6g} -> {b[k]:.6g})" for k in bad)
            )

    if runner.run("needs", needs):
        for name, fn in (("output", output), ("inputs_unchanged", inputs_unchanged), ("determinism", determinism), ("order", order)):
            runner.run(name, fn)
    return report


# --------------------------------------------------------------------------- assertion helper


def check(target: Any, *, kind: str | None = None, **kwargs: Any) -> ConformanceReport:
    """Dispatch to :func:`check_reward`, :func:`check_regularizer`, :func:`check_generator` or :func:`check_metric`.

    ``kind`` is inferred from a term, from a registered name (rewards first),
    or from a generator object; a metric object needs ``kind="metric"``.
    """
    if kind is None:
        if isinstance(target, Term):
            kind = target.kind
        elif isinstance(target, str):
            from r0kit.plugins import get_host

            host = get_host()
            kind = next((k for k in ("reward", "regularizer", "generator", "metric") if target in host.registries[k]), "reward")
        else:
            kind = "generator"
    fns = {"reward": check_reward, "regularizer": check_regularizer, "generator": check_generator, "metric": check_metric}
    if kind not in fns:
        raise ValueError(f"kind must be reward, regularizer, generator or metric, got {kind!r}")
    return fns[kind](target, **kwargs)


def assert_conforms(target: Any, *, kind: str | None = None, **kwargs: Any) -> ConformanceReport:
    """Run the conformance check (or take a finished report) and raise
    :class:`AssertionError` listing every failure by name."""
    report = target if isinstance(target, ConformanceReport) else check(target, kind=kind, **kwargs)
    if not report.ok:
        raise AssertionError(str(report))
    return report
