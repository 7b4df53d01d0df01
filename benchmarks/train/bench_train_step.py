"""One R0 training step: time and peak memory, LoRA and full fine-tuning.

A step is what :func:`r0kit.train.train` does per optimizer update: unroll the
kstep generator (K steps, random η), decode, score 3 rewards with per-reward
gradient normalization plus ``weight_l2``, back-propagate, AdamW step.

CPU (default): the tiny random-weight test pipeline, written to disk and loaded
by path (``--size tiny``, ``tiny-sd3`` or ``tiny-flux``)::

    python benchmarks/train/bench_train_step.py
    python benchmarks/train/bench_train_step.py --size tiny-flux --image 16,32

GPU: real-size architectures built from their configs with random weights, K=4,
bf16 autocast, gradient checkpointing:

* ``sd15``: SD1.5 (UNet 860M, VAE, CLIP-L text encoder), float32 weights, 512 px;
* ``sd3-medium`` (transformer 2.0B) and ``flux-schnell`` (12B), bfloat16 weights, at
  512 and 1024 px (``r0kit.testing.pipelines.architecture_model``: the transformer and
  16-channel VAE at full size, one-layer text-encoder stand-ins with the real widths).
  A mode that does not fit is recorded as ``OOM``::

    python benchmarks/train/bench_train_step.py --device cuda --size sd15
    python benchmarks/train/bench_train_step.py --device cuda --size sd3-medium --image 512,1024
    python benchmarks/train/bench_train_step.py --device cuda --size flux-schnell --image 512,1024 --modes lora

``r0kit train --dry-run`` estimates the same runs' memory without a GPU.

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
        backbone=unet, vae=vae, text_encoders=[text], tokenizers=[tok], scheduler=sched, kind="sd",
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

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
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
    _reset(gen, mode)
    return {
        "mode": mode, "p20_ms": round(p20, 2), "p50_ms": round(p50, 2), "p80_ms": round(p80, 2),
        "peak_mem_mib": round(mem, 1), "mem_kind": mem_kind, "trainable_params": n_train,
    }


def _reset(gen, mode: str) -> None:
    """The next mode gets a clean network: no adapter, frozen."""
    if mode == "lora":
        gen.unet.delete_adapters("default")
    else:
        gen.unet.requires_grad_(False)
    for p in gen.unet.parameters():
        p.grad = None


def bench_or_oom(mode: str, model, size: int, args, device: torch.device) -> dict:
    """:func:`bench`, or a row saying the mode did not fit."""
    try:
        return bench(mode, model, size, args, device)
    except torch.OutOfMemoryError:
        import gc

        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if mode == "lora":
            try:
                model.backbone.delete_adapters("default")
            except (ValueError, AttributeError):
                pass
        model.backbone.requires_grad_(False)
        for p in model.backbone.parameters():
            p.grad = None
        print(f"{mode}: out of memory at {size}px", file=sys.stderr)
        return {"mode": mode, "p20_ms": "OOM", "p50_ms": "OOM", "p80_ms": "OOM", "peak_mem_mib": "OOM",
                "mem_kind": "", "trainable_params": ""}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--size", default=None, choices=["tiny", "tiny-sd3", "tiny-flux", "sd15", "sd3-medium", "flux-schnell"],
                   help="default: tiny on cpu, sd15 on cuda")
    p.add_argument("--modes", default="lora,full")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--batch", type=int, default=None, help="default 2 (tiny) / 1 (sd15)")
    p.add_argument("--lora-rank", type=int, default=None, help="default 4 (tiny) / 64 (sd15)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (cpu)")
    p.add_argument("--image", default=None, help="image sides, comma-separated (default 16 tiny / 512 real sizes)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="weights dtype (default float32; bfloat16 for sd3-medium and flux-schnell)")
    p.add_argument("--output", type=Path, default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    size_name = args.size or ("sd15" if device.type == "cuda" else "tiny")
    real = not size_name.startswith("tiny")
    args.batch = args.batch or (1 if real else 2)
    args.lora_rank = args.lora_rank or (64 if real else 4)
    args.repeats = args.repeats or (3 if real else 5)
    args.bf16 = device.type == "cuda"
    args.checkpointing = real
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2

    import diffusers
    import peft

    from r0kit.diffusion import load

    flow_arch = size_name in ("sd3-medium", "flux-schnell")
    dtype_name = args.dtype or ("bfloat16" if flow_arch else "float32")
    images = [int(v) for v in (args.image or ("512" if real else "16")).split(",")]
    if size_name == "sd15":
        model = sd15_model(device)
    elif flow_arch:
        from r0kit.testing.pipelines import architecture_model

        model = architecture_model(size_name, device=device, dtype=getattr(torch, dtype_name))
    else:
        from r0kit.testing.pipelines import build_tiny_pipeline

        kind = {"tiny": "sd", "tiny-sd3": "sd3", "tiny-flux": "flux"}[size_name]
        folder = build_tiny_pipeline(Path(tempfile.mkdtemp()) / f"tiny-{kind}", kind)
        model = load(str(folder), device=str(device), dtype=dtype_name)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    rows = []
    for image, mode in ((i, m) for i in images for m in args.modes.split(",")):
        r = bench_or_oom(mode, model, image, args, device)
        r.update(
            date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"), device=f"{device.type}:{name}",
            torch=torch.__version__, diffusers=diffusers.__version__, peft=peft.__version__, size=size_name,
            image=image, K=args.k, batch=args.batch, lora_rank=args.lora_rank if mode == "lora" else "",
            rewards="analytic:" + "+".join(REWARDS), regularizer="weight_l2",
            precision=f"{dtype_name} weights" + (", bf16 autocast" if args.bf16 else ""),
            checkpointing=args.checkpointing, threads=torch.get_num_threads(),
            loadavg_1m=round(os.getloadavg()[0], 2),
        )
        rows.append(r)
        if r["p50_ms"] == "OOM":
            print(f"{size_name} {mode:4s} K={args.k} B={args.batch} {image}px: out of memory")
            continue
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
