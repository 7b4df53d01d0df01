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
  with no communication.

Exports are written from gathered whole tensors, never from the sharded module
(its ``state_dict`` hooks hand out shards).

Importing this module imports nothing of ``torch.distributed`` until a helper needs it.
"""

from __future__ import annotations

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
    if is_sharded(full):  # already laid out: the same parameters handed over again
        if not is_sharded(like):
            raise ValueError("a sharded tensor cannot stand for a whole one; gather it with full_tensor first")
        return full
    if is_sharded(like):
        from torch.distributed.tensor import distribute_tensor

        local = full.to(like.to_local().device, like.dtype)
        return distribute_tensor(local, like.device_mesh, like.placements, src_data_rank=None)
    return full.to(like.device, like.dtype)


__all__ = ["full_tensor", "is_sharded", "shard_like"]
