"""One test-time optimization step of the ``noise`` generator: time and peak memory.

Two providers run the same work, alternating in rounds so that a shared machine's
load hits both alike:

``r0kit``  :func:`r0kit.optimize.optimize` with the ``noise`` generator and an
           :class:`~r0kit.objective.Objective` (contract preprocessing, per-step
           history, best iterate, NaN checks).
``torch``  the same loop written by hand in plain torch and diffusers: the UNet,
           the x̂₀ conversion, the VAE decode, the rewards, the noise-norm penalty,
           ``backward``, gradient clipping, SGD-Nesterov and the best iterate.

The difference is r0kit's framework overhead (goal: within 5 %).

Modes
-----
``--mode cpu`` (default off CUDA)
    the tiny random-weight pipeline of ``r0kit.testing.pipelines``, written to a
    temporary folder and loaded by path, at 32 px, with the four weight-free
    analytic rewards.
``--mode gpu``
    SD-Turbo-size architectures with random weights built from their configs
    (UNet2DConditionModel with SD 2.1 dims, the SD AutoencoderKL, a CLIP text
    encoder with OpenCLIP ViT-H dims), fp16, 512 px, one step, four rewards. The
    rewards are the registered ReNO rewards (hpsv2, imagereward, clip, pickscore)
    when they build here; otherwise four random-weight CLIP vision towers of the
    same sizes (ViT-H/14 ×2, ViT-L/14 ×2) behind 224-px contracts (``proxy``);
    ``--rewards analytic`` uses the weight-free ones. The CSV says which.
    Goal: ≤ 0.25 s an iteration on an H100 and ≤ 10 GB peak. Needs only torch,
    diffusers, transformers (and r0kit on the path); run it with::

        python benchmarks/optimize/bench_step.py --mode gpu

``--arch sd3-medium`` / ``--arch flux-schnell``
    the rectified-flow transformers at their real size (2.0B and 12B parameters,
    16-channel VAE; one-layer text-encoder stand-ins with the real widths, see
    ``r0kit.testing.pipelines.architecture_model``), bfloat16, one step, at each
    ``--size`` (comma-separated, e.g. ``512,1024``). Only the ``r0kit`` provider:
    the by-hand loop is the UNet's. On the CPU, ``--arch tiny-sd3`` / ``tiny-flux``
    run the tiny pipelines::

        python benchmarks/optimize/bench_step.py --mode gpu --arch sd3-medium --size 512,1024
        python benchmarks/optimize/bench_step.py --mode gpu --arch flux-schnell --size 512,1024

On the CPU the step time is the process's CPU time (``time.process_time``), with
one torch thread by default, so that other jobs on a shared machine do not drown
a few-percent difference; on CUDA it is wall time after a synchronize.

Rows are appended to ``benchmarks/results/optimize_<device>.csv`` with the
device, versions, date and the p20/p50/p80 step time.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

try:
    import pluggy  # noqa: F401  (r0kit's only non-torch dependency on this path; pure Python)
except ImportError:
    sys.exit("bench_step: r0kit needs pluggy (pure Python): pip install pluggy, or put its folder on PYTHONPATH")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "plugins"))
os.environ.setdefault("R0KIT_DISABLE_AUTOLOAD", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # reward weights come from the local cache or not at all

import r0kit  # noqa: E402
from r0kit.diffusion import DiffusionModel, load  # noqa: E402
from r0kit.objective import Term  # noqa: E402
from r0kit.optimize import optimize  # noqa: E402

LUMA = (0.299, 0.587, 0.114)
RENO = (("hpsv2", 5.0), ("imagereward", 1.0), ("clip", 0.01), ("pickscore", 0.05))


# ---------------------------------------------------------------------------- models
def cpu_model(tmp: Path, device: str) -> DiffusionModel:
    from r0kit.testing.pipelines import build_tiny_pipeline

    folder = build_tiny_pipeline(tmp / "tiny-sd")
    return load(str(folder), device=device, dtype="float32")


def sd_turbo_size_model(device: str, dtype: torch.dtype) -> DiffusionModel:
    """SD-Turbo's architecture (SD 2.1 UNet, SD VAE, OpenCLIP ViT-H text encoder), random weights."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    from r0kit.testing.pipelines import write_tiny_clip_tokenizer

    torch.manual_seed(0)
    ctx = torch.device(device)  # build the weights on the device: much faster than on the CPU
    ctx.__enter__()
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=(5, 10, 20, 20),
        cross_attention_dim=1024,
        use_linear_projection=True,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        scaling_factor=0.18215,
    )
    tok_dir = write_tiny_clip_tokenizer(Path(tempfile.mkdtemp()) / "tok", max_length=77)
    tok = CLIPTokenizer.from_pretrained(str(tok_dir))
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=1024,
            intermediate_size=4096,
            num_attention_heads=16,
            num_hidden_layers=23,
            max_position_embeddings=77,
            hidden_act="gelu",
            projection_dim=1024,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )
    ctx.__exit__(None, None, None)
    sched = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="trailing", steps_offset=1
    )
    dev = torch.device(device)
    parts = []
    for m in (unet, vae, text):
        m.requires_grad_(False).eval().to(dev, dtype)
        parts.append(m)
    return DiffusionModel(
        backbone=unet, vae=vae, text_encoders=[text], tokenizers=[tok], scheduler=sched, kind="sd", dtype=dtype, device=dev,
        source="sd-turbo-size (random weights)",
    )


