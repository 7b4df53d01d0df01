from __future__ import annotations

import pytest
import torch

from r0kit.errors import InputError
from r0kit.kernels import eta_noise, eta_step, eta_step_reference

from kt_helpers import DTYPES, close, leaf, twin

SHAPES = [(1, 4), (3, 5, 7), (2, 4, 16, 16)]


def _scalars(kind: str, B: int, device, gen):
    if kind == "float":
        return 0.7, 0.45, 0.3
    a = (torch.rand(B, generator=gen) * 0.5 + 0.5).to(device).requires_grad_(True)
    s = (torch.rand(B, generator=gen) * 0.5 + 0.2).to(device).requires_grad_(True)
    e = (torch.rand(B, generator=gen) * 0.9).to(device).requires_grad_(True)
    return a, s, e


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["float", "per_sample"])
def test_forward_and_backward_match_reference(triton_backend, device, dtype, shape, kind):
    gen = torch.Generator().manual_seed(7)
    x0, ep = leaf(shape, dtype, device, gen=gen), leaf(shape, dtype, device, gen=gen)
    alpha, sigma, eta = _scalars(kind, shape[0], device, gen)
    seed, offset = 1234, 99
    xi = eta_noise(shape, seed, offset, device=device, backend="triton")
    rx0, rep = twin(x0), twin(ep)
    rs = [v.detach().clone().requires_grad_(True) if isinstance(v, torch.Tensor) else v for v in (alpha, sigma, eta)]

    x = eta_step(x0, ep, alpha, sigma, eta, seed=seed, offset=offset)
    r = eta_step_reference(rx0, rep, *rs, noise=xi)
    assert x.shape == shape and x.dtype == dtype
    close(x, r, "elementwise", dtype, scale=4.0, msg="x")

    g = (torch.randn(shape, generator=gen) * 1.5).to(device=device, dtype=dtype)
    x.backward(g)
    r.backward(g.float())
    close(x0.grad, rx0.grad, "elementwise", dtype, msg="d x0")
    close(ep.grad, rep.grad, "elementwise", dtype, msg="d eps")
    if kind == "per_sample":
        for name, v, rv in zip(("alpha", "sigma", "eta"), (alpha, sigma, eta), rs):
            close(v.grad, rv.grad, "reduction", dtype, scale=50.0, msg=f"d {name}")


def test_noise_is_reproducible_and_standard_normal(device):
    shape = (4, 3, 64, 64)
    for backend in ("triton", "torch"):
        a = eta_noise(shape, 42, 0, device=device, backend=backend)
        b = eta_noise(shape, 42, 0, device=device, backend=backend)
        c = eta_noise(shape, 42, a.numel(), device=device, backend=backend)
        assert torch.equal(a, b), backend
        assert not torch.equal(a, c), backend
        n = a.numel()  # 49152: mean ~ N(0, 1/n), std within a few 1/sqrt(2n)
        assert abs(a.mean().item()) < 5 / n**0.5, backend
        assert abs(a.std().item() - 1.0) < 5 / (2 * n) ** 0.5, backend
        assert abs(torch.corrcoef(torch.stack([a.flatten(), c.flatten()]))[0, 1].item()) < 5 / n**0.5


def test_kernel_noise_is_the_noise_it_adds(triton_backend, device):
    x0 = torch.zeros(2, 3, 8, device=device)
    ep = torch.zeros(2, 3, 8, device=device)
    x = eta_step(x0, ep, 1.0, 1.0, 1.0, seed=5, offset=10)
    torch.testing.assert_close(x, eta_noise(x0.shape, 5, 10, device=device, backend="triton"))


def test_reference_draws_from_seed_and_offset(torch_backend):
    x0 = torch.zeros(2, 5)
    a = eta_step(x0, x0, 1.0, 1.0, 1.0, seed=3, offset=0)
    b = eta_step(x0, x0, 1.0, 1.0, 1.0, seed=3, offset=0)
    c = eta_step(x0, x0, 1.0, 1.0, 1.0, seed=3, offset=1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.testing.assert_close(a, eta_noise((2, 5), 3, 0, backend="torch"))


def test_gradcheck_reference_float64():
    x0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    ep = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    eta = torch.tensor([0.2, 0.6], dtype=torch.float64, requires_grad=True)
    xi = torch.randn(2, 3, dtype=torch.float64)
    fn = lambda a, b, e: eta_step_reference(a, b, 0.9, 0.4, e, noise=xi)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x0, ep, eta))


def test_bad_input_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(InputError, match="share one"):
        eta_step(x, torch.zeros(2, 4), 1.0, 1.0, 0.5, seed=0)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        eta_step(x, x, 1.0, 1.0, 1.5, seed=0)
    with pytest.raises(InputError, match=r"\[B\]=2"):
        eta_step(x, x, torch.ones(3), 1.0, 0.5, seed=0)
    with pytest.raises(InputError, match="non-negative"):
        eta_step(x, x, 1.0, 1.0, 0.5, seed=-1)
    with pytest.raises(InputError, match="floating-point"):
        eta_step(x.long(), x.long(), 1.0, 1.0, 0.5, seed=0)
