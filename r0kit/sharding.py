"""Tensors that may be sharded: what the training loop needs to run under FSDP2.

Under ``accelerate launch`` with an FSDP plugin of ``fsdp_version: 2``, accelerate
applies PyTorch's ``fully_shard`` to the backbone: each parameter becomes a
``DTensor`` whose local shard is ``1/N`` of it, and so do the gradients and the
optimizer state. r0kit never shards anything itself; these helpers let the parts
of the loop that read or write whole tensors (checkpoints, the EMA, the
weight-L2 reference, exports and sample grids) work on both kinds of tensor:

* :func:`full_tensor` gathers a sharded tensor (a collective: every rank calls it,
  in the same order) and returns a plain tensor unchanged;
* :func:`shard_like` turns a full tensor into the local shard of a sharded one,
  with no communication;
* :func:`gathered` holds a model's full parameters on every rank for a while
  (exports read them as plain tensors).

Importing this module imports nothing of ``torch.distributed`` until a helper needs it.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def _dtensor_class() -> type | None:
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def is_sharded(t: torch.Tensor) -> bool:
    """True for a ``DTensor`` (an FSDP2 parameter, gradient or optimizer state)."""
    cls = _dtensor_class()
    return cls is not None and isinstance(t, cls)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole of ``t``: ``t.full_tensor()`` for a ``DTensor`` (an all-gather: collective), ``t`` otherwise."""
    return t.full_tensor() if is_sharded(t) else t


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``full`` laid out as ``like``: its local shard as a ``DTensor`` with ``like``'s mesh and placements
    when ``like`` is sharded (no communication: every rank holds ``full``), else ``full`` on ``like``'s device
    and in its dtype.

    :raises ValueError: when the shapes differ.
    """
    if tuple(full.shape) != tuple(like.shape):
        raise ValueError(f"a tensor of shape {tuple(full.shape)} cannot stand for one of shape {tuple(like.shape)}")
    if is_sharded(like):
        from torch.distributed.tensor import distribute_tensor

        local = full.to(like.to_local().device, like.dtype)
        return distribute_tensor(local, like.device_mesh, like.placements, src_data_rank=None)
    return full.to(like.device, like.dtype)


def fsdp_modules(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The submodules of ``module`` that ``fully_shard`` was applied to (outermost first)."""
    if not torch.distributed.is_available():
        return []
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Every sharded group of ``module`` holds its full parameters while inside, as plain tensors.

    Every rank must enter (the unshard is an all-gather). Nothing happens for a module
    that is not sharded. Do not run the module's forward inside: FSDP reshards after it.
    """
    groups = fsdp_modules(module)
    for m in groups:
        m.unshard()
    try:
        yield module
    finally:
        for m in reversed(groups):
            m.reshard()


__all__ = ["fsdp_modules", "full_tensor", "gathered", "is_sharded", "shard_like"]
