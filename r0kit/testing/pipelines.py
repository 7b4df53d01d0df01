"""Tiny random-weight diffusers pipelines of the real architectures, written to disk.

``build_tiny_pipeline(folder, kind)`` writes a complete pipeline folder with
``save_pretrained``, so nothing is downloaded:

* ``"sd"`` / ``"sdxl"``: Stable Diffusion (XL): the tiny UNet2DConditionModel and
  AutoencoderKL of r0kit.testing.models, CLIP text encoder(s) and a CLIP tokenizer
  whose vocab.json and merges.txt are generated here (byte-level, no merges).
* ``"sd3"``: Stable Diffusion 3 (``StableDiffusion3Pipeline``): an
  SD3Transformer2DModel (patch 2), a 16-channel-style VAE with a ``shift_factor``,
  two CLIP text encoders with projection and a T5 encoder, whose Unigram tokenizer is
  generated here too (:func:`write_tiny_t5_tokenizer`).
* ``"flux"``: FLUX.1 (``FluxPipeline``): a FluxTransformer2DModel over 2×2-packed
  latents, a CLIP text encoder (pooled) and a T5 encoder; ``guidance_embeds=True``
  gives a FLUX.1-dev-style guidance-distilled transformer.

The flow pipelines ship FLUX.1-schnell's and SD3's published scheduler configs
(:data:`FLOW_SCHEDULER_CONFIGS`).
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
#: Token budget of the tiny T5 tokenizer (the T5 prompt length of the tiny flow pipelines' tests).
T5_TOKENS = 24


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


def write_tiny_t5_tokenizer(folder: Path, max_length: int = T5_TOKENS) -> Path:
    """A T5 (SentencePiece Unigram) tokenizer whose vocabulary is generated here: every printable ASCII character,
    alone and word-initial (``▁a``), after T5's ``<pad>`` (0), ``</s>`` (1) and ``<unk>`` (2). No sentinel ids.

    Built with the ``tokenizers`` library as T5's fast tokenizer is (Metaspace pre-tokenizer, ``</s>``
    appended) and written as ``tokenizer.json``, which ``T5TokenizerFast.from_pretrained`` reads.
    """
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import T5TokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(33, 127)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + c, -3.0) for c in chars] + [(c, -4.0) for c in chars]
    tok = Tokenizer(Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "T5Tokenizer", "model_max_length": max_length, "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": "<pad>", "extra_ids": 0, "additional_special_tokens": [],
    }))
    T5TokenizerFast.from_pretrained(str(folder)).save_pretrained(str(folder))
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


#: ``scheduler/scheduler_config.json`` of the rectified-flow pipelines. FLUX.1-schnell's (static
#: shift 1) is verbatim from a public copy of its repository; FLUX.1-dev's turns on the
#: resolution-dependent shift (``use_dynamic_shifting``, μ from the image's token count);
#: SD3-Medium and SD3.5 ship a static shift of 3. The SD3 and FLUX.1-dev files are as their
#: repositories are reported to hold them (not fetched here: those repositories are gated).
FLOW_SCHEDULER_CONFIGS: dict[str, str] = {
    "black-forest-labs/FLUX.1-schnell": """{
  "_class_name": "FlowMatchEulerDiscreteScheduler",
  "_diffusers_version": "0.31.0.dev0",
  "base_image_seq_len": 256,
  "base_shift": 0.5,
  "max_image_seq_len": 4096,
  "max_shift": 1.15,
  "num_train_timesteps": 1000,
  "shift": 1.0,
  "use_dynamic_shifting": false
}""",
    "black-forest-labs/FLUX.1-dev": """{
  "_class_name": "FlowMatchEulerDiscreteScheduler",
  "_diffusers_version": "0.30.0.dev0",
  "base_image_seq_len": 256,
  "base_shift": 0.5,
  "max_image_seq_len": 4096,
  "max_shift": 1.15,
  "num_train_timesteps": 1000,
  "shift": 3.0,
  "use_dynamic_shifting": true
}""",
    "stabilityai/stable-diffusion-3-medium-diffusers": """{
  "_class_name": "FlowMatchEulerDiscreteScheduler",
  "_diffusers_version": "0.29.0.dev0",
  "num_train_timesteps": 1000,
  "shift": 3.0
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


def build_flow_components(
    kind: Literal["sd3", "flux"],
    *,
    seed: int = 0,
    tmp: Path,
    scheduler: dict[str, Any] | str | None = None,
    transformer_options: dict[str, Any] | None = None,
    t5_tokens: int = T5_TOKENS,
):
    """The tiny components of an SD3 or FLUX.1 pipeline as objects (the pipeline class's keyword arguments).

    The VAE downsamples by 2 and has 4 latent channels with the real ``shift_factor`` and
    ``scaling_factor`` of its family (SD3: 0.0609 and 1.5305; FLUX: 0.1159 and 0.3611) and,
    as theirs, no quant convs. SD3: CLIP-L-like and CLIP-G-like encoders with projection
    (pooled 32 + 32 = the transformer's ``pooled_projection_dim``) and a T5 encoder whose width is
    the transformer's ``joint_attention_dim`` (the CLIP features are zero-padded to it). FLUX: a
    CLIP encoder (``pooler_output``, 32) and a T5 encoder of width ``joint_attention_dim``.

    :param scheduler: a ``scheduler_config.json``; default FLUX.1-schnell's (flux) or SD3's (sd3),
        see :data:`FLOW_SCHEDULER_CONFIGS`.
    :param transformer_options: overrides of the tiny transformer's config (``guidance_embeds=True``).
    """
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        T5Config,
        T5EncoderModel,
        T5TokenizerFast,
    )

    torch.manual_seed(seed)
    clip_tok = CLIPTokenizer.from_pretrained(str(write_tiny_clip_tokenizer(tmp / "_tokenizer")))
    t5_tok = T5TokenizerFast.from_pretrained(str(write_tiny_t5_tokenizer(tmp / "_t5_tokenizer", t5_tokens)))
    clip_cfg = dict(
        vocab_size=len(clip_tok.get_vocab()),
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=clip_tok.bos_token_id,
        eos_token_id=clip_tok.eos_token_id,
        pad_token_id=clip_tok.pad_token_id,
        projection_dim=32,
    )
    joint = 64 if kind == "sd3" else 32
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tok.get_vocab()), d_model=joint, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=32, dense_act_fn="gelu_new",
            feed_forward_proj="gated-gelu", is_gated_act=True, pad_token_id=0, eos_token_id=1,
        )
    ).eval()
    if kind == "sd3":
        comps: dict[str, Any] = dict(
            text_encoder=CLIPTextModelWithProjection(CLIPTextConfig(**clip_cfg)).eval(),
            tokenizer=clip_tok,
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**clip_cfg)).eval(),
            tokenizer_2=CLIPTokenizer.from_pretrained(str(tmp / "_tokenizer")),
            text_encoder_3=t5,
            tokenizer_3=t5_tok,
        )
        tcfg: dict[str, Any] = dict(
            sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=joint, caption_projection_dim=16, pooled_projection_dim=64,
            pos_embed_max_size=16,
        )
        comps["transformer"] = SD3Transformer2DModel(**{**tcfg, **(transformer_options or {})}).eval()
        vae = dict(shift_factor=0.0609, scaling_factor=1.5305)
    elif kind == "flux":
        comps = dict(text_encoder=CLIPTextModel(CLIPTextConfig(**clip_cfg)).eval(), tokenizer=clip_tok,
                     text_encoder_2=t5, tokenizer_2=t5_tok)
        tcfg = dict(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=joint, pooled_projection_dim=32, axes_dims_rope=(4, 6, 6),
            guidance_embeds=False,
        )
        comps["transformer"] = FluxTransformer2DModel(**{**tcfg, **(transformer_options or {})}).eval()
        vae = dict(shift_factor=0.1159, scaling_factor=0.3611)
    else:
        raise ValueError(f"kind must be 'sd3' or 'flux', got {kind!r}")
    comps["vae"] = tiny_vae(seed=None, use_quant_conv=False, use_post_quant_conv=False, force_upcast=True, **vae)
    default = "stabilityai/stable-diffusion-3-medium-diffusers" if kind == "sd3" else "black-forest-labs/FLUX.1-schnell"
    comps["scheduler"] = make_scheduler(scheduler if scheduler is not None else FLOW_SCHEDULER_CONFIGS[default])
    return comps


