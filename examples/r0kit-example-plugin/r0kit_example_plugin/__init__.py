"""An example third-party r0kit plugin: the ``vignette`` reward.

It is found through the ``r0kit`` entry point declared in its
``pyproject.toml``; nothing in r0kit names it.
"""

from __future__ import annotations

import math

import torch

import r0kit

__version__ = "0.1.0"

#: The vignette reward reads 96x96 images with values in [0, 1] (mean 0, std 1),
#: and no prompt. The core resizes and center-crops to that before calling it.
CONTRACT = r0kit.RewardContract(
    size=96,
    resize="bilinear",
    crop="center",
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    needs_prompt=False,
    differentiable=True,
)

_LUMA = (0.299, 0.587, 0.114)


class Vignette(torch.nn.Module):
    """Vignetting: the mean luma inside a soft disk minus the mean luma outside it.

    The disk is centred, with ``radius`` a fraction of the half-diagonal
    (1 reaches the corners) and an edge ``softness`` wide. Scores lie in
    [-1, 1]; a bright centre with dark corners scores high.
    """

    def __init__(self, radius: float = 0.6, softness: float = 0.1) -> None:
        super().__init__()
        if not 0.0 < float(radius) < 1.0:
            raise r0kit.OptionError(f"vignette: radius must be in (0, 1), got {radius!r}")
        if not float(softness) > 0.0:
            raise r0kit.OptionError(f"vignette: softness must be > 0, got {softness!r}")
        n = CONTRACT.size
        assert n is not None
        v, u = torch.meshgrid(torch.linspace(-1, 1, n), torch.linspace(-1, 1, n), indexing="ij")
        r = torch.sqrt(u**2 + v**2) / math.sqrt(2.0)
        outside = torch.sigmoid((r - float(radius)) / float(softness))
        self.register_buffer("outside", outside / outside.sum(), persistent=False)
        self.register_buffer("inside", (1 - outside) / (1 - outside).sum(), persistent=False)

    def forward(self, x: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        luma = (x * x.new_tensor(_LUMA).view(1, 3, 1, 1)).sum(dim=1)  # [B, H, W]
        inside = (luma * self.inside.to(luma)).sum(dim=(1, 2))
        outside = (luma * self.outside.to(luma)).sum(dim=(1, 2))
        return inside - outside


@r0kit.hookimpl
def r0kit_register_rewards(register):
    register("vignette", Vignette, contract=CONTRACT, description="bright centre, dark corners (no weights)")
