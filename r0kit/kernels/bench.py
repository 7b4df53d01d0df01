"""Throughput benchmark of the fused kernels: ``r0kit bench kernels`` / ``benchmarks/kernels/run.py``.

For each op it sweeps sizes from small to large and times providers

* ``eager``   the pure-torch reference (what the code did before the kernels),
* ``compile`` ``torch.compile`` of that reference,
* ``triton``  the public op with ``R0KIT_KERNELS=triton`` (the fused kernels),
* ``auto``    the public op as dispatched (on a CPU: the reference through the op's API),

in modes ``forward``, ``backward`` (autograd.grad of a fixed upstream gradient, graph retained)
and ``full`` (both), and appends one CSV row per measurement: p50/p20/p80 milliseconds
(``triton.testing.do_bench`` on CUDA, a wall-clock loop on the CPU), peak memory above the
inputs, GB/s from the op's counted minimal bytes (see each op module's docstring and
:func:`_bytes` here) and that as a percentage of a device-to-device copy measured in the same run.

Before timing a ``triton`` or ``compile`` provider its forward output is compared with eager's;
the row records ``check=ok`` or ``FAIL`` (a failing provider's speed is not a result).

Each row also records ``host_us``: the median wall time of one call issued back to back without
a sync (on CUDA the host returns once the launches are queued, so this is the host cost per call:
Python, dispatch, launches; the GPU time is ``ms_p50``). ``numel`` is the op's size in elements,
the measure the dispatcher's crossover (``r0kit/kernels/crossover.json``) uses.

``--sizes real`` is the sizes r0kit runs: images at batch 1, 4 and 8 at 512² with R0's four
rewards (grad_combine N = 4; preprocess: the CLIP/ImageReward, HPS letterbox and PickScore
contracts), latents 4×64² and 4×128² at batch 1–16, cosine heads of 1–16 rows at D = 1024, and
weight-L2 over LoRA sets of 1, 10 and 50 M parameters (rank-r adapters on SD1.5's attention
projections) and SD1.5's and SDXL's full UNet parameter sets (shapes from diffusers' configs).

On a CPU the defaults are tiny sizes and ``eager`` vs ``auto`` so CI exercises the harness;
``--interpret`` adds the Triton interpreter (slow, tiny sizes only).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import math
import os
import platform
import re
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

OPS = ("grad_combine", "weight_l2", "eta_step", "cosine_head", "preprocess")
MODES = ("forward", "backward", "full")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FIELDS = [
    "date", "device", "torch", "triton", "op", "size", "numel", "dtype", "provider", "mode",
    "ms_p50", "ms_p20", "ms_p80", "host_us", "bytes", "gbps", "copy_gbps", "pct_copy_bw", "peak_mb", "check", "note",
]


# --------------------------------------------------------------------------- timing
def _time(fn: Callable[[], Any], device: torch.device, warmup_ms: float, rep_ms: float) -> tuple[float, float, float]:
    """(p50, p20, p80) in ms."""
    if device.type == "cuda":
        import triton.testing

        p50, p20, p80 = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
        return float(p50), float(p20), float(p80)
    fn()
    times = []
    t_end = time.perf_counter() + rep_ms / 1e3
    while len(times) < 5 or (time.perf_counter() < t_end and len(times) < 1000):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(times, n=10, method="inclusive")
    return statistics.median(times), q[1], q[7]


def _host_us(fn: Callable[[], Any], device: torch.device, n: int = 50) -> float:
    """Median wall time of one call, calls issued back to back without a sync (µs).

    On CUDA a call returns once its launches are queued; 50 calls of a few launches each stay far
    below the launch queue's depth, so the figure is the host's cost per call, not the GPU's.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return statistics.median(times) * 1e6


