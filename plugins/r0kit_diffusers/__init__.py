"""Generators built on diffusers models: ``latent`` and ``noise``.

``latent``
    The VAE latent is the parameter; the image is its decode. The latent starts
    as Gaussian noise, or (``init="pipeline"``) as the latent a few-step sampling
    of the prompt produces, so the optimization refines an actual sample.
``noise``
    The initial noise ``z`` is the parameter, pushed through a frozen few-step
    sampler (SD-Turbo, SDXL-Turbo, or any Stable Diffusion / SDXL pipeline with
    any diffusers scheduler and 1–4 steps; FLUX.1-schnell, SD3.5-Large-Turbo or
    any SD3/FLUX.1 pipeline). The image is differentiable with respect to the
    noise; this is the ReNO parameterization.

Sampling follows r0kit's one few-step rule (:mod:`r0kit.diffusion`), the same
for both model families: trailing timesteps from the top of the schedule (for
rectified flow ``t = 1 − i/K`` through the scheduler's shift, dynamic for
FLUX.1-dev), ``x_T = c·z`` as the pipeline's scheduler scales ``latents``, and
the deterministic first-order step. The same ``z`` given as ``latents`` (packed
2×2 for FLUX) to a diffusers pipeline whose scheduler is
``generator.schedule.scheduler``, with ``**generator.schedule.pipeline_kwargs``,
gives the same image. Guidance follows diffusers too: classifier-free guidance
only for ``guidance > 1``, so the ``guidance_scale=0`` of the turbo models'
documentation means no guidance; for FLUX.1 ``guidance`` is the embedded
guidance of a guidance-distilled transformer (FLUX.1-dev), as ``FluxPipeline``'s
``guidance_scale`` is.

Both load through :func:`r0kit.diffusion.load` (a hub id or a pipeline folder,
resolved by :mod:`r0kit.weights`) and accept an already loaded
:class:`~r0kit.diffusion.DiffusionModel` as ``model=`` to share one between
generators. Sample ``i`` of a batch prepared with ``seed`` is drawn with seed
``seed + i``, so a prompt's result does not depend on how prompts are batched
or sharded across processes.

Both put ``"param"`` (the optimized tensor), ``"param_init"`` and ``"noise"``
in :attr:`r0kit.Sample.state`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

import r0kit
from r0kit.checks import check_number
from r0kit.diffusion import uses_cfg
from r0kit.errors import InputError, OptionError

DEFAULT_MODEL = "stabilityai/sd-turbo"


def _load(model: Any, components: tuple[str, ...], **kw: Any):
    from r0kit.diffusion import DiffusionModel, load

    if isinstance(model, DiffusionModel):
        missing = [c for c in components if (c == "text" and not model.text_encoders) or (c != "text" and getattr(model, c) is None)]
        if missing:
            raise OptionError(f"the model passed in was loaded without {', '.join(missing)}, which this generator needs")
        model.set_memory_options(
            gradient_checkpointing=kw.get("gradient_checkpointing"),
            vae_checkpointing=kw.get("vae_checkpointing"),
            vae_slicing=kw.get("vae_slicing"),
            vae_tiling=kw.get("vae_tiling"),
        )
        return model
    if not isinstance(model, str) or not model:
        raise OptionError(f"model must be a hub id, a pipeline folder or a loaded DiffusionModel, got {model!r}")
    return load(model, components=components, **kw)


def _per_sample_noise(m, batch: int, height: int, width: int, seed: int) -> torch.Tensor:
    return torch.cat([m.initial_noise(1, height, width, seed=int(seed) + i) for i in range(batch)])


class _Base:
    name = ""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width
        self.prompts: list[str] | None = None
        self.z: torch.Tensor | None = None
        self.z_init: torch.Tensor | None = None
        self.noise: torch.Tensor | None = None

    def _sized(self) -> tuple[int, int]:
        """``height``/``width`` with an unset side taken as the loaded model's native size (then validated
        against the VAE factor); stored on the generator and returned."""
        self.height = self.height or self.model.native_size
        self.width = self.width or self.model.native_size
        self.model.latent_shape(self.height, self.width)
        return self.height, self.width

    def parameters(self) -> list[torch.Tensor]:
        self._need_prepare()
        return [self.z]  # type: ignore[list-item]

    def _need_prepare(self, prompts: list[str] | None = None) -> None:
        if self.z is None:
            raise InputError(f"{self.name}: call prepare(prompts, seed) before sample()")
        if prompts is not None and len(prompts) != self.z.shape[0]:
            raise InputError(f"{self.name}: prepared for {self.z.shape[0]} prompt(s), got {len(prompts)}")

    def _state(self) -> dict[str, torch.Tensor]:
        return {"param": self.z, "param_init": self.z_init, "noise": self.noise}  # type: ignore[dict-item]


def _check_guidance(name: str, guidance: Any) -> None:
    from r0kit.diffusion import check_guidance_scale

    check_guidance_scale(guidance, f"{name}: guidance")


def _check_size(name: str, height: Any, width: Any) -> None:
    for label, v in (("height", height), ("width", width)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 8):
            raise OptionError(f"{name}: {label} must be an int >= 8 (or unset: the model's native size), got {v!r}")


class NoiseGenerator(_Base):
    """The initial noise of a frozen few-step sampler is the parameter.

    :param model: hub id or pipeline folder (default ``stabilityai/sd-turbo``), or a loaded model.
    :param steps: sampling steps, 1 to ``max_steps`` (each one is back-propagated through).
    :param height, width: image size in pixels; default the model's native size (512 for SD 1.5, 1024 for SDXL).
    :param timesteps: explicit strictly decreasing timesteps instead of the trailing spacing.
    :param scheduler: replace the pipeline's scheduler (``ddim``, ``euler``, ``lcm``, ...); it
        supplies the noise levels and the initial scale, the rule stays r0kit's.
    :param guidance: classifier-free guidance scale, ``>= 0``; only a scale ``> 1`` runs the
        unconditional pass (``0`` or ``1``: turbo models).
    :param negative_prompt: the unconditional prompt when ``guidance > 1``.
    :param dtype: ``float32``, ``float16`` or ``bfloat16`` for the networks; the noise stays float32.
    :param variant: the weights variant to fetch and load (``"fp16"``), see :func:`r0kit.diffusion.load`.
    :param gradient_checkpointing: backbone gradient checkpointing; ``vae_checkpointing`` the same for the decode.
    :param drop_t5: SD3/SD3.5 without their T5 encoder (zeros instead, as ``text_encoder_3=None`` in diffusers).
    :param max_sequence_length: T5 prompt tokens of an SD3 or FLUX.1 model (default diffusers': 256 / 512).
    """

    name = "noise"

    def __init__(
        self,
        model: Any = DEFAULT_MODEL,
        steps: int = 1,
        height: int | None = None,
        width: int | None = None,
        guidance: float = 1.0,
        negative_prompt: str = "",
        scheduler: str | None = None,
        scheduler_options: dict[str, Any] | None = None,
        timesteps: list[int] | None = None,
        max_steps: int = 4,
        dtype: str = "float32",
        vae_dtype: str | None = None,
        device: str = "auto",
        gradient_checkpointing: bool = False,
        vae_checkpointing: bool = False,
        vae_slicing: bool = False,
        vae_tiling: bool = False,
        revision: str | None = None,
        variant: str | None = None,
        drop_t5: bool = False,
        max_sequence_length: int | None = None,
    ):
        _check_size("noise", height, width)
        n = len(timesteps) if timesteps is not None else steps
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= max_steps:
            raise OptionError(
                f"noise: steps must be 1 to {max_steps} (the noise generator back-propagates through every step; "
                f"use a few-step model, or raise max_steps if memory allows), got {n!r}"
            )
        _check_guidance("noise", guidance)
        super().__init__(height, width)
        self.model = _load(
            model,
            ("backbone", "vae", "text"),
            dtype=dtype,
            vae_dtype=vae_dtype,
            device=device,
            scheduler=scheduler,
            scheduler_options=scheduler_options,
            revision=revision,
            variant=variant,
            gradient_checkpointing=gradient_checkpointing,
            vae_checkpointing=vae_checkpointing,
            vae_slicing=vae_slicing,
            vae_tiling=vae_tiling,
            drop_t5=drop_t5,
            max_sequence_length=max_sequence_length,
        )
        height, width = self._sized()
        self.schedule = self.model.schedule(None if timesteps is not None else steps, timesteps, height=height, width=width)
        self.timesteps = self.schedule.timesteps
        self.guidance = float(guidance)
        self.negative_prompt = negative_prompt
        self._cond = None
        self._uncond = None

    def prepare(self, prompts: list[str], seed: int) -> None:
        m = self.model
        self.prompts = list(prompts)
        self.noise = _per_sample_noise(m, len(prompts), self.height, self.width, seed).requires_grad_(True)
        self.z = self.noise
        self.z_init = self.noise.detach().clone()
        self._cond = m.encode_prompts(self.prompts, height=self.height, width=self.width)
        self._uncond = (
            m.encode_negative(len(prompts), self.negative_prompt, height=self.height, width=self.width)
            if uses_cfg(self.guidance, m.backbone)
            else None
        )

    def sample(self, prompts: list[str], generator: torch.Generator | None = None) -> r0kit.Sample:
        self._need_prepare(prompts)
        if list(prompts) != self.prompts:
            self.prompts = list(prompts)
            self._cond = self.model.encode_prompts(self.prompts, height=self.height, width=self.width)
        out = self.model.unroll(self.z, self._cond, self.schedule, guidance_scale=self.guidance, uncond=self._uncond)  # type: ignore[arg-type]
        images = self.model.decode(out.latents)
        return r0kit.Sample(images=images, state=self._state())

    def __repr__(self) -> str:
        return f"NoiseGenerator({self.model.source!r}, timesteps={self.timesteps.tolist()}, {self.height}x{self.width}, guidance={self.guidance})"


class LatentGenerator(_Base):
    """The VAE latent is the parameter; the image is its decode.

    :param init: ``"noise"``: a standard normal latent times ``init_scale`` (only the VAE is
        loaded); ``"pipeline"``: the latent the model samples for the prompt in ``steps`` steps
        from the seed's noise (loads the UNet and text encoders too), by the noise generator's rule.
    :param guidance: classifier-free guidance scale of the ``"pipeline"`` init, ``>= 0``; only
        a scale ``> 1`` runs the unconditional pass.
    :param drop_t5, max_sequence_length: as for ``noise`` (the ``"pipeline"`` init of an SD3 or FLUX.1 model).
    """

    name = "latent"

    def __init__(
        self,
        model: Any = DEFAULT_MODEL,
        height: int | None = None,
        width: int | None = None,
        init: Literal["noise", "pipeline"] = "noise",
        init_scale: float = 1.0,
        steps: int = 1,
        guidance: float = 1.0,
        scheduler: str | None = None,
        dtype: str = "float32",
        vae_dtype: str | None = None,
        device: str = "auto",
        vae_checkpointing: bool = False,
        vae_slicing: bool = False,
        vae_tiling: bool = False,
        revision: str | None = None,
        variant: str | None = None,
        drop_t5: bool = False,
        max_sequence_length: int | None = None,
    ):
        _check_size("latent", height, width)
        if init not in ("noise", "pipeline"):
            raise OptionError(f"latent: init must be 'noise' or 'pipeline', got {init!r}")
        init_scale = check_number(init_scale, "latent: init_scale", at_least=0)
        _check_guidance("latent", guidance)
        super().__init__(height, width)
        comps = ("backbone", "vae", "text") if init == "pipeline" else ("vae",)
        self.model = _load(
            model,
            comps,
            dtype=dtype,
            vae_dtype=vae_dtype,
            device=device,
            scheduler=scheduler,
            revision=revision,
            variant=variant,
            vae_checkpointing=vae_checkpointing,
            vae_slicing=vae_slicing,
            vae_tiling=vae_tiling,
            **(dict(drop_t5=drop_t5, max_sequence_length=max_sequence_length) if init == "pipeline" else {}),
        )
        height, width = self._sized()
        self.init, self.init_scale, self.guidance = init, float(init_scale), float(guidance)
        self.schedule = self.model.schedule(steps, height=height, width=width) if init == "pipeline" else None
        self.timesteps = self.schedule.timesteps if self.schedule is not None else None

    def prepare(self, prompts: list[str], seed: int) -> None:
        m = self.model
        self.prompts = list(prompts)
        noise = _per_sample_noise(m, len(prompts), self.height, self.width, seed)
        if self.init == "pipeline":
            with torch.no_grad():
                cond = m.encode_prompts(self.prompts, height=self.height, width=self.width)
                uncond = m.encode_negative(len(prompts), height=self.height, width=self.width) if uses_cfg(self.guidance, m.backbone) else None
                z = m.unroll(noise, cond, self.schedule, guidance_scale=self.guidance, uncond=uncond).latents.float()  # type: ignore[arg-type]
        else:
            z = noise * self.init_scale
        self.noise = noise
        self.z = z.detach().clone().requires_grad_(True)
        self.z_init = z.detach().clone()

    def sample(self, prompts: list[str], generator: torch.Generator | None = None) -> r0kit.Sample:
        self._need_prepare(prompts)
        return r0kit.Sample(images=self.model.decode(self.z), state=self._state())  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"LatentGenerator({self.model.source!r}, init={self.init}, {self.height}x{self.width})"


@r0kit.hookimpl
def r0kit_register_generators(register):
    register(
        "noise",
        NoiseGenerator,
        description="initial noise of a frozen few-step diffusers pipeline (ReNO; SD-Turbo, SDXL-Turbo, FLUX.1-schnell, SD3.5-Turbo)",
    )
    register("latent", LatentGenerator, description="VAE latent of a diffusers pipeline; the image is its decode")
