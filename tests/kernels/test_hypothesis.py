"""One hypothesis suite per op: Triton == torch reference == the formula written apart (formulas.py).

Inputs draw the edge values (0, 1, ±1e-30, ±1e30, NaN, ±Inf), zero-norm samples, empty tensors,
float64 and non-contiguous views. Values and gradients must agree: the same NaN and ±Inf
positions, and the finite entries to each dtype's tolerance (relative to the output's scale).
float64 runs on the torch path (the kernels compute fp16/bf16/fp32); forcing Triton on it must
raise :class:`KernelBackendError`.
"""

from __future__ import annotations

import math

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import formulas  # noqa: E402
from r0kit.images import RewardContract  # noqa: E402
from r0kit.kernels import (  # noqa: E402
    KernelBackendError,
    cosine_head,
    eta_noise,
    eta_step,
    grad_combine,
    preprocess_fused,
    weight_l2,
)

from kt_helpers import DEVICE  # noqa: E402

# No shrinking: the interpreter makes each example slow, and the failing example is printed as drawn.
PHASES = (Phase.explicit, Phase.reuse, Phase.generate)
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, phases=PHASES)
SPECIAL = [0.0, 1.0, -1.0, 1e-30, -1e-30, 1e30, -1e30, math.nan, math.inf, -math.inf]
FINITE_SPECIAL = [0.0, 1.0, -1.0, 1e-30, -1e-30, 1e30, -1e30]
#: (atol relative to the output's largest finite magnitude, rtol) per dtype
TOL = {torch.float32: (3e-5, 3e-5), torch.float64: (1e-10, 1e-10)}
DTYPES = st.sampled_from([torch.float32, torch.float64])


def _backends(monkeypatch, dtype):
    """The backends to run for ``dtype``: both for fp32; fp64 only on torch (forced Triton must refuse it)."""
    return ["triton", "torch"] if dtype != torch.float64 else ["torch"]


def check(actual, expected, dtype, msg, *, extra_scale=1.0):
    """Same NaN / +Inf / -Inf positions; finite entries within (atol·scale + rtol·|e|).

    ``extra_scale`` multiplies the scale: a float, or a tensor that broadcasts to ``expected``
    (a per-sample scale, for outputs whose rounding follows a per-sample magnitude)."""
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(actual.dtype).to(torch.float64).cpu()  # what the op's dtype can hold
    assert a.shape == e.shape, f"{msg}: shape {tuple(a.shape)} vs {tuple(e.shape)}"
    for name, f in (("NaN", torch.isnan), ("+Inf", lambda t: t == math.inf), ("-Inf", lambda t: t == -math.inf)):
        fa, fe = f(a), f(e)
        assert torch.equal(fa, fe), f"{msg}: {name} at {fa.nonzero().tolist()[:6]}, expected {fe.nonzero().tolist()[:6]}"
    fin = torch.isfinite(e)
    if fin.any():
        atol, rtol = TOL[dtype]
        extra = torch.as_tensor(extra_scale, dtype=torch.float64).cpu().expand_as(e)[fin]
        scale = max(1.0, formulas.finite_max(e)) * extra
        err = (a[fin] - e[fin]).abs()
        bound = atol * scale + rtol * e[fin].abs()
        worst = int((err - bound).argmax())
        assert (err <= bound).all(), f"{msg}: error {float(err[worst]):.3g} over bound {float(bound[worst]):.3g} (scale {float(scale[worst]):.3g})"


def randn(data, shape, dtype):
    """Normals from a drawn seed: upstream gradients, so that an example does not depend on torch's
    global RNG (that is, on which tests ran before it in the worker)."""
    seed = data.draw(st.integers(0, 2**31 - 1))
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(DEVICE)


