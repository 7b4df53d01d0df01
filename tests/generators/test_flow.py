"""Rectified-flow models (SD3, FLUX.1) behind the one sampling interface.

Tiny random-weight SD3 and FLUX pipelines of the real architectures are written with
``save_pretrained`` (r0kit.testing.pipelines) and loaded by path; the same noise then
goes through r0kit and through ``StableDiffusion3Pipeline`` / ``FluxPipeline``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import r0kit
from r0kit.diffusion import eta_step, flow_shift_mu, load, predict_x0_eps
from r0kit.errors import OptionError
from r0kit.optimize import optimize

PROMPTS = ["a red cube", "a blue ball"]
T5_LEN = 24  # the tiny T5 tokenizer's budget; passed to r0kit and to diffusers alike


def _load(folder, **kw):
    return load(str(folder), device="cpu", max_sequence_length=T5_LEN, **kw)


@pytest.fixture(scope="module")
def sd3_model(tiny_sd3):
    return _load(tiny_sd3)


@pytest.fixture(scope="module")
def flux_model(tiny_flux):
    return _load(tiny_flux)


def _pack(z):
    b, c, h, w = z.shape
    return z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def _unpack(x, h, w):
    b, _, c4 = x.shape
    return x.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c4 // 4, h, w)


def _pipeline(folder, kind, **components):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    cls = StableDiffusion3Pipeline if kind == "sd3" else FluxPipeline
    pipe = cls.from_pretrained(str(folder), **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _theirs(pipe, kind, z, schedule, size, guidance=0.0):
    pipe.scheduler = schedule.scheduler
    latents = _pack(z) if kind == "flux" else z
    with torch.no_grad():
        out = pipe(PROMPTS[: z.shape[0]], guidance_scale=guidance, latents=latents.clone(), height=size, width=size,
                   output_type="latent", max_sequence_length=T5_LEN, **schedule.pipeline_kwargs).images
    return _unpack(out, z.shape[2], z.shape[3]) if kind == "flux" else out


def _ours(model, z, schedule, size, guidance=1.0):
    with torch.no_grad():
        cond = model.encode_prompts(PROMPTS[: z.shape[0]], height=size, width=size)
        return model.unroll(z, cond, schedule, guidance_scale=guidance).latents


def _rel(ours, ref):
    return float((ours - ref).abs().max() / ref.abs().max())


# ---------------------------------------------------------------------------- loading
def test_the_family_is_decided_when_loading(sd3_model, flux_model, sd_model):
    assert (sd3_model.kind, sd3_model.family, sd3_model.prediction_type) == ("sd3", "flow", "flow_prediction")
    assert (flux_model.kind, flux_model.family) == ("flux", "flow")
    assert (sd_model.kind, sd_model.family) == ("sd", "vp")
    assert len(sd3_model.text_encoders) == 3 and sd3_model.has_t5
    assert type(flux_model.backbone).__name__ == "FluxTransformer2DModel" and flux_model.unet is flux_model.backbone
    # FLUX's transformer reads 2x2-packed 16-channel tokens; r0kit's latents stay [C, h, w]
    assert flux_model.latent_shape(16, 16) == (4, 8, 8) and sd3_model.latent_shape(16, 16) == (4, 8, 8)
    with pytest.raises(OptionError, match="multiple of 4 .*2x2 patches"):
        flux_model.latent_shape(18, 16)
    assert flux_model.native_size == 256 and sd3_model.native_size == 16  # 128·f, sample_size·f


def test_drop_t5_neither_loads_it_nor_is_allowed_for_flux(tiny_sd3, tiny_flux):
    m = _load(tiny_sd3, drop_t5=True)
    assert len(m.text_encoders) == 2 and not m.has_t5
    cond = m.encode_prompts(PROMPTS)
    assert cond.embeds.shape == (2, 16 + T5_LEN, 64)  # CLIP tokens, then zeros where T5's would be
    assert torch.count_nonzero(cond.embeds[:, 16:]) == 0
    with pytest.raises(OptionError, match="drop_t5.*flux.*FLUX.1 conditions on T5"):
        _load(tiny_flux, drop_t5=True)


# ---------------------------------------------------------------------------- the schedule
def test_flow_schedule_is_trailing_t_through_the_shift(sd3_model, flux_model):
    """SD3: shift 3, t ↦ 3t/(1 + 2t); FLUX.1-schnell: shift 1. α = 1 − t, σ = t, x_1 = z."""
    for k in (1, 2, 3, 4):
        base = [1 - i / k for i in range(k)]
        s = sd3_model.schedule(k)
        want = [3 * t / (1 + 2 * t) for t in base]
        assert s.family == "flow" and s.init_scale == 1.0
        np.testing.assert_allclose(s.sigmas[:-1].numpy(), want, rtol=1e-6)
        np.testing.assert_allclose(s.timesteps.numpy(), np.array(want) * 1000, rtol=1e-6)
        torch.testing.assert_close(s.alphas + s.sigmas, torch.ones(k + 1))
        assert s.sigmas[-1] == 0 and s.alphas[-1] == 1
        np.testing.assert_allclose(s.pipeline_kwargs["sigmas"], base, rtol=1e-12)
        np.testing.assert_allclose(flux_model.schedule(k).sigmas[:-1].numpy(), base, rtol=1e-6)


def test_dynamic_shift_depends_on_the_resolution(tiny_flux_dev):
    """FLUX.1-dev: μ = 0.5 + 0.65·(n − 256)/3840 for n image tokens; t ↦ e^μ / (e^μ + 1/t − 1)."""
    m = _load(tiny_flux_dev)
    for size in (16, 64, 256):
        n = (size // 2 // 2) ** 2
        mu = 0.5 + (1.15 - 0.5) * (n - 256) / (4096 - 256)
        assert flow_shift_mu(n, m.scheduler.config) == pytest.approx(mu, rel=1e-12)
        s = m.schedule(4, height=size, width=size)
        want = [math.exp(mu) / (math.exp(mu) + 1 / t - 1) for t in (1, 0.75, 0.5, 0.25)]
        np.testing.assert_allclose(s.sigmas[:-1].numpy(), want, rtol=1e-5)
    assert not torch.equal(m.schedule(4, height=16, width=16).sigmas, m.schedule(4, height=256, width=256).sigmas)
    assert torch.equal(m.schedule(4).sigmas, m.schedule(4, height=256, width=256).sigmas)  # default: native size


def test_explicit_timesteps_and_their_pipeline_sigmas(tiny_sd3, sd3_model):
    """Explicit 1000·t values are used as given; the pipeline sigmas are their unshifted t."""
    s = sd3_model.schedule(None, [900.0, 600.0])
    assert s.timesteps.tolist() == pytest.approx([900.0, 600.0]) and s.sigmas.tolist() == pytest.approx([0.9, 0.6, 0])
    pipe = _pipeline(tiny_sd3, "sd3")
    z = sd3_model.initial_noise(2, 16, 16, seed=4)
    assert _rel(_ours(sd3_model, z, s, 16), _theirs(pipe, "sd3", z, s, 16)) <= 1e-4
    assert pipe.scheduler.timesteps.tolist() == pytest.approx([900.0, 600.0], rel=1e-6)
    for bad in ([600.0, 900.0], [1001.0], [0.0]):
        with pytest.raises(OptionError, match=r"strictly decreasing numbers in \(0, 1000\]"):
            sd3_model.schedule(None, bad)


# ---------------------------------------------------------------------------- parity with diffusers
@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_unroll_equals_the_diffusers_pipeline(kind, tiny_sd3, tiny_flux, sd3_model, flux_model):
    folder, model = (tiny_sd3, sd3_model) if kind == "sd3" else (tiny_flux, flux_model)
    pipe = _pipeline(folder, kind)
    z = model.initial_noise(2, 16, 16, seed=0)
    for k in (1, 2, 4):
        schedule = model.schedule(k, height=16, width=16)
        assert _rel(_ours(model, z, schedule, 16), _theirs(pipe, kind, z, schedule, 16)) <= 1e-4, k
        assert pipe.scheduler.timesteps.tolist() == pytest.approx(schedule.timesteps.tolist(), rel=1e-6)


def test_flux_dev_guidance_embedding_and_dynamic_shift_equal_the_pipeline(tiny_flux_dev):
    """Guidance 3.5 goes into the transformer's guidance embedding (no unconditional pass), at two sizes."""
    m = _load(tiny_flux_dev)
    pipe = _pipeline(tiny_flux_dev, "flux")
    for size in (16, 32):
        z = m.initial_noise(1, size, size, seed=1)
        s = m.schedule(2, height=size, width=size)
        assert _rel(_ours(m, z, s, size, guidance=3.5), _theirs(pipe, "flux", z, s, size, guidance=3.5)) <= 1e-4
    z = m.initial_noise(1, 16, 16, seed=1)
    s = m.schedule(2, height=16, width=16)
    assert _rel(_ours(m, z, s, 16, guidance=1.0), _ours(m, z, s, 16, guidance=3.5)) > 1e-4  # the embedding is read


