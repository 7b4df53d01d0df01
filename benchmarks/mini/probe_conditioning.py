"""How much does a base model listen to each word of a mini-world prompt?

    python benchmarks/mini/probe_conditioning.py                  # the committed r0kit-mini
    python benchmarks/mini/probe_conditioning.py --model PATH --samples 128

For single-object scenes that state a position and a size, each attribute's phrase
is swapped for a wrong one ("on the left" -> "on the right", "red" -> "blue", ...)
and the model's x̂₀ error on the true latents is measured at several timesteps,
same latents, same noise:

    gap(attribute, t) = E‖x̂₀(x_t, t, swapped prompt) − x₀‖² / E‖x̂₀(x_t, t, true prompt) − x₀‖² − 1

A model that uses the attribute has a clearly positive gap at high timesteps, where the
noisy latent no longer shows the layout and only the prompt can. A gap near 0 means the
attribute's words do not reach the prediction, so no sampler or reward can draw on
what the model does not condition on. The empty prompt's gap is printed beside them as
the size of "all of the prompt".

The same swaps then ask the world's CLIP (the HPS and CLIP rewards' backbone; the
pipeline's text encoder is its tower cut to the embeddings) which caption fits a clean
render better: the share of scenes where it prefers the true caption (0.5 = it cannot
tell the attribute apart).

Prints both tables and writes ``--out`` (CSV, one row per attribute and timestep) and
``<out stem>_clip.csv``.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from r0kit.diffusion import alphas_sigmas, load  # noqa: E402
from r0kit.mini import world as W  # noqa: E402

OTHER_POSITION = {"left": "right", "right": "left", "top": "bottom", "bottom": "top", "centre": "left"}


def swapped(scene: W.Scene, attribute: str) -> str:
    """``scene``'s prompt with ``attribute``'s phrase replaced by a wrong one (or ``""`` for ``"prompt"``)."""
    o = scene.objects[0]
    p = scene.prompt
    if attribute == "prompt":
        return ""
    if attribute == "position":
        return p.replace(W.POSITION_PHRASES[scene.position], W.POSITION_PHRASES[OTHER_POSITION[scene.position]])
    if attribute == "colour":
        return p.replace(o.colour, "blue" if o.colour != "blue" else "red")
    if attribute == "shape":
        return p.replace(o.shape, "circle" if o.shape != "circle" else "square")
    if attribute == "size":
        return p.replace(o.size, "large" if o.size == "small" else "small")
    raise ValueError(attribute)


@torch.no_grad()
def probe(model: str, samples: int, timesteps: list[int], seed: int) -> list[dict[str, float | str | int]]:
    m = load(model, device="cpu")
    rng = np.random.default_rng(seed)
    scenes: list[W.Scene] = []
    while len(scenes) < samples:
        sc = W.sample_scene(rng, "train", "single")
        if sc.position and "size" in sc.stated:
            scenes.append(sc)
    images = torch.from_numpy(W.render_batch(scenes)).float()
    x0 = m.encode_images(images)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    attributes = ("position", "size", "shape", "colour", "prompt")
    conds = {"true": m.encode_prompts([sc.prompt for sc in scenes])}
    for a in attributes:
        conds[a] = m.encode_prompts([swapped(sc, a) for sc in scenes])
    rows = []
    for t in timesteps:
        tt = torch.full((samples,), t)
        alpha, sigma = alphas_sigmas(m.scheduler, tt)
        alpha, sigma = alpha.view(-1, 1, 1, 1), sigma.view(-1, 1, 1, 1)
        x_t = alpha * x0 + sigma * noise
        err = {k: float(((m.predict(x_t, tt, c, alpha=alpha, sigma=sigma)[0] - x0) ** 2).mean()) for k, c in conds.items()}
        for a in attributes:
            rows.append(dict(timestep=t, attribute=a, mse_true=err["true"], mse_swapped=err[a], gap=err[a] / err["true"] - 1))
    return rows


@torch.no_grad()
def clip_preference(scenes_n: int, seed: int) -> dict[str, float]:
    """Per attribute, how often the world's CLIP scores a render's true caption above the swapped one."""
    import torch.nn.functional as F

    from r0kit.mini import build as B

    model, tokenize = B._loaded_clip(B.MODELS)
    rng = np.random.default_rng(seed + 4)
    scenes: list[W.Scene] = []
    while len(scenes) < scenes_n:
        sc = W.sample_scene(rng, "train", "single")
        if sc.position and "size" in sc.stated:
            scenes.append(sc)
    img = F.normalize(model.encode_image(B._clip_normalize(torch.from_numpy(W.render_batch(scenes)))).float(), dim=-1)

    def sim(prompts: list[str]) -> torch.Tensor:
        return (img * F.normalize(model.encode_text(tokenize(prompts)).float(), dim=-1)).sum(-1)

    true = sim([sc.prompt for sc in scenes])
    return {a: float((true > sim([swapped(sc, a) for sc in scenes])).float().mean()) for a in ("position", "size", "shape", "colour")}


def timesteps(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated timesteps, each a whole number in [0, 999] (spaces allowed)."""
    try:
        out = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers like 999,700,300, got {text!r}") from None
    if not out or not all(0 <= t <= 999 for t in out):
        raise argparse.ArgumentTypeError(f"timesteps must lie in [0, 999], got {text!r}")
    return out


