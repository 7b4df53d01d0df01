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

Non-square images check each reward's preprocessing contract against the
upstream transform itself (resize mode, crop or padding, crop offset). hpsv2
resizes the float tensor, so it matches to float rounding; the PIL- and
transformers-based pipelines round every resized pixel to uint8, so they match
to about one uint8 step (see :data:`UINT8`).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

import r0kit
from r0kit.compat.upstream import upstream_compat
from r0kit.images import preprocess

import tiny

ATOL = 2e-5
PROMPTS = ["a photo of a cat", "an oil painting of a red house at sunset"]
#: (H, W) of the non-square images: landscape and portrait; 512 x 519 and 519 x 512 put the center
#: crop's excess at 3 pixels, where torchvision (round(1.5) = 2) and transformers (floor = 1) differ.
NON_SQUARE = [(336, 448), (512, 519), (519, 512), (300, 437)]
#: Pipelines that resize uint8 images round each pixel: ≤ 1.5 uint8 steps after two separable passes,
#: divided by the smallest CLIP std. A one-pixel crop shift or a pad/crop mix-up is > 0.3.
UINT8 = 1.5 / 255 / min(r0kit.images.CLIP_STD)


def images_non_square(seed=1):
    """uint8 noise in [64, 192] (bicubic overshoot stays inside [0, 255], so PIL's clipping never
    differs from the float resize), as PIL images and as [1, 3, H, W] float tensors."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    arrays = [rng.integers(64, 193, size=(h, w, 3), dtype=np.uint8) for h, w in NON_SQUARE]
    return [Image.fromarray(a) for a in arrays], [torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255.0 for a in arrays]


def contract_of(name):
    import importlib

    return importlib.import_module(f"r0kit_{name}").CONTRACT


def hps_scorer_transform(assets):
    """The transform ``hpsv2.img_score.initialize_model`` builds (``light_augmentation=True``), on the tiny model."""
    import hpsv2.src.open_clip as hps_open_clip

    hps_open_clip.add_model_config(assets.root / "open_clip_configs" / f"{tiny.TINY_OPEN_CLIP}.json")
    model, _, preprocess_val = hps_open_clip.create_model_and_transforms(
        tiny.TINY_OPEN_CLIP, None, precision="fp32", device="cpu", jit=False, light_augmentation=True, output_dict=True
    )
    return model, preprocess_val


#: The preprocessor_config.json of openai/clip-vit-large-patch14, the processor PickScore's and the
#: aesthetic predictor's scoring code load (``size: 224`` is the shortest edge).
CLIP_PROCESSOR_CONFIG = {
    "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True, "resample": 3, "size": 224,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
}


def clip_processors():
    """transformers' CLIP image processors: the default (torchvision) one and, where it exists, the PIL one."""
    transformers = pytest.importorskip("transformers")
    procs = {"default": transformers.CLIPImageProcessor(**CLIP_PROCESSOR_CONFIG)}
    pil_cls = getattr(transformers, "CLIPImageProcessorPil", None)
    if pil_cls is not None:
        procs["pil"] = pil_cls(**CLIP_PROCESSOR_CONFIG)
    return procs


