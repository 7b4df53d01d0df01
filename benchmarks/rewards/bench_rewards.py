"""Forward+backward time and peak memory of each reward at real size, with random weights.

    python benchmarks/rewards/bench_rewards.py                      # all five, on CUDA if present else CPU
    python benchmarks/rewards/bench_rewards.py --rewards imagereward aesthetic --device cpu --reps 3
    python benchmarks/rewards/bench_rewards.py --gradient-checkpointing both --dtype bfloat16

What is measured: one optimization step's reward work at batch ``--batch``
(default 1) and ``--size`` px (default 512): the core's preprocessing to the
reward's contract (resize to 224, crop, normalize), the reward forward, and
the backward to the image. The text side is encoded once before timing (the
rewards cache it per prompt, as in an optimization run). Reported: p50 with
p20/p80 over ``--reps`` timed runs after one warm-up run; peak memory (CUDA:
``torch.cuda.max_memory_allocated``; CPU: the process's peak resident set,
each reward in its own subprocess so the numbers do not mix) and the peak
above the memory held once the model is loaded (activations and gradients).

Architectures are the real ones, built from configs with random weights; no
download: clip and hpsv2 are open_clip ViT-H-14, pickscore a transformers CLIP
ViT-H/14, aesthetic a transformers CLIP ViT-L/14 image tower + the MLP head,
imagereward BLIP ViT-L/16 + the 12-layer cross-attention BERT. Tokenizers are
replaced by fixed token ids (only the cached text side reads them).

Needs torch and r0kit; transformers for pickscore, aesthetic, imagereward;
open_clip_torch (``pip install 'r0kit[clip]'``, it pulls timm) for clip and
hpsv2. A reward whose package is missing is skipped with a message naming it.

Rows are appended to ``benchmarks/results/rewards_<device>.csv`` with the
device, library versions and the date.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REWARDS = ("clip", "hpsv2", "imagereward", "pickscore", "aesthetic")
RESULTS = Path(__file__).resolve().parents[1] / "results"
FIELDS = [
    "date", "device", "device_name", "torch", "transformers", "open_clip", "r0kit", "reward", "architecture",
    "params_M", "batch", "size", "dtype", "gradient_checkpointing", "reps", "fwd_bwd_ms_p50", "fwd_bwd_ms_p20",
    "fwd_bwd_ms_p80", "peak_mem_MB", "peak_over_loaded_MB",
]

# PickScore_v1 (= laion CLIP-ViT-H-14) and openai/clip-vit-large-patch14, as in their config.json.
VIT_H14_HF = dict(
    text_config=dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                     num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu"),
    vision_config=dict(image_size=224, patch_size=14, hidden_size=1280, intermediate_size=5120,
                       num_hidden_layers=32, num_attention_heads=16, hidden_act="gelu"),
    projection_dim=1024,
)
VIT_L14_HF = dict(
    text_config=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu"),
    vision_config=dict(image_size=224, patch_size=14, hidden_size=1024, intermediate_size=4096,
                       num_hidden_layers=24, num_attention_heads=16, hidden_act="quick_gelu"),
    projection_dim=768,
)
# THUDM/ImageReward med_config.json, and BLIP's ViT-L/16 at 224 px.
IMAGEREWARD_MED = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                       layer_norm_eps=1e-12, max_position_embeddings=512, vocab_size=30524, hidden_act="gelu",
                       pad_token_id=0)
IMAGEREWARD_VIT = dict(image_size=224, patch_size=16, embed_dim=1024, depth=24, mlp_hidden=4096)


class FixedTokenizer:
    """Stands in for a tokenizer: the same ids for every prompt (the text side is cached, not timed)."""

    def __init__(self, length: int, vocab: int) -> None:
        self.length, self.vocab = length, vocab

    def __call__(self, prompts, **kwargs):
        from transformers import BatchEncoding

        n = len(prompts)
        ids = torch.randint(1000, self.vocab - 10, (n, self.length))
        ids[:, 0] = 101 if self.vocab < 40000 else 49406
        ids[:, -1] = 102 if self.vocab < 40000 else 49407
        return BatchEncoding({"input_ids": ids, "attention_mask": torch.ones_like(ids)})


def build(name: str, dtype: str, device: str, ckpt: bool):
    """(reward module, contract, architecture label) with random weights."""
    if name in ("clip", "hpsv2"):
        try:
            import open_clip
        except ImportError as exc:
            raise SystemExit(f"skip {name}: needs open_clip_torch ({exc}); pip install 'r0kit[clip]'") from None
        from r0kit.backbones.openclip import OpenClipScore, build_open_clip

        mod = __import__(f"r0kit_{name}")
        model = build_open_clip("ViT-H-14", extra="clip", what=name)
        scale = 100.0 if name == "clip" else 1.0
        reward = OpenClipScore(model, open_clip.get_tokenizer("ViT-H-14"), scale=scale, dtype=dtype, device=device,
                               gradient_checkpointing=ckpt)
        return reward, mod.CONTRACT, "open_clip ViT-H-14"
    try:
        import transformers
    except ImportError as exc:
        raise SystemExit(f"skip {name}: needs transformers ({exc}); pip install 'r0kit[{name}]'") from None
    if name == "imagereward":
        import r0kit_imagereward
        from r0kit.backbones.blip import ImageRewardScore, build_imagereward

        model = build_imagereward(None, IMAGEREWARD_MED, vit=dict(IMAGEREWARD_VIT))
        reward = ImageRewardScore(model, FixedTokenizer(35, 30522), dtype=dtype, device=device, gradient_checkpointing=ckpt)
        return reward, r0kit_imagereward.CONTRACT, "BLIP ViT-L/16 + BERT-base cross-encoder"
    cfg_dict = VIT_H14_HF if name == "pickscore" else VIT_L14_HF
    model = transformers.CLIPModel(transformers.CLIPConfig(**cfg_dict))
    if name == "pickscore":
        import r0kit_pickscore
        from r0kit.backbones.hf_clip import HFClipScore

        reward = HFClipScore(model, FixedTokenizer(20, 49408), dtype=dtype, device=device, gradient_checkpointing=ckpt)
        return reward, r0kit_pickscore.CONTRACT, "transformers CLIP ViT-H/14"
    import r0kit_aesthetic
    from r0kit.backbones.common import resolve_device, resolve_dtype
    from r0kit.backbones.heads import ScoreMLP
    from r0kit.backbones.hf_clip import ClipImageEmbedding

    embed = ClipImageEmbedding(model, dtype=resolve_dtype(dtype), device=resolve_device(device), gradient_checkpointing=ckpt)
    del model
    return r0kit_aesthetic.AestheticScore(embed, ScoreMLP(768)), r0kit_aesthetic.CONTRACT, "transformers CLIP ViT-L/14 image tower + MLP"


def rss_mb() -> float:
    """Peak resident set of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return rss_mb()


