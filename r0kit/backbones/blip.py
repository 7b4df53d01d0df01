"""ImageReward-v1.0: BLIP ViT image encoder, cross-attention BERT, MLP head.

A faithful re-implementation of ``image-reward==1.5`` (``ImageReward/ImageReward.py``
and its ``models/BLIP/{vit,med}.py``) that loads the upstream ``ImageReward.pt``
unchanged: the module tree and parameter names are the upstream ones
(``blip.visual_encoder.*``, ``blip.text_encoder.*``, ``mlp.layers.*``), so the
state dict loads key for key. What it keeps from upstream, checked against that
source:

* ViT: conv patch embedding, a class token, learned positions, pre-norm blocks
  with ``LayerNorm(eps=1e-6)``, fused ``qkv`` with bias, exact (erf) GELU, a
  final ``LayerNorm(eps=1e-6)``; the output is every token (no pooling).
  Heads are 64 wide (ViT-B: 12 x 64, ViT-L: 16 x 64), so the head count is read
  from the width.
* BERT (``med_config.json``): word + absolute position embeddings (no token
  types), post-norm layers of self-attention, cross-attention to every image
  token, feed-forward; ``LayerNorm(eps=layer_norm_eps)``; the self-attention
  padding mask adds ``-10000`` to masked keys, as upstream does.
* Score: the [CLS] (first) token of the last layer through the MLP head, then
  ``(r - 0.16717362830052426) / 1.0333394966054072``.
* Prompts: ``bert-base-uncased``'s WordPiece with ``[DEC]`` and ``[ENC]`` added,
  padded and truncated to 35 tokens.

Nothing here imports transformers except the tokenizer loader.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from r0kit.backbones.common import (
    FrozenScorer,
    PromptCache,
    enable_layer_checkpointing,
    model_input,
    require,
)
from r0kit.backbones.heads import ScoreMLP
from r0kit.errors import OptionError, WeightsError
from r0kit.text import TruncationWarner

IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072
PROMPT_TOKENS = 35
VIT_HEAD_DIM = 64

_ACTS = {
    "gelu": lambda: nn.GELU(),
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": lambda: nn.ReLU(),
}


# -- BLIP ViT ---------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class BlipViT(nn.Module):
    """BLIP's ``VisionTransformer`` (timm-style ViT); ViT-L/16 at 224 px for ImageReward."""

    def __init__(
        self, image_size: int = 224, patch_size: int = 16, embed_dim: int = 1024, depth: int = 24, mlp_hidden: int | None = None
    ) -> None:
        super().__init__()
        if embed_dim % VIT_HEAD_DIM:
            raise WeightsError(f"BLIP ViT width {embed_dim} is not a multiple of the {VIT_HEAD_DIM}-wide heads")
        self.image_size, self.patch_size, self.embed_dim = image_size, patch_size, embed_dim
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.blocks = nn.ModuleList(
            Block(embed_dim, embed_dim // VIT_HEAD_DIM, mlp_hidden or 4 * embed_dim) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.pos_embed[:, : x.size(1), :]
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


# -- BLIP's cross-attention BERT (med.py) ----------------------------------------------------------


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        d = cfg["hidden_size"]
        self.word_embeddings = nn.Embedding(cfg["vocab_size"], d, padding_idx=cfg.get("pad_token_id", 0))
        self.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], d)
        self.LayerNorm = nn.LayerNorm(d, eps=cfg["layer_norm_eps"])
        self.register_buffer("position_ids", torch.arange(cfg["max_position_embeddings"]).expand((1, -1)), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pos = self.position_ids[:, : input_ids.shape[1]]
        return self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(pos))


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: dict[str, Any], kv_width: int) -> None:
        super().__init__()
        d = cfg["hidden_size"]
        self.num_heads = cfg["num_attention_heads"]
        if d % self.num_heads:
            raise WeightsError(f"med_config hidden_size {d} is not a multiple of num_attention_heads {self.num_heads}")
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(kv_width, d)
        self.value = nn.Linear(kv_width, d)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, d = t.shape
        return t.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(self, h: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = self._heads(self.query(h)), self._heads(self.key(kv)), self._heads(self.value(kv))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        b, _, n, _ = out.shape
        return out.transpose(1, 2).reshape(b, n, -1)


class BertSelfOutput(nn.Module):
    def __init__(self, cfg: dict[str, Any], in_width: int | None = None) -> None:
        super().__init__()
        d = cfg["hidden_size"]
        self.dense = nn.Linear(in_width or d, d)
        self.LayerNorm = nn.LayerNorm(d, eps=cfg["layer_norm_eps"])

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(h) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg: dict[str, Any], kv_width: int) -> None:
        super().__init__()
        self.self = BertSelfAttention(cfg, kv_width)
        self.output = BertSelfOutput(cfg)

    def forward(self, h: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(h, kv, mask), h)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg["hidden_size"], cfg["intermediate_size"])
        act = cfg.get("hidden_act", "gelu")
        if act not in _ACTS:
            raise OptionError(f"med_config hidden_act {act!r} is not supported; known: {', '.join(_ACTS)}")
        self.intermediate_act_fn = _ACTS[act]()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(h))


