"""The cosine-similarity reward head: ``scale · ⟨a/‖a‖, t/‖t‖⟩`` per prompt.

``a`` is the image embedding ``[B, D]``, ``t`` the text embedding ``[B, D]``
(one row per prompt); norms are clamped below at ``eps`` as
:func:`torch.nn.functional.normalize` does. The norms and the dot product are
float64 sums on both paths (an fp32 embedding of 1e20 squares to Inf); NaN
propagates (the clamp keeps it, as ``clamp_min`` does), and the gradient at a
norm exactly ``eps`` is ``torch.clamp_min``'s.

Backward, with ``u = a/‖a‖``, ``v = t/‖t‖``, ``c = ⟨u, v⟩`` and upstream ``G [B]``::

    ∂L/∂a = G·scale·(v − c·u)/‖a‖      (the projection term drops where ‖a‖ ≤ eps)
    ∂L/∂t = G·scale·(u − c·v)/‖t‖

Bytes (s = element size; the ``[B]`` vectors are not counted):

* naive eager: two norms (read 2·B·D), two divides (read 2·B·D, write 2·B·D),
  the product (read 2·B·D, write B·D) and the sum (read B·D): ≈ 11·B·D·s
  forward; autograd replays most of it backward (≈ 14·B·D·s).
* fused: forward reads a and t once, **2·B·D·s**; backward reads a and t and
  writes ∂a and ∂t, **4·B·D·s** (it keeps ‖a‖, ‖t‖ and c from the forward).
"""

from __future__ import annotations

import torch

from r0kit.errors import InputError
from r0kit.kernels._common import (
    HAS_TRITON,
    backward_through_reference,
    creating_graph,
    clamp_passes_gradient_at_bounds,
    compile_friendly,
    next_pow2,
    triton,
    tl,
)
from r0kit.kernels._dispatch import check_float, interpreter_enabled, select_backend

__all__ = ["cosine_head", "cosine_head_reference", "CosineHeadFunction"]

EPS = 1e-12


# --------------------------------------------------------------------------- reference
def cosine_head_reference(img_emb: torch.Tensor, txt_emb: torch.Tensor, scale: float, eps: float = EPS) -> torch.Tensor:
    """Pure torch: ``scale · ⟨img/‖img‖, txt/‖txt‖⟩`` per row, in fp32 (fp64 for fp64), cast back.

    The norms are float64 sums of squares, clamped below at ``eps``; differentiable (twice too).
    """
    acc = torch.float64 if img_emb.dtype == torch.float64 else torch.float32
    a, t = img_emb.to(acc), txt_emb.to(acc)
    na = img_emb.to(torch.float64).norm(dim=-1, keepdim=True).clamp_min(eps).to(acc)
    nt = txt_emb.to(torch.float64).norm(dim=-1, keepdim=True).clamp_min(eps).to(acc)
    return (scale * ((a / na) * (t / nt)).sum(-1)).to(img_emb.dtype)