def _peak_mb(fn: Callable[[], Any], device: torch.device) -> float:
    """Peak memory allocated while ``fn`` runs, above what was allocated before (MB); NaN off CUDA."""
    if device.type != "cuda":
        return math.nan
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    out = fn()
    torch.cuda.synchronize(device)
    del out
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def copy_bandwidth_gbps(device: torch.device, warmup_ms: float, rep_ms: float, nbytes: int | None = None) -> float:
    """Device-to-device ``copy_`` bandwidth, counting bytes read plus bytes written."""
    if nbytes is None:
        nbytes = 1 << 29 if device.type == "cuda" else 1 << 24
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    p50, _, _ = _time(lambda: dst.copy_(src), device, warmup_ms, rep_ms)
    return 2 * nbytes / (p50 * 1e-3) / 1e9


# --------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One op at one size: builds inputs and, per provider, forward / backward / full callables."""

    op: str
    label: str
    params: dict
    bytes_by_mode: dict[str, int]
    inputs: dict = field(default_factory=dict)


def _sizes(op: str, preset: str) -> list[dict]:
    if preset == "real":
        return _real_sizes(op)
    if op in ("grad_combine", "preprocess"):
        if preset == "tiny":
            return [dict(B=2, R=32, N=2)]
        if preset == "quick":
            return [dict(B=1, R=256, N=2), dict(B=4, R=512, N=3), dict(B=16, R=1024, N=5)]
        if preset == "large":
            return [dict(B=16, R=1024, N=5)]
        return [dict(B=b, R=r, N=n) for r in (256, 512, 1024) for b in (1, 4, 16) for n in (2, 5)]
    if op == "weight_l2":
        if preset == "tiny":
            return [dict(numel=200_000)]
        if preset == "quick":
            return [dict(numel=10_000_000), dict(numel=100_000_000), dict(numel=1_000_000_000)]
        if preset == "large":
            return [dict(numel=1_000_000_000)]
        return [dict(numel=n) for n in (10_000_000, 30_000_000, 100_000_000, 300_000_000, 1_000_000_000)]
    if op == "eta_step":
        # Latents of SD-class models are [B, 4, 128², …]: at those sizes the step is launch-bound;
        # 64M and 256M elements (0.75 / 3 GB per fp32 full pass) are where bandwidth is measurable.
        if preset == "tiny":
            return [dict(B=2, C=4, R=16)]
        if preset == "quick":
            return [dict(B=1, C=4, R=64), dict(B=16, C=4, R=128), dict(B=16, C=16, R=512)]
        if preset == "large":
            return [dict(B=16, C=16, R=1024)]
        return [dict(B=b, C=c, R=r) for b in (1, 4, 16) for c, r in ((4, 64), (4, 128), (16, 128))] + [
            dict(B=16, C=16, R=512), dict(B=16, C=16, R=1024)]
    if op == "cosine_head":
        if preset == "tiny":
            return [dict(B=4, D=64)]
        if preset == "quick":
            return [dict(B=16, D=768), dict(B=1024, D=1024), dict(B=16384, D=1024)]
        if preset == "large":
            return [dict(B=16384, D=1024)]
        return [dict(B=b, D=d) for b in (16, 256, 4096, 16384) for d in (768, 1024)]
    raise ValueError(op)


def _real_sizes(op: str) -> list[dict]:
    """The sizes r0kit really runs (see the module docstring), smallest first."""
    if op == "grad_combine":
        return [dict(B=b, R=512, N=4) for b in (1, 4, 8)]
    if op == "preprocess":
        return [dict(B=b, R=512, N=3, real=True) for b in (1, 4, 8)]
    if op == "eta_step":
        return [dict(B=b, C=4, R=r) for r in (64, 128) for b in (1, 2, 4, 8, 16)]
    if op == "cosine_head":
        return [dict(B=b, D=1024) for b in (1, 4, 16)]
    if op == "weight_l2":
        return [dict(kind="lora", numel=n) for n in (1_000_000, 10_000_000, 50_000_000)] + [dict(kind="sd15"), dict(kind="sdxl")]
    raise ValueError(op)


