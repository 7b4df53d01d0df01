"""R0: a trainable K-step generator (``kstep``) and the ``weight_l2`` regularizer.

``kstep``
    A pretrained diffusers model unrolled for K steps (4 by default) from pure
    noise: a UNet (SD 1.x/2.x, SD-Turbo, SDXL) or a rectified-flow transformer
    (SD3/SD3.5, FLUX.1). Each step predicts ``x̂₀`` and moves to the next noise
    level with

    ``x_{t'} = α' x̂₀ + σ' (√(1 − η²) ε̂ + η ξ)``

    (``α' = 1 − t'``, ``σ' = t'`` for rectified flow) where ``η`` is drawn per
    sample and per step from ``U[eta_min, eta_max]`` while training (R0's
    random-η regularization) and is 0 when evaluating. The network is trained by
    LoRA (peft, on the attention projections) or in full.
    Options select truncated back-propagation through the last ``backprop_steps``
    steps and R0+ intermediate supervision: a random step ``j`` is picked, the
    path before it runs without autograd (stop-gradient), and the image is the
    decode of ``x̂₀`` predicted at step ``j``.

``weight_l2``
    ``‖θ − θ₀‖²`` over the generator's trainable tensors against their values at
    construction (the pretrained weights, or the LoRA initialization); with the
    term weight ``λ`` the objective subtracts ``λ‖θ − θ₀‖²``. It is zero at the
    start and its gradient is ``2λ(θ − θ₀)``.

The sampling math (conditioning, noise levels, ``x̂₀``/``ε̂`` conversion, the
η step, decoding) is :mod:`r0kit.diffusion`'s; this plugin only decides which
steps run with autograd, draws the randomness and owns the trainable weights.

:attr:`r0kit.Sample.state` of a ``kstep`` sample holds ``"noise"`` (``x_T``),
``"etas"`` (``[K, B]``), ``"timesteps"`` (``[K]``), ``"supervised_step"``
(the index whose ``x̂₀`` was decoded), ``"grad_from_step"`` (the first step run
with autograd), ``"latents"`` (the decoded ``x̂₀``) and ``"xi_seed"`` (the seed of
the ξ draws, see :func:`r0kit.kernels.eta_step`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal, Sequence

import torch

import r0kit
from r0kit.checks import check_eta_range as _check_eta_range
from r0kit.checks import check_number
from r0kit.diffusion import LORA_TARGETS as _LORA_TARGETS
from r0kit.diffusion import check_guidance_scale
from r0kit.diffusion import trailing_timesteps  # noqa: F401  (the spacing kstep samples with; re-exported)
from r0kit.errors import InputError, OptionError, WeightsError

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
#: The UNet attention projections LoRA adapts by default (:data:`r0kit.diffusion.LORA_TARGETS`).
LORA_TARGETS: tuple[str, ...] = _LORA_TARGETS["vp"]
#: The SD3/FLUX transformer attention projections LoRA adapts by default, joint attention's text stream included.
FLOW_LORA_TARGETS: tuple[str, ...] = _LORA_TARGETS["flow"]
#: Written beside an exported generator; describes how to sample it.
EXPORT_META = "kstep.json"


def check_eta_range(eta: Any) -> tuple[float, float]:
    """``(lo, hi)`` with ``0 <= lo <= hi <= 1``, or :class:`OptionError` (:func:`r0kit.checks.check_eta_range`)."""
    return _check_eta_range(eta, "kstep: eta")


#: The largest image side kstep samples, in pixels: 8x FLUX's and SDXL's 1024 px native size. Above it a
#: model's attention alone would need terabytes; refusing at once beats minutes of allocation first.
MAX_SIDE = 8192


class KStepGenerator:
    """A K-step generator initialized from a pretrained diffusion model, trainable by LoRA or in full.

    :param model: hub id or pipeline folder, or a loaded :class:`~r0kit.diffusion.DiffusionModel`.
    :param steps: K, the number of network evaluations per image.
    :param timesteps: explicit strictly decreasing timesteps (length K); default the trailing spacing.
    :param height, width: image size in pixels; default the model's native size (UNet sample size × VAE factor).
    :param eta: ``[min, max]`` of the per-sample, per-step ``η`` drawn while training.
    :param train: ``"lora"``, ``"full"``, or ``"none"`` (frozen: evaluation and baselines).
    :param lora_rank: LoRA rank; ``lora_alpha`` defaults to the rank (scale 1).
    :param lora_targets: module-name suffixes LoRA adapts (default the attention projections:
        :data:`LORA_TARGETS` for a UNet, :data:`FLOW_LORA_TARGETS` for a transformer).
    :param lora_weights: a folder or ``.safetensors`` file of LoRA weights to load (an export).
    :param backprop_steps: back-propagate through the last this-many steps only (truncated backprop).
    :param intermediate_supervision: R0+: decode ``x̂₀`` of a random step, no gradient before it.
    :param gradient_checkpointing: UNet gradient checkpointing; ``vae_checkpointing`` for the decode.
    :param init_seed: seeds the LoRA initialization, so a rebuilt generator starts identical.
    :param variant: the weights variant to fetch and load (``"fp16"``), see :func:`r0kit.diffusion.load`.
    :param drop_t5, max_sequence_length: an SD3 model without its T5; the T5 prompt length (see :func:`r0kit.diffusion.load`).
    :param guidance_scale: classifier-free guidance when *sampling* (evaluation mode; a finite number >= 0, applied above 1 only,
        diffusers' convention); training always samples without guidance, as R0 does.
    """

    name = "kstep"

    def __init__(
        self,
        model: Any = DEFAULT_MODEL,
        steps: int = 4,
        timesteps: Sequence[int] | None = None,
        height: int | None = None,
        width: int | None = None,
        eta: Sequence[float] | float = (0.0, 1.0),
        train: Literal["lora", "full", "none"] = "lora",
        lora_rank: int = 16,
        lora_alpha: float | None = None,
        lora_targets: Sequence[str] | None = None,
        lora_weights: str | None = None,
        backprop_steps: int | None = None,
        intermediate_supervision: bool = False,
        gradient_checkpointing: bool = False,
        vae_checkpointing: bool = False,
        dtype: str = "float32",
        vae_dtype: str | None = None,
        device: str = "auto",
        init_seed: int = 0,
        revision: str | None = None,
        variant: str | None = None,
        drop_t5: bool = False,
        max_sequence_length: int | None = None,
        guidance_scale: float = 1.0,
    ):
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise OptionError(f"kstep: steps (K) must be an int >= 1, got {steps!r}")
        for label, v in (("height", height), ("width", width)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 8 <= v <= MAX_SIDE):
                raise OptionError(f"kstep: {label} must be an int from 8 to {MAX_SIDE} (or unset for the model's native size), "
                                  f"got {v!r}", option=label)
        # the one rule (r0kit.diffusion.check_guidance_scale): 0 and 1 both mean none, as in diffusers
        self.guidance_scale = check_guidance_scale(guidance_scale, "kstep: guidance_scale")
        if train not in ("lora", "full", "none"):
            raise OptionError(f"kstep: train must be 'lora', 'full' or 'none', got {train!r}")
        if backprop_steps is not None and (not isinstance(backprop_steps, int) or not 1 <= backprop_steps <= steps):
            raise OptionError(f"kstep: backprop_steps must be an int in [1, {steps}] (or unset for all), got {backprop_steps!r}")
        if not isinstance(lora_rank, int) or lora_rank < 1:
            raise OptionError(f"kstep: lora_rank must be an int >= 1, got {lora_rank!r}")
        self.eta_range = check_eta_range(eta)
        self.steps, self.height, self.width = steps, height, width
        self.train_mode, self.backprop_steps = train, backprop_steps
        self.intermediate_supervision = bool(intermediate_supervision)
        self.lora_rank = lora_rank
        self.lora_alpha = check_number(lora_alpha, "kstep: lora_alpha", above=0) if lora_alpha is not None else float(lora_rank)
        self.init_seed = int(init_seed)
        self.model = _load(
            model,
            dtype=dtype,
            vae_dtype=vae_dtype,
            device=device,
            revision=revision,
            variant=variant,
            gradient_checkpointing=gradient_checkpointing,
            vae_checkpointing=vae_checkpointing,
            drop_t5=drop_t5,
            max_sequence_length=max_sequence_length,
        )
        self.source = self.model.source
        self.unet = self.model.unet  # the unwrapped denoising network, UNet or transformer (config, names, export)
        self.lora_targets = tuple(lora_targets if lora_targets is not None else _LORA_TARGETS[self.model.family])
        native = self.model.native_size
        height, width = height or native, width or native
        self.height, self.width = height, width
        self.latent_shape = self.model.latent_shape(height, width)
        if timesteps is not None and len(timesteps) != steps:
            raise OptionError(f"kstep: {len(timesteps)} timesteps given for steps={steps}; give exactly K of them")
        self.schedule = self.model.schedule(steps, None if timesteps is None else list(timesteps), height=height, width=width)
        self.timesteps = self.schedule.timesteps
        self.training = train != "none"

        if lora_weights is not None:
            self._load_lora(lora_weights)
            if train == "lora":  # continue training the loaded adapter
                for n, p in self.unet.named_parameters():
                    p.requires_grad_("lora_" in n)
        elif train == "lora":
            self._add_lora()
        elif train == "full":
            self.unet.requires_grad_(True)
        self._trainable = [(n, p) for n, p in self.unet.named_parameters() if p.requires_grad]
        if train != "none" and not self._trainable:
            raise OptionError(f"kstep: train={train!r} left no trainable parameter; check lora_targets {self.lora_targets}")
        # θ₀ for weight_l2: the trainable tensors as built (deterministic given init_seed).
        self._reference = [p.detach().clone() for _, p in self._trainable]
        self.prompts: list[str] | None = None
        self._rng: torch.Generator | None = None

    # -- weights ------------------------------------------------------------------
    def _add_lora(self) -> None:
        try:
            from peft import LoraConfig
        except ImportError:
            raise OptionError("kstep: train='lora' needs peft; install it with pip install 'r0kit[diffusers]'") from None
        config = LoraConfig(
            r=self.lora_rank,
            lora_alpha=self.lora_alpha,
            init_lora_weights="gaussian",
            target_modules=list(self.lora_targets),
            lora_dropout=0.0,
        )
        devices = [self.unet.device] if self.unet.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.init_seed)
            try:
                self.unet.add_adapter(config)
            except ValueError as exc:
                raise OptionError(f"kstep: cannot add LoRA to the UNet ({exc}); check lora_targets") from None

    def _load_lora(self, path: str) -> None:
        p = Path(path)
        if not p.exists():
            raise WeightsError(f"kstep: lora_weights {str(p)!r} does not exist; pass an exported folder or its .safetensors file")
        try:
            folder, name = (p, "pytorch_lora_weights.safetensors") if p.is_dir() else (p.parent, p.name)
            prefix = "unet" if self.model.family == "vp" else "transformer"  # the key prefix of diffusers' LoRA files
            self.unet.load_lora_adapter(str(folder), weight_name=name, prefix=prefix, adapter_name="default", use_safetensors=True)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise WeightsError(f"kstep: cannot load the LoRA weights in {str(p)!r}: {str(exc).splitlines()[0]}") from None
        self.unet.requires_grad_(False)

    def parameters(self) -> list[torch.Tensor]:
        return [p for _, p in self.named_parameters()]

    def named_parameters(self) -> list[tuple[str, torch.Tensor]]:
        """The trainable tensors with their network parameter names (checkpoint keys): under FSDP2 the
        sharded parameters the optimizer steps (FSDP swaps whole ones in while the network runs)."""
        return list(self._trainable)

    def weight_reference(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``(θ, θ₀)``: the trainable tensors and their values when the generator was built."""
        if self.train_mode == "none":
            raise OptionError("weight_l2: the kstep generator has no trainable weights (train='none')")
        return self.parameters(), self._reference

    def set_forward_module(self, module: torch.nn.Module) -> None:
        """Run the network through ``module`` (a DDP/FSDP wrapper of it from ``accelerator.prepare``).

        Under FSDP2 the parameters are sharded ``DTensor`` s from then on; θ₀ of ``weight_l2`` is
        sharded the same way (its local shards, no communication), so ``θ − θ₀`` stays elementwise.
        """
        from r0kit.sharding import is_sharded, shard_like

        self.model.set_forward_module(module)
        registered = [(n, p) for n, p in self.unet.named_parameters() if p.requires_grad]
        if any(is_sharded(p) for _, p in registered) and not any(is_sharded(p) for p in self.parameters()):
            # prepare has just sharded them (later, a forward swaps whole ones in: keep the sharded handles)
            self._trainable = registered
            self._reference = [shard_like(r, p) for r, p in zip(self._reference, self.parameters())]

    def train(self, mode: bool = True) -> KStepGenerator:
        """Training mode draws random η (and the R0+ step); evaluation mode uses η = 0 and all K steps."""
        self.training = bool(mode)
        return self

    def eval(self) -> KStepGenerator:
        return self.train(False)

    def options(self) -> dict[str, Any]:
        """What defines this generator's trainable shape and sampling, for checkpoints and exports."""
        return {
            "model": self.source,
            "kind": self.model.kind,
            "steps": self.steps,
            "timesteps": self.timesteps.tolist(),  # int (vp) or float 1000·t (flow)
            "height": self.height,
            "width": self.width,
            "eta": list(self.eta_range),
            "train": self.train_mode,
            "lora_rank": self.lora_rank if self.train_mode == "lora" else None,
            "lora_alpha": self.lora_alpha if self.train_mode == "lora" else None,
            "lora_targets": list(self.lora_targets) if self.train_mode == "lora" else None,
            "backprop_steps": self.backprop_steps,
            "intermediate_supervision": self.intermediate_supervision,
            "prediction_type": self.model.prediction_type,
            **self._flow_options(),
            "guidance_scale": self.guidance_scale,
        }

    def _flow_options(self) -> dict[str, Any]:
        """The text-side options of an SD3/FLUX model (what its conditioning depends on); none for a UNet."""
        m = self.model
        return {} if m.family == "vp" else {"drop_t5": not m.has_t5, "max_sequence_length": m.max_sequence_length}

    # -- sampling -----------------------------------------------------------------
    def prepare(self, prompts: list[str], seed: int) -> None:
        """Remember the prompts and seed the sampler's random generator (noise, η, ξ, R0+ step)."""
        self.prompts = list(prompts)
        self._rng = torch.Generator("cpu").manual_seed(int(seed))

    def draw_etas(self, batch: int, generator: torch.Generator | None) -> torch.Tensor:
        """``[K, B]`` η, uniform in the configured range (the last row is never used: the last step lands on x̂₀)."""
        lo, hi = self.eta_range
        u = torch.rand(self.steps, batch, generator=generator, dtype=torch.float32)
        return (lo + (hi - lo) * u).clamp_(lo, hi)

    def draw_noise(self, batch: int, generator: torch.Generator | None) -> torch.Tensor:
        """``[B, C, h, w]`` float32 standard normal ``x_T``, drawn on the CPU."""
        return torch.randn((batch, *self.latent_shape), generator=generator, dtype=torch.float32).to(self.model.device)

    def noise_for_seeds(self, seeds: Sequence[int]) -> torch.Tensor:
        """One ``x_T`` per seed, independent of batching (for evaluation and sample grids)."""
        return torch.cat([self.draw_noise(1, torch.Generator("cpu").manual_seed(int(s))) for s in seeds])

    def sample(
        self,
        prompts: list[str],
        generator: torch.Generator | None = None,
        *,
        noise: torch.Tensor | None = None,
        eta: torch.Tensor | float | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> r0kit.Sample:
        """Unroll K steps for ``prompts``; differentiable with respect to :meth:`parameters`.

        :param generator: draws ``x_T``, η, ξ and the R0+ step (default: the one seeded by :meth:`prepare`).
        :param noise: an explicit ``x_T`` instead of drawing one.
        :param eta: explicit η (float, ``[K]`` or ``[K, B]``) instead of drawing it.
        :param shard: ``(rank, world)``: ``prompts`` are rank's part of a global batch of ``world·B``.
            ``x_T``, η, the R0+ step and the ξ seed are drawn for the global batch from ``generator``
            (the same stream on every rank) and this rank keeps its rows, so N processes sample what
            one process samples for the combined batch; ξ itself is drawn from the seed plus the rank.
        """
        if not prompts:
            raise InputError("kstep: sample() needs at least one prompt")
        gen = generator if generator is not None else self._rng
        b = len(prompts)
        m = self.model
        k = self.steps
        rank, world = shard
        if not 0 <= rank < world:
            raise InputError(f"kstep: shard must be (rank, world) with 0 <= rank < world, got {shard}")
        rows = slice(rank * b, (rank + 1) * b)
        if noise is None:
            noise = self.draw_noise(world * b, gen)[rows]
        elif noise.shape[0] != b:
            raise InputError(f"kstep: noise has batch {noise.shape[0]} for {b} prompt(s)")
        if eta is None:
            etas = self.draw_etas(world * b, gen)[:, rows].contiguous() if self.training else torch.zeros(k, b)
        else:
            etas = torch.as_tensor(eta, dtype=torch.float32)
            etas = etas.expand(k, b).clone() if etas.dim() == 0 else (etas.view(k, 1).expand(k, b).clone() if etas.dim() == 1 else etas)
        last = k - 1
        grad_from = 0
        if self.training and self.intermediate_supervision:
            last = int(torch.randint(0, k, (1,), generator=gen))
            grad_from = last
        elif self.training and self.backprop_steps is not None:
            grad_from = k - self.backprop_steps
        # ξ of every step comes from one seed drawn here, so the sampler's generator is the only state.
        xi_seed = (int(torch.randint(0, 2**31 - 1, (1,), generator=gen)) + rank) % (2**31 - 1)
        cond = m.encode_prompts(list(prompts), height=self.height, width=self.width)
        guide = {}
        if not self.training and self.guidance_scale > 1:  # classifier-free guidance: sampling only, R0 trains without
            guide = dict(guidance_scale=self.guidance_scale, uncond=m.encode_negative(b, height=self.height, width=self.width))
        out = m.unroll(
            noise, cond, self.schedule.head(last + 1), eta=etas[: last + 1], seed=xi_seed, grad_from_step=grad_from, **guide
        )
        images = m.decode(out.latents)
        state = {
            "noise": noise,
            "etas": etas,
            "timesteps": self.timesteps,
            "supervised_step": torch.tensor(last),
            "grad_from_step": torch.tensor(grad_from),
            "latents": out.latents,
            "xi_seed": torch.tensor(xi_seed),
        }
        return r0kit.Sample(images=images, state=state)

    # -- export ---------------------------------------------------------------------
    #: The file that marks an export folder (see the ``r0kit_register_generators`` hook).
    export_meta = EXPORT_META

    @classmethod
    def from_export(cls, folder: str | Path, **overrides: Any) -> KStepGenerator:
        """The frozen generator an :meth:`export` folder holds (:func:`load_export`)."""
        return load_export(folder, **overrides)

    def export(self, folder: str | Path, *, weights: dict[str, torch.Tensor] | None = None) -> Path:
        """Write a generator plain diffusers loads and samples in K steps.

        LoRA: ``pytorch_lora_weights.safetensors`` for ``pipe.load_lora_weights(folder)``;
        full: a whole pipeline for ``DiffusionPipeline.from_pretrained(folder)``. Both get
        ``scheduler/``, the scheduler that reproduces the η = 0 sampler
        (:attr:`r0kit.diffusion.SamplingSchedule.scheduler`: Euler or first-order
        DPM-Solver, trailing spacing, so ``num_inference_steps=K`` gives the training
        timesteps; for SD3/FLUX ``FlowMatchEulerDiscreteScheduler`` with the model's shift,
        sampled with the ``sigmas`` :data:`EXPORT_META` holds), and :data:`EXPORT_META`
        (``usage`` there is the diffusers call).

        :param weights: trainable tensors by name to export instead of the current ones (EMA).
        """
        return export_generator(self, Path(folder), weights=weights)

    def __repr__(self) -> str:
        return (
            f"KStepGenerator({self.source!r}, K={self.steps}, timesteps={self.timesteps.tolist()}, "
            f"eta={list(self.eta_range)}, train={self.train_mode}, {self.height}x{self.width})"
        )


def _load(model: Any, **kw: Any):
    from r0kit.diffusion import DiffusionModel, load

    if isinstance(model, DiffusionModel):
        if model.unet is None or model.vae is None or not model.text_encoders:
            raise OptionError("kstep: the model passed in must be loaded with unet, vae and text")
        model.set_memory_options(gradient_checkpointing=kw["gradient_checkpointing"], vae_checkpointing=kw["vae_checkpointing"])
        return model
    if not isinstance(model, str) or not model:
        raise OptionError(f"kstep: model must be a hub id, a pipeline folder or a loaded DiffusionModel, got {model!r}")
    return load(model, components=("backbone", "vae", "text"), **kw)


def export_scheduler(gen: KStepGenerator):
    """The scheduler with which a diffusers pipeline reproduces the generator's η = 0 sampler."""
    return gen.schedule.scheduler


def export_generator(gen: KStepGenerator, folder: Path, *, weights: dict[str, torch.Tensor] | None = None) -> Path:
    from r0kit.io import write_json

    from r0kit.sharding import is_sharded

    if gen.train_mode == "none":
        raise OptionError("kstep: nothing to export from an untrained generator (train='none')")
    sharded = any(is_sharded(p) for p in gen.parameters())
    if sharded and weights is None:
        raise OptionError("kstep: a sharded (FSDP) generator exports whole tensors: pass weights gathered with r0kit.sharding.full_tensor")
    folder.mkdir(parents=True, exist_ok=True)
    saved = None
    if weights is not None and gen.train_mode == "full" and not sharded:
        saved = {n: p.detach().clone() for n, p in gen.named_parameters()}
        _assign(gen, weights)
    try:
        m = gen.model
        sched = export_scheduler(gen)
        if gen.train_mode == "lora":
            from peft.utils import get_peft_model_state_dict

            current = weights if weights is not None else {n: p.detach() for n, p in gen.named_parameters()}
            state = get_peft_model_state_dict(gen.unet, state_dict=dict(current))  # from tensors, not the (sharded) module
            state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
            pipe_cls = _pipeline_class(m.kind)
            meta = gen.unet.peft_config["default"].to_dict()
            meta = {k: (sorted(v) if isinstance(v, set) else v) for k, v in meta.items()}
            key = "unet" if m.family == "vp" else "transformer"  # save_lora_weights' argument names
            with tempfile.TemporaryDirectory(dir=folder, prefix=".lora-") as tmp:
                pipe_cls.save_lora_weights(tmp, **{f"{key}_lora_layers": state, f"{key}_lora_adapter_metadata": meta})
                os.replace(Path(tmp) / "pytorch_lora_weights.safetensors", folder / "pytorch_lora_weights.safetensors")
        else:
            pipe = _full_pipeline(gen, sched, _unsharded(gen.unet, weights) if sharded else gen.unet)
            pipe.save_pretrained(str(folder), safe_serialization=True)
        sched.save_pretrained(str(folder / "scheduler"))
        info = gen.options()
        sched_cls = type(sched).__name__
        # what the pipeline takes for the training steps: timesteps (vp) or the unshifted sigmas (flow)
        (arg, values), = gen.schedule.pipeline_kwargs.items()
        pipe_name = _pipeline_class(m.kind).__name__
        extra = f", max_sequence_length={m.max_sequence_length}" if m.family == "flow" else ""
        no_t5 = ", text_encoder_3=None, tokenizer_3=None" if m.kind == "sd3" and not m.has_t5 else ""
        info.update(
            base_model=gen.source,
            format="lora" if gen.train_mode == "lora" else "pipeline",
            pipeline=pipe_name,
            scheduler=sched_cls,
            guidance_scale=0.0,
            usage=(
                f"pipe = {pipe_name}.from_pretrained(base_model); "
                "pipe.load_lora_weights(folder, weight_name='pytorch_lora_weights.safetensors'); "
                f"pipe.scheduler = {sched_cls}.from_pretrained(folder, subfolder='scheduler'); "
                f"pipe(prompt, {arg}={arg}, guidance_scale=0{extra})"
                if gen.train_mode == "lora"
                else f"pipe = {pipe_name}.from_pretrained(folder{no_t5}); pipe(prompt, {arg}={arg}, guidance_scale=0{extra})"
            ),
        )
        info[arg] = values
        write_json(folder / EXPORT_META, info)
    finally:
        if saved is not None:
            _assign(gen, saved)
    return folder


def _assign(gen: KStepGenerator, weights: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, p in gen.named_parameters():
            p.copy_(weights[n])


def _pipeline_class(kind: str):
    import diffusers

    from r0kit.diffusion import PIPELINE_CLASSES

    return getattr(diffusers, PIPELINE_CLASSES[kind])


def _unsharded(net: torch.nn.Module, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A plain copy of a fully fine-tuned network that FSDP has sharded, from its whole ``weights`` (every
    parameter) and its buffers (FSDP leaves them whole), built on the meta device and assigned, so no
    second random initialization is paid for."""
    with torch.device("meta"):
        copy = type(net).from_config(net.config)
    copy.load_state_dict({**{n: b for n, b in net.named_buffers()}, **weights}, strict=True, assign=True)
    return copy.eval()


def _full_pipeline(gen: KStepGenerator, sched, backbone: torch.nn.Module):
    m = gen.model
    comps: dict[str, Any] = dict(vae=m.vae, text_encoder=m.text_encoders[0], tokenizer=m.tokenizers[0], scheduler=sched)
    if m.family == "flow":
        comps.update(transformer=backbone, text_encoder_2=m.text_encoders[1], tokenizer_2=m.tokenizers[1])
        if m.kind == "sd3":  # without T5 when it was dropped: text_encoder_3=None loads in diffusers as it did here
            t5 = m.has_t5
            comps.update(text_encoder_3=m.text_encoders[2] if t5 else None, tokenizer_3=m.tokenizers[2] if t5 else None)
        return _pipeline_class(m.kind)(**comps)
    comps["unet"] = backbone
    if m.kind == "sdxl":
        comps.update(text_encoder_2=m.text_encoders[1], tokenizer_2=m.tokenizers[1])
        return _pipeline_class("sdxl")(**comps, force_zeros_for_empty_prompt=m.force_zeros_for_empty_prompt)
    return _pipeline_class("sd")(**comps, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def read_export(folder: str | Path) -> dict[str, Any]:
    """The :data:`EXPORT_META` of an exported generator, or :class:`WeightsError` saying what is missing."""
    p = Path(folder) / EXPORT_META
    if not p.is_file():
        raise WeightsError(f"{str(folder)!r} is not an exported kstep generator: it has no {EXPORT_META}")
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{str(p)!r} cannot be read ({exc}); export the generator again") from None


def load_export(folder: str | Path, **overrides: Any) -> KStepGenerator:
    """A frozen :class:`KStepGenerator` from an export folder (LoRA on its base model, or a full pipeline)."""
    info = read_export(folder)
    kw: dict[str, Any] = dict(steps=info["steps"], timesteps=info["timesteps"], height=info["height"], width=info["width"], train="none")
    kw.update({k: info[k] for k in ("drop_t5", "max_sequence_length") if k in info})
    if info.get("format") == "lora":
        kw.update(model=info["base_model"], lora_weights=str(folder))
    else:
        kw.update(model=str(folder))
    kw.update(overrides)
    return KStepGenerator(**kw).eval()


# ---------------------------------------------------------------------------
# weight_l2
# ---------------------------------------------------------------------------
class WeightL2:
    """``‖θ − θ₀‖²`` over the generator's trainable tensors (a scalar); subtract it with weight ``λ``.

    Reads ``generator.weight_reference()`` (the ``kstep`` generator provides it). The
    loss goes through :func:`r0kit.kernels.weight_l2` (fused on CUDA), connected to
    autograd, so its gradient ``2λ(θ − θ₀)`` arrives with the rewards' in one backward.
    """

    def __call__(self, sample: r0kit.Sample, generator: Any = None) -> torch.Tensor:
        from r0kit.kernels import weight_l2

        ref = getattr(generator, "weight_reference", None)
        if ref is None:
            raise OptionError(
                f"weight_l2 needs a generator with trainable weights and a reference (such as 'kstep'), "
                f"got {type(generator).__name__}"
            )
        params, refs = ref()
        from r0kit.sharding import is_sharded

        if any(is_sharded(p) for p in params):  # FSDP2: elementwise on the shards; full_tensor() sums them (all-reduce)
            partial = sum(((p - r).float() ** 2).sum() for p, r in zip(params, refs))
            return partial.full_tensor()
        return weight_l2(params, refs, 1.0, accumulate_grad=False)


@r0kit.hookimpl
def r0kit_register_generators(register):
    register(
        "kstep",
        KStepGenerator,
        description="K-step generator from a diffusers UNet or SD3/FLUX transformer, trainable by LoRA or in full (R0)",
    )


@r0kit.hookimpl
def r0kit_register_regularizers(register):
    register("weight_l2", WeightL2, description="‖θ − θ₀‖² of a trainable generator's weights to their initial values (R0)")
