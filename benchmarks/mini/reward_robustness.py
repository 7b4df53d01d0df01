"""How small a change to an image makes a reward prefer the wrong one?

    python benchmarks/mini/reward_robustness.py                  # the mini preset's rewards
    python benchmarks/mini/reward_robustness.py --config my.toml --out /tmp/robustness.csv

R0 climbs its rewards' image gradients. Where a tiny, meaningless change to an
image raises a reward, that climb can go anywhere (reward hacking), whatever the
reward's accuracy on clean images. This measures it directly, for every reward
of a training config's objective (default the ``mini`` preset's):

1. For each held-out prompt it renders ``--pairs`` scenes of the prompt (the
   right image) and, for each, the same scene with one stated attribute
   contradicted (:func:`r0kit.mini.world.mutate`: the wrong image).
2. ``clean_acc``: how often the reward scores the right image above the wrong one.
3. For each L2 budget in ``--eps`` (over the ``[3, 32, 32]`` image in [0, 1]
   units; ``rms`` is the per-value size, ``eps / sqrt(3072)``), projected gradient
   ascent (Madry et al. 2018, "Towards Deep Learning Models Resistant to
   Adversarial Attacks", L2 PGD, ``--pgd-steps`` steps of ``2.5 · eps / steps``)
   moves each wrong image to raise the reward. ``flipped``: of the pairs the
   reward ranked right, how many it ranks wrong after the move. ``flipped_random``
   is the same for a move of the same L2 size in a random direction (seeded): a
   reward that flips under the attack but not under noise has adversarial
   directions, not just noise.
4. ``judge_wrong_flipped``: of the moved wrong images that flipped the reward, how
   many the world's held-out judge still fails (the move did not make the image
   right; GenEval-style checks of :mod:`r0kit.mini.judge`). ``moved_l2`` is the
   mean L2 size of the attack's moves (at most ``eps``; less where [0, 1] stops it).

Each reward is attacked alone, in the direction R0 climbs it (a negative weight
turns it around); the weights' sizes, ``normalize_gradients`` and the
regularizers do not enter. A reward with weight 0, or without a gradient, is
left out.

A prompt-blind reward (the aesthetic head) ranks the pairs near chance, as it
should; its ``flipped`` says only how easily its score moves.

A reward that flips at an rms far below what the eye or the judge notices gives
R0 gradients that need not point toward the judge.

Writes ``--out`` (CSV, one row per reward and budget).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

TABLE = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "mini_reward_robustness_cpu.csv"
DEFAULT_EPS = (0.0, 0.25, 0.5, 1.0, 2.0)


def pairs(prompts: list[str], per_prompt: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``(right, wrong, prompts)``: ``[N, 3, 32, 32]`` renders in [0, 1] of each prompt's scenes and of the same
    scenes with one stated attribute contradicted, ``N = len(prompts) · per_prompt``.

    :raises ValueError: no prompts, or ``per_prompt < 1``.
    """
    from r0kit.mini import world as W

    if not prompts or per_prompt < 1:
        raise ValueError(f"pairs: need at least one prompt and per_prompt >= 1, got {len(prompts)} prompt(s), per_prompt={per_prompt}")
    rng = np.random.default_rng(seed)
    good, bad, rows = [], [], []
    for p in prompts:
        for _ in range(per_prompt):
            scene = W.scene_for_prompt(p, rng)
            good.append(W.render(scene))
            bad.append(W.render(W.mutate(scene, rng)))
            rows.append(p)
    as_tensor = lambda xs: torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float().contiguous()  # noqa: E731
    return as_tensor(good), as_tensor(bad), rows