# --------------------------------------------------------------------------- kernels
if HAS_TRITON:

    @triton.jit
    def _cosine_fwd_kernel(
        a_ptr,  # [B, D] image embeddings
        t_ptr,  # [B, D] text embeddings
        y_ptr,  # [B] scores out, input dtype
        stats_ptr,  # [3, B] fp64 out: ‖a‖, ‖t‖, c = ⟨a, t⟩/(max(‖a‖, eps)·max(‖t‖, eps))
        B,
        D,
        scale,
        eps,
        BLOCK_D: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        base = row * D
        sa = tl.zeros((), dtype=tl.float64)
        st = tl.zeros((), dtype=tl.float64)
        sat = tl.zeros((), dtype=tl.float64)
        for d0 in range(0, D, BLOCK_D):
            offs = d0 + tl.arange(0, BLOCK_D)
            mask = offs < D
            a = tl.load(a_ptr + base + offs, mask=mask, other=0.0).to(tl.float64)
            t = tl.load(t_ptr + base + offs, mask=mask, other=0.0).to(tl.float64)
            sa += tl.sum(a * a, axis=0)
            st += tl.sum(t * t, axis=0)
            sat += tl.sum(a * t, axis=0)
        na = tl.sqrt(sa)
        nt = tl.sqrt(st)
        # clamp_min(eps) that keeps NaN (tl.maximum would return eps for a NaN norm)
        c = sat / (tl.where(na < eps, eps, na) * tl.where(nt < eps, eps, nt))
        tl.store(y_ptr + row, (scale * c).to(y_ptr.dtype.element_ty))
        tl.store(stats_ptr + row, na)
        tl.store(stats_ptr + B + row, nt)
        tl.store(stats_ptr + 2 * B + row, c)

    @triton.jit
    def _cosine_bwd_kernel(
        a_ptr,  # [B, D]
        t_ptr,  # [B, D]
        gy_ptr,  # [B] upstream gradient
        stats_ptr,  # [3, B] fp64 from the forward
        da_ptr,  # [B, D] out
        dt_ptr,  # [B, D] out
        B,
        D,
        scale,
        eps,
        INCLUSIVE: tl.constexpr,  # clamp_min passes the gradient at a norm equal to eps (torch's convention)
        BLOCK_D: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        base = row * D
        g = tl.load(gy_ptr + row).to(tl.float32) * scale
        na = tl.load(stats_ptr + row)
        nt = tl.load(stats_ptr + B + row)
        c = tl.load(stats_ptr + 2 * B + row)
        ra = (1.0 / tl.where(na < eps, eps, na)).to(tl.float32)
        rt = (1.0 / tl.where(nt < eps, eps, nt)).to(tl.float32)
        # the projection term exists only where the clamp passes the norm's gradient
        if INCLUSIVE:
            ca = tl.where(na >= eps, c, 0.0).to(tl.float32)
            ct = tl.where(nt >= eps, c, 0.0).to(tl.float32)
        else:
            ca = tl.where(na > eps, c, 0.0).to(tl.float32)
            ct = tl.where(nt > eps, c, 0.0).to(tl.float32)
        ca = tl.where(na != na, na.to(tl.float32), ca)  # a NaN norm: NaN gradients, as the reference
        ct = tl.where(nt != nt, nt.to(tl.float32), ct)
        for d0 in range(0, D, BLOCK_D):
            offs = d0 + tl.arange(0, BLOCK_D)
            mask = offs < D
            a = tl.load(a_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
            t = tl.load(t_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
            u = a * ra
            v = t * rt
            tl.store(da_ptr + base + offs, (g * ra * (v - ca * u)).to(da_ptr.dtype.element_ty), mask=mask)
            tl.store(dt_ptr + base + offs, (g * rt * (u - ct * v)).to(dt_ptr.dtype.element_ty), mask=mask)


def _block_d(D: int) -> int:
    return max(16, min(next_pow2(D), 1 << 14 if interpreter_enabled() else 4096))


def _fake_forward(a, t, scale):
    return a.new_empty((a.shape[0],)), a.new_empty((3, a.shape[0]), dtype=torch.float64)


@compile_friendly("cosine_head_fwd", _fake_forward)
def cosine_head_triton_forward(a: torch.Tensor, t: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    B, D = a.shape
    y = torch.empty(B, dtype=a.dtype, device=a.device)
    stats = torch.empty((3, B), dtype=torch.float64, device=a.device)
    BLOCK_D = _block_d(D)
    _cosine_fwd_kernel[(B,)](a, t, y, stats, B, D, float(scale), EPS, BLOCK_D=BLOCK_D,
                             num_warps=4 if BLOCK_D <= 1024 else 8)
    return y, stats


def _fake_backward(a, t, gy, stats, scale):
    return torch.empty_like(a), torch.empty_like(t)


@compile_friendly("cosine_head_bwd", _fake_backward)
def cosine_head_triton_backward(
    a: torch.Tensor, t: torch.Tensor, gy: torch.Tensor, stats: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    B, D = a.shape
    da = torch.empty_like(a)
    dt = torch.empty_like(t)
    BLOCK_D = _block_d(D)
    _cosine_bwd_kernel[(B,)](a, t, gy, stats, da, dt, B, D, float(scale), EPS,
                             INCLUSIVE=clamp_passes_gradient_at_bounds(), BLOCK_D=BLOCK_D,
                             num_warps=4 if BLOCK_D <= 1024 else 8)
    return da, dt


# --------------------------------------------------------------------------- autograd
class CosineHeadFunction(torch.autograd.Function):
    """Triton forward/backward of :func:`cosine_head` (contiguous ``[B, D]`` inputs).

    Double backward (``create_graph=True``) goes through :func:`cosine_head_reference`.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, t: torch.Tensor, scale: float):
        ac, tc = a.contiguous(), t.contiguous()
        y, stats = cosine_head_triton_forward(ac, tc, scale)
        ctx.save_for_backward(a, t, stats)
        ctx.scale = scale
        return y

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        a, t, stats = ctx.saved_tensors
        if creating_graph():  # create_graph: a differentiable backward, through the reference
            ref = lambda x, y: cosine_head_reference(x, y, ctx.scale)  # noqa: E731
            return (*backward_through_reference(ref, (a, t), (gy,)), None)
        da, dt = cosine_head_triton_backward(a.contiguous(), t.contiguous(), gy.contiguous(), stats, ctx.scale)
        return da, dt, None


# --------------------------------------------------------------------------- public
def cosine_head(img_emb: torch.Tensor, txt_emb: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``scale · cos(img_emb[b], txt_emb[b])`` for each row ``b``: ``[B, D], [B, D] -> [B]``.

    Norms are clamped below at 1e-12 (``F.normalize``'s eps), so a zero embedding scores 0.
    Differentiable with respect to both embeddings (twice too). Runs the Triton kernel or
    the torch reference as :mod:`r0kit.kernels._dispatch` decides; the result is in the
    embeddings' dtype, computed in fp32 (fp64 for fp64) with float64 norms.

    :raises InputError: for non-float, non-2-D or mismatched embeddings.
    """
    check_float("cosine_head: img_emb", img_emb)
    check_float("cosine_head: txt_emb", txt_emb)
    if img_emb.dim() != 2 or txt_emb.shape != img_emb.shape:
        raise InputError(
            f"cosine_head: img_emb and txt_emb must both be [B, D], got {tuple(img_emb.shape)} and "
            f"{tuple(txt_emb.shape)}; repeat the text embedding per image with .expand(B, -1) first"
        )
    if img_emb.dtype != txt_emb.dtype or img_emb.device != txt_emb.device:
        raise InputError(
            f"cosine_head: img_emb is {img_emb.dtype} on {img_emb.device} but txt_emb is {txt_emb.dtype} on "
            f"{txt_emb.device}; cast/move one to match"
        )
    if select_backend("cosine_head", (img_emb, txt_emb), img_emb.numel()) == "torch" or img_emb.numel() == 0:
        return cosine_head_reference(img_emb, txt_emb, scale)
    return CosineHeadFunction.apply(img_emb, txt_emb, float(scale))
