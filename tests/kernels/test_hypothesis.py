"""Random small shapes and values for every op (kernel vs reference, outputs and gradients)."""

from __future__ import annotations

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from r0kit.images import RewardContract, preprocess  # noqa: E402
from r0kit.kernels import (  # noqa: E402
    cosine_head,
    cosine_head_reference,
    eta_noise,
    eta_step,
    eta_step_reference,
    grad_combine,
    grad_combine_reference,
    preprocess_fused,
    weight_l2,
    weight_l2_reference,
)

from kt_helpers import DEVICE, close  # noqa: E402

SETTINGS = settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
F32 = torch.float32


def _t(shape, seed, scale=1.0, lo=-1.0):
    g = torch.Generator().manual_seed(seed)
    return ((torch.rand(shape, generator=g) * (1 - lo) + lo) * scale).to(DEVICE).requires_grad_(True)


def _twin(t):
    return t.detach().clone().requires_grad_(True)


@SETTINGS
@given(B=st.integers(1, 4), M=st.integers(1, 300), n=st.integers(1, 4), seed=st.integers(0, 2**16),
       scale=st.sampled_from([1e-3, 1.0, 1e3]))
def test_grad_combine(triton_backend, B, M, n, seed, scale):
    gs = [_t((B, M), seed + i, scale) for i in range(n)]
    rs = [_twin(g) for g in gs]
    w = [float(i) - 1.5 for i in range(n)]
    out, norms = grad_combine(gs, w, 1e-6)
    r_out, r_norms = grad_combine_reference(rs, w, 1e-6)
    close(out, r_out, "reduction", F32)
    close(norms, r_norms, "reduction", F32, scale=scale * M**0.5)
    go = _t(out.shape, seed + 99).detach()
    out.backward(go)
    r_out.backward(go)
    for g, r in zip(gs, rs):
        close(g.grad, r.grad, "reduction", F32, scale=10.0 / scale)


@SETTINGS
@given(B=st.integers(1, 5), D=st.integers(1, 700), seed=st.integers(0, 2**16), scale=st.floats(0.1, 100.0))
def test_cosine_head(triton_backend, B, D, seed, scale):
    a, t = _t((B, D), seed), _t((B, D), seed + 1)
    ra, rt = _twin(a), _twin(t)
    y, r = cosine_head(a, t, scale), cosine_head_reference(ra, rt, scale)
    close(y, r, "reduction", F32, scale=scale)
    gy = _t((B,), seed + 2).detach()
    y.backward(gy)
    r.backward(gy)
    close(a.grad, ra.grad, "reduction", F32, scale=scale * 10)
    close(t.grad, rt.grad, "reduction", F32, scale=scale * 10)


@SETTINGS
@given(B=st.integers(1, 3), M=st.integers(1, 500), seed=st.integers(0, 2**31 - 1), offset=st.integers(0, 2**40),
       eta=st.floats(0.0, 0.99))
def test_eta_step(triton_backend, B, M, seed, offset, eta):
    x0, ep = _t((B, M), seed % 1000), _t((B, M), seed % 1000 + 1)
    e = torch.full((B,), eta, device=DEVICE, requires_grad=True)
    rx0, rep, re = _twin(x0), _twin(ep), _twin(e)
    xi = eta_noise((B, M), seed, offset, device=DEVICE, backend="triton")
    x = eta_step(x0, ep, 0.8, 0.6, e, seed=seed, offset=offset)
    r = eta_step_reference(rx0, rep, 0.8, 0.6, re, noise=xi)
    close(x, r, "elementwise", F32, scale=4.0)
    g = _t((B, M), 5).detach()
    x.backward(g)
    r.backward(g)
    close(x0.grad, rx0.grad, "elementwise", F32)
    close(ep.grad, rep.grad, "elementwise", F32)
    close(e.grad, re.grad, "reduction", F32, scale=10.0 * M**0.5 / max(1e-2, (1 - eta * eta)) ** 0.5)


@SETTINGS
@given(sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=6), seed=st.integers(0, 2**16),
       lam=st.floats(1e-4, 10.0))
def test_weight_l2(triton_backend, sizes, seed, lam):
    ps = [_t((s,), seed + i) for i, s in enumerate(sizes)]
    rs = [_t((s,), seed + 100 + i).detach() for i, s in enumerate(sizes)]
    qs = [_twin(p) for p in ps]
    close(weight_l2(ps, rs, lam), weight_l2_reference(qs, rs, lam), "reduction", F32, scale=lam * sum(sizes))
    for p, q in zip(ps, qs):
        close(p.grad, q.grad, "elementwise", F32, scale=lam)


CONTRACTS = st.builds(
    RewardContract,
    size=st.one_of(st.none(), st.integers(4, 40)),
    resize=st.sampled_from(["bilinear", "bicubic", "nearest", "area"]),
    antialias=st.booleans(),
    crop=st.sampled_from(["center", "none"]),
)


@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(H=st.integers(4, 60), W=st.integers(4, 60), B=st.integers(1, 2),
       contracts=st.lists(CONTRACTS, min_size=1, max_size=3), seed=st.integers(0, 2**16))
def test_preprocess(triton_backend, H, W, B, contracts, seed):
    x = _t((B, 3, H, W), seed, scale=1.2, lo=-0.1)
    rx = _twin(x)
    outs = preprocess_fused(x, contracts)
    refs = [preprocess(rx, c) for c in contracts]
    for o, r in zip(outs, refs):
        close(o, r, "preprocess", F32)
    torch.autograd.backward(list(outs), [torch.ones_like(o) * 0.5 for o in outs])
    torch.autograd.backward(refs, [torch.ones_like(r) * 0.5 for r in refs])
    close(x.grad, rx.grad, "preprocess", F32, scale=10.0)
