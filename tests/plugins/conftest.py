"""The r0kit.testing fixtures, as a plugin author's suite gets them, and one torch thread per test.

The tensors here are tiny: a second intra-op thread buys nothing, and on a
shared machine it costs a lot (threads wait for each other's core).
"""

import pytest
import torch

from r0kit.testing.fixtures import r0kit_host, r0kit_plugin  # noqa: F401


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
