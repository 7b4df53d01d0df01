"""Suite-wide settings: no entry-point autoload, no network, no display."""

from __future__ import annotations

import os

# Before r0kit builds its plugin host: only the built-in plugins load in tests,
# unless a test asks for autoload (see the ``autoload`` fixture).
os.environ["R0KIT_DISABLE_AUTOLOAD"] = "1"
os.environ.pop("R0KIT_LOAD_PLUGINS", None)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402  (importing torch does not import triton)

# Triton decides between compiling and interpreting when it is first imported, so the
# CPU interpreter has to be chosen here, before any test module imports it. Only the
# kernel tests that force R0KIT_KERNELS=triton use it; "auto" runs the torch reference
# on CPU tensors.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from r0kit.plugins import reset_host  # noqa: E402


@pytest.fixture
def fresh_host():
    """A plugin host rebuilt for this test from the current environment, and forgotten after it."""
    from r0kit.plugins import get_host

    reset_host()
    yield get_host
    reset_host()


@pytest.fixture
def autoload(monkeypatch, fresh_host):
    """Turn entry-point autoload on for one test."""
    monkeypatch.delenv("R0KIT_DISABLE_AUTOLOAD", raising=False)
    reset_host()
    return fresh_host