class BertLayer(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.attention = BertAttention(cfg, cfg["hidden_size"])
        self.crossattention = BertAttention(cfg, cfg["encoder_width"])
        self.intermediate = BertIntermediate(cfg)
        self.output = BertSelfOutput(cfg, cfg["intermediate_size"])

    def forward(self, h: torch.Tensor, self_mask: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        h = self.attention(h, h, self_mask)
        h = self.crossattention(h, image_embeds, None)  # every image token is attended (upstream: all-ones mask)
        return self.output(self.intermediate(h), h)


class BertEncoder(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg["num_hidden_layers"]))


class MedBert(nn.Module):
    """BLIP's ``BertModel(add_pooling_layer=False)`` in multimodal mode: text attends to the image."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)

    def forward(self, embeds: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """``embeds``: the embedding layer's output; returns the last hidden state."""
        mask = (1.0 - attention_mask[:, None, None, :].to(embeds.dtype)) * -10000.0
        h = embeds
        for layer in self.encoder.layer:
            h = layer(h, mask, image_embeds)
        return h


class BLIP(nn.Module):
    def __init__(self, vision: BlipViT, text: MedBert) -> None:
        super().__init__()
        self.visual_encoder = vision
        self.text_encoder = text


class ImageRewardModel(nn.Module):
    """``score(x, input_ids, attention_mask) -> [B]``, normalized as upstream."""

    def __init__(self, vision: BlipViT, text: MedBert, head: ScoreMLP) -> None:
        super().__init__()
        self.blip = BLIP(vision, text)
        self.mlp = head
        self.mean, self.std = IMAGEREWARD_MEAN, IMAGEREWARD_STD

    def forward(self, x: torch.Tensor, text_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        image_embeds = self.blip.visual_encoder(x)
        hidden = self.blip.text_encoder(text_embeds, attention_mask, image_embeds)
        reward = self.mlp(hidden[:, 0, :].float()).squeeze(-1)
        return (reward - self.mean) / self.std


# -- loading -------------------------------------------------------------------------------------

_MED_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "layer_norm_eps",
    "max_position_embeddings",
    "vocab_size",
)


def read_med_config(path: str | os.PathLike) -> dict[str, Any]:
    try:
        cfg = json.loads(open(path, encoding="utf-8").read())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"ImageReward med_config {str(path)!r} is not readable JSON ({exc})") from None
    missing = [k for k in _MED_KEYS if k not in cfg]
    if missing:
        raise WeightsError(f"ImageReward med_config {str(path)!r} lacks {', '.join(missing)}")
    pos = cfg.get("position_embedding_type", "absolute")
    if pos != "absolute":
        raise WeightsError(f"ImageReward med_config {str(path)!r}: position_embedding_type {pos!r} is not supported")
    return cfg


