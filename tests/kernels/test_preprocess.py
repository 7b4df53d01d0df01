from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from r0kit.errors import InputError
from r0kit.images import IMAGENET_MEAN, IMAGENET_STD, RewardContract, preprocess, preprocess_many
from r0kit.kernels import preprocess_fused
from r0kit.kernels.preprocess import axis_matrix, axis_support, contract_matrices

from kt_helpers import DTYPES, close

CLIP = RewardContract(size=24)  # bicubic + antialias, center crop, CLIP mean/std
BILINEAR_NONE = RewardContract(size=16, resize="bilinear", antialias=False, crop="none", mean=(0.5,) * 3, std=(0.5,) * 3)
BILINEAR_AA = RewardContract(size=20, resize="bilinear", antialias=True, mean=IMAGENET_MEAN, std=IMAGENET_STD)
UPSAMPLE = RewardContract(size=72, resize="bicubic", antialias=True)
NEAREST = RewardContract(size=18, resize="nearest", crop="none")
AREA = RewardContract(size=12, resize="area")
NATIVE = RewardContract(size=None, mean=(0.1, 0.2, 0.3), std=(0.9, 0.8, 0.7))
LETTERBOX = RewardContract(size=24, crop="pad")  # hpsv2: longest side, zero padding
FLOOR = RewardContract(size=20, crop_offset="floor")  # transformers' CLIP processor

