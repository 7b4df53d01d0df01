"""Helpers shared by the kernel modules: Triton import guard, dtype maps, launch sizing,
pointers passed by value, the clamp-gradient convention, compile-friendly launchers and the
differentiable fallback of a first-order backward."""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch

from r0kit.kernels._dispatch import interpreter_enabled, triton_available

HAS_TRITON = triton_available()

if HAS_TRITON:
    import triton
    import triton.language as tl

    TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}
else:  # pragma: no cover - exercised on machines without Triton
    triton = None
    tl = None
    TL_DTYPES = {}

#: How many tensors a kernel takes as pointer arguments (by value): no table, no host-to-device copy.
MAX_PTR_ARGS = 8


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` in plain Python (``triton.cdiv`` is a jitted function: ~20 µs a call from the host)."""
    return -(-a // b)


def elementwise_block(n: int, *, gpu_block: int = 4096) -> int:
    """BLOCK for a 1-D sweep over ``n`` elements.

    On a GPU ``gpu_block`` (enough bytes in flight per program); under the CPU
    interpreter as large as the data (up to 64K): there each program costs
    milliseconds of Python, whatever its size.
    """
    cap = 1 << 16 if interpreter_enabled() else gpu_block
    return max(16, min(cap, next_pow2(n)))


def num_warps_for(block: int) -> int:
    return 4 if block <= 2048 else 8


def tl_dtype(t: torch.Tensor):
    return TL_DTYPES[t.dtype]


def pointer_args(tensors: Sequence[torch.Tensor]) -> list[int]:
    """``MAX_PTR_ARGS`` data pointers as ints, for kernels that take them as scalar arguments.

    Unused slots repeat the first pointer, so every slot keeps one integer type (and Triton one
    specialization) whatever the count.
    """
    if not 0 < len(tensors) <= MAX_PTR_ARGS:
        raise ValueError(f"pointer_args takes 1..{MAX_PTR_ARGS} tensors, got {len(tensors)}")
    ptrs = [t.data_ptr() for t in tensors]
    return ptrs + [ptrs[0]] * (MAX_PTR_ARGS - len(ptrs))


def _clamp_probe() -> bool:
    with torch.enable_grad():
        x = torch.tensor([0.0, 1.0], requires_grad=True)
        (g,) = torch.autograd.grad(x.clamp(0.0, 1.0).sum(), x)
    return bool(g[0] != 0)


# Asked at import: inside a custom op (torch.compile) autograd is switched off below the dispatcher.
_CLAMP_PASSES_BOUNDS = _clamp_probe()


def clamp_passes_gradient_at_bounds() -> bool:
    """Whether ``torch.clamp(x, lo, hi)`` with float bounds passes the gradient where ``x`` equals
    a bound. torch has answered both ways across releases (2.14: it does not); the kernels ask
    once, so that their clamp backward always agrees with the torch reference."""
    return _CLAMP_PASSES_BOUNDS


if HAS_TRITON:

    @triton.jit
    def pick_ptr(k, p0, p1, p2, p3, p4, p5, p6, p7, DTYPE: tl.constexpr):
        """The ``k``-th of eight pointers passed by value (int64 scalars), as a ``DTYPE*``."""
        p = tl.where(k == 1, p1, p0)
        p = tl.where(k == 2, p2, p)
        p = tl.where(k == 3, p3, p)
        p = tl.where(k == 4, p4, p)
        p = tl.where(k == 5, p5, p)
        p = tl.where(k == 6, p6, p)
        p = tl.where(k == 7, p7, p)
        return p.to(tl.pointer_type(DTYPE))


def compile_friendly(name: str, fake: Callable, *, mutates_args: tuple[str, ...] = ()):
    """Register a host launcher as the custom op ``r0kit::<name>`` and return the function to call.

    In eager mode the returned function is the launcher itself (a custom op's dispatch costs
    ~10-20 µs per call, more than the launch). While ``torch.compile`` traces, it calls the
    custom op instead: dynamo cannot trace a launcher (it reads data pointers), but it records
    an opaque op without a graph break, and ``fake`` gives the output shapes.
    """

    def wrap(fn):
        op = torch.library.custom_op(f"r0kit::{name}", mutates_args=mutates_args)(fn)
        op.register_fake(fake)

        @functools.wraps(fn)
        def call(*args):
            if torch.compiler.is_compiling():
                return op(*args)
            return fn(*args)

        call.custom_op = op
        return call

    return wrap


def creating_graph() -> bool:
    """Inside an autograd.Function's backward: was ``create_graph=True`` asked for?

    Autograd runs a backward with grad mode on exactly then. Under ``torch.compile`` the backward
    is traced (with grad mode on) and cannot itself be differentiated, so the answer is no.
    """
    return torch.is_grad_enabled() and not torch.compiler.is_compiling()


def backward_through_reference(reference: Callable, inputs: Sequence, grads: Sequence) -> tuple:
    """The vector-Jacobian product of ``reference(*inputs)`` with ``grads``, as a differentiable graph.

    The kernels' backward passes are first-order. When autograd asks for a graph of the backward
    (``create_graph=True``: double backward, gradient penalties), the ops compute their backward
    here instead, through the torch reference, so that second derivatives are those of the same
    formula. Returns one gradient (or None) per entry of ``inputs``; non-tensors get None.
    """
    diff = [i for i, t in enumerate(inputs) if isinstance(t, torch.Tensor) and t.requires_grad]
    with torch.enable_grad():
        outs = reference(*inputs)
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
        got = torch.autograd.grad(
            [o for o, _ in pairs], [inputs[i] for i in diff], [g for _, g in pairs], create_graph=True, allow_unused=True
        ) if pairs and diff else [None] * len(diff)
    result: list = [None] * len(inputs)
    for i, g in zip(diff, got):
        result[i] = g if g is not None else torch.zeros_like(inputs[i])
    return tuple(result)
