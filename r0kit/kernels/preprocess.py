"""Reward preprocessing for several contracts from one pass over the image.

For each :class:`~r0kit.images.RewardContract` ``k`` the output is exactly what
:func:`r0kit.images.preprocess` returns (the readable reference): clamp to
[0, 1], shortest-side resize (bilinear / bicubic, antialiased when asked;
nearest and area too), center crop, per-channel normalize.

The resize and crop are separable and linear, so per contract they are two
matrices ``A_h [h_k, H]`` and ``A_w [w_k, W]``, built by pushing the identity
through :func:`torch.nn.functional.interpolate` once per axis (in float64, so
they reproduce its weights, borders and antialias filter exactly, and are
cached)::

    Y_k[b, c] = (A_h · clamp(X[b, c]) · A_wᵀ − mean_k[c]) / std_k[c]
    ∂X[b, c]  = [0 ≤ X ≤ 1] ⊙ Σ_k A_hᵀ · (G_k[b, c] / std_k[c]) · A_w

The filters are banded (a bicubic antialiased 1024→224 row has ~18 taps), so
each tile only walks the band of the matrices it touches: the host stores, per
output tile, the input rows/columns it reads (forward) and, per input tile and
contract, the output rows/columns that read it (backward). One forward launch
covers every tile of every contract; one backward launch writes every element
of ∂X once, summing the contracts in registers.

Bytes (s = element size, |X| = B·3·H·W, |Y| = Σ_k B·3·h_k·w_k):

* naive eager, per contract: clamp (read |X|, write |X|), resize (read |X|,
  write |Y_k|; the antialiased kernels also write and read an intermediate),
  subtract and divide (read and write |Y_k| twice): ≈ K·3·|X|·s + 5·|Y|·s
  forward; backward, per contract, the normalize and resize backward (zero and
  write a full-size gradient), clamp backward (read |X| twice, write |X|) and
  the sum over contracts (read 2, write 1): ≈ K·7·|X|·s + 4·|Y|·s.
* fused: forward reads |X| once (the band overlap between neighbouring tiles
  is served from L2) and writes |Y|: **(|X| + |Y|)·s**; backward reads |Y|
  (upstream) and |X| (for the clamp mask) and writes |X|: **(2·|X| + |Y|)·s**.

For 5 contracts at 224² from a 1024² image that is ≈ 1.2·|X| against ≈ 15·|X|
forward and 2.2·|X| against ≈ 35·|X| backward.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from r0kit.errors import InputError
from r0kit.images import RewardContract, preprocess, resized_shape
from r0kit.kernels._common import HAS_TRITON, interpreter_enabled, tl_dtype, triton, tl
from r0kit.kernels._dispatch import compiler_disable, select_backend

__all__ = [
    "preprocess_fused",
    "preprocess_reference",
    "PreprocessFunction",
    "axis_matrix",
    "contract_matrices",
]


# --------------------------------------------------------------------------- reference
def preprocess_reference(images: torch.Tensor, contracts: Sequence[RewardContract]) -> list[torch.Tensor]:
    """Today's behaviour: :func:`r0kit.images.preprocess` once per distinct contract, in order."""
    cache: dict[RewardContract, torch.Tensor] = {}
    out = []
    for c in contracts:
        if c not in cache:
            cache[c] = preprocess(images, c)
        out.append(cache[c])
    return out


# --------------------------------------------------------------------------- interpolation matrices
@functools.lru_cache(maxsize=256)
def axis_matrix(n_in: int, n_out: int, mode: str, antialias: bool) -> torch.Tensor:
    """float64 ``[n_out, n_in]`` matrix ``A`` with ``A @ v`` = ``F.interpolate`` of ``v`` along one axis.

    Built by interpolating the identity (rows ``e_i`` as a batch of ``1 × n_in`` images, the
    other axis kept at size 1, which every mode maps to itself), so it inherits torch's
    weights, border handling and antialias filter by construction.
    """
    eye = torch.eye(n_in, dtype=torch.float64).view(n_in, 1, 1, n_in)
    if mode in ("bilinear", "bicubic"):
        y = F.interpolate(eye, size=(1, n_out), mode=mode, align_corners=False, antialias=antialias)
    else:
        y = F.interpolate(eye, size=(1, n_out), mode=mode)
    return y.view(n_in, n_out).t().contiguous()


