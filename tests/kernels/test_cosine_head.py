from __future__ import annotations

import pytest
import torch

from r0kit.errors import InputError
from r0kit.kernels import cosine_head, cosine_head_reference


from kt_helpers import DTYPES, close, leaf, twin


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 16), (3, 37), (8, 512), (5, 1000)], ids=str)
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_forward_and_backward_match_reference(triton_backend, device, dtype, shape, scale):
    gen = torch.Generator().manual_seed(shape[1])
    a, t = leaf(shape, dtype, device, gen=gen), leaf(shape, dtype, device, gen=gen)
    ra, rt = twin(a), twin(t)
    y = cosine_head(a, t, scale)
    r = cosine_head_reference(ra, rt, scale)
    assert y.shape == (shape[0],) and y.dtype == dtype
    close(y, r, "reduction", dtype, scale=scale, msg="score")
    gy = (torch.randn(shape[0], generator=gen) * 2.0).to(device=device, dtype=dtype)
    y.backward(gy)
    r.backward(gy.float())
    close(a.grad, ra.grad, "reduction", dtype, scale=scale, msg="d img_emb")
    close(t.grad, rt.grad, "reduction", dtype, scale=scale, msg="d txt_emb")


def test_zero_embedding_matches_reference(triton_backend, device):
    a = torch.zeros(2, 8, device=device)
    a[1] = torch.arange(8.0)
    a.requires_grad_(True)
    t = torch.randn(2, 8, device=device, requires_grad=True)
    ra, rt = twin(a), twin(t)
    cosine_head(a, t, 2.0).sum().backward()
    cosine_head_reference(ra, rt, 2.0).sum().backward()
    close(a.grad, ra.grad, "reduction", torch.float32)
    close(t.grad, rt.grad, "reduction", torch.float32)


def test_gradcheck_reference_float64():
    a = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: cosine_head_reference(x, y, 3.0), (a, t))


def test_bad_input_errors():
    with pytest.raises(InputError, match="expand"):
        cosine_head(torch.ones(2, 4), torch.ones(1, 4))
    with pytest.raises(InputError, match="floating-point"):
        cosine_head(torch.ones(2, 4, dtype=torch.int32), torch.ones(2, 4, dtype=torch.int32))
    with pytest.raises(InputError, match="cast"):
        cosine_head(torch.ones(2, 4), torch.ones(2, 4, dtype=torch.float64))


# --------------------------------------------------------------------------- edges
def _both(a, t, scale, gy):
    out = []
    for fn in (cosine_head, cosine_head_reference):
        x, y = a.detach().clone().requires_grad_(True), t.detach().clone().requires_grad_(True)
        s = fn(x, y, scale)
        out.append((s, *torch.autograd.grad(s, (x, y), gy)))
    return out


def _same(a, e, msg, scale=1.0):
    a, e = a.detach().float().cpu(), e.detach().float().cpu()
    assert torch.equal(a.isnan(), e.isnan()), f"{msg}: NaN at {a.isnan().nonzero().tolist()} vs {e.isnan().nonzero().tolist()}"
    assert torch.equal(a.isinf(), e.isinf()), msg
    fin = torch.isfinite(e)
    close(a[fin], e[fin], "reduction", torch.float32, scale=scale, msg=msg)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e30, 1e-30], ids=["nan", "inf", "1e30", "1e-30"])
def test_nonfinite_and_extreme_values_as_the_reference(triton_backend, device, value):
    """NaN must not turn into eps in the clamp; 1e30 must not overflow the norms (float64 sums)."""
    gen = torch.Generator().manual_seed(3)
    a, t = torch.randn(4, 37, generator=gen), torch.randn(4, 37, generator=gen)
    a[1, 5] = value
    t[2] = t[2] * value if value == value and value != float("inf") else t[2]
    t[3, 0] = value
    gy = torch.randn(4, generator=gen)
    (k, kda, kdt), (r, rda, rdt) = _both(a.to(device), t.to(device), 10.0, gy.to(device))
    _same(k, r, "score", scale=10.0)
    _same(kda, rda, "d img_emb", scale=10.0)
    _same(kdt, rdt, "d txt_emb", scale=10.0)
    if value != value:
        assert k.isnan()[[1, 3]].all()  # not hidden
    if value == 1e30:  # the formula, written apart: a 1e30-scaled row keeps its cosine
        want = torch.nn.functional.cosine_similarity(a[2].double(), t[2].double(), dim=0) * 10.0
        torch.testing.assert_close(k[2].double().cpu(), want, atol=1e-4, rtol=1e-4)


def test_norm_exactly_eps_follows_torch_clamp(triton_backend, device):
    """At ‖a‖ = eps the clamp is at its bound: the gradient is torch.clamp_min's there."""
    from r0kit.kernels.cosine_head import EPS

    a = torch.zeros(2, 4, dtype=torch.float32)
    a[0, 0] = EPS  # norm exactly eps
    a[1] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    t = torch.randn(2, 4)
    (_, kda, _), (_, rda, _) = _both(a.to(device), t.to(device), 3.0, torch.ones(2, device=device))
    _same(kda * EPS, rda * EPS, "d img_emb (scaled by eps)")


def test_empty_rows_and_batch(triton_backend, device):
    for shape in ((0, 8), (3, 0)):
        a = torch.zeros(shape, device=device, requires_grad=True)
        y = cosine_head(a, torch.zeros(shape, device=device), 2.0)
        assert y.shape == (shape[0],) and (y == 0).all()
        y.sum().backward()
        assert a.grad.shape == shape


def test_double_backward_matches_the_reference(triton_backend, device):
    gen = torch.Generator().manual_seed(4)
    a0, t0 = torch.randn(3, 10, generator=gen).to(device), torch.randn(3, 10, generator=gen).to(device)
    results = []
    for fn in (cosine_head, cosine_head_reference):
        a, t = a0.clone().requires_grad_(True), t0.clone().requires_grad_(True)
        y = fn(a, t, 5.0)
        first = torch.autograd.grad((y**2).sum(), (a, t), create_graph=True)
        second = torch.autograd.grad(first[0].sum() + (first[1] ** 2).sum(), (a, t))
        results.append(first + second)
    for x, y in zip(*results):
        close(x, y, "reduction", torch.float32, scale=10.0)
