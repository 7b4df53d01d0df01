"""Tiny random-weight diffusers pipelines of the real architectures, written to disk.

``build_tiny_pipeline(folder, kind="sd")`` writes a complete Stable Diffusion
(or SDXL) pipeline folder with ``save_pretrained``: the tiny UNet2DConditionModel
and AutoencoderKL of r0kit.testing.models, CLIP text encoder(s) and a CLIP
tokenizer whose vocab.json and merges.txt are generated here (byte-level, no
merges), so nothing is downloaded.
Tests load it back by folder path through the same code a user's model goes through.

Shipped in ``r0kit.testing`` so that a generator or training plugin can be tried
without any weights: ``python -m r0kit.testing.pipelines /tmp/tiny-sd`` writes one,
and ``r0kit optimize "..." --generator noise --model /tmp/tiny-sd`` samples it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch

from r0kit.testing.models import tiny_unet, tiny_vae

#: Token budget of the tiny tokenizer, small so that truncation is easy to hit.
MAX_TOKENS = 16


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_tiny_clip_tokenizer(folder: Path, max_length: int = MAX_TOKENS) -> Path:
    """A CLIP BPE tokenizer with only byte tokens (each character is one token)."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)
    tok.save_pretrained(str(folder))
    return folder


#: Published ``scheduler/scheduler_config.json`` files of real pipelines, verbatim.
SCHEDULER_CONFIGS: dict[str, str] = {
    "stabilityai/sd-turbo": """{
  "_class_name": "EulerDiscreteScheduler",
  "_diffusers_version": "0.24.0.dev0",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "clip_sample": false,
  "interpolation_type": "linear",
  "num_train_timesteps": 1000,
  "prediction_type": "epsilon",
  "sample_max_value": 1.0,
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1,
  "timestep_spacing": "trailing",
  "trained_betas": null,
  "use_karras_sigmas": false
}""",
    "stabilityai/sdxl-turbo": """{
  "_class_name": "EulerAncestralDiscreteScheduler",
  "_diffusers_version": "0.24.0.dev0",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "clip_sample": false,
  "interpolation_type": "linear",
  "num_train_timesteps": 1000,
  "prediction_type": "epsilon",
  "sample_max_value": 1.0,
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1,
  "timestep_spacing": "trailing",
  "trained_betas": null,
  "use_karras_sigmas": false
}""",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": """{
  "_class_name": "PNDMScheduler",
  "_diffusers_version": "0.6.0",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "num_train_timesteps": 1000,
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1,
  "trained_betas": null,
  "clip_sample": false
}""",
    "stabilityai/stable-diffusion-xl-base-1.0": """{
  "_class_name": "EulerDiscreteScheduler",
  "_diffusers_version": "0.19.0.dev0",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "clip_sample": false,
  "interpolation_type": "linear",
  "num_train_timesteps": 1000,
  "prediction_type": "epsilon",
  "sample_max_value": 1.0,
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1,
  "timestep_spacing": "leading",
  "trained_betas": null,
  "use_karras_sigmas": false
}""",
}


def make_scheduler(config: dict[str, Any] | str, **overrides: Any):
    """A diffusers scheduler from a ``scheduler_config.json`` (a dict or its JSON text; ``_class_name`` picks the class)."""
    import diffusers

    if isinstance(config, str):
        config = json.loads(config)
    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    return getattr(diffusers, config["_class_name"]).from_config({**cfg, **overrides})


def with_scheduler(folder: str | Path, dest: str | Path, config: dict[str, Any] | str) -> Path:
    """A copy of the pipeline ``folder`` at ``dest`` whose scheduler is ``config`` (a ``scheduler_config.json``)."""
    import shutil

    dest = Path(dest)
    shutil.copytree(folder, dest)
    sched = make_scheduler(config)
    shutil.rmtree(dest / "scheduler")
    sched.save_pretrained(str(dest / "scheduler"))
    index = json.loads((dest / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", type(sched).__name__]
    (dest / "model_index.json").write_text(json.dumps(index, indent=2))
    return dest


def build_components(
    kind: Literal["sd", "sdxl"] = "sd",
    *,
    prediction_type: str = "epsilon",
    seed: int = 0,
    tmp: Path,
    scheduler: dict[str, Any] | str | None = None,
    unet_options: dict[str, Any] | None = None,
):
    """The tiny components as objects: ``dict(unet=, vae=, text_encoder=, tokenizer=, scheduler=, ...)``.

    :param scheduler: a ``scheduler_config.json`` (dict or JSON text, e.g. one of
        :data:`SCHEDULER_CONFIGS`); default SD-Turbo's Euler with trailing spacing.
    :param unet_options: overrides of the tiny UNet's config (e.g. ``time_cond_proj_dim``).
    """
    from diffusers import EulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    tok_dir = write_tiny_clip_tokenizer(tmp / "_tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
    vocab = len(tokenizer.get_vocab())
    text_cfg = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=32,
    )
    comps: dict = {"tokenizer": tokenizer, "text_encoder": CLIPTextModel(CLIPTextConfig(**text_cfg)).eval()}
    unet_overrides: dict = {}
    if kind == "sdxl":
        comps["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**text_cfg)).eval()
        comps["tokenizer_2"] = CLIPTokenizer.from_pretrained(str(tok_dir))
        unet_overrides = dict(
            cross_attention_dim=64,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=32 + 6 * 8,
            transformer_layers_per_block=1,
        )
    # r0kit.testing's tiny UNet and VAE, drawn from the one stream seeded above.
    comps["unet"] = tiny_unet(seed=None, **{**unet_overrides, **(unet_options or {})})
    # force_upcast as the real VAEs' configs (AutoencoderKL's default; SDXL pipelines read it).
    comps["vae"] = tiny_vae(seed=None, force_upcast=True)
    if scheduler is not None:
        comps["scheduler"] = make_scheduler(scheduler, prediction_type=prediction_type)
    else:
        comps["scheduler"] = EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            num_train_timesteps=1000,
            prediction_type=prediction_type,
            timestep_spacing="trailing",
            steps_offset=1,
        )
    return comps


def build_tiny_pipeline(
    folder: str | Path,
    kind: Literal["sd", "sdxl"] = "sd",
    *,
    prediction_type: str = "epsilon",
    seed: int = 0,
    scheduler: dict[str, Any] | str | None = None,
    unet_options: dict[str, Any] | None = None,
) -> Path:
    """Write a tiny pipeline to ``folder`` with ``save_pretrained`` and return the folder.

    The VAE downsamples by 2, so a 16x16 image has an 8x8x4 latent. ``scheduler`` and
    ``unet_options`` are those of :func:`build_components`.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    folder = Path(folder)
    comps = build_components(
        kind,
        prediction_type=prediction_type,
        seed=seed,
        tmp=folder.parent / f".{folder.name}-build",
        scheduler=scheduler,
        unet_options=unet_options,
    )
    if kind == "sdxl":
        pipe = StableDiffusionXLPipeline(**comps, force_zeros_for_empty_prompt=True)
    else:
        pipe = StableDiffusionPipeline(**comps, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(folder))
    return folder


#: Model names that stand for a tiny pipeline built on first use (see :func:`resolve_tiny_model`).
TINY_MODELS = {"r0kit:tiny-sd": "sd", "r0kit:tiny-sdxl": "sdxl"}


def resolve_tiny_model(model: str) -> str:
    """The folder of ``model`` when it names a tiny pipeline (``r0kit:tiny-sd``), else ``model`` unchanged.

    The pipeline (seed 0) is built once into ``$XDG_CACHE_HOME/r0kit/<name>``
    (``~/.cache`` by default), written aside and renamed into place, and reused
    after that. This is what the ``train_tiny`` preset trains: the whole loop, on
    a CPU, in seconds, with no weights to download.
    """
    import os
    import shutil

    kind = TINY_MODELS.get(str(model))
    if kind is None:
        return model
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "r0kit"
    folder = cache / str(model).split(":", 1)[1]
    if not (folder / "model_index.json").is_file():
        tmp = cache / f".{folder.name}.partial-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            build_tiny_pipeline(tmp, kind)
            shutil.rmtree(tmp.parent / f".{tmp.name}-build", ignore_errors=True)
            if not (folder / "model_index.json").is_file():
                shutil.rmtree(folder, ignore_errors=True)
                os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return str(folder)


if __name__ == "__main__":  # build one by hand: python -m r0kit.testing.pipelines /tmp/tiny-sd [sd|sdxl]
    import sys

    print(build_tiny_pipeline(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "sd"))
