"""One few-step rule for every scheduler config, and the diffusers pipeline it equals number for number.

The published scheduler configs (r0kit.testing.pipelines.SCHEDULER_CONFIGS, the
JSON files of the real repositories) are put on the tiny pipelines; the same
noise then goes through r0kit and through the diffusers pipeline.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

import r0kit
from r0kit.diffusion import load, trailing_timesteps
from r0kit.errors import OptionError
from r0kit.testing.pipelines import SCHEDULER_CONFIGS, make_scheduler, with_scheduler

PROMPTS = ["a red cube", "a blue ball"]
SD_TURBO, SDXL_TURBO = "stabilityai/sd-turbo", "stabilityai/sdxl-turbo"
SD15, SDXL_BASE = "stable-diffusion-v1-5/stable-diffusion-v1-5", "stabilityai/stable-diffusion-xl-base-1.0"
KIND = {SD_TURBO: "sd", SDXL_TURBO: "sdxl", SD15: "sd", SDXL_BASE: "sdxl"}


@pytest.fixture(scope="module")
def published(tiny_sd, tiny_sdxl, tmp_path_factory):
    """The tiny SD/SDXL pipelines with each published scheduler config, loaded by r0kit."""
    root = tmp_path_factory.mktemp("published")
    out = {}
    for i, (repo, cfg) in enumerate(SCHEDULER_CONFIGS.items()):
        folder = with_scheduler(tiny_sd if KIND[repo] == "sd" else tiny_sdxl, root / str(i), cfg)
        out[repo] = (folder, load(str(folder), device="cpu"))
    return out


# ---------------------------------------------------------------------------- item: timesteps
def test_trailing_timesteps_are_k_strictly_decreasing_values_for_every_n_and_k():
    for n in range(1, 161):
        for k in range(1, n + 1):
            ts = trailing_timesteps(n, k)
            assert len(ts) == k and ts[0] == n - 1 and ts[-1] >= 0, (n, k, ts)
            assert all(a > b for a, b in zip(ts, ts[1:])), (n, k, ts)
    # np.arange gives K + 1 values here, the last one -1
    assert len(np.round(np.arange(1000, 0, -1000 / 61))) == 62
    ts = trailing_timesteps(1000, 61)
    assert len(ts) == 61 and ts[-1] >= 0
    for bad in (0, 1001, 2.5, True):
        with pytest.raises(OptionError, match=f"K={bad!r}"):
            trailing_timesteps(1000, bad)


@pytest.mark.parametrize("k", range(1, 51))
def test_trailing_timesteps_are_diffusers_trailing_spacing(k):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    for cls in (EulerDiscreteScheduler, DDIMScheduler):
        s = cls(num_train_timesteps=1000, timestep_spacing="trailing")
        s.set_timesteps(k)
        assert [int(t) for t in s.timesteps] == trailing_timesteps(1000, k)


@pytest.mark.parametrize("repo", list(SCHEDULER_CONFIGS))
def test_few_step_sampling_starts_at_the_top_for_published_configs(published, repo):
    _, model = published[repo]
    for k in (1, 2, 3, 4):
        gen = r0kit.generator("noise", model=model, steps=k, height=16, width=16)
        ts = [int(t) for t in gen.timesteps]
        assert len(ts) == k and ts[0] >= 0.9 * 1000, (repo, k, ts)
        assert all(a > b for a, b in zip(ts, ts[1:]))


@pytest.mark.parametrize("name", ["ddim", "pndm", "euler", "euler_a", "lcm", "dpm", "ddpm", "unipc", "heun"])
@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("offset", [0, 1])
def test_every_scheduler_spacing_and_offset_starts_at_the_top(sd_model, name, spacing, offset):
    classes = {"pndm": "PNDMScheduler", "unipc": "UniPCMultistepScheduler", "heun": "HeunDiscreteScheduler"}
    model = copy.copy(sd_model)
    model.scheduler = make_scheduler(
        {"_class_name": classes.get(name, r0kit.diffusion.SCHEDULERS.get(name)), **json.loads(SCHEDULER_CONFIGS[SD15])},
        timestep_spacing=spacing,
        steps_offset=offset,
    )
    for k in (1, 2, 3, 4):
        ts = model.schedule(k).timesteps.tolist()
        assert ts == trailing_timesteps(1000, k)
    assert model.schedule(None, timesteps=[700, 200]).timesteps.tolist() == [700, 200]  # explicit ones override


# ---------------------------------------------------------------------------- item: parity with diffusers
def _pipeline(folder, kind, scheduler=None):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if kind == "sdxl":
        pipe = StableDiffusionXLPipeline.from_pretrained(str(folder))
    else:
        pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None, requires_safety_checker=False)
    if scheduler is not None:
        pipe.scheduler = scheduler
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _rel(ours, ref):
    return float((ours - ref).abs().max() / ref.abs().max())


def _ours(model, z, k, **kw):
    with torch.no_grad():
        cond = model.encode_prompts(PROMPTS, height=16, width=16)
        return model.unroll(z, cond, model.schedule(k), **kw).latents


def _theirs(pipe, z, k, **kw):
    with torch.no_grad():
        return pipe(PROMPTS, num_inference_steps=k, guidance_scale=0.0, latents=z.clone(), height=16, width=16,
                    output_type="latent", **kw).images


@pytest.mark.parametrize("repo", list(SCHEDULER_CONFIGS))
def test_unroll_equals_the_diffusers_pipeline_for_published_configs(published, repo):
    """x_T given to diffusers is the unscaled noise z; each scheduler scales it as it does."""
    folder, model = published[repo]
    pipe = _pipeline(folder, KIND[repo])
    z = model.initial_noise(2, 16, 16, seed=0)
    for k in (1, 2, 4):
        schedule = model.schedule(k)
        pipe.scheduler = schedule.scheduler
        ours = _ours(model, z, k)
        assert _rel(ours, _theirs(pipe, z, k)) <= 1e-4, (repo, k)
        assert [int(t) for t in pipe.scheduler.timesteps] == schedule.timesteps.tolist()
        with torch.no_grad():  # explicit timesteps give the same
            theirs = pipe(PROMPTS, timesteps=schedule.timesteps.tolist(), guidance_scale=0.0, latents=z.clone(),
                          height=16, width=16, output_type="latent").images
        assert _rel(ours, theirs) <= 1e-4


def test_sd_turbo_one_step_equals_its_own_pipeline_out_of_the_box(published):
    """The shipped Euler (trailing) scales latents by σ_max: the UNet sees 0.99767·z, in r0kit too."""
    folder, model = published[SD_TURBO]
    pipe = _pipeline(folder, "sd")  # the scheduler it ships, untouched
    z = model.initial_noise(2, 16, 16, seed=1)
    assert model.schedule(1).init_scale == pytest.approx(0.997667, abs=1e-6)
    for k in (1, 2, 4):
        assert _rel(_ours(model, z, k), _theirs(pipe, z, k)) <= 1e-4, k
    gen = r0kit.generator("noise", model=model, steps=1, height=16, width=16)
    gen.prepare(PROMPTS, seed=5)
    with torch.no_grad():
        img = gen.sample(PROMPTS).images
        ref = pipe(PROMPTS, num_inference_steps=1, guidance_scale=0.0, latents=gen.noise.detach().clone(),
                   height=16, width=16, output_type="pt").images
    torch.testing.assert_close(img, ref.float(), atol=2e-5, rtol=1e-4)


def test_sdxl_turbo_one_step_equals_its_euler_ancestral_pipeline(published):
    folder, model = published[SDXL_TURBO]
    pipe = _pipeline(folder, "sdxl")  # EulerAncestralDiscreteScheduler, trailing: no added noise at the last step
    z = model.initial_noise(2, 16, 16, seed=2)
    assert _rel(_ours(model, z, 1), _theirs(pipe, z, 1, generator=torch.Generator().manual_seed(0))) <= 1e-4


@pytest.mark.parametrize("k", [1, 2, 4])
def test_ddim_with_alpha_one_equals_r0kit_when_k_divides_the_training_steps(published, k):
    from diffusers import DDIMScheduler

    folder, model = published[SD15]
    ddim = DDIMScheduler.from_config(model.scheduler.config, timestep_spacing="trailing", set_alpha_to_one=True)
    pipe = _pipeline(folder, "sd", ddim)
    z = model.initial_noise(2, 16, 16, seed=3)
    assert _rel(_ours(model, z, k), _theirs(pipe, z, k)) <= 1e-4


def test_what_multistep_and_stochastic_schedulers_equal(published):
    """DPM-Solver++(2M) equals r0kit for K <= 2 and not at K = 4; LCM equals it at K = 1."""
    from diffusers import DPMSolverMultistepScheduler, LCMScheduler

    folder, model = published[SD15]
    z = model.initial_noise(2, 16, 16, seed=4)
    dpm2 = DPMSolverMultistepScheduler.from_config(model.scheduler.config, timestep_spacing="trailing", solver_order=2)
    pipe = _pipeline(folder, "sd", dpm2)
    for k in (1, 2):
        assert _rel(_ours(model, z, k), _theirs(pipe, z, k)) <= 1e-4, k
    assert _rel(_ours(model, z, 4), _theirs(pipe, z, 4)) > 1e-3  # its second-order steps are not r0kit's
    lcm = _pipeline(folder, "sd", LCMScheduler.from_config(model.scheduler.config))
    with torch.no_grad():
        theirs = lcm(PROMPTS, timesteps=[999], guidance_scale=0.0, latents=z.clone(), height=16, width=16,
                     output_type="latent").images
    assert _rel(_ours(model, z, 1), theirs) <= 1e-4


def test_init_scale_follows_the_scheduler_convention(published):
    """Sigma-space (Euler family) at trailing spacing: σ_VP(t₀); variance-preserving schedulers: 1."""
    for repo, (_, model) in published.items():
        s = model.schedule(2)
        want = float(s.sigmas[0]) if repo != SD15 else 1.0
        assert s.init_scale == pytest.approx(want), repo
        assert type(s.scheduler).__name__ == ("DPMSolverMultistepScheduler" if repo == SD15 else "EulerDiscreteScheduler")
        head = s.head(1)
        assert head.timesteps.tolist() == s.timesteps[:1].tolist() and head.alphas.tolist()[-1] == 1.0
        assert head.sigmas.tolist() == [float(s.sigmas[0]), 0.0]
