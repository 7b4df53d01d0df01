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
4. ``judge_wrong``: of the moved wrong images, how many the world's held-out judge
   still fails (the move did not make the image right; GenEval-style checks of
   :mod:`r0kit.mini.judge`).

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
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

TABLE = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "mini_reward_robustness_cpu.csv"
DEFAULT_EPS = (0.0, 0.25, 0.5, 1.0, 2.0)


def pairs(prompts: list[str], per_prompt: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``(right, wrong, prompts)``: ``[N, 3, 32, 32]`` renders in [0, 1] of each prompt's scenes and of the same
    scenes with one stated attribute contradicted, ``N = len(prompts) · per_prompt``."""
    from r0kit.mini import world as W

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
    """``[N]``, ``term``'s unweighted reward of ``images``, differentiable (the objective's own preprocessing and checks)."""
    from r0kit.generator import Sample
    from r0kit.objective import Objective

    return Objective([term]).evaluate(Sample(images=images), prompts).total / term.weight


def attack(term, images: torch.Tensor, prompts: list[str], eps: float, steps: int, batch_size: int = 64) -> torch.Tensor:
    """``images`` moved by L2 PGD to raise ``term``'s reward: each by at most ``eps`` (L2 over the image, [0, 1]
    units), staying in [0, 1]. ``eps = 0`` returns ``images`` unchanged."""
    if eps <= 0 or steps < 1:
        return images.clone()
    out = []
    for x, rows in zip(images.split(batch_size), [prompts[i:i + batch_size] for i in range(0, len(prompts), batch_size)]):
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
    pairs: int
    clean_acc: float
    ranked_right: int
    flipped: float
    flipped_random: float
    judge_wrong: float


def robustness(config: Path | None, eps: tuple[float, ...], pgd_steps: int, per_prompt: int, seed: int = 0,
               prompts: list[str] | None = None) -> list[Row]:
    """One :class:`Row` per reward of ``config`` and budget in ``eps`` (the module docstring says what each holds);
    ``prompts`` defaults to the world's 40 held-out evaluation prompts."""
    from r0kit.mini import judge as J
    from r0kit.mini import world as W

    prompts = prompts or W.evaluation_prompts("heldout")
    good, bad, rows = pairs(prompts, per_prompt, seed)
    out = []
    from r0kit.commands._common import config_rewards

    terms, _ = config_rewards(config)
    for term in terms:
        with torch.no_grad():
            r_good, r_bad = reward_values(term, good, rows), reward_values(term, bad, rows)
        right = r_good > r_bad
        direction = torch.randn(bad.shape, generator=torch.Generator().manual_seed(seed))
        direction = direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        for e in eps:
            moved = attack(term, bad, rows, e, pgd_steps)
            with torch.no_grad():
                r_moved = reward_values(term, moved, rows)
                r_noised = reward_values(term, (bad + e * direction).clamp(0, 1), rows)
            flipped = right & (r_moved > r_good)
            flipped_random = right & (r_noised > r_good)
            verdicts = J.score(rows, moved)
            wrong = np.array([not v["correct"] for v in verdicts])
            share = lambda m: float(m.sum() / right.sum().clamp_min(1))  # noqa: E731
            out.append(Row(term.label, e, e / math.sqrt(good[0].numel()), len(rows), float(right.float().mean()), int(right.sum()),
                           share(flipped), share(flipped_random), float(wrong.mean())))
    return out


def main(argv: list[str] | None = None) -> int:
    from r0kit.commands._common import committed_table, config_rewards, int_at_least, write_table

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, help="a train config whose [objective] rewards to test (default the mini preset)")
    p.add_argument("--eps", default=",".join(f"{e:g}" for e in DEFAULT_EPS),
                   help=f"comma-separated L2 budgets over the image in [0, 1] units (default {','.join(f'{e:g}' for e in DEFAULT_EPS)})")
    p.add_argument("--pgd-steps", type=int_at_least(1), default=10, help="gradient steps per attack (default 10)")
    p.add_argument("--pairs", type=int_at_least(1), default=3, help="scenes per held-out prompt (default 3: 120 pairs)")
    p.add_argument("--threads", type=int_at_least(1), default=2)
    p.add_argument("--out", type=Path, help=f"the CSV to write (default {TABLE.relative_to(TABLE.parents[2])})")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out file outside benchmarks/results (without it the run is refused)")
    args = p.parse_args(argv)
    from r0kit.errors import R0kitError

    try:
        eps = tuple(float(e) for e in args.eps.split(","))
    except ValueError:
        p.error(f"--eps must be comma-separated numbers, got {args.eps!r}")
    if not all(math.isfinite(e) and e >= 0 for e in eps):
        p.error(f"--eps must be finite numbers >= 0, got {args.eps!r}")
    args.eps = ",".join(f"{e:g}" for e in eps)
    try:  # everything the user typed, before a model loads
        args.out = committed_table(p, args, ("config", "eps", "pgd_steps", "pairs"), TABLE)
        config_rewards(args.config, load=False)
    except R0kitError as exc:
        p.error(str(exc))
    torch.set_num_threads(args.threads)
    rows = robustness(args.config, eps, args.pgd_steps, args.pairs)
    write_table(args.out, [asdict(r) for r in rows])
    print(f"{rows[0].pairs} (right, wrong) render pairs; L2 PGD with {args.pgd_steps} steps on the wrong image")
    print(f"{'reward':>10} {'eps':>5} {'rms':>7} {'clean_acc':>9} {'flipped':>8} {'random':>7} {'judge_wrong':>11}")
    for r in rows:
        print(f"{r.reward:>10} {r.eps:5g} {r.rms:7.4f} {r.clean_acc:9.3f} {r.flipped:8.3f} {r.flipped_random:7.3f} {r.judge_wrong:11.3f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