@st.composite
def tensors(draw, shape, dtype, *, specials=SPECIAL, p_special=0.2, zero_rows=True):
    """A tensor of ``shape``: normals, some entries replaced by edge values, maybe a zero sample, maybe a
    non-contiguous view."""
    seed = draw(st.integers(0, 2**31 - 1))
    t = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    n = t.numel()
    if n:
        k = draw(st.integers(0, max(0, min(6, int(n * p_special)))))
        for _ in range(k):
            t.view(-1)[draw(st.integers(0, n - 1))] = draw(st.sampled_from(specials))
        if zero_rows and t.dim() > 1 and draw(st.booleans()):
            t[draw(st.integers(0, t.shape[0] - 1))] = 0.0
    t = t.to(dtype)
    if t.dim() >= 2 and draw(st.booleans()):  # the same values through a transposed, non-contiguous view
        t = t.transpose(0, -1).contiguous().transpose(0, -1)
    return t.to(DEVICE)


def _refuses_forced_triton(monkeypatch, fn):
    monkeypatch.setenv("R0KIT_KERNELS", "triton")
    with pytest.raises(KernelBackendError, match="float64"):
        fn()


# --------------------------------------------------------------------------- grad_combine
@SETTINGS
@given(data=st.data(), dtype=DTYPES, B=st.integers(1, 3), inner=st.sampled_from([(), (0,), (7,), (3, 5), (2, 3, 4)]),
       n=st.integers(1, 4), eps=st.sampled_from([0.0, 1e-8, 1e-3]))
def test_grad_combine(monkeypatch, data, dtype, B, inner, n, eps):
    shape = (B, *inner)
    grads = [data.draw(tensors(shape, dtype)) for _ in range(n)]
    weights = data.draw(st.lists(st.sampled_from([-2.0, 0.5, 1.0, 3.0]), min_size=n, max_size=n))
    go = data.draw(tensors(shape, dtype, specials=[0.0], p_special=0.0))
    gn = randn(data, (n, B), torch.float64) if data.draw(st.booleans()) else None
    want_out, want_norms, want_dg = formulas.grad_combine(grads, weights, eps, go, gn)
    for backend in _backends(monkeypatch, dtype):
        monkeypatch.setenv("R0KIT_KERNELS", backend)
        gs = [g.detach().clone().requires_grad_(True) for g in grads]
        out, norms = grad_combine(gs, weights, eps)
        check(out, want_out, dtype, f"{backend} combined")
        check(norms, want_norms, dtype, f"{backend} norms")
        pairs = [(o, u) for o, u in ((out, go), (norms, gn)) if u is not None]
        dgs = torch.autograd.grad([o for o, _ in pairs], gs, [u.to(o.dtype) for o, u in pairs], allow_unused=True)
        for i, (d, w) in enumerate(zip(dgs, want_dg)):
            check(torch.zeros_like(gs[i]) if d is None else d, w, dtype, f"{backend} d grads[{i}]")
    if dtype == torch.float64:
        _refuses_forced_triton(monkeypatch, lambda: grad_combine(grads, weights, eps))


# --------------------------------------------------------------------------- weight_l2
@SETTINGS
@given(data=st.data(), dtype=DTYPES, sizes=st.lists(st.sampled_from([(0,), (1,), (5,), (3, 7), (70001,)]), min_size=1, max_size=4),
       lam=st.sampled_from([1e-3, 0.5, 2.0]), accumulate=st.booleans(), existing=st.booleans())
def test_weight_l2(monkeypatch, data, dtype, sizes, lam, accumulate, existing):
    params = [data.draw(tensors(s, dtype, p_special=0.001 if s == (70001,) else 0.2, zero_rows=False)) for s in sizes]
    refs = [data.draw(tensors(s, dtype, p_special=0.001 if s == (70001,) else 0.2, zero_rows=False)) for s in sizes]
    grads0 = [randn(data, s, dtype) for s in sizes] if existing and accumulate else None
    want_loss, want_grads = formulas.weight_l2(params, refs, lam)
    for backend in _backends(monkeypatch, dtype):
        monkeypatch.setenv("R0KIT_KERNELS", backend)
        ps = [p.detach().clone().requires_grad_(True) for p in params]
        if grads0 is not None:
            for p, g in zip(ps, grads0):
                p.grad = g.clone()
        loss = weight_l2(ps, refs, lam, accumulate_grad=accumulate)
        if not accumulate:
            loss.backward()
        assert loss.dtype == dtype
        check(loss, want_loss, dtype, f"{backend} loss", extra_scale=1.0)
        for i, (p, w) in enumerate(zip(ps, want_grads)):
            want = w + grads0[i].to(torch.float64) if grads0 is not None else w
            assert p.grad is not None and p.grad.shape == p.shape, f"{backend} params[{i}].grad"
            check(p.grad, want, dtype, f"{backend} params[{i}].grad")
    if dtype == torch.float64:
        _refuses_forced_triton(monkeypatch, lambda: weight_l2(params, refs, lam))


