"""r0kit.kernels._common and ._dispatch: launch sizing and backend selection helpers."""

from __future__ import annotations

import pytest
import torch

from r0kit.kernels import _common, _dispatch


@pytest.mark.parametrize("n, expected", [(0, 1), (1, 1), (2, 2), (3, 4), (1000, 1024), (1024, 1024), (1025, 2048)])
def test_next_pow2(n, expected):
    assert _common.next_pow2(n) == expected


def test_elementwise_block_bounds(monkeypatch):
    monkeypatch.setattr(_common, "interpreter_enabled", lambda: False)
    assert _common.elementwise_block(10) == 16  # never below 16
    assert _common.elementwise_block(10**8) == 4096  # the GPU block caps it
    monkeypatch.setattr(_common, "interpreter_enabled", lambda: True)
    assert _common.elementwise_block(10**8) == 1 << 16  # interpreter: few, large programs
    assert _common.num_warps_for(1024) == 4 and _common.num_warps_for(4096) == 8


def test_pointer_args_pass_each_data_pointer_and_pad_with_the_first():
    ts = [torch.zeros(3), torch.ones(5)]
    args = _common.pointer_args(ts)
    assert args == [ts[0].data_ptr(), ts[1].data_ptr()] + [ts[0].data_ptr()] * (_common.MAX_PTR_ARGS - 2)
    with pytest.raises(ValueError, match="1..8"):
        _common.pointer_args([torch.zeros(1)] * 9)


def test_clamp_convention_is_torchs():
    x = torch.tensor([0.0, 1.0], requires_grad=True)
    x.clamp(0.0, 1.0).sum().backward()
    assert _common.clamp_passes_gradient_at_bounds() == bool(x.grad[0] != 0)


def test_dispatch_reports_triton_availability_consistently():
    assert _common.HAS_TRITON == _dispatch.triton_available()
    if _common.HAS_TRITON:
        assert _common.tl_dtype(torch.zeros(1, dtype=torch.bfloat16)) is _common.tl.bfloat16
