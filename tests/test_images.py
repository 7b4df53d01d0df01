"""Contract preprocessing against torchvision's own transforms."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from r0kit.errors import InputError
from r0kit.images import CLIP_MEAN, CLIP_STD, RewardContract, check_images, preprocess, preprocess_many

MODES = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC, "nearest": InterpolationMode.NEAREST}


def _torchvision(x, c: RewardContract):
    ops = []
    if c.size is not None:
        if c.crop == "center":
            ops += [T.Resize(c.size, interpolation=MODES[c.resize], antialias=c.antialias), T.CenterCrop(c.size)]
        else:
            ops += [T.Resize((c.size, c.size), interpolation=MODES[c.resize], antialias=c.antialias)]
    ops.append(T.Normalize(c.mean, c.std))
    return T.Compose(ops)(x)


@pytest.mark.parametrize("hw", [(64, 64), (37, 53), (300, 211), (224, 224), (512, 384)])
@pytest.mark.parametrize(
    "contract",
    [
        RewardContract(),
        RewardContract(size=224, resize="bilinear", antialias=True),
        RewardContract(size=32, resize="bicubic", antialias=False, mean=(0.5,) * 3, std=(0.5,) * 3),
        RewardContract(size=48, resize="bilinear", crop="none"),
        RewardContract(size=20, resize="nearest"),
        RewardContract(size=None, mean=(0.1, 0.2, 0.3), std=(1.0, 2.0, 3.0)),
    ],
    ids=["clip224", "bilinear224", "bicubic32-noaa", "stretch48", "nearest20", "native"],
)
def test_matches_torchvision(hw, contract):
    g = torch.Generator().manual_seed(hash(hw) % 2**31)
    x = torch.rand(2, 3, *hw, generator=g)
    ours = preprocess(x, contract)
    ref = _torchvision(x, contract)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_clamps_and_is_differentiable():
    x = torch.rand(1, 3, 50, 70, dtype=torch.float64)
    x[0, 0, 0, 0] = 1.0005  # within tolerance but outside [0, 1]: clamped
    x.requires_grad_(True)
    y = preprocess(x, RewardContract(size=16, resize="bilinear"))
    assert y.max() <= (1 - min(CLIP_MEAN)) / min(CLIP_STD) + 1e-6
    y.sum().backward()
    assert x.grad[0, 0, 0, 0] == 0  # the clamped pixel gets no gradient
    inner = (torch.rand(1, 3, 50, 70, dtype=torch.float64) * 0.98 + 0.01).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: preprocess(t, RewardContract(size=8, resize="bicubic")), (inner,))


def test_preprocess_many_shares_work_per_contract():
    x = torch.rand(2, 3, 40, 40)
    a, b = RewardContract(size=16), RewardContract(size=24, resize="bilinear")
    outs = preprocess_many(x, [a, b, RewardContract(size=16)])
    assert outs[0] is outs[2]
    torch.testing.assert_close(outs[1], preprocess(x, b))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"size": 0}, "positive"),
        ({"resize": "lanczos"}, "bilinear, bicubic"),
        ({"crop": "random"}, "center"),
        ({"mean": (0.5, 0.5)}, "3 values"),
        ({"std": (1.0, 0.0, 1.0)}, "positive"),
    ],
)
def test_bad_contracts(kwargs, match):
    with pytest.raises(InputError, match=match):
        RewardContract(**kwargs)


def test_check_images_accepts_valid_batch():
    check_images(torch.rand(1, 3, 4, 4))
    with pytest.raises(InputError, match="torch.Tensor"):
        check_images([[0.0]])
