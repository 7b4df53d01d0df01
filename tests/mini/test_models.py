"""The mini world's committed models load through the standard paths, in their real formats, checksums verified."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from r0kit.mini import world as W

pytest.importorskip("diffusers")
pytest.importorskip("open_clip")


def _batch(n: int = 12, seed: int = 0, split: str = "train"):
    rng = np.random.default_rng(seed)
    scenes = [W.sample_scene(rng, split) for _ in range(n)]
    return scenes, torch.from_numpy(W.render_batch(scenes)), [s.prompt for s in scenes]


def test_every_built_in_model_folder_matches_its_checksums():
    from r0kit.weights import BUILTIN_MODELS, builtin_model

    sums = json.loads((builtin_model("r0kit-mini").parent / "checksums.json").read_text())
    for name in BUILTIN_MODELS:
        folder = builtin_model(name)
        assert folder is not None and folder.is_dir()
        listed = {k for k in sums if k.split("/")[0] == folder.name}
        on_disk = {str(p.relative_to(folder.parent)) for p in folder.rglob("*") if p.is_file()}
        assert listed == on_disk, f"{name}: files and checksums.json disagree"


def test_a_damaged_file_is_refused_naming_it(tmp_path):
    from r0kit.errors import WeightsError
    from r0kit.weights import builtin_model, verify_checksums

    src = builtin_model("r0kit-mini-hps")
    copy = tmp_path / "models"
    shutil.copytree(src, copy / src.name)
    shutil.copy2(src.parent / "checksums.json", copy / "checksums.json")
    verify_checksums(copy / src.name, what="hps copy")  # intact: passes
    target = next(p for p in (copy / src.name).iterdir() if p.is_file())
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=target.name):
        verify_checksums(copy / src.name, what="hps copy")
    target.unlink()
    with pytest.raises(WeightsError, match="missing"):
        verify_checksums(copy / src.name, what="hps copy")


def test_the_pipeline_loads_in_plain_diffusers_and_samples():
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    from r0kit.weights import builtin_model

    pipe = DiffusionPipeline.from_pretrained(str(builtin_model("r0kit-mini")))
    assert isinstance(pipe, StableDiffusionPipeline)
    out = pipe(["a red circle"], num_inference_steps=2, guidance_scale=1.0, output_type="pt",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 3, W.RESOLUTION, W.RESOLUTION) and torch.isfinite(out).all()


def test_r0kit_loads_the_pipeline_by_its_short_name():
    from r0kit.diffusion import load

    m = load("r0kit-mini", device="cpu")
    assert m.kind == "sd" and m.latent_shape(W.RESOLUTION, W.RESOLUTION) == (4, W.RESOLUTION // 4, W.RESOLUTION // 4)
    x = torch.from_numpy(W.render_batch(_batch(2)[0]))
    rec = m.decode(m.encode_images(x))
    assert rec.shape == x.shape and float((rec - x).abs().mean()) < 0.08  # the VAE reconstructs the world


def test_the_clip_loads_in_open_clip_s_own_format():
    import open_clip

    from r0kit.weights import builtin_model

    folder = builtin_model("r0kit-mini-clip")
    model = open_clip.create_model("local-dir:" + str(folder))
    tok = open_clip.get_tokenizer("local-dir:" + str(folder))
    assert tok(["a red circle"]).shape[-1] == json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]["context_length"]
    assert model.visual.image_size == (W.RESOLUTION, W.RESOLUTION)


def test_tokenizer_spells_every_grammar_word_as_one_token():
    from transformers import CLIPTokenizer

    from r0kit.weights import builtin_model

    pipe_tok = CLIPTokenizer.from_pretrained(str(builtin_model("r0kit-mini") / "tokenizer"))
    for word in W.vocabulary():
        assert len(pipe_tok(word, add_special_tokens=False)["input_ids"]) == 1, word
    # the pipeline's text encoder reads the same ids as the CLIP reward
    import open_clip

    clip_tok = open_clip.get_tokenizer("local-dir:" + str(builtin_model("r0kit-mini-clip")))
    p = "a red circle left of a blue square"
    ids = pipe_tok(p, padding="max_length", max_length=pipe_tok.model_max_length, return_tensors="pt").input_ids
    assert torch.equal(ids, clip_tok([p]))


@pytest.fixture(scope="module")
def rewards():
    from r0kit import reward

    return {
        "hpsv2": reward("hpsv2", model="r0kit-mini-clip", checkpoint="r0kit-mini-hps"),
        "clip": reward("clip", model="r0kit-mini-clip"),
        "aesthetic": reward("aesthetic", clip_model="r0kit-mini-aesthetic", checkpoint="r0kit-mini-aesthetic"),
    }


def test_rewards_load_through_the_plugins_with_their_own_contract(rewards):
    for term in rewards.values():
        assert term.contract.size == W.RESOLUTION
    _, x, prompts = _batch(4)
    import r0kit

    result = (rewards["hpsv2"] + rewards["clip"] + rewards["aesthetic"]).evaluate(r0kit.Sample(images=x), prompts)
    for k in ("hpsv2", "clip", "aesthetic"):
        assert result.terms[k].shape == (4,) and torch.isfinite(result.terms[k]).all()


def _prefers(term, good, bad, prompts) -> float:
    import r0kit

    obj = r0kit.Objective([term])
    a = obj.evaluate(r0kit.Sample(images=good), prompts).terms[term.label]
    b = obj.evaluate(r0kit.Sample(images=bad), prompts).terms[term.label]
    return float((a > b).float().mean())


def test_the_preference_model_and_clip_prefer_the_right_image(rewards):
    rng = np.random.default_rng(5)
    scenes, good, prompts = _batch(64, seed=21)
    bad = torch.from_numpy(W.render_batch([W.mutate(s, rng) for s in scenes]))
    # Chance is 0.5. The committed models measure 0.83 (preference model) and 0.88 (CLIP) on these 64 pairs; a
    # contradicting attribute of one small object is a hard negative at 32 px.
    assert _prefers(rewards["hpsv2"], good, bad, prompts) >= 0.75
    assert _prefers(rewards["clip"], good, bad, prompts) >= 0.7


def _other_shape_prompt(scene: W.Scene, rng: np.random.Generator) -> str:
    """The scene's prompt with its first object's shape (every object's, for a count) changed."""
    from dataclasses import replace

    first = scene.objects[0]
    new = [s for s in W.SHAPES if s != first.shape][int(rng.integers(len(W.SHAPES) - 1))]
    objs = tuple(replace(o, shape=new) if scene.kind == "count" or i == 0 else o for i, o in enumerate(scene.objects))
    return replace(scene, objects=objs).prompt


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_the_text_rewards_read_shapes_on_held_out_pairs_too(rewards, split):
    """R0 can only teach a held-out pair's shape if its rewards see it: the same image must score higher under
    its own prompt than under that prompt with another shape. Rewards trained on the "train" split alone
    preferred the right shape of a held-out render only 34% (CLIP) and 44% (HPS) of the time (build's
    caption_accuracy, 400 scenes): they had learnt "cyan" as "not a circle"."""
    import r0kit

    rng = np.random.default_rng(31)
    scenes, images, prompts = _batch(200, seed=30, split=split)
    wrong = [_other_shape_prompt(s, rng) for s in scenes]
    for name in ("hpsv2", "clip"):
        obj = r0kit.Objective([rewards[name]])
        right = obj.evaluate(r0kit.Sample(images=images), prompts).terms[name]
        other = obj.evaluate(r0kit.Sample(images=images), wrong).terms[name]
        assert float((right > other).float().mean()) >= 0.7, name


def test_the_world_clip_reads_position_words():
    """The CLIP scores R0's samples: where it cannot tell "on the left" from "on the right", R0 cannot
    learn it. Before the CLIP saw position negatives (it never did: a position-contradicting caption
    came back unchanged) it preferred the right position word 60% of the time."""
    import open_clip

    from r0kit.mini.build import caption_accuracy
    from r0kit.weights import builtin_model

    folder = "local-dir:" + str(builtin_model("r0kit-mini-clip"))
    model = open_clip.create_model(folder).float().eval()
    acc = caption_accuracy(model, open_clip.get_tokenizer(folder), seed=0, n=400)
    assert acc["train/position"] >= 0.7 and acc["heldout/position"] >= 0.65, acc
    assert acc["train/colour"] >= 0.98 and acc["heldout/shape"] >= 0.7, acc


def test_the_aesthetic_predictor_prefers_clean_renders(rewards):
    rng = np.random.default_rng(6)
    _, good, prompts = _batch(300, seed=40)
    bad = torch.from_numpy(
        np.stack([W.degrade(im, rng, 0.8) for im in good.numpy().transpose(0, 2, 3, 1)]).transpose(0, 3, 1, 2).copy()
    )
    # Chance is 0.5; the committed predictor measures 0.81 on these 300 pairs.
    assert _prefers(rewards["aesthetic"], good, bad, prompts) >= 0.75


def test_the_rewards_score_clean_renders_over_haloed_blobs(rewards):
    """R0 on rewards that had never seen a melted render (corners rounded off, a halo round the edge)
    drew one for every square, triangle and diamond, scored nearly as high as a clean render."""
    rng = np.random.default_rng(8)
    scenes, good, prompts = _batch(200, seed=41)
    keep = [i for i, s in enumerate(scenes) if all(o.shape != "circle" for o in s.objects)]  # a melted circle is a circle
    good, prompts = good[keep], [prompts[i] for i in keep]
    melted = torch.from_numpy(
        np.stack([W.degrade(im, rng, 0.8, "melt") for im in good.numpy().transpose(0, 2, 3, 1)]).transpose(0, 3, 1, 2).copy()
    )
    for name in ("hpsv2", "aesthetic"):
        share = _prefers(rewards[name], good, melted, prompts)
        assert share >= BOUNDS[name], (name, share)


# Chance is 0.5. On these 143 pairs the committed models measure 0.91 (preference model) and 0.67 (aesthetic);
# the models trained before "melt" was a degradation measured 0.81 and 0.58.
BOUNDS = {"hpsv2": 0.87, "aesthetic": 0.63}


def test_the_aesthetic_clip_is_the_world_clip_converted():
    import open_clip
    from transformers import CLIPModel

    from r0kit.mini.formats import image_embeds
    from r0kit.weights import builtin_model

    oc = open_clip.create_model("local-dir:" + str(builtin_model("r0kit-mini-clip"))).eval()
    hf = CLIPModel.from_pretrained(str(builtin_model("r0kit-mini-aesthetic")), dtype=torch.float32).eval()
    x = torch.rand(3, 3, W.RESOLUTION, W.RESOLUTION)
    with torch.no_grad():
        a, b = oc.encode_image(x), image_embeds(hf, x)
    assert float((a - b).abs().max()) <= 1e-4 * float(a.abs().max())


def test_generators_and_training_configs_default_to_the_model_s_native_size():
    """Not to SD 1.5's 512 px: a 32-px model sampled at 512 px costs 256x the compute and draws nothing it learned."""
    import r0kit
    from r0kit.train import KStepConfig

    options = KStepConfig(model="r0kit-mini").options()
    assert options["height"] is None and options["width"] is None
    for gen in (
        r0kit.generator("kstep", **{**options, "device": "cpu"}),
        r0kit.generator("noise", model="r0kit-mini", steps=4, device="cpu"),
        r0kit.generator("latent", model="r0kit-mini", init="pipeline", steps=4, device="cpu"),
    ):
        assert (gen.height, gen.width) == (W.RESOLUTION, W.RESOLUTION), gen
    assert r0kit.generator("noise", model="r0kit-mini", steps=4, height=64, width=48, device="cpu").height == 64


@pytest.mark.parametrize("flag, shown", [("--no-progress", False), (None, True)])
def test_no_progress_also_silences_the_libraries_loading_bars(flag, shown, tmp_path):
    """transformers' "Loading weights" bar went on under --no-progress; the flag now reaches the libraries too."""
    import subprocess
    import sys

    argv = [sys.executable, "-m", "r0kit.cli", "optimize", "a red circle", "--model", "r0kit-mini", "--steps", "1",
            "-o", str(tmp_path / "out"), *([flag] if flag else [])]
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ("Loading weights" in proc.stderr) is shown


def _sample_base(prompts: list[str], training_pairs: list[tuple[str, str]]) -> torch.Tensor:
    """The committed base at 25 steps, CFG 3, seed 0 (``[B, 3, H, W]`` in [0, 1]); ``training_pairs`` are
    checked to be none of the held-out ones."""
    from diffusers import DiffusionPipeline

    from r0kit.weights import builtin_model

    assert not set(training_pairs) & W.HELD_OUT_PAIRS
    pipe = DiffusionPipeline.from_pretrained(str(builtin_model("r0kit-mini")))
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompts, num_inference_steps=25, guidance_scale=3.0, output_type="pt",
                generator=torch.Generator().manual_seed(0)).images


