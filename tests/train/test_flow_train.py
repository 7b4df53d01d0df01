"""R0 on rectified-flow models (SD3, FLUX.1): the kstep generator trains, resumes exactly and exports to plain diffusers."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import r0kit
from r0kit.train import train

from .conftest import SIZE, kstep, train_config

PROMPTS = ["a red apple", "a blue car"]
T5_LEN = 24  # the tiny T5 tokenizer's budget


@pytest.fixture(params=["sd3", "flux"])
def flow(request, tiny_sd3, tiny_flux):
    """(kind, pipeline folder) of a tiny SD3 or FLUX.1 pipeline."""
    return request.param, (tiny_sd3 if request.param == "sd3" else tiny_flux)


def _flow_config(folder, output, **over):
    gen = {"max_sequence_length": T5_LEN, **over.pop("generator", {})}
    return train_config(folder, output, generator=gen, **over)


def _pack(z):
    b, c, h, w = z.shape
    return z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def _latents(pipe, kind, noise, meta, **kw):
    import diffusers

    out = pipe(PROMPTS[0], latents=(_pack(noise) if kind == "flux" else noise).clone(), guidance_scale=0.0,
               output_type="latent", height=SIZE, width=SIZE, max_sequence_length=meta["max_sequence_length"],
               sigmas=meta["sigmas"], **kw).images
    return diffusers.FluxPipeline._unpack_latents(out, SIZE, SIZE, 2) if kind == "flux" else out


def _eval_reward(gen):
    gen.eval()
    with torch.no_grad():
        imgs = gen.sample(PROMPTS, noise=gen.noise_for_seeds(range(len(PROMPTS)))).images
    gen.train(True)
    return float(r0kit.reward("colorfulness").module(imgs, PROMPTS).mean())


def test_kstep_on_a_transformer_adapts_its_attention_projections(flow):
    from r0kit.diffusion import load
    from r0kit_r0 import FLOW_LORA_TARGETS

    kind, folder = flow
    gen = kstep(load(str(folder), device="cpu", max_sequence_length=T5_LEN), steps=4)
    assert gen.lora_targets == FLOW_LORA_TARGETS
    adapted = {n.rsplit(".lora_", 1)[0].rsplit(".", 1)[-1] for n, _ in gen.named_parameters()}
    assert {"to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"} <= adapted
    assert all("lora_" in n for n, _ in gen.named_parameters())
    assert gen.timesteps.dtype == torch.float32 and gen.options()["timesteps"][0] == 1000.0
    s = gen.sample(PROMPTS)
    assert s.images.shape == (2, 3, SIZE, SIZE) and s.state["latents"].shape == (2, 4, SIZE // 2, SIZE // 2)
    s.images.mean().backward()
    assert all(p.grad is not None for p in gen.parameters())


def test_a_few_steps_raise_the_training_reward(flow, tmp_path):
    """FLUX by LoRA; SD3 in full (the tiny SD3's attention carries little of its output, as the tiny UNet's)."""
    from r0kit_r0 import KStepGenerator

    kind, folder = flow
    train_mode, lr = ("full", 3e-3) if kind == "sd3" else ("lora", 5e-2)
    cfg = _flow_config(folder, tmp_path / "run", steps=5, optimizer={"lr": lr}, export=False, generator={"train": train_mode},
                       objective={"normalize_gradients": True, "rewards": {"colorfulness": {"weight": 1.0}}, "regularizers": {}})
    gen = KStepGenerator(**cfg.generator.options())
    before = _eval_reward(gen)
    res = train(cfg, generator=gen)
    after = _eval_reward(gen)
    assert res.step == 5 and after > before + 0.005, (kind, before, after)


def test_resume_is_exact(flow, tmp_path):
    _, folder = flow
    over = dict(steps=4, grad_accum=2, ema={"enabled": True, "decay": 0.9}, export=False)
    straight = train(_flow_config(folder, tmp_path / "a", **over))

    cfg_b = _flow_config(folder, tmp_path / "b", **over)

    def interrupt(step, values):
        if step == 2:
            raise KeyboardInterrupt

    assert train(cfg_b, callback=interrupt).step == 2
    resumed = train(cfg_b, resume="latest")
    assert resumed.step == 4
    for name in ("trainable.safetensors", "optimizer.safetensors", "ema.safetensors", "rng.safetensors"):
        ta, tb = load_file(str(straight.checkpoint / name)), load_file(str(resumed.checkpoint / name))
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta), name
    final = load_file(str(straight.checkpoint / "trainable.safetensors"))
    first = load_file(str(train(_flow_config(folder, tmp_path / "c", **{**over, "steps": 1})).checkpoint / "trainable.safetensors"))
    assert any(not torch.equal(first[k], final[k]) for k in final)  # the weights moved: equality is not trivial


def test_exported_lora_loads_in_plain_diffusers_and_reproduces_the_samples(flow, tmp_path):
    """SD3Pipeline / FluxPipeline + load_lora_weights + the exported scheduler and sigmas give r0kit's latent."""
    import diffusers

    from r0kit.diffusion import load
    from r0kit_r0 import read_export

    kind, folder = flow
    gen = kstep(load(str(folder), device="cpu", max_sequence_length=T5_LEN), steps=4, train="lora")
    with torch.no_grad():
        for i, p in enumerate(gen.parameters()):
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    export = gen.export(tmp_path / "export")
    meta = read_export(export)
    assert meta["pipeline"] == ("StableDiffusion3Pipeline" if kind == "sd3" else "FluxPipeline")
    assert "sigmas=sigmas" in meta["usage"] and meta["sigmas"] == pytest.approx([1.0, 0.75, 0.5, 0.25])

    pipe_cls = getattr(diffusers, meta["pipeline"])
    pipe = pipe_cls.from_pretrained(str(folder))
    pipe.load_lora_weights(str(export), weight_name="pytorch_lora_weights.safetensors")  # as kstep.json says
    pipe.scheduler = getattr(diffusers, meta["scheduler"]).from_pretrained(str(export), subfolder="scheduler")
    base = pipe_cls.from_pretrained(str(folder))
    base.scheduler = pipe.scheduler
    for p in (pipe, base):
        p.set_progress_bar_config(disable=True)
    noise = gen.noise_for_seeds([0])
    gen.eval()
    with torch.no_grad():
        ours = gen.sample(PROMPTS[:1], noise=noise).state["latents"]
        theirs = _latents(pipe, kind, noise, meta)
        plain = _latents(base, kind, noise, meta)
    assert [round(t, 3) for t in pipe.scheduler.timesteps.tolist()] == [round(t, 3) for t in meta["timesteps"]]
    assert float((ours - plain).abs().max()) > 1e-2  # the LoRA matters ...
    assert float((ours - theirs).abs().max() / theirs.abs().max()) <= 1e-4  # ... and plain diffusers reproduces it
    # and it loads back into r0kit as a frozen generator with the same samples
    from r0kit_r0 import load_export

    back = load_export(export, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(back.sample(PROMPTS[:1], noise=noise).state["latents"], ours)


def test_exported_full_pipeline_without_t5_loads_with_from_pretrained(tiny_sd3, tmp_path):
    from diffusers import StableDiffusion3Pipeline

    from r0kit.diffusion import load
    from r0kit_r0 import read_export

    gen = kstep(load(str(tiny_sd3), device="cpu", max_sequence_length=T5_LEN, drop_t5=True), steps=2, train="full")
    with torch.no_grad():
        for p in gen.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    folder = gen.export(tmp_path / "full")
    meta = read_export(folder)
    assert meta["drop_t5"] is True
    assert "text_encoder_3=None, tokenizer_3=None" in meta["usage"]
    pipe = StableDiffusion3Pipeline.from_pretrained(str(folder), text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    noise = gen.noise_for_seeds([3])
    gen.eval()
    with torch.no_grad():
        ours = gen.sample(PROMPTS[:1], noise=noise).images
        theirs = pipe(PROMPTS[0], latents=noise.clone(), sigmas=meta["sigmas"], guidance_scale=0.0, output_type="pt",
                      height=SIZE, width=SIZE, max_sequence_length=T5_LEN).images
    torch.testing.assert_close(ours, theirs.float(), atol=2e-5, rtol=1e-4)


def test_sd3_preset_follows_r0s_sd3_medium_setting():
    from r0kit.commands.optimize import preset_path
    from r0kit.train import load_train_config

    cfg = load_train_config(preset_path("train_r0_sd3"))
    g = cfg.generator
    assert g.model == "stabilityai/stable-diffusion-3-medium-diffusers"
    assert (g.steps, g.height, g.width, g.train) == (4, 1024, 1024, "lora")
    assert cfg.mixed_precision == "bf16" and cfg.gradient_checkpointing and cfg.objective.normalize_gradients
    assert "weight_l2" in cfg.objective.regularizers


@pytest.mark.parametrize("name, kind", [("r0kit:tiny-sd3", "sd3"), ("r0kit:tiny-flux", "flux")])
def test_tiny_flow_pipelines_by_short_name(name, kind, tmp_path, monkeypatch, capsys):
    """``--model r0kit:tiny-flux`` builds the tiny pipeline once into the cache; the dry run reads its configs."""
    from r0kit.cli import main
    from r0kit.diffusion import load
    from r0kit.testing.pipelines import resolve_tiny_model

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert main(["train", "--preset", "train_tiny", "--model", name, "--dry-run"]) == 0
    assert f"({kind})" in capsys.readouterr().out
    folder = resolve_tiny_model(name)
    assert folder == str(tmp_path / "cache" / "r0kit" / name.split(":")[1])
    assert load(folder, device="cpu", components=("vae",)).kind == kind
