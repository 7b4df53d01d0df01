"""The mini world's judge as evaluation metrics (see :mod:`r0kit.mini`).

``mini_geneval``    GenEval-style per-attribute accuracy, read procedurally off the pixels
``mini_fid``        FID against renders of the same prompts, in the judge CNN's feature space
``mini_diversity``  mean pairwise feature distance between seeds of one prompt

They judge; they are never optimized. ``r0kit evaluate ... --metric mini_geneval``.
"""

from __future__ import annotations

import r0kit


def _geneval():
    from r0kit.mini.metrics import GenEval

    return GenEval()


def _fid(per_prompt: int = 8, seed: int = 0, model: str = "r0kit-mini-judge", device: str | None = None):
    from r0kit.mini.metrics import FID

    return FID(per_prompt=per_prompt, seed=seed, model=model, device=device)


def _diversity(model: str = "r0kit-mini-judge", device: str | None = None):
    from r0kit.mini.metrics import Diversity

    return Diversity(model=model, device=device)


@r0kit.hookimpl
def r0kit_register_metrics(register):
    register("mini_geneval", _geneval, description="mini world: GenEval-style accuracy (object, colour, shape, position, count, relation)")
    register("mini_fid", _fid, description="mini world: FID against renders of the same prompts (judge CNN features)")
    register("mini_diversity", _diversity, description="mini world: mean pairwise feature distance between seeds of a prompt")
