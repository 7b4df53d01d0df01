"""The ``aesthetic`` reward: the LAION aesthetic predictor v2 (sac+logos+ava1, linear MSE).

An MLP (:class:`r0kit.backbones.heads.ScoreMLP`) on the L2-normalized CLIP
ViT-L/14 image embedding (``openai/clip-vit-large-patch14`` through
transformers). The MLP weights come from ``trl-lib/ddpo-aesthetic-predictor``
(``aesthetic-model.pth``, the ``sac+logos+ava1-l14-linearMSE.pth`` weights) or
a local ``checkpoint``. No prompt is read. Needs ``pip install 'r0kit[aesthetic]'``;
this module imports no heavy package.
"""

from __future__ import annotations

from typing import Sequence

import torch

import r0kit
from r0kit.backbones.common import freeze
from r0kit.images import CLIP_MEAN, CLIP_STD

CLIP_REPO = "openai/clip-vit-large-patch14"
HEAD_REPO = "trl-lib/ddpo-aesthetic-predictor"
HEAD_FILE = "aesthetic-model.pth"

#: The predictor's scorer (trl's DDPO ``AestheticScorer``, whose weights these are) feeds the CLIP
#: model through transformers' ``CLIPProcessor``: shorter side to 224 bicubic (antialiased), center
#: crop starting at ``floor((t − 224) / 2)``, CLIP mean/std.
CONTRACT = r0kit.RewardContract(
    size=224, resize="bicubic", antialias=True, crop="center", crop_offset="floor", mean=CLIP_MEAN, std=CLIP_STD,
    needs_prompt=False,
)


class AestheticScore(torch.nn.Module):
    """``mlp(normalize(clip_image_embedding(x)))`` per image; the prompts are ignored.

    :ivar contract: the input the CLIP expects (its image size and normalization).
    """

    contract: r0kit.RewardContract = CONTRACT

    def __init__(self, embed: torch.nn.Module, head: torch.nn.Module) -> None:
        super().__init__()
        self.embed = embed
        self.head = freeze(head.to(embed.device).float())
        self.eval()

    def train(self, mode: bool = True) -> AestheticScore:
        return super().train(False)

    def forward(self, x: torch.Tensor, prompts: Sequence[str] | None = None) -> torch.Tensor:
        return self.head(self.embed(x)).squeeze(-1).to(x.device)


def aesthetic_reward(
    clip_model: str = CLIP_REPO,
    checkpoint: str | None = None,
    dtype: str = "float32",
    device: str | None = None,
    gradient_checkpointing: bool = False,
):
    """Build the reward.

    :param clip_model: a repository or local folder with the CLIP ViT-L/14 (transformers layout).
    :param checkpoint: the predictor's MLP weights (a ``.pth``/``.safetensors`` file or a folder holding ``aesthetic-model.pth``).
    """
    from r0kit.backbones.common import require, resolve_device, resolve_dtype
    from r0kit.backbones.heads import ScoreMLP
    from r0kit.backbones.hf_clip import ClipImageEmbedding, image_contract, load_clip
    from r0kit.weights import load_state_dict, resolve_file

    what = "the aesthetic reward"
    require("transformers", extra="aesthetic", what=what)
    dt, dev = resolve_dtype(dtype), resolve_device(device)
    path = resolve_file(HEAD_REPO, HEAD_FILE, path=checkpoint, what=f"{what} MLP weights")
    head = ScoreMLP.from_state_dict(load_state_dict(path), what=what, source=str(path))
    vision = load_clip(clip_model, extra="aesthetic", what=what)
    embed = ClipImageEmbedding(vision, dtype=dt, device=dev, gradient_checkpointing=gradient_checkpointing)
    out = AestheticScore(embed, head)
    out.contract = image_contract(vision, clip_model, CONTRACT, what=what)
    return out


@r0kit.hookimpl
def r0kit_register_rewards(register):
    register("aesthetic", aesthetic_reward, contract=CONTRACT, description="LAION aesthetic predictor v2 on CLIP ViT-L/14")
