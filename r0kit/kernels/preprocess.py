"""Reward preprocessing for several contracts from one pass over the image.

For each :class:`~r0kit.images.RewardContract` ``k`` the output is exactly what
:func:`r0kit.images.preprocess` returns (the readable reference): clamp to
[0, 1], resize (bilinear / bicubic, antialiased when asked; nearest and area
too), center crop or zero padding, per-channel normalize.

The resize, crop and padding are separable and linear, so per contract they are
two matrices ``A_h [h_k, H]`` and ``A_w [w_k, W]``, built by pushing the
identity through :func:`torch.nn.functional.interpolate` once per axis (in
float64, so they reproduce its weights, borders and antialias filter exactly,
and are cached; a padded row is a zero row)::

    Y_k[b, c] = (A_h · clamp(X[b, c]) · A_wᵀ − mean_k[c]) / std_k[c]
    ∂X[b, c]  = [X inside (0, 1)] ⊙ Σ_k A_hᵀ · (G_k[b, c] / std_k[c]) · A_w

The filters are banded (a bicubic antialiased 1024→224 row has ~18 taps), so
each tile only walks the band of the matrices it touches: the plan stores, per
output tile, the input rows/columns it reads (forward) and, per input tile and
contract, the output rows/columns that read it (backward). One forward launch
covers every tile of every contract; one backward launch writes every element
of ∂X once, summing the contracts in registers.

Edges, as the reference:

* the clamp keeps NaN (``torch.clamp``), and its gradient at a pixel exactly 0
  or 1 is whatever ``torch.clamp`` gives there (asked once, see
  :func:`~r0kit.kernels._common.clamp_passes_gradient_at_bounds`);
* a NaN pixel makes NaN exactly the outputs whose resize window holds it, as
  ``F.interpolate`` does (its window can hold taps of weight 0, so the plan
  keeps each axis's window as a 0/1 *support* matrix beside ``A``); a NaN or
  ±Inf upstream gradient reaches ∂X as interpolate's backward spreads it. A
  matrix product would smear one NaN over its whole tile, so a tile that sees a
  non-finite value recomputes itself with IEEE sums over the windows (a rare
  path: finite data never takes it).

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

Host work per call: the plan (matrices, bands, tile lists) is built once per
(image size, contracts, device) and kept; a call allocates only its outputs,
passes the up-to-8 output (or upstream-gradient) pointers by value, and makes
no host-device copy and no sync.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from r0kit.errors import InputError
from r0kit.images import RewardContract, placement, preprocess, resized_shape
from r0kit.kernels._common import (
    HAS_TRITON,
    MAX_PTR_ARGS,
    backward_through_reference,
    creating_graph,
    clamp_passes_gradient_at_bounds,
    compile_friendly,
    interpreter_enabled,
    pointer_args,
    tl_dtype,
    triton,
    tl,
)
from r0kit.kernels._dispatch import select_backend

if HAS_TRITON:
    from r0kit.kernels._common import pick_ptr

__all__ = [
    "preprocess_fused",
    "preprocess_reference",
    "PreprocessFunction",
    "axis_matrix",
    "axis_support",
    "contract_matrices",
]


# --------------------------------------------------------------------------- reference
def preprocess_reference(images: torch.Tensor, contracts: Sequence[RewardContract]) -> list[torch.Tensor]:
    """:func:`r0kit.images.preprocess` once per distinct preprocessing, in order (contracts that differ
    only in ``needs_prompt`` or ``differentiable`` share one output)."""
    cache: dict[tuple, torch.Tensor] = {}
    out = []
    for c in contracts:
        key = _spec(c)
        if key not in cache:
            cache[key] = preprocess(images, c)
        out.append(cache[key])
    return out


# --------------------------------------------------------------------------- interpolation matrices
def _interpolate_rows(rows: torch.Tensor, n_out: int, mode: str, antialias: bool) -> torch.Tensor:
    """``F.interpolate`` of each row of ``rows [n, n_in]`` (as a ``1 × n_in`` image) to ``n_out``."""
    x = rows.view(rows.shape[0], 1, 1, rows.shape[1])
    if mode in ("bilinear", "bicubic"):
        y = F.interpolate(x, size=(1, n_out), mode=mode, align_corners=False, antialias=antialias)
    else:
        y = F.interpolate(x, size=(1, n_out), mode=mode)
    return y.view(rows.shape[0], n_out)


@functools.lru_cache(maxsize=256)
def axis_matrix(n_in: int, n_out: int, mode: str, antialias: bool) -> torch.Tensor:
    """float64 ``[n_out, n_in]`` matrix ``A`` with ``A @ v`` = ``F.interpolate`` of ``v`` along one axis.

    Built by interpolating the identity (rows ``e_i`` as a batch of ``1 × n_in`` images, the
    other axis kept at size 1, which every mode maps to itself), so it inherits torch's
    weights, border handling and antialias filter by construction.
    """
    return _interpolate_rows(torch.eye(n_in, dtype=torch.float64), n_out, mode, antialias).t().contiguous()


@functools.lru_cache(maxsize=256)
def axis_support(n_in: int, n_out: int, mode: str, antialias: bool) -> torch.Tensor:
    """bool ``[n_out, n_in]``: input ``i`` is in output ``o``'s window (even with weight 0).

    Exactly where ``F.interpolate`` sends a NaN: interpolating ``NaN · e_i`` gives NaN at every
    output whose window holds ``i`` (``0 · NaN`` is NaN). The 2-D window is the product of the
    two axes' (checked against ``F.interpolate`` in the tests).
    """
    eye = torch.eye(n_in, dtype=torch.float64)
    return _interpolate_rows(torch.where(eye > 0, torch.nan, 0.0), n_out, mode, antialias).isnan().t().contiguous()


def contract_matrices(
    h: int, w: int, contract: RewardContract, *, support: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 ``(A_h [h_k, H], A_w [w_k, W])`` of the contract's resize + crop or padding, as
    :func:`r0kit.images.preprocess` applies them; with ``support``, the bool windows instead."""
    if support:
        a_h, a_w = torch.eye(h, dtype=torch.bool), torch.eye(w, dtype=torch.bool)
    else:
        a_h, a_w = torch.eye(h, dtype=torch.float64), torch.eye(w, dtype=torch.float64)
    if contract.size is None:
        return a_h, a_w
    th, tw = resized_shape(h, w, contract)
    if (th, tw) != (h, w):
        aa = contract.antialias if contract.resize in ("bilinear", "bicubic") else False
        build = axis_support if support else axis_matrix
        a_h, a_w = build(h, th, contract.resize, aa), build(w, tw, contract.resize, aa)
    s = contract.size
    top, left = placement(th, tw, contract)
    if contract.crop == "center":
        a_h, a_w = a_h[top : top + s], a_w[left : left + s]
    elif contract.crop == "pad":  # padded rows/columns read nothing: zero rows
        a_h = torch.cat([a_h.new_zeros(-top, h), a_h, a_h.new_zeros(s - th + top, h)])
        a_w = torch.cat([a_w.new_zeros(-left, w), a_w, a_w.new_zeros(s - tw + left, w)])
    return a_h, a_w


