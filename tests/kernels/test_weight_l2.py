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
