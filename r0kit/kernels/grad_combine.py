"""Per-reward gradient normalization and weighted combine.

``combined[b] = Σᵢ wᵢ · gᵢ[b] / (‖gᵢ[b]‖ + ε)`` over N gradients ``gᵢ [B, ...]``,
with the per-sample norms ``‖gᵢ[b]‖`` (over every dim but the batch) returned
as ``[N, B]`` for logging. This is the R0 combine of the rewards' image
gradients (see :meth:`r0kit.objective.Objective.backward`).

Backward, with ``cᵢ = wᵢ / (nᵢ + ε)`` and upstream ``G`` (combined) and ``Gnᵢ`` (norms)::

    ∂L/∂gᵢ = cᵢ G + kᵢ gᵢ,   kᵢ = (Gnᵢ − wᵢ ⟨G, gᵢ⟩ / (nᵢ + ε)²) / nᵢ   (kᵢ = 0 where nᵢ = 0)

Bytes (M = elements per gradient, s = element size; norms and coefficients
are O(N·B) and not counted):

* naive eager (``grad_combine_reference``): norm pass reads N·M (+ an fp32
  copy per gᵢ when s < 4), and every ``out = out + cᵢ gᵢ`` reads gᵢ and the
  running ``out`` and writes a new ``out`` (fp32): ≈ N·M·s + N·M·(s + 8) + M·(4 + s)
  for the cast, about (2s + 8)·N·M + (4 + s)·M.
* fused forward: a norm pass (read N·M·s) then one combine pass (read N·M·s,
  write M·s): **(2N + 1)·M·s**. Two passes are the minimum: every output needs
  the norms, which need every input.
* fused backward: a dot pass ⟨G, gᵢ⟩ (read (N + 1)·M·s), then one pass that
  reads G and every gᵢ once and writes every ∂gᵢ: **(3N + 2)·M·s**.

For N = 5 fp32 that is 11·M·4 forward against ~90·M for eager: ~2× fewer bytes
and 1 + 1 launches instead of ~3N.

Full pass (forward + backward) = **(5N + 3)·M·s**: at B16x3x1024² (M = 50.3M per
gradient, counted over the batch), N = 5, fp32 that is 28·M·4 = 5.64 GB, the
minimum for any implementation (the backward's ⟨G, gᵢ⟩ needs G, which exists only
after the forward). Launches per full pass: 2 forward kernels + 2 backward kernels
+ ~10 O(N·B) torch ops + 2 pointer-table copies (was 5: the table was rebuilt for
every kernel; now the forward's is saved for the backward).

H200 (4.17 TB/s copy) measured before this change: torch.compile moves those bytes
at 100% of copy (1.35 ms full), the kernels at 71% (1.91 ms). The bytes were already
minimal; the loss was the access width: the gradients are reached through a pointer
table, and a pointer loaded from memory has no alignment for Triton, so every gᵢ load
and ∂gᵢ store was a 4-byte access (see ``_table_ptr``). Prediction with 16-byte
accesses: ≥ 90% of copy, full ≈ 5.64 GB / 3.8 TB/s ≈ 1.5 ms (forward ≈ 0.58 ms,
backward ≈ 0.9 ms). Since compile already runs at the bandwidth limit on the same
minimal byte count, ≥ 1.2× compile is out of reach for this op at this size; parity
(~0.9–1.0×) is the ceiling.
"""

from __future__ import annotations

from typing import Sequence

import torch

from r0kit.errors import InputError
from r0kit.kernels._common import (
    HAS_TRITON,
    elementwise_block,
    num_warps_for,
    pointer_table,
    tl_dtype,
    triton,
    tl,
)
from r0kit.kernels._dispatch import check_float, compiler_disable, select_backend

__all__ = ["grad_combine", "grad_combine_reference", "GradCombineFunction"]


