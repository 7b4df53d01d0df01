"""Weight-L2 to the reference weights: ``λ Σₖ ‖θₖ − θ₀ₖ‖²`` over many parameter tensors.

One launch walks every tensor: the host builds a table of the tensors' data
pointers ``[T, 5]`` (θ, θ₀, grad, numel, has-grad) and a chunk list (tensor
index and start of each CHUNK-element piece), and each program reduces one
chunk, adding ``2λ(θ − θ₀)`` into ``θ.grad`` in place (creating ``.grad`` when
it is None, without reading zeros). The chunk list depends only on the tensor
sizes and is cached; the pointer table is rebuilt per call (T int64s).

Bytes (N = total elements, s = element size):

* naive eager (``loss = Σ ((θ − θ₀)**2).sum(); loss.backward()``): forward
  sub (read 2, write 1), square (read 1, write 1), sum (read 1): 6·N·s;
  backward builds 2(θ − θ₀) (read 2, write 1, plus the scale: read 1, write 1)
  and accumulates into .grad (read 2, write 1): ≈ 8·N·s. About **14·N·s**.
* fused: read θ and θ₀, read and write .grad: **4·N·s** (3·N·s when .grad is
  created); the loss alone reads **2·N·s**.
"""

from __future__ import annotations

from typing import Sequence

import torch

from r0kit.errors import InputError
from r0kit.kernels._common import HAS_TRITON, interpreter_enabled, tl_dtype, triton, tl
from r0kit.kernels._dispatch import check_float, compiler_disable, select_backend

__all__ = ["weight_l2", "weight_l2_reference", "WeightL2Function"]


# --------------------------------------------------------------------------- reference
def weight_l2_reference(
    params: Sequence[torch.Tensor], refs: Sequence[torch.Tensor], lam: float, *, accumulate_grad: bool = True
) -> torch.Tensor:
    """Pure torch. With ``accumulate_grad`` adds ``2λ(θ − θ₀)`` to each ``.grad`` and returns the
    detached fp32 loss; without, returns the loss differentiable through autograd."""
    if not accumulate_grad:
        total = None
        for p, r in zip(params, refs):
            d = p.float() - r.float() if p.dtype != torch.float64 else p - r.to(p.dtype)
            term = (d * d).sum()
            total = term if total is None else total + term
        return lam * total
    with torch.no_grad():
        total = torch.zeros((), dtype=torch.float32, device=params[0].device)
        for p, r in zip(params, refs):
            d = p.float() - r.float()
            total += (d * d).sum()
            g = (2.0 * lam * d).to(p.dtype)
            if p.grad is None:
                p.grad = g
            else:
                p.grad.add_(g)
        return lam * total


# --------------------------------------------------------------------------- kernel
if HAS_TRITON:

    @triton.jit
    def _weight_l2_kernel(
        tab_ptr,  # [T, 5] int64: θ ptr, θ₀ ptr, grad ptr, numel, has_grad (0/1)
        chunk_tensor_ptr,  # [C] int32: tensor index of each chunk
        chunk_start_ptr,  # [C] int64: first element of each chunk within its tensor
        part_ptr,  # [C] fp32 out: Σ (θ − θ₀)² over the chunk
        scale_ptr,  # [1] fp32: grad multiplier (2λ, or 2λ·upstream in the autograd backward)
        P_DTYPE: tl.constexpr,
        R_DTYPE: tl.constexpr,
        G_DTYPE: tl.constexpr,
        WRITE_GRAD: tl.constexpr,
        CHUNK: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0).to(tl.int64)
        t = tl.load(chunk_tensor_ptr + pid).to(tl.int64)
        start = tl.load(chunk_start_ptr + pid)
        p_ptr = tl.load(tab_ptr + t * 5 + 0).to(tl.pointer_type(P_DTYPE))
        r_ptr = tl.load(tab_ptr + t * 5 + 1).to(tl.pointer_type(R_DTYPE))
        g_ptr = tl.load(tab_ptr + t * 5 + 2).to(tl.pointer_type(G_DTYPE))
        n = tl.load(tab_ptr + t * 5 + 3)
        has_grad = tl.load(tab_ptr + t * 5 + 4) != 0
        scale = tl.load(scale_ptr)
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for k in tl.static_range(0, CHUNK, BLOCK):
            offs = start + k + tl.arange(0, BLOCK)
            mask = offs < n
            p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            r = tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            d = p - r
            acc += d * d
            if WRITE_GRAD:
                g = tl.load(g_ptr + offs, mask=mask & has_grad, other=0.0).to(tl.float32)
                tl.store(g_ptr + offs, (g + scale * d).to(G_DTYPE), mask=mask)
        tl.store(part_ptr + pid, tl.sum(acc, axis=0))


