"""The random-η sampler step of R0: ``x = α·x̂₀ + σ·(√(1−η²)·ε̂ + η·ξ)``, ξ ~ N(0, I).

``x̂₀`` and ``ε̂`` are ``[B, ...]``; ``α``, ``σ`` are floats or per-sample
``[B]``; ``η`` is a float or per-sample ``[B]`` in [0, 1] (not checked on
tensors, to keep the sampler free of host syncs).

The fresh noise ξ is reproducible from ``(seed, offset)``:

* the Triton kernel draws ``ξ[b, j] = randn(seed, offset + b·M + j)`` (Philox,
  ``tl.randn``) inside the kernel, so ξ never touches memory, and the backward
  regenerates it instead of saving it;
* the torch reference draws ξ with a ``torch.Generator`` on the input's device
  seeded from :func:`torch_seed` ``(seed, offset)``.

The two backends draw **different** noise, each reproducible. :func:`eta_noise`
materializes either backend's ξ, so a test can feed the kernel's ξ to
:func:`eta_step_reference` (``noise=``) and compare exactly.

Backward with upstream ``G``: ``∂x̂₀ = α·G``, ``∂ε̂ = σ·√(1−η²)·G`` and, when
the per-sample α, σ, η tensors need it, ``∂α[b] = Σ G·x̂₀``,
``∂σ[b] = Σ G·(√(1−η²)·ε̂ + η·ξ)``, ``∂η[b] = Σ σ·G·(ξ − η/√(1−η²)·ε̂)``.

Bytes (N = B·M elements, s = element size):

* naive eager: randn writes ξ (4N), then α·x̂₀, √·ε̂, η·ξ, the two adds and σ·(…)
  each read one or two tensors and write one: ≈ 15·N·s.
* fused forward: read x̂₀ and ε̂, write x: **3·N·s**.
* fused backward: read G, write ∂x̂₀ and ∂ε̂: **3·N·s**; with the [B] scalar
  gradients it also reads x̂₀ and ε̂: **5·N·s**.
* full pass: **6·N·s**; torch.compile of the reference cannot fuse the generator's
  ``randn`` (writes ξ, 4N, then read back), so it moves ≈ 5·N·s forward + 3·N·s
  backward = 8·N·s; eager ≈ 15·N·s + 3·N·s.

Prediction (H200, copy 4.17 TB/s, fp32): at B16x16x1024² (N = 256M, full pass
6 GB) the kernels should take ≈ 1.6–1.9 ms (80–90% of copy; the in-kernel Philox +
Box–Muller is ~100 integer/SFU ops per element, close to the H200's compute:bandwidth
balance, so the forward may top out below the backward) against ≈ 2.0 ms for compile
(8·N·s at copy speed) and ≈ 5+ ms eager: ≥ 2.5× eager, ~1.1–1.3× compile. At
latent sizes (≤ 4M elements) the step is launch-bound (≈ 10–30 µs of GPU work), so
there the host path is what counts: per call it now creates no tensor besides the
outputs (α, σ, η go to the kernel as floats or as pointers into the caller's
tensors, instead of 2 ``torch.full`` + ``stack`` + cast = 3 extra launches), the
backward is one launch (+ one [3, B, NC] sum only when a tensor α/σ/η needs its
gradient), and x̂₀, ε̂ are saved for the backward only in that case.
"""

from __future__ import annotations

from typing import Sequence

import torch

from r0kit.errors import InputError
from r0kit.kernels._common import HAS_TRITON, elementwise_block, num_warps_for, triton, tl
from r0kit.kernels._dispatch import (
    KernelBackendError,
    check_float,
    compiler_disable,
    interpreter_enabled,
    select_backend,
)

__all__ = ["eta_step", "eta_step_reference", "eta_noise", "torch_seed", "EtaStepFunction"]

