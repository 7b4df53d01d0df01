"""Tiny random-weight models of the real reward architectures, saved in each upstream's on-disk format.

Every builder writes files exactly where a user's real download would be
(a local folder, or a Hugging Face cache laid out as ``hf download`` leaves
it), so the rewards load them through their real loading code.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import torch

from r0kit.testing import models

#: The model-backed rewards these tiny models stand in for.
REWARDS = ("clip", "hpsv2", "imagereward", "pickscore", "aesthetic")

# The tiny open_clip architecture is r0kit.testing's (the real CLIP tokenizer: 49408 tokens, 77 positions),
# registered with open_clip under this name by register_tiny_open_clip.
TINY_OPEN_CLIP = models.TINY_OPEN_CLIP_NAME

TINY_MED_CONFIG = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 32,
    "initializer_range": 0.02,
    "intermediate_size": 37,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 40,
    "model_type": "bert",
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": 0,  # filled with the tiny vocabulary's size + 2 ([DEC], [ENC]), as 30522 + 2 upstream
    "encoder_width": 64,
    "add_cross_attention": True,
}
TINY_VIT = {"image_size": 224, "patch_size": 16, "embed_dim": 64, "depth": 2, "mlp_hidden": 128}

BERT_WORDS = (
    "a an the of on in with and photo painting picture cat cats dog dogs red blue green sky tree house "
    "portrait city night sunset mountain river astronaut horse riding oil by"
).split()


def register_tiny_open_clip(folder: Path) -> Path:
    """Write the tiny open_clip config to ``folder`` and register it with open_clip; return the config file."""
    models.register_tiny_open_clip(folder, name=TINY_OPEN_CLIP)
    return folder / f"{TINY_OPEN_CLIP}.json"


def tiny_open_clip(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = models.tiny_open_clip(seed=None)  # from the stream seeded above
    with torch.no_grad():  # break CLIP's zero init so every parameter matters
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def save_hps_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    """HPS format: ``torch.save({'state_dict': ...})`` (HPS_v2*_compressed.pt)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict()}, path)
    return path


def save_open_clip_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    """open_clip hub format: a flat state dict in ``open_clip_model.safetensors``."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


# -- ImageReward -------------------------------------------------------------------------------


def write_bert_vocab(path: Path) -> Path:
    specials = ["[PAD]"] + [f"[unused{i}]" for i in range(4)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")
    pieces = ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"] + ["##s", "##ing", "##ed"]
    vocab = list(dict.fromkeys(specials + chars + BERT_WORDS + pieces))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(vocab) + "\n")
    return path


def tiny_med_config(vocab_file: Path) -> dict:
    n = sum(1 for line in vocab_file.read_text().splitlines() if line)
    return {**TINY_MED_CONFIG, "vocab_size": n + 2}


def tiny_imagereward_state_dict(med_cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """An ImageReward.pt-shaped state dict with random weights, including the keys upstream saves but never uses."""
    from r0kit.backbones.blip import build_imagereward

    torch.manual_seed(seed)
    model = build_imagereward(None, med_cfg, vit=dict(TINY_VIT))
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for k, v in sd.items():
        if v.is_floating_point():
            sd[k] = v + 0.05 * torch.randn_like(v)
    d, t = TINY_VIT["embed_dim"], med_cfg["hidden_size"]
    sd["blip.text_encoder.embeddings.position_ids"] = torch.arange(med_cfg["max_position_embeddings"]).expand(1, -1)
    sd["blip.vision_proj.weight"], sd["blip.vision_proj.bias"] = torch.randn(256, d), torch.zeros(256)
    sd["blip.text_proj.weight"], sd["blip.text_proj.bias"] = torch.randn(256, t), torch.zeros(256)
    return sd


def write_imagereward_folder(folder: Path, seed: int = 0) -> Path:
    """``ImageReward.pt`` + ``med_config.json`` + a bert ``vocab.txt``, as the hub repos hold them."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_bert_vocab(folder / "vocab.txt")
    med = tiny_med_config(vocab)
    (folder / "med_config.json").write_text(json.dumps(med))
    torch.save(tiny_imagereward_state_dict(med, seed), folder / "ImageReward.pt")
    return folder


# -- transformers CLIP (PickScore, aesthetic) -----------------------------------------------------


def write_clip_tokenizer(folder: Path) -> Path:
    """vocab.json + merges.txt of the real CLIP BPE, rebuilt from open_clip's bundled merges file."""
    import open_clip

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    from open_clip.tokenizer import SimpleTokenizer

    encoder = SimpleTokenizer(str(bpe)).encoder
    # open_clip spells the special tokens <start_of_text>/<end_of_text>; the hub's vocab.json <|startoftext|>/<|endoftext|>.
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    encoder = {names.get(k, k): v for k, v in encoder.items()}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(encoder))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True})
    )
    return folder


def tiny_hf_clip(seed: int = 0):
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        ),
        vision_config=dict(
            image_size=224, patch_size=32, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2
        ),
        projection_dim=16,
        logit_scale_init_value=2.6592,
    )
    torch.manual_seed(seed)
    model = CLIPModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def write_hf_clip_folder(folder: Path, seed: int = 0) -> Path:
    """A transformers ``save_pretrained`` folder: config.json + model.safetensors."""
    tiny_hf_clip(seed).save_pretrained(str(folder))
    return folder


def write_aesthetic_head(path: Path, input_size: int = 16, seed: int = 0) -> Path:
    """The predictor's MLP state dict (``layers.*``), saved with torch.save as aesthetic-model.pth is."""
    from r0kit.backbones.heads import ScoreMLP

    torch.manual_seed(seed)
    head = ScoreMLP(input_size)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(head.state_dict(), path)
    return path


# -- a Hugging Face cache, as `hf download` leaves it ------------------------------------------------


def hf_cache_put(cache: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """Place ``files`` (name -> source file) in ``cache`` as snapshot of ``repo_id`` at ``refs/main``."""
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    root = cache / ("models--" + repo_id.replace("/", "--"))
    snap = root / "snapshots" / commit
    for name, src in files.items():
        dst = snap / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(Path(src).read_bytes())
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return snap
