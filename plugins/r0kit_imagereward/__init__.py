"""The ``imagereward`` reward: ImageReward-v1.0 (BLIP ViT-L, cross-attention BERT, MLP head).

r0kit's own implementation (:mod:`r0kit.backbones.blip`) loads the upstream
``ImageReward.pt`` and ``med_config.json`` from the ``THUDM/ImageReward`` hub
repository (or local paths) unchanged and scores like upstream, normalized with
its mean and std; the ``image-reward`` package is not needed. Prompts use the
``bert-base-uncased`` vocabulary. Needs ``pip install 'r0kit[imagereward]'``
(transformers, for the tokenizer); this module imports no heavy package.
"""

from __future__ import annotations

import os

import r0kit
from r0kit.images import CLIP_MEAN, CLIP_STD

HUB_REPO = "THUDM/ImageReward"
CHECKPOINT = "ImageReward.pt"
MED_CONFIG = "med_config.json"
TOKENIZER_REPO = "bert-base-uncased"

#: ImageReward's ``_transform(224)`` (``ImageReward/ImageReward.py``): torchvision Resize(224, BICUBIC) on
#: the shorter side of the PIL image, CenterCrop(224) (first row ``round((t − 224) / 2)``), ToTensor, CLIP mean/std.
CONTRACT = r0kit.RewardContract(
    size=224, resize="bicubic", antialias=True, crop="center", mean=CLIP_MEAN, std=CLIP_STD, needs_prompt=True
)


def _local(p: str | None) -> str | None:
    return None if p is None else os.path.expanduser(str(p))


def imagereward_reward(
    checkpoint: str | None = None,
    med_config: str | None = None,
    tokenizer: str = TOKENIZER_REPO,
    dtype: str = "float32",
    device: str | None = None,
    gradient_checkpointing: bool = False,
):
    """Build the reward.

    :param checkpoint: ``ImageReward.pt``, or a folder holding it (and ``med_config.json``).
    :param med_config: the BERT config; by default beside a local checkpoint, else from the hub.
    :param tokenizer: a repository, folder or ``vocab.txt`` file with the bert-base-uncased vocabulary.
    """
    from r0kit.backbones.blip import ImageRewardScore, build_imagereward, load_bert_tokenizer, read_med_config
    from r0kit.backbones.common import require, resolve_device, resolve_dtype
    from r0kit.weights import load_state_dict, resolve_file

    require("transformers", extra="imagereward", what="the imagereward reward")
    dt, dev = resolve_dtype(dtype), resolve_device(device)
    what = "the imagereward reward"
    checkpoint, med_config, tokenizer = _local(checkpoint), _local(med_config), str(tokenizer)
    ckpt = resolve_file(HUB_REPO, CHECKPOINT, path=checkpoint, what=f"{what} checkpoint")
    if med_config is None and checkpoint is not None and (ckpt.parent / MED_CONFIG).is_file():
        med_config = str(ckpt.parent / MED_CONFIG)
    med = resolve_file(HUB_REPO, MED_CONFIG, path=med_config, what=f"{what} med_config")
    tok_local = os.path.expanduser(tokenizer)
    if os.path.isfile(tok_local) or os.path.isdir(tok_local):
        vocab = resolve_file(TOKENIZER_REPO, "vocab.txt", path=tok_local, what=f"{what} tokenizer")
    else:
        vocab = resolve_file(tokenizer, "vocab.txt", what=f"{what} tokenizer")
    model = build_imagereward(load_state_dict(ckpt), read_med_config(med))
    return ImageRewardScore(
        model, load_bert_tokenizer(vocab, extra="imagereward"), dtype=dt, device=dev, gradient_checkpointing=gradient_checkpointing
    )


@r0kit.hookimpl
def r0kit_register_rewards(register):
    register("imagereward", imagereward_reward, contract=CONTRACT, description="ImageReward-v1.0 (BLIP), normalized")