def reward_values(term, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """``[N]``, ``term``'s reward of ``images`` in the direction R0 climbs it (its value, negated for a negative
    weight; the weight's size does not enter), differentiable, through the objective's own preprocessing and checks.

    :raises ValueError: ``term`` has weight 0 (R0 does not climb it).
    """
    from r0kit.generator import Sample
    from r0kit.objective import Objective

    if term.weight == 0:
        raise ValueError(f"reward {term.label!r} has weight 0: R0 does not climb it, so it has no direction to attack")
    unit = replace(term, weight=1.0 if term.weight > 0 else -1.0)
    return Objective([unit]).evaluate(Sample(images=images), prompts).total


def attack(term, images: torch.Tensor, prompts: list[str], eps: float, steps: int, batch_size: int = 64) -> torch.Tensor:
    """``images`` moved by L2 PGD (Madry et al. 2018) to raise ``term``'s reward (:func:`reward_values`): ``steps``
    steps of ``2.5 · eps / steps`` along the normalized gradient, each image kept in [0, 1] and within ``eps`` (L2 over
    the image, [0, 1] units) of where it started; the last iterate. ``eps = 0`` returns ``images`` unchanged.

    :raises ValueError: ``images`` is empty or its length differs from ``prompts``; ``eps`` is not finite and >= 0;
        ``steps`` or ``batch_size`` is below 1.
    """
    if len(images) == 0 or len(images) != len(prompts):
        raise ValueError(f"attack: need one prompt per image, got {len(images)} image(s) and {len(prompts)} prompt(s)")
    if not (math.isfinite(eps) and eps >= 0) or steps < 1 or batch_size < 1:
        raise ValueError(f"attack: eps must be finite and >= 0, steps and batch_size >= 1; got {eps}, {steps}, {batch_size}")
    if eps == 0:
        return images.clone()
    out = []
    for start in range(0, len(images), batch_size):
        x, rows = images[start:start + batch_size], prompts[start:start + batch_size]
        delta = torch.zeros_like(x)
        for _ in range(steps):
            delta.requires_grad_(True)
            (g,) = torch.autograd.grad(reward_values(term, x + delta, rows).sum(), delta)
            g = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            delta = delta.detach() + 2.5 * eps / steps * g
            delta = (x + delta).clamp(0, 1) - x  # stay an image; this only shrinks the norm
            delta = delta * (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0).view(-1, 1, 1, 1)
        out.append((x + delta).detach())
    return torch.cat(out)


@dataclass
class Row:
    reward: str
    eps: float
    rms: float
    moved_l2: float
    pairs: int
    clean_acc: float
    ranked_right: int
    flipped: float
    flipped_random: float
    judge_wrong_flipped: float


def robustness(config: Path | None, eps: tuple[float, ...], pgd_steps: int, per_prompt: int, seed: int = 0,
               prompts: list[str] | None = None, say=print) -> list[Row]:
    """One :class:`Row` per reward of ``config`` and budget in ``eps`` (the module docstring says what each holds);
    ``prompts`` defaults to the world's 40 held-out evaluation prompts. A reward with weight 0, or one whose
    contract says it has no gradient, is left out with a line through ``say``. Shares are NaN where their
    denominator is empty (no pair ranked right, no pair flipped).

    :raises ValueError: ``prompts`` is empty, ``per_prompt < 1``, or no reward of ``config`` can be attacked.
    :raises R0kitError: a reward fails to load or to score (its message names the fix).
    """
    from r0kit.commands._common import config_rewards
    from r0kit.mini import judge as J
    from r0kit.mini import world as W

    good, bad, rows = pairs(W.evaluation_prompts("heldout") if prompts is None else prompts, per_prompt, seed)
    terms, path = config_rewards(config)
    attackable = []
    for term in terms:
        if term.weight == 0:
            say(f"{term.label}: weight 0 in {path}, so R0 does not climb it; left out")
        elif term.contract is not None and not term.contract.differentiable:
            say(f"{term.label}: its contract says it has no gradient, so R0 cannot climb it; left out")
        else:
            attackable.append(term)
    if not attackable:
        raise ValueError(f"{path}: no reward with a nonzero weight and a gradient to attack")
    direction = torch.randn(bad.shape, generator=torch.Generator().manual_seed(seed))
    direction = direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    share = lambda m, of: float(m.sum() / of.sum()) if of.any() else math.nan  # noqa: E731
    out = []
    for term in attackable:
        with torch.no_grad():
            r_good, r_bad = reward_values(term, good, rows), reward_values(term, bad, rows)
        right = r_good > r_bad
        for e in eps:
            moved = attack(term, bad, rows, e, pgd_steps)
            with torch.no_grad():
                r_moved = reward_values(term, moved, rows)
                r_noised = reward_values(term, (bad + e * direction).clamp(0, 1), rows)
            flipped = right & (r_moved > r_good)
            flipped_random = right & (r_noised > r_good)
            judged_wrong = torch.tensor([not v["correct"] for v in J.score(rows, moved)])
            out.append(Row(term.label, e, e / math.sqrt(good[0].numel()), float((moved - bad).flatten(1).norm(dim=1).mean()),
                           len(rows), float(right.float().mean()), int(right.sum()), share(flipped, right),
                           share(flipped_random, right), share(judged_wrong & flipped, flipped)))
    return out


def budgets(text: str) -> tuple[float, ...]:
    """``--eps``: comma-separated L2 budgets, each finite, >= 0 and at most the largest move an image can make
    (``sqrt(3 · 32 · 32)``); duplicates dropped, ``-0`` read as 0.

    :raises argparse.ArgumentTypeError: naming the item that is not such a number.
    """
    limit = math.sqrt(3 * 32 * 32)
    out: list[float] = []
    for item in text.split(","):
        try:
            e = float(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item.strip()!r} in {text!r} is not a number; give comma-separated numbers such as 0,0.5,1") from None
        if not (math.isfinite(e) and 0 <= e <= limit):
            raise argparse.ArgumentTypeError(f"{item.strip()!r} in {text!r} must be finite, >= 0 and <= {limit:.1f} "
                                             f"(an image in [0, 1] moves at most that far in L2)")
        e = abs(e)
        if e not in out:
            out.append(e)
    return tuple(out)


def main(argv: list[str] | None = None) -> int:
    from r0kit.commands._common import committed_table, config_rewards, int_at_least, write_table

    default_eps = ",".join(f"{e:g}" for e in DEFAULT_EPS)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path,
                   help="a train config (TOML, or a train preset's name) whose [objective] rewards to test, each alone; its "
                        "weights' sizes, normalize_gradients and regularizers do not enter (default the mini preset)")
    p.add_argument("--eps", type=budgets, default=budgets(default_eps),
                   help=f"comma-separated L2 budgets over the [3, 32, 32] image in [0, 1] units; the per-value rms is "
                        f"eps / sqrt(3072), so 1 is an rms of 0.018, about 4.6 levels of 255 (default {default_eps})")
    p.add_argument("--pgd-steps", type=int_at_least(1), default=10, help="gradient steps per attack (default 10)")
    p.add_argument("--pairs", type=int_at_least(1), default=3, help="scenes per held-out prompt (default 3: 120 pairs)")
    p.add_argument("--threads", type=int_at_least(1), default=2, help="torch CPU threads (default 2)")
    p.add_argument("--out", type=Path, help=f"the CSV to write (default {TABLE.relative_to(TABLE.parents[2])}, which a "
                                            "run with the defaults rewrites)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out file outside benchmarks/results (without it the run is refused)")
    args = p.parse_args(argv)
    from r0kit.commands.optimize import preset_path
    from r0kit.errors import R0kitError

    try:  # everything the user typed, before a model loads
        _, path = config_rewards(args.config, load=False)
        if path.resolve() == preset_path("mini").resolve():
            args.config = None  # the default preset, however it was named
        args.out = committed_table(p, args, ("config", "eps", "pgd_steps", "pairs"), TABLE)
    except R0kitError as exc:
        p.error(str(exc))
    torch.set_num_threads(args.threads)
    try:
        rows = robustness(args.config, args.eps, args.pgd_steps, args.pairs)
    except (R0kitError, ValueError) as exc:
        p.exit(1, f"{p.prog}: error: {exc}\n")
    write_table(args.out, [asdict(r) for r in rows])
    steps = f"{args.pgd_steps} step{'s' if args.pgd_steps != 1 else ''}"
    print(f"{rows[0].pairs} (right, wrong) render pairs; L2 PGD with {steps} on the wrong image; flipped and random are shares "
          f"of the pairs ranked right, judge_wrong of the flipped ones")
    print(f"{'reward':>10} {'eps':>5} {'rms':>7} {'clean_acc':>9} {'right':>5} {'flipped':>8} {'random':>7} {'judge_wrong':>11}")
    for r in rows:
        print(f"{r.reward:>10} {r.eps:5g} {r.rms:7.4f} {r.clean_acc:9.3f} {r.ranked_right:5d} {r.flipped:8.3f} "
              f"{r.flipped_random:7.3f} {r.judge_wrong_flipped:11.3f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
