"""The generator protocol and the :class:`Sample` it produces.

A generator is a parameterization of images. In test-time optimization it
owns per-problem tensors (pixels, a latent, an initial noise) that the loop
optimizes; in R0 training it owns network weights. Either way:

``prepare(prompts, seed)``
    (re)initialize the per-problem state for a batch of prompts.
``parameters()``
    the tensors the optimizer updates.
``sample(prompts, generator=None)``
    an image batch in [0, 1], differentiable with respect to ``parameters()``.

Conventions for :attr:`Sample.state`, which regularizers read:

``"param"``       the per-sample optimized variable, leading dim ``B``.
``"param_init"``  its value at ``prepare`` time (detached).
``"noise"``       the initial noise of a sampler, when there is one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only: importing r0kit does not import torch
    import torch


@dataclass
class Sample:
    images: torch.Tensor  # [B, 3, H, W] in [0, 1]
    state: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]


@runtime_checkable
class Generator(Protocol):
    def prepare(self, prompts: list[str], seed: int) -> None: ...

    def parameters(self) -> Iterable[torch.Tensor]: ...

    def sample(self, prompts: list[str], generator: torch.Generator | None = None) -> Sample: ...
