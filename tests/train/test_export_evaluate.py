"""An exported generator loads in plain diffusers and samples in K steps; evaluate runs end to end."""

from __future__ import annotations

import csv

import pytest
import torch

from .conftest import SIZE, kstep

PROMPTS = ["a red apple", "a blue car"]


def _perturb(gen, scale=0.3):
    with torch.no_grad():
        for i, p in enumerate(gen.parameters()):
            p.add_(scale * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))


def test_exported_lora_loads_in_plain_diffusers_and_samples_in_k_steps(tiny_sd, tiny_model, tmp_path):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    gen = kstep(tiny_model, steps=4, train="lora")
    _perturb(gen)
    folder = gen.export(tmp_path / "export")
    assert (folder / "pytorch_lora_weights.safetensors").is_file() and (folder / "kstep.json").is_file()

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd), safety_checker=None)
    pipe.load_lora_weights(str(folder))
    pipe.scheduler = EulerDiscreteScheduler.from_pretrained(str(folder), subfolder="scheduler")
    base = StableDiffusionPipeline.from_pretrained(str(tiny_sd), safety_checker=None)
    base.scheduler = pipe.scheduler
    noise = gen.noise_for_seeds([0])
    gen.eval()
    kw = dict(num_inference_steps=4, guidance_scale=1.0, output_type="pt", height=SIZE, width=SIZE)
    with torch.no_grad():
        ours = gen.sample(PROMPTS[:1], noise=noise).images
        theirs = pipe(PROMPTS[0], latents=noise.clone(), **kw).images
        plain = base(PROMPTS[0], latents=noise.clone(), **kw).images
    assert pipe.scheduler.timesteps.tolist() == gen.timesteps.tolist()
    lora_effect = float((ours - plain).abs().max())
    assert lora_effect > 0.02  # the LoRA matters ...
    assert float((ours - theirs).abs().max()) < 0.1 * lora_effect  # ... and plain diffusers reproduces it


def test_exported_full_pipeline_loads_with_from_pretrained(tiny_model, tmp_path):
    from diffusers import StableDiffusionPipeline

    gen = kstep(tiny_model, steps=2, train="full")
    _perturb(gen, 0.01)
    folder = gen.export(tmp_path / "full")
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None)
    noise = gen.noise_for_seeds([3])
    gen.eval()
    with torch.no_grad():
        ours = gen.sample(PROMPTS[:1], noise=noise).images
        theirs = pipe(PROMPTS[0], latents=noise.clone(), num_inference_steps=2, guidance_scale=1.0,
                      output_type="pt", height=SIZE, width=SIZE).images
    assert float((ours - theirs).abs().max()) < 5e-3


def test_evaluate_end_to_end(tiny_sd, tiny_model, tmp_path, capsys):
    from r0kit.cli import main
    from r0kit.outputs import save_png

    gen = kstep(tiny_model, steps=2, train="lora")
    _perturb(gen)
    export = gen.export(tmp_path / "export")
    images = tmp_path / "images"
    for i, p in enumerate(PROMPTS):
        save_png(images / f"{i}.png", torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(i)), {"prompt": p})
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "eval"
    rc = main(["evaluate", str(export), str(tiny_sd), str(images), "--prompts-file", str(prompts),
               "--reward", "colorfulness", "--held-out", "contrast", "--steps", "2", "--size", str(SIZE),
               "--device", "cpu", "--label", "R0", "--label", "base", "--output", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "colorfulness" in printed and "contrast*" in printed and "R0" in printed and "FID omitted" in printed
    rows = list(csv.DictReader(open(out / "evaluation.csv")))
    assert len(rows) == 3 * len(PROMPTS)
    assert {r["model"] for r in rows} == {"R0", "base", "images"}
    summary = {r["model"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert set(summary["R0"]) >= {"colorfulness", "contrast*"}
    # the exported generator's scores are of its own samples, distinct from the base model's
    assert summary["R0"]["colorfulness"] != summary["base"]["colorfulness"]
    for label in ("R0", "base", "images"):
        assert (out / f"grid-{label}.png").is_file()
    # the image-folder row scores exactly what score_folder scores
    from r0kit.score import score_folder

    ref = score_folder(images, ["colorfulness"]).means()["colorfulness"]
    assert float(summary["images"]["colorfulness"]) == pytest.approx(ref, rel=1e-5)


def test_evaluate_refuses_held_out_equal_to_trained(tmp_path):
    from r0kit.errors import OptionError
    from r0kit.evaluate import evaluate

    with pytest.raises(OptionError, match="held-out"):
        evaluate([str(tmp_path)], None, rewards=["contrast"], held_out=["contrast"], output=tmp_path / "o")