def _real_contracts():
    """R0's rewards' contracts: CLIP and ImageReward (one preprocessing), HPS's letterbox, PickScore's floor offset."""
    from r0kit.images import RewardContract

    return [RewardContract(), RewardContract(crop="pad"), RewardContract(crop_offset="floor")]


def _contracts(n: int, tiny: bool):
    from r0kit.images import IMAGENET_MEAN, IMAGENET_STD, RewardContract

    if tiny:
        pool = [RewardContract(size=16), RewardContract(size=12, resize="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD)]
    else:
        pool = [
            RewardContract(size=224),  # CLIP / HPS / PickScore
            RewardContract(size=224, resize="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD),
            RewardContract(size=256, resize="bicubic"),
            RewardContract(size=336, resize="bicubic"),
            RewardContract(size=512, resize="bilinear", antialias=False),
        ]
    return (pool * n)[:n] if n > len(pool) else pool[:n]


def _bytes(op: str, p: dict, s: int, contracts=None) -> dict[str, int]:
    """Minimal bytes per mode (s = element size); the formulas are derived in each op's module docstring."""
    if op == "grad_combine":
        M, N = p["B"] * 3 * p["R"] ** 2, p["N"]
        fwd, bwd = (2 * N + 1) * M * s, (3 * N + 2) * M * s  # two passes over the N inputs; dot pass + update pass
    elif op == "preprocess":
        X = p["B"] * 3 * p["R"] ** 2
        Y = sum(p["B"] * 3 * c.size**2 for c in contracts)
        fwd, bwd = (X + Y) * s, (2 * X + Y) * s  # read X, write Ys; read Gs and X (clamp mask), write dX
    elif op == "weight_l2":
        N = p["numel"]
        return {"forward": 2 * N * s, "full": 4 * N * s}  # loss: read θ, θ₀; + read and write .grad
    elif op == "eta_step":
        N = p["B"] * p["C"] * p["R"] ** 2
        fwd, bwd = 3 * N * s, 3 * N * s  # read x̂₀, ε̂, write x; read G, write ∂x̂₀, ∂ε̂
    elif op == "cosine_head":
        BD = p["B"] * p["D"]
        fwd, bwd = 2 * BD * s, 4 * BD * s  # read a, t; read a, t, write ∂a, ∂t
    else:
        raise ValueError(op)
    return {"forward": fwd, "backward": bwd, "full": fwd + bwd}


def _param_shapes(numel: int) -> list[tuple[int, ...]]:
    """A parameter set of about ``numel`` elements: 20 large matrices and 4 small vectors."""
    big = max(1, (numel - 4 * 1024) // 20)
    cols = 1024 if big >= 1024 else 1
    return [(big // cols, cols)] * 20 + [(1024,)] * 4


#: SDXL's UNet (stabilityai/stable-diffusion-xl-base-1.0, unet/config.json), the keys that differ from
#: diffusers' UNet2DConditionModel defaults; SD1.5's differs in cross_attention_dim only.
_UNET_CONFIGS = {
    "sd15": dict(cross_attention_dim=768),
    "sdxl": dict(
        block_out_channels=(320, 640, 1280), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    ),
}


def _unet_shapes(kind: str) -> list[tuple[int, ...]]:
    """Every parameter shape of the SD1.5 or SDXL UNet, built on the meta device (no memory, no weights)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**_UNET_CONFIGS[kind])
    return [tuple(p.shape) for p in unet.parameters()]


def _lora_shapes(numel: int) -> list[tuple[int, ...]]:
    """LoRA A [r, in] and B [out, r] for every attention projection of SD1.5's UNet, rank r chosen so the
    set holds about ``numel`` parameters (peft's default target modules: to_q, to_k, to_v, to_out.0)."""
    try:
        from diffusers import UNet2DConditionModel

        with torch.device("meta"):
            unet = UNet2DConditionModel(**_UNET_CONFIGS["sd15"])
        linears = [m for n, m in unet.named_modules() if n.endswith(("to_q", "to_k", "to_v", "to_out.0"))]
        dims = [(m.in_features, m.out_features) for m in linears]
    except ImportError:  # the same count of projections, widths as SD1.5's
        dims = [(w, w) for w in (320, 640, 1280, 1280, 640, 320) for _ in range(16)]
    rank = max(1, round(numel / sum(i + o for i, o in dims)))
    return [s for i, o in dims for s in ((rank, i), (o, rank))]


def _weight_shapes(p: dict) -> tuple[str, list[tuple[int, ...]]]:
    kind = p.get("kind")
    if kind == "lora":
        shapes = _lora_shapes(p["numel"])
        return f"LoRA r{shapes[0][0]} ({len(shapes)} tensors)", shapes
    if kind in ("sd15", "sdxl"):
        try:
            shapes = _unet_shapes(kind)
        except ImportError:
            shapes = _param_shapes({"sd15": 859_520_964, "sdxl": 2_567_463_684}[kind])
        return f"{'SD1.5' if kind == 'sd15' else 'SDXL'} UNet ({len(shapes)} tensors)", shapes
    return "", _param_shapes(p["numel"])


def build(op: str, p: dict, dtype: torch.dtype, device: torch.device, tiny: bool):
    """(label, bytes_by_mode, inputs, fns) where fns[provider] = (forward_fn, diff_inputs) or a weight_l2 dict."""
    import r0kit.kernels as K

    g = torch.Generator(device="cpu").manual_seed(0)
    s = torch.tensor([], dtype=dtype).element_size()

    def rnd(*shape, lo=-1.0, hi=1.0, grad=True):
        t = (torch.rand(shape, generator=g, dtype=torch.float32) * (hi - lo) + lo).to(device=device, dtype=dtype)
        return t.requires_grad_(grad)

    if op == "grad_combine":
        B, R, N = p["B"], p["R"], p["N"]
        grads = [rnd(B, 3, R, R) for _ in range(N)]
        p["numel"] = B * 3 * R * R
        w = [5.0, 1.0, 0.01, 0.05, 2.0][:N] + [1.0] * max(0, N - 5)
        ref = lambda *gs: K.grad_combine_reference(list(gs), w, 1e-8)  # noqa: E731
        api = lambda *gs: K.grad_combine(list(gs), w, 1e-8)  # noqa: E731
        return f"B{B}x3x{R}^2 N{N}", _bytes(op, p, s), grads, ref, api
    if op == "preprocess":
        B, R, N = p["B"], p["R"], p["N"]
        contracts = _real_contracts() if p.get("real") else _contracts(N, tiny)
        x = rnd(B, 3, R, R, lo=0.0, hi=1.0)
        p["numel"] = B * 3 * R * R
        ref = lambda im: tuple(K.preprocess_reference(im, contracts))  # noqa: E731
        api = lambda im: tuple(K.preprocess_fused(im, contracts))  # noqa: E731
        return f"B{B}x3x{R}^2 K{N}", _bytes(op, p, s, contracts), [x], ref, api
    if op == "eta_step":
        B, C, R = p["B"], p["C"], p["R"]
        x0, ep = rnd(B, C, R, R), rnd(B, C, R, R)
        p["numel"] = B * C * R * R
        eta = torch.rand(B, generator=g).to(device)
        ref = lambda a, b: K.eta_step_reference(a, b, 0.8, 0.6, eta, seed=1, offset=0)  # noqa: E731
        api = lambda a, b: K.eta_step(a, b, 0.8, 0.6, eta, seed=1, offset=0)  # noqa: E731
        api.reference_with_noise = lambda a, b, xi: K.eta_step_reference(a, b, 0.8, 0.6, eta, noise=xi)
        return f"B{B}x{C}x{R}^2", _bytes(op, p, s), [x0, ep], ref, api
    if op == "cosine_head":
        B, D = p["B"], p["D"]
        a, t = rnd(B, D), rnd(B, D)
        p["numel"] = B * D
        ref = lambda x, y: K.cosine_head_reference(x, y, 100.0)  # noqa: E731
        api = lambda x, y: K.cosine_head(x, y, 100.0)  # noqa: E731
        return f"B{B}xD{D}", _bytes(op, p, s), [a, t], ref, api
    if op == "weight_l2":
        what, shapes = _weight_shapes(p)
        params = [rnd(*sh, grad=False) for sh in shapes]
        refs = [rnd(*sh, grad=False) for sh in shapes]
        grads = [torch.zeros_like(t) for t in params]
        n = sum(t.numel() for t in params)
        p["numel"] = n
        return f"{n / 1e6:.3g}M params {what}".strip(), _bytes(op, {"numel": n}, s), (params, refs, grads), None, None
    raise ValueError(op)


# --------------------------------------------------------------------------- weight_l2 providers
def _weight_l2_fns(provider: str, params, refs, grads, lam=1e-3):
    """forward: the loss; full: loss + 2λ(θ − θ₀) added into existing gradient buffers."""
    import r0kit.kernels as K

    def eager_full(ps, rs, gs):
        total = 0.0
        for p_, r_, g_ in zip(ps, rs, gs):
            d = p_.float() - r_.float()
            total = total + (d * d).sum()
            g_.add_((2.0 * lam * d).to(g_.dtype))
        return lam * total

    def eager_fwd(ps, rs):
        return lam * sum(((p_.float() - r_.float()) ** 2).sum() for p_, r_ in zip(ps, rs))

    if provider == "eager":
        return lambda: eager_fwd(params, refs), lambda: eager_full(params, refs, grads)
    if provider == "compile":
        cf, cfull = torch.compile(eager_fwd), torch.compile(eager_full)
        return lambda: cf(params, refs), lambda: cfull(params, refs, grads)
    leaves = [t.detach().requires_grad_(True) for t in params]
    for leaf_, g_ in zip(leaves, grads):
        leaf_.grad = g_

    def fused_full():
        return K.weight_l2(leaves, refs, lam)

    def fused_fwd():
        with torch.no_grad():
            return K.weight_l2(leaves, refs, lam, accumulate_grad=False)

    return fused_fwd, fused_full


# --------------------------------------------------------------------------- driver
def _with_backend(provider: str, fn):
    backend = {"triton": "triton", "auto": "auto"}.get(provider)
    if backend is None:
        return fn

    def run(*a, **k):
        old = os.environ.get("R0KIT_KERNELS")
        os.environ["R0KIT_KERNELS"] = backend
        try:
            return fn(*a, **k)
        finally:
            if old is None:
                os.environ.pop("R0KIT_KERNELS", None)
            else:
                os.environ["R0KIT_KERNELS"] = old

    return run


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def _tolerance(dtype):
    return {torch.float32: (1e-3, 1e-3), torch.float16: (2e-2, 2e-2), torch.bfloat16: (1e-1, 5e-2)}[dtype]


def _check(out, ref, dtype) -> str:
    atol, rtol = _tolerance(dtype)
    try:
        for o, r in zip(_as_tuple(out), _as_tuple(ref)):
            torch.testing.assert_close(o.detach().float(), r.detach().float(), atol=atol, rtol=rtol)
    except AssertionError as exc:
        return "FAIL: " + str(exc).splitlines()[0][:120]
    return "ok"


def device_slug(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine() or "cpu")
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "cpu"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {os.cpu_count()} threads)"


def run_case(op, p, dtype, device, providers, modes, tiny, warmup_ms, rep_ms, copy_gbps, meta, log) -> list[dict]:
    import r0kit.kernels as K

    rows: list[dict] = []
    label, nbytes, inputs, ref, api = build(op, p, dtype, device, tiny)
    base = dict(meta, op=op, size=label, numel=p.get("numel", ""), dtype=str(dtype).replace("torch.", ""),
                copy_gbps=f"{copy_gbps:.1f}")

    def row(provider, mode, t, peak, check, note="", host=math.nan):
        b = nbytes[mode]
        gbps = b / (t[0] * 1e-3) / 1e9 if t else math.nan
        rows.append(dict(
            base, provider=provider, mode=mode, bytes=b,
            ms_p50=f"{t[0]:.4f}" if t else "", ms_p20=f"{t[1]:.4f}" if t else "", ms_p80=f"{t[2]:.4f}" if t else "",
            host_us="" if math.isnan(host) else f"{host:.1f}",
            gbps=f"{gbps:.5g}" if t else "", pct_copy_bw=f"{100 * gbps / copy_gbps:.4g}" if t else "",
            peak_mb="" if math.isnan(peak) else f"{peak:.1f}", check=check, note=note,
        ))
        log(f"  {op:12s} {label:22s} {provider:8s} {mode:8s} "
            + (f"p50 {t[0]:9.4f} ms  host {host:7.1f} us  {gbps:8.1f} GB/s  {100 * gbps / copy_gbps:5.1f}% copy  "
               f"peak {peak:9.1f} MB  {check}" if t else f"-- {note}"))

    if op == "weight_l2":
        params, refs, grads = inputs
        expected = None
        for provider in providers:
            try:
                fwd, full = _weight_l2_fns(provider, params, refs, grads)
                loss = _with_backend(provider, fwd)()
                if provider == "eager":
                    expected = loss
                check = "ref" if provider == "eager" else (_check(loss, expected, dtype) if expected is not None else "unchecked")
                for mode, fn in (("forward", fwd), ("full", full)):
                    if mode not in modes:
                        continue
                    f = _with_backend(provider, fn)
                    row(provider, mode, _time(f, device, warmup_ms, rep_ms), _peak_mb(f, device), check,
                        host=_host_us(f, device))
            except Exception as exc:  # noqa: BLE001 - one provider failing must not stop the sweep
                log(f"  {op} {label} {provider}: {type(exc).__name__}: {exc}")
                log(traceback.format_exc(limit=3))
                row(provider, "full", None, math.nan, "error", f"{type(exc).__name__}: {str(exc)[:200]}")
            finally:
                for t in grads:
                    t.zero_()
        return rows

    expected = None
    for provider in providers:
        try:
            fn = ref if provider in ("eager", "compile") else api
            if provider == "compile":
                fn = torch.compile(ref)
            f = _with_backend(provider, fn)
            out = _as_tuple(f(*inputs))
            if provider == "eager":
                expected = out
            if op == "eta_step" and provider in ("triton", "auto"):
                # the kernel draws its own (reproducible) noise: compare with the reference fed that noise
                backend = "triton" if provider == "triton" else K.select_backend("eta_step", inputs)
                xi = K.eta_noise(inputs[0].shape, 1, 0, device=device, backend=backend)
                with torch.no_grad():
                    want = (api.reference_with_noise(*inputs, xi),)
                check = _check(out, want, dtype)
            else:
                check = "ref" if provider == "eager" else (_check(out, expected, dtype) if expected is not None else "unchecked")
            diff = [o for o in out if o.requires_grad]
            ups = [torch.randn_like(o) * 0.5 for o in diff]  # a fixed non-unit upstream gradient

            def forward():
                return f(*inputs)

            def backward():
                return torch.autograd.grad(diff, inputs, ups, retain_graph=True)

            def full():
                o = [t for t in _as_tuple(f(*inputs)) if t.requires_grad]
                return torch.autograd.grad(o, inputs, ups)

            for mode, m_fn in (("forward", forward), ("backward", backward), ("full", full)):
                if mode not in modes:
                    continue
                m_fn()  # compile / autotune outside the timed region
                row(provider, mode, _time(m_fn, device, warmup_ms, rep_ms), _peak_mb(m_fn, device), check,
                    host=_host_us(m_fn, device))
            del out
            diff.clear()  # free the outputs and upstream gradients before the next provider (the closures hold the lists)
            ups.clear()
        except Exception as exc:  # noqa: BLE001
            log(f"  {op} {label} {provider}: {type(exc).__name__}: {exc}")
            log(traceback.format_exc(limit=3))
            row(provider, "full", None, math.nan, "error", f"{type(exc).__name__}: {str(exc)[:200]}")
    return rows


def _fits(op: str, p: dict, dtype: torch.dtype, device: torch.device) -> bool:
    """Skip sizes whose inputs plus eager's temporaries (a generous multiple) exceed free memory."""
    if device.type != "cuda":
        return True
    s = torch.tensor([], dtype=dtype).element_size()
    n = {"grad_combine": lambda: p["B"] * 3 * p["R"] ** 2 * (p["N"] * 4 + 4),
         "preprocess": lambda: p["B"] * 3 * p["R"] ** 2 * 8,
         "weight_l2": lambda: (p.get("numel") or {"sd15": 860_000_000, "sdxl": 2_570_000_000}[p["kind"]]) * 6,
         "eta_step": lambda: p["B"] * p["C"] * p["R"] ** 2 * 12,
         "cosine_head": lambda: p["B"] * p["D"] * 12}[op]()
    free, _ = torch.cuda.mem_get_info(device)
    return n * max(s, 4) < 0.8 * free


def _kernels_interpreted() -> bool:
    mod = sys.modules.get("r0kit.kernels.grad_combine")
    kern = getattr(mod, "_combine_fwd_kernel", None)
    return type(kern).__name__ == "InterpretedFunction"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="r0kit bench kernels", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", default=",".join(OPS), help=f"comma list of {', '.join(OPS)}")
    ap.add_argument("--providers", default=None, help="comma list of eager, compile, triton, auto (default: eager,compile,triton on CUDA; eager,auto on CPU)")
    ap.add_argument("--modes", default="forward,backward,full")
    ap.add_argument("--dtypes", default="fp32", help="comma list of fp32, fp16, bf16")
    ap.add_argument("--sizes", default=None, choices=["tiny", "quick", "large", "full", "real"],
                    help="default: full on CUDA, tiny on CPU; large: only each op's largest size (the headline rows); "
                    "real: the sizes r0kit runs (see the module docstring)")
    ap.add_argument("--quick", action="store_true", help="same as --sizes quick")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--interpret", action="store_true", help="on CPU, also time Triton's interpreter (tiny sizes only)")
    ap.add_argument("--csv", default=None, help="CSV to append to (default benchmarks/results/kernels_<device-slug>.csv)")
    ap.add_argument("--max-minutes", type=float, default=None, help="stop starting new measurements after this long")
    ap.add_argument("--warmup-ms", type=float, default=None)
    ap.add_argument("--rep-ms", type=float, default=None)
    args = ap.parse_args(argv)

    if args.interpret and not _kernels_interpreted():
        # Triton decides interpret-or-compile when it and the kernels are imported, which has
        # happened already (importing this module imported r0kit.kernels): rerun in a fresh process.
        import subprocess

        env = dict(os.environ, TRITON_INTERPRET="1")
        argv = sys.argv[1:] if argv is None else list(argv)
        return subprocess.call([sys.executable, "-m", "r0kit.kernels.bench", *argv], env=env)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_cuda = device.type == "cuda"
    preset = "quick" if args.quick else (args.sizes or ("full" if on_cuda else "tiny"))
    providers = (args.providers or ("eager,compile,triton" if on_cuda else "eager,auto")).split(",")
    if args.interpret and not on_cuda and "triton" not in providers:
        providers.append("triton")
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    bad = [o for o in ops if o not in OPS] + [p for p in providers if p not in ("eager", "compile", "triton", "auto")]
    bad += [m for m in args.modes.split(",") if m not in MODES] + [d for d in args.dtypes.split(",") if d not in DTYPES]
    if bad:
        print(f"unknown choice(s): {', '.join(bad)}; see --help", file=sys.stderr)
        return 2
    if "triton" in providers and not on_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        print("the triton provider on CPU needs --interpret", file=sys.stderr)
        return 2
    modes = args.modes.split(",")
    warmup_ms = args.warmup_ms if args.warmup_ms is not None else (25.0 if on_cuda else 5.0)
    rep_ms = args.rep_ms if args.rep_ms is not None else (100.0 if on_cuda else 30.0)
    deadline = time.monotonic() + 60 * args.max_minutes if args.max_minutes else math.inf


    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # noqa: BLE001
        triton_version = "absent"
    if on_cuda:
        import torch._dynamo as dynamo

        dynamo.config.cache_size_limit = max(64, dynamo.config.cache_size_limit)
    path = args.csv or os.path.join("benchmarks", "results", f"kernels_{device_slug(device)}.csv")
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    copy_gbps = copy_bandwidth_gbps(device, warmup_ms, rep_ms)
    meta = dict(date=_dt.datetime.now().isoformat(timespec="seconds"), device=_device_name(device),
                torch=torch.__version__, triton=triton_version)
    log(f"r0kit kernel bench on {meta['device']} (torch {meta['torch']}, triton {triton_version}); "
        f"copy bandwidth {copy_gbps:.1f} GB/s; sizes={preset}; providers={','.join(providers)} -> {path}")

    plan = []
    if preset == "real":  # every size of every op, small to large (the small ones are the point), op by op in turn
        for dt in args.dtypes.split(","):
            per_op = [[(op, p, DTYPES[dt]) for p in _sizes(op, preset)] for op in ops]
            for i in range(max(len(cases) for cases in per_op)):
                plan += [cases[i] for cases in per_op if i < len(cases)]
    else:  # every op's largest size first (the headline), then the rest small to large
        for dt in args.dtypes.split(","):
            plan += [(op, _sizes(op, preset)[-1], DTYPES[dt]) for op in ops]
        for dt in args.dtypes.split(","):
            plan += [(op, p, DTYPES[dt]) for op in ops for p in _sizes(op, preset)[:-1]]

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    new_file = not os.path.exists(path) or os.path.getsize(path) == 0
    if not new_file:
        with open(path, newline="") as fh:
            header = next(csv.reader(fh), [])
        if header != FIELDS:
            print(f"{path} has other columns ({len(header)}) than this version writes ({len(FIELDS)}); "
                  "pass --csv with a new file", file=sys.stderr)
            return 2
    n_rows, failures, skipped = 0, 0, 0
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        if new_file:
            writer.writeheader()
        for op, p, dtype in plan:
            if time.monotonic() > deadline:
                skipped += 1
                log(f"  skip {op} {p} {dtype}: --max-minutes reached")
                continue
            if not _fits(op, p, dtype, device):
                log(f"  skip {op} {p} {dtype}: does not fit in free device memory")
                continue
            try:
                rows = run_case(op, p, dtype, device, providers, modes, preset == "tiny", warmup_ms, rep_ms, copy_gbps, meta, log)
            except Exception as exc:  # noqa: BLE001 - building one case failed (e.g. OOM): log, go on
                log(f"  {op} {p}: {type(exc).__name__}: {exc}")
                log(traceback.format_exc(limit=4))
                failures += 1
                rows = []
            finally:
                if on_cuda:
                    torch.cuda.empty_cache()
            failures += sum(1 for r in rows if r["check"] not in ("ok", "ref"))
            writer.writerows(rows)
            fh.flush()
            n_rows += len(rows)
    log(f"wrote {n_rows} rows to {path}" + (f"; {failures} failed or unchecked" if failures else "")
        + (f"; {skipped} cases skipped for time" if skipped else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