def torch_seed(seed: int, offset: int) -> int:
    """The ``torch.Generator`` seed of the reference path for ``(seed, offset)`` (a 63-bit mix)."""
    h = (int(seed) * 0x9E3779B97F4A7C15 + int(offset) * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & ((1 << 64) - 1)
    h ^= h >> 31
    return h & ((1 << 63) - 1)


def _torch_noise(shape, seed: int, offset: int, device, dtype) -> torch.Tensor:
    gen = torch.Generator(device=device)
    gen.manual_seed(torch_seed(seed, offset))
    return torch.randn(shape, generator=gen, device=device, dtype=dtype)


# --------------------------------------------------------------------------- reference
def eta_step_reference(
    x0: torch.Tensor, eps: torch.Tensor, alpha, sigma, eta, *, seed: int = 0, offset: int = 0,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pure torch, differentiable through autograd; computes in fp32 (fp64 for fp64), returns x̂₀'s dtype.

    ``noise`` overrides ξ (e.g. the kernel's, from :func:`eta_noise`); otherwise ξ is the
    torch-generator draw for ``(seed, offset)``.
    """
    acc = torch.float64 if x0.dtype == torch.float64 else torch.float32
    shape = (-1,) + (1,) * (x0.dim() - 1)

    def per_sample(v):
        return v.to(acc).reshape(shape) if isinstance(v, torch.Tensor) and v.dim() > 0 else v

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
            tl.store(part_ptr + 2 * B * NC + base, tl.sum(sigma * g * (xi - eta / root * ep), axis=0))


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


@compiler_disable
def eta_step_triton_forward(x0: torch.Tensor, eps: torch.Tensor, alpha, sigma, eta, seed: int, offset: int):
    B = x0.shape[0]
    M = x0.numel() // B
    x = torch.empty_like(x0)
    BLOCK = elementwise_block(M)
    args, flags = _coef_args(alpha, sigma, eta, x0)
    _eta_fwd_kernel[(triton.cdiv(M, BLOCK), B)](
        x0, eps, x, *args, M, seed, offset, **flags, NOISE_ONLY=False, BLOCK=BLOCK, num_warps=num_warps_for(BLOCK)
    )
    return x


@compiler_disable
def eta_step_triton_backward(gx, x0, eps, alpha, sigma, eta, seed: int, offset: int, scalar_grads: bool):
    """One launch: ∂x̂₀, ∂ε̂ and (when ``scalar_grads``) per-chunk partials of ∂α, ∂σ, ∂η, summed here."""
    B = x0.shape[0]
    M = x0.numel() // B
    BLOCK = elementwise_block(M)
    NC = triton.cdiv(M, BLOCK)
    dx0 = torch.empty_like(x0)
    deps = torch.empty_like(eps)
    part = torch.empty((3, B, NC), dtype=torch.float32, device=x0.device) if scalar_grads else dx0  # dx0: unused
    args, flags = _coef_args(alpha, sigma, eta, gx)
    _eta_bwd_kernel[(NC, B)](
        gx, x0, eps, dx0, deps, *args, part, M, B, NC, seed, offset, **flags,
        SCALAR_GRADS=scalar_grads, BLOCK=BLOCK, num_warps=num_warps_for(BLOCK),
    )
    return dx0, deps, (part.sum(-1) if scalar_grads else None)


# --------------------------------------------------------------------------- autograd
class EtaStepFunction(torch.autograd.Function):
    """Triton forward/backward of :func:`eta_step`; ξ is regenerated in the backward, never stored.

    Host work per call: no tensor is created but the outputs (α, σ, η go to the kernel as
    floats or as pointers to the caller's tensors), one launch forward and one backward (+ a
    [3, B, NC] → [3, B] sum only when a tensor α/σ/η needs its gradient); x̂₀ and ε̂ are saved
    only when that [B] gradient needs them.
    """

    @staticmethod
    def forward(ctx, x0, eps, alpha, sigma, eta, seed: int, offset: int):
        x0c = x0 if x0.is_contiguous() else x0.contiguous()
        epsc = eps if eps.is_contiguous() else eps.contiguous()
        x = eta_step_triton_forward(x0c, epsc, alpha, sigma, eta, seed, offset)
        coefs = (alpha, sigma, eta)
        ctx.scalar_inputs = [isinstance(v, torch.Tensor) for v in coefs]
        need = ctx.needs_input_grad[2:5]
        ctx.scalar_grads = any(n and is_t for n, is_t in zip(need, ctx.scalar_inputs))
        # floats stay on ctx; tensor α/σ/η (and x̂₀, ε̂ only when [B] gradients need them) are saved
        ctx.floats = [None if t else v for v, t in zip(coefs, ctx.scalar_inputs)]
        saved = [v for v, t in zip(coefs, ctx.scalar_inputs) if t]
        if ctx.scalar_grads:
            saved += [x0c, epsc]
        ctx.save_for_backward(*saved)
        ctx.seed, ctx.offset = seed, offset
        return x.view(x0.shape)

    @staticmethod
    def backward(ctx, gx):
        saved = list(ctx.saved_tensors)
        coefs = [saved.pop(0) if t else v for v, t in zip(ctx.floats, ctx.scalar_inputs)]
        g = gx if gx.is_contiguous() else gx.contiguous()
        # without [B] gradients the kernel reads neither x̂₀ nor ε̂: g stands in (dense, so ∂x̂₀ is too)
        x0, eps = saved if ctx.scalar_grads else (g, g)
        dx0, deps, part = eta_step_triton_backward(g, x0, eps, *coefs, ctx.seed, ctx.offset, ctx.scalar_grads)
        scal = [None, None, None]
        if ctx.scalar_grads:
            need = ctx.needs_input_grad[2:5]
            for i in range(3):
                if need[i] and ctx.scalar_inputs[i]:
                    v = coefs[i]
                    gi = part[i]
                    scal[i] = (gi.sum() if v.numel() == 1 else gi).to(v.dtype).reshape(v.shape)
        return dx0.view(gx.shape), deps.view(gx.shape), *scal, None, None


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
    if not (isinstance(seed, int) and 0 <= seed < 2**63) or not (isinstance(offset, int) and 0 <= offset < 2**62):
        raise InputError(f"eta_step: seed and offset must be non-negative ints (< 2**63, < 2**62), got {seed!r}, {offset!r}")


def eta_step(
    x0: torch.Tensor, eps: torch.Tensor, alpha, sigma, eta, *, seed: int, offset: int = 0
) -> torch.Tensor:
    """``α·x̂₀ + σ·(√(1−η²)·ε̂ + η·ξ)`` with ξ drawn from ``(seed, offset)``.

    Differentiable with respect to ``x0``, ``eps`` and tensor ``alpha``/``sigma``/``eta``.
    Advance ``offset`` by at least ``x0.numel()`` between steps that share a seed, so the
    kernel's draws do not overlap.
    """
    _check(x0, eps, alpha, sigma, eta, seed, offset)
    tensors = [x0, eps] + [v for v in (alpha, sigma, eta) if isinstance(v, torch.Tensor)]
    if select_backend("eta_step", tensors) == "torch":
        return eta_step_reference(x0, eps, alpha, sigma, eta, seed=seed, offset=offset)
    return EtaStepFunction.apply(x0, eps, alpha, sigma, eta, seed, offset)


def eta_noise(
    shape: Sequence[int], seed: int, offset: int = 0, *, device: torch.device | str = "cpu",
    backend: str | None = None,
) -> torch.Tensor:
    """The fp32 ξ that :func:`eta_step` adds for an input of ``shape`` on ``device``.

    ``backend`` is ``"triton"`` or ``"torch"``; ``None`` asks the dispatcher, as
    :func:`eta_step` would for fp32 inputs there.
    """
    shape = tuple(int(s) for s in shape)
    if not shape or shape[0] <= 0:
        raise InputError(f"eta_noise: shape must be [B, ...] with B > 0, got {shape}")
    probe = torch.empty(0, device=device)
    if backend is None:
        backend = select_backend("eta_noise", (probe,))
    if backend == "torch":
        return _torch_noise(shape, seed, offset, probe.device, torch.float32)
    if backend != "triton":
        raise InputError(f"eta_noise: backend must be 'triton', 'torch' or None, got {backend!r}")
    if probe.device.type != "cuda" and not interpreter_enabled():
        raise KernelBackendError(
            f"eta_noise: the Triton noise on {probe.device} needs TRITON_INTERPRET=1 (set before Triton is imported)"
        )
    return _triton_noise(shape, seed, offset, probe.device)


@compiler_disable
def _triton_noise(shape, seed: int, offset: int, device) -> torch.Tensor:
    B = shape[0]
    out = torch.empty(shape, dtype=torch.float32, device=device)
    M = out.numel() // B
    BLOCK = elementwise_block(M)
    _eta_fwd_kernel[(triton.cdiv(M, BLOCK), B)](
        out, out, out, out, out, out, 0.0, 0.0, 0.0, 0, 0, 0, M, int(seed), int(offset),
        A_T=False, S_T=False, E_T=False, NOISE_ONLY=True, BLOCK=BLOCK, num_warps=num_warps_for(BLOCK),
    )
    return out
