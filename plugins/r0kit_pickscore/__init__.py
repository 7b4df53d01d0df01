"""The ``pickscore`` reward: PickScore_v1, ``logit_scale.exp() · cos(image, prompt)``.

The model is a transformers ``CLIPModel`` (``yuvalkirstain/PickScore_v1``, a
CLIP ViT-H/14); prompts are tokenized with the CLIP tokenizer of
``openai/clip-vit-large-patch14`` (padding, truncation to 77), and images see
that processor's settings (``CLIPImageProcessor``): shorter side to 224 bicubic
(antialiased), center crop starting at ``floor((t − 224) / 2)`` (transformers'
rounding, one pixel off torchvision's ``CenterCrop`` for some sizes), CLIP mean/std. Needs ``pip install 'r0kit[pickscore]'``; this module imports no heavy package.
"""

from __future__ import annotations

import r0kit
from r0kit.images import CLIP_MEAN, CLIP_STD

MODEL_REPO = "yuvalkirstain/PickScore_v1"
PROCESSOR_REPO = "openai/clip-vit-large-patch14"

CONTRACT = r0kit.RewardContract(
    size=224, resize="bicubic", antialias=True, crop="center", crop_offset="floor", mean=CLIP_MEAN, std=CLIP_STD,
    needs_prompt=True,
)


def pickscore_reward(
    model: str = MODEL_REPO,
    processor: str = PROCESSOR_REPO,
    dtype: str = "float32",
    device: str | None = None,
    gradient_checkpointing: bool = False,
):
    """Build the reward.

    :param model: a repository or local folder with the PickScore ``CLIPModel``.
    :param processor: a repository or local folder with the CLIP tokenizer files.
    """
    from r0kit.backbones.common import resolve_device, resolve_dtype
    from r0kit.backbones.hf_clip import HFClipScore, load_clip, load_clip_tokenizer

    dt, dev = resolve_dtype(dtype), resolve_device(device)
    what = "the pickscore reward"
    clip = load_clip(model, extra="pickscore", what=what)
    tokenizer = load_clip_tokenizer(processor, extra="pickscore", what=what)
    return HFClipScore(clip, tokenizer, dtype=dt, device=dev, gradient_checkpointing=gradient_checkpointing)


@r0kit.hookimpl
def r0kit_register_rewards(register):
    register("pickscore", pickscore_reward, contract=CONTRACT, description="PickScore_v1 (CLIP ViT-H/14)")