#: The committed table (and its ``_clip.csv`` sibling), written by a run with the default options.
COMMITTED = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "mini_probe_conditioning_cpu.csv"


def clip_table(out: Path) -> Path:
    """The CLIP caption-preference table written beside ``out``."""
    return out.with_name(out.stem + "_clip.csv")


def main(argv: list[str] | None = None) -> int:
    from r0kit.commands._common import committed_table, int_at_least

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="r0kit-mini", help="the base pipeline to probe (default r0kit-mini)")
    p.add_argument("--samples", type=int_at_least(1), default=64, help="training scenes probed, each with every phrase swapped in turn (default 64)")
    p.add_argument("--timesteps", type=timesteps, default=(999, 900, 700, 500, 300),
                   help="comma-separated timesteps in [0, 999] (default 999,900,700,500,300)")
    p.add_argument("--seed", type=int_at_least(0), default=3, help="seed of the scenes and the noise (default 3)")
    p.add_argument("--out", type=Path, help="the CSV to write, with a _clip.csv beside it (default "
                   f"{COMMITTED}, the committed table, which only the default --model, --samples, --timesteps "
                   "and --seed may write)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out file (or its _clip.csv) outside benchmarks/results (without it the run is refused)")
    args = p.parse_args(argv)
    args.out = committed_table(p, args, ("model", "samples", "timesteps", "seed"), COMMITTED,
                               writes=lambda out: [out, clip_table(out)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    rows = probe(args.model, args.samples, list(args.timesteps), args.seed)
    with open(args.out, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    attrs = list(dict.fromkeys(r["attribute"] for r in rows))
    print("x̂₀-error gap when the phrase is swapped (0 = the model ignores it)")
    print(f"{'timestep':>8}  " + "  ".join(f"{a:>9}" for a in attrs))
    for t in dict.fromkeys(r["timestep"] for r in rows):
        print(f"{t:>8}  " + "  ".join(f"{r['gap']:>+9.3f}" for a in attrs for r in rows if r["timestep"] == t and r["attribute"] == a))
    prefer = clip_preference(300, args.seed)
    print("\nthe world's CLIP prefers the true caption over the swapped one (0.5 = chance), 300 scenes")
    print("  ".join(f"{a} {v:.2f}" for a, v in prefer.items()))
    clip_out = clip_table(args.out)
    with open(clip_out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["attribute", "true_caption_preferred"])
        w.writerows([a, f"{v:.6g}"] for a, v in prefer.items())
    print(f"wrote {args.out} and {clip_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
