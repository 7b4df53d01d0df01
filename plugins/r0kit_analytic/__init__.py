"""Weight-free differentiable rewards: they need no download and run anywhere.

They read the image at the generator's own resolution, in [0, 1], with no
normalization and no prompt. Useful for offline runs, tests, and as held-out
reward-hacking indicators (saturation, contrast).
"""

from __future__ import annotations

import torch

import r0kit
from r0kit.checks import check_number
from r0kit.errors import OptionError

RAW = r0kit.RewardContract(size=None, crop="none", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), needs_prompt=False)

_LUMA = (0.299, 0.587, 0.114)


class Colorfulness(torch.nn.Module):
    """Hasler & Süsstrunk (2003) colorfulness: ``σ_rgyb + 0.3·μ_rgyb`` on opponent channels, per image."""

    def forward(self, x: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        rg = (r - g).flatten(1)
        yb = (0.5 * (r + g) - b).flatten(1)
        std = torch.sqrt(rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False) + 1e-12)
        mean = torch.sqrt(rg.mean(dim=1) ** 2 + yb.mean(dim=1) ** 2 + 1e-12)
        return std + 0.3 * mean


class Contrast(torch.nn.Module):
    """RMS contrast: the standard deviation of luma (Rec. 601), per image."""

    def forward(self, x: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        w = x.new_tensor(_LUMA).view(1, 3, 1, 1)
        luma = (x * w).sum(dim=1).flatten(1)
        return torch.sqrt(luma.var(dim=1, unbiased=False) + 1e-12)


class TargetColor(torch.nn.Module):
    """Closeness to a target colour: minus the mean squared RGB distance, per image."""

    def __init__(self, color: str | tuple[float, float, float] | list[float] = "#ff8000"):
        super().__init__()
        self.register_buffer("color", torch.tensor(_parse_color(color)).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return -((x - self.color.to(x)) ** 2).flatten(1).mean(dim=1)


class Symmetry(torch.nn.Module):
    """Left-right mirror symmetry: minus the mean squared difference to the mirrored image."""

    def forward(self, x: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return -((x - x.flip(-1)) ** 2).flatten(1).mean(dim=1)


def _parse_color(color) -> tuple[float, float, float]:
    if isinstance(color, str):
        s = color.lstrip("#")
        if len(s) != 6:
            raise OptionError(f"color {color!r} must be '#rrggbb' or three floats in [0, 1]")
        try:
            return tuple(int(s[i : i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]
        except ValueError:
            raise OptionError(f"color {color!r} is not a hex colour like '#ff8000'") from None
    if not isinstance(color, (list, tuple)) or len(color) != 3:
        raise OptionError(f"color {color!r} must be '#rrggbb' or three floats in [0, 1]")
    vals = tuple(check_number(c, f"color {color!r}: each channel") for c in color)
    if not all(0.0 <= c <= 1.0 for c in vals):
        raise OptionError(f"color {color!r} must be three floats in [0, 1]")
    return vals  # type: ignore[return-value]


@r0kit.hookimpl
def r0kit_register_rewards(register):
    register("colorfulness", Colorfulness, contract=RAW, description="Hasler-Süsstrunk colorfulness (no weights)")
    register("contrast", Contrast, contract=RAW, description="RMS contrast of luma (no weights)")
    register("target_color", TargetColor, contract=RAW, description="closeness to a target colour (no weights)")
    register("symmetry", Symmetry, contract=RAW, description="left-right mirror symmetry (no weights)")
