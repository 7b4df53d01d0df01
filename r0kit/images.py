"""The reward input contract, and the differentiable preprocessing that serves it.

Generators hand the objective an image batch ``[B, 3, H, W]``, float, in
[0, 1]. Each reward declares in a :class:`RewardContract` what it wants
instead (size, resize mode, crop, mean and std), and the core produces it
here, once per distinct contract, so that no plugin rewrites the CLIP
preprocessing. Everything is differentiable with respect to the images.

The resize follows torchvision's ``Resize(size)`` (shortest side to ``size``,
keeping the aspect ratio) followed by ``CenterCrop(size)``, which is what the
CLIP, HPS, PickScore and ImageReward reference pipelines do.
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


@dataclass(frozen=True)
class RewardContract:
    """What a reward's input must look like.

    :param size: side of the square the reward sees; ``None`` keeps the
        generator's resolution (then ``crop`` must be ``"none"``).
    :param resize: interpolation for the shortest-side resize.
    :param antialias: low-pass when downsampling (bilinear/bicubic only), as
        PIL and torchvision's tensor resize with ``antialias=True`` do.
    :param crop: ``"center"`` crops the resized image to ``size x size``;
        ``"none"`` resizes both sides straight to ``size`` (aspect not kept).
    :param mean: per-channel mean subtracted after resizing.
    :param std: per-channel std divided by after resizing.
    :param needs_prompt: the reward reads the prompts.
    :param differentiable: gradients flow from the score to the image.
    """

    size: int | None = 224
    resize: ResizeMode = "bicubic"
    antialias: bool = True
    crop: Literal["center", "none"] = "center"
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
        if self.crop not in ("center", "none"):
            raise InputError(f"RewardContract.crop must be 'center' or 'none', got {self.crop!r}")
        for label, vals in (("mean", self.mean), ("std", self.std)):
            if len(vals) != 3:
                raise InputError(f"RewardContract.{label} needs 3 values (R, G, B), got {vals!r}")
        if any(s <= 0 for s in self.std):
            raise InputError(f"RewardContract.std must be positive, got {self.std!r}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def describe(self) -> str:
        size = "native" if self.size is None else f"{self.size}px {self.resize}{'+aa' if self.antialias else ''} crop={self.crop}"
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
    """The ``(H, W)`` after the contract's resize, before any crop."""
    if contract.size is None:
        return h, w
    s = contract.size
    if contract.crop == "none":
        return s, s
    # torchvision Resize(int): the shorter side becomes s, the other keeps the ratio (floored).
    if h <= w:
        return s, int(s * w / h)
    return int(s * h / w), s


def preprocess(images: torch.Tensor, contract: RewardContract) -> torch.Tensor:
    """Map an image batch in [0, 1] to what ``contract`` declares. Differentiable."""
    x = images.clamp(0.0, 1.0)
    if contract.size is not None:
        h, w = x.shape[-2:]
        th, tw = resized_shape(h, w, contract)
        if (th, tw) != (h, w):
            if contract.resize in ("bilinear", "bicubic"):
                x = F.interpolate(x, size=(th, tw), mode=contract.resize, align_corners=False, antialias=contract.antialias)
            else:
                x = F.interpolate(x, size=(th, tw), mode=contract.resize)
        if contract.crop == "center":
            s = contract.size
            top = int(round((th - s) / 2.0))
            left = int(round((tw - s) / 2.0))
            x = x[..., top : top + s, left : left + s]
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
