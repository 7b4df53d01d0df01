from __future__ import annotations

import pytest
import torch

from r0kit.errors import InputError
from r0kit.kernels import weight_l2, weight_l2_reference

from kt_helpers import DTYPES, close

SHAPE_SETS = [
    [(7,)],
    [(3, 5), (64, 64), (1,), (4, 4, 4)],
    [(70001,), (33, 17), (2, 3, 5, 7)],  # the first crosses a chunk boundary
]


def _make(shapes, dtype, device, gen, *, with_grad):
    params, refs = [], []
    for i, s in enumerate(shapes):
        p = torch.randn(s, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
        if with_grad and i % 2 == 0:
            p.grad = torch.randn(s, generator=gen).to(device=device, dtype=dtype)
        params.append(p)
        refs.append(torch.randn(s, generator=gen).to(device=device, dtype=dtype))
    return params, refs


def _clone(params):
    out = []
    for p in params:
        q = p.detach().clone().requires_grad_(True)
        q.grad = None if p.grad is None else p.grad.clone()
        out.append(q)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shapes", SHAPE_SETS, ids=lambda s: f"{len(s)}tensors")
@pytest.mark.parametrize("with_grad", [False, True], ids=["grad_none", "grad_existing"])
def test_accumulate_matches_reference(triton_backend, device, dtype, shapes, with_grad):
    gen = torch.Generator().manual_seed(len(shapes))
    params, refs = _make(shapes, dtype, device, gen, with_grad=with_grad)
    twins = _clone(params)
    loss = weight_l2(params, refs, 0.03)
    r_loss = weight_l2_reference(twins, refs, 0.03)
    assert loss.dtype == torch.float32 and loss.dim() == 0 and not loss.requires_grad
    close(loss, r_loss, "reduction", dtype, msg="loss")
    for i, (p, q) in enumerate(zip(params, twins)):
        close(p.grad, q.grad, "elementwise", dtype, scale=4.0, msg=f"params[{i}].grad")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shapes", SHAPE_SETS[1:], ids=lambda s: f"{len(s)}tensors")
def test_autograd_form_matches_reference(triton_backend, device, dtype, shapes):
    gen = torch.Generator().manual_seed(11)
    params, refs = _make(shapes, dtype, device, gen, with_grad=False)
    twins = _clone(params)
    loss = weight_l2(params, refs, 0.5, accumulate_grad=False)
    r_loss = weight_l2_reference(twins, refs, 0.5, accumulate_grad=False)
    assert loss.requires_grad
    close(loss, r_loss, "reduction", dtype, msg="loss")
    (loss * -2.5).backward()  # not the last layer
    (r_loss * -2.5).backward()
    for i, (p, q) in enumerate(zip(params, twins)):
        close(p.grad, q.grad, "elementwise", dtype, scale=4.0, msg=f"params[{i}].grad")


def test_noncontiguous_param_falls_back_and_matches(triton_backend, device):
    base = torch.randn(6, 5, device=device)
    p = base.t().requires_grad_(True)  # non-contiguous leaf
    q = p.detach().clone().requires_grad_(True)
    r = torch.randn(5, 6, device=device)
    close(weight_l2([p], [r], 0.1), weight_l2_reference([q], [r], 0.1), "reduction", torch.float32)
    close(p.grad, q.grad, "elementwise", torch.float32)


@pytest.mark.parametrize(
    "params, refs, match",
    [
        ([], [], "empty"),
        ([torch.ones(3)], [], "one θ₀ per θ"),
        ([torch.ones(3)], [torch.ones(4)], "must match θ"),
        ([torch.ones(3, dtype=torch.int32)], [torch.ones(3, dtype=torch.int32)], "floating-point"),
    ],
)
def test_bad_input_errors(params, refs, match):
    with pytest.raises(InputError, match=match):
        weight_l2(params, refs, 0.1)
    with pytest.raises(InputError, match="lists of tensors"):
        weight_l2(torch.ones(3), torch.ones(3), 0.1)


# --------------------------------------------------------------------------- edges
@pytest.mark.parametrize("mode", ["auto", "torch"])
def test_float64_parameters_are_computed_in_float64(monkeypatch, mode):
    """A 1e-10 difference squared is 1e-20: fp32 rounds θ = 1 + 1e-10 to θ₀ = 1 and loses it."""
    monkeypatch.setenv("R0KIT_KERNELS", mode)
    p = torch.full((4,), 1.0 + 1e-10, dtype=torch.float64, requires_grad=True)
    r = torch.ones(4, dtype=torch.float64)
    loss = weight_l2([p], [r], 0.5)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(p.grad, torch.full((4,), 1e-10, dtype=torch.float64), rtol=1e-5, atol=0)
    torch.testing.assert_close(loss, torch.tensor(0.5 * 4 * 1e-20, dtype=torch.float64), rtol=1e-5, atol=0)
    q = p.detach().clone().requires_grad_(True)
    weight_l2([q], [r], 0.5, accumulate_grad=False).backward()
    torch.testing.assert_close(q.grad, p.grad)
    # an fp32 parameter against an fp64 reference: the difference is taken in fp64
    p32 = torch.ones(3, requires_grad=True)
    weight_l2([p32], [torch.full((3,), 1.0 - 1e-12, dtype=torch.float64)], 1.0)
    assert (p32.grad > 0).all()


def test_empty_parameter_gets_an_empty_gradient_on_both_paths(monkeypatch, device):
    for mode in ("triton", "torch"):
        monkeypatch.setenv("R0KIT_KERNELS", mode)
        p, q = torch.zeros(0, device=device, requires_grad=True), torch.ones(3, device=device, requires_grad=True)
        weight_l2([p, q], [torch.zeros(0, device=device), torch.zeros(3, device=device)], 1.0)
        assert p.grad is not None and p.grad.shape == (0,), mode
        p2, q2 = torch.zeros(0, device=device, requires_grad=True), torch.ones(3, device=device, requires_grad=True)
        weight_l2([p2, q2], [torch.zeros(0, device=device), torch.zeros(3, device=device)], 1.0, accumulate_grad=False).backward()
        assert p2.grad is not None and p2.grad.shape == (0,), mode


@pytest.mark.parametrize("mode", ["triton", "torch"])
def test_the_same_parameter_twice_is_refused(monkeypatch, device, mode):
    """On a GPU two programs would read-modify-write one .grad: a race."""
    monkeypatch.setenv("R0KIT_KERNELS", mode)
    p = torch.ones(5, device=device, requires_grad=True)
    q = torch.ones(2, device=device, requires_grad=True)
    with pytest.raises(InputError, match=r"params\[2\] is params\[0\]"):
        weight_l2([p, q, p], [torch.zeros(5, device=device), torch.zeros(2, device=device), torch.zeros(5, device=device)], 1.0)
    assert p.grad is None  # refused before anything was written


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e30, 1e-30], ids=["nan", "inf", "1e30", "1e-30"])
def test_nonfinite_and_extreme_values_as_the_reference(triton_backend, device, value):
    gen = torch.Generator().manual_seed(9)
    shapes = [(70001,), (3, 5), (4,)]
    params = [torch.randn(s, generator=gen).to(device) for s in shapes]
    refs = [torch.randn(s, generator=gen).to(device) for s in shapes]
    params[0][70000] = value
    params[1][2, 1] = value
    refs[1][2, 1] = value if value != float("inf") else value  # Inf - Inf: NaN, as the reference
    refs[2][0] = -value
    results = []
    for fn in (weight_l2, weight_l2_reference):
        ps = [p.clone().requires_grad_(True) for p in params]
        loss = fn(ps, refs, 0.25)
        results.append((loss, [p.grad for p in ps]))
        qs = [p.clone().requires_grad_(True) for p in params]
        fn(qs, refs, 0.25, accumulate_grad=False).backward(torch.tensor(-2.0, device=device))
        results.append((None, [q.grad for q in qs]))
    for a, b in ((results[0], results[2]), (results[1], results[3])):
        if a[0] is not None:
            assert a[0].isnan() == b[0].isnan() and a[0].isinf() == b[0].isinf()
            if torch.isfinite(b[0]):
                close(a[0], b[0], "reduction", torch.float32, scale=max(1.0, float(b[0].abs())))
        for ga, gb in zip(a[1], b[1]):
            assert torch.equal(ga.isnan(), gb.isnan()) and torch.equal(ga.isinf(), gb.isinf())
            fin = torch.isfinite(gb)
            close(ga[fin], gb[fin], "elementwise", torch.float32, scale=max(1.0, abs(value) if value == value else 1.0))


def test_double_backward_matches_the_reference(triton_backend, device):
    gen = torch.Generator().manual_seed(10)
    params = [torch.randn(s, generator=gen).to(device) for s in ((6,), (2, 3))]
    refs = [torch.randn(s, generator=gen).to(device) for s in ((6,), (2, 3))]
    results = []
    for fn in (weight_l2, weight_l2_reference):
        ps = [p.clone().requires_grad_(True) for p in params]
        loss = fn(ps, refs, 0.3, accumulate_grad=False)
        first = torch.autograd.grad(loss**2, ps, create_graph=True)
        second = torch.autograd.grad(sum(f.sum() for f in first), ps)
        results.append(first + second)
    for a, b in zip(*results):
        close(a, b, "reduction", torch.float32)