def _row_bands(nz: torch.Tensor, tile: int) -> torch.Tensor:
    """``int64 [cdiv(rows, tile), 2]``: per tile of rows of the bool ``nz``, the column range [lo, hi) of its Trues."""
    n_rows, n_cols = nz.shape
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
    key: tuple
    contracts: tuple[RewardContract, ...]
    shapes: list[tuple[int, int]]  # (h_k, w_k)
    a_h: torch.Tensor  # [Σh_k, H] fp32
    a_w: torch.Tensor  # [Σw_k, W] fp32
    s_h: torch.Tensor  # [Σh_k, H] int8 windows (support)
    s_w: torch.Tensor  # [Σw_k, W] int8
    ctab: torch.Tensor  # [K, 4] int64: ah_row0, h_k, aw_row0, w_k
    fwd_tiles: torch.Tensor  # [T, 7] int64: k, m0, n0, kh_lo, kh_hi, kw_lo, kw_hi
    bwd_bands: torch.Tensor  # [n_tiles_h·n_tiles_w, K, 4] int64: oh_lo, oh_hi, ow_lo, ow_hi
    norm: torch.Tensor  # [K, 6] fp32: 1/std (3), −mean/std (3)
    n_tiles_w: int
    n_tiles_in: int
    index: int = -1  # position in _PLAN_KEYS: how the custom ops name the plan


