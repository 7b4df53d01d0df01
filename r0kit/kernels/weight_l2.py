"""Weight-L2 to the reference weights: ``λ Σₖ ‖θₖ − θ₀ₖ‖²`` over many parameter tensors.

One launch walks every tensor: the host builds a table of the tensors' data
pointers ``[T, 5]`` (θ, θ₀, grad, numel, has-grad) and a chunk list (tensor
index and start of each CHUNK-element piece), and each program reduces one
chunk, adding ``2λ(θ − θ₀)`` into ``θ.grad`` in place (creating ``.grad`` when
it is None, without reading zeros). The chunk list depends only on the tensor
sizes and is cached; the table is cached by its contents (the pointers do not
move between steps unless the gradients are re-created), and a new one goes to
the device through pinned memory without blocking the host.

Edges: the loss and gradient are computed in float32, or float64 when θ or θ₀
is float64 (then on the torch path); the same tensor twice in ``params`` is
refused (two programs would read-modify-write one ``.grad``); a numel-0
parameter gets an empty ``.grad``, as autograd gives it; NaN and Inf propagate
into the loss and the gradient as in the reference.

Bytes (N = total elements, s = element size):

* naive eager (``loss = Σ ((θ − θ₀)**2).sum(); loss.backward()``): forward
  sub (read 2, write 1), square (read 1, write 1), sum (read 1): 6·N·s;
  backward builds 2(θ − θ₀) (read 2, write 1, plus the scale: read 1, write 1)
  and accumulates into .grad (read 2, write 1): ≈ 8·N·s. About **14·N·s**.
* fused: read θ and θ₀, read and write .grad: **4·N·s** (3·N·s when .grad is
  created); the loss alone reads **2·N·s**.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch

from r0kit.errors import InputError
from r0kit.kernels._common import (
    HAS_TRITON,
    backward_through_reference,
    creating_graph,
    compile_friendly,
    interpreter_enabled,
    tl_dtype,
    triton,
    tl,
)
from r0kit.kernels._dispatch import check_float, select_backend

__all__ = ["weight_l2", "weight_l2_reference", "WeightL2Function"]


# --------------------------------------------------------------------------- reference
def _acc_dtype(p: torch.Tensor, r: torch.Tensor) -> torch.dtype:
    """float32, or float64 when either side is float64: at least the inputs' precision."""
    return torch.float64 if torch.float64 in (p.dtype, r.dtype) else torch.float32


def weight_l2_reference(
    params: Sequence[torch.Tensor], refs: Sequence[torch.Tensor], lam: float, *, accumulate_grad: bool = True
) -> torch.Tensor:
    """Pure torch. With ``accumulate_grad`` adds ``2λ(θ − θ₀)`` to each ``.grad`` and returns the
    detached loss; without, returns the loss differentiable through autograd (twice too).

    Computes in float32 (float64 where θ or θ₀ is float64); the loss is float64 if any term is.
    """
    if not accumulate_grad:
        total = None
        for p, r in zip(params, refs):
            acc = _acc_dtype(p, r)
            d = p.to(acc) - r.to(acc)
            term = (d * d).sum()
            total = term if total is None else total + term
        return lam * total
    with torch.no_grad():
        total = None
        for p, r in zip(params, refs):
            acc = _acc_dtype(p, r)
            d = p.to(acc) - r.to(acc)
            term = (d * d).sum()
            total = term if total is None else total + term
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
        tab_ptr,  # [T, 5] int64: θ ptr, θ₀ ptr, grad ptr (element offset into gbase_ptr when RELATIVE), numel, has_grad
        chunk_tensor_ptr,  # [C] int32: tensor index of each chunk
        chunk_start_ptr,  # [C] int64: first element of each chunk within its tensor
        part_ptr,  # [C] fp32 out: λ·Σ (θ − θ₀)² over the chunk
        lam,  # float λ
        scale_ptr,  # [] upstream gradient of the loss (when SCALE_T: the autograd backward), else unused
        scale,  # float grad multiplier: 2λ (times *scale_ptr when SCALE_T)
        gbase_ptr,  # [Σ numel] the gradients' one buffer (when RELATIVE), else unused
        P_DTYPE: tl.constexpr,
        R_DTYPE: tl.constexpr,
        G_DTYPE: tl.constexpr,
        WRITE_GRAD: tl.constexpr,
        SCALE_T: tl.constexpr,
        RELATIVE: tl.constexpr,  # the gradients are slices of gbase_ptr: the table is the same every call
        CHUNK: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0).to(tl.int64)
        t = tl.load(chunk_tensor_ptr + pid).to(tl.int64)
        start = tl.load(chunk_start_ptr + pid)
        p_ptr = tl.load(tab_ptr + t * 5 + 0).to(tl.pointer_type(P_DTYPE))
        r_ptr = tl.load(tab_ptr + t * 5 + 1).to(tl.pointer_type(R_DTYPE))
        if RELATIVE:
            g_ptr = gbase_ptr + tl.load(tab_ptr + t * 5 + 2)
        else:
            g_ptr = tl.load(tab_ptr + t * 5 + 2).to(tl.pointer_type(G_DTYPE))
        n = tl.load(tab_ptr + t * 5 + 3)
        has_grad = tl.load(tab_ptr + t * 5 + 4) != 0
        if SCALE_T:
            scale = scale * tl.load(scale_ptr).to(tl.float32)
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
        tl.store(part_ptr + pid, tl.sum(acc, axis=0) * lam)