def upstream_transforms(name, assets):
    """``{label: PIL image -> [3, 224, 224] tensor}``: the upstream scorer's own preprocessing, and its tolerance."""
    if name == "hpsv2":
        pytest.importorskip("hpsv2")
        with upstream_compat():
            _, t = hps_scorer_transform(assets)
        return {"hpsv2.img_score": t}, 1e-5
    if name == "imagereward":
        pytest.importorskip("fairscale")
        with upstream_compat():
            pytest.importorskip("ImageReward")
            t = sys.modules["ImageReward.ImageReward"]._transform(224)
        return {"ImageReward._transform": t}, UINT8
    if name == "clip":
        open_clip = pytest.importorskip("open_clip")
        cfg = open_clip.get_pretrained_cfg("ViT-H-14", "laion2b_s32b_b79k")  # the clip reward's default model
        pp = open_clip.transform.PreprocessCfg(size=224, **{k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode")})
        return {"open_clip": open_clip.transform.image_transform_v2(pp, is_train=False)}, UINT8
    procs = clip_processors()
    return {f"CLIPImageProcessor[{k}]": (lambda im, p=p: p(images=[im], return_tensors="pt")["pixel_values"][0]) for k, p in procs.items()}, UINT8


@pytest.mark.upstream
@pytest.mark.parametrize("name", tiny.REWARDS)
def test_contract_reproduces_upstream_preprocessing_on_non_square_images(assets, name):
    """Each reward's contract against its upstream scorer's transform: size, resize, crop or pad, offset."""
    transforms, tol = upstream_transforms(name, assets)
    contract = contract_of(name)
    pil, xs = images_non_square()
    for label, transform in transforms.items():
        for im, x in zip(pil, xs):
            want = transform(im)[None].float()
            got = preprocess(x, contract)
            assert got.shape == want.shape == (1, 3, 224, 224), label
            err = (got - want).abs().max().item()
            print(f"{name} vs {label} {tuple(x.shape[-2:])}: max |r0kit - upstream| = {err:.2e}")
            assert err <= tol, f"{name}: {label} on a {tuple(x.shape[-2:])} image differs by {err:.3g} > {tol:.3g}"


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
def test_hpsv2_matches_upstream_scorer(assets, monkeypatch):
    """hpsv2.img_score.score with the transform it really builds (a letterbox), on square and non-square images."""
    pytest.importorskip("hpsv2")
    pil, x = images_224()
    pil_ns, xs_ns = images_non_square()
    with upstream_compat():
        import hpsv2.img_score as img_score

        model, preprocess_val = hps_scorer_transform(assets)
        # The scorer builds ViT-H-14 with laion weights on first use; hand it the tiny architecture
        # (with the transform its initialize_model builds), and let it load the checkpoint itself (cp=...).
        monkeypatch.setattr(img_score, "model_dict", {"model": model, "preprocess_val": preprocess_val})
        monkeypatch.setattr(img_score, "device", "cpu")
        upstream = {p: img_score.score(pil + pil_ns, p, cp=str(assets.hps_ckpt), hps_version="v2.1") for p in PROMPTS}
    ours = r0kit.reward("hpsv2", **assets.options("hpsv2")).module
    contract = contract_of("hpsv2")
    for p in PROMPTS:
        got = np.concatenate([
            ours(preprocess(x, contract), [p] * len(pil)).detach().numpy(),
            *[ours(preprocess(xi, contract), [p]).detach().numpy() for xi in xs_ns],
        ])
        print(f"hpsv2 parity: max |r0kit - upstream| = {np.abs(got - np.array(upstream[p])).max():.2e}")
        np.testing.assert_allclose(got, np.array(upstream[p], dtype=np.float32), atol=ATOL, rtol=0)
    assert np.ptp(np.array(upstream[PROMPTS[0]])) > 1e-3  # the images score differently: the comparison has teeth
    # a center crop would not do: on the non-square images it scores measurably differently
    crop = r0kit.RewardContract(size=224, mean=contract.mean, std=contract.std)
    cropped = np.array([ours(preprocess(xi, crop), [PROMPTS[0]]).item() for xi in xs_ns])
    assert np.abs(cropped - np.array(upstream[PROMPTS[0]][len(pil):])).max() > 20 * ATOL


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
    contract = contract_of("imagereward")
    for p in PROMPTS:
        got = ours(preprocess(x, contract), [p] * len(pil)).detach().numpy()
        print(f"imagereward parity: max |r0kit - upstream| = {np.abs(got - np.array(single[p])).max():.2e}")
        np.testing.assert_allclose(got, np.array(single[p], dtype=np.float32), atol=ATOL, rtol=0)
        np.testing.assert_allclose(got, np.array(ranked[p], dtype=np.float32), atol=ATOL, rtol=0)
    assert np.ptp(np.array(single[PROMPTS[0]])) > 1e-3
    # non-square: upstream resizes the PIL image (uint8 rounding), so its input is within UINT8 of ours
    pil_ns, xs_ns = images_non_square()
    with upstream_compat(), torch.no_grad():
        want = np.array([upstream.score(PROMPTS[0], im) for im in pil_ns], dtype=np.float32)
    got = np.array([ours(preprocess(xi, contract), PROMPTS[:1]).item() for xi in xs_ns], dtype=np.float32)
    print(f"imagereward non-square parity: max |r0kit - upstream| = {np.abs(got - want).max():.2e}")
    np.testing.assert_allclose(got, want, atol=5e-3, rtol=0)


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
    xin = preprocess(x, contract_of("pickscore"))
    assert contract_of("aesthetic").crop_offset == contract_of("pickscore").crop_offset == "floor"
    torch.testing.assert_close(pixels, xin, atol=1e-5, rtol=0)  # the contract reproduces the processor
    pick = r0kit.reward("pickscore", **assets.options("pickscore")).module(xin, PROMPTS[:1] * 3)
    aesthetic = r0kit.reward("aesthetic", **assets.options("aesthetic")).module(xin, None)
    print(f"pickscore parity: {(pick - pick_ref).abs().max():.2e}, aesthetic: {(aesthetic - aesthetic_ref).abs().max():.2e}")
    torch.testing.assert_close(pick.detach(), pick_ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(aesthetic.detach(), aesthetic_ref, atol=ATOL, rtol=0)
