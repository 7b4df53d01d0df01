"""Guidance follows diffusers in every generator: classifier-free guidance only for a scale > 1."""

from __future__ import annotations

import pytest
import torch

import r0kit
from r0kit.diffusion import load

PROMPTS = ["a red cube", "a blue ball"]


def _images(name, model, guidance, **kw):
    opts = dict(model=model, height=16, width=16, guidance=guidance, steps=2)
    if name == "latent":
        opts["init"] = "pipeline"
    gen = r0kit.generator(name, **opts, **kw)
    gen.prepare(PROMPTS, seed=7)
    with torch.no_grad():
        return gen.sample(PROMPTS).images


@pytest.mark.parametrize("name", ["noise", "latent"])
def test_guidance_at_or_below_one_is_the_conditional_sample(sd_model, name):
    """``guidance=0`` (the turbo models' documented value) must not return the unconditional sample."""
    m = sd_model
    ref = _images(name, m, 1.0)
    for g in (0.0, 0.5):
        torch.testing.assert_close(_images(name, m, g), ref, atol=0, rtol=0)
    # the conditional sample: the prompt matters, the unconditional pass does not run
    z = torch.cat([m.initial_noise(1, 16, 16, seed=7 + i) for i in range(2)])
    with torch.no_grad():
        cond = m.decode(m.unroll(z, m.encode_prompts(PROMPTS), m.schedule(2)).latents)
        uncond = m.decode(m.unroll(z, m.encode_negative(2), m.schedule(2)).latents)
    torch.testing.assert_close(ref, cond, atol=1e-6, rtol=1e-5)
    assert float((ref - uncond).abs().max()) > 1e-3


@pytest.mark.parametrize("name", ["noise", "latent"])
def test_guidance_above_one_is_the_diffusers_cfg_sample(tiny_sd, sd_model, name):
    from diffusers import StableDiffusionPipeline

    gen = r0kit.generator(name, model=sd_model, height=16, width=16, guidance=3.0, steps=2,
                          **({"init": "pipeline"} if name == "latent" else {}))
    gen.prepare(PROMPTS, seed=7)
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd), safety_checker=None)
    pipe.scheduler = sd_model.schedule(2).scheduler
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        ours = gen.sample(PROMPTS).images
        theirs = pipe(PROMPTS, num_inference_steps=2, guidance_scale=3.0, latents=gen.noise.detach().clone(),
                      height=16, width=16, output_type="pt").images
    torch.testing.assert_close(ours, theirs.float(), atol=2e-5, rtol=1e-4)


def test_guidance_distilled_unet_reads_the_scale_as_its_timestep_condition(tmp_path):
    """An LCM-distilled UNet (time_cond_proj_dim) never runs CFG; w − 1 goes in as timestep_cond."""
    from diffusers import StableDiffusionPipeline

    from r0kit.testing.pipelines import build_tiny_pipeline

    folder = build_tiny_pipeline(tmp_path / "lcm", unet_options={"time_cond_proj_dim": 8})
    m = load(str(folder), device="cpu")
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None)
    pipe.scheduler = m.schedule(1).scheduler
    pipe.set_progress_bar_config(disable=True)
    z = m.initial_noise(2, 16, 16, seed=0)
    outs = {}
    for g in (1.0, 6.0):
        gen = r0kit.generator("noise", model=m, height=16, width=16, guidance=g)
        gen.prepare(PROMPTS, seed=0)
        assert gen._uncond is None  # no unconditional pass, whatever the scale
        with torch.no_grad():
            outs[g] = m.unroll(z, m.encode_prompts(PROMPTS), m.schedule(1), guidance_scale=g).latents
            theirs = pipe(PROMPTS, num_inference_steps=1, guidance_scale=g, latents=z.clone(), height=16, width=16,
                          output_type="latent").images
        assert float((outs[g] - theirs).abs().max() / theirs.abs().max()) <= 1e-4, g
    assert float((outs[1.0] - outs[6.0]).abs().max()) > 1e-4  # the scale reaches the network
