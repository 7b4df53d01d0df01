from __future__ import annotations

import pytest
import torch

from r0kit.errors import InputError
from r0kit.kernels import grad_combine, grad_combine_reference


from kt_helpers import DTYPES, close, leaf, twin

SHAPES = [(1, 7), (3, 5, 7), (4, 3, 16, 16), (2, 3, 33, 17)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("n", [1, 3, 5])
def test_forward_and_backward_match_reference(triton_backend, device, dtype, shape, n):
    gen = torch.Generator().manual_seed(n * 100 + len(shape))
    grads = [leaf(shape, dtype, device, gen=gen) for _ in range(n)]
    refs = [twin(g) for g in grads]
    weights = [5.0, -1.0, 0.01, 0.05, 2.5][:n]

    out, norms = grad_combine(grads, weights, 1e-6)
    r_out, r_norms = grad_combine_reference(refs, weights, 1e-6)
    assert out.shape == grads[0].shape and out.dtype == dtype and norms.shape == (n, shape[0])
    close(out, r_out, "reduction", dtype, msg="combined")
    close(norms, r_norms, "reduction", dtype, msg="norms")

    go = torch.randn(out.shape, generator=gen).to(device=device, dtype=dtype) * 3.0  # not the last layer
    gn = torch.randn(norms.shape, generator=gen).to(device) * 0.5
    torch.autograd.backward([out, norms], [go, gn])
    torch.autograd.backward([r_out, r_norms], [go.float(), gn])
    for i, (g, r) in enumerate(zip(grads, refs)):
        close(g.grad, r.grad, "reduction", dtype, scale=10.0, msg=f"d grads[{i}]")


def test_zero_gradient_sample_is_finite(triton_backend, device):
    g = torch.randn(2, 3, 5, device=device)
    g[1] = 0.0
    g.requires_grad_(True)
    out, norms = grad_combine([g], [1.0], 1e-8)
    assert norms[0, 1] == 0 and torch.all(out[1] == 0)
    out.sum().backward()
    assert torch.isfinite(g.grad).all()


def test_gradcheck_reference_float64(torch_backend):
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(2, 3, 4, generator=gen, dtype=torch.float64).requires_grad_(True) for _ in range(3)]
    weights = [1.0, -0.5, 2.0]
    fn = lambda *gs: grad_combine(list(gs), weights, 1e-3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, grads, eps=1e-6, atol=1e-6)
    ref = lambda *gs: grad_combine_reference(list(gs), weights, 1e-3)  # noqa: E731
    assert torch.autograd.gradcheck(ref, grads, eps=1e-6, atol=1e-6)


def test_objective_signature_still_served():
    from r0kit.objective import combine_normalized

    g = [torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)]
    out, norms = combine_normalized(g, [1.0, 2.0], 1e-8)
    r_out, r_norms = grad_combine_reference(g, [1.0, 2.0], 1e-8)
    torch.testing.assert_close(out, r_out)
    torch.testing.assert_close(norms, r_norms)


@pytest.mark.parametrize(
    "grads, weights, match",
    [
        ([], [], "non-empty list"),
        ("tensor", [1.0], "non-empty list"),
        ([torch.ones(2, 3)], [1.0, 2.0], "one weight per gradient"),
        ([torch.ones(2, 3), torch.ones(2, 4)], [1.0, 2.0], "must match"),
        ([torch.ones(2, 3, dtype=torch.int64)], [1.0], "floating-point"),
        ([torch.ones(())], [1.0], "batch dim"),
    ],
)
def test_bad_input_errors(grads, weights, match):
    if grads == "tensor":
        grads = torch.ones(2, 3)
    with pytest.raises(InputError, match=match):
        grad_combine(grads, weights)


# --------------------------------------------------------------------------- edges
def _both(grads, weights, eps, go, gn):
    """(kernel, reference) outputs and input gradients for the same upstream gradients."""
    results = []
    for fn, gs in ((grad_combine, [g.detach().clone().requires_grad_(True) for g in grads]),
                   (grad_combine_reference, [g.detach().clone().requires_grad_(True) for g in grads])):
        out, norms = fn(gs, weights, eps)
        pairs = [(o, u) for o, u in ((out, go), (norms, gn)) if u is not None]
        dgs = torch.autograd.grad([o for o, _ in pairs], gs, [u for _, u in pairs])
        results.append((out, norms, dgs))
    return results


def _same(actual, expected, kind, msg, scale=1.0):
    a, e = actual.detach().float().cpu(), expected.detach().float().cpu()
    assert torch.equal(a.isnan(), e.isnan()), f"{msg}: NaN at {a.isnan().nonzero().tolist()} vs {e.isnan().nonzero().tolist()}"
    assert torch.equal(a.isinf() & (a > 0), e.isinf() & (e > 0)) and torch.equal(a.isinf() & (a < 0), e.isinf() & (e < 0)), msg
    fin = torch.isfinite(e)
    close(a[fin], e[fin], kind, torch.float32, scale=scale, msg=msg)