def build_tiny_pipeline(
    folder: str | Path,
    kind: Literal["sd", "sdxl", "sd3", "flux"] = "sd",
    *,
    prediction_type: str = "epsilon",
    seed: int = 0,
    scheduler: dict[str, Any] | str | None = None,
    unet_options: dict[str, Any] | None = None,
    transformer_options: dict[str, Any] | None = None,
) -> Path:
    """Write a tiny pipeline to ``folder`` with ``save_pretrained`` and return the folder.

    The VAE downsamples by 2, so a 16x16 image has an 8x8x4 latent. ``scheduler`` and
    ``unet_options`` are those of :func:`build_components` (``"sd"``, ``"sdxl"``);
    ``scheduler`` and ``transformer_options`` those of :func:`build_flow_components`
    (``"sd3"``, ``"flux"``).
    """
    from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    folder = Path(folder)
    if kind in ("sd3", "flux"):
        comps = build_flow_components(
            kind, seed=seed, tmp=folder.parent / f".{folder.name}-build", scheduler=scheduler,
            transformer_options=transformer_options,
        )
        (StableDiffusion3Pipeline if kind == "sd3" else FluxPipeline)(**comps).save_pretrained(str(folder))
        return folder
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
TINY_MODELS = {"r0kit:tiny-sd": "sd", "r0kit:tiny-sdxl": "sdxl", "r0kit:tiny-sd3": "sd3", "r0kit:tiny-flux": "flux"}


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




