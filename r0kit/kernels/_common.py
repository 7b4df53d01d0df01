"""Helpers shared by the kernel modules: Triton import guard, dtype maps, launch sizing."""

from __future__ import annotations

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


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


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


def pointer_table(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """``int64 [len(tensors)]`` of data pointers, on ``device``, for kernels that walk many tensors.

    The caller keeps ``tensors`` alive for the launch (the kernels run in stream order, so
    the caching allocator cannot hand their memory to anything that runs before them).
    """
    return torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64, device=device)
