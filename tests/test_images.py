"""Contract preprocessing against torchvision's own transforms."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF

from r0kit.errors import InputError
from r0kit.images import CLIP_MEAN, CLIP_STD, RewardContract, check_images, preprocess, preprocess_many

MODES = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC, "nearest": InterpolationMode.NEAREST}


def _torchvision(x, c: RewardContract):
    ops = []
    if c.size is not None:
        s, mode = c.size, MODES[c.resize]
        if c.crop == "center" and c.crop_offset == "round":
            ops += [T.Resize(s, interpolation=mode, antialias=c.antialias), T.CenterCrop(s)]
        elif c.crop == "center":  # transformers' CLIPImageProcessor: the crop starts at int((t - s) / 2.0)
            def floor_crop(t):
                h, w = t.shape[-2:]
                return TF.crop(t, int((h - s) / 2.0), int((w - s) / 2.0), s, s)

            ops += [T.Resize(s, interpolation=mode, antialias=c.antialias), floor_crop]
        elif c.crop == "pad":  # hpsv2's ResizeMaxSize(s, fill=0), before Normalize
            def letterbox(t):
                h, w = t.shape[-2:]
                scale = s / float(max(h, w))
                nh, nw = (round(d * scale) for d in (h, w))
                t = TF.resize(t, [nh, nw], interpolation=mode, antialias=c.antialias)
                ph, pw = s - nh, s - nw
                return TF.pad(t, [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2], fill=0)

            ops.append(letterbox)
        else:
            ops += [T.Resize((s, s), interpolation=mode, antialias=c.antialias)]
    ops.append(T.Normalize(c.mean, c.std))
    return T.Compose(ops)(x)


@pytest.mark.parametrize("hw", [(64, 64), (37, 53), (300, 211), (224, 224), (512, 384), (512, 519), (224, 160)])
@pytest.mark.parametrize(
    "contract",
    [
        RewardContract(),
        RewardContract(size=224, resize="bilinear", antialias=True),
        RewardContract(size=32, resize="bicubic", antialias=False, mean=(0.5,) * 3, std=(0.5,) * 3),
        RewardContract(size=48, resize="bilinear", crop="none"),
        RewardContract(size=20, resize="nearest"),
        RewardContract(size=None, mean=(0.1, 0.2, 0.3), std=(1.0, 2.0, 3.0)),
        RewardContract(crop="pad"),
        RewardContract(size=40, resize="bilinear", crop="pad", mean=(0.5,) * 3, std=(0.25,) * 3),
        RewardContract(crop_offset="floor"),
        RewardContract(size=33, resize="bilinear", crop_offset="floor"),
    ],
    ids=["clip224", "bilinear224", "bicubic32-noaa", "stretch48", "nearest20", "native", "letterbox224", "letterbox40",
         "floor224", "floor33"],
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
        ({"crop_offset": "ceil"}, "round"),
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


def test_letterbox_pads_black_before_normalizing():
    """hpsv2 pads the [0, 1] tensor with 0: a padded pixel is (0 - mean) / std, whatever the image."""
    c = RewardContract(size=16, resize="bilinear", crop="pad")
    x = torch.rand(1, 3, 8, 16, dtype=torch.float64) * 0.5 + 0.5
    y = preprocess(x, c)
    pad = (-torch.tensor(c.mean, dtype=torch.float64) / torch.tensor(c.std, dtype=torch.float64)).view(3, 1, 1)
    assert y.shape == (1, 3, 16, 16)
    torch.testing.assert_close(y[0, :, :4], pad.expand(3, 4, 16))  # 8 rows of padding: 4 on top, 4 below
    torch.testing.assert_close(y[0, :, 12:], pad.expand(3, 4, 16))
    assert (y[0, :, 4:12] > pad).all()  # the image itself: brighter than black
