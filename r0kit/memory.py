"""How much accelerator memory an R0 training run needs, before it starts (``r0kit train --dry-run``).

Nothing is downloaded but configs and nothing is computed: every component is built
from its ``config.json`` on the **meta device**, where tensors have shapes and no
storage, so counting an 12B-parameter FLUX transformer takes a second.

* **Parameters**: counted exactly per component (backbone, VAE, text encoders) in the
  dtype they load in; trainable ones (LoRA on the configured targets, or all of the
  backbone) are counted by adding the adapter to the meta backbone.
* **Gradients, optimizer state, EMA and θ₀**: per trainable parameter, in its dtype:
  one gradient; AdamW/Adam two moments, SGD one momentum buffer (none at momentum 0);
  a float32 EMA copy when enabled; the ``weight_l2`` reference θ₀ the kstep generator keeps.
* **Activations**: measured, not modelled. One network evaluation runs on the meta
  device at the run's batch and resolution under ``saved_tensors_hooks``; the
  storages autograd saves for the backward are summed (each storage once, parameters
  excluded), split into what each checkpointing unit saves inside (the transformer
  blocks, UNet resnets and attention blocks diffusers checkpoints) and the unit inputs.
  Attention is counted as a fused kernel keeps it (q, k, v, the output and a float32
  log-sum-exp per query; no N×N matrix). Without checkpointing the K unrolled
  evaluations keep everything; with it they keep the unit inputs and one unit's
  activations are rebuilt at a time. The VAE decode is measured the same way.
  Under bf16 autocast with float32 weights, each evaluation also keeps a bf16 copy of
  every frozen weight it multiplies (autograd saves the cast for the input gradient),
  unless checkpointing drops it.
* **Sharding**: under FSDP the backbone's parameters, gradients, optimizer state, EMA
  and θ₀ are divided among the processes; the VAE, text encoders and activations are not.

Not included: the reward models (their own weights and activations), the CUDA context
and allocator slack (plan for 1–3 GiB more), and temporary buffers of single kernels.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from r0kit.errors import OptionError, WeightsError

GIB = 2**30


def _size(n: int) -> str:
    """``n`` bytes as GiB, or MiB / KiB below one GiB / MiB."""
    for unit, scale in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale or unit == "KiB":
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"
#: The modules diffusers' gradient checkpointing wraps one at a time.
CHECKPOINT_UNITS = ("JointTransformerBlock", "FluxTransformerBlock", "FluxSingleTransformerBlock", "ResnetBlock2D", "BasicTransformerBlock")
#: Common accelerator memory sizes in GiB, for the "fits" line.
GPU_SIZES = (16, 24, 40, 48, 80, 141)


@dataclass
class MemoryEstimate:
    """Bytes per item of a training run, on one process (see the module docstring)."""

    model: str
    kind: str
    setting: dict[str, Any]
    params: dict[str, int]  #: component (and "LoRA" for its added weights) -> parameter count
    param_bytes: dict[str, int]  #: component -> bytes of its weights
    trainable: int
    trainable_bytes: int  #: the trainable weights (the LoRA entry, or all of the backbone)
    grads: int
    optimizer: int
    ema: int
    reference: int
    activations: int  #: without gradient checkpointing
    activations_ckpt: int  #: with gradient checkpointing (backbone and VAE)
    per_eval: dict[str, int] = field(default_factory=dict)

    @property
    def shardable(self) -> int:
        """What FSDP divides among processes: the backbone's (and LoRA's) weights and every per-trainable-parameter state."""
        weights = self.param_bytes.get("backbone", 0) + self.param_bytes.get("LoRA", 0)
        return weights + self.grads + self.optimizer + self.ema + self.reference

    def total(self, *, checkpointing: bool, processes: int = 1) -> int:
        replicated = sum(v for k, v in self.param_bytes.items() if k not in ("backbone", "LoRA"))
        act = self.activations_ckpt if checkpointing else self.activations
        return replicated + self.shardable // max(1, processes) + act

    def table(self) -> str:
        """A plain-text report: the items, the totals with and without checkpointing, and per FSDP process count."""
        s = self.setting
        lines = [
            f"memory estimate for {self.model} ({self.kind}): K={s['steps']} (backprop through {s['backprop_steps']}), "
            f"batch {s['batch_size']}, {s['height']}x{s['width']}, train={s['train']}"
            + (f" (rank {s['lora_rank']})" if s["train"] == "lora" else "")
            + f", weights {s['dtype']}, mixed precision {s['mixed_precision']}, optimizer {s['optimizer']}",
            "",
        ]
        row = "  {:<44} {:>15} {:>12}"
        lines.append(row.format("item", "parameters", "memory"))
        for k, n in self.params.items():
            lines.append(row.format(f"weights: {k}", f"{n:,}", _size(self.param_bytes[k])))
        where = "the LoRA weights" if "LoRA" in self.params else "all of the backbone"
        lines.append(row.format(f"trainable ({where})", f"{self.trainable:,}", _size(self.trainable_bytes)))
        for label, v in (("gradients", self.grads), ("optimizer state", self.optimizer), ("EMA (float32)", self.ema),
                         ("weight_l2 reference θ₀", self.reference)):
            lines.append(row.format(label, "", _size(v)))
        lines.append(row.format("activations, no checkpointing", "", _size(self.activations)))
        lines.append(row.format("activations, gradient checkpointing", "", _size(self.activations_ckpt)))
        lines.append("")
        lines.append("  per network evaluation: " + ", ".join(f"{k} {_size(v)}" for k, v in self.per_eval.items()))
        lines.append("")
        lines.append("  total per process (GiB)        1 process    FSDP x2    FSDP x4    FSDP x8")
        for ck in (False, True):
            label = "gradient checkpointing" if ck else "no checkpointing"
            vals = [self.total(checkpointing=ck, processes=p) / GIB for p in (1, 2, 4, 8)]
            lines.append(f"  {label:<30} " + "  ".join(f"{v:9.1f}" for v in vals))
        best = self.total(checkpointing=True) / GIB
        fits = [g for g in GPU_SIZES if g >= best * 1.08 + 2]
        lines.append("")
        lines.append(
            f"  one process with checkpointing needs about {best:.1f} GiB plus the reward models and 1-3 GiB of CUDA context: "
            + (f"a {fits[0]} GB GPU or larger" if fits else "more than one GPU: shard with FSDP (see the README)")
        )
        return "\n".join(lines)


# ---------------------------------------------------------------------------- building on the meta device
def _config_path(model: str, sub: str) -> Path:
    from r0kit.weights import resolve_file

    return resolve_file(model, f"{sub}/config.json" if sub else "model_index.json", what=f"the config of {model}")


def _meta_component(model: str, index: dict[str, Any], key: str) -> torch.nn.Module | None:
    spec = index.get(key)
    if not (isinstance(spec, (list, tuple)) and len(spec) == 2 and spec[0]):
        return None
    library, cls_name = spec
    path = _config_path(model, key)
    module = __import__(library, fromlist=[cls_name])
    cls = getattr(module, cls_name)
    with torch.device("meta"):
        if library == "diffusers":
            return cls.from_config(json.loads(path.read_text()))
        import transformers

        cfg = transformers.AutoConfig.from_pretrained(str(path.parent))
        return cls(cfg)


@dataclass
class _Saved:
    """Storages autograd saves, each once, attributed to the checkpointing unit that was running."""

    params: set[int]
    seen: set[int] = field(default_factory=set)
    outside: int = 0
    units: list[int] = field(default_factory=list)
    unit_inputs: int = 0
    current: int | None = None

    def add(self, t: torch.Tensor) -> None:
        key = t.untyped_storage()._cdata
        if key in self.params or key in self.seen:
            return
        self.seen.add(key)
        n = t.untyped_storage().nbytes()
        if self.current is None:
            self.outside += n
        else:
            self.units[self.current] += n


@contextlib.contextmanager
def _fused_attention() -> Iterator[None]:
    """``F.scaled_dot_product_attention`` as a fused kernel keeps it for the backward: q, k, v, out and an
    float32 log-sum-exp per query (on the meta device torch would pick the math path and keep N×N)."""
    original = torch.nn.functional.scaled_dot_product_attention

    class Fused(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            out = q.new_empty(*q.shape[:-1], v.shape[-1])
            lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
            ctx.save_for_backward(q, k, v, out, lse)
            return out

        @staticmethod
        def backward(ctx, g):  # never run: the estimate only records what is saved
            q, k, v, _, _ = ctx.saved_tensors
            return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def sdpa(query, key, value, *args, **kwargs):
        return Fused.apply(query, key, value)

    torch.nn.functional.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


def _measure(net: torch.nn.Module, run) -> tuple[int, list[int], int]:
    """``(outside, per-unit saved bytes, unit input bytes)`` of one differentiated call of ``run()``."""
    params = {p.untyped_storage()._cdata for p in net.parameters()} | {b.untyped_storage()._cdata for b in net.buffers()}
    saved = _Saved(params)
    units = [m for m in net.modules() if type(m).__name__ in CHECKPOINT_UNITS]
    outer = [m for m in units if not any(m is not o and any(m is c for c in o.modules()) for o in units)]
    handles = []
    inputs_seen: set[int] = set()

    def pre(idx):
        def hook(module, args, kwargs):
            saved.current = idx
            for t in list(args) + list(kwargs.values()):
                if isinstance(t, torch.Tensor) and t.is_floating_point():
                    key = t.untyped_storage()._cdata
                    if key not in params and key not in inputs_seen:
                        inputs_seen.add(key)
                        saved.unit_inputs += t.untyped_storage().nbytes()

        return hook

    def post(module, args, kwargs, out):
        saved.current = None

    for i, m in enumerate(outer):
        saved.units.append(0)
        handles.append(m.register_forward_pre_hook(pre(i), with_kwargs=True))
        handles.append(m.register_forward_hook(post, with_kwargs=True))
    try:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: (saved.add(t), t)[1], lambda t: t), _fused_attention():
            run()
    finally:
        for h in handles:
            h.remove()
    return saved.outside, saved.units, saved.unit_inputs


def _conditioning(kind: str, backbone: torch.nn.Module, batch: int, t5_len: int, dtype: torch.dtype):
    from r0kit.diffusion import Conditioning

    cfg = backbone.config
    with torch.device("meta"):
        if kind == "sd3":
            return Conditioning(torch.empty(batch, 77 + t5_len, cfg.joint_attention_dim, dtype=dtype),
                                torch.empty(batch, cfg.pooled_projection_dim, dtype=dtype))
        if kind == "flux":
            return Conditioning(torch.empty(batch, t5_len, cfg.joint_attention_dim, dtype=dtype),
                                torch.empty(batch, cfg.pooled_projection_dim, dtype=dtype))
        embeds = torch.empty(batch, 77, cfg.cross_attention_dim, dtype=dtype)
        if kind == "sdxl":
            pooled_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
            return Conditioning(embeds, torch.empty(batch, pooled_dim, dtype=dtype), torch.empty(batch, 6, dtype=dtype))
        return Conditioning(embeds)


# ---------------------------------------------------------------------------- the estimate
def estimate_training(cfg: Any) -> MemoryEstimate:
    """The :class:`MemoryEstimate` of a :class:`r0kit.train.TrainConfig`.

    :raises WeightsError: a config file of the model cannot be found (offline and not cached).
    :raises OptionError: the model is not a pipeline r0kit trains.
    """
    from r0kit.diffusion import MAX_SEQUENCE_LENGTH, DiffusionModel, _kind_of, resolve_dtype

    g = cfg.generator.options()
    model = str(g["model"])
    index_path = _config_path(model, "")  # a WeightsError of its own when it cannot be fetched
    try:
        index = json.loads(index_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{model}: model_index.json cannot be read ({exc})") from None
    kind = _kind_of(index)
    if kind is None:
        raise OptionError(f"{model}: not a pipeline r0kit trains (a UNet, SD3 or FLUX.1 pipeline)")
    family = "vp" if kind in ("sd", "sdxl") else "flow"
    dtype = resolve_dtype(g.get("dtype", "float32"))
    mixed = cfg.mixed_precision
    act_dtype = torch.bfloat16 if mixed == "bf16" else dtype
    batch, k = int(cfg.batch_size), int(g.get("steps", 4))
    height, width = int(g.get("height") or 0), int(g.get("width") or 0)
    backprop = k if g.get("intermediate_supervision") else int(g.get("backprop_steps") or k)
    ckpt_backbone = bool(cfg.gradient_checkpointing or g.get("gradient_checkpointing"))
    ckpt_vae = bool(g.get("vae_checkpointing"))

    backbone = _meta_component(model, index, "unet" if family == "vp" else "transformer")
    vae = _meta_component(model, index, "vae")
    encoders = ["text_encoder", "text_encoder_2"] + (["text_encoder_3"] if kind == "sd3" and not g.get("drop_t5") else [])
    components: dict[str, torch.nn.Module] = {"backbone": backbone, "vae": vae}
    for key in encoders:
        m = _meta_component(model, index, key)
        if m is not None:
            components[key] = m
    size = DiffusionModel(backbone=backbone, vae=vae, text_encoders=[], tokenizers=[], scheduler=None, kind=kind,
                          dtype=act_dtype, device=torch.device("meta"))
    height, width = height or size.native_size, width or size.native_size
    size.latent_shape(height, width)

    params = {k_: sum(p.numel() for p in m.parameters()) for k_, m in components.items()}
    # trainable parameters: LoRA added to the meta backbone, or all of it
    train = g.get("train", "lora")
    if train == "lora":
        from peft import LoraConfig

        from r0kit.diffusion import LORA_TARGETS  # the kstep generator's defaults

        targets = g.get("lora_targets") or LORA_TARGETS[family]
        rank = int(g.get("lora_rank", 16))
        backbone.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets), init_lora_weights=False))
        trainable = sum(p.numel() for n, p in backbone.named_parameters() if "lora_" in n)
    else:
        trainable = sum(p.numel() for p in backbone.parameters())
    if train == "lora":
        params["LoRA"] = trainable
    el = torch.finfo(dtype).bits // 8
    vae_el = el if g.get("vae_dtype") is None else torch.finfo(resolve_dtype(g["vae_dtype"])).bits // 8
    if kind == "sdxl" and vae_el == 2:
        vae_el = 4  # force_upcast
    param_bytes = {k_: n * (vae_el if k_ == "vae" else el) for k_, n in params.items()}
    opt = cfg.optimizer
    moments = 2 if opt.name in ("adam", "adamw") else (1 if opt.momentum > 0 else 0)

    # activations of one evaluation, on the meta device
    backbone.to(act_dtype)
    backbone.requires_grad_(False)
    for n, p in backbone.named_parameters():
        p.requires_grad_("lora_" in n if train == "lora" else True)
    c, h, w = size.latent_shape(height, width)
    t5_len = int(g.get("max_sequence_length") or MAX_SEQUENCE_LENGTH.get(kind, 0))
    cond = _conditioning(kind, backbone, batch, t5_len, act_dtype)
    with torch.device("meta"):
        x = torch.empty(batch, c, h, w, dtype=act_dtype, requires_grad=True)
        t = torch.full((batch,), 999.0)
    outside, units, unit_inputs = _measure(backbone, lambda: size._forward(x, t, cond, 1.0))
    inside = sum(units)
    vae.to(act_dtype if mixed == "bf16" and kind != "sdxl" else torch.float32 if vae_el == 4 else dtype)
    with torch.device("meta"):
        z = torch.empty(batch, c, h, w, dtype=next(vae.parameters()).dtype, requires_grad=True)
    v_out, v_units, v_inputs = _measure(vae, lambda: vae.decode(z, return_dict=False))
    vae_act = v_out + sum(v_units)
    frozen_bytes = 0
    if mixed == "bf16" and dtype == torch.float32:  # autocast's bf16 copies of frozen weights, kept per evaluation
        frozen = sum(p.numel() for n, p in backbone.named_parameters() if not p.requires_grad and p.dim() > 1)
        frozen_bytes = 2 * frozen
    per_eval = {"backbone (no checkpointing)": outside + inside + frozen_bytes,
                "backbone (checkpointing)": outside + unit_inputs, "VAE decode": vae_act}
    # Without checkpointing every evaluation keeps all it saved, and the decode's activations come on top.
    act = backprop * (outside + inside + frozen_bytes) + vae_act
    # With it the evaluations keep the unit inputs; the decode's activations (kept, or rebuilt when the VAE is
    # checkpointed) are freed by its backward before the units are rebuilt, one at a time.
    rebuilt_unit = max(units, default=0) + frozen_bytes // max(1, len(units))
    act_ckpt = backprop * (outside + unit_inputs) + max(vae_act, rebuilt_unit)
    return MemoryEstimate(
        model=model,
        kind=kind,
        setting=dict(steps=k, backprop_steps=backprop, batch_size=batch, height=height, width=width, train=train,
                     lora_rank=g.get("lora_rank", 16), dtype=str(dtype).replace("torch.", ""), mixed_precision=mixed,
                     optimizer=opt.name, checkpointing=ckpt_backbone, vae_checkpointing=ckpt_vae),
        params=params,
        param_bytes=param_bytes,
        trainable=trainable,
        trainable_bytes=trainable * el,
        grads=trainable * el,
        optimizer=moments * trainable * el,
        ema=4 * trainable if cfg.ema.enabled else 0,
        reference=trainable * el,
        activations=act,
        activations_ckpt=act_ckpt,
        per_eval=per_eval,
    )


__all__ = ["CHECKPOINT_UNITS", "MemoryEstimate", "estimate_training"]