# ---------------------------------------------------------------------------- real-size architectures
_CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12, projection_dim=768,
               vocab_size=49408, max_position_embeddings=77, hidden_act="quick_gelu")
_CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32, projection_dim=1280,
               vocab_size=49408, max_position_embeddings=77, hidden_act="gelu")
_T5_XXL = dict(d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24, vocab_size=32128, feed_forward_proj="gated-gelu",
               dense_act_fn="gelu_new", is_gated_act=True, relative_attention_num_buckets=32, relative_attention_max_distance=128)
_VAE_16 = dict(in_channels=3, out_channels=3, block_out_channels=[128, 256, 512, 512], latent_channels=16, layers_per_block=2,
               down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, norm_num_groups=32,
               sample_size=1024, use_quant_conv=False, use_post_quant_conv=False, force_upcast=True)

#: The component configs of real pipelines, for random-weight models at their true size (benchmarks) and
#: config-only folders (memory estimates): ``{name: {component: (library, class, config)}}``. Transformer,
#: VAE and text-encoder dimensions are those of the published ``config.json`` files of
#: stabilityai/stable-diffusion-3-medium-diffusers, stabilityai/stable-diffusion-3.5-large(-turbo) and
#: black-forest-labs/FLUX.1-schnell / FLUX.1-dev.
ARCHITECTURES: dict[str, dict[str, tuple[str, str, dict[str, Any]]]] = {
    "sd3-medium": {
        "transformer": ("diffusers", "SD3Transformer2DModel", dict(
            sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
            num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
            pos_embed_max_size=192)),
        "vae": ("diffusers", "AutoencoderKL", dict(_VAE_16, scaling_factor=1.5305, shift_factor=0.0609)),
        "text_encoder": ("transformers", "CLIPTextModelWithProjection", _CLIP_L),
        "text_encoder_2": ("transformers", "CLIPTextModelWithProjection", _CLIP_G),
        "text_encoder_3": ("transformers", "T5EncoderModel", _T5_XXL),
        "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler", json.loads(FLOW_SCHEDULER_CONFIGS["stabilityai/stable-diffusion-3-medium-diffusers"])),
    },
    "sd3.5-large": {
        "transformer": ("diffusers", "SD3Transformer2DModel", dict(
            sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=38, attention_head_dim=64,
            num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432, pooled_projection_dim=2048,
            pos_embed_max_size=192, qk_norm="rms_norm")),
        "vae": ("diffusers", "AutoencoderKL", dict(_VAE_16, scaling_factor=1.5305, shift_factor=0.0609)),
        "text_encoder": ("transformers", "CLIPTextModelWithProjection", _CLIP_L),
        "text_encoder_2": ("transformers", "CLIPTextModelWithProjection", _CLIP_G),
        "text_encoder_3": ("transformers", "T5EncoderModel", _T5_XXL),
        "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler", json.loads(FLOW_SCHEDULER_CONFIGS["stabilityai/stable-diffusion-3-medium-diffusers"])),
    },
    "flux-schnell": {
        "transformer": ("diffusers", "FluxTransformer2DModel", dict(
            patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
            joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=False, axes_dims_rope=[16, 56, 56])),
        "vae": ("diffusers", "AutoencoderKL", dict(_VAE_16, scaling_factor=0.3611, shift_factor=0.1159)),
        "text_encoder": ("transformers", "CLIPTextModel", _CLIP_L),
        "text_encoder_2": ("transformers", "T5EncoderModel", _T5_XXL),
        "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler", json.loads(FLOW_SCHEDULER_CONFIGS["black-forest-labs/FLUX.1-schnell"])),
    },
}
ARCHITECTURES["flux-dev"] = {
    **ARCHITECTURES["flux-schnell"],
    "transformer": ("diffusers", "FluxTransformer2DModel", dict(ARCHITECTURES["flux-schnell"]["transformer"][2], guidance_embeds=True)),
    "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler", json.loads(FLOW_SCHEDULER_CONFIGS["black-forest-labs/FLUX.1-dev"])),
}
_PIPELINES = {"sd3-medium": "StableDiffusion3Pipeline", "sd3.5-large": "StableDiffusion3Pipeline",
              "flux-schnell": "FluxPipeline", "flux-dev": "FluxPipeline"}


