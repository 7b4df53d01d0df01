"""Regularizers that keep the solution a valid image and stop reward hacking.

Each returns a per-sample penalty ``[B]`` (or a scalar shared by the batch);
the objective subtracts it with its weight.
"""

from __future__ import annotations

from typing import Literal

import torch

import r0kit
from r0kit.errors import InputError, OptionError


class TotalVariation:
    """Anisotropic total variation of the images: mean ``|Δx|`` + mean ``|Δy|`` (``p=1``), or squared (``p=2``).

    An image one pixel wide (or high) has no differences along that axis: that term is 0
    (the mean of none was NaN)."""

    def __init__(self, p: Literal[1, 2] = 1):
        if p not in (1, 2):
            raise OptionError(f"tv: p must be 1 or 2, got {p!r}")
        self.p = p

    def __call__(self, sample: r0kit.Sample, generator=None) -> torch.Tensor:
        x = sample.images
        dx = x[..., :, 1:] - x[..., :, :-1]
        dy = x[..., 1:, :] - x[..., :-1, :]

        def mean(d: torch.Tensor) -> torch.Tensor:
            d = d.abs() if self.p == 1 else d**2
            return d.flatten(1).mean(1) if d.shape[-1] and d.shape[-2] else x.new_zeros(x.shape[0])

        return mean(dx) + mean(dy)


class L2ToInitial:
    """Squared distance of the optimized variable to its initial value, per sample.

    Reads ``sample.state["param"]`` and ``sample.state["param_init"]``.
    ``reduction="mean"`` averages over the elements, ``"sum"`` is ``‖z − z₀‖²``.
    """

    def __init__(self, reduction: Literal["mean", "sum"] = "mean"):
        if reduction not in ("mean", "sum"):
            raise OptionError(f"l2_init: reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction

    def __call__(self, sample: r0kit.Sample, generator=None) -> torch.Tensor:
        z, z0 = _state(sample, "param"), _state(sample, "param_init")
        d = ((z - z0.to(z)) ** 2).flatten(1)
        return d.mean(1) if self.reduction == "mean" else d.sum(1)


class NoiseNorm:
    """ReNO's noise regularizer, per sample: ``½‖z‖² − (d − 1)·log‖z‖``, ``d`` = elements per sample.

    It is the negative log-density, up to a constant, of ``‖z‖`` under the chi
    distribution with ``d`` degrees of freedom: it is smallest at
    ``‖z‖ = √(d − 1)``, the shell where ``d``-dimensional standard Gaussian noise
    lives, and keeps an optimized noise there. Its gradient is
    ``z − (d − 1) z / ‖z‖²``. Reads ``sample.state[key]`` (``"param"`` by
    default: the optimized noise of the ``noise`` generator).
    """

    def __init__(self, key: str = "param"):
        if not isinstance(key, str) or not key:
            raise OptionError(f"noise_norm: key must be a sample.state key such as 'param' or 'noise', got {key!r}")
        self.key = key

    def __call__(self, sample: r0kit.Sample, generator=None) -> torch.Tensor:
        flat = _state(sample, self.key).float().flatten(1)
        d = flat.shape[1]
        sq = (flat * flat).sum(1)
        return 0.5 * sq - 0.5 * (d - 1) * torch.log(sq.clamp_min(torch.finfo(torch.float32).tiny))


class GaussianPrior:
    """A standard Gaussian prior on the optimized variable (a latent or a noise), per sample.

    ``reduction="mean"`` (default): ``½‖z‖² / d``, the negative log-likelihood per
    element without its constant, so its scale does not depend on the resolution;
    ``"sum"``: ``½‖z‖²``, the negative log-likelihood of the whole sample up to the
    constant ``(d/2)·log 2π``. Unlike ``noise_norm`` it pulls ``z`` towards 0,
    not onto the Gaussian shell: use it as a weak pull on a VAE latent.
    """

    def __init__(self, reduction: Literal["mean", "sum"] = "mean", key: str = "param"):
        if reduction not in ("mean", "sum"):
            raise OptionError(f"gaussian_prior: reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction, self.key = reduction, key

    def __call__(self, sample: r0kit.Sample, generator=None) -> torch.Tensor:
        flat = _state(sample, self.key).float().flatten(1)
        sq = 0.5 * (flat * flat).sum(1)
        return sq / flat.shape[1] if self.reduction == "mean" else sq


def _state(sample: r0kit.Sample, key: str) -> torch.Tensor:
    try:
        return sample.state[key]
    except KeyError:
        raise InputError(
            f"this regularizer needs sample.state[{key!r}], which the generator did not provide "
            f"(it has: {', '.join(sample.state) or 'nothing'}); use it with a generator that optimizes a per-sample variable"
        ) from None


@r0kit.hookimpl
def r0kit_register_regularizers(register):
    register("tv", TotalVariation, description="total variation of the images")
    register("l2_init", L2ToInitial, description="squared distance of the optimized variable to its initial value")
    register("noise_norm", NoiseNorm, description="ReNO chi-distribution noise-norm penalty ½‖z‖² − (d−1)·log‖z‖")
    register("gaussian_prior", GaussianPrior, description="standard Gaussian prior on the optimized variable, ½‖z‖²/d (or summed)")
