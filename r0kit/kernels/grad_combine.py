"""Per-reward gradient normalization and weighted combine.

``combined[b] = Σᵢ wᵢ · gᵢ[b] / (‖gᵢ[b]‖ + ε)`` over N gradients ``gᵢ [B, ...]``,
with the per-sample norms ``‖gᵢ[b]‖`` (over every dim but the batch) returned
as ``[N, B]`` for logging. This is the R0 combine of the rewards' image
gradients (see :meth:`r0kit.objective.Objective.backward`). A 1-D ``[B]``
gradient is one number per sample: its norm is ``|gᵢ[b]|``.

Backward, with ``cᵢ = wᵢ / (nᵢ + ε)`` and upstream ``G`` (combined) and ``Gnᵢ`` (norms)::

    ∂L/∂gᵢ = cᵢ G + kᵢ gᵢ,   kᵢ = (Gnᵢ − wᵢ ⟨G, gᵢ⟩ / (nᵢ + ε)²) / nᵢ   (kᵢ = 0 where nᵢ = 0,
                                                                       NaN there if ε = 0: 0/0)

The sums ``Σ gᵢ²`` and ``⟨G, gᵢ⟩`` are taken in float64 on both paths: in fp32
a gradient of 1e20 squares to Inf (its norm would be Inf and its direction
lost) and one of 1e-25 squares to 0 (its direction, ``gᵢ/nᵢ``, lost too).

Bytes (M = elements per gradient, s = element size; norms and coefficients
are O(N·B) and not counted):

* naive eager (fp32): norm pass reads N·M (+ an fp32 copy per gᵢ when s < 4),
  and every ``out = out + cᵢ gᵢ`` reads gᵢ and the running ``out`` and writes a
  new ``out`` (fp32): ≈ (2s + 8)·N·M + (4 + s)·M.
* fused forward: a norm pass (read N·M·s) then one combine pass (read N·M·s,
  write M·s): **(2N + 1)·M·s**. Two passes are the minimum: every output needs
  the norms, which need every input.
* fused backward: a dot pass ⟨G, gᵢ⟩ (read (N + 1)·M·s), then one pass that
  reads G and every gᵢ once and writes every ∂gᵢ: **(3N + 2)·M·s**.

Full pass (forward + backward) = **(5N + 3)·M·s**: at B16x3x1024² (M = 50.3M per
gradient, counted over the batch), N = 5, fp32 that is 28·M·4 = 5.64 GB, the
minimum for any implementation (the backward's ⟨G, gᵢ⟩ needs G, which exists only
after the forward). H200, before the host-path rework: torch.compile moved those
bytes at 100% of copy (1.35 ms full), the kernels at 71% (1.91 ms; the 4-byte
accesses of pointers loaded from a table, since fixed by hinting 16-byte
alignment). Since compile runs at the bandwidth limit on the same minimal byte
count, parity (~0.9–1.0×) is this op's ceiling at large sizes.

Host work per call (the real sizes are launch-bound: B1x3x512² is 3 MB): the up
to 8 gradients, their weights and ε go to the kernels as scalar arguments (no
pointer table, no host-to-device copy, no sync); the forward is 2 launches (the
norm pass, then a combine pass that also finishes the norms and writes them), the
backward 2 (dots, update); no other torch op runs. Allocations: the outputs, one
[N, B, NC] float64 partial-sum buffer per pass, and the ∂gᵢ as views of one buffer.
"""

from __future__ import annotations

from typing import Sequence

import torch

from r0kit.errors import InputError
from r0kit.kernels._common import (
    HAS_TRITON,
    cdiv,
    MAX_PTR_ARGS,
    backward_through_reference,
    creating_graph,
    compile_friendly,
    elementwise_block,
    next_pow2,
    num_warps_for,
    pointer_args,
    tl_dtype,
    triton,
    tl,
)
from r0kit.kernels._dispatch import check_float, select_backend

if HAS_TRITON:
    from r0kit.kernels._common import pick_ptr

__all__ = ["grad_combine", "grad_combine_reference", "GradCombineFunction"]


