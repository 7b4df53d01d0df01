"""Kernel tests: Triton on CUDA when there is one, else Triton's CPU interpreter.

``TRITON_INTERPRET`` must be set before the kernels are decorated (at import of
``r0kit.kernels``), so this runs first. On a CUDA machine the kernels compile
for the GPU unless ``TRITON_INTERPRET=1`` is already set.
"""

from __future__ import annotations

import math
import os
import sys

import torch

from kt_helpers import DEVICE, INTERPRETER_UNAVAILABLE  # noqa: E402  (sets TRITON_INTERPRET first)

import pytest  # noqa: E402

try:
    import r0kit.kernels  # noqa: E402,F401
except ImportError as exc:  # pragma: no cover - the GPU box may lack r0kit's other dependencies
    # r0kit/__init__ imports the whole core; the kernels need only torch, triton and r0kit.errors.
    import types

    pkg = types.ModuleType("r0kit")
    pkg.__path__ = [os.path.join(os.path.dirname(__file__), "..", "..", "r0kit")]
    sys.modules["r0kit"] = pkg
    print(f"[kernels conftest] import r0kit failed ({exc}); loading r0kit.kernels standalone", file=sys.stderr)
    import r0kit.kernels  # noqa: E402,F401


@pytest.fixture
def device() -> str:
    return DEVICE


@pytest.fixture
def triton_backend(monkeypatch):
    """Force the kernel path, and poison every ``torch.empty``/``empty_like`` with NaN (fla style),
    so an element a kernel never writes cannot pass."""
    if INTERPRETER_UNAVAILABLE:
        pytest.skip("Triton was imported before TRITON_INTERPRET=1 was set; run tests/kernels on its own")
    monkeypatch.setenv("R0KIT_KERNELS", "triton")
    empty, empty_like = torch.empty, torch.empty_like

    def poison(t):
        if t.is_floating_point():
            t.fill_(math.nan)
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poison(empty_like(*a, **k)))
    return "triton"


@pytest.fixture
def torch_backend(monkeypatch):
    monkeypatch.setenv("R0KIT_KERNELS", "torch")
    return "torch"
