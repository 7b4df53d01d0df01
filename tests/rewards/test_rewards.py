"""Each reward on tiny real-architecture models: loading, shape, gradients, contract, caching, options, errors."""

from __future__ import annotations

import pytest
import torch

import r0kit
from r0kit import WeightsError
from r0kit.generator import Sample
from r0kit.backbones import PromptCache
from r0kit.images import preprocess

import tiny
from tiny import REWARDS

PROMPTS = ["a photo of a cat", "an oil painting of a red house at sunset"]


def build(assets, name, **extra):
    return r0kit.reward(name, **{**assets.options(name), **extra})


@pytest.mark.parametrize("name", REWARDS)
def test_registered_with_contract(reward_host, name):
    entry = reward_host.rewards.get(name)
    c = entry.contract
    # each upstream's own geometry: hpsv2 letterboxes; transformers' CLIP processor floors the crop offset
    crop = {"hpsv2": ("pad", "round"), "pickscore": ("center", "floor"), "aesthetic": ("center", "floor")}
    assert (c.size, c.resize, c.antialias) == (224, "bicubic", True)
    assert (c.crop, c.crop_offset) == crop.get(name, ("center", "round"))
    assert c.mean == pytest.approx(r0kit.images.CLIP_MEAN) and c.std == pytest.approx(r0kit.images.CLIP_STD)
    assert c.needs_prompt is (name != "aesthetic")
    for option in ("dtype", "device", "gradient_checkpointing"):
        assert option in entry.accepted_options()


@pytest.mark.parametrize("name", REWARDS)
def test_shape_gradient_frozen_and_any_size(assets, reward_host, name):
    term = build(assets, name)
    module = term.module
    assert not module.training
    assert all(not p.requires_grad for p in module.parameters())
    images = torch.rand(2, 3, 300, 212, requires_grad=True)  # odd, non-square: the core resizes and crops
    result = r0kit.Objective([term]).evaluate(Sample(images), PROMPTS)
    assert result.total.shape == (2,) and result.total.dtype == torch.float32
    assert torch.isfinite(result.total).all()
    result.total.sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0
    assert all(p.grad is None for p in module.parameters())
    module.train()  # a parent calling .train() must not switch dropout on
    assert not module.training


