"""The random-η sampler step of R0: ``x = α·x̂₀ + σ·(√(1−η²)·ε̂ + η·ξ)``, ξ ~ N(0, I).

``x̂₀`` and ``ε̂`` are ``[B, ...]``; ``α``, ``σ`` are floats or per-sample
``[B]``; ``η`` is a float or per-sample ``[B]`` in [0, 1] (not checked on
tensors, to keep the sampler free of host syncs).

The fresh noise ξ is reproducible from ``(seed, offset)``, and both backends
draw the same stream: ``ξ[b, j] = randn(seed, offset + b·M + j)``, Triton's
``tl.randn`` (Philox4x32-10 keyed by the 64-bit seed, counter = the 64-bit
position, then Box–Muller on the first two words). The Triton kernel draws it
inside the kernel (ξ never touches memory; the backward regenerates it); the
torch reference runs the same Philox rounds in int64 arithmetic
(:func:`philox_randn`), so its key space is Triton's too: 2⁶³ seeds × 2⁶²
offsets with no collisions (a ``torch.Generator`` keeps 32 bits of its seed on
the CPU). The integer stream is bit-identical; the Box–Muller floats agree to the
last ulps of each backend's ``log``/``cos``. :func:`eta_noise` returns exactly the
ξ a step used, in its compute precision (fp32 for fp16/bf16/fp32 inputs, fp64
for fp64), for either backend.

Backward with upstream ``G``: ``∂x̂₀ = α·G``, ``∂ε̂ = σ·√(1−η²)·G`` and, when
the per-sample α, σ, η tensors need it, ``∂α[b] = Σ G·x̂₀``,
``∂σ[b] = Σ G·(√(1−η²)·ε̂ + η·ξ)``, ``∂η[b] = Σ σ·G·(ξ − η/√(1−η²)·ε̂)``.
At ``η = 1`` the last is infinite (the derivative of √(1−η²)); η is not
differentiated there: ``∂η[b] = 0`` where ``η[b] = 1``, on both backends.

Bytes (N = B·M elements, s = element size):

* naive eager: randn writes ξ (4N), then α·x̂₀, √·ε̂, η·ξ, the two adds and σ·(…)
  each read one or two tensors and write one: ≈ 15·N·s.
* fused forward: read x̂₀ and ε̂, write x: **3·N·s**.
* fused backward: read G, write ∂x̂₀ and ∂ε̂: **3·N·s**; with the [B] scalar
  gradients it also reads x̂₀ and ε̂: **5·N·s**.
* full pass: **6·N·s**; torch.compile of the reference cannot fuse the generator's
  ``randn`` (writes ξ, 4N, then read back), so it moves ≈ 5·N·s forward + 3·N·s
  backward = 8·N·s; eager ≈ 15·N·s + 3·N·s.

At latent sizes (≤ 4M elements) the step is launch-bound (≈ 10–30 µs of GPU
work), so there the host path is what counts: per call it creates no tensor
besides the outputs (α, σ, η go to the kernel as floats or as pointers into the
caller's tensors), the backward is one launch (+ one [3, B, NC] sum only when a
tensor α/σ/η needs its gradient), and x̂₀, ε̂ are saved for the backward only in
that case.
"""

from __future__ import annotations

from typing import Sequence

import torch

from r0kit.errors import InputError
from r0kit.kernels._common import (
    HAS_TRITON,
    cdiv,
    backward_through_reference,
    creating_graph,
    compile_friendly,
    elementwise_block,
    num_warps_for,
    triton,
    tl,
)
from r0kit.kernels._dispatch import KernelBackendError, check_float, interpreter_enabled, select_backend

__all__ = ["eta_step", "eta_step_reference", "eta_noise", "philox_randn", "philox_words", "EtaStepFunction"]

# --------------------------------------------------------------------------- Philox, as tl.randn
_M32 = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57  # triton/language/random.py, PHILOX_ROUND_A/B (32-bit)
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85  # PHILOX_KEY_A/B


