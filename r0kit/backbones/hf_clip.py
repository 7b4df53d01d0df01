"""transformers CLIP towers: PickScore and the image embeddings of the aesthetic predictor.

Models load from a Hugging Face repository or a local folder in the
``save_pretrained`` layout, through :func:`r0kit.weights.resolve_repo`
(cache, then download, ``HF_HUB_OFFLINE`` respected); transformers reads the
weights with safetensors, or ``torch.load(weights_only=True)`` for ``.bin``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F


from r0kit.backbones.common import (
    FrozenScorer,
    PromptCache,
    enable_layer_checkpointing,
    freeze,
    model_input,
    require,
)
from r0kit.errors import WeightsError
from r0kit.kernels import cosine_head
from r0kit.text import TruncationWarner
from r0kit.weights import resolve_file, resolve_repo

TOKENIZER_FILES = ["vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"]


def model_folder(repo: str | os.PathLike, *, what: str) -> Path:
    """A local folder holding ``config.json`` and the weights (safetensors preferred, else ``pytorch_model.bin``)."""
    folder = resolve_repo(
        str(repo),
        allow_patterns=["config.json", "preprocessor_config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors"],
        what=what,
    )
    has_weights = any(folder.glob("model*.safetensors")) or any(folder.glob("pytorch_model*.bin"))
    if not (folder / "config.json").is_file():
        raise WeightsError(f"{what}: {str(repo)!r} has no config.json; it must be a transformers CLIP model folder or repository")
    if not has_weights:
        if Path(str(repo)).expanduser().is_dir():
            raise WeightsError(f"{what}: the folder {str(repo)!r} has no model.safetensors or pytorch_model.bin")
        resolve_file(str(repo), "pytorch_model.bin", what=what)  # legacy repositories without safetensors
    return folder


def load_clip(repo: str | os.PathLike, *, extra: str, what: str) -> torch.nn.Module:
    """A transformers ``CLIPModel`` in float32; a weight missing from the checkpoint is an error."""
    transformers = require("transformers", extra=extra, what=what)
    folder = model_folder(repo, what=what)
    try:
        model, info = transformers.CLIPModel.from_pretrained(str(folder), dtype=torch.float32, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"{what}: could not load a CLIP model from {str(folder)!r} ({type(exc).__name__}: {exc})") from None
    bad = list(info.get("missing_keys") or []) + [str(m[0] if isinstance(m, tuple) else m) for m in info.get("mismatched_keys") or []]
    if bad:
        raise WeightsError(f"{what}: the checkpoint in {str(folder)!r} does not fill the CLIP model: {sorted(bad)[:6]}")
    return model


def image_contract(model: torch.nn.Module, repo: str | os.PathLike, base: Any, *, what: str) -> Any:
    """``base`` (a RewardContract) with the model's input size, and the mean and std of the
    ``preprocessor_config.json`` beside its weights when there is one (CLIPImageProcessor's keys)."""
    import dataclasses
    import json

    changes: dict[str, Any] = {"size": int(model.config.vision_config.image_size)}
    pre = model_folder(repo, what=what) / "preprocessor_config.json"
    if pre.is_file():
        try:
            cfg = json.loads(pre.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise WeightsError(f"{what}: {str(pre)!r} cannot be read ({exc})") from None
        for key, field_name in (("image_mean", "mean"), ("image_std", "std")):
            if key in cfg:
                changes[field_name] = tuple(float(v) for v in cfg[key])
    return dataclasses.replace(base, **changes)


def load_clip_tokenizer(repo: str | os.PathLike, *, extra: str, what: str):
    transformers = require("transformers", extra=extra, what=what)
    folder = resolve_repo(str(repo), allow_patterns=TOKENIZER_FILES, what=f"{what} tokenizer")
    try:
        return transformers.CLIPTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as exc:
        raise WeightsError(
            f"{what}: could not read a CLIP tokenizer (vocab.json, merges.txt) from {str(folder)!r} ({exc})"
        ) from None


def _features(out: Any) -> torch.Tensor:
    """``get_*_features`` returns a tensor in transformers 4 and may return an output object in 5."""
    if isinstance(out, torch.Tensor):
        return out
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(out, name, None)
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"unexpected CLIP feature output {type(out).__name__}")


class HFClipScore(FrozenScorer):
    """PickScore: ``logit_scale.exp() · cos(image, prompt)`` on a frozen transformers ``CLIPModel``."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        dtype: str | torch.dtype = "float32",
        device: str | torch.device | None = None,
        gradient_checkpointing: bool = False,
        cache_size: int = 4096,
    ) -> None:
        # Frozen: read once, from the checkpoint's float32 value before the cast to dtype
        # (exp of a bf16-rounded ln 100 is 100.4, not 100).
        logit_scale = float(model.logit_scale.detach().float().exp())
        super().__init__(model, tokenizer, dtype=dtype, device=device)
        self.logit_scale = logit_scale
        self.text_cache = PromptCache(cache_size)
        self.truncation = TruncationWarner("PickScore's CLIP text encoder", 77)
        if gradient_checkpointing:
            enable_layer_checkpointing(self.model.vision_model.encoder.layers)
        self.eval()

    def _encode_text(self, prompts: list[str]) -> torch.Tensor:
        for p in prompts:  # cut at 77 tokens, as PickScore's processor does
            self.truncation.check_hf(self.tokenizer, p)
        enc = self.tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt").to(self.device)
        feats = _features(self.model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]))
        return F.normalize(feats.float(), dim=-1)

    def forward(self, x: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        self.check_prompts(x, prompts)
        img = _features(self.model.get_image_features(pixel_values=model_input(x, self.device, self.dtype))).float()
        txt = self.text_cache.get(prompts, self._encode_text).to(img.device)
        # Normalize, dot and scale in one fused op (Triton on CUDA, torch elsewhere).
        return cosine_head(img, txt, self.logit_scale).to(x.device)


class ClipImageEmbedding(torch.nn.Module):
    """Normalized CLIP image embeddings (``visual_projection`` of the pooled token), differentiable.

    Keeps only the image tower and projection of a ``CLIPModel``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        dtype: torch.dtype,
        device: torch.device,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.dtype, self.device = dtype, device
        self.vision_model = freeze(model.vision_model.to(device=device, dtype=dtype))
        self.visual_projection = freeze(model.visual_projection.to(device=device, dtype=dtype))
        if gradient_checkpointing:
            enable_layer_checkpointing(self.vision_model.encoder.layers)
        self.eval()

    def train(self, mode: bool = True) -> ClipImageEmbedding:
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=model_input(x, self.device, self.dtype)).pooler_output
        return F.normalize(self.visual_projection(pooled).float(), dim=-1)
