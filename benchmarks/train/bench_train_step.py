"""One R0 training step: time and peak memory, LoRA and full fine-tuning.

A step is what :func:`r0kit.train.train` does per optimizer update: unroll the
kstep generator (K steps, random η), decode, score 3 rewards with per-reward
gradient normalization plus ``weight_l2``, back-propagate, AdamW step.

CPU (default): the tiny random-weight test pipeline, written to disk and loaded
by path::

    python benchmarks/train/bench_train_step.py

GPU: SD1.5-size architectures (UNet 860M, VAE, CLIP-L text encoder) built from
configs with random weights, 512 px, K=4, bf16 autocast, gradient checkpointing;
finishes in well under two minutes on one H100::

    python benchmarks/train/bench_train_step.py --device cuda --size sd15

Rows are appended to ``benchmarks/results/train_<device>.csv`` with the device,
library versions and date. Rewards: the weight-free analytic rewards
(colorfulness, contrast, symmetry); the learned reward models need their
pretrained weights, which a random-weight benchmark does not have, so the CSV
records ``rewards=analytic``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]

REWARDS = ("colorfulness", "contrast", "symmetry")


def sd15_model(device: torch.device):
    """SD1.5-size components with random weights, built on ``device``, as a DiffusionModel."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from r0kit.diffusion import DiffusionModel
    from r0kit.testing.pipelines import write_tiny_clip_tokenizer

    tok_dir = write_tiny_clip_tokenizer(Path(tempfile.mkdtemp()) / "tok", max_length=77)
    tok = CLIPTokenizer.from_pretrained(str(tok_dir))
    with device:
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
            scaling_factor=0.18215,
        )
        text = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tok.get_vocab()), hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                num_hidden_layers=12, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, projection_dim=768,
            )
        )
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="trailing")
    for m in (unet, vae, text):
        m.requires_grad_(False).eval()
    return DiffusionModel(
        unet=unet, vae=vae, text_encoders=[text], tokenizers=[tok], scheduler=sched, kind="sd",
        dtype=torch.float32, device=device, source="random-sd15-architecture",
    )


def peak_memory_mib(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_peak_rss"


def bench(mode: str, model, size: int, args, device: torch.device) -> dict:
    import r0kit
    from r0kit.objective import Objective
    from r0kit.train import TrainOptimizerConfig, make_optimizer
    from r0kit_r0 import KStepGenerator

    gen = KStepGenerator(
        model=model, steps=args.k, height=size, width=size, train=mode, lora_rank=args.lora_rank,
        gradient_checkpointing=args.checkpointing, vae_checkpointing=args.checkpointing, device=str(device),
    ).train(True)
    obj = Objective([r0kit.reward(r) for r in REWARDS] + [r0kit.regularizer("weight_l2") * -1e-3], normalize_gradients=True)
    opt = make_optimizer(TrainOptimizerConfig(lr=1e-5), gen.parameters())
    prompts = [f"object {i}" for i in range(args.batch)]
    rng = torch.Generator().manual_seed(0)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else torch.autocast(device.type, enabled=False)

    def step() -> None:
        with amp:
            s = gen.sample(prompts, generator=rng)
            obj.backward(s, prompts, gen, reduction="mean")
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1000)
    p20, p50, p80 = (float(v) for v in np.percentile(times, [20, 50, 80]))
    mem, mem_kind = peak_memory_mib(device)
    n_train = sum(p.numel() for p in gen.parameters())
    if mode == "lora":  # the next mode gets a clean UNet
        gen.unet.delete_adapters("default")
    else:
        gen.unet.requires_grad_(False)
    del opt, gen
    return {
        "mode": mode, "p20_ms": round(p20, 2), "p50_ms": round(p50, 2), "p80_ms": round(p80, 2),
        "peak_mem_mib": round(mem, 1), "mem_kind": mem_kind, "trainable_params": n_train,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--size", default=None, choices=["tiny", "sd15"], help="default: tiny on cpu, sd15 on cuda")
    p.add_argument("--modes", default="lora,full")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--batch", type=int, default=None, help="default 2 (tiny) / 1 (sd15)")
    p.add_argument("--lora-rank", type=int, default=None, help="default 4 (tiny) / 64 (sd15)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (cpu)")
    p.add_argument("--image", type=int, default=None, help="image side (default 16 tiny / 512 sd15)")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    size_name = args.size or ("sd15" if device.type == "cuda" else "tiny")
    sd15 = size_name == "sd15"
    args.batch = args.batch or (1 if sd15 else 2)
    args.lora_rank = args.lora_rank or (64 if sd15 else 4)
    args.repeats = args.repeats or (3 if sd15 else 5)
    args.bf16 = device.type == "cuda"
    args.checkpointing = sd15
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2

    import diffusers
    import peft

    from r0kit.diffusion import load

    if sd15:
        image = args.image or 512
        make = lambda: sd15_model(device)  # noqa: E731
    else:
        from r0kit.testing.pipelines import build_tiny_pipeline

        image = args.image or 16
        folder = build_tiny_pipeline(Path(tempfile.mkdtemp()) / "tiny-sd", "sd")
        make = lambda: load(str(folder), device=str(device))  # noqa: E731
    model = make()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    rows = []
    for mode in args.modes.split(","):
        r = bench(mode, model, image, args, device)
        r.update(
            date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"), device=f"{device.type}:{name}",
            torch=torch.__version__, diffusers=diffusers.__version__, peft=peft.__version__, size=size_name,
            image=image, K=args.k, batch=args.batch, lora_rank=args.lora_rank if mode == "lora" else "",
            rewards="analytic:" + "+".join(REWARDS), regularizer="weight_l2", precision="bf16-autocast" if args.bf16 else "fp32",
            checkpointing=args.checkpointing, threads=torch.get_num_threads(),
            loadavg_1m=round(os.getloadavg()[0], 2),
        )
        rows.append(r)
        print(f"{size_name} {mode:4s} K={args.k} B={args.batch} {image}px: p50 {r['p50_ms']:.1f} ms "
              f"(p20 {r['p20_ms']:.1f}, p80 {r['p80_ms']:.1f}), peak {r['peak_mem_mib']:.0f} MiB ({r['mem_kind']}), "
              f"{r['trainable_params']:,} trainable")
    out = args.output or ROOT / "benchmarks" / "results" / f"train_{device.type}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = ["date", "device", "torch", "diffusers", "peft", "size", "image", "K", "batch", "mode", "lora_rank",
              "trainable_params", "rewards", "regularizer", "precision", "checkpointing", "threads", "loadavg_1m",
              "p20_ms", "p50_ms", "p80_ms", "peak_mem_mib", "mem_kind"]
    new = not out.is_file()
    with out.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerows(rows)
    print(f"appended {len(rows)} row(s) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