def test_one_number_per_sample(triton_backend, device):
    """A [B] gradient is one number per sample: its norm is |g[b]|, on both paths."""
    g = torch.tensor([0.5, -2.0, 0.0, 3.0], device=device)
    (k_out, k_norms, k_dg), (r_out, r_norms, r_dg) = _both([g, -g * 0.1], [1.0, 2.0], 1e-6, torch.ones(4, device=device), None)
    _same(k_out, r_out, "reduction", "combined")
    _same(k_norms, r_norms, "reduction", "norms")
    torch.testing.assert_close(k_norms[0].cpu(), g.abs().cpu())
    for a, b in zip(k_dg, r_dg):
        _same(a, b, "reduction", "d grads")


@pytest.mark.parametrize("value", [1e30, 1e-30, float("nan"), float("inf"), 0.0], ids=["1e30", "1e-30", "nan", "inf", "zero"])
def test_extreme_and_nonfinite_values_as_the_reference(triton_backend, device, value):
    """fp32 squares of 1e30 overflow and of 1e-30 underflow: the norms are float64 sums on both paths;
    NaN and Inf reach the same outputs as in the reference."""
    gen = torch.Generator().manual_seed(1)
    g1 = torch.randn(3, 2, 5, generator=gen)
    g1[1] = value if value != value or value in (float("inf"), 0.0) else g1[1] * value
    g1[2, 0, 3] = value
    g2 = torch.randn(3, 2, 5, generator=gen)
    go, gn = torch.randn(3, 2, 5, generator=gen), torch.randn(2, 3, generator=gen)
    (k_out, k_norms, k_dg), (r_out, r_norms, r_dg) = _both(
        [g1.to(device), g2.to(device)], [1.0, -0.5], 1e-8, go.to(device), gn.to(device)
    )
    _same(k_out, r_out, "reduction", "combined")
    _same(k_norms, r_norms, "reduction", "norms", scale=max(1.0, abs(value)) if value == value else 1.0)
    for i, (a, b) in enumerate(zip(k_dg, r_dg)):
        _same(a, b, "reduction", f"d grads[{i}]", scale=10.0)
    # and both equal the formula, written apart: float64 norms, cast once
    want = torch.stack([g.double().reshape(3, -1).norm(dim=1) for g in (g1, g2)]).float()
    _same(k_norms, want, "reduction", "norms vs formula", scale=max(1.0, abs(value)) if value == value else 1.0)
    assert torch.equal(k_norms.cpu() > 0, want > 0)  # a 1e-30 gradient still has a norm (and a direction)


def test_more_than_eight_gradients(triton_backend, device):
    """The kernels take 8 gradients per launch; more run in groups that accumulate."""
    gen = torch.Generator().manual_seed(2)
    grads = [torch.randn(2, 3, 7, generator=gen).to(device) for _ in range(11)]
    weights = [float(i) - 4.0 for i in range(11)]
    go = torch.randn(2, 3, 7, generator=gen).to(device)
    (k_out, k_norms, k_dg), (r_out, r_norms, r_dg) = _both(grads, weights, 1e-6, go, None)
    close(k_out, r_out, "reduction", torch.float32)
    close(k_norms, r_norms, "reduction", torch.float32)
    for a, b in zip(k_dg, r_dg):
        close(a, b, "reduction", torch.float32, scale=10.0)


def test_only_the_norms_get_an_upstream_gradient(triton_backend, device):
    g = torch.randn(2, 9, device=device)
    (_, _, k_dg), (_, _, r_dg) = _both([g], [3.0], 1e-6, None, torch.tensor([[1.0, -2.0]], device=device))
    close(k_dg[0], r_dg[0], "reduction", torch.float32)


def test_double_backward_matches_the_reference(triton_backend, device):
    """create_graph=True: the kernels' backward is first-order, so the op takes its backward through the
    reference; the second derivatives are the reference's."""
    gen = torch.Generator().manual_seed(4)
    base = [torch.randn(2, 3, 5, generator=gen).to(device) for _ in range(2)]
    v = [torch.randn(2, 3, 5, generator=gen).to(device) for _ in range(2)]
    results = []
    for fn in (grad_combine, grad_combine_reference):
        gs = [b.clone().requires_grad_(True) for b in base]
        out, norms = fn(gs, [1.0, -2.0], 1e-6)
        first = torch.autograd.grad((out**2).sum() + norms.sum(), gs, create_graph=True)
        second = torch.autograd.grad(sum((f * w).sum() for f, w in zip(first, v)), gs)
        results.append((first, second))
    for a, b in zip(results[0][0] + results[0][1], results[1][0] + results[1][1]):
        close(a, b, "reduction", torch.float32, scale=10.0)
    assert all(s.abs().sum() > 0 for s in results[1][1])
