"""Pieces every model-backed reward needs: lazy imports, dtype/device, freezing, caches, a frozen scorer base."""

from __future__ import annotations

import functools
import importlib
from collections import OrderedDict
from typing import Any, Callable, Iterable, Sequence

import torch

from r0kit.errors import InputError, OptionError, PluginError
from r0kit.text import autocast_regime

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


class MissingDependencyError(PluginError, ImportError):
    """An optional package a reward needs is not installed; the message names the extra."""


def require(module: str, *, extra: str, what: str):
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``pip install 'r0kit[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{what} needs the package {module.split('.')[0]!r}, which failed to import ({exc}); "
            f"install it with `pip install 'r0kit[{extra}]'`"
        ) from exc


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"``, ``"float16"``, ``"bfloat16"`` (or short forms, or a ``torch.dtype``)."""
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.float32, torch.float16, torch.bfloat16):
            return dtype
    elif isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.lower().removeprefix("torch.")]
    raise OptionError(f"dtype must be one of float32, float16, bfloat16; got {dtype!r}")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` picks CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise OptionError(f"device {device!r} is not a torch device ({exc}); use 'cpu', 'cuda' or 'cuda:1'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"device {device!r} asks for CUDA, which this machine does not have; use device='cpu'")
    return dev


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Eval mode, and no parameter requires a gradient. Returns ``module``."""
    module.eval()
    module.requires_grad_(False)
    return module


def enable_layer_checkpointing(layers: Iterable[torch.nn.Module]) -> None:
    """Recompute each layer's activations in the backward pass instead of storing them.

    Wraps the forward of each given layer instance (not its class) in
    :func:`torch.utils.checkpoint.checkpoint`, active whenever autograd
    records, also in eval mode (frozen rewards run in eval mode, which is
    where the checkpointing of transformers and timm switches itself off).
    Parameter names and state dicts are unchanged.
    """
    for layer in layers:
        if getattr(layer, "_r0kit_checkpointed", False):
            continue
        inner = layer.forward

        def forward(*args, __inner=inner, **kwargs):
            if torch.is_grad_enabled():
                return torch.utils.checkpoint.checkpoint(__inner, *args, use_reentrant=False, **kwargs)
            return __inner(*args, **kwargs)

        functools.update_wrapper(forward, inner)
        layer.forward = forward  # type: ignore[method-assign]
        layer._r0kit_checkpointed = True  # type: ignore[attr-defined]


class PromptCache:
    """Per-prompt cache of text-side tensors, least recently used first out.

    ``get(prompts, encode)`` calls ``encode([prompt]) -> Tensor[1, ...]`` once for
    each distinct prompt not cached yet, under ``torch.no_grad()``, and returns the
    stacked ``[len(prompts), ...]`` tensor. The cached tensors are detached: the
    reward's weights are frozen.

    Each prompt is encoded alone, never in a batch with the other missing ones: a
    text encoder's output row depends, in its last bits, on the batch it was
    computed in (the matrix products block differently for 1, 3 or 8 rows), so a
    batched cache would give a prompt a value that depends on which prompts
    happened to be missing with it, that is, on the run's history. A training run
    resumed from a checkpoint starts with an empty cache; it continues bit-exactly
    because a cached value is a function of its prompt (and autocast regime) alone.

    Entries are keyed by ``(prompt, autocast regime)`` (:func:`r0kit.text.autocast_regime`):
    a text embedding computed under bf16 autocast is bf16-rounded, so it is not
    served to a call outside autocast, nor the reverse.
    """

    def __init__(self, max_size: int = 4096) -> None:
        self.max_size = int(max_size)
        self._store: OrderedDict[tuple[str, tuple[Any, ...]], torch.Tensor] = OrderedDict()
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, prompt: str) -> bool:
        """Whether ``prompt`` is cached for the current autocast regime."""
        return (prompt, autocast_regime()) in self._store

    def clear(self) -> None:
        self._store.clear()

    def get(self, prompts: Sequence[str], encode: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise OptionError(f"prompts must be a list of strings, got {type(prompts).__name__}")
        regime = autocast_regime()
        missing = list(dict.fromkeys(p for p in prompts if (p, regime) not in self._store))
        for p in missing:  # one at a time: the value must not depend on the other missing prompts
            with torch.no_grad():
                encoded = encode([p])
            if not isinstance(encoded, torch.Tensor) or encoded.dim() < 1 or encoded.shape[0] != 1:
                got = tuple(encoded.shape) if isinstance(encoded, torch.Tensor) else type(encoded).__name__
                raise OptionError(f"PromptCache: encode([prompt]) must return a tensor [1, ...] for the one prompt, got {got}")
            t = encoded[0]
            self.misses += 1
            self._store[(p, regime)] = t.detach()
        out = []
        for p in prompts:
            self._store.move_to_end((p, regime))
            out.append(self._store[(p, regime)])
        while len(self._store) > self.max_size:
            self._store.popitem(last=False)
        return torch.stack(out)


def model_input(x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``x`` on the model's device and dtype (differentiable)."""
    return x.to(device=device, dtype=dtype)


class FrozenScorer(torch.nn.Module):
    """Base of the prompt-conditioned rewards on a frozen model: ``(x, prompts) -> Tensor[B]``.

    Resolves ``dtype`` and ``device``, moves ``model`` there and freezes it as
    ``self.model``, keeps ``tokenizer``, and stays in eval mode whatever its
    parent does. Subclasses add their prompt caches and ``forward``.

    :param keep_float32: submodule names that stay in float32 with their checkpoint
        values (a score head the upstream runs in float32), not cast to ``dtype`` and back.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        dtype: str | torch.dtype = "float32",
        device: str | torch.device | None = None,
        keep_float32: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.dtype = resolve_dtype(dtype)
        self.device = resolve_device(device)
        kept = {n: {k: v.detach().float().clone() for k, v in model.get_submodule(n).state_dict().items()} for n in keep_float32}
        model = model.to(device=self.device, dtype=self.dtype)
        for n, state in kept.items():  # the checkpoint's values, not their round trip through dtype
            model.get_submodule(n).float().load_state_dict(state)
        self.model = freeze(model)
        self.tokenizer = tokenizer

    def train(self, mode: bool = True) -> FrozenScorer:
        # A frozen reward stays in eval mode (dropout, drop-path off) whatever its parent does.
        return super().train(False)

    @staticmethod
    def check_prompts(x: torch.Tensor, prompts: Sequence[str]) -> None:
        """:raises InputError: unless there is one prompt per image of ``x``."""
        if len(prompts) != x.shape[0]:
            raise InputError(f"got {len(prompts)} prompt(s) for {x.shape[0]} image(s); pass one prompt per image")


def resolve_first(repo_id: str, filenames: Sequence[str], *, what: str, revision: str | None = None):
    """The first of ``filenames`` found in ``repo_id``: the cache is searched for all before any download.

    :raises WeightsError: the error for the first filename, when none resolves.
    """
    from pathlib import Path

    from r0kit.errors import WeightsError
    from r0kit.weights import resolve_file

    local = Path(repo_id).expanduser()
    if not local.is_dir():
        from huggingface_hub import try_to_load_from_cache

        for name in filenames:
            cached = try_to_load_from_cache(repo_id, name, revision=revision)
            if isinstance(cached, str) and Path(cached).is_file():
                return Path(cached)
    first: WeightsError | None = None
    for name in filenames:
        try:
            return resolve_file(repo_id, name, revision=revision, what=what)
        except WeightsError as exc:
            first = first or exc
    assert first is not None
    raise first