def vit_shape_from_state_dict(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, int]:
    """The BLIP ViT's hyper-parameters, read off its weights."""
    try:
        proj = sd[prefix + "patch_embed.proj.weight"]
        pos = sd[prefix + "pos_embed"]
        fc1 = sd[prefix + "blocks.0.mlp.fc1.weight"]
    except KeyError as exc:
        raise WeightsError(f"the ImageReward checkpoint has no {exc.args[0]!r}; is it ImageReward.pt?") from None
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"blocks\.(\d+)\.", k)))
    grid = math.isqrt(pos.shape[1] - 1)
    return {
        "embed_dim": proj.shape[0],
        "patch_size": proj.shape[-1],
        "image_size": grid * proj.shape[-1],
        "depth": depth,
        "mlp_hidden": fc1.shape[0],
    }


def build_imagereward(
    sd: dict[str, torch.Tensor] | None, med_cfg: dict[str, Any], *, vit: dict[str, int] | None = None
) -> ImageRewardModel:
    """The model sized from a checkpoint (``sd``) or, with ``sd=None``, from ``vit`` (random weights)."""
    vit = vit or vit_shape_from_state_dict(sd or {}, "blip.visual_encoder.")
    vision = BlipViT(**vit)
    text = MedBert({**med_cfg, "encoder_width": vit["embed_dim"]})
    head_in = sd["mlp.layers.0.weight"].shape[1] if sd and "mlp.layers.0.weight" in sd else med_cfg["hidden_size"]
    model = ImageRewardModel(vision, text, ScoreMLP(head_in))
    if sd is not None:
        result = model.load_state_dict(sd, strict=False)
        if result.missing_keys:
            raise WeightsError(
                f"the ImageReward checkpoint does not fit the architecture of its med_config: missing "
                f"{result.missing_keys[:6]}{'...' if len(result.missing_keys) > 6 else ''}"
            )
        # Unexpected keys are the parts ImageReward never uses (vision_proj, text_proj, position_ids).
    return model


def load_bert_tokenizer(vocab_file: str | os.PathLike, *, extra: str):
    """bert-base-uncased's WordPiece tokenizer with BLIP's two added tokens."""
    transformers = require("transformers", extra=extra, what="the ImageReward tokenizer")
    tok = transformers.BertTokenizer(str(vocab_file))
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


class ImageRewardScore(FrozenScorer):
    """The ``imagereward`` reward: frozen :class:`ImageRewardModel` plus its prompt caches."""

    def __init__(
        self,
        model: ImageRewardModel,
        tokenizer: Any,
        *,
        dtype: str | torch.dtype = "float32",
        device: str | torch.device | None = None,
        gradient_checkpointing: bool = False,
        cache_size: int = 4096,
    ) -> None:
        # upstream runs the head in float32 on .float() features: keep the checkpoint's values
        super().__init__(model, tokenizer, dtype=dtype, device=device, keep_float32=("mlp",))
        self.token_cache = PromptCache(cache_size)
        self.truncation = TruncationWarner("ImageReward", PROMPT_TOKENS)
        self.embed_cache = PromptCache(cache_size)
        if gradient_checkpointing:
            enable_layer_checkpointing(self.model.blip.visual_encoder.blocks)
        self.eval()

    def _tokenize(self, prompts: list[str]) -> torch.Tensor:
        for p in prompts:  # cut at 35 tokens, as ImageReward's BLIP tokenizer call does
            self.truncation.check_hf(self.tokenizer, p)
        enc = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=PROMPT_TOKENS, return_tensors="pt")
        return torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1).to(self.device)

    def _embed(self, prompts: list[str]) -> torch.Tensor:
        ids = self.token_cache.get(prompts, self._tokenize)[:, 0]
        return self.model.blip.text_encoder.embeddings(ids).float()

    def forward(self, x: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        self.check_prompts(x, prompts)
        mask = self.token_cache.get(prompts, self._tokenize)[:, 1]
        embeds = self.embed_cache.get(prompts, self._embed).to(self.dtype)
        return self.model(model_input(x, self.device, self.dtype), embeds, mask).float().to(x.device)
