"""Do the world's rewards agree with its judge on a generator's own samples?

    python benchmarks/mini/reward_agreement.py                         # r0kit-mini@4, CFG 3 (the demo's base)
    python benchmarks/mini/reward_agreement.py --source r0kit-demo/export --samples 8

R0 can only raise the held-out judge if the rewards it climbs rank the generator's
images the way the judge does. This measures that directly, with no training: for
each held-out prompt it draws ``--samples`` images (seeds ``1000 + i``), scores them
with the rewards of a training config's objective (default the ``mini`` preset's:
the world's HPS, CLIP score and aesthetic) and with the judge, and reports per reward

* ``corr``: the correlation of the reward with the judge's all-checks-pass, within
  prompts (each prompt's mean removed from both), over all images;
* ``best``: the judge's accuracy on each prompt's best image by that reward
  (best-of-N selection), beside ``mean`` (a random image) and ``oracle`` (some image
  of the prompt passes);
* the same best-of-N for each check (colour, shape, position, ...).

A reward whose best-of-N is no better than a random image gives R0 no direction
toward the judge; a reward whose best-of-N is worse points away from it.

Writes ``--out`` (CSV, one row per reward and check).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def default_out(split: str) -> Path:
    """Where a split's table goes unless ``--out`` says: one file per split, so a ``--split train`` run
    never overwrites the held-out table."""
    return Path(__file__).resolve().parents[2] / "benchmarks" / "results" / f"mini_reward_agreement_cpu{'_train' if split == 'train' else ''}.csv"


def agreement(source: str, samples: int, guidance: float, config: Path | None, split: str = "heldout", seed: int = 1000) -> list[dict[str, object]]:
    from r0kit.commands._common import config_rewards
    from r0kit.evaluate import _build_generator, _generate, parse_source, source_kind
    from r0kit.mini import judge as J
    from r0kit.mini import world as W
    from r0kit.score import score_tensor

    prompts = W.evaluation_prompts(split)  # type: ignore[arg-type]
    base, steps = parse_source(source)
    gen = _build_generator(base, source_kind(base), steps=steps or 4, size=None, device="cpu", guidance=guidance)
    row = [p for p in prompts for _ in range(samples)]
    images = _generate(gen, row, seed, 64)
    terms, _ = config_rewards(config)
    scores = {k: v.view(len(prompts), samples) for k, v in score_tensor(images, row, terms, batch_size=64).items()}
    results = J.score(row, images)
    checks = [c for c in J.CHECKS if any(c in r for r in results)]

    def passed(check: str) -> np.ndarray:  # [P, N], NaN where the prompt does not state the check
        return np.array([r.get(check, np.nan) for r in results], dtype=float).reshape(len(prompts), samples)

    out = []
    for label, s in scores.items():
        s = s.numpy()
        pick = s.argmax(1)
        for check in checks:
            ok = passed(check)
            stated = ~np.isnan(ok[:, 0])
            best = ok[np.arange(len(prompts)), pick][stated]
            ds, dk = (s - s.mean(1, keepdims=True))[stated].ravel(), (ok - ok.mean(1, keepdims=True))[stated].ravel()
            corr = float(np.corrcoef(ds, dk)[0, 1]) if ds.std() > 0 and dk.std() > 0 else float("nan")
            out.append({"source": source, "split": split, "reward": label, "check": check, "prompts": int(stated.sum()), "samples": samples,
                        "mean": float(ok[stated].mean()), "best": float(best.mean()),
                        "oracle": float((ok[stated] > 0).any(1).mean()), "corr": corr})
    return out


def main(argv: list[str] | None = None) -> int:
    from r0kit.commands._common import committed_table, config_rewards, finite_float, int_at_least, write_table

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default="r0kit-mini@4", help="MODEL@K or an exported generator (default r0kit-mini@4)")
    p.add_argument("--samples", type=int_at_least(2), default=8,
                   help="images per held-out prompt, at least 2 for a within-prompt correlation (default 8)")
    p.add_argument("--guidance", type=finite_float, default=3.0, help="CFG scale for a MODEL@K source (default 3, the demo's)")
    p.add_argument("--config", type=Path, help="a train config whose [objective] rewards to use (default the mini preset)")
    p.add_argument("--split", choices=("heldout", "train"), default="heldout",
                   help="the prompts: held-out colour-shape pairs (default) or training ones")
    p.add_argument("--threads", type=int_at_least(1), default=2)
    p.add_argument("--out", type=Path, help="the CSV to write (default benchmarks/results/mini_reward_agreement_cpu.csv, "
                   "or ..._cpu_train.csv for --split train, so the two splits never overwrite each other)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out file outside benchmarks/results (without it the run is refused)")
    args = p.parse_args(argv)
    from r0kit.diffusion import check_guidance_scale
    from r0kit.errors import R0kitError
    from r0kit.evaluate import parse_source, source_kind

    try:  # everything the user typed, before a model loads
        check_guidance_scale(args.guidance, "--guidance")
        args.out = committed_table(p, args, ("source", "config", "samples", "guidance"), default_out(args.split))
        base, _ = parse_source(args.source)
        if source_kind(base) == "images":
            p.error(f"--source {args.source!r} is a folder of images; give MODEL@K or an exported generator")
        config_rewards(args.config, load=False)
    except R0kitError as exc:
        p.error(str(exc))
    torch.set_num_threads(args.threads)
    try:
        rows = agreement(args.source, args.samples, args.guidance, args.config, args.split)
    except R0kitError as exc:  # a model or reward that fails to load: its message names the fix
        p.exit(1, f"{p.prog}: error: {exc}\n")
    write_table(args.out, rows)
    print(f"{args.source}: {args.samples} samples per {args.split} prompt; best-of-N by each reward vs a random image (mean)")
    print(f"{'reward':>10} {'check':>9} {'mean':>6} {'best':>6} {'oracle':>6} {'corr':>6}")
    for r in rows:
        print(f"{r['reward']:>10} {r['check']:>9} {r['mean']:6.3f} {r['best']:6.3f} {r['oracle']:6.3f} {r['corr']:+6.3f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