# --------------------------------------------------------------------------- reference
def grad_combine_reference(
    grads: Sequence[torch.Tensor], weights: Sequence[float], eps: float = 1e-8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch ``Σ wᵢ gᵢ / (‖gᵢ‖ + ε)``; differentiable through torch autograd (twice too).

    Norms from float64 sums of squares; the combine in fp32 (fp64 for fp64 inputs). Returns
    ``combined`` in the gradients' dtype and ``norms [N, B]`` in the compute dtype.
    """
    acc_dtype = torch.float64 if grads[0].dtype == torch.float64 else torch.float32
    B = grads[0].shape[0]
    norms64 = torch.stack([g.reshape(B, -1).to(torch.float64).norm(dim=1) for g in grads])  # [N, B]
    shape = (-1,) + (1,) * (grads[0].dim() - 1)
    out = None
    for i, (g, w) in enumerate(zip(grads, weights)):
        term = (float(w) / (norms64[i] + eps)).to(acc_dtype).view(shape) * g.to(acc_dtype)
        out = term if out is None else out + term
    return out.to(grads[0].dtype), norms64.to(acc_dtype)


# --------------------------------------------------------------------------- kernels
if HAS_TRITON:

    @triton.jit
    def _pick_f(i, w0, w1, w2, w3, w4, w5, w6, w7):
        """The ``i``-th of eight float arguments."""
        w = tl.where(i == 1, w1, w0)
        w = tl.where(i == 2, w2, w)
        w = tl.where(i == 3, w3, w)
        w = tl.where(i == 4, w4, w)
        w = tl.where(i == 5, w5, w)
        w = tl.where(i == 6, w6, w)
        return tl.where(i == 7, w7, w)

    @triton.jit
    def _grad_ptr(i, g0, g1, g2, g3, g4, g5, g6, g7, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
        """Gradient ``i``'s data pointer; with ``ALIGNED`` (checked on the host) hinted 16-byte aligned, so that
        ``ptr + row + arange`` compiles to 128-bit accesses (a pointer Triton cannot prove aligned gets 4-byte ones:
        that held the first version to ~70% of copy bandwidth)."""
        p = pick_ptr(i, g0, g1, g2, g3, g4, g5, g6, g7, DTYPE)
        if ALIGNED:
            p = tl.multiple_of(p, 16)
        return p

    @triton.jit
    def _sum(part_ptr, row, NC, NCB: tl.constexpr):
        """float64 ``Σ_c part[row, c]`` over the NC partial sums of one (gradient, sample)."""
        s = tl.zeros((NCB,), dtype=tl.float64)
        for c0 in range(0, NC, NCB):
            offs = c0 + tl.arange(0, NCB)
            s += tl.load(part_ptr + row * NC + offs, mask=offs < NC, other=0.0)
        return tl.sum(s, axis=0)

    @triton.jit
    def _sumsq_kernel(
        g0, g1, g2, g3, g4, g5, g6, g7,  # int64 data pointers of gradients i0 .. i0+7, each [B, M] contiguous
        other_ptr,  # [B, M] upstream gradient G (read only when DOT)
        part_ptr,  # [N, B, NC] fp64 out: partial sums per span of SPAN elements
        i0,  # index of g0 among all N gradients
        M,  # elements per sample
        B,
        NC,  # spans per sample
        SPAN,  # elements per span (a multiple of BLOCK)
        DTYPE: tl.constexpr,
        DOT: tl.constexpr,  # False: Σ gᵢ², True: Σ gᵢ·G
        ALIGNED: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        pid_c = tl.program_id(0).to(tl.int64)
        pid_b = tl.program_id(1).to(tl.int64)
        pid_i = tl.program_id(2).to(tl.int64)
        g_ptr = _grad_ptr(pid_i, g0, g1, g2, g3, g4, g5, g6, g7, DTYPE, ALIGNED)
        row = pid_b * M
        acc = tl.zeros((BLOCK,), dtype=tl.float64)  # reduced once, after the span
        for s in range(0, SPAN, BLOCK):
            offs = pid_c * SPAN + s + tl.arange(0, BLOCK)
            mask = offs < M
            g = tl.load(g_ptr + row + offs, mask=mask, other=0.0).to(tl.float64)
            if DOT:
                o = tl.load(other_ptr + row + offs, mask=mask, other=0.0).to(tl.float64)
                acc += g * o
            else:
                acc += g * g
        tl.store(part_ptr + ((i0 + pid_i) * B + pid_b) * NC + pid_c, tl.sum(acc, axis=0))

    @triton.jit
    def _combine_fwd_kernel(
        g0, g1, g2, g3, g4, g5, g6, g7,  # int64 data pointers of gradients i0 .. i0+n-1, each [B, M]
        w0, w1, w2, w3, w4, w5, w6, w7,  # their weights
        part_ptr,  # [N, B, NC] fp64 partial Σ gᵢ² from _sumsq_kernel
        out_ptr,  # [B, M] combined, gradients' dtype
        norms_ptr,  # [N, B] fp32 out: ‖gᵢ[b]‖ (written by the first span's program)
        i0,
        n,  # gradients in this launch (≤ 8)
        M,
        B,
        NC,
        eps,
        DTYPE: tl.constexpr,
        ACCUMULATE: tl.constexpr,  # add to out (a later group of 8 gradients)
        ALIGNED: tl.constexpr,
        BLOCK: tl.constexpr,
        NCB: tl.constexpr,
    ):
        pid_c = tl.program_id(0).to(tl.int64)
        pid_b = tl.program_id(1).to(tl.int64)
        offs = pid_c * BLOCK + tl.arange(0, BLOCK)
        mask = offs < M
        row = pid_b * M
        if ACCUMULATE:
            acc = tl.load(out_ptr + row + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for i in range(n):
            g_ptr = _grad_ptr(i, g0, g1, g2, g3, g4, g5, g6, g7, DTYPE, ALIGNED)
            w = _pick_f(i, w0, w1, w2, w3, w4, w5, w6, w7).to(tl.float64)
            norm = tl.sqrt(_sum(part_ptr, (i0 + i) * B + pid_b, NC, NCB))
            tl.store(norms_ptr + (i0 + i) * B + pid_b, norm.to(tl.float32), mask=pid_c == 0)
            c = (w / (norm + eps)).to(tl.float32)
            g = tl.load(g_ptr + row + offs, mask=mask, other=0.0).to(tl.float32)
            acc += c * g
        tl.store(out_ptr + row + offs, acc.to(DTYPE), mask=mask)

    @triton.jit
    def _combine_bwd_kernel(
        g0, g1, g2, g3, g4, g5, g6, g7,  # int64 data pointers of gradients i0 .. i0+n-1, each [B, M]
        w0, w1, w2, w3, w4, w5, w6, w7,
        part_ptr,  # [N, B, NC] fp64 partial Σ gᵢ² (the forward's)
        dpart_ptr,  # [N, B, NC] fp64 partial ⟨G, gᵢ⟩
        go_ptr,  # [B, M] upstream gradient G of the combined output
        gn_ptr,  # [N, B] upstream gradient of the norms (read when HAS_GN)
        dg_ptr,  # [N, B, M] out: ∂L/∂gᵢ
        i0,
        n,
        M,
        B,
        NC,
        eps,
        DTYPE: tl.constexpr,
        HAS_GN: tl.constexpr,
        ALIGNED: tl.constexpr,
        BLOCK: tl.constexpr,
        NCB: tl.constexpr,
    ):
        pid_c = tl.program_id(0).to(tl.int64)
        pid_b = tl.program_id(1).to(tl.int64)
        offs = pid_c * BLOCK + tl.arange(0, BLOCK)
        mask = offs < M
        row = pid_b * M
        go = tl.load(go_ptr + row + offs, mask=mask, other=0.0).to(tl.float32)
        for i in range(n):
            g_ptr = _grad_ptr(i, g0, g1, g2, g3, g4, g5, g6, g7, DTYPE, ALIGNED)
            w = _pick_f(i, w0, w1, w2, w3, w4, w5, w6, w7).to(tl.float64)
            r = (i0 + i) * B + pid_b
            norm = tl.sqrt(_sum(part_ptr, r, NC, NCB))
            dot = _sum(dpart_ptr, r, NC, NCB)
            d = norm + eps
            if HAS_GN:
                gn = tl.load(gn_ptr + r).to(tl.float64)
            else:
                gn = 0.0
            # kᵢ = ∂L/∂nᵢ / nᵢ, ∂L/∂nᵢ = Gnᵢ − wᵢ⟨G, gᵢ⟩/(nᵢ + ε)². Where nᵢ = 0 (so gᵢ = 0) torch's norm
            # backward gives 0 · ∂L/∂nᵢ: 0, or NaN when ∂L/∂nᵢ is not finite (ε = 0: 0/0)
            dldn = gn - w * dot / (d * d)
            k = tl.where(norm > 0, dldn / tl.where(norm > 0, norm, 1.0), dldn * 0.0)
            c = (w / d).to(tl.float32)
            g = tl.load(g_ptr + row + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(dg_ptr + (i0 + i) * B * M + row + offs, (c * go + k.to(tl.float32) * g).to(DTYPE), mask=mask)


# --------------------------------------------------------------------------- host launchers
def _groups(g2d: list[torch.Tensor]):
    """``(i0, group, pointer args, aligned)`` per launch of up to 8 gradients; ``aligned``: every data
    pointer is 16-byte aligned (fresh allocations are; views with an offset may not be)."""
    for i0 in range(0, len(g2d), MAX_PTR_ARGS):
        group = g2d[i0 : i0 + MAX_PTR_ARGS]
        ptrs = pointer_args(group)
        yield i0, group, ptrs, all(p % 16 == 0 for p in ptrs)


def _spans(M: int, B: int, N: int, block: int) -> tuple[int, int]:
    """``(NC, SPAN)``: each (gradient, sample) is summed in NC spans of SPAN elements.

    Enough programs to fill a GPU (≈ 2048 over the N·B rows), but few spans, so that the pass
    that reads them back (every program of the next kernel sums its row's NC values) stays cheap.
    """
    blocks = cdiv(M, block)
    nc = max(1, min(blocks, cdiv(2048, B * N), 256))
    per = cdiv(blocks, nc)
    return cdiv(blocks, per), per * block


def _launch_sums(g2d: list[torch.Tensor], other: torch.Tensor | None, part: torch.Tensor, NC: int, SPAN: int, BLOCK: int):
    B, M = g2d[0].shape
    other_aligned = other is None or other.data_ptr() % 16 == 0
    for i0, group, ptrs, aligned in _groups(g2d):
        _sumsq_kernel[(NC, B, len(group))](
            *ptrs, other if other is not None else group[0], part, i0, M, B, NC, SPAN,
            DTYPE=tl_dtype(group[0]), DOT=other is not None, ALIGNED=aligned and other_aligned, BLOCK=BLOCK,
            num_warps=num_warps_for(BLOCK),
        )


def _ncb(NC: int) -> int:
    return max(16, min(64, next_pow2(NC)))


def _weights8(weights: Sequence[float]) -> list[float]:
    return list(weights) + [0.0] * (MAX_PTR_ARGS - len(weights))


def _fake_forward(g2d: list[torch.Tensor], weights: list[float], eps: float):
    B, M = g2d[0].shape
    NC, _ = _spans(M, B, len(g2d), elementwise_block(M))
    return (torch.empty_like(g2d[0]), g2d[0].new_empty((len(g2d), B), dtype=torch.float32),
            g2d[0].new_empty((len(g2d), B, NC), dtype=torch.float64))


@compile_friendly("grad_combine_fwd", _fake_forward)
def grad_combine_triton_forward(
    g2d: list[torch.Tensor], weights: list[float], eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused forward on ``[B, M]`` contiguous gradients; returns (combined, norms fp32 [N, B], partial Σgᵢ²)."""
    g0 = g2d[0]
    B, M = g0.shape
    N = len(g2d)
    BLOCK = elementwise_block(M)
    NC, SPAN = _spans(M, B, N, BLOCK)
    part = torch.empty((N, B, NC), dtype=torch.float64, device=g0.device)
    _launch_sums(g2d, None, part, NC, SPAN, BLOCK)
    out = torch.empty_like(g0)
    norms = torch.empty((N, B), dtype=torch.float32, device=g0.device)
    for i0, group, ptrs, aligned in _groups(g2d):
        _combine_fwd_kernel[(cdiv(M, BLOCK), B)](
            *ptrs, *_weights8(weights[i0 : i0 + MAX_PTR_ARGS]), part, out, norms, i0, len(group),
            M, B, NC, eps, DTYPE=tl_dtype(g0), ACCUMULATE=i0 > 0, ALIGNED=aligned, BLOCK=BLOCK,
            NCB=_ncb(NC), num_warps=num_warps_for(BLOCK),
        )
    return out, norms, part


def _fake_backward(g2d, weights, eps, part, grad_out, grad_norms):
    return g2d[0].new_empty((len(g2d),) + tuple(g2d[0].shape))


@compile_friendly("grad_combine_bwd", _fake_backward)
def grad_combine_triton_backward(
    g2d: list[torch.Tensor], weights: list[float], eps: float, part: torch.Tensor,
    grad_out: torch.Tensor, grad_norms: torch.Tensor | None,
) -> torch.Tensor:
    """``[N, B, M]``: ∂L/∂gᵢ for every gradient, from the forward's partial sums ``part``."""
    g0 = g2d[0]
    B, M = g0.shape
    N = len(g2d)
    BLOCK = elementwise_block(M)
    NC = part.shape[2]
    SPAN = cdiv(cdiv(M, BLOCK), NC) * BLOCK
    dpart = torch.empty_like(part)
    _launch_sums(g2d, grad_out, dpart, NC, SPAN, BLOCK)
    dg = torch.empty((N, B, M), dtype=g0.dtype, device=g0.device)
    for i0, group, ptrs, aligned in _groups(g2d):
        _combine_bwd_kernel[(cdiv(M, BLOCK), B)](
            *ptrs, *_weights8(weights[i0 : i0 + MAX_PTR_ARGS]), part, dpart, grad_out,
            grad_norms if grad_norms is not None else part, dg, i0, len(group), M, B, NC, eps,
            DTYPE=tl_dtype(g0), HAS_GN=grad_norms is not None, ALIGNED=aligned,
            BLOCK=BLOCK, NCB=_ncb(NC), num_warps=num_warps_for(BLOCK),
        )
    return dg


# --------------------------------------------------------------------------- autograd
class GradCombineFunction(torch.autograd.Function):
    """``(weights, eps, *grads) -> (combined, norms [N, B])`` on the Triton kernels.

    Double backward (``create_graph=True``) goes through :func:`grad_combine_reference`.
    """

    @staticmethod
    def forward(ctx, weights: tuple[float, ...], eps: float, *grads: torch.Tensor):
        B = grads[0].shape[0]
        g2d = [g.reshape(B, -1).contiguous() for g in grads]
        out, norms, part = grad_combine_triton_forward(g2d, list(weights), eps)
        ctx.save_for_backward(part, *grads)
        ctx.weights, ctx.eps = weights, eps
        ctx.set_materialize_grads(False)
        return out.view(grads[0].shape), norms

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor | None, grad_norms: torch.Tensor | None):
        part, *grads = ctx.saved_tensors
        if creating_graph():  # create_graph: a differentiable backward, through the reference
            ref = lambda *gs: grad_combine_reference(gs, ctx.weights, ctx.eps)  # noqa: E731
            return (None, None, *backward_through_reference(ref, grads, (grad_out, grad_norms)))
        B = grads[0].shape[0]
        g2d = [g.reshape(B, -1).contiguous() for g in grads]
        go = torch.zeros_like(g2d[0]) if grad_out is None else grad_out.reshape(B, -1).to(g2d[0].dtype).contiguous()
        gn = None if grad_norms is None else grad_norms.contiguous()
        dg = grad_combine_triton_backward(g2d, list(ctx.weights), ctx.eps, part, go, gn)
        return (None, None, *(d.view(grads[0].shape) for d in dg.unbind(0)))


# --------------------------------------------------------------------------- public
def _check(grads, weights, eps) -> None:
    if isinstance(grads, torch.Tensor) or not isinstance(grads, (list, tuple)) or not grads:
        raise InputError("grad_combine: grads must be a non-empty list of tensors [B, ...], one per reward")
    if len(weights) != len(grads):
        raise InputError(f"grad_combine: got {len(grads)} gradient(s) but {len(weights)} weight(s); pass one weight per gradient")
    check_float("grad_combine: grads[0]", grads[0])
    shape, dtype, device = grads[0].shape, grads[0].dtype, grads[0].device
    if len(shape) < 1 or shape[0] == 0:
        raise InputError(f"grad_combine: grads[0] must have a batch dim first, got shape {tuple(shape)}")
    for i, g in enumerate(grads):
        if not isinstance(g, torch.Tensor) or g.shape != shape or g.dtype != dtype or g.device != device:
            check_float(f"grad_combine: grads[{i}]", g)
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

    :param grads: N tensors ``[B, ...]`` of one shape, dtype and device; ``[B]`` is one number
        per sample (norm ``|gᵢ[b]|``).
    :param weights: N floats.
    :param eps: added to each norm, ``>= 0``.
    :returns: ``combined`` (shape and dtype of each ``gᵢ``) and ``norms [N, B]``
        (fp32; fp64 for fp64 inputs). Differentiable with respect to every ``gᵢ``, twice too.
    :raises InputError: for mismatched gradients, a weight count that differs, or ``eps < 0``.
    """
    _check(grads, weights, eps)
    weights = tuple(float(w) for w in weights)
    if select_backend("grad_combine", grads, grads[0].numel()) == "torch" or grads[0].numel() == 0:
        return grad_combine_reference(list(grads), weights, float(eps))
    return GradCombineFunction.apply(weights, float(eps), *grads)
