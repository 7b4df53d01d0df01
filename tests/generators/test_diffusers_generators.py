"""The ``noise`` and ``latent`` generators, through the registry, on tiny pipelines loaded by path."""

from __future__ import annotations

import pytest
import torch

import r0kit
from r0kit.errors import InputError, OptionError
from r0kit.objective import Term
from r0kit.optimize import optimize

RAW = r0kit.RewardContract(size=None, crop="none", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), needs_prompt=False)


def _objective():
    return r0kit.reward("colorfulness") + r0kit.reward("contrast")


def test_noise_generator_state_and_gradient(tiny_sd):
    gen = r0kit.generator("noise", model=str(tiny_sd), height=16, width=16, steps=2, device="cpu")
    gen.prepare(["a cat", "a dog"], seed=3)
    (z,) = gen.parameters()
    assert z.shape == (2, 4, 8, 8) and z.requires_grad and z.dtype == torch.float32
    s = gen.sample(["a cat", "a dog"])
    assert s.images.shape == (2, 3, 16, 16)
    assert s.state["param"] is z and s.state["noise"] is z and not s.state["param_init"].requires_grad
    s.images.mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    with pytest.raises(InputError, match="prepared for 2"):
        gen.sample(["one"])


def test_per_sample_seeds_do_not_depend_on_batching(sd_model):
    gen = r0kit.generator("noise", model=sd_model, height=16, width=16)
    gen.prepare(["a", "b", "c"], seed=10)
    both = gen.parameters()[0].detach().clone()
    gen.prepare(["b"], seed=11)
    torch.testing.assert_close(gen.parameters()[0].detach()[0], both[1])


def test_noise_generator_option_errors(sd_model):
    with pytest.raises(OptionError, match="steps must be 1 to 4.*max_steps"):
        r0kit.generator("noise", model=sd_model, height=16, width=16, steps=6)
    with pytest.raises(OptionError, match="multiple of 2"):
        r0kit.generator("noise", model=sd_model, height=17, width=16)
    with pytest.raises(OptionError, match="guidance must be a finite number >= 0"):
        r0kit.generator("noise", model=sd_model, height=16, width=16, guidance=-1)


def test_guidance_changes_the_image(sd_model):
    imgs = []
    for g in (1.0, 4.0):
        gen = r0kit.generator("noise", model=sd_model, height=16, width=16, guidance=g)
        gen.prepare(["a cat"], seed=0)
        with torch.no_grad():
            imgs.append(gen.sample(["a cat"]).images)
    assert not torch.allclose(imgs[0], imgs[1])


def test_objective_rises_noise_reno_defaults(sd_model):
    gen = r0kit.generator("noise", model=sd_model, height=16, width=16, steps=1)
    obj = _objective() - 1e-4 * r0kit.regularizer("noise_norm")
    res = optimize(obj, gen, ["a cat", "a dog"], steps=6, seed=0)  # SGD-Nesterov lr 5, clip 0.1
    first, last = res.history[0]["values"]["total"], res.history[-1]["values"]["total"]
    assert all(b > a + 1e-3 for a, b in zip(first, last)), (first, last)
    assert res.best_step == [6, 6]
    assert len(res.history) == 7 and "grad_norm" in res.history[0]


def test_objective_rises_latent(sd_model):
    gen = r0kit.generator("latent", model=sd_model, height=16, width=16)
    obj = _objective() - 0.01 * r0kit.regularizer("gaussian_prior")
    res = optimize(obj, gen, ["a cat"], steps=6, seed=0, optimizer="adam", lr=0.1, grad_clip=None)
    first, last = res.history[0]["values"]["total"][0], res.history[-1]["values"]["total"][0]
    assert last > first + 1e-3, (first, last)
    assert "gaussian_prior" in res.best_values


def test_latent_pipeline_init_is_the_sample(sd_model):
    gen = r0kit.generator("latent", model=sd_model, height=16, width=16, init="pipeline", steps=1)
    gen.prepare(["a cat"], seed=2)
    noise_gen = r0kit.generator("noise", model=sd_model, height=16, width=16, steps=1)
    noise_gen.prepare(["a cat"], seed=2)
    with torch.no_grad():
        torch.testing.assert_close(gen.sample(["a cat"]).images, noise_gen.sample(["a cat"]).images)


def test_latent_noise_init_loads_only_the_vae(tiny_sd):
    gen = r0kit.generator("latent", model=str(tiny_sd), height=16, width=16, device="cpu")
    assert gen.model.unet is None and not gen.model.text_encoders and gen.model.vae is not None


def test_sdxl_noise_generator(tiny_sdxl):
    gen = r0kit.generator("noise", model=str(tiny_sdxl), height=16, width=16, device="cpu")
    res = optimize(_objective(), gen, ["a cat"], steps=2, seed=0)
    assert res.images.shape == (1, 3, 16, 16) and res.stopped is None


def _nan_after(k: int):
    calls = {"n": 0}

    def f(x, prompts):
        calls["n"] += 1
        v = x.mean(dim=(1, 2, 3))
        return v * float("nan") if calls["n"] > k else v

    return Term(kind="reward", name="flaky", module=f, contract=RAW)


def test_nan_term_stops_and_keeps_the_last_good_iterate(sd_model):
    gen = r0kit.generator("noise", model=sd_model, height=16, width=16)
    obj = _objective() + _nan_after(3)
    seen = []
    res = optimize(obj, gen, ["a cat"], steps=10, seed=0, callback=lambda info: seen.append(info.images.clone()))
    assert res.stopped is not None and "stopped at step 3" in res.stopped and "flaky" in res.stopped
    assert len(res.history) == 3 and torch.isfinite(res.images).all()
    torch.testing.assert_close(res.images, seen[res.best_step[0]])


def test_diverged_parameters_stop_cleanly(sd_model):
    gen = r0kit.generator("noise", model=sd_model, height=16, width=16)

    def poison(info):
        if info.step == 2:
            with torch.no_grad():
                gen.parameters()[0].fill_(float("inf"))

    res = optimize(_objective(), gen, ["a cat"], steps=6, seed=0, callback=poison)
    assert "images went NaN or Inf" in res.stopped and torch.isfinite(res.images).all()