@pytest.mark.slow
def test_the_base_puts_objects_where_the_prompt_says():
    """At 25 steps the base puts an object on the side the prompt names. Conditioned on the CLIP tower's
    last states it did not: mean x 0.49 under "on the left" and 0.49 under "on the right"."""
    from r0kit.mini import judge as J

    pairs = [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("yellow", "diamond")]
    sides = ("left", "right")
    prompts = [f"a large {c} {s} on the {side}" for c, s in pairs for side in sides for _ in range(6)]
    images = _sample_base(prompts, pairs)
    xs: dict[str, list[float]] = {side: [] for side in sides}
    for prompt, image in zip(prompts, J.to_hwc(images)):
        found = [d for d in J.detect(image) if d.colour in prompt]
        if found:
            xs[prompt.rsplit(" ", 1)[1]].append(found[0].x)
    assert min(len(v) for v in xs.values()) >= 18, xs
    left, right = (float(np.mean(xs[side])) for side in sides)
    assert right - left >= 0.3, (left, right)  # the committed base: 0.24 and 0.76


@pytest.mark.slow
def test_the_base_draws_the_named_shape():
    """At 25 steps the base draws the named colour and shape of a training pair. The base trained at
    ``unet_lr`` 5e-4 drew a circle-like blob for every shape: object accuracy 0.50 here (1.00 now)."""
    from r0kit.mini import judge as J

    pairs = [("red", "square"), ("blue", "diamond"), ("green", "circle"), ("yellow", "triangle"), ("purple", "square"), ("orange", "circle")]
    prompts = [f"a large {c} {s}" for c, s in pairs for _ in range(8)]
    accuracy = J.accuracy(J.score(prompts, _sample_base(prompts, pairs)))
    assert accuracy["object"] >= 0.85, accuracy  # the committed base: 1.00; the previous one 0.50
