"""Tiny random-weight models of the real backbones, for tests that must not download.

Each builder makes the upstream architecture (an open_clip ``CLIP``, a
diffusers ``UNet2DConditionModel`` or ``AutoencoderKL``) at a toy size, seeded
so two calls give the same weights, in eval mode. ``seed=None`` draws the
weights from torch's global generator instead, for a caller that seeds one
stream for several models (a whole pipeline). The ``save_*`` helpers write
it in the upstream on-disk format, so a test can load it back through the
same code path a user's real checkpoint takes.

open_clip and diffusers are imported inside the builders, never at import
time; a missing one raises :class:`ImportError` naming the extra to install.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Callable

import torch

#: The tiny open_clip configuration (open_clip's ``model_cfg`` schema). It keeps
#: the real 224-px input (in 32-px patches, so only 49 tokens) and CLIP's
#: 49408-token vocabulary and 77-token context, so the 224-px CLIP contract and
#: open_clip's bundled tokenizer work with it unchanged.
TINY_OPEN_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}

#: The name :func:`register_tiny_open_clip` registers the tiny config under.
TINY_OPEN_CLIP_NAME = "r0kit-testing-tiny-ViT"

#: Keyword arguments of the tiny ``UNet2DConditionModel`` (4 latent channels, 8x8 latents).
TINY_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 1,
    "block_out_channels": (16, 32),
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "attention_head_dim": 4,
    "norm_num_groups": 8,
    "cross_attention_dim": 32,
}

#: Keyword arguments of the tiny ``AutoencoderKL`` (downsamples by 2: 16x16 images, 8x8x4 latents).
TINY_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 16,
    "scaling_factor": 0.18215,
}


def _require(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"r0kit.testing needs {module.split('.')[0]!r} for this model ({exc}); "
            f"install it with `pip install 'r0kit[{extra}]'`"
        ) from exc


def _seeded(seed: int | None, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``build()`` in eval mode: under ``seed`` without touching the global generator, or from it when ``None``."""
    if seed is None:
        return build().eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(base))  # deep copy; tuples become lists, which the configs accept
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def tiny_open_clip_config(**overrides: Any) -> dict[str, Any]:
    """:data:`TINY_OPEN_CLIP_CONFIG` with ``overrides`` (nested dicts merge)."""
    return _merge(TINY_OPEN_CLIP_CONFIG, overrides)


def tiny_open_clip(*, seed: int | None = 0, **overrides: Any) -> torch.nn.Module:
    """A random-weight open_clip ``CLIP`` of :func:`tiny_open_clip_config`, in eval mode.

    Its tokenizer is ``open_clip.get_tokenizer("ViT-B-32")`` (bundled, no download).
    """
    _require("open_clip", "clip")
    from open_clip.model import CLIP

    cfg = tiny_open_clip_config(**overrides)
    return _seeded(seed, lambda: CLIP(**cfg))


def register_tiny_open_clip(folder: str | Path, *, name: str = TINY_OPEN_CLIP_NAME, **overrides: Any) -> str:
    """Register the tiny config with open_clip as the architecture ``name`` and return ``name``.

    The config is written to ``folder/<name>.json`` (open_clip reads it from
    there), so rewards that take an open_clip architecture name, such as
    ``reward("clip", model=name, checkpoint=...)``, can build it.
    """
    open_clip = _require("open_clip", "clip")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(tiny_open_clip_config(**overrides)))
    open_clip.add_model_config(path)
    return name


def save_tiny_open_clip(folder: str | Path, *, seed: int = 0, **overrides: Any) -> Path:
    """Write a tiny open_clip model as ``open_clip_config.json`` + ``open_clip_model.safetensors``.

    That is the layout of open_clip's Hugging Face repositories: load it back
    with ``open_clip.create_model("local-dir:" + str(folder))``, or read the
    safetensors file as a checkpoint.
    """
    from safetensors.torch import save_file

    from r0kit.images import CLIP_MEAN, CLIP_STD

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_open_clip(seed=seed, **overrides)
    cfg = tiny_open_clip_config(**overrides)
    size = cfg["vision_cfg"]["image_size"]
    meta = {
        "model_cfg": cfg,
        "preprocess_cfg": {"size": size, "mean": list(CLIP_MEAN), "std": list(CLIP_STD), "interpolation": "bicubic"},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(meta, indent=2))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder


def tiny_unet(*, seed: int | None = 0, **overrides: Any) -> torch.nn.Module:
    """A random-weight diffusers ``UNet2DConditionModel`` of :data:`TINY_UNET_CONFIG`, in eval mode.

    Save it with its own ``save_pretrained(folder)``.
    """
    diffusers = _require("diffusers", "diffusers")
    return _seeded(seed, lambda: diffusers.UNet2DConditionModel(**{**TINY_UNET_CONFIG, **overrides}))


def tiny_vae(*, seed: int | None = 0, **overrides: Any) -> torch.nn.Module:
    """A random-weight diffusers ``AutoencoderKL`` of :data:`TINY_VAE_CONFIG`, in eval mode.

    Save it with its own ``save_pretrained(folder)``.
    """
    diffusers = _require("diffusers", "diffusers")
    return _seeded(seed, lambda: diffusers.AutoencoderKL(**{**TINY_VAE_CONFIG, **overrides}))