# ---------------------------------------------------------------------------- rewards
class ProxyTower(torch.nn.Module):
    """A random-weight CLIP vision tower scoring cosine similarity to a fixed random text embedding."""

    def __init__(self, size: str, device, dtype):
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        dims = {"H": (1280, 32, 16, 5120, 1024), "L": (1024, 24, 16, 4096, 768)}[size]
        cfg = CLIPVisionConfig(
            hidden_size=dims[0], num_hidden_layers=dims[1], num_attention_heads=dims[2], intermediate_size=dims[3],
            projection_dim=dims[4], image_size=224, patch_size=14, hidden_act="gelu",
        )
        with torch.device(device):  # initialize on the device: billions of CPU inits are slow
            tower = CLIPVisionModelWithProjection(cfg)
        self.tower = tower.requires_grad_(False).eval().to(device, dtype)
        self.text = torch.nn.functional.normalize(torch.randn(dims[4], device=device), dim=0)

    def forward(self, x, prompts):
        e = self.tower(pixel_values=x.to(self.tower.dtype)).image_embeds.float()
        return 100 * torch.nn.functional.normalize(e, dim=-1) @ self.text


def make_rewards(kind: str, device, dtype) -> tuple[list[tuple[Term, float]], str]:
    """``[(term, weight)]`` and a CSV label for the rewards in use."""
    from r0kit.errors import R0kitError

    if kind in ("auto", "reno"):
        try:
            terms = [(r0kit.reward(name, device=str(device)), w) for name, w in RENO]
            return terms, "reno(" + ",".join(n for n, _ in RENO) + ")"
        except (R0kitError, Exception) as exc:  # unknown name, missing weights, missing package
            if kind == "reno":
                raise
            print(f"bench: ReNO rewards unavailable here ({type(exc).__name__}: {str(exc)[:120]}); using proxies", file=sys.stderr)
            kind = "proxy"
    if kind == "proxy":
        contract = r0kit.RewardContract(
            size=224, crop="center", mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711),
            needs_prompt=False,
        )
        terms = []
        for (name, w), size in zip(RENO, ("H", "L", "H", "H")):
            mod = ProxyTower(size, device, dtype)
            terms.append((Term(kind="reward", name=f"proxy_{name}", module=mod, contract=contract), w))
        return terms, "proxy(random CLIP ViT-H/14 x3, ViT-L/14 x1 at 224px)"
    names = ("colorfulness", "contrast", "symmetry", "target_color")
    return [(r0kit.reward(n), 1.0) for n in names], "analytic(" + ",".join(names) + ")"