def _mul32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of ``a·b`` (``a`` a 32-bit constant, ``b`` int64 in [0, 2³²)), without int64 overflow."""
    b_hi, b_lo = b >> 16, b & 0xFFFF
    x, y = b_hi * a, b_lo * a  # each < 2⁴⁸
    return (x + (y >> 16)) >> 16, (((x & 0xFFFF) << 16) + y) & _M32


def philox_words(seed: int, counters: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The first two 32-bit words of Philox4x32-10 (as int64 in [0, 2³²)), as ``tl.randint4x``
    gives them: key (seed low, seed high 32 bits), counter (low, high 32 bits of ``counters``, 0, 0)."""
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    c0, c1 = counters & _M32, (counters >> 32) & _M32
    # round 1 with c2 = c3 = 0: B·c2 = 0
    hi, lo = _mul32(_ROUND_A, c0)
    c0, c1, c2, c3 = c1 ^ k0, torch.zeros_like(c0), hi ^ k1, lo
    for _ in range(9):
        k0, k1 = (k0 + _KEY_A) & _M32, (k1 + _KEY_B) & _M32
        hi_b, lo_b = _mul32(_ROUND_B, c2)
        hi_a, lo_a = _mul32(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
    return c0, c1


def philox_randn(seed: int, counters: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``tl.randn(seed, counters)`` in torch: standard normals, one per int64 counter.

    Philox4x32-10 with key (seed low, seed high 32 bits) on the counter (low, high, 0, 0), the
    first two words mapped to uniforms as ``tl.uint_to_uniform_float`` does, then Box–Muller
    (``triton/language/random.py``). The uniforms are fp32 as in Triton; the transform runs in
    ``dtype`` (fp32, or fp64 for a fp64 step).
    """
    c0, c1 = philox_words(seed, counters)

    def uniform(x):  # the uint32 read as int32, ~x where negative, times 2⁻³¹ (fp32)
        x = torch.where(x >= 1 << 31, x - (1 << 32), x)
        return torch.where(x < 0, -x - 1, x).to(torch.float32) * 4.6566127342e-10

    u1 = uniform(c0).clamp_min(1.0e-7).to(dtype)
    u2 = uniform(c1).to(dtype)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(6.283185307179586 * u2)


def _torch_noise(shape, seed: int, offset: int, device, dtype) -> torch.Tensor:
    n = 1
    for s in shape:
        n *= s
    counters = torch.arange(offset, offset + n, dtype=torch.int64, device=device)
    return philox_randn(seed, counters, dtype).view(shape)


# --------------------------------------------------------------------------- reference
def eta_step_reference(
    x0: torch.Tensor, eps: torch.Tensor, alpha, sigma, eta, *, seed: int = 0, offset: int = 0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pure torch, differentiable through autograd; computes in fp32 (fp64 for fp64), returns x̂₀'s dtype.

    ``noise`` overrides ξ; otherwise ξ is :func:`philox_randn` for ``(seed, offset)``. A tensor
    η is not differentiated where it equals 1 (see the module docstring).
    """
    acc = torch.float64 if x0.dtype == torch.float64 else torch.float32
    shape = (-1,) + (1,) * (x0.dim() - 1)

    def per_sample(v):
        return v.to(acc).reshape(shape) if isinstance(v, torch.Tensor) and v.dim() > 0 else v

    if isinstance(eta, torch.Tensor):
        eta = torch.where(eta < 1, eta, eta.detach())  # ∂η := 0 at η = 1, where it is infinite
    a, s, e = per_sample(alpha), per_sample(sigma), per_sample(eta)
    xi = noise.to(acc) if noise is not None else _torch_noise(x0.shape, seed, offset, x0.device, acc)
    root = torch.sqrt(1.0 - e * e) if isinstance(e, torch.Tensor) else (1.0 - e * e) ** 0.5
    return (a * x0.to(acc) + s * (root * eps.to(acc) + e * xi)).to(x0.dtype)


# --------------------------------------------------------------------------- kernels
if HAS_TRITON:

    @triton.jit
    def _coef(ptr, val, stride, pid_b, IS_T: tl.constexpr):
        """One per-sample coefficient in fp32: loaded from a tensor, or the float argument."""
        if IS_T:
            return tl.load(ptr + pid_b * stride).to(tl.float32)
        return val  # a float argument is fp32 in the kernel

    @triton.jit
    def _eta_fwd_kernel(
        x0_ptr,  # [B, M] x̂₀
        eps_ptr,  # [B, M] ε̂
        x_ptr,  # [B, M] out
        a_ptr,  # [B] or [1] α when A_T (stride a_st), else unused
        s_ptr,  # [B] or [1] σ when S_T
        e_ptr,  # [B] or [1] η when E_T
        a_val,  # float α when not A_T
        s_val,
        e_val,
        a_st,  # element stride of the α tensor (0 for a single value)
        s_st,
        e_st,
        M,
        seed,
        offset,  # int64 Philox counter base: element (b, j) uses offset + b·M + j
        A_T: tl.constexpr,  # α is a tensor (mode flag), else the float a_val
        S_T: tl.constexpr,
        E_T: tl.constexpr,
        NOISE_ONLY: tl.constexpr,  # write ξ itself (eta_noise), read nothing
        BLOCK: tl.constexpr,
    ):
        pid_c = tl.program_id(0).to(tl.int64)
        pid_b = tl.program_id(1).to(tl.int64)
        offs = pid_c * BLOCK + tl.arange(0, BLOCK)
        mask = offs < M
        idx = pid_b * M + offs
        xi = tl.randn(seed, offset + idx)
        if NOISE_ONLY:
            tl.store(x_ptr + idx, xi.to(x_ptr.dtype.element_ty), mask=mask)
        else:
            alpha = _coef(a_ptr, a_val, a_st, pid_b, A_T)
            sigma = _coef(s_ptr, s_val, s_st, pid_b, S_T)
            eta = _coef(e_ptr, e_val, e_st, pid_b, E_T)
            root = tl.sqrt(1.0 - eta * eta)
            x0 = tl.load(x0_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            ep = tl.load(eps_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            x = alpha * x0 + sigma * (root * ep + eta * xi)
            tl.store(x_ptr + idx, x.to(x_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _eta_bwd_kernel(
        gx_ptr,  # [B, M] upstream gradient
        x0_ptr,  # [B, M] x̂₀ (read when SCALAR_GRADS)
        eps_ptr,  # [B, M] ε̂ (read when SCALAR_GRADS)
        dx0_ptr,  # [B, M] out
        deps_ptr,  # [B, M] out
        a_ptr,  # [B] or [1] α when A_T (see _eta_fwd_kernel)
        s_ptr,
        e_ptr,
        a_val,
        s_val,
        e_val,
        a_st,
        s_st,
        e_st,
        part_ptr,  # [3, B, NC] fp32 out: partial ∂α, ∂σ, ∂η (when SCALAR_GRADS)
        M,
        B,
        NC,
        seed,
        offset,
        A_T: tl.constexpr,
        S_T: tl.constexpr,
        E_T: tl.constexpr,
        SCALAR_GRADS: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        pid_c = tl.program_id(0).to(tl.int64)
        pid_b = tl.program_id(1).to(tl.int64)
        offs = pid_c * BLOCK + tl.arange(0, BLOCK)
        mask = offs < M
        idx = pid_b * M + offs
        alpha = _coef(a_ptr, a_val, a_st, pid_b, A_T)
        sigma = _coef(s_ptr, s_val, s_st, pid_b, S_T)
        eta = _coef(e_ptr, e_val, e_st, pid_b, E_T)
        root = tl.sqrt(1.0 - eta * eta)
        g = tl.load(gx_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        tl.store(dx0_ptr + idx, (alpha * g).to(dx0_ptr.dtype.element_ty), mask=mask)
        tl.store(deps_ptr + idx, (sigma * root * g).to(deps_ptr.dtype.element_ty), mask=mask)
        if SCALAR_GRADS:
            xi = tl.randn(seed, offset + idx)
            x0 = tl.load(x0_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            ep = tl.load(eps_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            xi = tl.where(mask, xi, 0.0)
            base = pid_b * NC + pid_c
            tl.store(part_ptr + base, tl.sum(g * x0, axis=0))
            tl.store(part_ptr + B * NC + base, tl.sum(g * (root * ep + eta * xi), axis=0))
            # η is not differentiated at η = 1, where ∂η is infinite
            d_eta = tl.where(eta < 1.0, tl.sum(sigma * g * (xi - eta / root * ep), axis=0), 0.0)
            tl.store(part_ptr + 2 * B * NC + base, d_eta)


def _coef_args(alpha, sigma, eta, dummy: torch.Tensor) -> tuple[list, dict]:
    """Kernel arguments for α, σ, η without creating a tensor on the host.

    A tensor coefficient ([B] or a single value) is passed as a pointer plus an element
    stride (0 for one value) and loaded in the kernel; a float is passed by value. Returns
    ``(pointers + floats + strides, constexpr flags)``.
    """
    ptrs, vals, strides, flags = [], [], [], {}
    for v, flag in ((alpha, "A_T"), (sigma, "S_T"), (eta, "E_T")):
        if isinstance(v, torch.Tensor):
            ptrs.append(v)
            vals.append(0.0)
            strides.append(v.stride(0) if v.dim() == 1 and v.numel() > 1 else 0)
            flags[flag] = True
        else:
            ptrs.append(dummy)
            vals.append(float(v))
            strides.append(0)
            flags[flag] = False
    return ptrs + vals + strides, flags


def _coef_pair(t: torch.Tensor | None, f: float):
    return t if t is not None else f


def _fake_forward(x0, eps, alpha_t, sigma_t, eta_t, alpha, sigma, eta, seed, offset):
    return torch.empty_like(x0)


@compile_friendly("eta_step_fwd", _fake_forward)
def eta_step_triton_forward(
    x0: torch.Tensor, eps: torch.Tensor, alpha_t: torch.Tensor | None, sigma_t: torch.Tensor | None,
    eta_t: torch.Tensor | None, alpha: float, sigma: float, eta: float, seed: int, offset: int,
) -> torch.Tensor:
    """One launch; each coefficient is its tensor when given, else its float."""
    B = x0.shape[0]
    M = x0.numel() // B
    x = torch.empty_like(x0)
    BLOCK = elementwise_block(M)
    args, flags = _coef_args(_coef_pair(alpha_t, alpha), _coef_pair(sigma_t, sigma), _coef_pair(eta_t, eta), x0)
    _eta_fwd_kernel[(cdiv(M, BLOCK), B)](
        x0, eps, x, *args, M, seed, offset, **flags, NOISE_ONLY=False, BLOCK=BLOCK, num_warps=num_warps_for(BLOCK)
    )
    return x


def _backward(gx, x0, eps, alpha_t, sigma_t, eta_t, alpha, sigma, eta, seed, offset, scalar_grads: bool):
    """One launch: ∂x̂₀, ∂ε̂ and, when ``scalar_grads``, per-chunk partials ``[3, B, NC]`` of ∂α, ∂σ, ∂η."""
    B = x0.shape[0]
    M = x0.numel() // B
    BLOCK = elementwise_block(M)
    NC = cdiv(M, BLOCK)
    dx0 = torch.empty_like(gx)
    deps = torch.empty_like(gx)
    part = torch.empty((3, B, NC), dtype=torch.float32, device=x0.device) if scalar_grads else dx0  # dx0: unused
    args, flags = _coef_args(_coef_pair(alpha_t, alpha), _coef_pair(sigma_t, sigma), _coef_pair(eta_t, eta), gx)
    _eta_bwd_kernel[(NC, B)](
        gx, x0, eps, dx0, deps, *args, part, M, B, NC, seed, offset, **flags,
        SCALAR_GRADS=scalar_grads, BLOCK=BLOCK, num_warps=num_warps_for(BLOCK),
    )
    return dx0, deps, part


def _fake_backward(gx, alpha_t, sigma_t, eta_t, alpha, sigma, eta, seed, offset):
    return torch.empty_like(gx), torch.empty_like(gx)


@compile_friendly("eta_step_bwd", _fake_backward)
def eta_step_triton_backward(
    gx: torch.Tensor, alpha_t: torch.Tensor | None, sigma_t: torch.Tensor | None, eta_t: torch.Tensor | None,
    alpha: float, sigma: float, eta: float, seed: int, offset: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """∂x̂₀, ∂ε̂ in one launch (it reads neither x̂₀ nor ε̂, nor draws ξ)."""
    dx0, deps, _ = _backward(gx, gx, gx, alpha_t, sigma_t, eta_t, alpha, sigma, eta, seed, offset, False)
    return dx0, deps


def _fake_backward_scalars(gx, x0, eps, alpha_t, sigma_t, eta_t, alpha, sigma, eta, seed, offset):
    return torch.empty_like(gx), torch.empty_like(gx), gx.new_empty((3, gx.shape[0]), dtype=torch.float32)


@compile_friendly("eta_step_bwd_scalars", _fake_backward_scalars)
def eta_step_triton_backward_scalars(
    gx: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, alpha_t: torch.Tensor | None, sigma_t: torch.Tensor | None,
    eta_t: torch.Tensor | None, alpha: float, sigma: float, eta: float, seed: int, offset: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """∂x̂₀, ∂ε̂ and the per-sample ∂α, ∂σ, ∂η ``[3, B]`` in one launch (+ the sum of its chunk partials)."""
    dx0, deps, part = _backward(gx, x0, eps, alpha_t, sigma_t, eta_t, alpha, sigma, eta, seed, offset, True)
    return dx0, deps, part.sum(-1)


# --------------------------------------------------------------------------- autograd
def _split(v) -> tuple[torch.Tensor | None, float]:
    return (v, 0.0) if isinstance(v, torch.Tensor) else (None, float(v))


class EtaStepFunction(torch.autograd.Function):
    """Triton forward/backward of :func:`eta_step`; ξ is regenerated in the backward, never stored.

    Host work per call: no tensor is created but the outputs (α, σ, η go to the kernel as
    floats or as pointers to the caller's tensors), one launch forward and one backward (+ a
    [3, B, NC] → [3, B] sum only when a tensor α/σ/η needs its gradient); x̂₀ and ε̂ are saved
    only when that [B] gradient needs them. Double backward (``create_graph=True``) goes
    through :func:`eta_step_reference` fed the kernel's ξ.
    """

    @staticmethod
    def forward(ctx, x0, eps, alpha, sigma, eta, seed: int, offset: int):
        x0c = x0 if x0.is_contiguous() else x0.contiguous()
        epsc = eps if eps.is_contiguous() else eps.contiguous()
        (at, af), (st, sf), (et, ef) = _split(alpha), _split(sigma), _split(eta)
        x = eta_step_triton_forward(x0c, epsc, at, st, et, af, sf, ef, seed, offset)
        coefs = (alpha, sigma, eta)
        ctx.scalar_inputs = [isinstance(v, torch.Tensor) for v in coefs]
        need = ctx.needs_input_grad[2:5]
        ctx.scalar_grads = any(n and is_t for n, is_t in zip(need, ctx.scalar_inputs))
        # floats stay on ctx; tensor α/σ/η (and x̂₀, ε̂ only when [B] gradients need them) are saved
        ctx.floats = [None if t else v for v, t in zip(coefs, ctx.scalar_inputs)]
        saved = [v for v, t in zip(coefs, ctx.scalar_inputs) if t]
        if ctx.scalar_grads:
            saved += [x0, eps]
        ctx.save_for_backward(*saved)
        ctx.seed, ctx.offset, ctx.dtype = seed, offset, x0.dtype
        return x.view(x0.shape)

    @staticmethod
    def backward(ctx, gx):
        saved = list(ctx.saved_tensors)
        coefs = [saved.pop(0) if t else v for v, t in zip(ctx.floats, ctx.scalar_inputs)]
        if creating_graph():  # create_graph: a differentiable backward, through the reference
            return _backward_through_reference(ctx, gx, coefs, saved)
        g = gx if gx.is_contiguous() else gx.contiguous()
        (at, af), (st, sf), (et, ef) = (_split(v) for v in coefs)
        scal = [None, None, None]
        if not ctx.scalar_grads:
            dx0, deps = eta_step_triton_backward(g, at, st, et, af, sf, ef, ctx.seed, ctx.offset)
        else:
            x0, eps = ((t if t.is_contiguous() else t.contiguous()) for t in saved)
            dx0, deps, sums = eta_step_triton_backward_scalars(g, x0, eps, at, st, et, af, sf, ef, ctx.seed, ctx.offset)
            need = ctx.needs_input_grad[2:5]
            for i in range(3):
                if need[i] and ctx.scalar_inputs[i]:
                    v = coefs[i]
                    scal[i] = (sums[i].sum() if v.numel() == 1 else sums[i]).to(v.dtype).reshape(v.shape)
        return dx0.view(gx.shape), deps.view(gx.shape), *scal, None, None


def _backward_through_reference(ctx, gx, coefs, saved):
    if ctx.scalar_grads:
        x0, eps = saved
    else:  # the first-order backward does not read x̂₀, ε̂: stand-ins of the right shape
        x0 = eps = torch.zeros_like(gx).requires_grad_(True)
    xi = eta_noise(gx.shape, ctx.seed, ctx.offset, device=gx.device, dtype=ctx.dtype, backend="triton")
    ref = lambda a, b, al, si, et: eta_step_reference(a, b, al, si, et, noise=xi)  # noqa: E731
    grads = backward_through_reference(ref, (x0, eps, *coefs), (gx,))
    scal = [grads[2 + i] if ctx.needs_input_grad[2 + i] else None for i in range(3)]
    return grads[0], grads[1], *scal, None, None


# --------------------------------------------------------------------------- public
def _check_scalar(name: str, v, B: int, device) -> None:
    if isinstance(v, torch.Tensor):
        check_float(f"eta_step: {name}", v)
        if v.numel() not in (1, B) or v.dim() > 1:
            raise InputError(f"eta_step: {name} must be a float, a 0-d tensor or a [B]={B} tensor, got shape {tuple(v.shape)}")
        if v.device != device:
            raise InputError(f"eta_step: {name} is on {v.device} but x0 is on {device}; move it with .to(x0.device)")
    elif not isinstance(v, (int, float)) or isinstance(v, bool):
        raise InputError(f"eta_step: {name} must be a float or a [B] tensor, got {type(v).__name__}")


def _check_key(op: str, seed, offset) -> None:
    if not (isinstance(seed, int) and 0 <= seed < 2**63) or not (isinstance(offset, int) and 0 <= offset < 2**62):
        raise InputError(f"{op}: seed and offset must be non-negative ints (< 2**63, < 2**62), got {seed!r}, {offset!r}")


def _check(x0, eps, alpha, sigma, eta, seed, offset) -> None:
    check_float("eta_step: x0", x0)
    check_float("eta_step: eps", eps)
    if x0.dim() < 1 or x0.shape[0] == 0 or x0.shape != eps.shape:
        raise InputError(f"eta_step: x0 and eps must share one [B, ...] shape, got {tuple(x0.shape)} and {tuple(eps.shape)}")
    if x0.dtype != eps.dtype or x0.device != eps.device:
        raise InputError(f"eta_step: x0 is {x0.dtype} on {x0.device} but eps is {eps.dtype} on {eps.device}; make them match")
    for name, v in (("alpha", alpha), ("sigma", sigma), ("eta", eta)):
        _check_scalar(name, v, x0.shape[0], x0.device)
    if not isinstance(eta, torch.Tensor) and not 0.0 <= eta <= 1.0:
        raise InputError(f"eta_step: eta must be in [0, 1], got {eta}")
    _check_key("eta_step", seed, offset)


def eta_step(
    x0: torch.Tensor, eps: torch.Tensor, alpha, sigma, eta, *, seed: int, offset: int = 0
) -> torch.Tensor:
    """``α·x̂₀ + σ·(√(1−η²)·ε̂ + η·ξ)`` with ξ drawn from ``(seed, offset)``.

    :param x0: x̂₀ ``[B, ...]`` float. :param eps: ε̂, same shape, dtype and device.
    :param alpha: α: a float, a 0-d tensor or ``[B]``. :param sigma: σ, likewise.
    :param eta: η in [0, 1]: a float (checked) or a tensor (not checked: no host sync).
    :param seed: Philox key, ``0 <= seed < 2**63``. :param offset: counter base, ``< 2**62``.
    :returns: ``[B, ...]`` in x̂₀'s dtype, computed in fp32 (fp64 for fp64).

    Differentiable with respect to ``x0``, ``eps`` and tensor ``alpha``/``sigma``/``eta``
    (twice too; ∂η is 0 where η = 1). Advance ``offset`` by at least ``x0.numel()`` between
    steps that share a seed, so the draws do not overlap.
    """
    _check(x0, eps, alpha, sigma, eta, seed, offset)
    tensors = [x0, eps] + [v for v in (alpha, sigma, eta) if isinstance(v, torch.Tensor)]
    if select_backend("eta_step", tensors, x0.numel()) == "torch" or x0.numel() == 0:
        return eta_step_reference(x0, eps, alpha, sigma, eta, seed=seed, offset=offset)
    return EtaStepFunction.apply(x0, eps, alpha, sigma, eta, seed, offset)


def eta_noise(
    shape: Sequence[int], seed: int, offset: int = 0, *, device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32, backend: str | None = None,
) -> torch.Tensor:
    """Exactly the ξ that :func:`eta_step` adds for an input of ``shape``, ``dtype`` and ``device``.

    :param dtype: the step's input dtype. ξ comes back in the step's compute precision: fp32
        for fp16/bf16/fp32 inputs, fp64 for fp64 inputs.
    :param backend: ``"triton"`` or ``"torch"``; ``None`` asks the dispatcher, as
        :func:`eta_step` would for such inputs there.
    :raises KernelBackendError: for the Triton noise of a fp64 step (the kernels do not
        compute fp64), or on a CPU without ``TRITON_INTERPRET=1``.
    """
    shape = tuple(int(s) for s in shape)
    if not shape or shape[0] <= 0:
        raise InputError(f"eta_noise: shape must be [B, ...] with B > 0, got {shape}")
    if any(s == 0 for s in shape):
        backend = "torch"  # nothing to draw
    _check_key("eta_noise", seed, offset)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise InputError(f"eta_noise: dtype must be a floating torch.dtype (the step's input dtype), got {dtype!r}")
    probe = torch.empty(0, device=device, dtype=dtype)
    if backend is None:
        numel = 1
        for d in shape:
            numel *= d
        backend = select_backend("eta_step", (probe,), numel)  # as eta_step decides for this input
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    if backend == "torch":
        return _torch_noise(shape, seed, offset, probe.device, compute)
    if backend != "triton":
        raise InputError(f"eta_noise: backend must be 'triton', 'torch' or None, got {backend!r}")
    if compute == torch.float64:
        raise KernelBackendError("eta_noise: the Triton kernels do not compute float64 steps (those run on torch); use backend='torch'")
    if probe.device.type != "cuda" and not interpreter_enabled():
        raise KernelBackendError(
            f"eta_noise: the Triton noise on {probe.device} needs TRITON_INTERPRET=1 (set before Triton is imported)"
        )
    return _triton_noise(shape, seed, offset, probe.device)


def _triton_noise(shape, seed: int, offset: int, device) -> torch.Tensor:
    B = shape[0]
    out = torch.empty(shape, dtype=torch.float32, device=device)
    M = out.numel() // B
    BLOCK = elementwise_block(M)
    _eta_fwd_kernel[(cdiv(M, BLOCK), B)](
        out, out, out, out, out, out, 0.0, 0.0, 0.0, 0, 0, 0, M, int(seed), int(offset),
        A_T=False, S_T=False, E_T=False, NOISE_ONLY=True, BLOCK=BLOCK, num_warps=num_warps_for(BLOCK),
    )
    return out