@pytest.mark.parametrize("name", REWARDS)
def test_contract_is_what_the_reward_receives(assets, reward_host, name):
    term = build(assets, name)
    seen = {}
    def spy(module, args):
        seen["x"] = args[0].detach().clone()

    handle = term.module.register_forward_pre_hook(spy)
    try:
        color = torch.tensor([0.2, 0.5, 0.8]).view(1, 3, 1, 1)
        images = color.expand(1, 3, 512, 384).clone()
        r0kit.Objective([term]).evaluate(Sample(images), PROMPTS[:1])
    finally:
        handle.remove()
    x = seen["x"]
    assert tuple(x.shape) == (1, 3, 224, 224)
    mean = torch.tensor(r0kit.images.CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(r0kit.images.CLIP_STD).view(1, 3, 1, 1)
    want = ((color - mean) / std).expand_as(x).clone()
    if name == "hpsv2":  # letterbox: 512 x 384 -> 224 x 168, then 28 black columns on each side
        want[..., :28] = want[..., 196:] = (-mean / std).expand(1, 3, 224, 28)
    torch.testing.assert_close(x, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", REWARDS)
def test_text_side_cached_per_prompt(assets, name):
    module = build(assets, name).module
    x = preprocess(torch.rand(3, 3, 224, 224), r0kit.RewardContract())
    first = module(x, [PROMPTS[0], PROMPTS[1], PROMPTS[0]])
    caches = [c for c in vars(module).values() if isinstance(c, PromptCache)]
    if name == "aesthetic":
        assert caches == []  # reads no prompt
        return
    misses = [c.misses for c in caches]
    assert all(m == 2 for m in misses)  # each distinct prompt encoded once
    again = module(x[[1, 0, 2]], [PROMPTS[1], PROMPTS[0], PROMPTS[0]])
    assert [c.misses for c in caches] == misses
    torch.testing.assert_close(again, first[[1, 0, 2]], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", REWARDS)
def test_prompt_changes_score(assets, name):
    module = build(assets, name).module
    x = preprocess(torch.rand(1, 3, 224, 224), r0kit.RewardContract())
    a, b = module(x, [PROMPTS[0]]), module(x, [PROMPTS[1]])
    if name == "aesthetic":
        torch.testing.assert_close(a, b)
    else:
        assert not torch.allclose(a, b)


@pytest.mark.parametrize("name", REWARDS)
@pytest.mark.parametrize("dtype,tol", [("bfloat16", 0.08), ("float16", 0.02)])
def test_dtype_option(assets, name, dtype, tol):
    x = preprocess(torch.rand(2, 3, 224, 224), r0kit.RewardContract())
    ref = build(assets, name).module(x, PROMPTS)
    low = build(assets, name, dtype=dtype).module
    assert all(p.dtype == getattr(torch, dtype) for n, p in low.named_parameters() if "mlp" not in n and "head" not in n)
    xg = x.clone().requires_grad_(True)
    out = low(xg, PROMPTS)
    assert out.dtype == torch.float32 and out.shape == (2,)
    scale = ref.abs().max().clamp_min(1.0)
    torch.testing.assert_close(out / scale, ref / scale, atol=tol, rtol=0)
    out.sum().backward()
    assert xg.grad.dtype == torch.float32 and torch.isfinite(xg.grad).all()


@pytest.mark.parametrize("name", REWARDS)
def test_gradient_checkpointing_same_values_and_gradients(assets, name):
    x = preprocess(torch.rand(2, 3, 224, 224), r0kit.RewardContract())
    grads = []
    for ckpt in (False, True):
        xi = x.clone().requires_grad_(True)
        out = build(assets, name, gradient_checkpointing=ckpt).module(xi, PROMPTS)
        out.sum().backward()
        grads.append((out.detach(), xi.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0][1], grads[1][1], atol=1e-5, rtol=1e-4)


# -- weight resolution --------------------------------------------------------------------------

OFFLINE_MISSES = {
    "clip": ({}, "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "open_clip_model.safetensors"),
    "hpsv2": ({"version": "2.0"}, "xswu/HPSv2", "HPS_v2_compressed.pt"),
    "imagereward": ({}, "THUDM/ImageReward", "ImageReward.pt"),
    "pickscore": ({}, "yuvalkirstain/PickScore_v1", None),
    "aesthetic": ({}, "trl-lib/ddpo-aesthetic-predictor", "aesthetic-model.pth"),
}


@pytest.mark.parametrize("name", REWARDS)
def test_offline_miss_names_repo_file_and_fetch_command(hf_cache, reward_host, name):
    options, repo, filename = OFFLINE_MISSES[name]
    with pytest.raises(WeightsError) as info:
        r0kit.reward(name, device="cpu", **options)
    msg = str(info.value)
    assert repo in msg and "hf download" in msg and "HF_HUB_OFFLINE" in msg
    if filename:
        assert filename in msg


def test_hpsv2_versions_from_hf_cache(assets, hf_cache, reward_host):
    x = preprocess(torch.rand(1, 3, 224, 224), r0kit.RewardContract())
    v20 = tiny.save_hps_checkpoint(tiny.tiny_open_clip(seed=5), hf_cache.parent / "HPS_v2_compressed.pt")
    tiny.hf_cache_put(hf_cache, "xswu/HPSv2", {"HPS_v2_compressed.pt": v20, "HPS_v2.1_compressed.pt": assets.hps_ckpt})
    s20 = r0kit.reward("hpsv2", version="2.0", model=tiny.TINY_OPEN_CLIP, device="cpu").module(x, PROMPTS[:1])
    s21 = r0kit.reward("hpsv2", version="v2.1", model=tiny.TINY_OPEN_CLIP, device="cpu").module(x, PROMPTS[:1])
    explicit = build(assets, "hpsv2").module(x, PROMPTS[:1])
    torch.testing.assert_close(s21, explicit)
    assert not torch.allclose(s20, s21)
    with pytest.raises(r0kit.OptionError, match="2.0' or '2.1"):
        r0kit.reward("hpsv2", version="3")


def test_imagereward_from_hf_cache(assets, hf_cache, reward_host):
    folder = assets.imagereward
    tiny.hf_cache_put(hf_cache, "THUDM/ImageReward", {"ImageReward.pt": folder / "ImageReward.pt", "med_config.json": folder / "med_config.json"})
    tiny.hf_cache_put(hf_cache, "bert-base-uncased", {"vocab.txt": folder / "vocab.txt"})
    x = preprocess(torch.rand(1, 3, 224, 224), r0kit.RewardContract())
    cached = r0kit.reward("imagereward", device="cpu").module(x, PROMPTS[:1])
    torch.testing.assert_close(cached, build(assets, "imagereward").module(x, PROMPTS[:1]))


def test_pickscore_and_aesthetic_from_hf_cache(assets, hf_cache, reward_host):
    model_files = {f.name: f for f in assets.hf_clip.iterdir()}
    tiny.hf_cache_put(hf_cache, "yuvalkirstain/PickScore_v1", model_files)
    tiny.hf_cache_put(hf_cache, "openai/clip-vit-large-patch14", {**model_files, **{f.name: f for f in assets.clip_tokenizer.iterdir()}})
    tiny.hf_cache_put(hf_cache, "trl-lib/ddpo-aesthetic-predictor", {"aesthetic-model.pth": assets.aesthetic_head})
    x = preprocess(torch.rand(1, 3, 224, 224), r0kit.RewardContract())
    for name in ("pickscore", "aesthetic"):
        cached = r0kit.reward(name, device="cpu").module(x, PROMPTS[:1])
        torch.testing.assert_close(cached, build(assets, name).module(x, PROMPTS[:1]))


def test_bad_checkpoint_is_a_weights_error(assets, tmp_path):
    wrong = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": {"visual.proj": torch.zeros(3)}}, wrong)
    with pytest.raises(WeightsError, match="does not match the architecture"):
        r0kit.reward("hpsv2", model=tiny.TINY_OPEN_CLIP, checkpoint=str(wrong), device="cpu")
    flat = tmp_path / "flat.pt"
    torch.save({"visual.proj": torch.zeros(3)}, flat)
    with pytest.raises(WeightsError, match="no 'state_dict' entry"):
        r0kit.reward("hpsv2", model=tiny.TINY_OPEN_CLIP, checkpoint=str(flat), device="cpu")
    with pytest.raises(WeightsError, match="does not exist"):
        r0kit.reward("imagereward", checkpoint=str(tmp_path / "missing.pt"), device="cpu")


def test_option_errors(assets):
    with pytest.raises(r0kit.OptionError, match="dtype"):
        build(assets, "clip", dtype="int8")
    with pytest.raises(r0kit.OptionError, match="no model config 'ViT-Q-99'"):
        r0kit.reward("clip", model="ViT-Q-99", device="cpu")
    with pytest.raises(r0kit.OptionError, match="known tags"):
        r0kit.reward("clip", model="ViT-B-32", pretrained="no_such_tag", device="cpu")
    with pytest.raises(r0kit.OptionError, match="expects input size 384"):
        r0kit.reward("clip", model="ViT-SO400M-14-SigLIP-384", pretrained="webli", device="cpu")


# -- the ReNO objective ------------------------------------------------------------------------------


@pytest.mark.slow
def test_objective_of_all_five_rewards_backpropagates(assets, reward_host):
    o = {n: assets.options(n) for n in REWARDS}
    obj = (
        5 * r0kit.reward("hpsv2", **o["hpsv2"])
        + r0kit.reward("imagereward", **o["imagereward"])
        + 0.01 * r0kit.reward("clip", **o["clip"])
        + 0.05 * r0kit.reward("pickscore", **o["pickscore"])
        + r0kit.reward("aesthetic", **o["aesthetic"])
    )
    images = torch.rand(2, 3, 256, 256, requires_grad=True)
    result = obj.backward(Sample(images), PROMPTS)
    expected = sum(result.weights[k] * result.terms[k] for k in result.terms)
    torch.testing.assert_close(result.total.detach(), expected)
    assert set(result.terms) == set(REWARDS)
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    # per-reward gradient normalization (R0) over the same five terms
    images.grad = None
    norm = obj.with_options(normalize_gradients=True).backward(Sample(images), PROMPTS)
    assert set(norm.grad_norms) == set(REWARDS)
    assert all(torch.isfinite(v).all() and (v > 0).all() for v in norm.grad_norms.values())
