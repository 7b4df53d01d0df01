"""The ``hpsv2`` reward: Human Preference Score v2.0 / v2.1.

HPS is an open_clip ViT-H-14 fine-tuned on human preferences; the score is the
cosine similarity of the normalized image and prompt features, exactly what
``hpsv2``'s scorer computes (``image_features @ text_features.T``, no logit
scale). The checkpoints ``HPS_v2_compressed.pt`` / ``HPS_v2.1_compressed.pt``
come from the ``xswu/HPSv2`` hub repository (or a local ``checkpoint``) and
load unchanged (their ``state_dict`` entry). The ``hpsv2`` package is not needed.
Needs ``pip install 'r0kit[hps]'``; this module imports no heavy package.
"""

from __future__ import annotations

import r0kit
from r0kit.errors import OptionError
from r0kit.images import CLIP_MEAN, CLIP_STD

HUB_REPO = "xswu/HPSv2"
CHECKPOINTS = {"2.0": "HPS_v2_compressed.pt", "2.1": "HPS_v2.1_compressed.pt"}

#: hpsv2's scorer (``hpsv2.img_score``) builds its transform with ``light_augmentation=True``:
#: ToTensor, ``ResizeMaxSize(224)`` (longest side to 224 with torchvision's antialiased bicubic
#: tensor resize, the other side rounded, then zero padding of the [0, 1] tensor: black, before
#: normalization, floor(pad / 2) on the top/left), CLIP mean/std. A letterbox, not a center crop.
CONTRACT = r0kit.RewardContract(
    size=224, resize="bicubic", antialias=True, crop="pad", mean=CLIP_MEAN, std=CLIP_STD, needs_prompt=True
)


def _version(version: str | float) -> str:
    v = str(version).strip().lower().removeprefix("v")
    if v in ("2", "2.0"):
        return "2.0"
    if v == "2.1":
        return "2.1"
    raise OptionError(f"hpsv2 version must be '2.0' or '2.1', got {version!r}")


def hpsv2_reward(
    version: str = "2.1",
    checkpoint: str | None = None,
    model: str = "ViT-H-14",
    dtype: str = "float32",
    device: str | None = None,
    gradient_checkpointing: bool = False,
):
    """Build the reward.

    :param version: ``"2.0"`` or ``"2.1"``; picks the hub file.
    :param checkpoint: a local HPS checkpoint file, or a folder (or built-in short name) holding the version's file.
    :param model: the open_clip architecture the checkpoint belongs to (ViT-H-14 for HPS), or a model
        repository in open_clip's layout (a folder, ``"hf-hub:org/name"`` or a built-in short name such as
        ``"r0kit-mini-clip"``) that gives the architecture, tokenizer, input size and normalization; the
        weights still come from the HPS checkpoint, and the resize follows HPS's own preprocessing.
    """
    from r0kit.backbones.openclip import open_clip_score
    from r0kit.weights import resolve_file

    v = _version(version)
    what = f"the hpsv2 reward (HPS v{v})"

    def resolve():
        return resolve_file(HUB_REPO, CHECKPOINTS[v], path=checkpoint, what=what)

    return open_clip_score(
        model_name=model,
        checkpoint=None,
        pretrained=None,
        state_dict_key="state_dict",
        scale=1.0,
        contract=CONTRACT,
        extra="hps",
        what=what,
        dtype=dtype,
        device=device,
        gradient_checkpointing=gradient_checkpointing,
        resolve_checkpoint=resolve,
        contract_resize_from_model=False,
    )


@r0kit.hookimpl
def r0kit_register_rewards(register):
    register("hpsv2", hpsv2_reward, contract=CONTRACT, description="Human Preference Score v2.0/v2.1 (open_clip ViT-H-14)")
