"""The tiny-model builders of r0kit.testing: real architectures, seeded, loadable from their on-disk format."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch


def test_importing_r0kit_testing_imports_no_heavy_package():
    code = (
        "import sys, r0kit.testing, r0kit.testing.fixtures, r0kit.testing.docs\n"
        "print(sorted(m for m in ('open_clip', 'diffusers', 'transformers', 'timm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_tiny_open_clip_saves_in_the_hub_layout_and_loads_back(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    from r0kit.testing import save_tiny_open_clip, tiny_open_clip

    folder = save_tiny_open_clip(tmp_path / "tiny", seed=3)
    assert sorted(p.name for p in folder.iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors"]
    loaded = open_clip.create_model("local-dir:" + str(folder)).eval()
    built = tiny_open_clip(seed=3)
    other = tiny_open_clip(seed=4)
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    tokens = open_clip.get_tokenizer("ViT-B-32")(["a cat", "a dog"])
    with torch.no_grad():
        a, b, c = (m.encode_image(x) for m in (loaded, built, other))
        t = loaded.encode_text(tokens)
    torch.testing.assert_close(a, b)
    assert a.shape == (2, 32) and t.shape == (2, 32)
    assert not torch.allclose(a, c)
    assert not built.training


def test_register_tiny_open_clip_makes_an_architecture_name(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    from r0kit.testing import register_tiny_open_clip, tiny_open_clip_config

    name = register_tiny_open_clip(tmp_path, name="r0kit-testing-tiny-wide", text_cfg={"width": 48})
    assert open_clip.get_model_config(name)["text_cfg"]["width"] == 48
    assert tiny_open_clip_config(text_cfg={"width": 48})["text_cfg"]["heads"] == 2  # nested overrides merge


def test_tiny_unet_and_vae_run_and_round_trip(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from r0kit.testing import tiny_unet, tiny_vae

    unet, vae = tiny_unet(seed=1), tiny_vae(seed=1)
    assert not unet.training and not vae.training
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        latent = vae.encode(image).latent_dist.mean
        assert latent.shape == (1, 4, 8, 8)
        assert vae.decode(latent).sample.shape == (1, 3, 16, 16)
        cond = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(1))
        eps = unet(latent, 10, encoder_hidden_states=cond).sample
    assert eps.shape == latent.shape and torch.isfinite(eps).all()
    unet.save_pretrained(tmp_path / "unet")
    again = diffusers.UNet2DConditionModel.from_pretrained(tmp_path / "unet").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(latent, 10, encoder_hidden_states=cond).sample, eps)
    other = tiny_unet(seed=2)
    assert not torch.equal(next(other.parameters()), next(unet.parameters()))
