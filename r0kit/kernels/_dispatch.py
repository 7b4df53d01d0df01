"""Choose between an op's Triton kernel and its pure-torch reference.

``R0KIT_KERNELS`` (read at every call, so tests and users can flip it):

``auto`` (default)
    Triton when every tensor argument is on a CUDA device, Triton imports and
    the dtype is one the kernels compute (fp16, bf16, fp32); the reference
    otherwise (CPU tensors, float64, no Triton). Also the reference where the
    GPU sweep measured it faster at this size on this device: below the
    crossover sizes in ``crossover.json`` (one for eager mode, one under
    ``torch.compile``, where the reference is what inductor fuses), so turning
    the kernels on never makes an op slower. A device the sweep has not
    measured gets Triton at every size.
``triton``
    Always the kernel. On CPU tensors this needs Triton's interpreter
    (``TRITON_INTERPRET=1`` set before Triton is first imported); without it
    the call raises :class:`KernelBackendError` saying so.
``torch``
    Always the reference.

Triton is imported lazily and guarded: importing :mod:`r0kit.kernels` works on
machines without it, and only a forced ``triton`` backend then fails, with an
error that names the fix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable, Literal

import torch

from r0kit.errors import R0kitError

Backend = Literal["triton", "torch"]
ENV_VAR = "R0KIT_KERNELS"
_MODES = ("auto", "triton", "torch")
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class KernelBackendError(R0kitError, RuntimeError):
    """The requested kernel backend cannot run here."""


_UNCHECKED = "unchecked"
_triton_error: str | None = _UNCHECKED


def triton_import_error() -> str | None:
    """``None`` when ``import triton`` works, else the reason it does not (tried once)."""
    global _triton_error
    if _triton_error is _UNCHECKED:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401

            _triton_error = None
        except Exception as exc:  # ImportError, or a broken install raising anything else
            _triton_error = f"{type(exc).__name__}: {exc}"
    return _triton_error


def triton_available() -> bool:
    return triton_import_error() is None


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def requested_mode() -> str:
    mode = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise KernelBackendError(f"{ENV_VAR}={mode!r} is not one of {', '.join(_MODES)}; unset it or pick one of those")
    return mode


#: Written by the GPU sweep (benchmarks/gpu/run_real_shapes.sh): {"devices": {name: {op: {"eager": n, "compile": n}}}},
#: the op's size (elements) below which its torch reference was measured faster than the kernels.
CROSSOVER_FILE = Path(__file__).with_name("crossover.json")
_crossover: dict | None = None


def crossover_table() -> dict:
    """``{device name: {op: {"eager": n, "compile": n}}}`` from :data:`CROSSOVER_FILE` (read once; {} if absent)."""
    global _crossover
    if _crossover is None:
        try:
            _crossover = json.loads(CROSSOVER_FILE.read_text()).get("devices", {})
        except (OSError, ValueError):
            _crossover = {}
    return _crossover


@torch._dynamo.assume_constant_result
def crossover_size(op: str, device_index: int, compiling: bool) -> int:
    """Elements below which ``op`` runs faster on the torch reference on this CUDA device (0: never)."""
    table = crossover_table()
    if not table:
        return 0
    entry = table.get(torch.cuda.get_device_name(device_index), {}).get(op, {})
    return int(entry.get("compile" if compiling else "eager", 0))


def reference_is_faster(op: str, device_index: int, numel: int | Callable[[], int]) -> bool:
    """Whether the sweep measured ``op``'s reference faster than its kernels at ``numel`` elements on this
    CUDA device (in eager mode, or under torch.compile while it traces)."""
    below = crossover_size(op, device_index, torch.compiler.is_compiling())
    return bool(below) and (numel() if callable(numel) else numel) < below


def select_backend(op: str, tensors: Iterable[torch.Tensor], numel: int | Callable[[], int] | None = None) -> Backend:
    """The backend ``op`` runs on for these tensor arguments (see the module docstring).

    :param numel: the op's size in elements (or a function computing it), for the measured
        crossover; ``None`` skips that check.
    """
    tensors = [t for t in tensors if isinstance(t, torch.Tensor)]
    mode = requested_mode()
    if mode == "torch":
        return "torch"
    on_cuda = bool(tensors) and all(t.device.type == "cuda" for t in tensors)
    dtypes_ok = all(t.dtype in KERNEL_DTYPES for t in tensors if t.is_floating_point())
    if mode == "auto":
        if not (on_cuda and dtypes_ok and triton_available()):
            return "torch"
        if numel is not None and reference_is_faster(op, tensors[0].device.index or 0, numel):
            return "torch"
        return "triton"
    # forced triton: explain every way it cannot work instead of failing deep inside Triton.
    err = triton_import_error()
    if err is not None:
        raise KernelBackendError(
            f"{ENV_VAR}=triton but Triton does not import ({err}); install it (pip install 'r0kit[kernels]') "
            f"or set {ENV_VAR}=auto"
        )
    if not dtypes_ok:
        bad = sorted({str(t.dtype) for t in tensors if t.is_floating_point() and t.dtype not in KERNEL_DTYPES})
        raise KernelBackendError(
            f"{op}: the Triton kernels compute fp16/bf16/fp32 inputs, got {', '.join(bad)}; "
            f"cast the inputs, or use {ENV_VAR}=auto (float64 then runs on the torch reference)"
        )
    if not on_cuda and not interpreter_enabled():
        devices = sorted({str(t.device) for t in tensors})
        raise KernelBackendError(
            f"{op}: {ENV_VAR}=triton with tensors on {', '.join(devices)} needs Triton's CPU interpreter; "
            f"set TRITON_INTERPRET=1 before Triton is imported, move the tensors to CUDA, or set {ENV_VAR}=auto"
        )
    return "triton"


def check_float(name: str, t: torch.Tensor) -> None:
    """Raise :class:`r0kit.errors.InputError` unless ``t`` is a floating-point tensor."""
    from r0kit.errors import InputError

    if not isinstance(t, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise InputError(f"{name} must be a floating-point tensor, got {t.dtype}; cast it with .float()")