# ---------------------------------------------------------------------------- providers
def run_r0kit(model, rewards, prompts, height, width, steps_sampler, iters, reg_w, ckpt) -> list[float]:
    gen = r0kit.generator("noise", model=model, height=height, width=width, steps=steps_sampler,
                          gradient_checkpointing=ckpt, vae_checkpointing=ckpt)
    obj = r0kit.Objective([t * w for t, w in rewards]) - reg_w * r0kit.regularizer("noise_norm")
    stamps: list[float] = []

    def cb(info):
        _sync(model.device)
        stamps.append(_clock(model.device))

    optimize(obj, gen, prompts, steps=iters, seed=0, optimizer="sgd", lr=5.0, grad_clip=0.1, callback=cb)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def run_torch(model, rewards, prompts, height, width, steps_sampler, iters, reg_w, ckpt) -> list[float]:
    """The same loop by hand: no r0kit objects on the hot path."""
    import torch.nn.functional as F

    unet, vae = model.unet, model.vae
    dev, dt = model.device, model.dtype
    if ckpt:
        unet.enable_gradient_checkpointing()
    # r0kit's few-step rule (trailing timesteps, the scheduler's initial scale), read once off the hot path
    schedule = model.schedule(steps_sampler)
    ts = schedule.timesteps.tolist()
    levels = list(zip(schedule.alphas.tolist(), schedule.sigmas.tolist()))
    init_scale = schedule.init_scale
    b = len(prompts)
    with torch.no_grad():
        ids = model.tokenizers[0](prompts, padding="max_length", max_length=model.tokenizers[0].model_max_length,
                                  truncation=True, return_tensors="pt").input_ids.to(dev)
        emb = model.text_encoders[0](ids).last_hidden_state.to(dt)
    c, h, w = 4, height // model.vae_scale_factor, width // model.vae_scale_factor
    noise = torch.cat([torch.randn(1, c, h, w, generator=torch.Generator().manual_seed(i)) for i in range(b)]).to(dev)
    noise.requires_grad_(True)
    opt = torch.optim.SGD([noise], lr=5.0, momentum=0.9, nesterov=True)
    d = noise[0].numel()
    best_total = torch.full((b,), -float("inf"), device=dev)
    best_img = torch.zeros(b, 3, height, width, device=dev)
    stamps: list[float] = []

    def decode(z):
        return vae.decode(z.to(dt) / vae.config.scaling_factor, return_dict=False)[0]

    for step in range(iters + 1):
        last = step == iters
        opt.zero_grad(set_to_none=True)
        with torch.set_grad_enabled(not last):
            x = noise * init_scale
            for i, t in enumerate(ts):
                a, s = levels[i]
                eps = unet(x.to(dt), torch.full((b,), float(t), device=dev), encoder_hidden_states=emb, return_dict=False)[0].float()
                x0 = (x - s * eps) / a
                if i + 1 < len(ts):
                    a2, s2 = levels[i + 1]
                    x = a2 * x0 + s2 * eps
            if ckpt and not last:
                img = torch.utils.checkpoint.checkpoint(decode, x0, use_reentrant=False)
            else:
                img = decode(x0)
            img = (img.float() * 0.5 + 0.5).clamp(0, 1)
            total = 0
            for term, wt in rewards:
                ct = term.contract
                xin = img
                if ct is not None and ct.size is not None:
                    xin = F.interpolate(img, size=(ct.size, ct.size), mode="bicubic", align_corners=False, antialias=True)
                    mean = torch.tensor(ct.mean, device=dev).view(1, 3, 1, 1)
                    std = torch.tensor(ct.std, device=dev).view(1, 3, 1, 1)
                    xin = (xin - mean) / std
                total = total + wt * term.module(xin, prompts).float()
            flat = noise.flatten(1)
            sq = (flat * flat).sum(1)
            total = total - reg_w * (0.5 * sq - 0.5 * (d - 1) * torch.log(sq))
        if not last:
            (-total.sum()).backward()
            torch.nn.utils.clip_grad_norm_([noise], 0.1)
        with torch.no_grad():
            better = total.detach() > best_total
            best_total = torch.where(better, total.detach(), best_total)
            best_img = torch.where(better.view(-1, 1, 1, 1), img.detach(), best_img)
        _sync(dev)
        stamps.append(_clock(dev))
        if not last:
            opt.step()
    return [b2 - a2 for a2, b2 in zip(stamps, stamps[1:])]


def _clock(dev) -> float:
    """Wall time on CUDA; on the CPU the process's CPU time, which other jobs on a shared machine barely move."""
    if torch.device(dev).type == "cuda":
        return time.perf_counter()
    return time.process_time()


def _sync(dev) -> None:
    if torch.device(dev).type == "cuda":
        torch.cuda.synchronize(dev)


def _peak_reset(dev) -> None:
    if torch.device(dev).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def _peak_gb(dev) -> float:
    if torch.device(dev).type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak RSS (KiB -> GiB)


