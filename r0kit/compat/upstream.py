"""A scoped shim that lets ``hpsv2==1.2.0`` and ``image-reward==1.5`` import and run.

r0kit re-implements both rewards and does not import these packages. They are
used only as references in the parity tests, installed with
``pip install --no-deps -r requirements/upstream.txt`` because their hard pins
(``timm==0.6.13``, ``pytest==7.2.0``, old transformers) conflict with the
project's environment.

What each needs to import and run on current torch/transformers/timm, and what
:func:`upstream_compat` does about it while the ``with`` block is active:

* ``hpsv2`` 1.2.0 builds a tokenizer at import time from
  ``hpsv2/src/open_clip/bpe_simple_vocab_16e6.txt.gz``, which the wheel does not
  ship. ``gzip.open`` of exactly that missing path is redirected to the
  identical file bundled with ``open_clip``.
* ``image-reward`` 1.5 imports the undeclared OpenAI ``clip`` package (only for
  its CLIP/aesthetic baselines, not for ImageReward itself). An empty ``clip``
  module stands in; using those baselines raises ``ImportError``.
* ``image-reward`` imports ``apply_chunking_to_forward``,
  ``find_pruneable_heads_and_indices`` and ``prune_linear_layer`` from
  ``transformers.modeling_utils``, and calls ``PreTrainedModel.get_head_mask``
  and ``PreTrainedModel.invert_attention_mask``; transformers 5 removed them.
  They are put back with the transformers 4.x behaviour.
* ``image-reward``'s BERT calls ``init_weights()`` where transformers 5 expects
  ``post_init()`` (which records the tied weights before ``init_weights`` reads
  them); ``init_weights`` is routed to ``post_init`` for such models.
* The OpenAI ``clip`` package and older setuptools users import
  ``pkg_resources``; setuptools >= 81 dropped it. A minimal module exposing
  ``packaging`` stands in when it is missing.
* ``image-reward``'s BLIP imports ``timm.models.layers``, ``timm.models.registry``
  and ``timm.models.helpers``: timm 1.x keeps them as deprecated aliases, so
  nothing is patched there.

Every patch is undone when the block exits, in reverse order, also on error.
Modules imported inside the block stay imported; their code that calls a
restored transformers method (a forward pass) must run inside the block.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any, Iterator

import torch

_MISSING = object()

#: The BPE merges file the hpsv2 wheel references but does not ship.
HPSV2_BPE_SUFFIX = ("hpsv2", "src", "open_clip", "bpe_simple_vocab_16e6.txt.gz")


class _Patches:
    """A stack of reversible patches."""

    def __init__(self) -> None:
        self._undo: list[tuple[Any, str, Any, bool]] = []  # (target, name, old, is_item)

    def setattr(self, target: Any, name: str, value: Any) -> None:
        self._undo.append((target, name, getattr(target, name, _MISSING), False))
        setattr(target, name, value)

    def setitem(self, target: dict, key: str, value: Any) -> None:
        self._undo.append((target, key, target.get(key, _MISSING), True))
        target[key] = value

    def undo(self) -> None:
        while self._undo:
            target, name, old, is_item = self._undo.pop()
            if is_item:
                if old is _MISSING:
                    target.pop(name, None)
                else:
                    target[name] = old
            elif old is _MISSING:
                with contextlib.suppress(AttributeError):
                    delattr(target, name)
            else:
                setattr(target, name, old)


# -- transformers 4.x functions that transformers 5 removed -------------------------------


def find_pruneable_heads_and_indices(heads, n_heads: int, head_size: int, already_pruned_heads: set):
    """transformers 4.x ``find_pruneable_heads_and_indices``."""
    mask = torch.ones(n_heads, head_size)
    heads = set(heads) - already_pruned_heads
    for head in heads:
        head = head - sum(1 if h < head else 0 for h in already_pruned_heads)
        mask[head] = 0
    mask = mask.view(-1).contiguous().eq(1)
    index = torch.arange(len(mask))[mask].long()
    return heads, index


def _get_head_mask(self, head_mask, num_hidden_layers: int, is_attention_chunked: bool = False):
    """transformers 4.x ``ModuleUtilsMixin.get_head_mask``."""
    if head_mask is None:
        return [None] * num_hidden_layers
    if head_mask.dim() == 1:
        head_mask = head_mask.unsqueeze(0).unsqueeze(0).unsqueeze(-1).unsqueeze(-1)
        head_mask = head_mask.expand(num_hidden_layers, -1, -1, -1, -1)
    elif head_mask.dim() == 2:
        head_mask = head_mask.unsqueeze(1).unsqueeze(-1).unsqueeze(-1)
    head_mask = head_mask.to(dtype=self.dtype)
    if is_attention_chunked:
        head_mask = head_mask.unsqueeze(-1)
    return head_mask


def _invert_attention_mask(self, encoder_attention_mask: torch.Tensor) -> torch.Tensor:
    """transformers 4.x ``ModuleUtilsMixin.invert_attention_mask``."""
    if encoder_attention_mask.dim() == 3:
        extended = encoder_attention_mask[:, None, :, :]
    else:
        extended = encoder_attention_mask[:, None, None, :]
    extended = extended.to(dtype=self.dtype)
    return (1.0 - extended) * torch.finfo(self.dtype).min


# -- stand-in modules --------------------------------------------------------------------


def _stub_clip() -> types.ModuleType:
    mod = types.ModuleType("clip")
    mod.__doc__ = "Stand-in for the OpenAI clip package, installed by r0kit.compat.upstream."

    def _unavailable(*args: Any, **kwargs: Any) -> Any:
        raise ImportError(
            "the OpenAI `clip` package is not installed; r0kit.compat.upstream only lets "
            "image-reward import, its CLIP/aesthetic baselines need `pip install "
            "git+https://github.com/openai/CLIP`"
        )

    mod.load = _unavailable  # type: ignore[attr-defined]
    mod.tokenize = _unavailable  # type: ignore[attr-defined]
    return mod


def _stub_pkg_resources() -> types.ModuleType:
    import packaging
    import packaging.version

    mod = types.ModuleType("pkg_resources")
    mod.__doc__ = "Minimal stand-in for setuptools' pkg_resources, installed by r0kit.compat.upstream."
    mod.packaging = packaging  # type: ignore[attr-defined]
    mod.parse_version = packaging.version.parse  # type: ignore[attr-defined]
    return mod


def _open_clip_bpe() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise ImportError("open_clip is needed for its BPE vocabulary: pip install 'r0kit[clip]'")
    return Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"


def _is_missing_hpsv2_bpe(filename: Any) -> bool:
    if not isinstance(filename, (str, Path)):
        return False
    p = Path(filename)
    return p.parts[-len(HPSV2_BPE_SUFFIX) :] == HPSV2_BPE_SUFFIX and not p.exists()


@contextlib.contextmanager
def upstream_compat() -> Iterator[None]:
    """Let ``hpsv2`` and ``ImageReward`` import and run inside the ``with`` block.

    Every patch is undone on exit. See the module docstring for the list.
    """
    patches = _Patches()
    try:
        # hpsv2: the missing BPE merges file.
        real_gzip_open = gzip.open

        def gzip_open(filename, *args, **kwargs):
            if _is_missing_hpsv2_bpe(filename):
                filename = _open_clip_bpe()
            return real_gzip_open(filename, *args, **kwargs)

        patches.setattr(gzip, "open", gzip_open)

        # image-reward: the undeclared OpenAI clip package.
        if "clip" not in sys.modules and importlib.util.find_spec("clip") is None:
            patches.setitem(sys.modules, "clip", _stub_clip())
        # setuptools >= 81 has no pkg_resources.
        if "pkg_resources" not in sys.modules and importlib.util.find_spec("pkg_resources") is None:
            patches.setitem(sys.modules, "pkg_resources", _stub_pkg_resources())

        # image-reward: transformers 4.x helpers.
        import transformers.modeling_utils as modeling_utils
        import transformers.pytorch_utils as pytorch_utils

        helpers = {
            "apply_chunking_to_forward": getattr(pytorch_utils, "apply_chunking_to_forward", None),
            "prune_linear_layer": getattr(pytorch_utils, "prune_linear_layer", None),
            "find_pruneable_heads_and_indices": find_pruneable_heads_and_indices,
        }
        for name, fn in helpers.items():
            if not hasattr(modeling_utils, name):
                if fn is None:
                    raise ImportError(f"transformers {_tf_version()} has no {name}; r0kit.compat.upstream cannot restore it")
                patches.setattr(modeling_utils, name, fn)
        pretrained = modeling_utils.PreTrainedModel
        if not hasattr(pretrained, "get_head_mask"):
            patches.setattr(pretrained, "get_head_mask", _get_head_mask)
        if not hasattr(pretrained, "invert_attention_mask"):
            patches.setattr(pretrained, "invert_attention_mask", _invert_attention_mask)
        if hasattr(pretrained, "post_init") and "all_tied_weights_keys" in _source(pretrained.init_weights):
            real_init_weights = pretrained.init_weights

            def init_weights(self):
                # transformers 5's init_weights needs what post_init computes; 4.x models call it directly.
                if "all_tied_weights_keys" not in self.__dict__:
                    return self.post_init()
                return real_init_weights(self)

            patches.setattr(pretrained, "init_weights", init_weights)
        yield
    finally:
        patches.undo()


def _source(fn: Any) -> str:
    import inspect

    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        return ""


def _tf_version() -> str:
    import transformers

    return transformers.__version__
