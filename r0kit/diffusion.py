"""Diffusion models: loading, prompt conditioning and the differentiable sampling math.

This is the one home of the diffusers-specific code. The test-time generators
(``latent``, ``noise``) and the trainable K-step generator of R0 are all built
on it, so loading, conditioning, the schedule, the parameterization change and
the sampler step are written once.

Model families
--------------
Two families are served behind one interface; :func:`load` decides which from
the pipeline's ``model_index.json``, and from then on generators, the training
loop and the kernels see only ``x̂₀``, ``ε̂``, ``α`` and ``σ``:

* **variance-preserving** (``"vp"``: the SD 1.x/2.x and SDXL UNets):
  ``x_t = α_t x₀ + σ_t ε`` with ``α_t = √ᾱ_t`` and ``σ_t = √(1 − ᾱ_t)``, where
  ``ᾱ_t`` is the scheduler's ``alphas_cumprod``; ε-, v- or x₀-prediction. The
  network sees ``x_t`` and ``t`` exactly as a diffusers pipeline feeds it (an
  Euler-type scheduler's sigma-space latent divided by ``√(σ² + 1)`` is the same
  ``x_t``).
* **rectified flow** (``"flow"``: the SD3/SD3.5 and FLUX.1 transformers):
  ``x_t = (1 − t) x₀ + t ε`` for ``t ∈ [0, 1]``, the scheduler's ``sigmas``; the
  network predicts the velocity ``v = ε − x₀``, so ``x̂₀ = x_t − t·v`` and
  ``ε̂ = x_t + (1 − t)·v``: ``α = 1 − t``, ``σ = t``. The network timestep is
  ``1000·t`` (SD3; FLUX gets ``t`` itself, as its pipeline passes ``timestep / 1000``).
  FLUX's latents are packed into 2×2 patches for its transformer and unpacked
  from it here, so every latent r0kit hands out is ``[B, C, h, w]``.

Latents are in the VAE's scaled space (``(z − shift_factor)·scaling_factor``,
diffusers' convention; the shift is 0 for SD/SDXL).

The few-step rule
-----------------
Whatever the pipeline's scheduler and its spacing, r0kit samples K steps the
same way, decided once in a :class:`SamplingSchedule`:

* **timesteps**: the *trailing* spacing, ``999, 749, 499, 249`` for K = 4 of
  1000 (:func:`trailing_timesteps`), so the first step is always the top of the
  schedule; explicit timesteps override it. (Leading spacing with
  ``steps_offset``, which SD 1.5's PNDM and SDXL-base's Euler ship, starts one
  step at ``t = 1``: pure noise out.)
* **initial latent**: ``x_T = c·z`` for standard normal ``z``, where ``c`` is
  what the scheduler itself does to ``latents=z``: ``init_noise_sigma`` times
  its input scaling. Sigma-space schedulers (Euler, Euler-ancestral, Heun,
  LMS, KDPM2) at trailing spacing give ``c = σ_{t₀}`` (``0.99767`` at
  ``t = 999`` of SD); variance-preserving ones (DDIM, PNDM, DDPM, LCM,
  DPM-Solver, UniPC, TCD) give ``c = 1``.
* **step**: ``x_{t'} = α' x̂₀ + σ' (√(1 − η²) ε̂ + η ξ)`` (:func:`eta_step`),
  with ``η = 0`` for the frozen few-step generators and a random ``η`` per
  sample and step for R0. The last step lands on ``(α', σ') = (1, 0)``: it
  returns ``x̂₀``. For rectified flow this reads
  ``x_{t'} = (1 − t') x̂₀ + t' (√(1 − η²) ε̂ + η ξ)``.

Rectified flow, the same rule in its own variables: the ``t`` of step ``i`` is
``1 − i/K`` (the trailing spacing in continuous time, which is what
``FluxPipeline`` does with ``np.linspace(1, 1/K, K)``), put through the
scheduler's ``shift``: ``t ↦ s·t / (1 + (s − 1)·t)``, or, for a scheduler with
``use_dynamic_shifting`` (FLUX.1-dev), the resolution-dependent exponential
shift with ``μ`` linear in the image's token count (:func:`flow_shift_mu`). The
scheduler computes the shifted values itself. ``x_1 = z`` (no scaling), and at
``η = 0`` the step is ``FlowMatchEulerDiscreteScheduler``'s ``x + (t' − t)·v``
(algebraically identical). A diffusers ``StableDiffusion3Pipeline`` or
``FluxPipeline`` reproduces r0kit's sampler with ``latents=z`` (packed for
FLUX) and ``sigmas=schedule.pipeline_kwargs["sigmas"]`` (the unshifted
``1 − i/K``, which the pipeline shifts as r0kit does). ``StableDiffusion3Pipeline``
called with ``num_inference_steps=K`` alone spaces ``t`` down to the
scheduler's ``sigma_min`` instead, so its last few-step evaluation is at
``t ≈ 0.01`` (shift 3, K = 4): nearly wasted.

With ``η = 0`` this is the first-order deterministic solver, and it equals a
diffusers pipeline number for number when the pipeline's scheduler is
:attr:`SamplingSchedule.scheduler` and its ``latents`` are ``z``:
``EulerDiscreteScheduler`` (trailing, final sigma zero) for sigma-space
schedulers, ``DPMSolverMultistepScheduler`` with ``solver_order=1``
(DPM-Solver++ of order 1, which is DDIM landing on ``ᾱ = 1``) for the others.
Schedulers whose own steps are not this one are sampled by this rule all the
same, so that an image is a function of its noise alone:

* Euler-ancestral adds fresh noise at every step but the last: it equals r0kit
  at K = 1 (SDXL-Turbo's setting), and Euler otherwise.
* DPM-Solver multistep of order 2 equals it for K ≤ 2 (its first and last
  steps are first-order). LCM re-noises between steps (η = 1), so it differs
  for K > 1; at K = 1 it equals r0kit up to its boundary condition
  ``c_skip(999) ≈ 3·10⁻⁹``. PNDM differs: a linear multistep, which also
  ends on ``ᾱ₀`` rather than 1 unless ``set_alpha_to_one``.
* ``DDIMScheduler`` (trailing, ``set_alpha_to_one=True``) equals it for every
  K that divides the training steps; for other K, diffusers' DDIM steps to
  ``t − T//K`` instead of its own next timestep.

Importing this module imports no diffusers or transformers; :func:`load` does.

SANA-Sprint is not loaded: its transformer is a flow-velocity model and its
TrigFlow state ``cos s·x₀ + sin s·ε`` is a flow state at ``t = sin s/(cos s + sin s)``
scaled by ``1/(cos s + sin s)``, so it fits the abstraction, but its diffusers
sampler (``SCMScheduler``) re-noises every step (η = 1), so it equals r0kit's
deterministic sampler only at K = 1, and its Gemma-2 text encoder with the
instruction prefix is a conditioning path of its own (see the README).

Example::

    model = load("stabilityai/sd-turbo", dtype="float16", device="cuda")
    cond = model.encode_prompts(["a cat"])
    schedule = model.schedule(1)
    noise = model.initial_noise(1, 512, 512, seed=0)
    images = model.decode(model.unroll(noise, cond, schedule).latents)
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from r0kit.errors import InputError, OptionError, PromptTruncationWarning, R0kitWarning, WeightsError
from r0kit.text import TruncationWarner, autocast_regime

PredictionType = Literal["epsilon", "v_prediction", "sample", "flow_prediction"]
#: The model families (see the module docstring) and the pipeline kinds of each.
Family = Literal["vp", "flow"]
Kind = Literal["sd", "sdxl", "sd3", "flux"]
FAMILIES: dict[str, Family] = {"sd": "vp", "sdxl": "vp", "sd3": "flow", "flux": "flow"}
#: The diffusers pipeline class of each kind (parity checks and exports).
PIPELINE_CLASSES: dict[str, str] = {
    "sd": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sd3": "StableDiffusion3Pipeline",
    "flux": "FluxPipeline",
}
#: The denoising network's class of each flow kind (``model_index.json``'s ``transformer``).
_TRANSFORMER_KINDS: dict[str, Kind] = {"SD3Transformer2DModel": "sd3", "FluxTransformer2DModel": "flux"}
#: The attention projections LoRA adapts by default, per family: a UNet's, and an SD3/FLUX transformer's image
#: stream and joint-attention text stream (``add_*_proj``, ``to_add_out``), as diffusers' SD3 and FLUX LoRA scripts do.
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "vp": ("to_q", "to_k", "to_v", "to_out.0"),
    "flow": ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"),
}
#: diffusers' default T5 prompt length of each flow pipeline (``max_sequence_length``).
MAX_SEQUENCE_LENGTH: dict[str, int] = {"sd3": 256, "flux": 512}
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}

#: Short names for ``scheduler=``; any diffusers scheduler class name works too.
SCHEDULERS: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "lcm": "LCMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "tcd": "TCDScheduler",
    "flow_euler": "FlowMatchEulerDiscreteScheduler",
}

_UNET_CLASSES = ("UNet2DConditionModel",)
#: Components :func:`load` takes; ``"unet"`` is an alias of ``"backbone"`` (the denoising network).
COMPONENTS = ("backbone", "vae", "text")


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------
def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float16"`` / ``"fp16"`` / ``torch.float16`` ... -> a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise OptionError(f"unknown dtype {dtype!r}; use one of float32, float16, bfloat16") from None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"`` or ``None`` -> CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _import_diffusers():
    try:
        import diffusers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise OptionError(
            f"diffusion models need diffusers and transformers ({exc}); install them with pip install 'r0kit[diffusers]'"
        ) from None
    import diffusers

    return diffusers


def read_model_index(folder: str | Path) -> dict[str, Any]:
    """The ``model_index.json`` of a diffusers pipeline folder.

    :raises WeightsError: when the folder is not a diffusers pipeline, saying what it holds instead.
    """
    folder = Path(folder)
    index = folder / "model_index.json"
    if not index.is_file():
        held = sorted(p.name for p in folder.iterdir())[:12] if folder.is_dir() else []
        hint = ""
        if any(n.endswith((".safetensors", ".ckpt")) for n in held):
            hint = (
                "; it looks like a single-file checkpoint: convert it with "
                "diffusers' StableDiffusionPipeline.from_single_file(...).save_pretrained(folder)"
            )
        raise WeightsError(
            f"{str(folder)!r} is not a diffusers pipeline folder: it has no model_index.json "
            f"(it holds: {', '.join(held) or 'nothing'}){hint}. Pass a hub id such as 'stabilityai/sd-turbo', "
            "or a folder written by DiffusionPipeline.save_pretrained"
        )
    try:
        return json.loads(index.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{str(index)!r} cannot be read as JSON ({exc}); fetch the model again") from None


# ---------------------------------------------------------------------------
# conditioning
# ---------------------------------------------------------------------------
@dataclass
class Conditioning:
    """The network's text conditioning for a batch.

    :ivar embeds: ``[B, L, D]`` encoder hidden states (SD3: CLIP-L ⊕ CLIP-G zero-padded to the
        T5 width, then T5 along the sequence; FLUX: T5).
    :ivar pooled: ``[B, D']`` pooled text embeddings (SDXL, SD3: CLIP-L ⊕ CLIP-G; FLUX: CLIP), else ``None``.
    :ivar time_ids: ``[B, 6]`` SDXL micro-conditioning, else ``None``.
    """

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.embeds.shape[0]

    def unet_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"encoder_hidden_states": self.embeds}
        if self.pooled is not None:
            kw["added_cond_kwargs"] = {"text_embeds": self.pooled, "time_ids": self.time_ids}
        return kw

    def cat(self, other: Conditioning) -> Conditioning:
        def c(a, b):
            return None if a is None else torch.cat([a, b.to(a)])

        return Conditioning(torch.cat([self.embeds, other.embeds.to(self.embeds)]), c(self.pooled, other.pooled), c(self.time_ids, other.time_ids))

    def expand(self, batch: int) -> Conditioning:
        """A batch-1 conditioning repeated ``batch`` times."""

        def e(a):
            return None if a is None else a.expand(batch, *a.shape[1:])

        return Conditioning(e(self.embeds), e(self.pooled), e(self.time_ids))


# ---------------------------------------------------------------------------
# the math, as plain functions (shared by every generator)
# ---------------------------------------------------------------------------
def alphas_sigmas(scheduler: Any, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(α_t, σ_t) = (√ᾱ_t, √(1 − ᾱ_t))`` in float32 from the scheduler's ``alphas_cumprod``.

    Fractional timesteps (Karras-type sigma schedules) are interpolated linearly in ``ᾱ``.
    """
    ac = getattr(scheduler, "alphas_cumprod", None)
    if ac is None:
        raise OptionError(
            f"{type(scheduler).__name__} has no alphas_cumprod (a flow-matching scheduler?); "
            "r0kit's diffusion sampling needs a DDPM-family scheduler such as DDIM, Euler or LCM"
        )
    ac = torch.as_tensor(ac, dtype=torch.float32)
    t = torch.as_tensor(timesteps, dtype=torch.float32).cpu().clamp(0, len(ac) - 1)
    lo = t.floor().long()
    hi = t.ceil().long()
    frac = t - lo.float()
    abar = ac[lo] * (1 - frac) + ac[hi] * frac
    return abar.sqrt(), (1 - abar).clamp_min(0).sqrt()


def predict_x0_eps(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    alpha: torch.Tensor | float,
    sigma: torch.Tensor | float,
    prediction_type: PredictionType,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert a network output to ``(x̂₀, ε̂)`` at noise level ``(α, σ)``.

    ``epsilon``: ``x̂₀ = (x − σ ε̂)/α``; ``v_prediction``: ``x̂₀ = α x − σ v``,
    ``ε̂ = σ x + α v``; ``sample``: ``ε̂ = (x − α x̂₀)/σ``; ``flow_prediction``
    (rectified flow, ``α = 1 − t``, ``σ = t``, velocity ``v = ε − x₀``):
    ``x̂₀ = x − σ v``, ``ε̂ = x + α v`` (diffusers' name, from its flow schedulers).
    """
    a = _as_scalar(alpha, x_t)
    s = _as_scalar(sigma, x_t)
    if prediction_type == "epsilon":
        eps = model_output
        x0 = (x_t - s * eps) / a
    elif prediction_type == "v_prediction":
        x0 = a * x_t - s * model_output
        eps = s * x_t + a * model_output
    elif prediction_type == "sample":
        x0 = model_output
        eps = (x_t - a * x0) / s
    elif prediction_type == "flow_prediction":
        x0 = x_t - s * model_output
        eps = x_t + a * model_output
    else:
        raise OptionError(
            f"unknown prediction_type {prediction_type!r}; expected epsilon, v_prediction, sample or flow_prediction"
        )
    return x0, eps


def eta_step(
    x0: torch.Tensor,
    eps: torch.Tensor,
    alpha_next: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    eta: torch.Tensor | float = 0.0,
    noise: torch.Tensor | None = None,
    *,
    seed: int = 0,
    offset: int = 0,
) -> torch.Tensor:
    """The sampler step ``x_{t'} = α' x̂₀ + σ' (√(1 − η²) ε̂ + η ξ)``.

    :param alpha_next, sigma_next: floats (or 0-d tensors): the noise level stepped to.
    :param eta: a float, or a per-sample ``[B]`` tensor, in [0, 1].
    :param noise: an explicit ``ξ`` (same shape as ``x0``); otherwise ``ξ`` is drawn
        reproducibly from ``(seed, offset)`` by :func:`r0kit.kernels.eta_step`, which
        runs the fused Triton kernel on CUDA (ξ never touches memory) and the torch
        reference elsewhere.

    With ``η = 0`` everywhere it is the deterministic DDIM step (for rectified flow, with
    ``(α', σ') = (1 − t', t')``, the flow-matching Euler step) and draws nothing.
    Every sampler in r0kit steps through this function.
    """
    a = float(alpha_next)
    s = float(sigma_next)
    if isinstance(eta, torch.Tensor):
        eta = eta.reshape(-1) if eta.numel() > 1 else float(eta)
    if isinstance(eta, torch.Tensor):
        if eta.numel() != x0.shape[0]:
            raise InputError(f"eta must be a float or one value per sample ([{x0.shape[0]}]), got {eta.numel()} values")
        if bool(((eta < 0) | (eta > 1)).any()):
            raise InputError(f"eta must lie in [0, 1], got values in [{float(eta.min())}, {float(eta.max())}]")
        if not bool((eta > 0).any()):
            eta = 0.0
        else:
            eta = eta.to(device=x0.device, dtype=torch.float32)
    elif not 0.0 <= float(eta) <= 1.0:
        raise InputError(f"eta must lie in [0, 1], got {eta}")
    if isinstance(eta, float) and eta == 0.0:
        return a * x0 + s * eps
    from r0kit import kernels

    if noise is not None:
        if noise.shape != x0.shape:
            raise InputError(f"noise must have x0's shape {tuple(x0.shape)}, got {tuple(noise.shape)}")
        return kernels.eta_step_reference(x0, eps, a, s, eta, noise=noise)
    return kernels.eta_step(x0, eps, a, s, eta, seed=int(seed), offset=int(offset))


def trailing_timesteps(num_train_timesteps: int, steps: int) -> list[int]:
    """K timesteps evenly spaced down from the top of the schedule: the "trailing" spacing.

    ``[999, 749, 499, 249]`` for K = 4 of 1000, ``[999]`` for K = 1. The values are
    those of diffusers' ``np.round(np.arange(T, 0, -T / K)) - 1`` (its Euler, DDIM and
    DPM-Solver schedulers with ``timestep_spacing="trailing"``; Lin et al., 2024,
    "Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2), computed
    element by element so that there are always exactly K of them (``np.arange``
    returns K + 1 for some T and K, e.g. K = 61 of 1000).

    :param num_train_timesteps: T ≥ 1, the scheduler's ``num_train_timesteps``.
    :param steps: K with 1 ≤ K ≤ T.
    :returns: K strictly decreasing integers in ``[0, T)``, the first ``T − 1``.
    :raises OptionError: when K is not an integer in ``[1, T]``.
    """
    n = int(num_train_timesteps)
    if n < 1:
        raise OptionError(f"num_train_timesteps must be >= 1, got {num_train_timesteps!r}")
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or not 1 <= steps <= n:
        raise OptionError(f"the schedule has {n} training timesteps, so steps (K) must be an integer from 1 to {n}, got K={steps!r}")
    # numpy's arange fills start + i * delta with delta = (start + step) - start; the same values, K of them.
    delta = (n - n / int(steps)) - n
    ts = (np.round(n + np.arange(int(steps)) * delta).astype(np.int64) - 1).tolist()
    if ts[-1] < 0 or any(a <= b for a, b in zip(ts, ts[1:])):  # not reachable for T < 2**40
        raise OptionError(f"cannot space K={steps} timesteps over {n}; pass explicit timesteps")
    return [int(t) for t in ts]


@dataclass(frozen=True)
class SamplingSchedule:
    """Where a few-step sampler evaluates the network, and the noise levels it steps through.

    Built by :meth:`DiffusionModel.schedule`; see the module docstring for the rule.
    This is the one place that knows a model family's noise parameterization:
    generators and the training loop see only the network timesteps, ``(α, σ)``
    and the initial scale.

    :ivar family: ``"vp"`` (variance-preserving: ``x_t = α_t x₀ + σ_t ε``) or ``"flow"``
        (rectified flow: ``x_t = (1 − t) x₀ + t ε``, so ``α = 1 − t`` and ``σ = t``).
    :ivar timesteps: ``[K]``, the scheduler's timestep at each step, decreasing: int64 in
        ``[0, T)`` (vp), float32 ``1000·t`` in ``(0, 1000]`` (flow).
    :ivar alphas: ``[K + 1]`` float32 ``α`` at each step, then the clean level ``1``.
    :ivar sigmas: ``[K + 1]`` float32 ``σ`` at each step, then ``0``.
    :ivar init_scale: ``c`` in ``x_T = c·z``: what the scheduler does to ``latents=z`` (1 for flow).
    :ivar scheduler: the diffusers scheduler with which a pipeline reproduces this sampler
        at ``η = 0``: ``pipe.scheduler = schedule.scheduler;
        pipe(..., **schedule.pipeline_kwargs, latents=z)``.
    :ivar pipeline_kwargs: what to pass that pipeline for these steps: ``{"timesteps": [...]}``
        (vp) or ``{"sigmas": [...]}`` (flow: the unshifted ``t``, which the pipeline shifts).
    """

    family: Family
    timesteps: torch.Tensor
    alphas: torch.Tensor
    sigmas: torch.Tensor
    init_scale: float
    scheduler: Any = field(repr=False, compare=False)
    pipeline_kwargs: dict[str, list[Any]] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.timesteps.shape[0])

    def head(self, steps: int) -> SamplingSchedule:
        """The first ``steps`` steps, the last of them returning its ``x̂₀`` (R0+ intermediate supervision)."""
        if not 1 <= steps <= len(self):
            raise OptionError(f"a schedule of {len(self)} steps has no head of {steps}")
        a, s = self.alphas[:steps], self.sigmas[:steps]
        return replace(
            self, timesteps=self.timesteps[:steps], alphas=torch.cat([a, a.new_ones(1)]), sigmas=torch.cat([s, s.new_zeros(1)])
        )


def flow_shift_mu(image_seq_len: int, config: Any) -> float:
    """``μ`` of the resolution-dependent shift: linear in the transformer's token count.

    ``μ = base_shift + (max_shift − base_shift)·(n − base_image_seq_len)/(max_image_seq_len − base_image_seq_len)``
    with the scheduler config's values (defaults 0.5, 1.15, 256, 4096). Source: ``calculate_shift`` in
    diffusers' ``pipeline_flux.py`` (FLUX.1; the SD3 pipeline uses it too when the scheduler says
    ``use_dynamic_shifting``).

    :param image_seq_len: ``(h/2)·(w/2)`` for an ``h × w`` latent (2×2 patches).
    """
    get = config.get if hasattr(config, "get") else (lambda k, d: getattr(config, k, d))
    base_len, max_len = float(get("base_image_seq_len", 256)), float(get("max_image_seq_len", 4096))
    base_shift, max_shift = float(get("base_shift", 0.5)), float(get("max_shift", 1.15))
    m = (max_shift - base_shift) / (max_len - base_len)
    return float(image_seq_len) * m + (base_shift - m * base_len)


def flow_pipeline_scheduler(scheduler: Any) -> Any:
    """The ``FlowMatchEulerDiscreteScheduler`` that reproduces r0kit's η = 0 flow sampler.

    It keeps ``scheduler``'s ``shift`` and dynamic-shift settings and drops everything r0kit's
    rule does not do: ``shift_terminal``, Karras/exponential/beta sigmas, inverted sigmas and
    ``stochastic_sampling`` (which is the η = 1 step ``(1 − t') x̂₀ + t' ξ``).
    """
    diffusers = _import_diffusers()
    return diffusers.FlowMatchEulerDiscreteScheduler.from_config(
        dict(scheduler.config),
        shift_terminal=None,
        use_karras_sigmas=False,
        use_exponential_sigmas=False,
        use_beta_sigmas=False,
        invert_sigmas=False,
        stochastic_sampling=False,
    )


def _unshift(t: np.ndarray, config: Any, mu: float | None) -> np.ndarray:
    """The ``t`` that the scheduler's shift maps to ``t`` given: the inverse of each shift of
    ``FlowMatchEulerDiscreteScheduler.set_timesteps`` (static, dynamic exponential, dynamic linear)."""
    t = np.asarray(t, dtype=np.float64)
    if getattr(config, "use_dynamic_shifting", False):
        e = float(np.exp(mu)) if getattr(config, "time_shift_type", "exponential") == "exponential" else float(mu)
        return 1.0 / (1.0 + e * (1.0 / t - 1.0))
    s = float(getattr(config, "shift", 1.0))
    return t / (s - (s - 1.0) * t)


def is_sigma_space(scheduler: Any) -> bool:
    """True for schedulers whose latents are ``x₀ + σ ε`` and are divided by ``√(σ² + 1)`` for the network.

    Decided by asking the scheduler itself (its ``scale_model_input`` at its first
    timestep), so it holds for any diffusers class: Euler, Euler-ancestral, Heun,
    LMS, KDPM2 are sigma-space; DDIM, PNDM, DDPM, LCM, DPM-Solver, UniPC, TCD are not.
    """
    probe = type(scheduler).from_config(scheduler.config)
    try:
        with warnings.catch_warnings():  # diffusers' own numpy-2 DeprecationWarning in set_timesteps
            warnings.simplefilter("ignore", DeprecationWarning)
            probe.set_timesteps(1)
        one = torch.ones(1)
        return not torch.equal(probe.scale_model_input(one, probe.timesteps[0]), one)
    except (TypeError, ValueError, AttributeError, IndexError):
        return bool(getattr(scheduler, "init_noise_sigma", 1.0) != 1.0)


def pipeline_scheduler(scheduler: Any) -> Any:
    """The diffusers scheduler that reproduces r0kit's η = 0 sampler for a pipeline whose scheduler is ``scheduler``.

    Sigma-space schedulers map to ``EulerDiscreteScheduler`` (trailing spacing, final
    sigma zero, no Karras/exponential/beta sigmas), whose step ``x + (σ' − σ)·ε̂`` is the
    deterministic step and whose ``init_noise_sigma`` at trailing spacing is ``σ_max``.
    The others map to ``DPMSolverMultistepScheduler`` of order 1 (DPM-Solver++;
    Lu et al., 2022: its first-order update is DDIM), final sigma zero, which takes
    any explicit timesteps and starts from ``latents`` unscaled. Both keep the
    ``alphas_cumprod`` and ``prediction_type`` of ``scheduler``'s config.
    """
    diffusers = _import_diffusers()
    cfg = dict(scheduler.config)
    common = dict(timestep_spacing="trailing", use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False)
    if is_sigma_space(scheduler):
        return diffusers.EulerDiscreteScheduler.from_config(
            cfg, **common, final_sigmas_type="zero", interpolation_type="linear", timestep_type="discrete"
        )
    return diffusers.DPMSolverMultistepScheduler.from_config(
        cfg,
        **common,
        solver_order=1,
        algorithm_type="dpmsolver++",
        final_sigmas_type="zero",
        thresholding=False,
        use_lu_lambdas=False,
        use_flow_sigmas=False,
        euler_at_final=False,
        lambda_min_clipped=-float("inf"),
        variance_type=None,
    )


def check_guidance_scale(guidance_scale: Any, what: str = "guidance") -> float:
    """The one rule every command applies to a classifier-free guidance scale: a finite number ``>= 0``.

    ``0`` and ``1`` both mean no guidance (diffusers' rule, see :func:`uses_cfg`; turbo
    models are documented with ``guidance_scale=0``).

    :returns: the scale as a float.
    :raises OptionError: naming ``what``, for anything else (a bool, a string, NaN, ±inf, a negative number).
    """
    import math

    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise OptionError(
            f"{what} must be a finite number >= 0 (classifier-free guidance runs only above 1; "
            f"0 or 1 = none, as for turbo models), got {guidance_scale!r}"
        )
    return float(guidance_scale)


def uses_cfg(guidance_scale: float, backbone: Any = None) -> bool:
    """Whether classifier-free guidance runs: diffusers' rule, ``guidance_scale > 1``.

    ``0`` and ``1`` both mean no unconditional pass (turbo models are documented with
    ``guidance_scale=0``). A guidance-distilled UNet (``time_cond_proj_dim`` set: LCM)
    never runs CFG; it reads the scale through :func:`guidance_embedding`. A FLUX.1
    transformer never runs it either: ``FluxPipeline``'s ``guidance_scale`` is the
    embedded guidance of a guidance-distilled transformer (``guidance_embeds``, FLUX.1-dev)
    and is ignored by one without (FLUX.1-schnell).
    Source: ``StableDiffusionPipeline.do_classifier_free_guidance`` and ``FluxPipeline`` in diffusers.
    """
    if backbone is not None:
        config = backbone.config
        if getattr(config, "time_cond_proj_dim", None) is not None or hasattr(config, "guidance_embeds"):
            return False
    return float(guidance_scale) > 1.0


def guidance_embedding(guidance_scale: float, batch: int, dim: int, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[B, dim]`` sinusoidal embedding of ``w = guidance_scale − 1`` for a guidance-distilled UNet's ``timestep_cond``.

    Sources: diffusers ``StableDiffusionPipeline.get_guidance_scale_embedding`` (from VDM,
    ``model_vdm.py``); LCM (Luo et al., 2023) conditions on ``w`` this way.
    """
    w = torch.full((batch,), float(guidance_scale) - 1.0, dtype=torch.float32) * 1000.0
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
    emb = w[:, None] * freq[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb.to(device)


def _as_scalar(v: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
    if isinstance(v, torch.Tensor):
        v = v.to(device=like.device, dtype=like.dtype)
        if v.dim() == 1 and v.numel() == like.shape[0] and like.dim() > 1:
            v = v.view(-1, *([1] * (like.dim() - 1)))
    return v


# ---------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------
@dataclass
class Unrolled:
    """What :meth:`DiffusionModel.unroll` returns.

    :ivar latents: the final ``x̂₀``, ``[B, C, h, w]`` in the VAE's scaled latent space.
    :ivar x0s: ``x̂₀`` predicted at every step (when ``return_x0s=True``).
    :ivar etas: the ``η`` used at every step, ``[K, B]``.
    """

    latents: torch.Tensor
    x0s: list[torch.Tensor] = field(default_factory=list)
    etas: torch.Tensor | None = None


class DiffusionModel:
    """A loaded diffusion model: backbone, VAE, text encoder(s), tokenizer(s) and scheduler.

    Build it with :func:`load`. Every component is frozen (``requires_grad_(False)``,
    ``eval()``); a trainer that fine-tunes the backbone turns its parameters on
    itself. Components that were not asked for are ``None``.

    :param backbone: the denoising network: a ``UNet2DConditionModel`` (sd, sdxl), an
        ``SD3Transformer2DModel`` (sd3) or a ``FluxTransformer2DModel`` (flux).
    :param kind: ``"sd"``, ``"sdxl"``, ``"sd3"`` or ``"flux"``; the family follows from it.
    :param text_encoders: in the pipeline's order: CLIP (sd); CLIP, CLIP-G (sdxl); CLIP-L, CLIP-G
        and T5 unless dropped (sd3); CLIP, T5 (flux).
    :param max_sequence_length: the T5 prompt length (flow kinds; default diffusers' 256 for SD3, 512 for FLUX).
    """

    def __init__(
        self,
        *,
        backbone: Any,
        vae: Any,
        text_encoders: list[Any],
        tokenizers: list[Any],
        scheduler: Any,
        kind: Kind,
        dtype: torch.dtype,
        device: torch.device,
        source: str = "",
        force_zeros_for_empty_prompt: bool = False,
        max_sequence_length: int | None = None,
    ):
        if kind not in FAMILIES:
            raise OptionError(f"unknown model kind {kind!r}; expected one of {', '.join(FAMILIES)}")
        self.backbone, self.vae, self.scheduler = backbone, vae, scheduler
        self.text_encoders, self.tokenizers = text_encoders, tokenizers
        self.kind, self.dtype, self.device, self.source = kind, dtype, device, source
        #: ``"vp"`` or ``"flow"``, decided by the kind (see the module docstring)
        self.family: Family = FAMILIES[kind]
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        self.max_sequence_length = int(max_sequence_length or MAX_SEQUENCE_LENGTH.get(kind, 0)) or None
        self.vae_checkpointing = False
        self._cache: dict[tuple[str, tuple[Any, ...]], Conditioning] = {}
        self._ids: dict[tuple[int, int], torch.Tensor] = {}
        self._forward_module: torch.nn.Module | None = None
        if self.has_t5:  # the encoder that reads the whole prompt (CLIP's 77 tokens feed the pooled vector)
            reader, budget = "the T5 text encoder", int(self.max_sequence_length or 0)
        else:
            reader, budget = "the text encoder", (int(tokenizers[0].model_max_length) if tokenizers else 77)
        self._truncation = TruncationWarner(reader, budget)
        #: prompts that were longer than the text encoder takes (each warned once)
        self.truncated: set[str] = self._truncation.truncated

    # -- properties ------------------------------------------------------------
    @property
    def unet(self) -> Any:
        """The denoising network under diffusers' Stable Diffusion name: :attr:`backbone`."""
        return self.backbone

    @unet.setter
    def unet(self, module: Any) -> None:
        self.backbone = module

    def set_forward_module(self, module: torch.nn.Module | None) -> None:
        """Call the backbone through ``module`` (its DDP or FSDP wrapper from ``accelerator.prepare``);
        ``None`` or the backbone itself calls it directly again. Its config and parameters are still
        read from :attr:`backbone`, which a wrapper hides (``DistributedDataParallel`` has no ``.config``)."""
        self._forward_module = None if module is None or module is self.backbone else module

    @property
    def prediction_type(self) -> PredictionType:
        """What the network predicts: the scheduler's ``prediction_type``, or ``"flow_prediction"`` (velocity)."""
        if self.family == "flow":
            return "flow_prediction"
        return getattr(self.scheduler.config, "prediction_type", "epsilon")

    @property
    def has_t5(self) -> bool:
        """Whether the T5 encoder is loaded (an SD3 model can run without it, as ``text_encoder_3=None``)."""
        return (self.kind == "sd3" and len(self.text_encoders) == 3) or (self.kind == "flux" and len(self.text_encoders) == 2)

    @property
    def native_size(self) -> int:
        """The image side the model was trained at, in pixels: the backbone's ``sample_size`` times the
        VAE factor (UNet, SD3), FLUX's 128 latent pixels times it; 512 / 1024 without a VAE or backbone."""
        f = self.vae_scale_factor if self.vae is not None else 8
        if self.kind == "flux":
            return 128 * f  # FluxPipeline.default_sample_size
        size = getattr(self.backbone.config, "sample_size", None) if self.backbone is not None else None
        if size is None:
            # Not the VAE's sample_size: SD 2.x-derived VAEs (SD-Turbo's) say 768 for a 512-px model.
            return 512 if self.kind == "sd" else 1024
        return int(size if isinstance(size, int) else size[0]) * f

    @property
    def vae_dtype(self) -> torch.dtype:
        """The dtype the VAE runs in (read off its first parameter: ``vae.to(...)`` casts in place)."""
        self._need("vae")
        return next(self.vae.parameters()).dtype

    @property
    def vae_needs_upcast(self) -> bool:
        """True when the VAE is float16 but must run in float32: SDXL's VAE with ``force_upcast``.

        diffusers' SDXL pipelines upcast such a VAE for every decode and encode (the SDXL
        VAE's activations overflow float16: NaN or black images). Its SD pipelines never
        do, and ``AutoencoderKL`` defaults ``force_upcast`` to true, so the flag only
        counts for SDXL, as there. An fp16-safe VAE (``madebyollin/sdxl-vae-fp16-fix``)
        ships ``force_upcast: false`` and stays in float16.
        """
        return self.kind == "sdxl" and self.vae_dtype == torch.float16 and bool(getattr(self.vae.config, "force_upcast", False))

    def _vae_ready(self) -> contextlib.AbstractContextManager:
        """Upcast a force_upcast VAE left in float16; the context to run it in (no float16 autocast for it either)."""
        if self.vae_needs_upcast:
            warnings.warn("the SDXL VAE says force_upcast: running it in float32, as diffusers does", R0kitWarning, stacklevel=2)
            self.vae.to(torch.float32)
        dev = self.vae.device.type
        if (
            self.kind == "sdxl"
            and bool(getattr(self.vae.config, "force_upcast", False))
            and torch.is_autocast_enabled(dev)
            and torch.get_autocast_dtype(dev) == torch.float16
        ):
            return torch.autocast(dev, enabled=False)
        return contextlib.nullcontext()

    @property
    def vae_scale_factor(self) -> int:
        self._need("vae")
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        if self.backbone is not None:
            c = int(self.backbone.config.in_channels)
            return c // 4 if self.kind == "flux" else c  # FLUX's transformer reads 2x2-packed latents
        self._need("vae")
        return int(self.vae.config.latent_channels)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def size_multiple(self) -> int:
        """What an image side must be a multiple of: the VAE factor, times 2 for the transformers'
        2×2 patches (SD3's ``patch_size``; FLUX's packing)."""
        f = self.vae_scale_factor
        if self.kind == "sd3" and self.backbone is not None:
            return f * int(self.backbone.config.patch_size)
        return 2 * f if self.family == "flow" else f

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """``(C, h, w)`` of the latent of a ``height × width`` image; both must divide by :attr:`size_multiple`."""
        f, m = self.vae_scale_factor, self.size_multiple
        why = "the VAE downsampling factor" if m == f else f"the VAE downsampling factor {f} times the transformer's 2x2 patches"
        for label, v in (("height", height), ("width", width)):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0 or v % m:
                raise OptionError(f"{label} must be a positive multiple of {m} ({why}), got {v!r}", option=label)
        return (self.latent_channels, height // f, width // f)

    def image_seq_len(self, height: int, width: int) -> int:
        """The transformer's image token count at ``height × width``: ``(h/2)·(w/2)`` for an ``h × w`` latent."""
        _, h, w = self.latent_shape(height, width)
        return (h // 2) * (w // 2)

    def _need(self, *names: str) -> None:
        names = tuple("backbone" if n == "unet" else n for n in names)
        missing = [n for n in names if (getattr(self, n) is None if n != "text_encoders" else not self.text_encoders)]
        if missing:
            raise OptionError(f"this model was loaded without {', '.join(missing)}; load it with those components")

    # -- memory options ----------------------------------------------------------
    def set_memory_options(
        self,
        *,
        gradient_checkpointing: bool | None = None,
        vae_checkpointing: bool | None = None,
        vae_slicing: bool | None = None,
        vae_tiling: bool | None = None,
    ) -> None:
        """Backbone and VAE-decode gradient checkpointing, VAE slicing (one image at a time) and tiling."""
        if gradient_checkpointing is not None and self.backbone is not None:
            if gradient_checkpointing:
                self.backbone.enable_gradient_checkpointing()
            else:
                self.backbone.disable_gradient_checkpointing()
        if vae_checkpointing is not None:
            self.vae_checkpointing = bool(vae_checkpointing)
        if self.vae is not None:
            if vae_slicing is not None:
                (self.vae.enable_slicing if vae_slicing else self.vae.disable_slicing)()
            if vae_tiling is not None:
                (self.vae.enable_tiling if vae_tiling else self.vae.disable_tiling)()

    # -- prompts -------------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str], *, height: int | None = None, width: int | None = None) -> Conditioning:
        """Text conditioning for ``prompts``, one row each, cached per prompt and autocast regime (no autograd graph).

        A prompt longer than the text encoder takes is truncated, with a
        :class:`PromptTruncationWarning` that says so and what was dropped.
        ``height``/``width`` set SDXL's size conditioning (default: the UNet's native size).
        """
        self._need("text_encoders", "tokenizers")
        rows = [self._encode_one(p) for p in prompts]
        cond = Conditioning(
            torch.cat([r.embeds for r in rows]),
            None if rows[0].pooled is None else torch.cat([r.pooled for r in rows]),  # type: ignore[misc]
        )
        if self.kind == "sdxl":
            cond.time_ids = self.time_ids(len(prompts), height, width)
        return cond

    def encode_negative(self, batch: int, negative: str = "", **size: int | None) -> Conditioning:
        """The unconditional (or negative-prompt) conditioning for classifier-free guidance."""
        if negative == "" and self.force_zeros_for_empty_prompt:
            c = self.encode_prompts([""], **size)
            c = Conditioning(torch.zeros_like(c.embeds), None if c.pooled is None else torch.zeros_like(c.pooled), c.time_ids)
            return c.expand(batch)
        return self.encode_prompts([negative], **size).expand(batch)

    def time_ids(self, batch: int, height: int | None = None, width: int | None = None) -> torch.Tensor:
        """SDXL's ``(original_size, crop_top_left, target_size)`` ids, ``[B, 6]``."""
        native = self.native_size
        h, w = height or native, width or native
        ids = torch.tensor([h, w, 0, 0, h, w], dtype=self.dtype, device=self.device)
        return ids.expand(batch, 6)

    def clear_prompt_cache(self) -> None:
        """Forget every cached conditioning, and which prompts were reported as truncated."""
        self._cache.clear()
        self.truncated.clear()

    @torch.no_grad()
    def _encode_one(self, prompt: str) -> Conditioning:
        # The value depends on the autocast regime (bf16 autocast rounds the text encoder's output).
        key = (prompt, autocast_regime())
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if self.family == "flow":
            cond = self._encode_flow(prompt)
            self._cache[key] = cond
            return cond
        embeds, pooled = [], None
        for i, (tok, enc) in enumerate(zip(self.tokenizers, self.text_encoders)):
            max_len = int(tok.model_max_length)
            ids = tok(prompt, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt").input_ids
            if i == 0:
                self._truncation.check_hf(tok, prompt)
            out = enc(ids.to(enc.device), output_hidden_states=self.kind == "sdxl")
            if self.kind == "sdxl":
                embeds.append(out.hidden_states[-2])
                if hasattr(out, "text_embeds"):
                    pooled = out.text_embeds
            else:
                embeds.append(out.last_hidden_state)
        cond = Conditioning(
            torch.cat(embeds, dim=-1).to(self.device, self.dtype),
            None if pooled is None else pooled.to(self.device, self.dtype),
        )
        if self.kind == "sdxl" and cond.pooled is None:
            raise WeightsError(
                f"{self.source}: an SDXL pipeline needs text_encoder_2 to be a CLIPTextModelWithProjection (pooled embeds)"
            )
        self._cache[key] = cond
        return cond

    def _encode_flow(self, prompt: str) -> Conditioning:
        """SD3's and FLUX's conditioning, as ``StableDiffusion3Pipeline.encode_prompt`` and
        ``FluxPipeline.encode_prompt`` compute it (no CLIP skip, one image per prompt)."""

        def ids(tok: Any, length: int) -> torch.Tensor:
            return tok(prompt, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids

        clip_len = int(self.tokenizers[0].model_max_length)  # both pipelines' tokenizer_max_length
        t5_len = int(self.max_sequence_length or 0)
        if self.has_t5:
            self._truncation.check_hf(self.tokenizers[-1], prompt)
        else:
            self._truncation.check_hf(self.tokenizers[0], prompt)
        if self.kind == "flux":
            clip, t5 = self.text_encoders
            pooled = clip(ids(self.tokenizers[0], clip_len).to(clip.device), output_hidden_states=False).pooler_output
            embeds = t5(ids(self.tokenizers[1], t5_len).to(t5.device), output_hidden_states=False)[0]
            return Conditioning(embeds.to(self.device, self.dtype), pooled.to(self.device, self.dtype))
        # sd3: CLIP-L and CLIP-G penultimate states side by side, zero-padded to T5's width, then T5's states
        hidden, pooled_parts = [], []
        for tok, enc in zip(self.tokenizers[:2], self.text_encoders[:2]):
            out = enc(ids(tok, clip_len).to(enc.device), output_hidden_states=True)
            pooled_parts.append(out[0].to(self.device, self.dtype))
            hidden.append(out.hidden_states[-2].to(self.device, self.dtype))
        clip_embeds = torch.cat(hidden, dim=-1)
        if self.has_t5:
            t5 = self.text_encoders[2]
            t5_embeds = t5(ids(self.tokenizers[2], t5_len).to(t5.device))[0].to(self.device, self.dtype)
        else:  # text_encoder_3=None: zeros, as diffusers does
            width = int(self.backbone.config.joint_attention_dim) if self.backbone is not None else 4096
            t5_embeds = torch.zeros(1, t5_len, width, device=self.device, dtype=self.dtype)
        clip_embeds = torch.nn.functional.pad(clip_embeds, (0, t5_embeds.shape[-1] - clip_embeds.shape[-1]))
        return Conditioning(torch.cat([clip_embeds, t5_embeds], dim=-2), torch.cat(pooled_parts, dim=-1))

    # -- schedule ------------------------------------------------------------------------
    def schedule(
        self,
        steps: int | None,
        timesteps: Sequence[float] | None = None,
        *,
        height: int | None = None,
        width: int | None = None,
    ) -> SamplingSchedule:
        """The :class:`SamplingSchedule` of ``steps`` steps: trailing timesteps, or explicit ones.

        The pipeline's own spacing (``leading``, ``linspace``, ``steps_offset``) is not
        used: it would start a few-step sampler below the top of the schedule.

        :param timesteps: explicit strictly decreasing timesteps; ``steps`` must then be their
            count (or ``None``). Integers in ``[0, T)`` (vp), or ``1000·t`` in ``(0, 1000]`` after
            the shift (flow: the scheduler's ``timesteps``).
        :param height, width: the image size, for a flow scheduler's resolution-dependent shift
            (default the native size); the vp family ignores them.
        :raises OptionError: a step count outside ``[1, T]``, or bad explicit timesteps.
        """
        if self.family == "flow":
            return self._flow_schedule(steps, timesteps, height, width)
        n = self.num_train_timesteps
        if timesteps is not None:
            ts = [int(t) for t in timesteps]
            if not ts or any(t < 0 or t >= n for t in ts) or any(a <= b for a, b in zip(ts, ts[1:])):
                raise OptionError(f"timesteps must be strictly decreasing integers in [0, {n - 1}], got {ts}")
            if steps is not None and steps != len(ts):
                raise OptionError(f"{len(ts)} timesteps given for steps={steps}; give exactly that many")
        else:
            ts = trailing_timesteps(n, steps)
        t = torch.tensor(ts, dtype=torch.long)
        a, s = alphas_sigmas(self.scheduler, t)
        sigma_space = is_sigma_space(self.scheduler)
        return SamplingSchedule(
            family="vp",
            timesteps=t,
            alphas=torch.cat([a, a.new_ones(1)]),
            sigmas=torch.cat([s, s.new_zeros(1)]),
            init_scale=float(s[0]) if sigma_space else 1.0,
            scheduler=pipeline_scheduler(self.scheduler),
            pipeline_kwargs={"timesteps": [int(v) for v in ts]},
        )

    def _flow_schedule(
        self, steps: int | None, timesteps: Sequence[float] | None, height: int | None, width: int | None
    ) -> SamplingSchedule:
        n = self.num_train_timesteps
        sched = flow_pipeline_scheduler(self.scheduler)
        cfg = sched.config
        mu = None
        if cfg.use_dynamic_shifting:
            native = self.native_size
            mu = flow_shift_mu(self.image_seq_len(height or native, width or native), cfg)
        if timesteps is not None:
            ts = [float(t) for t in timesteps]
            if not ts or any(not 0 < t <= n for t in ts) or any(a <= b for a, b in zip(ts, ts[1:])):
                raise OptionError(f"timesteps must be strictly decreasing numbers in (0, {n}] (1000·t, shifted), got {ts}")
            if steps is not None and steps != len(ts):
                raise OptionError(f"{len(ts)} timesteps given for steps={steps}; give exactly that many")
            t = torch.tensor(ts, dtype=torch.float32)
            sig = t / n
            base = _unshift(sig.double().numpy(), cfg, mu)
        else:
            if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or not 1 <= steps <= n:
                raise OptionError(f"steps (K) must be an integer from 1 to {n}, got K={steps!r}")
            base = np.linspace(1.0, 1.0 / steps, int(steps))  # FluxPipeline's default sigmas
            sched.set_timesteps(sigmas=base, mu=mu)  # the scheduler applies its own shift
            sig, t = sched.sigmas[:-1].float(), sched.timesteps.float()
        return SamplingSchedule(
            family="flow",
            timesteps=t,
            alphas=torch.cat([1.0 - sig, sig.new_ones(1)]),
            sigmas=torch.cat([sig, sig.new_zeros(1)]),
            init_scale=1.0,
            scheduler=sched,
            pipeline_kwargs={"sigmas": [float(v) for v in base]},
        )

    # -- sampling ------------------------------------------------------------------------
    def initial_noise(self, batch: int, height: int, width: int, *, seed: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[B, C, h, w]`` standard normal noise in float32 on the model's device, drawn on the CPU for reproducibility."""
        shape = (batch, *self.latent_shape(height, width))
        if generator is None:
            generator = torch.Generator("cpu").manual_seed(0 if seed is None else int(seed))
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device)

    def predict(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor | float,
        cond: Conditioning,
        *,
        alpha: torch.Tensor | float,
        sigma: torch.Tensor | float,
        guidance_scale: float = 1.0,
        uncond: Conditioning | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One network evaluation at ``x_t`` (``[B, C, h, w]``) -> ``(x̂₀, ε̂)`` in ``x_t``'s dtype.

        :param t: the scheduler's timestep (see :attr:`SamplingSchedule.timesteps`).

        Guidance follows diffusers (:func:`uses_cfg`): classifier-free guidance
        ``out_u + w (out_c − out_u)`` runs only when ``guidance_scale > 1`` (and then
        needs ``uncond``); ``0`` and ``1`` mean the conditional output alone. A
        guidance-distilled UNet (``time_cond_proj_dim``) gets the scale as its
        ``timestep_cond`` instead, and a guidance-distilled FLUX transformer
        (``guidance_embeds``) as its ``guidance`` input.
        """
        self._need("backbone")
        b = x_t.shape[0]
        inp = x_t.to(self.dtype)
        tt = torch.as_tensor(t, device=self.device).float().reshape(-1).expand(b)
        if uses_cfg(guidance_scale, self.backbone):
            if uncond is None:
                raise OptionError("guidance_scale > 1 needs the unconditional conditioning (uncond=...)")
            out = self._forward(torch.cat([inp, inp]), torch.cat([tt, tt]), uncond.cat(cond), guidance_scale)
            out_u, out_c = out.float().chunk(2)
            out = out_u + guidance_scale * (out_c - out_u)
        else:
            out = self._forward(inp, tt, cond, guidance_scale).float()
        x0, eps = predict_x0_eps(out, x_t.float(), alpha, sigma, self.prediction_type)
        return x0.to(x_t.dtype), eps.to(x_t.dtype)

    def _forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, guidance_scale: float) -> torch.Tensor:
        """The backbone's raw output for ``[B, C, h, w]`` input, called as the kind's diffusers pipeline calls it."""
        net, b = self._forward_module or self.backbone, x.shape[0]
        config = self.backbone.config
        if self.kind == "sd3":  # StableDiffusion3Pipeline: timestep = 1000·t
            return net(
                hidden_states=x, timestep=t, encoder_hidden_states=cond.embeds, pooled_projections=cond.pooled, return_dict=False
            )[0]
        if self.kind == "flux":  # FluxPipeline: 2x2-packed latents, timestep / 1000, position ids, embedded guidance
            _, c, h, w = x.shape
            packed = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
            guidance = None
            if getattr(config, "guidance_embeds", False):
                guidance = torch.full((b,), float(guidance_scale), device=x.device, dtype=torch.float32)
            out = net(
                hidden_states=packed,
                timestep=t.to(x.dtype) / 1000,
                guidance=guidance,
                pooled_projections=cond.pooled,
                encoder_hidden_states=cond.embeds,
                txt_ids=torch.zeros(cond.embeds.shape[1], 3, device=x.device, dtype=x.dtype),
                img_ids=self._image_ids(h // 2, w // 2).to(x.dtype),
                return_dict=False,
            )[0]
            return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)
        extra: dict[str, Any] = {}
        cond_dim = getattr(config, "time_cond_proj_dim", None)
        if cond_dim is not None:
            extra["timestep_cond"] = guidance_embedding(guidance_scale, b, int(cond_dim), device=self.device).to(self.dtype)
        return net(x, t, **cond.unet_kwargs(), **extra, return_dict=False)[0]

    def _image_ids(self, rows: int, cols: int) -> torch.Tensor:
        """FLUX's ``[rows·cols, 3]`` position ids of the packed latent: ``(0, row, col)``
        (``FluxPipeline._prepare_latent_image_ids``)."""
        ids = self._ids.get((rows, cols))
        if ids is None:
            grid = torch.zeros(rows, cols, 3)
            grid[..., 1] += torch.arange(rows)[:, None]
            grid[..., 2] += torch.arange(cols)[None, :]
            ids = self._ids[(rows, cols)] = grid.reshape(rows * cols, 3).to(self.device)
        return ids

    def unroll(
        self,
        noise: torch.Tensor,
        cond: Conditioning,
        schedule: SamplingSchedule | Sequence[int] | torch.Tensor,
        *,
        eta: float | torch.Tensor = 0.0,
        seed: int = 0,
        guidance_scale: float = 1.0,
        uncond: Conditioning | None = None,
        grad_from_step: int = 0,
        return_x0s: bool = False,
    ) -> Unrolled:
        """Run the K-step sampler from standard normal ``noise`` ``z``, differentiably.

        The first network input is ``x_T = schedule.init_scale · z`` (see :class:`SamplingSchedule`).

        :param schedule: a :class:`SamplingSchedule`, or explicit timesteps (``self.schedule(None, ts)``).
        :param eta: a float, a ``[K]`` tensor (one per step), or ``[K, B]`` (per step and sample).
        :param seed: ``ξ`` of step ``i`` is drawn from ``(seed, offset = i·numel)`` (see :func:`eta_step`);
            vary it between calls (e.g. per training step) for fresh noise.
        :param grad_from_step: steps before this index run without autograd (stop-gradient on the
            path before it: truncated backprop, and R0+ intermediate supervision).
        :param return_x0s: also return ``x̂₀`` of every step.
        """
        if not isinstance(schedule, SamplingSchedule):
            schedule = self.schedule(None, torch.as_tensor(schedule).reshape(-1).tolist())
        timesteps, alphas, sigmas = schedule.timesteps, schedule.alphas, schedule.sigmas
        k = len(schedule)
        b = noise.shape[0]
        etas = _eta_table(eta, k, b)
        deterministic = isinstance(eta, (int, float)) and eta == 0
        if not 0 <= grad_from_step <= k:
            raise OptionError(f"grad_from_step must lie in [0, {k}], got {grad_from_step}")
        x = noise * schedule.init_scale if schedule.init_scale != 1.0 else noise
        x0s: list[torch.Tensor] = []
        x0 = noise
        for i in range(k):
            with torch.set_grad_enabled(torch.is_grad_enabled() and i >= grad_from_step):
                if i == grad_from_step and i > 0:
                    x = x.detach()
                x0, eps = self.predict(
                    x, timesteps[i], cond, alpha=alphas[i], sigma=sigmas[i], guidance_scale=guidance_scale, uncond=uncond
                )
                if return_x0s:
                    x0s.append(x0)
                if i + 1 < k:
                    e = 0.0 if deterministic else etas[i]
                    x = eta_step(x0, eps, alphas[i + 1], sigmas[i + 1], e, seed=seed, offset=i * x0.numel())
        return Unrolled(latents=x0, x0s=x0s, etas=etas)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE-decode ``[B, C, h, w]`` latents to images in [0, 1], float32, ``[B, 3, H, W]``.

        Honors VAE-decode gradient checkpointing and the VAE's slicing/tiling settings.
        """
        self._need("vae")
        with self._vae_ready():
            return self._decode(latents)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        cfg = self.vae.config
        z = latents.to(self.vae_dtype) / cfg.scaling_factor
        if getattr(cfg, "shift_factor", None):
            z = z + cfg.shift_factor

        def run(zz: torch.Tensor) -> torch.Tensor:
            return self.vae.decode(zz, return_dict=False)[0]

        if self.vae_checkpointing and torch.is_grad_enabled() and z.requires_grad:
            from torch.utils.checkpoint import checkpoint

            img = checkpoint(run, z, use_reentrant=False)
        else:
            img = run(z)
        return (img.float() * 0.5 + 0.5).clamp(0, 1)

    def encode_images(self, images: torch.Tensor, *, generator: torch.Generator | None = None, sample: bool = False) -> torch.Tensor:
        """VAE-encode ``[B, 3, H, W]`` images in [0, 1] to ``[B, C, h, w]`` latents (the mean, or a sample)."""
        self._need("vae")
        with self._vae_ready():
            dist = self.vae.encode((images.to(self.device, self.vae_dtype) * 2 - 1), return_dict=False)[0]
        cfg = self.vae.config
        z = dist.sample(generator) if sample else dist.mode()
        if getattr(cfg, "shift_factor", None):
            z = z - cfg.shift_factor
        return (z * cfg.scaling_factor).float()

    def __repr__(self) -> str:
        parts = [type(self.backbone).__name__] if self.backbone is not None else []
        parts += ["vae"] if self.vae is not None else []
        if self.text_encoders:
            parts.append(f"{len(self.text_encoders)} text encoder(s)")
        return (
            f"DiffusionModel({self.source!r}, kind={self.kind}, {', '.join(parts)}, "
            f"scheduler={type(self.scheduler).__name__}, {self.family}, {self.prediction_type}, {self.dtype}, {self.device})"
        )


def _eta_table(eta: float | torch.Tensor, k: int, b: int) -> torch.Tensor:
    e = torch.as_tensor(eta, dtype=torch.float32)
    if e.dim() == 0:
        e = e.expand(k, b)
    elif e.dim() == 1 and e.shape[0] == k:
        e = e.view(k, 1).expand(k, b)
    elif tuple(e.shape) != (k, b):
        raise InputError(f"eta must be a float, [K={k}] or [K={k}, B={b}], got shape {tuple(e.shape)}")
    if bool(((e < 0) | (e > 1)).any()):
        raise InputError(f"eta must lie in [0, 1], got values in [{float(e.min())}, {float(e.max())}]")
    return e.contiguous()


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------
def _component(index: dict[str, Any], key: str) -> tuple[str, str] | None:
    """``(library, class)`` of a ``model_index.json`` component, or ``None``."""
    v = index.get(key)
    if isinstance(v, (list, tuple)) and len(v) == 2 and v[0] is not None and v[1] is not None:
        return str(v[0]), str(v[1])
    return None


def _vae_force_upcast(folder: Path) -> bool:
    try:
        cfg = json.loads((Path(folder) / "vae" / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return True  # AutoencoderKL's default
    return bool(cfg.get("force_upcast", True))


def make_scheduler(name: str, config: Any, **overrides: Any) -> Any:
    """A diffusers scheduler ``name`` (short name or class name) built from another scheduler's config."""
    diffusers = _import_diffusers()
    cls_name = SCHEDULERS.get(name.lower(), name)
    cls = getattr(diffusers, cls_name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise OptionError(
            f"unknown scheduler {name!r}; use one of {', '.join(SCHEDULERS)} or a diffusers scheduler class name"
        )
    return cls.from_config(config, **overrides)


def _kind_of(index: dict[str, Any]) -> Kind | None:
    """The model kind a ``model_index.json`` describes, or ``None`` for a pipeline r0kit does not sample."""
    if _component(index, "unet") is not None:
        return "sdxl" if _component(index, "text_encoder_2") is not None or "XL" in str(index.get("_class_name", "")) else "sd"
    transformer = _component(index, "transformer")
    return _TRANSFORMER_KINDS.get(transformer[1]) if transformer is not None else None


def load(
    model: str,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = "auto",
    components: Sequence[str] = COMPONENTS,
    scheduler: str | None = None,
    scheduler_options: dict[str, Any] | None = None,
    revision: str | None = None,
    variant: str | None = None,
    vae_dtype: str | torch.dtype | None = None,
    gradient_checkpointing: bool = False,
    vae_checkpointing: bool = False,
    vae_slicing: bool = False,
    vae_tiling: bool = False,
    drop_t5: bool = False,
    max_sequence_length: int | None = None,
) -> DiffusionModel:
    """Load a diffusers pipeline's components from a hub id or a local folder.

    The model kind, and with it the family, is read off ``model_index.json``: a UNet
    (SD 1.x/2.x, SD-Turbo, SDXL, SDXL-Turbo: variance-preserving), an
    ``SD3Transformer2DModel`` (SD3, SD3.5: rectified flow) or a ``FluxTransformer2DModel``
    (FLUX.1: rectified flow).

    :param model: a hub id (``"stabilityai/sd-turbo"``) or a pipeline folder, resolved by
        :func:`r0kit.weights.resolve_pipeline` (local folder, Hugging Face cache, download of
        only the components asked for).
    :param variant: the weights variant to fetch and load (``"fp16"``: half the download);
        default the repository's main weights.
    :param components: any of ``"backbone"`` (the UNet or transformer; ``"unet"`` is an alias),
        ``"vae"``, ``"text"`` (text encoders and tokenizers). The scheduler is always loaded.
    :param scheduler: replace the pipeline's scheduler by this one (``"ddim"``, ``"euler"``,
        ``"lcm"``, ... or a class name; a ``FlowMatch*`` scheduler for a flow model), built from
        the pipeline's scheduler config plus ``scheduler_options``.
    :param vae_dtype: the VAE's dtype when it differs. An SDXL VAE whose config says
        ``force_upcast`` runs in float32 whatever is asked (see :attr:`DiffusionModel.vae_needs_upcast`).
    :param drop_t5: SD3/SD3.5: neither fetch nor load the T5 encoder (4.7B parameters for T5-XXL); its
        embeddings are zeros, as diffusers does with ``text_encoder_3=None``. FLUX needs its T5.
    :param max_sequence_length: the T5 prompt length in tokens (default diffusers': 256 for SD3, 512 for FLUX;
        FLUX.1-schnell is documented with 256).
    :raises WeightsError: the folder is not a pipeline r0kit samples, or a component is missing or unreadable.
    :raises OptionError: an unknown component, ``drop_t5`` for a model without a droppable T5.
    """
    from r0kit.weights import resolve_pipeline

    diffusers = _import_diffusers()
    components = tuple("backbone" if c == "unet" else c for c in components)
    unknown = set(components) - set(COMPONENTS)
    if unknown:
        raise OptionError(f"unknown component(s) {sorted(unknown)}; use {', '.join(COMPONENTS)} ('unet' = 'backbone')")
    if max_sequence_length is not None and (not isinstance(max_sequence_length, int) or not 1 <= max_sequence_length <= 512):
        raise OptionError(f"max_sequence_length must be an int from 1 to 512 (T5 tokens), got {max_sequence_length!r}")
    dt = resolve_dtype(dtype)
    vdt = resolve_dtype(vae_dtype) if vae_dtype is not None else dt
    dev = resolve_device(device)
    if dev.type == "cpu" and dt == torch.float16:
        warnings.warn("float16 on the CPU is slow and partly unsupported; use float32 or bfloat16 there", R0kitWarning, stacklevel=2)
    keys = ["unet", "transformer"] if "backbone" in components else []
    keys += [c for c in components if c == "vae"]
    if "text" in components:
        keys += ["text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"]
        if not drop_t5:
            keys += ["text_encoder_3", "tokenizer_3"]

    def check(index: dict[str, Any]) -> None:  # before any weight is fetched
        kind = _kind_of(index)
        if kind is None:
            other = _component(index, "transformer")
            what = f"a {other[1]}" if other else "no unet or transformer"
            raise WeightsError(
                f"{model!r} ({index.get('_class_name') or 'unknown pipeline'}) has {what}; r0kit samples the Stable "
                "Diffusion family (SD 1.x/2.x, SD-Turbo, SDXL, SDXL-Turbo: a UNet), SD3/SD3.5 (SD3Transformer2DModel) "
                "and FLUX.1 (FluxTransformer2DModel)"
            )
        if drop_t5 and kind != "sd3":
            raise OptionError(
                f"drop_t5: {model!r} is a {kind} model; only SD3/SD3.5 run without their T5 encoder "
                "(text_encoder_3), FLUX.1 conditions on T5 alone"
            )

    folder = resolve_pipeline(
        model, components=keys, variant=variant, revision=revision, check_index=check, what=f"diffusion model {model}"
    )
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "").strip().lower() in ("1", "true", "yes", "on"):
        # huggingface_hub and transformers read it; diffusers' loading bars need telling (--no-progress sets it)
        import diffusers

        diffusers.utils.logging.disable_progress_bar()
    index = read_model_index(folder)
    check(index)
    kind = _kind_of(index)
    assert kind is not None  # check() refused the others
    family = FAMILIES[kind]
    cls_name = str(index.get("_class_name", ""))

    def comp(key: str) -> tuple[str, str] | None:
        return _component(index, key)

    def from_pretrained(key: str, torch_dtype: torch.dtype | None):
        spec = comp(key)
        if spec is None:
            raise WeightsError(f"{str(folder)!r} ({cls_name}) lists no {key!r} component in model_index.json")
        library, cls = spec
        mod = __import__(library, fromlist=[cls])
        klass = getattr(mod, cls, None)
        if klass is None:
            raise WeightsError(f"{str(folder)!r}: component {key!r} has class {library}.{cls}, which this {library} lacks")
        kw: dict[str, Any] = {"subfolder": key}
        if torch_dtype is not None:  # a model with weights (tokenizers take neither)
            kw["torch_dtype" if library == "diffusers" else "dtype"] = torch_dtype
            if variant is not None:
                kw["variant"] = variant
        try:
            return klass.from_pretrained(str(folder), **kw)
        except (OSError, ValueError, EnvironmentError) as exc:
            raise WeightsError(
                f"{str(folder)!r}: cannot load component {key!r} ({cls}): {str(exc).splitlines()[0]}; "
                "the download may be incomplete: fetch the model again"
            ) from None

    def frozen(m):
        m.requires_grad_(False)
        m.eval()
        return m.to(dev)

    sched_spec = comp("scheduler")
    if sched_spec is None:
        raise WeightsError(f"{str(folder)!r} ({cls_name}) has no scheduler in model_index.json")
    try:
        sched = getattr(diffusers, sched_spec[1]).from_pretrained(str(folder), subfolder="scheduler")
    except (OSError, ValueError, AttributeError) as exc:
        raise WeightsError(f"{str(folder)!r}: cannot load the scheduler ({exc})") from None
    if scheduler is not None or scheduler_options:
        sched = make_scheduler(scheduler or type(sched).__name__, sched.config, **(scheduler_options or {}))
    if family == "vp" and getattr(sched, "alphas_cumprod", None) is None:
        raise WeightsError(
            f"{str(folder)!r}: its scheduler {type(sched).__name__} is not DDPM-family (no alphas_cumprod); "
            "r0kit samples a UNet pipeline with a DDPM-family scheduler (DDIM, Euler, LCM, ...)"
        )
    if family == "flow" and not type(sched).__name__.startswith("FlowMatch"):
        raise WeightsError(
            f"{str(folder)!r}: a {kind} model needs a flow-matching scheduler (FlowMatchEulerDiscreteScheduler), "
            f"not {type(sched).__name__}"
        )

    backbone = None
    if "backbone" in components:
        key = "unet" if family == "vp" else "transformer"
        backbone = frozen(from_pretrained(key, dt))
        expected = _UNET_CLASSES if family == "vp" else tuple(c for c, k in _TRANSFORMER_KINDS.items() if k == kind)
        if type(backbone).__name__ not in expected:
            raise WeightsError(f"{str(folder)!r}: the {key} is a {type(backbone).__name__}; expected one of {expected}")
    if "vae" in components and kind == "sdxl" and vdt == torch.float16 and _vae_force_upcast(folder):
        warnings.warn(f"{model}: the SDXL VAE says force_upcast, so it is loaded in float32 (as diffusers runs it)", R0kitWarning, stacklevel=2)
        vdt = torch.float32
    vae = frozen(from_pretrained("vae", vdt)) if "vae" in components else None
    encoders, tokenizers = [], []
    if "text" in components:
        pairs = [("text_encoder", "tokenizer")]
        if kind in ("sdxl", "sd3", "flux"):
            pairs.append(("text_encoder_2", "tokenizer_2"))
        if kind == "sd3" and not drop_t5:
            if comp("text_encoder_3") is None:
                raise WeightsError(f"{str(folder)!r}: this SD3 pipeline has no text_encoder_3 (T5); load it with drop_t5=True")
            pairs.append(("text_encoder_3", "tokenizer_3"))
        for enc_key, tok_key in pairs:
            encoders.append(frozen(from_pretrained(enc_key, dt)))
            tokenizers.append(from_pretrained(tok_key, None))
    out = DiffusionModel(
        backbone=backbone,
        vae=vae,
        text_encoders=encoders,
        tokenizers=tokenizers,
        scheduler=sched,
        kind=kind,
        dtype=dt,
        device=dev,
        source=str(model),
        force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", False)),
        max_sequence_length=max_sequence_length,
    )
    out.set_memory_options(
        gradient_checkpointing=gradient_checkpointing or None,
        vae_checkpointing=vae_checkpointing,
        vae_slicing=vae_slicing or None,
        vae_tiling=vae_tiling or None,
    )
    return out


__all__ = [
    "COMPONENTS",
    "Conditioning",
    "DiffusionModel",
    "FAMILIES",
    "Family",
    "Kind",
    "LORA_TARGETS",
    "PIPELINE_CLASSES",
    "PromptTruncationWarning",
    "SCHEDULERS",
    "SamplingSchedule",
    "Unrolled",
    "alphas_sigmas",
    "autocast_regime",
    "eta_step",
    "flow_pipeline_scheduler",
    "flow_shift_mu",
    "guidance_embedding",
    "is_sigma_space",
    "load",
    "make_scheduler",
    "pipeline_scheduler",
    "predict_x0_eps",
    "read_model_index",
    "resolve_device",
    "resolve_dtype",
    "trailing_timesteps",
    "uses_cfg",
]