def measure(name: str, args) -> dict:
    from r0kit.images import preprocess

    device = torch.device(args.device)
    torch.manual_seed(0)
    reward, contract, arch = build(name, args.dtype, args.device, args.ckpt)
    params = sum(p.numel() for p in reward.parameters()) / 1e6
    prompts = ["a photo of an astronaut riding a horse on the moon"] * args.batch
    images = torch.rand(args.batch, 3, args.size, args.size, device=device)

    def step():
        x = images.clone().requires_grad_(True)
        score = reward(preprocess(x, contract), prompts)
        score.sum().backward()
        return x.grad

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        loaded = torch.cuda.memory_allocated() / 2**20
    else:
        loaded = current_rss_mb()
    step()  # warm-up; also fills the prompt cache
    times = []
    for _ in range(args.reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        grad = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
        assert torch.isfinite(grad).all(), f"{name}: non-finite image gradient"
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else rss_mb()
    q = statistics.quantiles(times, n=5, method="inclusive") if len(times) >= 2 else [times[0]] * 4
    return {
        "reward": name, "architecture": arch, "params_M": f"{params:.1f}", "batch": args.batch, "size": args.size,
        "dtype": args.dtype, "gradient_checkpointing": args.ckpt, "reps": args.reps,
        "fwd_bwd_ms_p50": f"{statistics.median(times):.1f}", "fwd_bwd_ms_p20": f"{q[0]:.1f}",
        "fwd_bwd_ms_p80": f"{q[3]:.1f}", "peak_mem_MB": f"{peak:.0f}", "peak_over_loaded_MB": f"{peak - loaded:.0f}",
    }


def versions(device: str) -> dict:
    def v(mod):
        try:
            return __import__(mod).__version__
        except Exception:
            return "missing"

    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = f"{platform.processor() or platform.machine()} x{os.cpu_count()} threads={torch.get_num_threads()}"
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "device": device.split(":")[0],
        "device_name": name, "torch": torch.__version__, "transformers": v("transformers"),
        "open_clip": v("open_clip"), "r0kit": v("r0kit"),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rewards", nargs="+", default=list(REWARDS), choices=REWARDS)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--reps", type=int, default=None, help="timed runs (default: 3 on CPU, 20 on CUDA)")
    p.add_argument("--gradient-checkpointing", choices=["off", "on", "both"], default="off")
    p.add_argument("--out", type=Path, default=None, help="CSV to append to (default benchmarks/results/rewards_<device>.csv)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one reward in this process
    p.add_argument("--ckpt", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.reps = args.reps or (20 if args.device.startswith("cuda") else 3)
    if args.one:
        print(json.dumps(measure(args.one, args)))
        return 0
    out = args.out or RESULTS / f"rewards_{args.device.split(':')[0]}.csv"
    info = versions(args.device)
    ckpts = {"off": [False], "on": [True], "both": [False, True]}[args.gradient_checkpointing]
    rows = []
    for name in args.rewards:
        for ckpt in ckpts:
            cmd = [sys.executable, __file__, "--one", name, "--device", args.device, "--dtype", args.dtype,
                   "--batch", str(args.batch), "--size", str(args.size), "--reps", str(args.reps)] + (["--ckpt"] if ckpt else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            last = (proc.stdout.strip().splitlines() or [""])[-1]
            if proc.returncode != 0 or not last.startswith("{"):
                reason = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["failed"])[-1]
                print(f"{name:12s} {'ckpt' if ckpt else '':4s} skipped: {reason}", flush=True)
                continue
            row = {**info, **json.loads(last)}
            rows.append(row)
            print(f"{name:12s} {'ckpt' if ckpt else '    '} {row['params_M']:>8s}M  p50 {row['fwd_bwd_ms_p50']:>9s} ms "
                  f"(p20 {row['fwd_bwd_ms_p20']}, p80 {row['fwd_bwd_ms_p80']})  peak {row['peak_mem_MB']} MB "
                  f"(+{row['peak_over_loaded_MB']} over loaded)", flush=True)
    if rows:
        out.parent.mkdir(parents=True, exist_ok=True)
        new = not out.exists()
        with open(out, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=FIELDS)
            if new:
                w.writeheader()
            w.writerows(rows)
        print(f"appended {len(rows)} row(s) to {out}")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