def _device_name(dev) -> str:
    if torch.device(dev).type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def _q(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", choices=["cpu", "gpu"], default="gpu" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rewards", choices=["auto", "reno", "proxy", "analytic"], default=None,
                   help="gpu default: auto (ReNO rewards if they build, else proxy); cpu: analytic")
    p.add_argument("--iters", type=int, default=None, help="timed iterations per round")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds of both providers")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", default=None, help="image sizes, comma-separated (cpu 32, gpu 512)")
    p.add_argument("--arch", default=None, choices=["tiny", "tiny-sd3", "tiny-flux", "sd-turbo", "sd3-medium", "flux-schnell"],
                   help="the model (default: sd-turbo on gpu, tiny on cpu)")
    p.add_argument("--checkpointing", choices=["off", "on", "both"], default=None, help="UNet + VAE-decode checkpointing (gpu default: both)")
    p.add_argument("--providers", default="r0kit,torch")
    p.add_argument("--threads", type=int, default=1, help="cpu mode: torch threads (1 keeps a shared machine's noise down)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--no-csv", action="store_true")
    args = p.parse_args(argv)

    gpu = args.mode == "gpu"
    if gpu and not torch.cuda.is_available():
        p.error("--mode gpu needs a CUDA device")
    device = "cuda" if gpu else "cpu"
    if not gpu:
        torch.set_num_threads(args.threads)
    arch = args.arch or ("sd-turbo" if gpu else "tiny")
    flow = arch in ("sd3-medium", "flux-schnell", "tiny-sd3", "tiny-flux")
    dtype = (torch.bfloat16 if flow else torch.float16) if gpu else torch.float32
    sizes = [int(v) for v in (args.size or ("512" if gpu else "32")).split(",")]
    iters = args.iters or (10 if gpu else 6)
    rounds = args.rounds or (2 if gpu else 4)
    ckpts = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing or ("both" if gpu else "off")]
    providers = [s.strip() for s in args.providers.split(",") if s.strip()]
    if flow and "torch" in providers:
        if args.providers != p.get_default("providers"):
            p.error("--providers torch is the UNet's by-hand loop; the flow architectures run the r0kit provider")
        providers = ["r0kit"]
    fns = {"r0kit": run_r0kit, "torch": run_torch}

    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="r0kit-bench-"))
    if arch in ("sd3-medium", "flux-schnell"):
        from r0kit.testing.pipelines import architecture_model

        model = architecture_model(arch, device=device, dtype=dtype, max_sequence_length=256)
    elif arch in ("tiny-sd3", "tiny-flux"):
        from r0kit.testing.pipelines import build_tiny_pipeline

        model = load(str(build_tiny_pipeline(tmp / arch, arch[5:])), device=device, dtype="float32")
    else:
        model = sd_turbo_size_model(device, dtype) if gpu else cpu_model(tmp, device)
    rewards, reward_label = make_rewards(args.rewards or ("auto" if gpu else "analytic"), device, dtype)
    prompts = [f"object {i}" for i in range(args.batch)]
    print(f"bench: setup {time.perf_counter() - t0:.1f}s on {_device_name(device)}; rewards {reward_label}", file=sys.stderr)

    import diffusers
    import transformers

    rows = []
    for size, ckpt in ((sz, ck) for sz in sizes for ck in ckpts):
        times: dict[str, list[float]] = {k: [] for k in providers}
        peaks: dict[str, float] = {k: 0.0 for k in providers}
        for r in range(rounds):
            for name in providers if r % 2 == 0 else providers[::-1]:
                _peak_reset(device)
                dts = fns[name](model, rewards, prompts, size, size, 1, iters, 0.01, ckpt)
                times[name].extend(dts[1:])  # the first interval includes warm-up
                peaks[name] = max(peaks[name], _peak_gb(device))
        base = statistics.median(times["torch"]) if "torch" in times else None
        for name in providers:
            med = statistics.median(times[name])
            row = {
                "date": datetime.datetime.now().isoformat(timespec="seconds"),
                "device": _device_name(device),
                "mode": args.mode,
                "provider": name,
                "model": model.source if gpu else f"tiny random-weight {arch} (r0kit.testing.pipelines)",
                "size": size,
                "batch": args.batch,
                "sampler_steps": 1,
                "dtype": str(dtype).replace("torch.", ""),
                "checkpointing": "backbone+vae" if ckpt else "off",
                "rewards": reward_label,
                "iters": len(times[name]),
                "clock": "wall" if gpu else "process cpu time",
                "p20_s": round(_q(times[name], 0.2), 5),
                "p50_s": round(med, 5),
                "p80_s": round(_q(times[name], 0.8), 5),
                "peak_gb": round(peaks[name], 3),
                "peak_kind": "cuda max_memory_allocated" if gpu else "process peak RSS",
                "overhead_vs_torch_pct": round(100 * (med / base - 1), 2) if base else "",
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                "transformers": transformers.__version__,
                "r0kit": f"{r0kit.__version__}+{_git_rev()}",
            }
            rows.append(row)
            print(
                f"{arch} {size}px {name:6s} ckpt={row['checkpointing']:8s} p50 {med * 1e3:8.1f} ms  (p20 {row['p20_s'] * 1e3:.1f}, "
                f"p80 {row['p80_s'] * 1e3:.1f})  peak {row['peak_gb']:.2f} GB  overhead {row['overhead_vs_torch_pct']}%"
            )
    if not args.no_csv:
        dev_tag = "cpu" if not gpu else _device_name(device).lower().replace("nvidia", "").strip().replace(" ", "-")
        path = args.out / f"optimize_{dev_tag}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                w.writeheader()
            w.writerows(rows)
        print(f"bench: appended {len(rows)} row(s) to {path} ({time.perf_counter() - t0:.0f}s total)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