CASES = [
    ((2, 3, 37, 53), [CLIP, BILINEAR_NONE, LETTERBOX]),
    ((1, 3, 64, 64), [CLIP, BILINEAR_AA, NEAREST, AREA, CLIP]),  # power of two; a repeated contract
    ((2, 3, 50, 31), [UPSAMPLE, NATIVE, LETTERBOX, FLOOR]),  # portrait; upsampling; no resize at all
]


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "nearest", "area"])
@pytest.mark.parametrize("aa", [False, True])
@pytest.mark.parametrize("hw", [(37, 53, 11, 16), (16, 16, 40, 40), (64, 48, 24, 18)], ids=str)
def test_axis_matrices_reproduce_interpolate(mode, aa, hw):
    if aa and mode in ("nearest", "area"):
        pytest.skip("antialias applies to bilinear/bicubic only")
    H, W, h, w = hw
    x = torch.rand(2, 3, H, W, dtype=torch.float64)
    kw = {"align_corners": False, "antialias": aa} if mode in ("bilinear", "bicubic") else {}
    expected = F.interpolate(x, size=(h, w), mode=mode, **kw)
    got = axis_matrix(H, h, mode, aa) @ x @ axis_matrix(W, w, mode, aa).T
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(
    "contract", [CLIP, BILINEAR_NONE, UPSAMPLE, NEAREST, AREA, NATIVE, LETTERBOX, FLOOR], ids=lambda c: c.describe()[:48]
)
def test_contract_matrices_reproduce_preprocess(contract):
    x = torch.rand(2, 3, 45, 29, dtype=torch.float64)
    a_h, a_w = contract_matrices(45, 29, contract)
    mean = torch.tensor(contract.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(contract.std, dtype=torch.float64).view(1, 3, 1, 1)
    torch.testing.assert_close((a_h @ x @ a_w.T - mean) / std, preprocess(x, contract), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("contract", [CLIP, BILINEAR_NONE, UPSAMPLE, NEAREST, AREA, LETTERBOX, FLOOR,
                                      RewardContract(size=17, resize="bicubic", antialias=False, crop="none")],
                         ids=lambda c: c.describe()[:48])
def test_windows_predict_where_interpolate_puts_nan(contract):
    """A NaN pixel reaches the outputs in the product of the two axes' windows, weight-0 taps included."""
    gen = torch.Generator().manual_seed(3)
    s_h, s_w = contract_matrices(45, 29, contract, support=True)
    for _ in range(4):
        x = torch.rand(1, 3, 45, 29, generator=gen, dtype=torch.float64)
        x.view(-1)[torch.randint(0, x.numel(), (3,), generator=gen)] = float("nan")
        want = preprocess(x, contract).isnan()
        got = (s_h.double() @ x.isnan().double() @ s_w.double().T) > 0
        assert torch.equal(got, want)


def test_axis_support_holds_the_zero_weight_taps():
    """Bilinear upsampling hits input pixels exactly (weight 0 on the neighbour), which still NaNs the output."""
    a, s = axis_matrix(16, 40, "bilinear", False), axis_support(16, 40, "bilinear", False)
    assert ((a != 0) <= s).all() and (s & (a == 0)).any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, contracts", CASES, ids=["odd", "pow2_five", "portrait_up_native"])
def test_forward_and_backward_match_reference(triton_backend, device, dtype, shape, contracts):
    gen = torch.Generator().manual_seed(shape[2])
    base = torch.rand(shape, generator=gen) * 1.2 - 0.1  # some pixels outside [0, 1] exercise the clamp
    x = base.to(device=device, dtype=dtype).requires_grad_(True)
    # The reference sees the same (rounded) values as the kernel, so the clamp masks agree.
    rx = base.to(dtype).float().to(device).requires_grad_(True)

    outs = preprocess_fused(x, contracts)
    refs = [preprocess(rx, c) for c in contracts]
    assert len(outs) == len(contracts)
    for c, o, r in zip(contracts, outs, refs):
        assert o.shape == r.shape and o.dtype == dtype, c
        close(o, r, "preprocess", dtype, msg=f"forward {c.describe()}")

    ups = [(torch.randn(r.shape, generator=gen) * 2.0).to(device) for r in refs]
    torch.autograd.backward(list(outs), [u.to(dtype) for u in ups])
    torch.autograd.backward(refs, ups)
    close(x.grad, rx.grad, "preprocess", dtype, scale=10.0, msg="d images")


def test_backward_through_one_of_several_outputs(triton_backend, device):
    x = torch.rand(1, 3, 40, 40, device=device, requires_grad=True)
    rx = x.detach().clone().requires_grad_(True)
    y = preprocess_fused(x, [CLIP, BILINEAR_NONE])[1]
    r = preprocess(rx, BILINEAR_NONE)
    y.sum().backward()
    r.sum().backward()
    close(x.grad, rx.grad, "preprocess", torch.float32)


def test_preprocess_many_reference_path_is_unchanged(torch_backend):
    x = torch.rand(2, 3, 30, 44)
    outs = preprocess_many(x, [CLIP, BILINEAR_NONE, CLIP])
    assert outs[0] is outs[2]
    torch.testing.assert_close(outs[0], preprocess(x, CLIP), atol=0, rtol=0)
    torch.testing.assert_close(outs[1], preprocess(x, BILINEAR_NONE), atol=0, rtol=0)
    assert preprocess_many(x, []) == []


def test_preprocess_many_uses_the_kernel_when_forced(triton_backend, device):
    x = torch.rand(1, 3, 33, 41, device=device)
    outs = preprocess_many(x, [CLIP, CLIP])
    assert outs[0] is outs[1]
    close(outs[0], preprocess(x, CLIP), "preprocess", torch.float32)


def test_bad_input_errors():
    with pytest.raises(InputError, match=r"\[B, 3, H, W\]"):
        preprocess_fused(torch.rand(3, 8, 8), [CLIP])
    with pytest.raises(InputError, match="255"):
        preprocess_fused(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), [CLIP])
    with pytest.raises(InputError, match="wrap"):
        preprocess_fused(torch.rand(1, 3, 8, 8), CLIP)
    with pytest.raises(InputError, match="not a RewardContract"):
        preprocess_fused(torch.rand(1, 3, 8, 8), ["clip"])


# --------------------------------------------------------------------------- edges (issue: kernels must match the reference)
EDGE_CONTRACTS = [CLIP, BILINEAR_NONE, LETTERBOX, NEAREST]


def _same_nonfinite(actual, expected, msg):
    """Same NaN, +Inf and -Inf positions; the finite entries close."""
    a, e = actual.detach().float().cpu(), expected.detach().float().cpu()
    for name, f in (("NaN", torch.isnan), ("+Inf", lambda t: t == float("inf")), ("-Inf", lambda t: t == float("-inf"))):
        assert torch.equal(f(a), f(e)), f"{msg}: {name} at {int(f(a).sum())} places, the reference at {int(f(e).sum())}"
    fin = torch.isfinite(e)
    torch.testing.assert_close(a[fin], e[fin], atol=2e-4, rtol=1e-4, msg=msg)


def test_clamp_gradient_at_zero_and_one_is_torchs(triton_backend, device):
    """Decoded images are clamped, so pixels exactly 0 or 1 are common: the kernel's clamp backward must be
    torch.clamp's there, or the two backends give different image gradients."""
    x = torch.rand(1, 3, 40, 40)
    x[0, :, :10] = 0.0
    x[0, :, 30:] = 1.0
    x = x.to(device).requires_grad_(True)
    rx = x.detach().clone().requires_grad_(True)
    outs = preprocess_fused(x, EDGE_CONTRACTS)
    torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
    torch.autograd.backward([preprocess(rx, c) for c in EDGE_CONTRACTS], [torch.ones_like(o) for o in outs])
    close(x.grad, rx.grad, "preprocess", torch.float32, scale=10.0)
    edge = (rx.detach() == 0) | (rx.detach() == 1)
    assert torch.equal(x.grad[edge] != 0, rx.grad[edge] != 0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_nonfinite_pixels_as_the_reference(triton_backend, device, bad):
    """NaN must reach exactly the outputs whose resize window holds it (Inf is clamped to 1, -Inf to 0)."""
    x = torch.rand(2, 3, 45, 61)
    x[1, 0, 7, 11] = x[1, 2, 40, 60] = x[0, 1, 0, 30] = bad
    x = x.to(device).requires_grad_(True)
    rx = x.detach().clone().requires_grad_(True)
    outs = preprocess_fused(x, EDGE_CONTRACTS)
    refs = [preprocess(rx, c) for c in EDGE_CONTRACTS]
    for c, o, r in zip(EDGE_CONTRACTS, outs, refs):
        _same_nonfinite(o, r, f"forward {c.describe()}")
    if bad != bad:
        assert any(o.isnan().any() for o in outs)  # the NaN is not hidden
    ups = [torch.randn_like(r) for r in refs]
    torch.autograd.backward(outs, ups)
    torch.autograd.backward(refs, ups)
    _same_nonfinite(x.grad, rx.grad, "d images")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_nonfinite_upstream_gradient_spreads_as_the_reference(triton_backend, device, bad):
    x = torch.rand(1, 3, 45, 61, device=device, requires_grad=True)
    rx = x.detach().clone().requires_grad_(True)
    outs = preprocess_fused(x, EDGE_CONTRACTS)
    refs = [preprocess(rx, c) for c in EDGE_CONTRACTS]
    ups = [torch.randn_like(r) for r in refs]
    ups[0][0, 1, 3, 5] = bad
    ups[2][0, 2, 20, 0] = bad  # the letterbox: a padded position reads no pixel
    ups[2][0, 0, 12, 12] = -bad
    torch.autograd.backward(outs, ups)
    torch.autograd.backward(refs, ups)
    _same_nonfinite(x.grad, rx.grad, "d images")


def test_double_backward_goes_through_the_reference(triton_backend, device):
    x = torch.rand(1, 3, 30, 41, device=device, requires_grad=True)
    rx = x.detach().clone().requires_grad_(True)
    v = torch.randn(1, 3, 30, 41, device=device)
    grads = []
    for xx, outs in ((x, preprocess_fused(x, [CLIP, LETTERBOX])), (rx, [preprocess(rx, c) for c in (CLIP, LETTERBOX)])):
        loss = sum((o**2).sum() for o in outs)
        (g,) = torch.autograd.grad(loss, xx, create_graph=True)
        (gg,) = torch.autograd.grad((g * v).sum(), xx)
        grads.append((g, gg))
    close(grads[0][0], grads[1][0], "preprocess", torch.float32, scale=10.0)
    close(grads[0][1], grads[1][1], "preprocess", torch.float32, scale=10.0)
    assert grads[1][1].abs().sum() > 0  # the Hessian-vector product is not trivially zero


def test_contracts_with_the_same_preprocessing_share_one_output(triton_backend, device):
    """PickScore and the aesthetic predictor differ only in needs_prompt: one plan entry, one output."""
    import dataclasses

    a = RewardContract(size=16, crop_offset="floor")
    b = dataclasses.replace(a, needs_prompt=False)
    x = torch.rand(1, 3, 30, 41, device=device)
    for outs in (preprocess_fused(x, [a, b, CLIP]), preprocess_many(x, [a, b])):
        assert outs[0] is outs[1]