# --------------------------------------------------------------------------- eta_step
@SETTINGS
@given(data=st.data(), dtype=DTYPES, B=st.integers(1, 3), inner=st.sampled_from([(0,), (9,), (4, 5), (2, 3, 4)]),
       seed=st.integers(0, 2**63 - 1), offset=st.integers(0, 2**62 - 1))
def test_eta_step(monkeypatch, data, dtype, B, inner, seed, offset):
    shape = (B, *inner)
    x0 = data.draw(tensors(shape, dtype, zero_rows=False))
    ep = data.draw(tensors(shape, dtype, zero_rows=False))
    etas = st.sampled_from([0.0, 1.0, 0.25, 0.999])

    def coef(values):
        if data.draw(st.booleans()):
            return data.draw(values)
        return torch.tensor(data.draw(st.lists(values, min_size=B, max_size=B)), dtype=dtype).to(DEVICE)

    # α, σ: noise-schedule values (σ up to EDM's 80); the tensors carry the 1e30s (σ = 1e30 times
    # ε̂ = 1e30 overflows fp32 in any order of operations)
    alpha = coef(st.sampled_from([0.0, 0.5, 1.0, 1e-30]))
    sigma = coef(st.sampled_from([0.0, 0.3, 1.0, 80.0]))
    eta = coef(etas)
    g = data.draw(tensors(shape, dtype, specials=[0.0], p_special=0.0))
    noises = {}
    for backend in _backends(monkeypatch, dtype):
        monkeypatch.setenv("R0KIT_KERNELS", backend)
        xi = eta_noise(shape, seed, offset, device=DEVICE, dtype=dtype, backend=backend)
        noises[backend] = xi
        want_x, want_g = formulas.eta_step(x0, ep, alpha, sigma, eta, xi, g)
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in
                  (("x0", x0), ("eps", ep), ("alpha", alpha), ("sigma", sigma), ("eta", eta)) if isinstance(v, torch.Tensor)}
        x = eta_step(leaves["x0"], leaves["eps"], leaves.get("alpha", alpha), leaves.get("sigma", sigma),
                     leaves.get("eta", eta), seed=seed, offset=offset)
        check(x, want_x, dtype, f"{backend} x")
        grads = torch.autograd.grad(x, list(leaves.values()), g, allow_unused=True)
        for (name, leaf), d in zip(leaves.items(), grads):
            want = want_g[name]
            want = want.sum().reshape(leaf.shape) if leaf.numel() == 1 and want.numel() > 1 else want.reshape(leaf.shape)
            check(torch.zeros_like(leaf) if d is None else d, want, dtype, f"{backend} d {name}", extra_scale=10.0)
    if "triton" in noises:  # one stream: the backends' ξ agree to the last ulps of log/cos
        check(noises["triton"], noises["torch"].to(noises["triton"].dtype), torch.float32, "ξ triton vs torch", extra_scale=10.0)
    if dtype == torch.float64:
        _refuses_forced_triton(monkeypatch, lambda: eta_step(x0, ep, 0.5, 0.5, 0.5, seed=seed, offset=offset))


