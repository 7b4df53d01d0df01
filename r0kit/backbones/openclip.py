"""open_clip models as differentiable image-text scores: CLIP score and HPS v2/v2.1.

Both rewards are ``scale · cos(f_img(x), f_txt(prompt))`` on an open_clip
model; they differ in the weights and the scale (CLIP score: 100 by
convention; HPS: 1, exactly as ``hpsv2``'s scorer computes
``image_features @ text_features.T`` on normalized features).

The model is named either by an open_clip architecture (``"ViT-H-14"``) with a
pretrained tag, or by a model *repository* in open_clip's hub layout
(``open_clip_config.json`` + ``open_clip_model.safetensors`` [+ tokenizer files]):
a local folder, a built-in short name such as ``"r0kit-mini-clip"``, or
``"hf-hub:org/name"``. A repository brings its own architecture, tokenizer and
preprocessing, so the reward's input contract is read from its
``preprocess_cfg`` (image size, mean, std, interpolation, resize mode).

Weights resolve through :mod:`r0kit.weights`: an explicit ``checkpoint``
path, else the repository's weights or the open_clip pretrained tag's Hugging
Face repository (cache, then download). The architecture is built from
open_clip's config with no download, then the state dict is loaded strictly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F


from r0kit.backbones.common import (
    FrozenScorer,
    PromptCache,
    model_input,
    require,
    resolve_device,
    resolve_dtype,
    resolve_first,
)
from r0kit.checks import check_number
from r0kit.errors import OptionError, WeightsError
from r0kit.images import RewardContract
from r0kit.kernels import cosine_head
from r0kit.text import TruncationWarner
from r0kit.weights import check_source, load_state_dict

OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
OPEN_CLIP_CONFIG = "open_clip_config.json"
#: What a model repository in open_clip's hub layout holds (fetched together, nothing else).
REPO_FILES = [OPEN_CLIP_CONFIG, *OPEN_CLIP_FILES, "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
              "special_tokens_map.json", "spiece.model"]


def import_open_clip(extra: str, what: str):
    return require("open_clip", extra=extra, what=what)


@contextlib.contextmanager
def _quiet_open_clip():
    """open_clip logs a warning when a model is built without pretrained weights; we load them next."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)


def repository(model_name: str, *, what: str) -> Path | None:
    """The local folder of a model repository in open_clip's hub layout, or ``None`` for an architecture name.

    ``model_name`` is a repository when it is ``"local-dir:PATH"``, ``"hf-hub:org/name"``
    (resolved by :func:`r0kit.weights.resolve_repo`: cache, then download), a built-in
    short name, or a folder holding ``open_clip_config.json``.

    :raises WeightsError: the folder has no ``open_clip_config.json``.
    """
    from r0kit.weights import builtin_model, resolve_repo

    name = str(model_name)
    if name.startswith("local-dir:"):
        folder = Path(name.removeprefix("local-dir:")).expanduser()
    elif name.startswith("hf-hub:"):
        folder = resolve_repo(name.removeprefix("hf-hub:"), allow_patterns=REPO_FILES, what=what)
    else:
        folder = builtin_model(name)
        if folder is None:
            candidate = Path(name).expanduser()
            if not (candidate.is_dir() and (candidate / OPEN_CLIP_CONFIG).is_file()):
                return None
            folder = candidate
    if not (folder / OPEN_CLIP_CONFIG).is_file():
        raise WeightsError(
            f"{what}: {str(folder)!r} has no {OPEN_CLIP_CONFIG}; a model repository in open_clip's layout holds "
            f"{OPEN_CLIP_CONFIG} and {OPEN_CLIP_FILES[0]}"
        )
    return folder


