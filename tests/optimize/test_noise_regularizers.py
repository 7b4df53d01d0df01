"""noise_norm and gaussian_prior against their closed forms."""

from __future__ import annotations

import math

import pytest
import torch

import r0kit


def _sample(z):
    return r0kit.Sample(images=torch.zeros(z.shape[0], 3, 2, 2), state={"param": z, "param_init": z.detach().clone()})


def test_noise_norm_value_and_gradient_match_the_closed_form():
    reg = r0kit.regularizer("noise_norm").module
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64) * torch.tensor([0.5, 1.0, 2.0]).view(3, 1, 1, 1).double())
    z.requires_grad_(True)
    v = reg(_sample(z))
    d = 4 * 5 * 6
    vd = v.detach()
    for i in range(3):
        n = float(z[i].detach().norm())
        assert float(vd[i]) == pytest.approx(0.5 * n * n - (d - 1) * math.log(n), rel=1e-5)
    (grad,) = torch.autograd.grad(v.sum(), z)
    zz = z.detach()
    sq = zz.flatten(1).pow(2).sum(1).view(3, 1, 1, 1)
    torch.testing.assert_close(grad, zz - (d - 1) * zz / sq, rtol=1e-4, atol=1e-5)


def test_noise_norm_is_smallest_on_the_gaussian_shell():
    reg = r0kit.regularizer("noise_norm").module
    d = 64
    u = torch.randn(1, d)
    u = u / u.norm()
    radii = torch.tensor([0.5, 0.9, 1.0, 1.1, 2.0]) * math.sqrt(d - 1)
    vals = torch.stack([reg(_sample(u * r))[0] for r in radii])
    assert int(vals.argmin()) == 2


def test_noise_norm_reads_another_state_key():
    reg = r0kit.regularizer("noise_norm", key="noise").module
    with pytest.raises(r0kit.InputError, match=r"sample.state\['noise'\]"):
        reg(_sample(torch.randn(1, 4)))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gaussian_prior(reduction):
    reg = r0kit.regularizer("gaussian_prior", reduction=reduction).module
    z = torch.randn(2, 3, 4, requires_grad=True)
    v = reg(_sample(z))
    d = 12
    want = 0.5 * z.detach().flatten(1).pow(2).sum(1) / (d if reduction == "mean" else 1)
    torch.testing.assert_close(v, want)
    (grad,) = torch.autograd.grad(v.sum(), z)
    torch.testing.assert_close(grad, z.detach() / (d if reduction == "mean" else 1))
    with pytest.raises(r0kit.OptionError, match="reduction"):
        r0kit.regularizer("gaussian_prior", reduction="max")