def test_sd3_without_t5_equals_the_pipeline_with_text_encoder_3_none(tiny_sd3):
    m = _load(tiny_sd3, drop_t5=True)
    pipe = _pipeline(tiny_sd3, "sd3", text_encoder_3=None, tokenizer_3=None)
    z = m.initial_noise(2, 16, 16, seed=2)
    s = m.schedule(2)
    assert _rel(_ours(m, z, s, 16), _theirs(pipe, "sd3", z, s, 16)) <= 1e-4


def test_sd3_classifier_free_guidance_equals_the_pipeline(tiny_sd3, sd3_model):
    pipe = _pipeline(tiny_sd3, "sd3")
    z = sd3_model.initial_noise(2, 16, 16, seed=3)
    s = sd3_model.schedule(2)
    with torch.no_grad():
        cond = sd3_model.encode_prompts(PROMPTS)
        ours = sd3_model.unroll(z, cond, s, guidance_scale=4.0, uncond=sd3_model.encode_negative(2)).latents
    assert _rel(ours, _theirs(pipe, "sd3", z, s, 16, guidance=4.0)) <= 1e-4


def test_decoded_image_equals_the_pipeline_image(tiny_flux, flux_model):
    """The VAE's shift_factor and scaling_factor are applied as FluxPipeline applies them."""
    gen = r0kit.generator("noise", model=flux_model, steps=2, height=16, width=16)
    gen.prepare(PROMPTS[:1], seed=5)
    pipe = _pipeline(tiny_flux, "flux")
    pipe.scheduler = gen.schedule.scheduler
    with torch.no_grad():
        ours = gen.sample(PROMPTS[:1]).images
        ref = pipe(PROMPTS[:1], guidance_scale=0.0, latents=_pack(gen.noise.detach()), height=16, width=16,
                   output_type="pt", max_sequence_length=T5_LEN, **gen.schedule.pipeline_kwargs).images
    torch.testing.assert_close(ours, ref.float(), atol=2e-5, rtol=1e-4)


