"""The ``pixel`` generator: the image itself is the parameter.

The pixels are stored as logits at ``resolution`` (optionally lower than the
output size) and mapped through a sigmoid, so the image stays in [0, 1]
without clamping, then upsampled bilinearly to ``height x width``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

import r0kit
from r0kit.checks import check_number
from r0kit.errors import OptionError


class PixelGenerator:
    def __init__(
        self,
        height: int = 64,
        width: int = 64,
        resolution: int | None = None,
        init: Literal["noise", "gray"] = "noise",
        init_scale: float = 0.5,
        device: str = "cpu",
    ):
        for label, v in (("height", height), ("width", width)):
            if not isinstance(v, int) or v < 2:
                raise OptionError(f"pixel: {label} must be an int >= 2, got {v!r}")
        if resolution is not None and (not isinstance(resolution, int) or resolution < 2):
            raise OptionError(f"pixel: resolution must be an int >= 2 or omitted, got {resolution!r}")
        if init not in ("noise", "gray"):
            raise OptionError(f"pixel: init must be 'noise' or 'gray', got {init!r}")
        self.height, self.width = height, width
        scale = (resolution / max(height, width)) if resolution else 1.0
        self.param_shape = (3, max(2, round(height * scale)), max(2, round(width * scale)))
        self.init, self.init_scale = init, check_number(init_scale, "pixel: init_scale", at_least=0)
        self.device = torch.device(device)
        self.logits: torch.Tensor | None = None
        self.logits_init: torch.Tensor | None = None

    def prepare(self, prompts: list[str], seed: int) -> None:
        # Sample i draws from seed + i, so a prompt's start does not depend on its batch.
        shape = (len(prompts),) + self.param_shape
        if self.init == "noise":
            z = torch.stack(
                [torch.randn(self.param_shape, generator=torch.Generator().manual_seed(int(seed) + i)) for i in range(len(prompts))]
            ) * self.init_scale
        else:
            z = torch.zeros(shape)
        self.logits = z.to(self.device).requires_grad_(True)
        self.logits_init = self.logits.detach().clone()

    def parameters(self) -> list[torch.Tensor]:
        self._need_prepare()
        return [self.logits]  # type: ignore[list-item]

    def sample(self, prompts: list[str], generator: torch.Generator | None = None) -> r0kit.Sample:
        self._need_prepare()
        assert self.logits is not None and self.logits_init is not None
        if len(prompts) != self.logits.shape[0]:
            raise r0kit.InputError(f"pixel: prepared for {self.logits.shape[0]} prompt(s), got {len(prompts)}")
        x = torch.sigmoid(self.logits)
        if x.shape[-2:] != (self.height, self.width):
            x = F.interpolate(x, size=(self.height, self.width), mode="bilinear", align_corners=False).clamp(0, 1)
        return r0kit.Sample(images=x, state={"param": self.logits, "param_init": self.logits_init})

    def _need_prepare(self) -> None:
        if self.logits is None:
            raise r0kit.InputError("pixel: call prepare(prompts, seed) before sample()")


@r0kit.hookimpl
def r0kit_register_generators(register):
    register("pixel", PixelGenerator, description="direct image parameterization (sigmoid pixels, optional low-res)")