def repository_config(folder: Path, *, what: str) -> dict[str, Any]:
    """``open_clip_config.json`` of a repository: ``{"model_cfg": ..., "preprocess_cfg": ...}``."""
    try:
        cfg = json.loads((folder / OPEN_CLIP_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{what}: {str(folder / OPEN_CLIP_CONFIG)!r} cannot be read ({exc})") from None
    if not isinstance(cfg, dict) or "model_cfg" not in cfg:
        raise WeightsError(f"{what}: {str(folder / OPEN_CLIP_CONFIG)!r} has no model_cfg")
    return cfg


def contract_from_preprocess(preprocess: dict[str, Any], base: RewardContract, *, what: str, resize: bool = True) -> RewardContract:
    """``base`` with the image size, mean and std (and, with ``resize``, the interpolation and resize
    mode) of an open_clip ``preprocess_cfg``.

    open_clip's resize modes map to the contract's crops: ``shortest`` (resize the shorter side,
    center-crop) -> ``"center"``; ``longest`` (resize the longer side, pad) -> ``"pad"``;
    ``squash`` (resize both sides) -> ``"none"``.

    :raises OptionError: a non-square input size or a resize mode the contract cannot express.
    """
    size = preprocess.get("size", base.size)
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise OptionError(f"{what}: the model expects a non-square input {tuple(size)}, which reward contracts do not describe")
        size = size[0]
    changes: dict[str, Any] = {"size": int(size)}
    for key in ("mean", "std"):
        if key in preprocess:
            changes[key] = tuple(float(v) for v in preprocess[key])
    if resize:
        interp = preprocess.get("interpolation", base.resize)
        if interp not in ("bilinear", "bicubic", "nearest"):
            raise OptionError(f"{what}: the model resizes with {interp!r}, which reward contracts do not describe")
        changes["resize"] = interp
        mode = preprocess.get("resize_mode", "shortest")
        crops = {"shortest": "center", "longest": "pad", "squash": "none"}
        if mode not in crops:
            raise OptionError(f"{what}: the model's resize mode {mode!r} is not one of {', '.join(crops)}")
        changes["crop"] = crops[mode]
    return dataclasses.replace(base, **changes)


def build_open_clip(model_name: str, *, extra: str, what: str, quick_gelu: bool = False) -> torch.nn.Module:
    """An open_clip architecture with random weights, built from its config (no download)."""
    open_clip = import_open_clip(extra, what)
    if open_clip.get_model_config(model_name) is None:
        known = open_clip.list_models()
        close = difflib.get_close_matches(model_name, known, n=3)
        raise OptionError(
            f"{what}: open_clip has no model config {model_name!r}"
            + (f"; did you mean {', '.join(map(repr, close))}?" if close else "")
            + " (open_clip.list_models() lists them; open_clip.add_model_config(path) adds one)"
        )
    with _quiet_open_clip():
        model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=quick_gelu, output_dict=False)
    return model


def pretrained_checkpoint(model_name: str, pretrained: str, *, extra: str, what: str) -> tuple[os.PathLike, bool]:
    """Resolve an open_clip pretrained tag to a local file. Returns ``(path, quick_gelu)``."""
    open_clip = import_open_clip(extra, what)
    if os.path.isfile(os.path.expanduser(pretrained)):
        return os.path.expanduser(pretrained), False
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise OptionError(
            f"{what}: open_clip has no pretrained weights {pretrained!r} for {model_name!r}; "
            f"known tags: {', '.join(tags) or 'none'}; or pass checkpoint='/path/to/weights'"
        )
    hub = (cfg.get("hf_hub") or "").strip("/")
    if not hub:
        raise OptionError(
            f"{what}: the open_clip weights {model_name}/{pretrained} are not on the Hugging Face hub "
            f"({cfg.get('url') or 'no url'}); download them and pass checkpoint='/path/to/file'"
        )
    parts = hub.split("/")
    repo, folder = "/".join(parts[:2]), "/".join(parts[2:])  # "org/name[/subfolder]"
    files = tuple(f"{folder}/{f}" if folder else f for f in OPEN_CLIP_FILES)
    path = resolve_first(repo, files, what=f"{what} ({model_name}/{pretrained})")
    return path, bool(cfg.get("quick_gelu", False))


def load_open_clip_weights(
    model: torch.nn.Module, path: os.PathLike | str, *, state_dict_key: str | None, what: str
) -> None:
    """Load a checkpoint strictly into an open_clip model, converting old open_clip layouts."""
    import open_clip.model as oc_model

    obj: Any = load_state_dict(path)
    if state_dict_key is not None:
        if state_dict_key not in obj:
            raise WeightsError(
                f"{what}: checkpoint {str(path)!r} has no {state_dict_key!r} entry (keys: {', '.join(list(obj)[:8])}); "
                "is it the right file?"
            )
        obj = obj[state_dict_key]
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}
    if "positional_embedding" in sd and not hasattr(model, "positional_embedding"):
        sd = oc_model.convert_to_custom_text_state_dict(sd)
    oc_model.resize_pos_embed(sd, model)
    try:
        result = model.load_state_dict(sd, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise WeightsError(
            f"{what}: checkpoint {str(path)!r} does not match the architecture ({str(exc).splitlines()[-1].strip()}); "
            "check the model option (the open_clip architecture name) against the checkpoint"
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(
            f"{what}: checkpoint {str(path)!r} does not match the architecture; "
            f"missing {result.missing_keys[:6]}{'...' if len(result.missing_keys) > 6 else ''}, "
            f"unexpected {result.unexpected_keys[:6]}{'...' if len(result.unexpected_keys) > 6 else ''}. "
            "Check the model option (the open_clip architecture name) against the checkpoint."
        )


def check_contract(
    model_name: str, pretrained: str | None, contract: RewardContract, *, extra: str, what: str
) -> None:
    """Refuse an open_clip model whose own preprocessing differs from the reward's declared contract.

    Read from open_clip's configs (the architecture's image size, the
    pretrained tag's mean/std), so it fails before anything is built or fetched.
    """
    open_clip = import_open_clip(extra, what)
    cfg = open_clip.get_model_config(model_name) or {}
    pre = {**(cfg.get("preprocess_cfg") or {}), **(open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained else {})}
    size = (cfg.get("vision_cfg") or {}).get("image_size", contract.size)
    size = size[0] if isinstance(size, (tuple, list)) and len(set(size)) == 1 else size
    problems = []
    if size != contract.size:
        problems.append(f"input size {size} (the contract declares {contract.size})")
    for key in ("mean", "std"):
        if key in pre and any(abs(a - b) > 1e-6 for a, b in zip(pre[key], getattr(contract, key))):
            problems.append(f"{key} {tuple(pre[key])} (the contract declares {getattr(contract, key)})")
    # open_clip's resize_mode: shortest edge + CenterCrop, longest edge + pad, or squash.
    crop = {"shortest": "center", "longest": "pad", "squash": "none"}.get(pre.get("resize_mode", ""))
    if crop is not None and crop != contract.crop:
        problems.append(f"resize_mode {pre['resize_mode']!r} (the contract declares crop={contract.crop!r})")
    if pre.get("interpolation", contract.resize) != contract.resize:
        problems.append(f"{pre['interpolation']} interpolation (the contract declares {contract.resize})")
    if problems:
        raise OptionError(
            f"{what}: open_clip model {model_name!r} expects {'; '.join(problems)}; pick a 224-px model with "
            "the OpenAI CLIP mean/std and bicubic shortest-side resize, or register a reward with its own contract"
        )


class OpenClipScore(FrozenScorer):
    """``scale · cos(image, prompt)`` on a frozen open_clip model, per sample.

    :param model: an open_clip ``CLIP`` model with its weights loaded.
    :param tokenizer: open_clip's tokenizer for it.
    :param scale: the multiplier of the cosine similarity.
    :param reader: who reads the prompt, as a truncation warning names it.
    :ivar contract: the input this model expects (set by :func:`open_clip_score`).
    """

    contract: RewardContract | None = None

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        scale: float,
        dtype: str | torch.dtype = "float32",
        device: str | torch.device | None = None,
        gradient_checkpointing: bool = False,
        cache_size: int = 4096,
        reader: str = "the CLIP text encoder",
    ) -> None:
        super().__init__(model, tokenizer, dtype=dtype, device=device)
        self.scale = float(scale)
        self.text_cache = PromptCache(cache_size)
        self.truncation = TruncationWarner(reader, int(getattr(tokenizer, "context_length", 77) or 77))
        if gradient_checkpointing:
            self.model.visual.set_grad_checkpointing(True)
        self.eval()

    def _encode_text(self, prompts: list[str]) -> torch.Tensor:
        for p in prompts:  # open_clip's tokenizer cuts at its context length (77), keeping the end token
            self.truncation.check_open_clip(self.tokenizer, p)
        tokens = self.tokenizer(prompts).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def text_features(self, prompts: Sequence[str]) -> torch.Tensor:
        """Normalized text features ``[B, D]`` in float32, cached per prompt."""
        return self.text_cache.get(prompts, self._encode_text)

    def forward(self, x: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        self.check_prompts(x, prompts)
        img = self.model.encode_image(model_input(x, self.device, self.dtype)).float()
        txt = self.text_features(prompts).to(img.device)
        # Normalize, dot and scale in one fused op (Triton on CUDA, torch elsewhere).
        return cosine_head(img, txt, self.scale).to(x.device)


def open_clip_score(
    *,
    model_name: str,
    checkpoint: str | os.PathLike | None,
    pretrained: str | None,
    state_dict_key: str | None,
    scale: float,
    contract: RewardContract,
    extra: str,
    what: str,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    gradient_checkpointing: bool = False,
    resolve_checkpoint=None,
    contract_resize_from_model: bool = True,
) -> OpenClipScore:
    """Build, load and freeze an :class:`OpenClipScore`; its ``contract`` is the input it expects.

    ``model_name`` is an open_clip architecture or a model repository (see :func:`repository`).
    ``checkpoint`` (a local file or folder) wins over the repository's weights, over
    ``resolve_checkpoint()`` (HPS's hub files, resolved lazily) and over ``pretrained`` (an
    open_clip tag). A repository's ``preprocess_cfg`` sets the contract's size, mean and std,
    and, with ``contract_resize_from_model``, its interpolation and crop too.
    """
    check_number(scale, f"{what}: scale", above=0)
    check_source(model_name, what, "model")
    if checkpoint is not None:
        check_source(checkpoint, what, "checkpoint")
    open_clip = import_open_clip(extra, what)
    dt, dev = resolve_dtype(dtype), resolve_device(device)  # validate options before any loading

    def scorer(model: torch.nn.Module, tokenizer: Any, contract: RewardContract) -> OpenClipScore:
        out = OpenClipScore(model, tokenizer, scale=scale, dtype=dt, device=dev, gradient_checkpointing=gradient_checkpointing,
                            reader=f"the CLIP text encoder of {what}")
        out.contract = contract
        return out

    repo = repository(model_name, what=what)
    if repo is not None:
        cfg = repository_config(repo, what=what)
        contract = contract_from_preprocess(cfg.get("preprocess_cfg") or {}, contract, what=what, resize=contract_resize_from_model)
        if checkpoint is not None:
            path = checkpoint
        elif resolve_checkpoint is not None:
            path = resolve_checkpoint()
        else:
            path = resolve_first(str(repo), OPEN_CLIP_FILES, what=what)
        if os.path.isdir(os.path.expanduser(str(path))):
            path = resolve_first(os.path.expanduser(str(path)), OPEN_CLIP_FILES, what=what)
        with _quiet_open_clip():
            model = open_clip.create_model("local-dir:" + str(repo), load_weights=False, output_dict=False)
        load_open_clip_weights(model, path, state_dict_key=state_dict_key if checkpoint is not None or resolve_checkpoint else None, what=what)
        return scorer(model, open_clip.get_tokenizer("local-dir:" + str(repo)), contract)
    if checkpoint is None and resolve_checkpoint is None and not pretrained:
        raise OptionError(f"{what}: pass pretrained='<open_clip tag>' or checkpoint='/path/to/weights'")
    if open_clip.get_model_config(model_name) is None:
        build_open_clip(model_name, extra=extra, what=what)  # raises, naming close matches
    # Check the contract, then resolve the weights, then build: a bad option or a missing file fails fast.
    check_contract(model_name, pretrained if checkpoint is None and resolve_checkpoint is None else None, contract, extra=extra, what=what)
    quick_gelu = False
    if checkpoint is not None:
        path = checkpoint
    elif resolve_checkpoint is not None:
        path = resolve_checkpoint()
    else:
        path, quick_gelu = pretrained_checkpoint(model_name, pretrained, extra=extra, what=what)
    if os.path.isdir(os.path.expanduser(str(path))):
        path = resolve_first(os.path.expanduser(str(path)), OPEN_CLIP_FILES, what=what)
    model = build_open_clip(model_name, extra=extra, what=what, quick_gelu=quick_gelu)
    load_open_clip_weights(model, path, state_dict_key=state_dict_key, what=what)
    return scorer(model, open_clip.get_tokenizer(model_name), contract)
