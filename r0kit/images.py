"""The reward input contract, and the differentiable preprocessing that serves it.

Generators hand the objective an image batch ``[B, 3, H, W]``, float, in
[0, 1]. Each reward declares in a :class:`RewardContract` what it wants
instead (size, resize mode, crop, mean and std), and the core produces it
here, once per distinct contract, so that no plugin rewrites the CLIP
preprocessing. Everything is differentiable with respect to the images.

Three ways to reach the square, each the one an upstream scorer uses:

* ``crop="center"``: torchvision's ``Resize(size)`` (shortest side to ``size``,
  the other ``int(size · long / short)``) then a center crop. The crop's first
  row/column is ``round((t − size) / 2)`` for torchvision's ``CenterCrop``
  (open_clip, ImageReward) and ``floor((t − size) / 2)`` for transformers'
  ``CLIPImageProcessor`` (PickScore, the aesthetic predictor): ``crop_offset``.
* ``crop="pad"``: hpsv2's ``ResizeMaxSize`` (``hpsv2/src/open_clip/transform.py``):
  longest side to ``size``, the other ``round(side · size / longest)``, then
  zero padding in **pixel space, before normalization** (a padded pixel is
  black, ``(0 − mean) / std`` after it), ``floor(pad / 2)`` on the top/left.
* ``crop="none"``: both sides straight to ``size`` (aspect not kept).

Upstream pipelines that resize a PIL image (torchvision on PIL, transformers)
round every resized pixel to uint8; r0kit resizes the float image (it must be
differentiable), so it matches them to about one uint8 step (1/255).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from r0kit.errors import InputError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ResizeMode = Literal["bilinear", "bicubic", "nearest", "area"]
CropMode = Literal["center", "pad", "none"]
CropOffset = Literal["round", "floor"]


@dataclass(frozen=True)
class RewardContract:
    """What a reward's input must look like.

    :param size: side of the square the reward sees; ``None`` keeps the
        generator's resolution (then ``crop`` must be ``"none"``).
    :param resize: interpolation of the resize.
    :param antialias: low-pass when downsampling (bilinear/bicubic only), as
        PIL and torchvision's tensor resize with ``antialias=True`` do.
    :param crop: how the square is reached (see the module docstring):
        ``"center"`` resizes the shortest side to ``size`` and center-crops;
        ``"pad"`` resizes the longest side to ``size`` and pads with black
        (letterbox, as hpsv2); ``"none"`` resizes both sides to ``size``.
    :param crop_offset: where a center crop starts when the excess ``t − size``
        is odd: ``"round"`` (``round((t − size) / 2)``, torchvision's
        ``CenterCrop``) or ``"floor"`` (transformers' ``CLIPImageProcessor``).
    :param mean: per-channel mean subtracted after resizing.
    :param std: per-channel std divided by after resizing.
    :param needs_prompt: the reward reads the prompts.
    :param differentiable: gradients flow from the score to the image.
    """

    size: int | None = 224
    resize: ResizeMode = "bicubic"
    antialias: bool = True
    crop: CropMode = "center"
    crop_offset: CropOffset = "round"
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    needs_prompt: bool = True
    differentiable: bool = True

    def __post_init__(self) -> None:
        if self.size is not None and (not isinstance(self.size, int) or self.size <= 0):
            raise InputError(f"RewardContract.size must be a positive int or None, got {self.size!r}")
        if self.size is None and self.crop != "none":
            object.__setattr__(self, "crop", "none")
        if self.resize not in ("bilinear", "bicubic", "nearest", "area"):
            raise InputError(
                f"RewardContract.resize must be one of bilinear, bicubic, nearest, area; got {self.resize!r}"
            )
        if self.crop not in ("center", "pad", "none"):
            raise InputError(f"RewardContract.crop must be 'center', 'pad' or 'none', got {self.crop!r}")
        if self.crop_offset not in ("round", "floor"):
            raise InputError(f"RewardContract.crop_offset must be 'round' or 'floor', got {self.crop_offset!r}")
        for label, vals in (("mean", self.mean), ("std", self.std)):
            if len(vals) != 3:
                raise InputError(f"RewardContract.{label} needs 3 values (R, G, B), got {vals!r}")
        if any(s <= 0 for s in self.std):
            raise InputError(f"RewardContract.std must be positive, got {self.std!r}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def describe(self) -> str:
        crop = f"{self.crop}" + ("/floor" if self.crop == "center" and self.crop_offset == "floor" else "")
        size = "native" if self.size is None else f"{self.size}px {self.resize}{'+aa' if self.antialias else ''} crop={crop}"
        return f"{size} mean={self.mean} std={self.std} prompt={'yes' if self.needs_prompt else 'no'} grad={'yes' if self.differentiable else 'no'}"


def check_images(images: torch.Tensor, *, name: str = "images", tol: float = 1e-3) -> None:
    """Raise :class:`InputError` unless ``images`` is a finite float ``[B, 3, H, W]`` batch in [0, 1]."""
    if not isinstance(images, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise InputError(f"{name} must have shape [B, 3, H, W], got {tuple(images.shape)}")
    if images.shape[1] != 3:
        raise InputError(
            f"{name} must have 3 channels (RGB) in dim 1, got {images.shape[1]} in shape {tuple(images.shape)}; "
            "convert grayscale/RGBA to RGB first"
        )
    if not images.is_floating_point():
        raise InputError(f"{name} must be a float tensor in [0, 1], got {images.dtype}; divide uint8 images by 255")
    if images.shape[0] == 0 or images.numel() == 0:
        raise InputError(f"{name} holds no pixels (shape {tuple(images.shape)}); pass at least one image of at least 1x1")
    with torch.no_grad():
        if not torch.isfinite(images).all():
            raise InputError(f"{name} contains NaN or Inf")
        lo, hi = images.min().item(), images.max().item()
    if lo < -tol or hi > 1 + tol:
        raise InputError(
            f"{name} must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; "
            "map [-1, 1] images with (x + 1) / 2"
        )


def resized_shape(h: int, w: int, contract: RewardContract) -> tuple[int, int]:
    """The ``(H, W)`` after the contract's resize, before any crop or padding."""
    if contract.size is None:
        return h, w
    s = contract.size
    if contract.crop == "none":
        return s, s
    if contract.crop == "pad":
        # hpsv2 ResizeMaxSize: scale = s / longest; each side round(side · scale) (Python's round).
        scale = s / float(max(h, w))
        return round(h * scale), round(w * scale)
    # torchvision Resize(int): the shorter side becomes s, the other keeps the ratio (floored).
    if h <= w:
        return s, int(s * w / h)
    return int(s * h / w), s


def placement(h: int, w: int, contract: RewardContract) -> tuple[int, int]:
    """``(top, left)`` of the ``size × size`` output in the resized ``h × w`` image.

    Positive for a center crop (the first kept row/column), negative or zero for padding
    (minus the rows/columns of black added on the top/left); ``(0, 0)`` without either.
    """
    if contract.size is None or contract.crop == "none":
        return 0, 0
    s = contract.size
    if contract.crop == "pad":
        return -((s - h) // 2), -((s - w) // 2)
    if contract.crop_offset == "floor":  # transformers: int((t - s) / 2.0)
        return (h - s) // 2, (w - s) // 2
    return int(round((h - s) / 2.0)), int(round((w - s) / 2.0))  # torchvision CenterCrop


def preprocess(images: torch.Tensor, contract: RewardContract) -> torch.Tensor:
    """Map an image batch in [0, 1] to what ``contract`` declares. Differentiable.

    ``images [B, 3, H, W]`` float -> ``[B, 3, size, size]`` (``[B, 3, H, W]`` for ``size=None``)
    in the images' dtype: clamp to [0, 1], resize, crop or pad, then ``(x − mean) / std``.
    NaN pixels stay NaN (``torch.clamp``) and reach the outputs whose resize taps them.
    """
    x = images.clamp(0.0, 1.0)
    if contract.size is not None:
        h, w = x.shape[-2:]
        th, tw = resized_shape(h, w, contract)
        if (th, tw) != (h, w):
            if contract.resize in ("bilinear", "bicubic"):
                x = F.interpolate(x, size=(th, tw), mode=contract.resize, align_corners=False, antialias=contract.antialias)
            else:
                x = F.interpolate(x, size=(th, tw), mode=contract.resize)
        s = contract.size
        top, left = placement(th, tw, contract)
        if contract.crop == "center":
            x = x[..., top : top + s, left : left + s]
        elif contract.crop == "pad" and (th, tw) != (s, s):
            # zero in pixel space, before the normalization (hpsv2 pads the [0, 1] tensor with fill=0)
            x = F.pad(x, (-left, s - tw + left, -top, s - th + top), value=0.0)
    mean = torch.tensor(contract.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(contract.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def preprocess_many(images: torch.Tensor, contracts: Sequence[RewardContract]) -> list[torch.Tensor]:
    """Preprocess once per distinct contract and return one tensor per contract, in order.

    Runs through :func:`r0kit.kernels.preprocess_fused`: on CUDA with Triton, one fused
    kernel serves every contract from one read of the image (and its backward sums into one
    image gradient); elsewhere, or with ``R0KIT_KERNELS=torch``, :func:`preprocess` per
    distinct contract, which stays the readable reference.
    """
    from r0kit.kernels.preprocess import preprocess_fused

    return preprocess_fused(images, list(contracts))
