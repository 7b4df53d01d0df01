"""The MLP score head of ImageReward and of the LAION aesthetic predictor v2.

Both upstreams use the same stack (state-dict keys ``layers.0 .. layers.7``)::

    Linear(d, 1024) Dropout(0.2) Linear(1024, 128) Dropout(0.2)
    Linear(128, 64) Dropout(0.1) Linear(64, 16) Linear(16, 1)

with no nonlinearity between the layers (the ReLUs are commented out upstream).
"""

from __future__ import annotations

import torch
from torch import nn

from r0kit.errors import WeightsError


class ScoreMLP(nn.Module):
    def __init__(self, input_size: int = 768) -> None:
        super().__init__()
        self.input_size = int(input_size)
        self.layers = nn.Sequential(
            nn.Linear(self.input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], *, what: str, source: str = "") -> ScoreMLP:
        """Build the head sized from ``sd`` (keys ``layers.*``) and load it strictly."""
        if "layers.0.weight" not in sd:
            raise WeightsError(
                f"{what}: checkpoint {source!r} has no MLP head (layers.0.weight); keys start with "
                f"{', '.join(list(sd)[:5])}"
            )
        head = cls(sd["layers.0.weight"].shape[1])
        result = head.load_state_dict(sd, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise WeightsError(
                f"{what}: checkpoint {source!r} is not the score MLP; missing {result.missing_keys}, "
                f"unexpected {result.unexpected_keys}"
            )
        return head