def _tiles() -> tuple[int, int, int]:
    """(BM, BN, BK): output/input tile and reduction step. The interpreter pays per program, so bigger there."""
    return (64, 64, 64) if interpreter_enabled() else (32, 32, 32)


# Plans live as long as the process (a few MB of matrices per image size and contract set); the
# custom ops of torch.compile name them by index, so an index stays valid once handed out.
_PLANS: dict[tuple, _Plan] = {}
_PLAN_KEYS: list[tuple] = []


def _plan(h: int, w: int, contracts: tuple[RewardContract, ...], device: torch.device) -> _Plan:
    BM, BN, BK = _tiles()
    key = (h, w, contracts, str(device), BM, BN)
    plan = _PLANS.get(key)
    if plan is not None:
        return plan
    mats = [contract_matrices(h, w, c) for c in contracts]
    supp = [contract_matrices(h, w, c, support=True) for c in contracts]
    shapes = [(ah.shape[0], aw.shape[0]) for ah, aw in mats]
    ctab, fwd_rows, r_h, r_w = [], [], 0, 0
    n_th, n_tw = -(-h // BM), -(-w // BN)
    bwd = torch.zeros((n_th * n_tw, len(contracts), 4), dtype=torch.int64)
    for k, (sh, sw) in enumerate(supp):
        hk, wk = sh.shape[0], sw.shape[0]
        ctab.append([r_h, hk, r_w, wk])
        r_h += hk
        r_w += wk
        bh, bw = _row_bands(sh, BM), _row_bands(sw, BN)  # forward: input window per output tile
        for tm in range(bh.shape[0]):
            for tn in range(bw.shape[0]):
                fwd_rows.append([k, tm * BM, tn * BN, *bh[tm].tolist(), *bw[tn].tolist()])
        th, tw = _row_bands(sh.t(), BM), _row_bands(sw.t(), BN)  # backward: outputs reading each input tile
        bwd[:, k, 0:2] = th.repeat_interleave(n_tw, dim=0)
        bwd[:, k, 2:4] = tw.repeat(n_th, 1)
    norm = torch.tensor(
        [[1.0 / s for s in c.std] + [-m / s for m, s in zip(c.mean, c.std)] for c in contracts], dtype=torch.float32
    )
    plan = _Plan(
        key=key,
        contracts=contracts,
        shapes=shapes,
        a_h=torch.cat([m[0] for m in mats]).to(device=device, dtype=torch.float32).contiguous(),
        a_w=torch.cat([m[1] for m in mats]).to(device=device, dtype=torch.float32).contiguous(),
        s_h=torch.cat([m[0] for m in supp]).to(device=device, dtype=torch.int8).contiguous(),
        s_w=torch.cat([m[1] for m in supp]).to(device=device, dtype=torch.int8).contiguous(),
        ctab=torch.tensor(ctab, dtype=torch.int64).to(device),
        fwd_tiles=torch.tensor(fwd_rows, dtype=torch.int64).to(device),
        bwd_bands=bwd.to(device),
        norm=norm.to(device),
        n_tiles_w=n_tw,
        n_tiles_in=n_th * n_tw,
    )
    plan.index = len(_PLAN_KEYS)
    _PLANS[key] = plan
    _PLAN_KEYS.append(key)
    return plan


def _plan_at(index: int) -> _Plan:
    return _PLANS[_PLAN_KEYS[index]]


# --------------------------------------------------------------------------- kernels
if HAS_TRITON:

    @triton.jit
    def _clamp01(x):
        """``clamp(x, 0, 1)`` that keeps NaN (``tl.minimum``/``tl.maximum`` would turn it into a bound)."""
        return tl.where(x < 0.0, 0.0, tl.where(x > 1.0, 1.0, x))

    @triton.jit
    def _exact_tile(
        v_ptr,  # [V_R, V_C] the tile's input: clamped images (forward) or an upstream gradient (backward)
        V_C,  # row length of v
        i_lo,  # rows [i_lo, i_hi) and columns [j_lo, j_hi) of v in the tile's window
        i_hi,
        j_lo,
        j_hi,
        l_ptr,  # L[m, i] = l_ptr[m·l_sm + i·l_si]: the row matrix (A_h or A_hᵀ), fp32
        ls_ptr,  # its window, int8, same layout
        l_sm,
        l_si,
        r_ptr,  # R[n, j] = r_ptr[n·r_sn + j·r_sj]: the column matrix (A_w or A_wᵀ), fp32
        rs_ptr,  # its window, int8
        r_sn,
        r_sj,
        offs_m,
        mask_m,
        offs_n,
        mask_n,
        CLAMP: tl.constexpr,
        BM: tl.constexpr,
        BN: tl.constexpr,
        BK: tl.constexpr,
    ):
        """``Σ_i Σ_j L[m, i]·V[i, j]·R[n, j]`` over the windows, with IEEE sums (the rare path).

        Separable like ``F.interpolate`` and its backward: one row of V at a time through R,
        then into the tile through L. Only window members contribute, so NaN and ±Inf reach
        exactly the elements the reference gives them to (``0 · Inf`` inside a window is NaN
        there too).
        """
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for i in range(i_lo, i_hi):
            t = tl.zeros((BN,), dtype=tl.float32)
            for j0 in range(j_lo, j_hi, BK):
                js = j0 + tl.arange(0, BK)
                jm = js < j_hi
                v = tl.load(v_ptr + i * V_C + js, mask=jm, other=0.0).to(tl.float32)
                if CLAMP:
                    v = _clamp01(v)
                m2 = jm[:, None] & mask_n[None, :]
                ro = offs_n[None, :] * r_sn + js[:, None] * r_sj
                r = tl.load(r_ptr + ro, mask=m2, other=0.0)
                rs = tl.load(rs_ptr + ro, mask=m2, other=0) != 0
                t += tl.sum(tl.where(rs, r * v[:, None], 0.0), axis=0)
            lo = offs_m * l_sm + i * l_si
            lv = tl.load(l_ptr + lo, mask=mask_m, other=0.0)
            ls = tl.load(ls_ptr + lo, mask=mask_m, other=0) != 0
            acc += tl.where(ls[:, None], lv[:, None] * t[None, :], 0.0)
        return acc

    @triton.jit
    def _preprocess_fwd_kernel(
        x_ptr,  # [B, 3, H, W] images, contiguous
        ah_ptr,  # [Σh_k, H] fp32 row-interpolation matrices of all contracts
        aw_ptr,  # [Σw_k, W] fp32 column-interpolation matrices
        sh_ptr,  # [Σh_k, H] int8 windows of ah
        sw_ptr,  # [Σw_k, W] int8 windows of aw
        ctab_ptr,  # [K, 4] int64: ah_row0, h_k, aw_row0, w_k
        tile_ptr,  # [T, 7] int64: k, m0, n0, kh_lo, kh_hi, kw_lo, kw_hi
        norm_ptr,  # [K, 6] fp32: 1/std[3], −mean/std[3]
        o0, o1, o2, o3, o4, o5, o6, o7,  # int64 data pointers of the outputs [B, 3, h_k, w_k], by value
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
        out_ptr = pick_ptr(k, o0, o1, o2, o3, o4, o5, o6, o7, DTYPE)
        ah_row0 = tl.load(ctab_ptr + k * 4 + 0)
        h_k = tl.load(ctab_ptr + k * 4 + 1)
        aw_row0 = tl.load(ctab_ptr + k * 4 + 2)
        w_k = tl.load(ctab_ptr + k * 4 + 3)

        offs_m = m0 + tl.arange(0, BM)  # output rows
        offs_n = n0 + tl.arange(0, BN)  # output cols
        mask_m = offs_m < h_k
        mask_n = offs_n < w_k
        x_base = x_ptr + bc * H * W
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        nan_seen = tl.zeros((BK, BK), dtype=tl.int32)  # elementwise flags, reduced once after the loop
        for kh in range(kh_lo, kh_hi, BK):
            rows = kh + tl.arange(0, BK)
            rmask = rows < kh_hi
            t = tl.zeros((BK, BN), dtype=tl.float32)  # clamp(X)[rows, :] · A_wᵀ[:, n-tile]
            for kw in range(kw_lo, kw_hi, BK):
                cols = kw + tl.arange(0, BK)
                cmask = cols < kw_hi
                x = tl.load(x_base + rows[:, None] * W + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
                x = _clamp01(x.to(tl.float32))
                nan_seen = nan_seen | (x != x).to(tl.int32)
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
        if tl.max(nan_seen) > 0:  # a NaN pixel in the window: the matrix product smeared it over the tile
            acc = _exact_tile(
                x_base, W, kh_lo, kh_hi, kw_lo, kw_hi,
                ah_ptr + ah_row0 * H, sh_ptr + ah_row0 * H, H, 1,
                aw_ptr + aw_row0 * W, sw_ptr + aw_row0 * W, W, 1,
                offs_m, mask_m, offs_n, mask_n, True, BM, BN, BK,
            )
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
        sh_ptr,  # [Σh_k, H] int8 windows
        sw_ptr,  # [Σw_k, W] int8
        ctab_ptr,  # [K, 4] int64: ah_row0, h_k, aw_row0, w_k
        band_ptr,  # [n_tiles_in, K, 4] int64: oh_lo, oh_hi, ow_lo, ow_hi
        norm_ptr,  # [K, 6] fp32: 1/std[3], −mean/std[3]
        g0, g1, g2, g3, g4, g5, g6, g7,  # int64 data pointers of the upstream gradients [B, 3, h_k, w_k]
        H,
        W,
        K,
        n_tiles_w,
        DTYPE: tl.constexpr,
        PREC: tl.constexpr,
        INCLUSIVE: tl.constexpr,  # the clamp passes the gradient at x = 0 and x = 1 (as torch.clamp does, or not)
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
            g_ptr = pick_ptr(k, g0, g1, g2, g3, g4, g5, g6, g7, DTYPE)
            ah_row0 = tl.load(ctab_ptr + k * 4 + 0)
            h_k = tl.load(ctab_ptr + k * 4 + 1)
            aw_row0 = tl.load(ctab_ptr + k * 4 + 2)
            w_k = tl.load(ctab_ptr + k * 4 + 3)
            band = band_ptr + (tile * K + k) * 4
            oh_lo = tl.load(band + 0)
            oh_hi = tl.load(band + 1)
            ow_lo = tl.load(band + 2)
            ow_hi = tl.load(band + 3)
            inv_std = tl.load(norm_ptr + k * 6 + ch)
            g_base = g_ptr + bc * h_k * w_k
            acc_k = tl.zeros((BM, BN), dtype=tl.float32)
            bad_seen = tl.zeros((BK, BK), dtype=tl.int32)  # elementwise flags, reduced once after the loop
            for oh in range(oh_lo, oh_hi, BK):
                orow = oh + tl.arange(0, BK)
                rmask = orow < oh_hi
                t = tl.zeros((BK, BN), dtype=tl.float32)  # G[orow, :] · A_w[:, n-tile]
                for ow in range(ow_lo, ow_hi, BK):
                    ocol = ow + tl.arange(0, BK)
                    cmask = ocol < ow_hi
                    g = tl.load(g_base + orow[:, None] * w_k + ocol[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
                    g = g.to(tl.float32)
                    bad_seen = bad_seen | (~(tl.abs(g) <= 3.4028234663852886e38)).to(tl.int32)  # NaN or ±Inf
                    aw = tl.load(
                        aw_ptr + (aw_row0 + ocol)[:, None] * W + offs_n[None, :],
                        mask=cmask[:, None] & mask_n[None, :],
                        other=0.0,
                    )  # [BK, BN]
                    t = tl.dot(g, aw, t, input_precision=PREC)
                ah_t = tl.load(
                    ah_ptr + (ah_row0 + orow)[None, :] * H + offs_m[:, None], mask=rmask[None, :] & mask_m[:, None], other=0.0
                )  # [BM, BK]
                acc_k = tl.dot(ah_t, t, acc_k, input_precision=PREC)
            if tl.max(bad_seen) > 0:  # a non-finite upstream gradient: spread it as interpolate's backward does
                acc_k = _exact_tile(
                    g_base, w_k, oh_lo, oh_hi, ow_lo, ow_hi,
                    ah_ptr + ah_row0 * H, sh_ptr + ah_row0 * H, 1, H,
                    aw_ptr + aw_row0 * W, sw_ptr + aw_row0 * W, 1, W,
                    offs_m, mask_m, offs_n, mask_n, False, BM, BN, BK,
                )
            acc += acc_k * inv_std
        io = bc * H * W + offs_m[:, None] * W + offs_n[None, :]
        mask = mask_m[:, None] & mask_n[None, :]
        x = tl.load(x_ptr + io, mask=mask, other=0.0).to(tl.float32)
        if INCLUSIVE:
            inside = (x >= 0.0) & (x <= 1.0)
        else:
            inside = (x > 0.0) & (x < 1.0)
        tl.store(dx_ptr + io, tl.where(inside, acc, 0.0).to(DTYPE), mask=mask)  # where: a NaN pixel gets 0, as torch


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs: 3xTF32 keeps ~fp32 accuracy on tensor cores; half inputs only need TF32.
    return "tf32x3" if dtype == torch.float32 else "tf32"


def _fake_forward(x: torch.Tensor, plan_index: int) -> list[torch.Tensor]:
    B = x.shape[0]
    return [x.new_empty((B, 3, hk, wk)) for hk, wk in _plan_at(plan_index).shapes]


@compile_friendly("preprocess_fwd", _fake_forward)
def preprocess_triton_forward(x: torch.Tensor, plan_index: int) -> list[torch.Tensor]:
    """``x [B, 3, H, W]`` contiguous -> one output per contract of the plan, in one launch."""
    plan = _plan_at(plan_index)
    B, _, H, W = x.shape
    BM, BN, BK = _tiles()
    outs = [torch.empty((B, 3, hk, wk), dtype=x.dtype, device=x.device) for hk, wk in plan.shapes]
    _preprocess_fwd_kernel[(plan.fwd_tiles.shape[0], B * 3)](
        x, plan.a_h, plan.a_w, plan.s_h, plan.s_w, plan.ctab, plan.fwd_tiles, plan.norm, *pointer_args(outs), H, W,
        DTYPE=tl_dtype(x), PREC=_dot_precision(x.dtype), BM=BM, BN=BN, BK=BK, num_warps=4,
    )
    return outs


def _fake_backward(x: torch.Tensor, grads: list[torch.Tensor], plan_index: int) -> torch.Tensor:
    return torch.empty_like(x)


@compile_friendly("preprocess_bwd", _fake_backward)
def preprocess_triton_backward(x: torch.Tensor, grads: list[torch.Tensor], plan_index: int) -> torch.Tensor:
    """Σ over contracts of the upstream gradients pulled back to the image, masked by the clamp."""
    plan = _plan_at(plan_index)
    B, _, H, W = x.shape
    BM, BN, BK = _tiles()
    dx = torch.empty_like(x)
    _preprocess_bwd_kernel[(plan.n_tiles_in, B * 3)](
        x, dx, plan.a_h, plan.a_w, plan.s_h, plan.s_w, plan.ctab, plan.bwd_bands, plan.norm, *pointer_args(grads),
        H, W, len(plan.contracts), plan.n_tiles_w,
        DTYPE=tl_dtype(x), PREC=_dot_precision(x.dtype), INCLUSIVE=clamp_passes_gradient_at_bounds(),
        BM=BM, BN=BN, BK=BK, num_warps=4,
    )
    return dx


# --------------------------------------------------------------------------- autograd
class PreprocessFunction(torch.autograd.Function):
    """``(images, plan index) -> (Y_1, …, Y_K)``; the backward sums every contract into one image gradient.

    Double backward (``create_graph=True``) goes through the torch reference.
    """

    @staticmethod
    def forward(ctx, images: torch.Tensor, plan_index: int):
        x = images if images.is_contiguous() else images.contiguous()
        outs = preprocess_triton_forward(x, plan_index)
        ctx.save_for_backward(images)
        ctx.plan_index = plan_index
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        (images,) = ctx.saved_tensors
        plan = _plan_at(ctx.plan_index)
        if creating_graph():  # create_graph: a differentiable backward, through the reference
            ref = lambda im: preprocess_reference(im, plan.contracts)  # noqa: E731
            return backward_through_reference(ref, (images,), grads)[0], None
        x = images if images.is_contiguous() else images.contiguous()
        gs = [
            x.new_zeros((x.shape[0], 3, hk, wk)) if g is None else g.to(x.dtype).contiguous()
            for g, (hk, wk) in zip(grads, plan.shapes)
        ]
        return preprocess_triton_backward(x, gs, ctx.plan_index), None


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

    :param images: ``[B, 3, H, W]`` float, in [0, 1] (values outside are clamped; NaN stays NaN).
    :param contracts: the rewards' contracts; contracts with the same preprocessing share one output tensor.
    :returns: ``[B, 3, size, size]`` per contract (``[B, 3, H, W]`` for ``size=None``), in the
        images' dtype. Differentiable with respect to ``images``; the Triton path reads the image
        once for all contracts and its backward writes one summed image gradient.
    :raises InputError: for a non-float or non-RGB batch, or contracts that are not a list of
        :class:`~r0kit.images.RewardContract`.
    """
    _check(images, contracts)
    if not contracts:
        return []
    if select_backend("preprocess", (images,), images.numel()) == "torch" or images.shape[0] == 0:
        return preprocess_reference(images, list(contracts))
    distinct = tuple(dict.fromkeys(_spec(c) for c in contracts))
    by_spec: dict[tuple, torch.Tensor] = {}
    for i in range(0, len(distinct), MAX_PTR_ARGS):  # the kernels take up to 8 preprocessings per launch
        specs = distinct[i : i + MAX_PTR_ARGS]
        index = _plan_index(images.shape[2], images.shape[3], specs, str(images.device))
        by_spec.update(zip(specs, PreprocessFunction.apply(images, index)))
    return [by_spec[_spec(c)] for c in contracts]


_SPEC_FIELDS = ("size", "resize", "antialias", "crop", "crop_offset", "mean", "std")


def _spec(c: RewardContract) -> tuple:
    """What the preprocessing of ``c`` depends on, as plain values (torch.compile can hold those as constants)."""
    return tuple(getattr(c, f) for f in _SPEC_FIELDS)


@torch._dynamo.assume_constant_result
def _plan_index(h: int, w: int, specs: tuple[tuple, ...], device: str) -> int:
    """The plan's index; torch.compile runs this once while tracing and keeps the number (a constant)."""
    contracts = tuple(RewardContract(**dict(zip(_SPEC_FIELDS, s))) for s in specs)
    return _plan(h, w, contracts, torch.device(device)).index
