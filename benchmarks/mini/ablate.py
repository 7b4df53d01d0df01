"""R0's ablations in miniature, on the mini world, with several seeds each.

    python benchmarks/mini/ablate.py                 # everything, as committed (24.4 minutes on 2 CPU cores)
    python benchmarks/mini/ablate.py --only gradnorm --steps 150 --out /tmp/ablate   # other settings need --out

Every run starts from the mini preset (``r0kit/presets/mini.toml``: R0 with the world's
three rewards, normalized gradients, random η, weight-L2, LoRA) and changes one thing:

==============  ======================================================  =================
study           arms                                                    R0 paper
==============  ======================================================  =================
gradnorm        normalized vs raw reward gradients                      Fig. 8
rewards         HPS only; HPS + CLIP; HPS + CLIP + aesthetic            Fig. 9-10
regularization  weight-L2 λ = 0 / 1e-3 / 1e-1; random η off             Fig. 11
supervision     R0 vs R0+ (intermediate x̂₀ supervision)                Fig. 12
lora            LoRA (rank 16) vs full fine-tuning                       —
reno            noise optimization (ReNO) vs best-of-N at equal time    ReNO, Sec. 5
==============  ======================================================  =================

Each trained generator is judged on the held-out prompts (colour-shape pairs never
seen in training) by the world's judge, which is never optimized: GenEval-style
accuracy, FID in the judge CNN's feature space and diversity across seeds. The
training reward (the objective's rewards on the training batches, mean of the last
10 logged steps) is reported beside it, so reward hacking shows as reward up with
judge or diversity down.

Writes ``benchmarks/results/mini_ablations_<device>.csv`` (one row per run),
``mini_ablations_<device>.md`` (mean ± std over seeds per arm, each claim's verdict),
and ``mini_ablations_<device>_*.png`` (curves).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("R0KIT_DISABLE_AUTOLOAD", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
STUDIES = ("gradnorm", "rewards", "regularization", "supervision", "lora", "reno")


@dataclass
class Arm:
    study: str
    name: str
    change: Callable[[dict[str, Any]], None] = lambda cfg: None


def _no_norm(c):
    c["objective"]["normalize_gradients"] = False


def _only(*names):
    def change(c):
        c["objective"]["rewards"] = {k: v for k, v in c["objective"]["rewards"].items() if k in names}

    return change


def _l2(w):
    def change(c):
        c["objective"]["regularizers"]["weight_l2"]["weight"] = w

    return change


def _eta_off(c):
    c["generator"]["eta"] = [0.0, 0.0]


def _plus(c):
    c["generator"]["intermediate_supervision"] = True


def _full(c):
    c["generator"]["train"] = "full"
    c["optimizer"]["lr"] = 1e-4


ARMS = [
    Arm("gradnorm", "normalized (R0)"),
    Arm("gradnorm", "raw gradients", _no_norm),
    Arm("rewards", "HPS", _only("hpsv2")),
    Arm("rewards", "HPS + CLIP", _only("hpsv2", "clip")),
    Arm("rewards", "HPS + CLIP + aesthetic (R0)"),
    Arm("regularization", "λ = 0", _l2(0.0)),
    Arm("regularization", "λ = 1e-3 (R0)"),
    Arm("regularization", "λ = 1e-1", _l2(1e-1)),
    Arm("regularization", "random η off", _eta_off),
    Arm("supervision", "R0"),
    Arm("supervision", "R0+", _plus),
    Arm("lora", "LoRA rank 16 (R0)"),
    Arm("lora", "full fine-tuning", _full),
]
#: Arms that are the mini preset unchanged: trained once per seed and shared between studies.
DEFAULT_ARMS = {"normalized (R0)", "HPS + CLIP + aesthetic (R0)", "λ = 1e-3 (R0)", "R0", "LoRA rank 16 (R0)"}


@dataclass
class Run:
    study: str
    arm: str
    seed: int
    values: dict[str, float] = field(default_factory=dict)
    curve: list[dict[str, float]] = field(default_factory=list)


def base_config(steps: int) -> dict[str, Any]:
    from r0kit.commands.optimize import preset_path
    from r0kit.config import load_toml

    path = preset_path("mini")
    data = load_toml(path)
    data["prompts_file"] = str(path.parent / data["prompts_file"])
    data["steps"] = steps
    data.pop("evaluate", None)
    data["log_every"] = 5
    return data


def heldout_prompts() -> list[str]:
    from r0kit.mini import world

    return world.evaluation_prompts("heldout")


def judge(gen, prompts: list[str], *, seeds: int, metrics: dict[str, Any]) -> dict[str, float]:
    """The world's judge on the generator's η = 0 samples of ``prompts`` (``seeds`` each, fixed noise)."""
    from r0kit.evaluate import _generate, compute_metrics

    row = [p for p in prompts for _ in range(seeds)]
    was = gen.training
    images = _generate(gen, row, 1000, 16)
    gen.train(was)
    return compute_metrics(metrics, images, row)


def train_arm(cfg: dict[str, Any], seed: int, out: Path, prompts: list[str], metrics, *, curve_every: int) -> Run:
    from r0kit.objective import generator as build_generator
    from r0kit.train import parse_train, train

    cfg = json.loads(json.dumps(cfg))
    cfg["seed"] = seed
    cfg["output"] = str(out)
    cfg["generator"]["init_seed"] = seed
    tc = parse_train(cfg, "ablation")
    opts = tc.generator.options()
    opts["device"] = "cpu"
    gen = build_generator(tc.generator.name, **opts)
    run = Run("", "", seed)
    t0 = time.perf_counter()
    paused = 0.0

    def callback(step: int, values: dict[str, float]) -> None:
        nonlocal paused
        if curve_every and step % curve_every == 0:
            t = time.perf_counter()
            trained = t - t0 - paused  # seconds of training so far, the judging excluded
            j = judge(gen, prompts[::2], seeds=1, metrics={k: v for k, v in metrics.items() if k == "mini_geneval"})
            paused += time.perf_counter() - t
            run.curve.append({"step": step, "seconds": trained, **j})

    result = train(tc, generator=gen, callback=callback, overwrite=True)
    seconds = time.perf_counter() - t0 - paused
    rewards = [t for t in tc.objective.rewards]
    tail = result.history[-10:]
    run.values = {f"train/{r}": statistics.fmean(h[r] for h in tail) for r in rewards if r in tail[-1]}
    run.values["train/loss"] = statistics.fmean(h["loss"] for h in tail)
    run.values["seconds"] = seconds
    gen.eval()
    run.values.update(judge(gen, prompts, seeds=2, metrics=metrics))
    return run


def reno_study(prompts: list[str], seeds: list[int], steps: int) -> list[Run]:
    """ReNO (noise optimization, ``steps`` SGD steps) against best-of-N sampling of the same frozen
    4-step base model, N chosen so that both take the same wall-clock time; judged on the result."""
    import r0kit
    from r0kit.config import build_objective, load_toml, parse_objective
    from r0kit.commands.optimize import preset_path
    from r0kit.mini import judge as J
    from r0kit.optimize import optimize

    preset = load_toml(preset_path("reno_mini"))
    objective = build_objective(parse_objective(preset["objective"], "reno_mini"))
    gen = r0kit.generator("noise", model="r0kit-mini", steps=4, device="cpu")
    runs = []
    for seed in seeds:
        t0 = time.perf_counter()
        res = optimize(objective, gen, prompts, steps=steps, seed=seed, lr=5.0, grad_clip=0.1, progress=False)
        t_reno = time.perf_counter() - t0
        reno_acc = J.accuracy(J.score(prompts, res.images))["correct"]
        # the single first sample of the same seeds: what ReNO starts from
        gen.prepare(prompts, seed)
        with torch.no_grad():
            start = gen.sample(prompts).images
        start_acc = J.accuracy(J.score(prompts, start))["correct"]
        # best-of-N: candidates drawn with other seeds, the best by the same objective, until ReNO's time is used
        t1 = time.perf_counter()
        best_val = torch.full((len(prompts),), -float("inf"))
        best_img = start.clone()
        n = 0
        while time.perf_counter() - t1 < t_reno:
            gen.prepare(prompts, seed + 1000 * (n + 1))
            with torch.no_grad():
                s = gen.sample(prompts)
                v = objective.evaluate(s, prompts, gen)
            reward = sum(v.weights[t.label] * v.terms[t.label] for t in objective.rewards)
            better = reward > best_val
            best_val = torch.where(better, reward, best_val)
            best_img[better] = s.images[better]
            n += 1
        bon_acc = J.accuracy(J.score(prompts, best_img))["correct"]
        for arm, acc, extra in (("single sample", start_acc, {}), (f"ReNO ({steps} steps)", reno_acc, {"seconds": t_reno}),
                                ("best-of-N, same time", bon_acc, {"seconds": time.perf_counter() - t1, "N": n})):
            runs.append(Run("reno", arm, seed, {"geneval": acc, **extra}))
    return runs


def summarize(runs: list[Run]) -> dict[tuple[str, str], dict[str, tuple[float, float, int]]]:
    out: dict[tuple[str, str], dict[str, tuple[float, float, int]]] = {}
    groups: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.study, r.arm), []).append(r)
    for key, rs in groups.items():
        keys = sorted({k for r in rs for k in r.values})
        out[key] = {}
        for k in keys:
            vals = [r.values[k] for r in rs if k in r.values]
            out[key][k] = (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals))
    return out


def verdict(a: tuple[float, float, int], b: tuple[float, float, int], *, higher: bool = True) -> str:
    """Whether arm ``a`` beats arm ``b`` by more than the seed spread (the larger of the two stds).

    ``a`` and ``b`` are ``(mean, std, seeds)``; with fewer than 2 seeds on a side there is no spread to
    compare the difference with, so the verdict is inconclusive whatever the difference.
    """
    if min(a[2], b[2]) < 2:
        return "inconclusive (one seed: no spread to compare with)"
    diff = (a[0] - b[0]) if higher else (b[0] - a[0])
    spread = max(a[1], b[1])
    if diff > spread and diff > 0:
        return "reproduces"
    if -diff > spread:
        return "does not reproduce"
    return "inconclusive at this scale"


def main(argv: list[str] | None = None) -> int:
    from r0kit.commands._common import committed_table, int_at_least

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int_at_least(1), default=3)
    p.add_argument("--steps", type=int_at_least(1), default=100, help="R0 training steps per run")
    p.add_argument("--only", nargs="+", choices=STUDIES, help="studies to run (default all)")
    p.add_argument("--reno-steps", type=int_at_least(1), default=20)
    p.add_argument("--threads", type=int_at_least(1), default=2)
    p.add_argument("--out", type=Path, help=f"the folder to write (default {RESULTS}, the committed tables, which only the "
                   "default --seeds, --steps and --reno-steps may write; --only replaces its own studies' rows there)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an --out folder outside benchmarks/results that holds an earlier run's files "
                   "(without it the run is refused); with --only, that table keeps the other studies' rows")
    args = p.parse_args(argv)
    if args.out is not None and args.out.is_file():
        p.error(f"--out {str(args.out)!r} is a file; give a folder for the tables and plots")
    args.out = committed_table(p, args, ("seeds", "steps", "reno_steps"), RESULTS, writes=written_files)
    torch.set_num_threads(args.threads)
    from r0kit.evaluate import build_metrics

    studies = args.only or list(STUDIES)
    prompts = heldout_prompts()
    metrics = build_metrics(["mini_geneval", "mini_fid", "mini_diversity"])
    cfg = base_config(args.steps)
    seeds = list(range(args.seeds))
    runs: list[Run] = []
    t_all = time.perf_counter()
    cache: dict[tuple[str, int], Run] = {}
    with tempfile.TemporaryDirectory(prefix="r0kit-ablate-") as tmp:
        for arm in [a for a in ARMS if a.study in studies]:
            for seed in seeds:
                key = ("default" if arm.name in DEFAULT_ARMS else arm.name, seed)
                # R0's curves are drawn for the supervision study; the shared default arm draws them whenever it runs
                curve = arm.study == "supervision" or (key[0] == "default" and "supervision" in studies)
                if key not in cache or (curve and not cache[key].curve):
                    c = json.loads(json.dumps(cfg))
                    arm.change(c)
                    t = time.perf_counter()
                    cache[key] = train_arm(c, seed, Path(tmp) / f"{len(cache)}", prompts, metrics,
                                           curve_every=max(1, args.steps // 6) if curve else 0)
                    print(f"{arm.study:15s} {arm.name:30s} seed {seed}: geneval {cache[key].values['geneval']:.3f} "
                          f"({time.perf_counter() - t:.0f}s)", flush=True)
                src = cache[key]
                runs.append(Run(arm.study, arm.name, seed, dict(src.values), list(src.curve)))
        if "reno" in studies:
            runs += reno_study(prompts[::2], seeds, args.reno_steps)
    total = time.perf_counter() - t_all
    write_results(runs, args, total)
    return 0


def _device() -> str:
    return "cpu"


def written_files(out: Path) -> list[Path]:
    """What a run writes into the folder ``out``: the table, its Markdown summary and the supervision plot."""
    stem = out / f"mini_ablations_{_device()}"
    return [stem.with_suffix(".csv"), stem.with_suffix(".md"), Path(str(stem) + "_supervision.png")]


def kept_runs(path: Path, studies: set[str]) -> list[Run]:
    """The rows of ``path`` (an earlier run's CSV) for studies other than ``studies``: a run with
    ``--only`` replaces its own studies' rows and keeps the others'."""
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [
        Run(r["study"], r["arm"], int(r["seed"]), {k: float(v) for k, v in r.items() if k not in ("study", "arm", "seed") and v})
        for r in rows
        if r["study"] not in studies
    ]


def write_results(runs: list[Run], args, total: float) -> None:
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    table, summary_md, plot = written_files(out)
    studies = list(dict.fromkeys(r.study for r in runs))
    kept = kept_runs(table, set(studies))
    runs = kept + runs
    keys = sorted({k for r in runs for k in r.values})
    with open(table, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["study", "arm", "seed", *keys])
        for r in runs:
            w.writerow([r.study, r.arm, r.seed, *(f"{r.values[k]:.6g}" if k in r.values else "" for k in keys)])
    summary = summarize(runs)
    lines = [
        f"# Mini-world ablations ({_device()}, {platform.processor() or platform.machine()}, torch {torch.__version__})",
        "",
        f"`python benchmarks/mini/ablate.py --seeds {args.seeds} --steps {args.steps}"
        + (f" --only {' '.join(args.only)}" if args.only else "")
        + f"`: {', '.join(studies)}, {total / 60:.1f} min"
        + (f"; {', '.join(dict.fromkeys(r.study for r in kept))} kept from the CSV's earlier run" if kept else "")
        + ". Mean ± std over seeds; judged on the held-out prompts (40 prompts × 2 seeds) by the world's judge, never optimized.",
        "",
    ]
    cols = ["geneval", "geneval/colour", "geneval/shape", "geneval/position", "geneval/count", "geneval/relation", "fid",
            "diversity", "train/hpsv2", "train/clip", "train/aesthetic", "seconds"]
    for study in dict.fromkeys(r.study for r in runs):
        arms = [a for (s, a) in summary if s == study]
        present = [c for c in cols + ["N"] if any(c in summary[(study, a)] for a in arms)]
        lines += [f"## {study}", "", "| arm | " + " | ".join(present) + " |", "|---" * (len(present) + 1) + "|"]
        for a in arms:
            cells = []
            for c in present:
                m = summary[(study, a)].get(c)
                cells.append("" if m is None else f"{m[0]:.3g} ± {m[1]:.2g}")
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Claims", ""] + claims(summary)
    summary_md.write_text("\n".join(lines) + "\n")
    wrote = [table, summary_md] + ([plot] if plot_curves(runs, plot) else [])
    print("\n".join(lines))
    print("wrote " + ", ".join(str(f) for f in wrote))


def claims(s) -> list[str]:
    def get(study, arm, key):
        return s.get((study, arm), {}).get(key)

    out = []

    def claim(text, a, b, higher=True):
        if a is None or b is None:
            return
        out.append(f"- {text}: {verdict(a, b, higher=higher)} ({a[0]:.3f} ± {a[1]:.3f} vs {b[0]:.3f} ± {b[1]:.3f}).")

    claim("Normalized reward gradients beat raw ones on the held-out judge (Fig. 8)",
          get("gradnorm", "normalized (R0)", "geneval"), get("gradnorm", "raw gradients", "geneval"))
    claim("Three rewards beat HPS alone on the judge (Fig. 9-10)",
          get("rewards", "HPS + CLIP + aesthetic (R0)", "geneval"), get("rewards", "HPS", "geneval"))
    claim("Two rewards beat HPS alone on the judge",
          get("rewards", "HPS + CLIP", "geneval"), get("rewards", "HPS", "geneval"))
    claim("Weight-L2 (λ = 1e-3) keeps diversity above λ = 0 (Fig. 11)",
          get("regularization", "λ = 1e-3 (R0)", "diversity"), get("regularization", "λ = 0", "diversity"))
    claim("Random η keeps the judge above η = 0 (Fig. 11)",
          get("regularization", "λ = 1e-3 (R0)", "geneval"), get("regularization", "random η off", "geneval"))
    claim("Random η keeps diversity above η = 0 (Fig. 11)",
          get("regularization", "λ = 1e-3 (R0)", "diversity"), get("regularization", "random η off", "diversity"))
    claim("A large λ (1e-1) holds the generator near the base: lower training HPS than λ = 1e-3",
          get("regularization", "λ = 1e-3 (R0)", "train/hpsv2"), get("regularization", "λ = 1e-1", "train/hpsv2"))
    claim("R0+ beats R0 on the judge at equal steps (Fig. 12)",
          get("supervision", "R0+", "geneval"), get("supervision", "R0", "geneval"))
    claim("R0+ trains faster per step (wall-clock)", get("supervision", "R0+", "seconds"), get("supervision", "R0", "seconds"),
          higher=False)
    claim("Full fine-tuning beats LoRA on the judge",
          get("lora", "full fine-tuning", "geneval"), get("lora", "LoRA rank 16 (R0)", "geneval"))
    reno = [a for (st, a) in s if st == "reno"]
    r = next((a for a in reno if a.startswith("ReNO")), None)
    claim("ReNO beats best-of-N at equal time on the judge", get("reno", r, "geneval"), get("reno", "best-of-N, same time", "geneval"))
    claim("ReNO beats its own starting sample on the judge", get("reno", r, "geneval"), get("reno", "single sample", "geneval"))
    return out


def plot_curves(runs: list[Run], path: Path) -> bool:
    """Draw R0 and R0+'s judge against steps and seconds into ``path``; False (nothing written) without supervision curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sup = [r for r in runs if r.study == "supervision" and r.curve]
    if not sup:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for arm, colour in (("R0", "tab:blue"), ("R0+", "tab:orange")):
        for r in [r for r in sup if r.arm == arm]:
            steps = [c["step"] for c in r.curve]
            acc = [c["geneval"] for c in r.curve]
            secs = [c["seconds"] for c in r.curve]
            label = arm if r.seed == 0 else None
            axes[0].plot(steps, acc, color=colour, alpha=0.7, label=label)
            axes[1].plot(secs, acc, color=colour, alpha=0.7, label=label)
    axes[0].set_xlabel("training step")
    axes[1].set_xlabel("seconds of training")
    for ax in axes:
        ax.set_ylabel("held-out GenEval accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("R0 vs R0+ on the mini world (one line per seed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


if __name__ == "__main__":
    sys.exit(main())
