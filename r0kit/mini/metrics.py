"""The mini world's evaluation metrics: GenEval-style accuracy, FID and diversity in the judge's feature space.

Registered by the ``r0kit_mini`` plugin, so ``r0kit evaluate --metric mini_geneval``
computes them like any metric. None of them is ever a training signal.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from r0kit.mini import judge as J
from r0kit.mini import world as W


def check_world_prompts(prompts: Sequence[str], metric: str) -> None:
    """Refuse prompts the world's grammar does not produce: the judge reads what a prompt states from it.

    :raises InputError: naming the first such prompt and where the world's prompts are.
    """
    from r0kit.errors import InputError

    for p in dict.fromkeys(prompts):
        try:
            W.parse_prompt(p)
        except ValueError as exc:
            raise InputError(f"{metric} judges only the mini world's prompts (r0kit/mini/prompts/heldout.txt, train.txt); {exc}") from None


class GenEval:
    """Per-check accuracy of :func:`r0kit.mini.judge.check` over the images: ``geneval`` (all checks
    of a prompt pass) and ``geneval/<check>`` for each check some prompt states.

    :raises InputError: a prompt the world's grammar does not produce (:meth:`check_prompts`, also
    called before any sampling by :func:`r0kit.evaluate.check_metric_needs`).
    """

    def check_prompts(self, prompts: Sequence[str]) -> None:
        check_world_prompts(prompts, "mini_geneval")

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, float]:
        self.check_prompts(prompts)
        acc = J.accuracy(J.score(list(prompts), images))
        out = {"geneval": acc["correct"]}
        out.update({f"geneval/{k}": v for k, v in acc.items() if k != "correct" and v == v})
        return out


class _Features:
    def __init__(self, model: str, device: str | None) -> None:
        from r0kit.mini.features import load_feature_net

        self.net = load_feature_net(model, device or "cpu")


class FID(_Features):
    """FID against renders of the same prompts (``per_prompt`` random scenes each, seeded), in the
    judge feature network's space (computed by torchmetrics)."""

    #: FID's covariance needs two generated images (see :func:`r0kit.evaluate.check_metric_needs`).
    min_images = 2
    #: A distance: the evaluation table marks the lowest as best.
    lower_is_better = ("fid",)

    def __init__(self, per_prompt: int = 8, seed: int = 0, model: str = "r0kit-mini-judge", device: str | None = None) -> None:
        """:raises OptionError: ``per_prompt`` not an int >= 1, or ``seed`` not an int >= 0."""
        from r0kit.errors import OptionError

        for key, value, least in (("per_prompt", per_prompt, 1), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise OptionError(f"mini_fid.{key} must be an integer >= {least}, got {value!r}")
        super().__init__(model, device)
        self.per_prompt, self.seed = per_prompt, seed

    def check_prompts(self, prompts: Sequence[str]) -> None:
        check_world_prompts(prompts, "mini_fid")

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, float]:
        from r0kit.metrics import frechet_distance

        self.check_prompts(prompts)
        rng = np.random.default_rng(self.seed)
        unique = sorted(set(prompts))  # the reference set depends on which prompts, not on their order
        scenes = [W.scene_for_prompt(p, rng) for p in unique for _ in range(self.per_prompt)]
        real = torch.from_numpy(W.render_batch(scenes, images.shape[-1]))
        return {"fid": frechet_distance(self.net, real, images.float())}


class Diversity(_Features):
    """Mean pairwise cosine distance of judge features between images of the same prompt."""

    #: Diversity is across seeds (see :func:`r0kit.evaluate.check_metric_needs`).
    min_images_per_prompt = 2

    def __init__(self, model: str = "r0kit-mini-judge", device: str | None = None) -> None:
        super().__init__(model, device)

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, float]:
        from r0kit.metrics import diversity, features

        return {"diversity": diversity(features(self.net, images.float()), prompts)}