# --------------------------------------------------------------------------- reference
def grad_combine_reference(
    grads: Sequence[torch.Tensor], weights: Sequence[float], eps: float = 1e-8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch ``Σ wᵢ gᵢ / (‖gᵢ‖ + ε)``; differentiable through torch autograd.

    Computes in fp32 (fp64 for fp64 inputs) and returns ``combined`` in the
    gradients' dtype and ``norms [N, B]`` in the compute dtype.
    """
    acc_dtype = torch.float64 if grads[0].dtype == torch.float64 else torch.float32
    norms = torch.stack([g.flatten(1).to(acc_dtype).norm(dim=1) for g in grads])  # [N, B]
    shape = (-1,) + (1,) * (grads[0].dim() - 1)
    out = torch.zeros_like(grads[0], dtype=acc_dtype)
    for i, (g, w) in enumerate(zip(grads, weights)):
        out = out + (float(w) / (norms[i] + eps)).view(shape) * g.to(acc_dtype)
    return out.to(grads[0].dtype), norms


# --------------------------------------------------------------------------- kernels
if HAS_TRITON:

    @triton.jit
    def _table_ptr(tab_ptr, i, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
        """Entry ``i`` of a pointer table as a ``DTYPE*``.

        A pointer loaded from memory carries no alignment for Triton's axis analysis, so
        ``ptr + row + arange`` compiles to one 4-byte access per element (LDG.32 / STG.32)
        instead of 16-byte vectors: that, not the byte count, held the first version to
        ~70% of copy bandwidth. With ``ALIGNED`` (every address % 16 == 0, checked on the
        host) the hint restores 128-bit accesses wherever ``M`` keeps rows aligned.
        """
        p = tl.load(tab_ptr + i).to(tl.pointer_type(DTYPE))
        if ALIGNED:
            p = tl.multiple_of(p, 16)
        return p

    @triton.jit
    def _sumsq_kernel(
        g_tab_ptr,  # [N] int64: data pointers of the N gradients, each [B, M] contiguous
        other_ptr,  # [B, M] upstream gradient G (read only when DOT)
        part_ptr,  # [N, B, NC] fp32 partial sums out
        M,  # elements per sample
        B,  # batch
        NC,  # chunks per sample (= cdiv(M, BLOCK))
        DTYPE: tl.constexpr,  # element type of the gradients
        DOT: tl.constexpr,  # False: Σ gᵢ², True: Σ gᵢ·G
        ALIGNED: tl.constexpr,  # every table pointer is 16-byte aligned (checked on the host)
        BLOCK: tl.constexpr,
    ):
        pid_c = tl.program_id(0).to(tl.int64)
        pid_b = tl.program_id(1).to(tl.int64)
        pid_i = tl.program_id(2).to(tl.int64)
        g_ptr = _table_ptr(g_tab_ptr, pid_i, DTYPE, ALIGNED)
        offs = pid_c * BLOCK + tl.arange(0, BLOCK)
        mask = offs < M
        row = pid_b * M
        g = tl.load(g_ptr + row + offs, mask=mask, other=0.0).to(tl.float32)
        if DOT:
            o = tl.load(other_ptr + row + offs, mask=mask, other=0.0).to(tl.float32)
            s = tl.sum(g * o, axis=0)
        else:
            s = tl.sum(g * g, axis=0)
        tl.store(part_ptr + (pid_i * B + pid_b) * NC + pid_c, s)

    @triton.jit
    def _combine_fwd_kernel(
        g_tab_ptr,  # [N] int64: data pointers of the N gradients, each [B, M]
        coef_ptr,  # [N, B] fp32: wᵢ / (nᵢ + ε)
        out_ptr,  # [B, M] combined, gradients' dtype
        M,
        B,
        N,  # number of gradients (runtime loop bound)
        DTYPE: tl.constexpr,
        ALIGNED: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        pid_c = tl.program_id(0).to(tl.int64)
        pid_b = tl.program_id(1).to(tl.int64)
        offs = pid_c * BLOCK + tl.arange(0, BLOCK)
        mask = offs < M
        row = pid_b * M
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for i in range(N):
            g_ptr = _table_ptr(g_tab_ptr, i, DTYPE, ALIGNED)
            c = tl.load(coef_ptr + i * B + pid_b)
            g = tl.load(g_ptr + row + offs, mask=mask, other=0.0).to(tl.float32)
            acc += c * g
        tl.store(out_ptr + row + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _combine_bwd_kernel(
        g_tab_ptr,  # [N] int64: data pointers of the gradients gᵢ, each [B, M]
        dg_tab_ptr,  # [N] int64: data pointers of the outputs ∂L/∂gᵢ, each [B, M]
        go_ptr,  # [B, M] upstream gradient G of the combined output
        coef_ptr,  # [N, B] fp32 cᵢ
        k_ptr,  # [N, B] fp32 kᵢ
        M,
        B,
        N,
        DTYPE: tl.constexpr,
        ALIGNED: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        pid_c = tl.program_id(0).to(tl.int64)
        pid_b = tl.program_id(1).to(tl.int64)
        offs = pid_c * BLOCK + tl.arange(0, BLOCK)
        mask = offs < M
        row = pid_b * M
        go = tl.load(go_ptr + row + offs, mask=mask, other=0.0).to(tl.float32)
        for i in range(N):
            g_ptr = _table_ptr(g_tab_ptr, i, DTYPE, ALIGNED)
            dg_ptr = _table_ptr(dg_tab_ptr, i, DTYPE, ALIGNED)
            c = tl.load(coef_ptr + i * B + pid_b)
            k = tl.load(k_ptr + i * B + pid_b)
            g = tl.load(g_ptr + row + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(dg_ptr + row + offs, (c * go + k * g).to(DTYPE), mask=mask)


# --------------------------------------------------------------------------- host launchers
def _aligned(tensors: list[torch.Tensor]) -> bool:
    """Every data pointer 16-byte aligned (fresh allocations are; views with an offset may not be)."""
    return all(t.data_ptr() % 16 == 0 for t in tensors)


def _per_sample_sums(grads2d: list[torch.Tensor], tab: torch.Tensor, aligned: bool, other: torch.Tensor | None) -> torch.Tensor:
    """``[N, B]`` fp32: Σ gᵢ² per sample (``other`` None) or Σ gᵢ·other; ``tab`` is grads2d's pointer table."""
    g0 = grads2d[0]
    B, M = g0.shape
    N = len(grads2d)
    BLOCK = elementwise_block(M)
    NC = triton.cdiv(M, BLOCK)
    part = torch.empty((N, B, NC), dtype=torch.float32, device=g0.device)
    _sumsq_kernel[(NC, B, N)](
        tab, other if other is not None else g0, part, M, B, NC,
        DTYPE=tl_dtype(g0), DOT=other is not None, ALIGNED=aligned, BLOCK=BLOCK, num_warps=num_warps_for(BLOCK),
    )
    return part.sum(dim=2)


@compiler_disable
def grad_combine_triton_forward(grads2d: list[torch.Tensor], weights: torch.Tensor, eps: float):
    """Launch the fused forward on ``[B, M]`` contiguous gradients; returns (combined, norms, coef)."""
    g0 = grads2d[0]
    B, M = g0.shape
    N = len(grads2d)
    tab = pointer_table(grads2d, g0.device)  # one host→device copy, shared with the backward
    aligned = _aligned(grads2d)
    norms = _per_sample_sums(grads2d, tab, aligned, None).sqrt_()  # [N, B]
    coef = (weights.view(N, 1) / (norms + eps)).contiguous()  # [N, B]
    out = torch.empty_like(g0)
    BLOCK = elementwise_block(M)
    _combine_fwd_kernel[(triton.cdiv(M, BLOCK), B)](
        tab, coef, out, M, B, N, DTYPE=tl_dtype(g0), ALIGNED=aligned and out.data_ptr() % 16 == 0,
        BLOCK=BLOCK, num_warps=num_warps_for(BLOCK),
    )
    return out, norms, coef, tab


@compiler_disable
def grad_combine_triton_backward(
    grads2d: list[torch.Tensor], weights: torch.Tensor, eps: float, norms: torch.Tensor,
    coef: torch.Tensor, grad_out: torch.Tensor, grad_norms: torch.Tensor, tab: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    g0 = grads2d[0]
    B, M = g0.shape
    N = len(grads2d)
    if tab is None:
        tab = pointer_table(grads2d, g0.device)
    aligned = _aligned(grads2d) and grad_out.data_ptr() % 16 == 0
    dots = _per_sample_sums(grads2d, tab, aligned, grad_out)  # [N, B] ⟨G, gᵢ⟩
    k = _k_coefficients(weights, eps, norms, dots, grad_norms)
    dgs = [torch.empty_like(g0) for _ in range(N)]
    BLOCK = elementwise_block(M)
    _combine_bwd_kernel[(triton.cdiv(M, BLOCK), B)](
        tab, pointer_table(dgs, g0.device), grad_out, coef, k,
        M, B, N, DTYPE=tl_dtype(g0), ALIGNED=aligned and _aligned(dgs), BLOCK=BLOCK, num_warps=num_warps_for(BLOCK),
    )
    return dgs


def _k_coefficients(weights, eps, norms, dots, grad_norms):
    """``kᵢ = (Gnᵢ − wᵢ ⟨G, gᵢ⟩ / (nᵢ + ε)²) / nᵢ``, 0 where ``nᵢ = 0`` (then gᵢ = 0 too)."""
    N = norms.shape[0]
    d = norms + eps
    k = (grad_norms.to(norms.dtype) - weights.view(N, 1).to(norms.dtype) * dots / (d * d)) / norms.clamp_min(
        torch.finfo(norms.dtype).tiny
    )
    return torch.where(norms > 0, k, torch.zeros_like(k)).contiguous()


def _grad_combine_torch_backward(grads, weights, eps, norms, grad_out, grad_norms):
    """Closed-form backward in torch (float64-capable): the same maths as the kernel."""
    acc = norms.dtype
    N = len(grads)
    shape = (-1,) + (1,) * (grads[0].dim() - 1)
    go = grad_out.to(acc)
    dots = torch.stack([(go * g.to(acc)).flatten(1).sum(1) for g in grads])
    coef = weights.view(N, 1).to(acc) / (norms + eps)
    k = _k_coefficients(weights, eps, norms, dots, grad_norms)
    return [(coef[i].view(shape) * go + k[i].view(shape) * grads[i].to(acc)).to(grads[i].dtype) for i in range(N)]


# --------------------------------------------------------------------------- autograd
class GradCombineFunction(torch.autograd.Function):
    """``(weights [N], eps, backend, *grads) -> (combined, norms [N, B])`` with a fused backward."""

    @staticmethod
    def forward(ctx, weights: torch.Tensor, eps: float, backend: str, *grads: torch.Tensor):
        if backend == "triton":
            g2d = [g.reshape(g.shape[0], -1).contiguous() for g in grads]
            out, norms, coef, tab = grad_combine_triton_forward(g2d, weights, eps)
            out = out.view(grads[0].shape)
            ctx.save_for_backward(weights, norms, coef, tab, *g2d)
        else:
            with torch.no_grad():
                out, norms = grad_combine_reference(grads, weights.tolist(), eps)
            ctx.save_for_backward(weights, norms, *grads)
        ctx.eps, ctx.backend, ctx.shape = eps, backend, grads[0].shape
        return out, norms

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor, grad_norms: torch.Tensor):
        if ctx.backend == "triton":
            weights, norms, coef, tab, *g2d = ctx.saved_tensors
            go = grad_out.reshape(g2d[0].shape).contiguous()
            dgs = grad_combine_triton_backward(g2d, weights, ctx.eps, norms, coef, go, grad_norms.contiguous(), tab)
            dgs = [d.view(ctx.shape) for d in dgs]
        else:
            weights, norms, *grads = ctx.saved_tensors
            dgs = _grad_combine_torch_backward(grads, weights, ctx.eps, norms, grad_out, grad_norms)
        return (None, None, None, *dgs)


# --------------------------------------------------------------------------- public
def _check(grads, weights, eps) -> None:
    if isinstance(grads, torch.Tensor) or not isinstance(grads, (list, tuple)) or not grads:
        raise InputError("grad_combine: grads must be a non-empty list of tensors [B, ...], one per reward")
    if len(weights) != len(grads):
        raise InputError(f"grad_combine: got {len(grads)} gradient(s) but {len(weights)} weight(s); pass one weight per gradient")
    for i, g in enumerate(grads):
        check_float(f"grad_combine: grads[{i}]", g)
        if g.dim() < 1 or g.shape[0] == 0:
            raise InputError(f"grad_combine: grads[{i}] must have a batch dim first, got shape {tuple(g.shape)}")
        if g.shape != grads[0].shape or g.dtype != grads[0].dtype or g.device != grads[0].device:
            raise InputError(
                f"grad_combine: grads[{i}] is {tuple(g.shape)} {g.dtype} on {g.device} but grads[0] is "
                f"{tuple(grads[0].shape)} {grads[0].dtype} on {grads[0].device}; all gradients must match"
            )
    if not eps >= 0:
        raise InputError(f"grad_combine: eps must be >= 0, got {eps}")


def grad_combine(
    grads: list[torch.Tensor], weights: list[float], eps: float = 1e-8
) -> tuple[torch.Tensor, torch.Tensor]:
    """``Σ wᵢ gᵢ / (‖gᵢ‖ + ε)`` per sample, and the norms ``[N, B]``.

    :param grads: N tensors ``[B, ...]`` of one shape, dtype and device.
    :param weights: N floats.
    :param eps: added to each norm.
    :returns: ``combined`` (shape and dtype of each ``gᵢ``) and ``norms [N, B]``
        (fp32; fp64 for fp64 inputs). Differentiable with respect to every ``gᵢ``.
    """
    _check(grads, weights, eps)
    backend = select_backend("grad_combine", grads)
    g0 = grads[0]
    acc = torch.float64 if g0.dtype == torch.float64 else torch.float32
    w = torch.tensor([float(x) for x in weights], dtype=acc, device=g0.device)
    return GradCombineFunction.apply(w, float(eps), backend, *grads)