# --------------------------------------------------------------------------- cosine_head
def _term_size(scale, gy, v, eps=1e-12):
    """Per sample, ``scale·|gy|/max(‖v‖, eps)`` (at least 1): the size of the terms that cancel in
    the cosine's gradient with respect to ``v``; shape (B, 1), float64."""
    v64 = v.detach().to(torch.float64).cpu()
    n = torch.linalg.vector_norm(torch.nan_to_num(v64, posinf=0.0, neginf=0.0), dim=-1).clamp_min(eps)
    size = scale * gy.detach().to(torch.float64).cpu().abs() / n
    return torch.nan_to_num(size, nan=1.0, posinf=1.0).clamp_min(1.0)[:, None]


@SETTINGS
@given(data=st.data(), dtype=DTYPES, B=st.integers(0, 4), D=st.sampled_from([0, 1, 7, 64, 300]),
       scale=st.sampled_from([1.0, 100.0]))
def test_cosine_head(monkeypatch, data, dtype, B, D, scale):
    a = data.draw(tensors((B, D), dtype))
    t = data.draw(tensors((B, D), dtype))
    gy = randn(data, (B,), dtype)
    want_y, want_da, want_dt = formulas.cosine_head(a, t, scale, gy)
    for backend in _backends(monkeypatch, dtype):
        monkeypatch.setenv("R0KIT_KERNELS", backend)
        x, y = a.detach().clone().requires_grad_(True), t.detach().clone().requires_grad_(True)
        s = cosine_head(x, y, scale)
        check(s, want_y, dtype, f"{backend} score")
        da, dt = torch.autograd.grad(s, (x, y), gy)
        # ∂/∂a = scale·gy·(t̂ − cos·â)/‖a‖: two terms of size scale·|gy|/‖a‖ cancel (exactly, at D=1),
        # so each sample's rounding is of that size, not of the (maybe tiny) result's
        check(da, want_da, dtype, f"{backend} d img_emb", extra_scale=_term_size(scale, gy, a))
        check(dt, want_dt, dtype, f"{backend} d txt_emb", extra_scale=_term_size(scale, gy, t))
    if dtype == torch.float64 and B:
        _refuses_forced_triton(monkeypatch, lambda: cosine_head(a, t, scale))


# --------------------------------------------------------------------------- preprocess
CONTRACTS = st.builds(
    RewardContract,
    size=st.one_of(st.none(), st.integers(4, 30)),
    resize=st.sampled_from(["bilinear", "bicubic", "nearest", "area"]),
    antialias=st.booleans(),
    crop=st.sampled_from(["center", "pad", "none"]),
    crop_offset=st.sampled_from(["round", "floor"]),
)
PIXEL_SPECIAL = [0.0, 1.0, 1e-30, 1e30, -1e30, math.nan, math.inf, -math.inf]


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, phases=PHASES)
@given(data=st.data(), dtype=DTYPES, H=st.integers(4, 40), W=st.integers(4, 40), B=st.integers(1, 2),
       contracts=st.lists(CONTRACTS, min_size=1, max_size=3))
def test_preprocess(monkeypatch, data, dtype, H, W, B, contracts):
    x = data.draw(tensors((B, 3, H, W), dtype, specials=PIXEL_SPECIAL, p_special=0.01, zero_rows=False))
    x = torch.where(torch.isfinite(x), x.abs().clamp(max=1.2), x)  # mostly in [0, 1]; some outside, clamped
    shapes = [formulas.preprocess(x, c).shape for c in contracts]
    ups = [randn(data, s, dtype) for s in shapes]
    want_outs, want_dx = formulas.preprocess_grad(x, contracts, ups)
    for backend in _backends(monkeypatch, dtype):
        monkeypatch.setenv("R0KIT_KERNELS", backend)
        xx = x.detach().clone().requires_grad_(True)
        outs = preprocess_fused(xx, contracts)
        for c, o, w in zip(contracts, outs, want_outs):
            check(o, w, dtype, f"{backend} {c.describe()}", extra_scale=5.0)
        (dx,) = torch.autograd.grad(outs, xx, ups)
        check(dx, want_dx, dtype, f"{backend} d images", extra_scale=20.0)
    if dtype == torch.float64:
        _refuses_forced_triton(monkeypatch, lambda: preprocess_fused(x, contracts))
