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