# ---------------------------------------------------------------------------- the η step
def test_eta_step_is_the_written_flow_formula_for_values_and_gradients():
    """x_{t'} = (1 − t')·x̂₀ + t'·(√(1−η²)·ε̂ + η·ξ) with x̂₀ = x_t − t·v, ε̂ = x_t + (1 − t)·v.

    Tensors in float64; η is float32 inside the step (the kernel's dtype), hence 1e-6."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, 4, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    xi = torch.randn(3, 4, 5, 7, generator=g, dtype=torch.float64)
    eta = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
    up = torch.randn(3, 4, 5, 7, generator=g, dtype=torch.float64)  # a non-unit upstream gradient
    t, t_next = 0.8, 0.35
    x0, eps = predict_x0_eps(v, x, 1 - t, t, "flow_prediction")
    ours = eta_step(x0, eps, 1 - t_next, t_next, eta, noise=xi)
    e = eta.view(-1, 1, 1, 1)
    written = (1 - t_next) * (x - t * v) + t_next * (torch.sqrt(1 - e**2) * (x + (1 - t) * v) + e * xi)
    torch.testing.assert_close(ours, written, rtol=1e-6, atol=1e-8)
    gx, gv = torch.autograd.grad(ours, (x, v), up)
    wx, wv = torch.autograd.grad(written, (x, v), up)
    torch.testing.assert_close(gx, wx, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(gv, wv, rtol=1e-6, atol=1e-8)
    # by hand: ∂/∂x = (1 − t') + t'√(1−η²), ∂/∂v = −t(1 − t') + t'(1 − t)√(1−η²)
    s = torch.sqrt(1 - e**2)
    torch.testing.assert_close(gx, up * ((1 - t_next) + t_next * s), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(gv, up * (-t * (1 - t_next) + t_next * (1 - t) * s), rtol=1e-6, atol=1e-8)


def test_eta_zero_is_the_flow_match_euler_step_and_eta_one_its_stochastic_step():
    from diffusers import FlowMatchEulerDiscreteScheduler

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 6, 6, generator=g)
    v = torch.randn(2, 4, 6, 6, generator=g)
    for stochastic in (False, True):
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0, stochastic_sampling=stochastic)
        sched.set_timesteps(sigmas=[1.0, 0.75, 0.5, 0.25])
        for i in range(4):
            t, t_next = float(sched.sigmas[i]), float(sched.sigmas[i + 1])
            x0, eps = predict_x0_eps(v, x, 1 - t, t, "flow_prediction")
            ref = sched.step(v, sched.timesteps[i], x, generator=torch.Generator().manual_seed(i)).prev_sample
            if stochastic:  # (1 − t')·x̂₀ + t'·ξ: the η = 1 step with the scheduler's own ξ
                xi = torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
                ours = eta_step(x0, eps, 1 - t_next, t_next, 1.0, noise=xi)
            else:
                ours = eta_step(x0, eps, 1 - t_next, t_next, 0.0)
            torch.testing.assert_close(ours, ref, rtol=2e-6, atol=2e-6)


# ---------------------------------------------------------------------------- test-time optimization
def _objective():
    return r0kit.reward("colorfulness") + r0kit.reward("contrast")


@pytest.mark.parametrize("which", ["sd3", "flux"])
def test_objective_rises_noise(which, sd3_model, flux_model):
    model = sd3_model if which == "sd3" else flux_model
    gen = r0kit.generator("noise", model=model, height=16, width=16, steps=2)
    res = optimize(_objective() - 1e-4 * r0kit.regularizer("noise_norm"), gen, PROMPTS, steps=5, seed=0,
                   optimizer="adam", lr=0.05, grad_clip=None)
    first, last = res.history[0]["values"]["total"], res.history[-1]["values"]["total"]
    assert all(b > a + 1e-3 for a, b in zip(first, last)), (first, last)
    assert gen.parameters()[0].shape == (2, 4, 8, 8)


@pytest.mark.parametrize("which", ["sd3", "flux"])
def test_objective_rises_latent_from_the_pipeline_init(which, sd3_model, flux_model):
    model = sd3_model if which == "sd3" else flux_model
    gen = r0kit.generator("latent", model=model, height=16, width=16, init="pipeline", steps=1)
    res = optimize(_objective(), gen, PROMPTS[:1], steps=5, seed=0, optimizer="adam", lr=0.1, grad_clip=None)
    first, last = res.history[0]["values"]["total"][0], res.history[-1]["values"]["total"][0]
    assert last > first + 1e-3, (first, last)
    with torch.no_grad():  # the initial latent is the model's own one-step sample of the prompt
        want = model.unroll(gen.noise, model.encode_prompts(PROMPTS[:1]), model.schedule(1)).latents
    torch.testing.assert_close(gen.z_init, want)


def test_presets_for_flux_schnell_and_sd35_turbo_validate():
    """ReNO's loop and rewards; FLUX.1-schnell as ReNO's code runs it (1 step, 512 px, 256 T5 tokens),
    SD3.5-Large-Turbo as it is documented (4 steps, 1024 px); every generator option is one the noise generator takes."""
    import inspect

    from r0kit.commands.optimize import preset_path
    from r0kit.config import load_run
    from r0kit_diffusers import NoiseGenerator

    accepted = set(inspect.signature(NoiseGenerator).parameters)
    reno = load_run(preset_path("reno"))
    for name, model, steps, size in (("reno_flux", "black-forest-labs/FLUX.1-schnell", 1, 512),
                                     ("reno_sd35", "stabilityai/stable-diffusion-3.5-large-turbo", 4, 1024)):
        cfg = load_run(preset_path(name))
        opts = cfg.generator.options
        assert cfg.generator.name == "noise" and opts["model"] == model, name
        assert (opts["steps"], opts["height"], opts["width"], cfg.dtype) == (steps, size, size, "bfloat16")
        assert set(opts) <= accepted, set(opts) - accepted
        assert cfg.optimizer == reno.optimizer and cfg.objective == reno.objective and cfg.steps == reno.steps
