"""Per-reward gradient normalization and weighted combine (reference)."""

from __future__ import annotations

import torch


def grad_combine_reference(grads: list[torch.Tensor], weights: list[float], eps: float = 1e-8):
    norms = torch.stack([g.flatten(1).float().norm(dim=1) for g in grads])  # [N, B]
    out = torch.zeros_like(grads[0], dtype=torch.float32)
    shape = (-1,) + (1,) * (grads[0].dim() - 1)
    for i, (g, w) in enumerate(zip(grads, weights)):
        out = out + (w / (norms[i] + eps)).view(shape) * g.float()
    return out.to(grads[0].dtype), norms


def grad_combine(grads: list[torch.Tensor], weights: list[float], eps: float = 1e-8):
    return grad_combine_reference(grads, weights, eps)