def _chunking() -> tuple[int, int]:
    """(CHUNK, BLOCK): elements per program and per load."""
    return (1 << 16, 1 << 16) if interpreter_enabled() else (1 << 15, 4096)


_LAYOUT_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_TABLE_CACHE: OrderedDict[tuple, torch.Tensor] = OrderedDict()


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
        hit = (_to_device(tensor_idx, device), _to_device(starts, device))
        if len(_LAYOUT_CACHE) > 64:
            _LAYOUT_CACHE.clear()
        _LAYOUT_CACHE[key] = hit
    return hit


def _to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``; to CUDA through pinned memory, without blocking the host."""
    if torch.device(device).type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def _table(rows: tuple[tuple[int, ...], ...], device: torch.device) -> torch.Tensor:
    """``int64 [T, 5]`` on ``device``, cached by content: the same pointers next step cost no copy.

    A table holds addresses and sizes only, so it stays right for whatever tensors occupy them.
    """
    key = (str(device), rows)
    tab = _TABLE_CACHE.get(key)
    if tab is None:
        tab = _to_device(torch.tensor(rows, dtype=torch.int64), device)
        _TABLE_CACHE[key] = tab
        if len(_TABLE_CACHE) > 16:
            _TABLE_CACHE.popitem(last=False)
    else:
        _TABLE_CACHE.move_to_end(key)
    return tab


def _launch(
    params, refs, grads, has_grad, lam: float, scale: float, scale_t: torch.Tensor | None, flat: torch.Tensor | None = None
) -> torch.Tensor:
    """One launch over contiguous same-dtype tensors; returns the fp32 per-chunk partials of ``λ·Σ‖θ − θ₀‖²``.

    ``grads`` empty and no ``flat``: loss only. Otherwise writes ``grad (+)= scale·(θ − θ₀)``
    (add where ``has_grad``, plain store elsewhere), ``scale`` times ``scale_t`` when given (a
    0-d tensor: the upstream gradient, read on the device, so no sync). With ``flat``, the
    gradients are its consecutive slices, one per parameter, stored (not added).
    """
    device = params[0].device
    CHUNK, BLOCK = _chunking()
    numels = tuple(p.numel() for p in params)
    tensor_idx, starts = _chunk_layout(numels, CHUNK, device)
    write = len(grads) > 0 or flat is not None
    if flat is not None:  # element offsets into flat: the same table every call
        offsets = [0]
        for n in numels[:-1]:
            offsets.append(offsets[-1] + n)
        rows = tuple((p.data_ptr(), r.data_ptr(), o, n, 0) for p, r, o, n in zip(params, refs, offsets, numels))
    else:
        gl = grads if write else params
        rows = tuple(
            (p.data_ptr(), r.data_ptr(), g.data_ptr(), n, int(h))
            for p, r, g, n, h in zip(params, refs, gl, numels, has_grad if write else [False] * len(params))
        )
    part = torch.empty(tensor_idx.numel(), dtype=torch.float32, device=device)
    g_dtype = flat if flat is not None else (grads[0] if grads else params[0])
    _weight_l2_kernel[(tensor_idx.numel(),)](
        _table(rows, device), tensor_idx, starts, part, float(lam), scale_t if scale_t is not None else part, float(scale),
        flat if flat is not None else part,
        P_DTYPE=tl_dtype(params[0]), R_DTYPE=tl_dtype(refs[0]), G_DTYPE=tl_dtype(g_dtype),
        WRITE_GRAD=write, SCALE_T=scale_t is not None, RELATIVE=flat is not None, CHUNK=CHUNK, BLOCK=BLOCK, num_warps=8,
    )
    return part


def _fake_loss(params, refs, lam):
    return params[0].new_empty((), dtype=torch.float32)


@compile_friendly("weight_l2_loss", _fake_loss)
def weight_l2_triton_loss(params: list[torch.Tensor], refs: list[torch.Tensor], lam: float) -> torch.Tensor:
    """fp32 ``λ·Σ‖θ − θ₀‖²`` over contiguous tensors of one dtype pair, in one launch."""
    return _launch(params, refs, [], [], lam, 0.0, None).sum()


def _fake_grads(params, refs, gout, scale):
    return params[0].new_empty((sum(p.numel() for p in params),))


@compile_friendly("weight_l2_grads", _fake_grads)
def weight_l2_triton_grads(params: list[torch.Tensor], refs: list[torch.Tensor], gout: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale·gout·(θ − θ₀)`` for every parameter, concatenated flat (the autograd form's backward): one
    allocation and one launch; its pointer table does not change between calls."""
    flat = torch.empty(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
    _launch(params, refs, [], [], 0.0, scale, gout, flat)
    return flat


def _fake_accumulate(params, refs, grads, has_grad, lam):
    return params[0].new_empty((), dtype=torch.float32)


@compile_friendly("weight_l2_accumulate", _fake_accumulate, mutates_args=("grads",))
def weight_l2_triton_accumulate(
    params: list[torch.Tensor], refs: list[torch.Tensor], grads: list[torch.Tensor], has_grad: list[bool], lam: float,
) -> torch.Tensor:
    """``grad (+)= 2λ(θ − θ₀)`` in place (add where ``has_grad``, store elsewhere); returns the fp32 loss."""
    return _launch(params, refs, grads, has_grad, lam, 2.0 * lam, None).sum()


def _groups(params, refs, grads=None):
    """Indices grouped by (θ dtype, θ₀ dtype, grad dtype): one launch per group."""
    groups: dict[tuple, list[int]] = {}
    for i, (p, r) in enumerate(zip(params, refs)):
        g = grads[i] if grads is not None else None
        groups.setdefault((p.dtype, r.dtype, None if g is None else g.dtype), []).append(i)
    return groups.values()


def _triton_accumulate(params, refs, lam: float) -> torch.Tensor:
    total = None
    fast_p, fast_r, fast_g, fast_h = [], [], [], []
    for p, r in zip(params, refs):
        g = p.grad
        if p.numel() == 0:  # nothing to add; the gradient of an empty parameter is empty, as autograd has it
            if g is None:
                p.grad = torch.zeros_like(p)
            continue
        if not p.is_contiguous() or (g is not None and not g.is_contiguous()):
            term = weight_l2_reference([p], [r], lam)  # adds into (or creates) p.grad
            total = term if total is None else total + term
            continue
        has = g is not None
        if not has:
            p.grad = g = torch.empty_like(p)
        fast_p.append(p.detach())
        fast_r.append(r.detach() if r.is_contiguous() else r.detach().contiguous())
        fast_g.append(g)
        fast_h.append(has)
    for idx in _groups(fast_p, fast_r, fast_g):
        term = weight_l2_triton_accumulate(
            [fast_p[i] for i in idx], [fast_r[i] for i in idx], [fast_g[i] for i in idx], [fast_h[i] for i in idx], lam
        )
        total = term if total is None else total + term
    return total if total is not None else torch.zeros((), dtype=torch.float32, device=params[0].device)


# --------------------------------------------------------------------------- autograd
class WeightL2Function(torch.autograd.Function):
    """``(lam, T, *params, *refs) -> λ Σ‖θ − θ₀‖²`` (fp32 scalar); backward is one multi-tensor launch.

    Double backward (``create_graph=True``) goes through :func:`weight_l2_reference`.
    """

    @staticmethod
    def forward(ctx, lam: float, T: int, *tensors: torch.Tensor):
        params = [t.contiguous() for t in tensors[:T]]
        refs = [t.contiguous() for t in tensors[T:]]
        ctx.save_for_backward(*tensors)
        keep = [i for i, p in enumerate(params) if p.numel() > 0]
        total = None
        for idx in _groups([params[i] for i in keep], [refs[i] for i in keep]):
            sel = [keep[i] for i in idx]
            term = weight_l2_triton_loss([params[i] for i in sel], [refs[i] for i in sel], lam)
            total = term if total is None else total + term
        ctx.lam, ctx.T = lam, T
        return total if total is not None else torch.zeros((), dtype=torch.float32, device=params[0].device)

    @staticmethod
    def backward(ctx, gout: torch.Tensor):
        T = ctx.T
        saved = ctx.saved_tensors
        params, refs = list(saved[:T]), list(saved[T:])
        if creating_graph():  # create_graph: a differentiable backward, through the reference
            ref = lambda *ts: weight_l2_reference(ts[:T], ts[T:], ctx.lam, accumulate_grad=False)  # noqa: E731
            return (None, None, *backward_through_reference(ref, (*params, *refs), (gout,)))
        params = [t.contiguous() for t in params]
        refs = [t.contiguous() for t in refs]
        need_p = ctx.needs_input_grad[2 : 2 + T]
        need_r = ctx.needs_input_grad[2 + T :]
        grads: list[torch.Tensor | None] = [None] * T
        keep = [i for i in range(T) if (need_p[i] or need_r[i]) and params[i].numel() > 0]
        outs = {}
        for idx in _groups([params[i] for i in keep], [refs[i] for i in keep]):
            sel = [keep[i] for i in idx]
            flat = weight_l2_triton_grads([params[i] for i in sel], [refs[i] for i in sel], gout, 2.0 * ctx.lam)
            parts = flat.split([params[i].numel() for i in sel])
            outs.update((i, part.view(params[i].shape)) for i, part in zip(sel, parts))
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
    if len({id(p) for p in params}) != len(params):
        seen: dict[int, int] = {}
        for i, p in enumerate(params):
            if id(p) in seen:
                raise InputError(
                    f"weight_l2: params[{i}] is params[{seen[id(p)]}] (the same tensor twice); pass each parameter once "
                    "(e.g. dict.fromkeys(params)), or scale lam"
                )
            seen[id(p)] = i


def weight_l2(
    params: list[torch.Tensor], refs: list[torch.Tensor], lam: float, *, accumulate_grad: bool = True
) -> torch.Tensor:
    """``λ Σ‖θ − θ₀‖²`` over the tensors: a 0-d float32 tensor (float64 if any θ or θ₀ is float64).

    :param params: θ, each parameter once (a repeat raises :class:`InputError`).
    :param refs: θ₀, one per θ, same shapes, same device.
    :param lam: λ.
    ``accumulate_grad=True`` (the fused optimizer-side form): also adds ``2λ(θ − θ₀)`` into
    each ``θ.grad`` in place, creating it when None, and returns the detached loss.
    ``accumulate_grad=False``: returns the loss connected to autograd, for use inside a
    larger loss; ``loss.backward()`` then produces the same gradients.
    """
    if isinstance(params, torch.Tensor) or isinstance(refs, torch.Tensor):
        _check(params, refs, lam)
    params, refs = list(params), list(refs)
    _check(params, refs, lam)
    backend = select_backend("weight_l2", params + refs, lambda: sum(p.numel() for p in params))
    if backend == "torch":
        return weight_l2_reference(params, refs, float(lam), accumulate_grad=accumulate_grad)
    if accumulate_grad:
        return _triton_accumulate(params, refs, float(lam))
    return WeightL2Function.apply(float(lam), len(params), *params, *refs)