def _chunking() -> tuple[int, int]:
    """(CHUNK, BLOCK): elements per program and per load."""
    return (1 << 16, 1 << 16) if interpreter_enabled() else (1 << 15, 4096)


_LAYOUT_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _chunk_layout(numels: tuple[int, ...], chunk: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Device ``int32 [C]`` tensor index and ``int64 [C]`` start of every chunk (cached per sizes)."""
    key = (numels, chunk, str(device))
    hit = _LAYOUT_CACHE.get(key)
    if hit is None:
        n = torch.tensor(numels, dtype=torch.int64)
        counts = (n + chunk - 1) // chunk
        tensor_idx = torch.repeat_interleave(torch.arange(len(numels), dtype=torch.int32), counts)
        first = torch.cumsum(counts, 0) - counts
        starts = (torch.arange(int(counts.sum()), dtype=torch.int64) - first.repeat_interleave(counts)) * chunk
        hit = (tensor_idx.to(device), starts.to(device))
        if len(_LAYOUT_CACHE) > 64:
            _LAYOUT_CACHE.clear()
        _LAYOUT_CACHE[key] = hit
    return hit


@compiler_disable
def weight_l2_triton_launch(
    params: list[torch.Tensor], refs: list[torch.Tensor], grads: list[torch.Tensor] | None,
    has_grad: list[bool], scale: torch.Tensor | None,
) -> torch.Tensor:
    """One launch over contiguous same-dtype tensors; returns the fp32 ``Σ‖θ − θ₀‖²``.

    ``grads`` None: loss only. Otherwise writes ``grad (+)= scale·(θ − θ₀)`` (add where
    ``has_grad``, plain store elsewhere).
    """
    device = params[0].device
    CHUNK, BLOCK = _chunking()
    numels = tuple(p.numel() for p in params)
    tensor_idx, starts = _chunk_layout(numels, CHUNK, device)
    gl = grads if grads is not None else params
    rows = [
        (p.data_ptr(), r.data_ptr(), g.data_ptr(), p.numel(), int(h))
        for p, r, g, h in zip(params, refs, gl, has_grad if grads is not None else [False] * len(params))
    ]
    tab = torch.tensor(rows, dtype=torch.int64, device=device)
    part = torch.empty(tensor_idx.numel(), dtype=torch.float32, device=device)
    if scale is None:
        scale = torch.zeros(1, dtype=torch.float32, device=device)
    _weight_l2_kernel[(tensor_idx.numel(),)](
        tab, tensor_idx, starts, part, scale,
        P_DTYPE=tl_dtype(params[0]), R_DTYPE=tl_dtype(refs[0]), G_DTYPE=tl_dtype(gl[0]),
        WRITE_GRAD=grads is not None, CHUNK=CHUNK, BLOCK=BLOCK, num_warps=8,
    )
    return part.sum()


def _groups(params, refs, grads=None):
    """Indices grouped by (θ dtype, θ₀ dtype, grad dtype): one launch per group."""
    groups: dict[tuple, list[int]] = {}
    for i, (p, r) in enumerate(zip(params, refs)):
        g = grads[i] if grads is not None else None
        groups.setdefault((p.dtype, r.dtype, None if g is None else g.dtype), []).append(i)
    return groups.values()


def _triton_accumulate(params, refs, lam: float) -> torch.Tensor:
    device = params[0].device
    total = torch.zeros((), dtype=torch.float32, device=device)
    scale = torch.full((1,), 2.0 * lam, dtype=torch.float32, device=device)
    fast_p, fast_r, fast_g, fast_h = [], [], [], []
    for p, r in zip(params, refs):
        if p.numel() == 0:
            continue
        g = p.grad
        if not p.is_contiguous() or (g is not None and not g.is_contiguous()):
            total = total + weight_l2_reference([p], [r], 1.0, accumulate_grad=False).detach()
            with torch.no_grad():
                gnew = (2.0 * lam * (p.float() - r.float())).to(p.dtype)
                p.grad = gnew if g is None else g.add_(gnew)
            continue
        has = g is not None
        if not has:
            p.grad = g = torch.empty_like(p)
        fast_p.append(p.detach())
        fast_r.append(r.detach().contiguous())
        fast_g.append(g)
        fast_h.append(has)
    for idx in _groups(fast_p, fast_r, fast_g):
        total = total + weight_l2_triton_launch(
            [fast_p[i] for i in idx], [fast_r[i] for i in idx], [fast_g[i] for i in idx], [fast_h[i] for i in idx], scale
        )
    return lam * total


# --------------------------------------------------------------------------- autograd
class WeightL2Function(torch.autograd.Function):
    """``(lam, T, *params, *refs) -> λ Σ‖θ − θ₀‖²`` (fp32 scalar); backward is one multi-tensor launch."""

    @staticmethod
    def forward(ctx, lam: float, T: int, *tensors: torch.Tensor):
        params = [t.contiguous() for t in tensors[:T]]
        refs = [t.contiguous() for t in tensors[T:]]
        keep = [i for i, p in enumerate(params) if p.numel() > 0]
        total = torch.zeros((), dtype=torch.float32, device=params[0].device)
        for idx in _groups([params[i] for i in keep], [refs[i] for i in keep]):
            sel = [keep[i] for i in idx]
            total = total + weight_l2_triton_launch([params[i] for i in sel], [refs[i] for i in sel], None, [], None)
        ctx.save_for_backward(*params, *refs)
        ctx.lam, ctx.T = lam, T
        return lam * total

    @staticmethod
    def backward(ctx, gout: torch.Tensor):
        T = ctx.T
        saved = ctx.saved_tensors
        params, refs = list(saved[:T]), list(saved[T:])
        need_p = ctx.needs_input_grad[2 : 2 + T]
        need_r = ctx.needs_input_grad[2 + T :]
        scale = (2.0 * ctx.lam * gout.float()).reshape(1)
        grads: list[torch.Tensor | None] = [None] * T
        keep = [i for i in range(T) if (need_p[i] or need_r[i]) and params[i].numel() > 0]
        outs = {i: torch.empty_like(params[i]) for i in keep}
        for idx in _groups([params[i] for i in keep], [refs[i] for i in keep]):
            sel = [keep[i] for i in idx]
            weight_l2_triton_launch(
                [params[i] for i in sel], [refs[i] for i in sel], [outs[i] for i in sel], [False] * len(sel), scale
            )
        for i in range(T):
            if i in outs:
                grads[i] = outs[i]
            elif need_p[i] or need_r[i]:
                grads[i] = torch.zeros_like(params[i])
        dparams = [g if need_p[i] else None for i, g in enumerate(grads)]
        drefs = [(-g).to(refs[i].dtype) if need_r[i] and g is not None else None for i, g in enumerate(grads)]
        return (None, None, *dparams, *drefs)


# --------------------------------------------------------------------------- public
def _check(params, refs, lam) -> None:
    if isinstance(params, torch.Tensor) or isinstance(refs, torch.Tensor):
        raise InputError("weight_l2: params and refs must be lists of tensors (e.g. list(model.parameters())), not one tensor")
    if len(params) == 0:
        raise InputError("weight_l2: params is empty; pass the parameters to regularize")
    if len(params) != len(refs):
        raise InputError(f"weight_l2: got {len(params)} parameter(s) but {len(refs)} reference tensor(s); pass one θ₀ per θ, in order")
    for i, (p, r) in enumerate(zip(params, refs)):
        check_float(f"weight_l2: params[{i}]", p)
        check_float(f"weight_l2: refs[{i}]", r)
        if p.shape != r.shape:
            raise InputError(f"weight_l2: params[{i}] has shape {tuple(p.shape)} but refs[{i}] has {tuple(r.shape)}; θ₀ must match θ")
        if p.device != params[0].device or r.device != p.device:
            raise InputError(f"weight_l2: params[{i}]/refs[{i}] are on {p.device}/{r.device}, params[0] on {params[0].device}; keep all on one device")
    if not isinstance(lam, (int, float)) or isinstance(lam, bool):
        raise InputError(f"weight_l2: lam must be a float, got {type(lam).__name__}")


def weight_l2(
    params: list[torch.Tensor], refs: list[torch.Tensor], lam: float, *, accumulate_grad: bool = True
) -> torch.Tensor:
    """``λ Σ‖θ − θ₀‖²`` over the tensors, in fp32.

    ``accumulate_grad=True`` (the fused optimizer-side form): also adds ``2λ(θ − θ₀)`` into
    each ``θ.grad`` in place, creating it when None, and returns the detached loss.
    ``accumulate_grad=False``: returns the loss connected to autograd, for use inside a
    larger loss; ``loss.backward()`` then produces the same gradients.
    """
    if isinstance(params, torch.Tensor) or isinstance(refs, torch.Tensor):
        _check(params, refs, lam)
    params, refs = list(params), list(refs)
    _check(params, refs, lam)
    backend = select_backend("weight_l2", params + refs)
    if backend == "torch":
        return weight_l2_reference(params, refs, float(lam), accumulate_grad=accumulate_grad)
    if accumulate_grad:
        return _triton_accumulate(params, refs, float(lam))
    return WeightL2Function.apply(float(lam), len(params), *params, *refs)