def contract_matrices(h: int, w: int, contract: RewardContract) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 ``(A_h [h_k, H], A_w [w_k, W])`` of the contract's resize + crop, as
    :func:`r0kit.images.preprocess` applies them."""
    a_h = torch.eye(h, dtype=torch.float64)
    a_w = torch.eye(w, dtype=torch.float64)
    if contract.size is not None:
        th, tw = resized_shape(h, w, contract)
        if (th, tw) != (h, w):
            aa = contract.antialias if contract.resize in ("bilinear", "bicubic") else False
            a_h = axis_matrix(h, th, contract.resize, aa)
            a_w = axis_matrix(w, tw, contract.resize, aa)
        if contract.crop == "center":
            s = contract.size
            top = int(round((th - s) / 2.0))
            left = int(round((tw - s) / 2.0))
            a_h = a_h[top : top + s]
            a_w = a_w[left : left + s]
    return a_h, a_w


def _row_bands(a: torch.Tensor, tile: int) -> torch.Tensor:
    """``int64 [cdiv(rows, tile), 2]``: per tile of rows of ``a``, the column range [lo, hi) holding its nonzeros."""
    nz = a != 0
    n_rows, n_cols = a.shape
    idx = torch.arange(n_cols, dtype=torch.int64)
    first = torch.where(nz, idx, torch.full_like(idx, n_cols)).amin(dim=1)
    last = torch.where(nz, idx, torch.full_like(idx, -1)).amax(dim=1)
    n_tiles = -(-n_rows // tile)
    pad = n_tiles * tile - n_rows
    first = torch.cat([first, first.new_full((pad,), n_cols)]).view(n_tiles, tile).amin(dim=1)
    last = torch.cat([last, last.new_full((pad,), -1)]).view(n_tiles, tile).amax(dim=1)
    empty = last < first
    lo = torch.where(empty, torch.zeros_like(first), first)
    hi = torch.where(empty, torch.zeros_like(last), last + 1)
    return torch.stack([lo, hi], dim=1)


# --------------------------------------------------------------------------- plan
@dataclass
class _Plan:
    contracts: tuple[RewardContract, ...]
    shapes: list[tuple[int, int]]  # (h_k, w_k)
    a_h: torch.Tensor  # [Σh_k, H] fp32
    a_w: torch.Tensor  # [Σw_k, W] fp32
    ctab: list[list[int]]  # per contract: [ah_row0, h_k, aw_row0, w_k]
    fwd_tiles: torch.Tensor  # [T, 7] int64: k, m0, n0, kh_lo, kh_hi, kw_lo, kw_hi
    bwd_bands: torch.Tensor  # [n_tiles_h·n_tiles_w, K, 4] int64: oh_lo, oh_hi, ow_lo, ow_hi
    norm: torch.Tensor  # [K, 6] fp32: 1/std (3), −mean/std (3)
    n_tiles_w: int
    n_tiles_in: int


def _tiles() -> tuple[int, int, int]:
    """(BM, BN, BK): output/input tile and reduction step. The interpreter pays per program, so bigger there."""
    return (64, 64, 64) if interpreter_enabled() else (32, 32, 32)


_PLANS: dict[tuple, _Plan] = {}


def _plan(h: int, w: int, contracts: tuple[RewardContract, ...], device: torch.device) -> _Plan:
    BM, BN, BK = _tiles()
    key = (h, w, contracts, str(device), BM, BN)
    plan = _PLANS.get(key)
    if plan is not None:
        return plan
    mats = [contract_matrices(h, w, c) for c in contracts]
    shapes = [(ah.shape[0], aw.shape[0]) for ah, aw in mats]
    ctab, fwd_rows, r_h, r_w = [], [], 0, 0
    n_th, n_tw = -(-h // BM), -(-w // BN)
    bwd = torch.zeros((n_th * n_tw, len(contracts), 4), dtype=torch.int64)
    for k, (ah, aw) in enumerate(mats):
        hk, wk = ah.shape[0], aw.shape[0]
        ctab.append([r_h, hk, r_w, wk])
        r_h += hk
        r_w += wk
        bh, bw = _row_bands(ah, BM), _row_bands(aw, BN)  # forward: input range per output tile
        for tm in range(bh.shape[0]):
            for tn in range(bw.shape[0]):
                fwd_rows.append([k, tm * BM, tn * BN, *bh[tm].tolist(), *bw[tn].tolist()])
        th, tw = _row_bands(ah.t(), BM), _row_bands(aw.t(), BN)  # backward: output range per input tile
        bwd[:, k, 0:2] = th.repeat_interleave(n_tw, dim=0)
        bwd[:, k, 2:4] = tw.repeat(n_th, 1)
    norm = torch.tensor(
        [[1.0 / s for s in c.std] + [-m / s for m, s in zip(c.mean, c.std)] for c in contracts], dtype=torch.float32
    )
    plan = _Plan(
        contracts=contracts,
        shapes=shapes,
        a_h=torch.cat([m[0] for m in mats]).to(device=device, dtype=torch.float32).contiguous(),
        a_w=torch.cat([m[1] for m in mats]).to(device=device, dtype=torch.float32).contiguous(),
        ctab=ctab,
        fwd_tiles=torch.tensor(fwd_rows, dtype=torch.int64).to(device),
        bwd_bands=bwd.to(device),
        norm=norm.to(device),
        n_tiles_w=n_tw,
        n_tiles_in=n_th * n_tw,
    )
    if len(_PLANS) > 32:
        _PLANS.clear()
    _PLANS[key] = plan
    return plan


# --------------------------------------------------------------------------- kernels
if HAS_TRITON:

    @triton.jit
    def _preprocess_fwd_kernel(
        x_ptr,  # [B, 3, H, W] images, contiguous
        ah_ptr,  # [Σh_k, H] fp32 row-interpolation matrices of all contracts
        aw_ptr,  # [Σw_k, W] fp32 column-interpolation matrices
        ctab_ptr,  # [K, 5] int64: out ptr, ah_row0, h_k, aw_row0, w_k
        tile_ptr,  # [T, 7] int64: k, m0, n0, kh_lo, kh_hi, kw_lo, kw_hi
        norm_ptr,  # [K, 6] fp32: 1/std[3], −mean/std[3]
        H,
        W,
        DTYPE: tl.constexpr,  # element type of images and outputs
        PREC: tl.constexpr,  # tl.dot input precision
        BM: tl.constexpr,
        BN: tl.constexpr,
        BK: tl.constexpr,
    ):
        tile = tl.program_id(0).to(tl.int64)
        bc = tl.program_id(1).to(tl.int64)  # b·3 + channel
        k = tl.load(tile_ptr + tile * 7 + 0)
        m0 = tl.load(tile_ptr + tile * 7 + 1)
        n0 = tl.load(tile_ptr + tile * 7 + 2)
        kh_lo = tl.load(tile_ptr + tile * 7 + 3)
        kh_hi = tl.load(tile_ptr + tile * 7 + 4)
        kw_lo = tl.load(tile_ptr + tile * 7 + 5)
        kw_hi = tl.load(tile_ptr + tile * 7 + 6)
        out_ptr = tl.load(ctab_ptr + k * 5 + 0).to(tl.pointer_type(DTYPE))
        ah_row0 = tl.load(ctab_ptr + k * 5 + 1)
        h_k = tl.load(ctab_ptr + k * 5 + 2)
        aw_row0 = tl.load(ctab_ptr + k * 5 + 3)
        w_k = tl.load(ctab_ptr + k * 5 + 4)

        offs_m = m0 + tl.arange(0, BM)  # output rows
        offs_n = n0 + tl.arange(0, BN)  # output cols
        mask_m = offs_m < h_k
        mask_n = offs_n < w_k
        x_base = x_ptr + bc * H * W
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for kh in range(kh_lo, kh_hi, BK):
            rows = kh + tl.arange(0, BK)
            rmask = rows < H
            t = tl.zeros((BK, BN), dtype=tl.float32)  # clamp(X)[rows, :] · A_wᵀ[:, n-tile]
            for kw in range(kw_lo, kw_hi, BK):
                cols = kw + tl.arange(0, BK)
                cmask = cols < W
                x = tl.load(x_base + rows[:, None] * W + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
                x = tl.minimum(tl.maximum(x.to(tl.float32), 0.0), 1.0)
                aw_t = tl.load(
                    aw_ptr + (aw_row0 + offs_n)[None, :] * W + cols[:, None],
                    mask=cmask[:, None] & mask_n[None, :],
                    other=0.0,
                )  # [BK, BN]
                t = tl.dot(x, aw_t, t, input_precision=PREC)
            ah = tl.load(
                ah_ptr + (ah_row0 + offs_m)[:, None] * H + rows[None, :], mask=mask_m[:, None] & rmask[None, :], other=0.0
            )  # [BM, BK]
            acc = tl.dot(ah, t, acc, input_precision=PREC)
        ch = bc % 3
        inv_std = tl.load(norm_ptr + k * 6 + ch)
        shift = tl.load(norm_ptr + k * 6 + 3 + ch)
        y = acc * inv_std + shift
        out = out_ptr + bc * h_k * w_k + offs_m[:, None] * w_k + offs_n[None, :]
        tl.store(out, y.to(DTYPE), mask=mask_m[:, None] & mask_n[None, :])

    @triton.jit
    def _preprocess_bwd_kernel(
        x_ptr,  # [B, 3, H, W] images (for the clamp mask)
        dx_ptr,  # [B, 3, H, W] out: image gradient
        ah_ptr,  # [Σh_k, H] fp32
        aw_ptr,  # [Σw_k, W] fp32
        ctab_ptr,  # [K, 5] int64: upstream-grad ptr, ah_row0, h_k, aw_row0, w_k
        band_ptr,  # [n_tiles_in, K, 4] int64: oh_lo, oh_hi, ow_lo, ow_hi
        norm_ptr,  # [K, 6] fp32: 1/std[3], −mean/std[3]
        H,
        W,
        K,
        n_tiles_w,
        DTYPE: tl.constexpr,
        PREC: tl.constexpr,
        BM: tl.constexpr,
        BN: tl.constexpr,
        BK: tl.constexpr,
    ):
        tile = tl.program_id(0).to(tl.int64)
        bc = tl.program_id(1).to(tl.int64)
        ch = bc % 3
        offs_m = (tile // n_tiles_w) * BM + tl.arange(0, BM)  # input rows
        offs_n = (tile % n_tiles_w) * BN + tl.arange(0, BN)  # input cols
        mask_m = offs_m < H
        mask_n = offs_n < W
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k in range(K):
            g_ptr = tl.load(ctab_ptr + k * 5 + 0).to(tl.pointer_type(DTYPE))
            ah_row0 = tl.load(ctab_ptr + k * 5 + 1)
            h_k = tl.load(ctab_ptr + k * 5 + 2)
            aw_row0 = tl.load(ctab_ptr + k * 5 + 3)
            w_k = tl.load(ctab_ptr + k * 5 + 4)
            band = band_ptr + (tile * K + k) * 4
            oh_lo = tl.load(band + 0)
            oh_hi = tl.load(band + 1)
            ow_lo = tl.load(band + 2)
            ow_hi = tl.load(band + 3)
            inv_std = tl.load(norm_ptr + k * 6 + ch)
            g_base = g_ptr + bc * h_k * w_k
            for oh in range(oh_lo, oh_hi, BK):
                orow = oh + tl.arange(0, BK)
                rmask = orow < h_k
                t = tl.zeros((BK, BN), dtype=tl.float32)  # G[orow, :] · A_w[:, n-tile]
                for ow in range(ow_lo, ow_hi, BK):
                    ocol = ow + tl.arange(0, BK)
                    cmask = ocol < w_k
                    g = tl.load(g_base + orow[:, None] * w_k + ocol[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
                    aw = tl.load(
                        aw_ptr + (aw_row0 + ocol)[:, None] * W + offs_n[None, :],
                        mask=cmask[:, None] & mask_n[None, :],
                        other=0.0,
                    )  # [BK, BN]
                    t = tl.dot(g.to(tl.float32), aw, t, input_precision=PREC)
                ah_t = tl.load(
                    ah_ptr + (ah_row0 + orow)[None, :] * H + offs_m[:, None], mask=rmask[None, :] & mask_m[:, None], other=0.0
                )  # [BM, BK]
                acc = tl.dot(ah_t, t * inv_std, acc, input_precision=PREC)
        io = bc * H * W + offs_m[:, None] * W + offs_n[None, :]
        mask = mask_m[:, None] & mask_n[None, :]
        x = tl.load(x_ptr + io, mask=mask, other=0.0).to(tl.float32)
        inside = (x >= 0.0) & (x <= 1.0)  # torch.clamp passes the gradient on [min, max] inclusive
        tl.store(dx_ptr + io, tl.where(inside, acc, 0.0).to(DTYPE), mask=mask)


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs: 3xTF32 keeps ~fp32 accuracy on tensor cores; half inputs only need TF32.
    return "tf32x3" if dtype == torch.float32 else "tf32"


def _ctab(plan: _Plan, tensors: Sequence[torch.Tensor], device) -> torch.Tensor:
    return torch.tensor([[t.data_ptr(), *row] for t, row in zip(tensors, plan.ctab)], dtype=torch.int64, device=device)


@compiler_disable
def preprocess_triton_forward(x: torch.Tensor, plan: _Plan) -> list[torch.Tensor]:
    """``x [B, 3, H, W]`` contiguous -> one output per contract of the plan, in one launch."""
    B, _, H, W = x.shape
    BM, BN, BK = _tiles()
    outs = [torch.empty((B, 3, hk, wk), dtype=x.dtype, device=x.device) for hk, wk in plan.shapes]
    _preprocess_fwd_kernel[(plan.fwd_tiles.shape[0], B * 3)](
        x, plan.a_h, plan.a_w, _ctab(plan, outs, x.device), plan.fwd_tiles, plan.norm, H, W,
        DTYPE=tl_dtype(x), PREC=_dot_precision(x.dtype), BM=BM, BN=BN, BK=BK, num_warps=4,
    )
    return outs


@compiler_disable
def preprocess_triton_backward(x: torch.Tensor, grads: Sequence[torch.Tensor], plan: _Plan) -> torch.Tensor:
    """Σ over contracts of the upstream gradients pulled back to the image, masked by the clamp."""
    B, _, H, W = x.shape
    BM, BN, BK = _tiles()
    dx = torch.empty_like(x)
    _preprocess_bwd_kernel[(plan.n_tiles_in, B * 3)](
        x, dx, plan.a_h, plan.a_w, _ctab(plan, grads, x.device), plan.bwd_bands, plan.norm,
        H, W, len(plan.contracts), plan.n_tiles_w,
        DTYPE=tl_dtype(x), PREC=_dot_precision(x.dtype), BM=BM, BN=BN, BK=BK, num_warps=4,
    )
    return dx


# --------------------------------------------------------------------------- autograd
class PreprocessFunction(torch.autograd.Function):
    """``(images, plan) -> (Y_1, …, Y_K)``; the backward sums every contract into one image gradient."""

    @staticmethod
    def forward(ctx, images: torch.Tensor, plan: _Plan):
        x = images.contiguous()
        outs = preprocess_triton_forward(x, plan)
        ctx.save_for_backward(x)
        ctx.plan = plan
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        (x,) = ctx.saved_tensors
        plan = ctx.plan
        gs = [
            (g if g is not None else torch.zeros((x.shape[0], 3, hk, wk), dtype=x.dtype, device=x.device))
            .to(x.dtype)
            .contiguous()
            for g, (hk, wk) in zip(grads, plan.shapes)
        ]
        return preprocess_triton_backward(x, gs, plan), None


# --------------------------------------------------------------------------- public
def _check(images: torch.Tensor, contracts) -> None:
    if not isinstance(images, torch.Tensor):
        raise InputError(f"preprocess_fused: images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise InputError(f"preprocess_fused: images must be [B, 3, H, W], got {tuple(images.shape)}; convert to RGB first")
    if not images.is_floating_point():
        raise InputError(f"preprocess_fused: images must be float in [0, 1], got {images.dtype}; divide uint8 by 255")
    if isinstance(contracts, RewardContract) or not isinstance(contracts, (list, tuple)):
        raise InputError("preprocess_fused: contracts must be a list of RewardContract (wrap a single one in [ ])")
    for i, c in enumerate(contracts):
        if not isinstance(c, RewardContract):
            raise InputError(f"preprocess_fused: contracts[{i}] is a {type(c).__name__}, not a RewardContract")


def preprocess_fused(images: torch.Tensor, contracts: Sequence[RewardContract]) -> list[torch.Tensor]:
    """One tensor per contract, in order, each equal to ``r0kit.images.preprocess(images, contract)``.

    Equal contracts share one output tensor (as ``preprocess_many`` always did). Differentiable
    with respect to ``images``; the Triton path reads the image once for all contracts and its
    backward writes one summed image gradient.
    """
    _check(images, contracts)
    if not contracts:
        return []
    if select_backend("preprocess", (images,)) == "torch" or images.shape[0] == 0:
        return preprocess_reference(images, list(contracts))
    distinct = tuple(dict.fromkeys(contracts))
    plan = _plan(images.shape[2], images.shape[3], distinct, images.device)
    outs = PreprocessFunction.apply(images, plan)
    by_contract = dict(zip(distinct, outs))
    return [by_contract[c] for c in contracts]
