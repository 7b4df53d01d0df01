"""The ``clip`` reward: scaled cosine similarity of open_clip image and prompt features.

``reward("clip")`` is ``100 · cos(f_img, f_txt)`` on open_clip ViT-H-14
``laion2b_s32b_b79k``; any open_clip model and pretrained tag with the 224-px
OpenAI-CLIP preprocessing works (``model="ViT-L-14", pretrained="openai"``).
Needs ``pip install 'r0kit[clip]'``; this module imports no heavy package.
"""

from __future__ import annotations

import r0kit
from r0kit.images import CLIP_MEAN, CLIP_STD

#: open_clip's validation transform (``resize_mode="shortest"``, ``open_clip/transform.py``): torchvision
#: Resize(224, bicubic) on the shorter side, CenterCrop(224) (first row ``round((t − 224) / 2)``), CLIP mean/std.
CONTRACT = r0kit.RewardContract(
    size=224, resize="bicubic", antialias=True, crop="center", mean=CLIP_MEAN, std=CLIP_STD, needs_prompt=True
)


def clip_reward(
    model: str = "ViT-H-14",
    pretrained: str = "laion2b_s32b_b79k",
    checkpoint: str | None = None,
    scale: float = 100.0,
    dtype: str = "float32",
    device: str | None = None,
    gradient_checkpointing: bool = False,
):
    """Build the reward.

    :param model: an open_clip architecture name, or a model repository in open_clip's layout
        (``open_clip_config.json`` + weights + tokenizer): a folder, ``"hf-hub:org/name"`` or a built-in
        short name such as ``"r0kit-mini-clip"``; a repository brings its own input size and normalization.
    :param pretrained: an open_clip pretrained tag, resolved to its Hugging Face repository (ignored for a repository).
    :param checkpoint: a local open_clip checkpoint (file or folder); wins over ``pretrained``.
    :param scale: multiplier of the cosine similarity.
    """
    from r0kit.backbones.openclip import open_clip_score

    return open_clip_score(
        model_name=model,
        checkpoint=checkpoint,
        pretrained=pretrained,
        state_dict_key=None,
        scale=scale,
        contract=CONTRACT,
        extra="clip",
        what="the clip reward",
        dtype=dtype,
        device=device,
        gradient_checkpointing=gradient_checkpointing,
    )


@r0kit.hookimpl
def r0kit_register_rewards(register):
    register("clip", clip_reward, contract=CONTRACT, description="CLIP score: 100·cos(image, prompt), open_clip ViT-H-14")
