"""r0kit.diffusion on tiny random-weight pipelines loaded by folder path."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from r0kit.diffusion import (
    PromptTruncationWarning,
    alphas_sigmas,
    eta_step,
    load,
    make_scheduler,
    predict_x0_eps,
    read_model_index,
)
from r0kit.errors import InputError, OptionError, WeightsError


def test_load_by_folder(sd_model, tiny_sd):
    assert sd_model.kind == "sd"
    assert sd_model.unet is not None and sd_model.vae is not None and len(sd_model.text_encoders) == 1
    assert not any(p.requires_grad for p in sd_model.unet.parameters())
    assert sd_model.latent_shape(16, 16) == (4, 8, 8)
    assert read_model_index(tiny_sd)["_class_name"] == "StableDiffusionPipeline"


def test_folder_that_is_not_a_pipeline(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(WeightsError, match="not a diffusers pipeline.*model_index.json.*from_single_file"):
        load(str(tmp_path), device="cpu")


def test_a_transformer_pipeline_r0kit_does_not_sample_is_refused_clearly(tmp_path):
    (tmp_path / "model_index.json").write_text(
        json.dumps({"_class_name": "SanaSprintPipeline", "transformer": ["diffusers", "SanaTransformer2DModel"]})
    )
    with pytest.raises(WeightsError, match="has a SanaTransformer2DModel.*SD3Transformer2DModel.*FluxTransformer2DModel"):
        load(str(tmp_path), device="cpu")


def test_missing_hub_model_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE"):
        load("nobody/not-a-model-r0kit", device="cpu")


def test_step_count_validation(sd_model):
    with pytest.raises(OptionError, match="from 1 to 1000, got K=0"):
        sd_model.schedule(0)
    with pytest.raises(OptionError, match="from 1 to 1000, got K=1001"):
        sd_model.schedule(1001)
    with pytest.raises(OptionError, match="strictly decreasing"):
        sd_model.schedule(2, timesteps=[500, 999])
    with pytest.raises(OptionError, match="2 timesteps given for steps=3"):
        sd_model.schedule(3, timesteps=[999, 500])
    assert sd_model.schedule(2).timesteps.tolist() == [999, 499]
    assert sd_model.schedule(None, timesteps=[800, 300]).timesteps.tolist() == [800, 300]


def test_lcm_samples_any_step_count_by_the_one_rule(tiny_sd):
    """LCM's own set_timesteps refuses more than its 50 original steps; r0kit's rule does not ask it."""
    m = load(str(tiny_sd), device="cpu", components=("vae",), scheduler="lcm")
    assert m.schedule(4).timesteps.tolist() == [999, 749, 499, 249]
    assert len(m.schedule(60)) == 60 and m.schedule(60).init_scale == 1.0


def test_unknown_scheduler(sd_model):
    with pytest.raises(OptionError, match="unknown scheduler 'nope'.*ddim"):
        make_scheduler("nope", sd_model.scheduler.config)


def test_prompt_truncation_warns_once_and_says_so(sd_model):
    long = "a photo of " + "very " * 10 + "red apple"
    sd_model.clear_prompt_cache()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        c1 = sd_model.encode_prompts([long, "short"])
        c2 = sd_model.encode_prompts([long])
    msgs = [str(w.message) for w in rec if issubclass(w.category, PromptTruncationWarning)]
    assert len(msgs) == 1, msgs
    assert "truncated" in msgs[0] and "dropped" in msgs[0] and "red apple" in msgs[0]
    assert long in sd_model.truncated and "short" not in sd_model.truncated
    assert torch.equal(c1.embeds[:1], c2.embeds)
    assert c1.embeds.shape == (2, 16, 32)


def test_alphas_come_from_the_scheduler(sd_model):
    t = torch.tensor([999, 499, 0])
    a, s = alphas_sigmas(sd_model.scheduler, t)
    ac = sd_model.scheduler.alphas_cumprod[t]
    torch.testing.assert_close(a**2, ac.float())
    torch.testing.assert_close(a**2 + s**2, torch.ones(3))


@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction", "sample"])
def test_prediction_type_conversion_round_trip(ptype):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    a, s = torch.tensor(0.6), torch.tensor(0.8)
    xt = a * x0 + s * eps
    out = {"epsilon": eps, "v_prediction": a * eps - s * x0, "sample": x0}[ptype]
    x0_hat, eps_hat = predict_x0_eps(out, xt, a, s, ptype)
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(eps_hat, eps)
    with pytest.raises(OptionError, match="prediction_type"):
        predict_x0_eps(out, xt, a, s, "flow")


def test_eta_step_math():
    g = torch.Generator().manual_seed(1)
    x0, eps, xi = (torch.randn(3, 4, 2, 2, generator=g) for _ in range(3))
    torch.testing.assert_close(eta_step(x0, eps, 0.6, 0.8), 0.6 * x0 + 0.8 * eps)
    torch.testing.assert_close(eta_step(x0, eps, 0.6, 0.8, 1.0, xi), 0.6 * x0 + 0.8 * xi)
    eta = torch.tensor([0.0, 0.5, 1.0])
    want = 0.6 * x0 + 0.8 * (torch.sqrt(1 - eta**2).view(3, 1, 1, 1) * eps + eta.view(3, 1, 1, 1) * xi)
    torch.testing.assert_close(eta_step(x0, eps, 0.6, 0.8, eta, xi), want)
    # drawn noise: reproducible from (seed, offset), different for another seed
    a = eta_step(x0, eps, 0.6, 0.8, 0.5, seed=3)
    torch.testing.assert_close(a, eta_step(x0, eps, 0.6, 0.8, 0.5, seed=3))
    assert not torch.allclose(a, eta_step(x0, eps, 0.6, 0.8, 0.5, seed=4))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        eta_step(x0, eps, 0.6, 0.8, torch.tensor([0.1, 1.5, 0.0]))


def test_unroll_matches_the_diffusers_ddim_pipeline(tiny_sd):
    """Our deterministic (η=0) 2-step sampler equals diffusers' own DDIM pipeline on the same weights."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    m = load(str(tiny_sd), device="cpu", scheduler="ddim", scheduler_options={"clip_sample": False, "set_alpha_to_one": True})
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd), safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(m.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    noise = m.initial_noise(2, 16, 16, seed=0)
    prompts = ["a red cube", "a blue ball"]
    with torch.no_grad():
        ours = m.decode(m.unroll(noise, m.encode_prompts(prompts), m.schedule(2)).latents)
        ref = pipe(prompts, num_inference_steps=2, guidance_scale=1.0, latents=noise.clone(), height=16, width=16, output_type="pt").images
    torch.testing.assert_close(ours, ref.float(), atol=1e-4, rtol=1e-4)


def test_unroll_eta_noise_and_stop_gradient(sd_model):
    m = sd_model
    cond = m.encode_prompts(["a", "b"])
    ts = m.schedule(3)
    noise = m.initial_noise(2, 16, 16, seed=0).requires_grad_(True)
    eta = torch.tensor([[0.0, 1.0], [0.3, 0.3], [0.0, 0.0]])
    u1 = m.unroll(noise, cond, ts, eta=eta, seed=5, return_x0s=True)
    u2 = m.unroll(noise, cond, ts, eta=eta, seed=5)
    u3 = m.unroll(noise, cond, ts, eta=eta, seed=6)
    assert len(u1.x0s) == 3 and torch.equal(u1.x0s[-1], u1.latents)
    torch.testing.assert_close(u1.latents, u2.latents)
    assert not torch.allclose(u1.latents, u3.latents)
    (g,) = torch.autograd.grad(u1.latents.sum(), noise)
    assert g.abs().sum() > 0
    # stop-gradient before step 1: nothing reaches the noise, x̂₀ of step 1 still has a graph
    u4 = m.unroll(noise, cond, ts, eta=eta, seed=5, grad_from_step=1, return_x0s=True)
    assert not u4.x0s[0].requires_grad and not u4.latents.requires_grad  # noise-only graph, frozen UNet
    torch.testing.assert_close(u4.latents, u1.latents)
    with pytest.raises(InputError, match="eta must be"):
        m.unroll(noise, cond, ts, eta=torch.zeros(2))


def test_decode_is_differentiable_and_in_range(sd_model):
    z = torch.randn(2, 4, 8, 8, requires_grad=True)
    img = sd_model.decode(z)
    assert img.shape == (2, 3, 16, 16) and img.min() >= 0 and img.max() <= 1
    img.mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_memory_options_keep_the_gradient(tiny_sd, sd_model):
    m = load(str(tiny_sd), device="cpu", gradient_checkpointing=True, vae_checkpointing=True, vae_slicing=True)
    assert m.unet.is_gradient_checkpointing and m.vae_checkpointing
    cond = m.encode_prompts(["x", "y"])
    n = m.initial_noise(2, 16, 16, seed=1)
    grads = []
    for model in (m, sd_model):
        z = n.clone().requires_grad_(True)
        model.decode(model.unroll(z, cond, model.schedule(2)).latents).square().mean().backward()
        grads.append(z.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_sdxl_conditioning(tiny_sdxl):
    m = load(str(tiny_sdxl), device="cpu")
    assert m.kind == "sdxl" and len(m.text_encoders) == 2
    c = m.encode_prompts(["a", "b"], height=16, width=16)
    assert c.embeds.shape == (2, 16, 64) and c.pooled.shape == (2, 32)
    assert c.time_ids.tolist() == [[16, 16, 0, 0, 16, 16]] * 2
    u = m.encode_negative(2, height=16, width=16)
    assert torch.count_nonzero(u.embeds) == 0  # force_zeros_for_empty_prompt
    n = m.initial_noise(2, 16, 16, seed=0).requires_grad_(True)
    img = m.decode(m.unroll(n, c, m.schedule(1), guidance_scale=2.0, uncond=u).latents)
    img.mean().backward()
    assert n.grad.abs().sum() > 0
