from __future__ import annotations

import importlib

import pytest
import torch

from r0kit.kernels import KernelBackendError, select_backend

from kt_helpers import ON_GPU


def test_torch_mode_always_picks_the_reference(monkeypatch):
    monkeypatch.setenv("R0KIT_KERNELS", "torch")
    assert select_backend("op", [torch.zeros(2)]) == "torch"


def test_auto_on_cpu_picks_the_reference(monkeypatch):
    monkeypatch.delenv("R0KIT_KERNELS", raising=False)
    assert select_backend("op", [torch.zeros(2)]) == "torch"
    monkeypatch.setenv("R0KIT_KERNELS", "auto")
    assert select_backend("op", [torch.zeros(2)]) == "torch"


def test_forced_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("R0KIT_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert select_backend("op", [torch.zeros(2)]) == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(KernelBackendError, match="TRITON_INTERPRET=1"):
        select_backend("op", [torch.zeros(2)])


def test_forced_triton_rejects_float64(monkeypatch):
    monkeypatch.setenv("R0KIT_KERNELS", "triton")
    with pytest.raises(KernelBackendError, match="float64"):
        select_backend("op", [torch.zeros(2, dtype=torch.float64)])


def test_unknown_mode_names_the_choices(monkeypatch):
    monkeypatch.setenv("R0KIT_KERNELS", "cuda")
    with pytest.raises(KernelBackendError, match="auto, triton, torch"):
        select_backend("op", [torch.zeros(2)])


def test_public_ops_follow_the_switch(monkeypatch):
    """With R0KIT_KERNELS=torch the public op returns exactly the reference; forced triton runs the kernel."""
    from r0kit.kernels import cosine_head, cosine_head_reference
    ch = importlib.import_module("r0kit.kernels.cosine_head")  # the package attribute is the function

    # Forced triton needs CUDA tensors, or CPU tensors under the interpreter.
    dev = "cuda" if ON_GPU else "cpu"
    a, t = torch.randn(3, 8, device=dev), torch.randn(3, 8, device=dev)
    monkeypatch.setenv("R0KIT_KERNELS", "torch")
    assert torch.equal(cosine_head(a, t, 2.0), cosine_head_reference(a, t, 2.0))
    calls = []
    monkeypatch.setattr(ch, "cosine_head_triton_forward", lambda *args: calls.append(1) or (torch.zeros(3, device=dev), torch.zeros(3, 3, device=dev)))
    monkeypatch.setenv("R0KIT_KERNELS", "triton")
    cosine_head(a, t, 2.0)
    assert calls == [1]


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device")
def test_auto_on_cuda_picks_triton(monkeypatch):
    monkeypatch.setenv("R0KIT_KERNELS", "auto")
    assert select_backend("op", [torch.zeros(2, device="cuda")]) == "triton"
    assert select_backend("op", [torch.zeros(2, device="cuda", dtype=torch.float64)]) == "torch"


def test_importing_kernels_needs_no_pydantic_or_models():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['pydantic'] = None; sys.modules['diffusers'] = None; sys.modules['transformers'] = None\n"
        "import r0kit.kernels\n"
        "bad = [m for m in ('open_clip', 'diffusers', 'transformers') if m in sys.modules and sys.modules[m] is not None]\n"
        "assert not bad, bad"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]


def test_auto_takes_the_reference_below_the_measured_crossover(monkeypatch):
    """Where the sweep measured the reference faster at a size, auto picks it there (the check
    select_backend makes for CUDA tensors in auto mode)."""
    from r0kit.kernels import _dispatch

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Test GPU")
    monkeypatch.setattr(_dispatch, "_crossover", {"Test GPU": {"grad_combine": {"eager": 1000, "compile": 10**9}}})
    assert _dispatch.reference_is_faster("grad_combine", 0, 999)
    assert not _dispatch.reference_is_faster("grad_combine", 0, 1000)
    assert _dispatch.reference_is_faster("grad_combine", 0, lambda: 5)
    assert not _dispatch.reference_is_faster("eta_step", 0, 5)  # not measured: the kernels
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert _dispatch.reference_is_faster("grad_combine", 0, 10**6)  # compile measured faster up to 1e9
    monkeypatch.setattr(_dispatch, "_crossover", {"Other GPU": {"grad_combine": {"eager": 10**9}}})
    assert not _dispatch.reference_is_faster("grad_combine", 0, 5)  # another device's measurement does not apply


def test_shipped_crossover_file_parses():
    import json

    from r0kit.kernels import _dispatch

    data = json.loads(_dispatch.CROSSOVER_FILE.read_text())
    for device, ops in data["devices"].items():
        for op, sizes in ops.items():
            assert set(sizes) <= {"eager", "compile"} and all(isinstance(v, int) and v >= 0 for v in sizes.values()), (device, op)