def write_architecture(folder: str | Path, name: str) -> Path:
    """A config-only pipeline folder of a real architecture (:data:`ARCHITECTURES`): ``model_index.json`` and
    each component's ``config.json``, no weights, no tokenizers. Enough for :func:`r0kit.memory.estimate_training`."""
    folder = Path(folder)
    index: dict[str, Any] = {"_class_name": _PIPELINES[name], "_diffusers_version": "0.42.1"}
    for key, (library, cls, cfg) in ARCHITECTURES[name].items():
        index[key] = [library, cls]
        sub = folder / key
        sub.mkdir(parents=True, exist_ok=True)
        if library == "transformers":
            import transformers

            model_cls = getattr(transformers, cls)
            model_cls.config_class(**cfg).save_pretrained(str(sub))
        else:
            target = "scheduler_config.json" if key == "scheduler" else "config.json"
            (sub / target).write_text(json.dumps({"_class_name": cls, **cfg}, indent=2))
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def build_architecture(name: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                       components: tuple[str, ...] = ("transformer", "vae")) -> dict[str, torch.nn.Module]:
    """Random-weight modules of a real architecture, built directly on ``device`` in ``dtype``, frozen and in eval mode."""
    import diffusers
    import transformers

    out: dict[str, torch.nn.Module] = {}
    for key in components:
        library, cls, cfg = ARCHITECTURES[name][key]
        with torch.device(device):
            if library == "diffusers":
                m = getattr(diffusers, cls).from_config(cfg)
            else:
                klass = getattr(transformers, cls)
                m = klass(klass.config_class(**cfg))
        out[key] = m.to(dtype).requires_grad_(False).eval()
    return out


def architecture_model(name: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                       max_sequence_length: int | None = None, tmp: Path | None = None):
    """A :class:`r0kit.diffusion.DiffusionModel` of a real architecture with random weights, for benchmarks.

    The transformer and the VAE have their real sizes (:func:`build_architecture`); the text encoders are
    one-layer stand-ins with the real output widths (CLIP-L 768, CLIP-G 1280, T5 4096) and the generated
    byte-level tokenizers: prompts are encoded once and cached, so they take no part in a step's time, and
    their weights (T5-XXL: 4.7B parameters) are left out of its peak memory.
    """
    import tempfile

    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, T5Config, T5EncoderModel
    from transformers import T5TokenizerFast

    from r0kit.diffusion import MAX_SEQUENCE_LENGTH, DiffusionModel

    kind = "sd3" if name.startswith("sd3") else "flux"
    t5_len = max_sequence_length or MAX_SEQUENCE_LENGTH[kind]
    tmp = Path(tmp or tempfile.mkdtemp(prefix="r0kit-arch-"))
    clip_tok = CLIPTokenizer.from_pretrained(str(write_tiny_clip_tokenizer(tmp / "clip", max_length=77)))
    t5_tok = T5TokenizerFast.from_pretrained(str(write_tiny_t5_tokenizer(tmp / "t5", max_length=t5_len)))
    parts = build_architecture(name, device=device, dtype=dtype)

    def clip(width: int, projection: bool):
        cfg = CLIPTextConfig(vocab_size=len(clip_tok.get_vocab()), hidden_size=width, intermediate_size=width,
                             num_attention_heads=width // 64, num_hidden_layers=1, max_position_embeddings=77,
                             projection_dim=width, bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id,
                             pad_token_id=clip_tok.pad_token_id)
        return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)

    with torch.device(device):
        t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tok.get_vocab()), d_model=4096, d_kv=64, d_ff=1024, num_heads=8,
                                     num_layers=1, feed_forward_proj="gated-gelu", is_gated_act=True))
        if kind == "sd3":
            encoders, tokenizers = [clip(768, True), clip(1280, True), t5], [clip_tok, clip_tok, t5_tok]
        else:
            encoders, tokenizers = [clip(768, False), t5], [clip_tok, t5_tok]
    encoders = [e.to(dtype).requires_grad_(False).eval() for e in encoders]
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(ARCHITECTURES[name]["scheduler"][2])
    return DiffusionModel(backbone=parts["transformer"], vae=parts["vae"], text_encoders=encoders, tokenizers=tokenizers,
                          scheduler=scheduler, kind=kind, dtype=dtype, device=torch.device(device),
                          source=f"{name} architecture (random weights; 1-layer text-encoder stand-ins)",
                          max_sequence_length=t5_len)


if __name__ == "__main__":  # build one by hand: python -m r0kit.testing.pipelines /tmp/tiny-sd [sd|sdxl|sd3|flux]
    import sys

    print(build_tiny_pipeline(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "sd"))
