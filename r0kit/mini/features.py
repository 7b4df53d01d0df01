"""The judge's feature network: the mini world's Inception.

FID needs features from a network that was trained on the domain but is
independent of what is optimized. Here that is a small CNN (a different
architecture from the CLIP-family rewards, trained on a different task),
trained to say how many objects of each colour and each shape a scene holds
and what kind of scene it is. Its global-average-pooled activations
(:attr:`FeatureNet.dim` numbers) are the feature space of FID and of the
diversity measure, as Inception's pool3 features are for real images.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from r0kit.mini import world as W

MAX_COUNT = 4  # counts 0..3 per colour / shape; more are clipped to 3
_KINDS = ("single", "relation", "count")


class FeatureNet(nn.Module):
    """``[B, 3, 32, 32]`` images in [0, 1] -> ``[B, dim]`` features (and heads for its training task)."""

    def __init__(self, width: int = 32, dim: int = 128) -> None:
        super().__init__()
        self.width, self.dim = width, dim

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU())

        self.body = nn.Sequential(
            block(3, width, 1), block(width, 2 * width, 2), block(2 * width, 4 * width, 2), block(4 * width, dim, 2)
        )
        self.colour_head = nn.Linear(dim, len(W.COLOURS) * MAX_COUNT)
        self.shape_head = nn.Linear(dim, len(W.SHAPES) * MAX_COUNT)
        self.kind_head = nn.Linear(dim, len(_KINDS))

    def config(self) -> dict[str, int]:
        return {"width": self.width, "dim": self.dim}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images * 2 - 1).mean((2, 3))

    def loss(self, images: torch.Tensor, labels: dict[str, torch.Tensor]) -> torch.Tensor:
        f = self(images)
        b = f.shape[0]
        return (
            F.cross_entropy(self.colour_head(f).view(b, MAX_COUNT, -1), labels["colour"])
            + F.cross_entropy(self.shape_head(f).view(b, MAX_COUNT, -1), labels["shape"])
            + F.cross_entropy(self.kind_head(f), labels["kind"])
        )


def scene_labels(scenes: Sequence[W.Scene]) -> dict[str, torch.Tensor]:
    """The feature network's targets: per-colour and per-shape object counts (0-3) and the scene kind."""
    colours, shapes = list(W.COLOURS), list(W.SHAPES)
    c = torch.zeros(len(scenes), len(colours), dtype=torch.long)
    s = torch.zeros(len(scenes), len(shapes), dtype=torch.long)
    for i, sc in enumerate(scenes):
        for o in sc.objects:
            c[i, colours.index(o.colour)] += 1
            s[i, shapes.index(o.shape)] += 1
    return {
        "colour": c.clamp_(max=MAX_COUNT - 1),
        "shape": s.clamp_(max=MAX_COUNT - 1),
        "kind": torch.tensor([_KINDS.index(sc.kind) for sc in scenes]),
    }


def load_feature_net(model: str = "r0kit-mini-judge", device: str | torch.device = "cpu") -> FeatureNet:
    """The trained feature network, resolved by :mod:`r0kit.weights` (short name or folder), frozen."""
    import json

    from r0kit.weights import load_state_dict, resolve_file

    cfg = json.loads(resolve_file(model, "config.json", what="the mini world's feature network").read_text())
    net = FeatureNet(**cfg)
    sd = load_state_dict(resolve_file(model, "features.safetensors", what="the mini world's feature network"))
    net.load_state_dict({k: v.float() for k, v in sd.items()})
    return net.to(device).eval().requires_grad_(False)
