from __future__ import annotations

import pytest
import torch

from r0kit.errors import InputError
from r0kit.kernels import eta_noise, eta_step, eta_step_reference

from kt_helpers import DTYPES, GPU, close, leaf, twin

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


# --------------------------------------------------------------------------- noise: one stream, full key space
def test_torch_philox_words_are_tritons():
    """The torch reference runs the same Philox as tl.randn: the integer words are bit-identical."""
    triton = pytest.importorskip("triton")
    import triton.language as tl

    from r0kit.kernels.eta_step import philox_words

    @triton.jit
    def words(out_ptr, seed, offset, N, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        c0, c1, _, _ = tl.randint4x(seed, offset + offs.to(tl.int64))
        tl.store(out_ptr + offs, c0.to(tl.uint32, bitcast=True).to(tl.int64), mask=offs < N)
        tl.store(out_ptr + N + offs, c1.to(tl.uint32, bitcast=True).to(tl.int64), mask=offs < N)

    from kt_helpers import DEVICE

    for seed, offset in ((0, 0), (7, 4_702_208), (2**63 - 1, 2**40 + 3), (123456789012345, 2**32 - 5)):
        out = torch.empty(2 * 64, dtype=torch.int64, device=DEVICE)
        words[(1,)](out, seed, offset, 64, BLOCK=64)
        c0, c1 = philox_words(seed, torch.arange(offset, offset + 64, dtype=torch.int64))
        assert torch.equal(out[:64].cpu(), c0) and torch.equal(out[64:].cpu(), c1), (seed, offset)


def test_backends_draw_the_same_noise(device):
    shape = (3, 4, 16, 16)
    for seed, offset in ((1, 0), (2**40 + 7, 3 * 2**33)):
        a = eta_noise(shape, seed, offset, device=device, backend="triton")
        b = eta_noise(shape, seed, offset, device=device, backend="torch")
        torch.testing.assert_close(a, b, atol=2e-6, rtol=2e-6)  # the words agree; log/cos to the last ulps


def test_distinct_keys_do_not_collide(torch_backend):
    """A 32-bit torch.Generator seed made (7, 4 702 208) and (23, 8 339 456) draw the same noise."""
    a = eta_noise((1, 64), 7, 4_702_208, backend="torch")
    b = eta_noise((1, 64), 23, 8_339_456, backend="torch")
    c = eta_noise((1, 64), 7 + 2**32, 4_702_208, backend="torch")  # the seed's high bits count
    d = eta_noise((1, 64), 7, 4_702_208 + 2**32, backend="torch")  # and the offset's
    for other in (b, c, d):
        assert not torch.equal(a, other)
        assert abs(torch.corrcoef(torch.stack([a.flatten(), other.flatten()]))[0, 1].item()) < 0.5


@pytest.mark.parametrize(
    "dtype, backend",
    [
        (torch.float32, "torch"), (torch.float64, "torch"), (torch.float16, "torch"), (torch.bfloat16, "torch"),
        (torch.float32, "triton"),
        pytest.param(torch.float16, "triton", marks=GPU), pytest.param(torch.bfloat16, "triton", marks=GPU),
    ],
)
def test_eta_noise_is_exactly_the_noise_the_step_adds(monkeypatch, device, dtype, backend):
    """x = 0·x̂₀ + 1·(0·ε̂ + 1·ξ) = ξ: what eta_noise returns for that dtype and backend is what the step used."""
    monkeypatch.setenv("R0KIT_KERNELS", backend)
    x0 = torch.zeros(2, 3, 8, device=device, dtype=dtype)
    x = eta_step(x0, x0, 0.0, 1.0, 1.0, seed=11, offset=5)
    xi = eta_noise(x0.shape, 11, 5, device=device, dtype=dtype, backend=backend)
    assert xi.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert torch.equal(x, xi.to(dtype))
    if dtype == torch.float64:  # drawn in fp64, not an fp32 draw widened
        assert (xi - xi.float().double()).abs().max() > 0


def test_triton_noise_of_a_float64_step_is_refused(device):
    from r0kit.kernels import KernelBackendError

    with pytest.raises(KernelBackendError, match="float64"):
        eta_noise((1, 4), 0, device=device, dtype=torch.float64, backend="triton")


# --------------------------------------------------------------------------- edges
def _run(backend_fn, x0, ep, alpha, sigma, eta, g, noise=None):
    """(x, grads) with fresh leaves; ``backend_fn`` is eta_step (seed 3, offset 9) or the reference fed ``noise``."""
    leaves = [t.detach().clone().requires_grad_(True) if isinstance(t, torch.Tensor) else t for t in (x0, ep, alpha, sigma, eta)]
    if noise is None:
        x = backend_fn(*leaves, seed=3, offset=9)
    else:
        x = backend_fn(*leaves, noise=noise)
    diff = [t for t in leaves if isinstance(t, torch.Tensor)]
    return x, torch.autograd.grad(x, diff, g)


def _same(a, e, msg, scale=1.0):
    a, e = a.detach().float().cpu(), e.detach().float().cpu()
    assert torch.equal(a.isnan(), e.isnan()), f"{msg}: NaN at {a.isnan().nonzero().tolist()} vs {e.isnan().nonzero().tolist()}"
    assert torch.equal(a == float("inf"), e == float("inf")) and torch.equal(a == -float("inf"), e == -float("inf")), msg
    fin = torch.isfinite(e)
    close(a[fin], e[fin], "reduction", torch.float32, scale=scale, msg=msg)


def test_eta_one_is_not_differentiated(triton_backend, device):
    """∂x/∂η = σ(ξ − η/√(1−η²)·ε̂) is infinite at η = 1: both backends give ∂η = 0 there, and the usual
    derivative at every other η."""
    gen = torch.Generator().manual_seed(5)
    x0, ep = torch.randn(3, 2, 6, generator=gen).to(device), torch.randn(3, 2, 6, generator=gen).to(device)
    eta = torch.tensor([1.0, 0.5, 0.0], device=device)
    g = torch.randn(3, 2, 6, generator=gen).to(device)
    xi = eta_noise(x0.shape, 3, 9, device=device, backend="triton")
    k_x, k_g = _run(eta_step, x0, ep, 0.9, 0.7, eta, g)
    r_x, r_g = _run(eta_step_reference, x0, ep, 0.9, 0.7, eta, g, noise=xi)
    _same(k_x, r_x, "x")
    for name, a, b in zip(("x0", "eps", "eta"), k_g, r_g):
        _same(a, b, f"d {name}", scale=10.0)
    assert k_g[2][0] == 0 and torch.isfinite(k_g[2]).all() and k_g[2][1] != 0


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e30, 1e-30], ids=["nan", "inf", "1e30", "1e-30"])
@pytest.mark.parametrize("where", ["x0", "eps", "sigma", "eta"])
def test_nonfinite_and_extreme_values_as_the_reference(triton_backend, device, value, where):
    gen = torch.Generator().manual_seed(6)
    t = {k: torch.randn(3, 4, 5, generator=gen).to(device) for k in ("x0", "eps")}
    t["sigma"] = torch.rand(3, generator=gen).to(device) + 0.2
    t["eta"] = torch.rand(3, generator=gen).to(device) * 0.9
    if where in ("x0", "eps"):
        t[where][1, 2, 3] = value
        t[where][2] *= value if value == value and abs(value) != float("inf") else 1.0
    else:
        t[where][1] = value if where == "sigma" or value != value else t[where][1]
    g = torch.randn(3, 4, 5, generator=gen).to(device)
    xi = eta_noise(t["x0"].shape, 3, 9, device=device, backend="triton")
    k_x, k_g = _run(eta_step, t["x0"], t["eps"], 0.8, t["sigma"], t["eta"], g)
    r_x, r_g = _run(eta_step_reference, t["x0"], t["eps"], 0.8, t["sigma"], t["eta"], g, noise=xi)
    scale = abs(value) if value == value and abs(value) != float("inf") and abs(value) > 1 else 1.0
    _same(k_x, r_x, "x", scale=scale)
    for name, a, b in zip(("x0", "eps", "sigma", "eta"), k_g, r_g):
        _same(a, b, f"d {name}", scale=10.0 * scale)


def test_double_backward_matches_the_reference(triton_backend, device):
    gen = torch.Generator().manual_seed(8)
    x0, ep = torch.randn(2, 3, 4, generator=gen).to(device), torch.randn(2, 3, 4, generator=gen).to(device)
    sig = torch.tensor([0.3, 0.8], device=device)
    eta = torch.tensor([0.2, 0.6], device=device)
    v = torch.randn(2, 3, 4, generator=gen).to(device)
    xi = eta_noise(x0.shape, 3, 9, device=device, backend="triton")
    results = []
    for fn in (lambda *a: eta_step(*a, seed=3, offset=9), lambda *a: eta_step_reference(*a, noise=xi)):
        leaves = [t.clone().requires_grad_(True) for t in (x0, ep, sig, eta)]
        x = fn(leaves[0], leaves[1], 0.9, leaves[2], leaves[3])
        first = torch.autograd.grad((x**3).sum(), leaves, create_graph=True)
        second = torch.autograd.grad(sum((f * w).sum() for f, w in zip(first[:2], (v, v))) + first[3].sum(), leaves)
        results.append(first + second)
    for a, b in zip(*results):
        close(a, b, "reduction", torch.float32, scale=50.0)
