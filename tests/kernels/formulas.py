"""The five ops' formulas, written apart from r0kit (float64, straight from the math).

Each returns the values and the input gradients for given upstream gradients. They do not
call r0kit's references: the hypothesis suites check kernel == reference == these.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

F64 = torch.float64


def grad_combine(grads, weights, eps, go, gn):
    """``Σ wᵢ gᵢ/(‖gᵢ‖ + ε)`` and ``‖gᵢ‖`` per sample; gradients by autograd of the float64 formula
    (``vector_norm``'s subgradient at 0 is 0)."""
    gs = [g.detach().to(F64).requires_grad_(True) for g in grads]
    B = gs[0].shape[0]
    norms = torch.stack([torch.linalg.vector_norm(g.reshape(B, -1), dim=1) for g in gs])
    shape = (B,) + (1,) * (gs[0].dim() - 1)
    out = sum(w * g / (n + eps).view(shape) for w, g, n in zip(weights, gs, norms))
    pairs = [(o, u.to(F64)) for o, u in ((out, go), (norms, gn)) if u is not None]
    dgs = torch.autograd.grad([o for o, _ in pairs], gs, [u for _, u in pairs], allow_unused=True)
    return out.detach(), norms.detach(), [torch.zeros_like(g) if d is None else d for g, d in zip(gs, dgs)]


def weight_l2(params, refs, lam):
    """``λ Σ (θ − θ₀)²`` and ``∂/∂θ = 2λ(θ − θ₀)``."""
    ds = [p.detach().to(F64) - r.detach().to(F64) for p, r in zip(params, refs)]
    loss = lam * sum((d * d).sum() for d in ds)
    return loss, [2 * lam * d for d in ds]


def eta_step(x0, eps, alpha, sigma, eta, xi, g):
    """``α x̂₀ + σ(√(1−η²) ε̂ + η ξ)`` and its closed-form gradients for upstream ``g``; ``∂η := 0`` at η = 1."""
    B = x0.shape[0]
    shape = (B,) + (1,) * (x0.dim() - 1)

    def per(v):
        if isinstance(v, torch.Tensor):
            return v.detach().to(F64).reshape(-1).expand(B).reshape(shape)
        return torch.full(shape, float(v), dtype=F64, device=x0.device)

    a, s, e = per(alpha), per(sigma), per(eta)
    x0, eps, xi, g = (t.detach().to(F64) for t in (x0, eps, xi, g))
    root = torch.sqrt(1 - e * e)
    x = a * x0 + s * (root * eps + e * xi)
    dims = tuple(range(1, x0.dim()))
    d_eta = (s * g * (xi - e / root * eps)).sum(dims)
    d_eta = torch.where(e.reshape(-1) < 1, d_eta, torch.zeros_like(d_eta))
    grads = {
        "x0": a * g,
        "eps": s * root * g,
        "alpha": (g * x0).sum(dims),
        "sigma": (g * (root * eps + e * xi)).sum(dims),
        "eta": d_eta,
    }
    return x, grads


def cosine_head(a, t, scale, gy, eps=1e-12):
    """``scale · ⟨a, t⟩ / (max(‖a‖, eps)·max(‖t‖, eps))``; gradients by autograd of the float64 formula."""
    a = a.detach().to(F64).requires_grad_(True)
    t = t.detach().to(F64).requires_grad_(True)
    na = torch.linalg.vector_norm(a, dim=-1).clamp_min(eps)
    nt = torch.linalg.vector_norm(t, dim=-1).clamp_min(eps)
    y = scale * (a * t).sum(-1) / (na * nt)
    da, dt = torch.autograd.grad(y, (a, t), gy.to(F64))
    return y.detach(), da, dt


_MODES = {"bilinear": TF.InterpolationMode.BILINEAR, "bicubic": TF.InterpolationMode.BICUBIC, "nearest": TF.InterpolationMode.NEAREST}


def preprocess(x, contract):
    """torchvision's functional transforms, in float64: resize (shortest side + center crop with the
    contract's offset rule, longest side + black padding, or both sides), then normalize."""
    x = x.to(F64).clamp(0.0, 1.0)
    s = contract.size
    if s is not None:
        h, w = x.shape[-2:]

        def resize(t, size):
            if tuple(size) == tuple(t.shape[-2:]):
                return t
            if contract.resize == "area":
                return F.interpolate(t, size=tuple(size), mode="area")
            aa = contract.antialias and contract.resize in ("bilinear", "bicubic")
            return TF.resize(t, list(size), interpolation=_MODES[contract.resize], antialias=aa)

        if contract.crop == "none":
            x = resize(x, (s, s))
        elif contract.crop == "pad":
            scale = s / float(max(h, w))
            nh, nw = round(h * scale), round(w * scale)
            x = resize(x, (nh, nw))
            ph, pw = s - nh, s - nw
            x = TF.pad(x, [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2], fill=0.0)
        else:
            nh, nw = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
            x = resize(x, (nh, nw))
            if contract.crop_offset == "round":
                x = TF.center_crop(x, [s, s])
            else:
                x = x[..., (nh - s) // 2 : (nh - s) // 2 + s, (nw - s) // 2 : (nw - s) // 2 + s]
    mean = torch.tensor(contract.mean, dtype=F64, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(contract.std, dtype=F64, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def preprocess_grad(x, contracts, ups):
    """The image gradient of ``Σ_k ⟨preprocess(x, c_k), ups_k⟩`` by autograd of the float64 formula."""
    x = x.detach().to(F64).requires_grad_(True)
    outs = [preprocess(x, c) for c in contracts]
    (g,) = torch.autograd.grad(outs, x, [u.to(F64) for u in ups])
    return [o.detach() for o in outs], g


def finite_max(t: torch.Tensor) -> float:
    t = t.detach().double()
    fin = t[torch.isfinite(t)]
    return float(fin.abs().max()) if fin.numel() else 0.0


__all__ = ["grad_combine", "weight_l2", "eta_step", "cosine_head", "preprocess", "preprocess_grad", "finite_max", "math"]
