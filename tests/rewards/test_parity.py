"""Parity with the upstream scorers on the same (tiny, random) weights.

Images are 224 x 224 PNG-exact uint8 arrays, so the upstream PIL/torchvision
pipelines do no resizing (PIL and torchvision return same-size images
unchanged) and both sides see the identical normalized tensor; what is
compared is the model and the score.

Tolerance: ``atol=2e-5`` in fp32. r0kit's attention runs through
``F.scaled_dot_product_attention`` where upstream multiplies, softmaxes and
multiplies; the two agree to float32 rounding (~1e-6 relative), and HPS
cosines lie in [-1, 1] and ImageReward scores are O(1) on these models, so a
wrong layer norm eps, mask, activation or head would show as >1e-3.
PickScore multiplies the cosine by ``exp(logit_scale)`` (14.3 on the tiny
model), so its tolerance is ``1e-4``: the same relative precision.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

import r0kit
from r0kit.compat.upstream import upstream_compat
from r0kit.images import RewardContract, preprocess

import tiny

ATOL = 2e-5
PROMPTS = ["a photo of a cat", "an oil painting of a red house at sunset"]


def images_224(n=3, seed=0):
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, 224)[None, :, None]
    # noise, a colour ramp and a dark patch image: different enough that every score differs
    arrays = [
        rng.integers(0, 256, size=(224, 224, 3), dtype=np.uint8),
        (255 * ramp * np.array([1.0, 0.3, 0.1]) + rng.integers(0, 30, size=(224, 224, 3))).clip(0, 255).astype(np.uint8),
        np.where(rng.random((224, 224, 1)) < 0.5, 20, 200).repeat(3, axis=2).astype(np.uint8),
    ][:n]
    from PIL import Image

    pil = [Image.fromarray(a) for a in arrays]
    tensor = torch.stack([torch.from_numpy(a).permute(2, 0, 1).float() / 255.0 for a in arrays])
    return pil, tensor


@pytest.mark.upstream
def test_hpsv2_matches_upstream_scorer(assets, tmp_path, monkeypatch):
    pytest.importorskip("hpsv2")
    pil, x = images_224()
    with upstream_compat():
        import hpsv2.img_score as img_score
        import hpsv2.src.open_clip as hps_open_clip

        hps_open_clip.add_model_config(assets.root / "open_clip_configs" / f"{tiny.TINY_OPEN_CLIP}.json")
        model, _, preprocess_val = hps_open_clip.create_model_and_transforms(
            tiny.TINY_OPEN_CLIP, None, precision="fp32", device="cpu", jit=False, output_dict=True
        )
        # The scorer builds ViT-H-14 with laion weights on first use; hand it the tiny architecture
        # instead, and let it load the checkpoint itself from the local path (cp=...).
        monkeypatch.setattr(img_score, "model_dict", {"model": model, "preprocess_val": preprocess_val})
        monkeypatch.setattr(img_score, "device", "cpu")
        upstream = {p: img_score.score(pil, p, cp=str(assets.hps_ckpt), hps_version="v2.1") for p in PROMPTS}
    ours = r0kit.reward("hpsv2", **assets.options("hpsv2")).module
    for p in PROMPTS:
        got = ours(preprocess(x, RewardContract()), [p] * len(pil)).detach().numpy()
        print(f"hpsv2 parity: max |r0kit - upstream| = {np.abs(got - np.array(upstream[p])).max():.2e}")
        np.testing.assert_allclose(got, np.array(upstream[p], dtype=np.float32), atol=ATOL, rtol=0)
    assert np.ptp(np.array(upstream[PROMPTS[0]])) > 1e-3  # the images score differently: the comparison has teeth


def _upstream_imagereward(folder, monkeypatch, seed=3):
    """Upstream ImageReward on the tiny architecture, with its tokenizer read from our vocab file."""
    import ImageReward as RM
    from ImageReward.models.BLIP import blip_pretrain, vit
    from transformers import BertTokenizer

    def create_vit(name, image_size, use_grad_checkpointing=False, ckpt_layer=0, drop_path_rate=0):
        c = tiny.TINY_VIT
        return vit.VisionTransformer(
            img_size=image_size, patch_size=c["patch_size"], embed_dim=c["embed_dim"], depth=c["depth"],
            num_heads=c["embed_dim"] // 64, mlp_ratio=c["mlp_hidden"] / c["embed_dim"],
        ), c["embed_dim"]

    def init_tokenizer():  # upstream's, minus the download and the transformers-4-only enc_token_id
        tok = BertTokenizer(str(folder / "vocab.txt"))
        tok.add_special_tokens({"bos_token": "[DEC]"})
        tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        return tok

    monkeypatch.setattr(blip_pretrain, "create_vit", create_vit)
    monkeypatch.setattr(blip_pretrain, "init_tokenizer", init_tokenizer)
    torch.manual_seed(seed)
    model = RM.ImageReward(med_config=str(folder / "med_config.json"), device="cpu")
    model.mlp = sys.modules["ImageReward.ImageReward"].MLP(json.loads((folder / "med_config.json").read_text())["hidden_size"])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for p in model.mlp.parameters():  # upstream's init (std 1/(d+1), zero bias) leaves scores nearly flat
            p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
    return model.eval()


@pytest.mark.upstream
def test_imagereward_matches_upstream_score(tmp_path, monkeypatch):
    pytest.importorskip("fairscale")
    folder = tmp_path / "ir"
    folder.mkdir()
    vocab = tiny.write_bert_vocab(folder / "vocab.txt")
    (folder / "med_config.json").write_text(json.dumps(tiny.tiny_med_config(vocab)))
    pil, x = images_224()
    with upstream_compat():
        pytest.importorskip("ImageReward")
        upstream = _upstream_imagereward(folder, monkeypatch)
        torch.save(upstream.state_dict(), folder / "ImageReward.pt")  # upstream's own checkpoint format
        with torch.no_grad():
            single = {p: [upstream.score(p, im) for im in pil] for p in PROMPTS}
            ranked = {p: upstream.inference_rank(p, pil)[1] for p in PROMPTS}
    ours = r0kit.reward("imagereward", checkpoint=str(folder), tokenizer=str(vocab), device="cpu").module
    for p in PROMPTS:
        got = ours(preprocess(x, RewardContract()), [p] * len(pil)).detach().numpy()
        print(f"imagereward parity: max |r0kit - upstream| = {np.abs(got - np.array(single[p])).max():.2e}")
        np.testing.assert_allclose(got, np.array(single[p], dtype=np.float32), atol=ATOL, rtol=0)
        np.testing.assert_allclose(got, np.array(ranked[p], dtype=np.float32), atol=ATOL, rtol=0)
    assert np.ptp(np.array(single[PROMPTS[0]])) > 1e-3


@pytest.mark.upstream
def test_pickscore_and_aesthetic_match_reference_pipelines(assets):
    """PickScore's published scoring code and the aesthetic predictor's, on transformers' CLIP processor."""
    transformers = pytest.importorskip("transformers")
    from r0kit.backbones.heads import ScoreMLP

    pil, x = images_224()
    processor = transformers.CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": 224}, resample=3, do_center_crop=True, crop_size=224,
        do_normalize=True, image_mean=list(r0kit.images.CLIP_MEAN), image_std=list(r0kit.images.CLIP_STD),
    )
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(assets.clip_tokenizer))
    model = transformers.CLIPModel.from_pretrained(str(assets.hf_clip)).eval()
    head = ScoreMLP(16)
    head.load_state_dict(torch.load(assets.aesthetic_head, weights_only=True))
    head.eval()
    with torch.no_grad():
        pixels = processor(images=pil, return_tensors="pt")["pixel_values"]
        img = model.get_image_features(pixel_values=pixels)
        img = getattr(img, "pooler_output", img)
        img = img / img.norm(dim=-1, keepdim=True)
        text = tokenizer(PROMPTS[:1], padding=True, truncation=True, max_length=77, return_tensors="pt")
        txt = model.get_text_features(**text)
        txt = getattr(txt, "pooler_output", txt)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        pick_ref = (model.logit_scale.exp() * (txt @ img.T))[0]
        aesthetic_ref = head(img).squeeze(-1)
    xin = preprocess(x, RewardContract())
    torch.testing.assert_close(pixels, xin, atol=1e-5, rtol=0)  # the contract reproduces the processor
    pick = r0kit.reward("pickscore", **assets.options("pickscore")).module(xin, PROMPTS[:1] * 3)
    aesthetic = r0kit.reward("aesthetic", **assets.options("aesthetic")).module(xin, None)
    print(f"pickscore parity: {(pick - pick_ref).abs().max():.2e}, aesthetic: {(aesthetic - aesthetic_ref).abs().max():.2e}")
    torch.testing.assert_close(pick.detach(), pick_ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(aesthetic.detach(), aesthetic_ref, atol=ATOL, rtol=0)
