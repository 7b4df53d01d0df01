"""Shared helpers of the kernel tests: per-dtype tolerances and two-sided comparisons."""

from __future__ import annotations

import os
import sys

import pytest
import torch

# Triton on CUDA when there is one (and the interpreter was not asked for), else the CPU interpreter.
ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
# Triton fixes interpret-or-compile when it is imported; too late if something imported it already.
INTERPRETER_UNAVAILABLE = (
    not ON_GPU and "triton" in sys.modules and os.environ.get("TRITON_INTERPRET", "0") in ("", "0")
)
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"
DEVICE = "cuda" if ON_GPU else "cpu"

GPU = [pytest.mark.gpu, pytest.mark.skipif(not ON_GPU, reason="fp16/bf16 kernels run on a CUDA device only")]
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float16, id="fp16", marks=GPU),
    pytest.param(torch.bfloat16, id="bf16", marks=GPU),
]

# (atol, rtol) per op family and dtype: reductions and matmuls reorder sums, half types round.
TOL = {
    "elementwise": {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)},
    "reduction": {torch.float32: (2e-5, 2e-5), torch.float16: (5e-3, 5e-3), torch.bfloat16: (3e-2, 3e-2)},
    "preprocess": {torch.float32: (2e-4, 1e-4), torch.float16: (2e-2, 1e-2), torch.bfloat16: (1e-1, 3e-2)},
}


def close(actual: torch.Tensor, expected: torch.Tensor, kind: str, dtype: torch.dtype, *, scale: float = 1.0, msg: str = "") -> None:
    atol, rtol = TOL[kind][dtype]
    torch.testing.assert_close(
        actual.detach().float().cpu(), expected.detach().float().cpu(), atol=atol * scale, rtol=rtol, equal_nan=False,
        msg=(lambda m: f"{msg}: {m}") if msg else None,
    )


def leaf(shape, dtype, device, *, lo: float = -1.0, hi: float = 1.0, gen: torch.Generator | None = None) -> torch.Tensor:
    x = torch.rand(shape, generator=gen, dtype=torch.float32) * (hi - lo) + lo
    return x.to(device=device, dtype=dtype).requires_grad_(True)


def twin(t: torch.Tensor) -> torch.Tensor:
    """An fp32 leaf copy for the reference side."""
    return t.detach().float().clone().requires_grad_(True)
