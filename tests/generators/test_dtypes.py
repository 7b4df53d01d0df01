"""dtype never leaks: SDXL's force_upcast VAE, and prompt conditioning cached per autocast regime."""

from __future__ import annotations

import shutil

import pytest
import torch

from r0kit.diffusion import load


@pytest.fixture(scope="module")
def overflowing_sdxl(tiny_sdxl, tmp_path_factory):
    """The tiny SDXL pipeline with a VAE whose activations overflow float16 (as the real SDXL VAE's do)."""
    from diffusers import AutoencoderKL

    folder = tmp_path_factory.mktemp("overflow") / "sdxl"
    shutil.copytree(tiny_sdxl, folder)
    vae = AutoencoderKL.from_pretrained(str(folder), subfolder="vae")
    assert vae.config.force_upcast
    with torch.no_grad():  # activations ~1e5 > 65504 (the weights still fit fp16); GroupNorms bring them back
        vae.decoder.conv_in.weight.mul_(3e4)
        vae.encoder.conv_in.weight.mul_(2e5)
    shutil.rmtree(folder / "vae")
    vae.save_pretrained(str(folder / "vae"))
    return folder


def test_sdxl_fp16_decode_and_encode_of_an_overflowing_vae_are_finite(overflowing_sdxl):
    ref = load(str(overflowing_sdxl), device="cpu", components=("vae",))
    half = load(str(overflowing_sdxl), device="cpu", components=("vae",), dtype="float16")
    assert half.vae_dtype == torch.float32  # force_upcast: loaded in float32, weights never rounded to fp16
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    img = half.decode(z)
    assert torch.isfinite(img).all()
    torch.testing.assert_close(img, ref.decode(z), atol=0, rtol=0)
    enc = half.encode_images(img)
    assert torch.isfinite(enc).all()
    # nor does float16 autocast around it bring float16 back
    with torch.autocast("cpu", dtype=torch.float16):
        assert torch.isfinite(half.decode(z)).all() and torch.isfinite(half.encode_images(img)).all()
    # a VAE cast to float16 afterwards is upcast again before it runs
    half.vae.to(torch.float16)
    assert half.vae_needs_upcast
    assert torch.isfinite(half.decode(z)).all() and half.vae_dtype == torch.float32


def test_sd_vae_stays_in_the_asked_dtype(tiny_sd):
    """diffusers' SD pipelines never upcast (AutoencoderKL defaults force_upcast to true); neither does r0kit."""
    m = load(str(tiny_sd), device="cpu", components=("vae",), dtype="bfloat16")
    assert m.vae_dtype == torch.bfloat16 and not m.vae_needs_upcast


@pytest.mark.parametrize("first", ["autocast", "float32"])
def test_prompt_conditioning_is_cached_per_autocast_regime(tiny_sd, first):
    m = load(str(tiny_sd), device="cpu", components=("text",))
    prompts = ["a red cube", "a blue ball"]

    def under_autocast():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return m.encode_prompts(prompts).embeds

    def plain():
        return m.encode_prompts(prompts).embeds

    order = [under_autocast, plain] if first == "autocast" else [plain, under_autocast]
    got = {f.__name__: f() for f in order}
    m.clear_prompt_cache()
    fresh_plain = plain()
    m.clear_prompt_cache()
    fresh_auto = under_autocast()
    assert torch.equal(got["plain"], fresh_plain) and torch.equal(got["under_autocast"], fresh_auto)
    assert not torch.equal(fresh_plain, fresh_auto)  # the regimes really give different values


def test_the_overflowing_vae_really_overflows_in_float16(overflowing_sdxl):
    """The premise of the test above: run in float16 as asked, this VAE gives NaN or Inf."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(overflowing_sdxl), subfolder="vae", torch_dtype=torch.float16)
    assert all(torch.isfinite(p).all() for p in vae.parameters())
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        img = vae.decode((z / vae.config.scaling_factor).half()).sample
    assert not torch.isfinite(img).all()
