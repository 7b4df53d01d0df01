"""Prompt-side helpers every text encoder in r0kit shares: the truncation warning and the cache key.

* :class:`TruncationWarner`: a prompt longer than an encoder takes is cut the way
  that model's upstream cuts it (CLIP at 77 tokens, ImageReward's BERT at 35, the
  diffusion text encoders at their ``model_max_length``). That changes what is
  scored or generated, so it is said once per prompt and model, as a
  :class:`~r0kit.errors.PromptTruncationWarning` and a log line, naming what
  was dropped.
* :func:`autocast_regime`: what the value of a tensor computed now depends on
  besides its inputs. Text caches key by ``(prompt, autocast_regime())``: an
  embedding computed under bf16 autocast is bf16-rounded, and must not be
  served outside autocast (or the reverse), or a resumed run differs from an
  uninterrupted one.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from r0kit.errors import PromptTruncationWarning


def autocast_regime() -> tuple[Any, ...]:
    """The autocast dtype of each device type (``None`` where autocast is off), e.g. ``(torch.bfloat16, None)``."""
    return tuple(torch.get_autocast_dtype(d) if torch.is_autocast_enabled(d) else None for d in ("cpu", "cuda"))


class TruncationWarner:
    """Warns once per prompt that ``model`` reads only the first ``max_tokens`` tokens of it.

    :param model: the name the warning gives (``"ImageReward"``, ``"the text encoder"``).
    :param max_tokens: the token budget, special tokens included.
    """

    def __init__(self, model: str, max_tokens: int) -> None:
        self.model, self.max_tokens = model, int(max_tokens)
        #: prompts reported as truncated
        self.truncated: set[str] = set()

    def check(self, prompt: str, n_tokens: int, *, kept: str | None = None, dropped: str | None = None) -> bool:
        """Warn (the first time) when ``n_tokens`` (special tokens included) exceeds the budget; True if it does."""
        if n_tokens <= self.max_tokens:
            return False
        if prompt in self.truncated:
            return True
        self.truncated.add(prompt)
        what = f"; used {kept!r}, dropped {dropped!r}" if kept is not None and dropped is not None else ""
        msg = (
            f"prompt truncated: it is {n_tokens} tokens and {self.model} reads the first {self.max_tokens}{what}. "
            "Shorten the prompt to keep all of it"
        )
        warnings.warn(msg, PromptTruncationWarning, stacklevel=3)
        return True

    def check_hf(self, tokenizer: Any, prompt: str) -> bool:
        """:meth:`check` with a transformers tokenizer's count (its special tokens included)."""
        ids = tokenizer(prompt, padding=False, truncation=False, verbose=False)["input_ids"]
        if len(ids) <= self.max_tokens:
            return False
        # between the start and end tokens, which every encoder here adds; T5 adds only the end token
        start = int(getattr(tokenizer, "bos_token_id", None) is not None and ids[0] == tokenizer.bos_token_id)
        body = ids[start:-1]
        keep = self.max_tokens - start - 1
        return self.check(prompt, len(ids), kept=tokenizer.decode(body[:keep]), dropped=tokenizer.decode(body[keep:]))

    def check_open_clip(self, tokenizer: Any, prompt: str) -> bool:
        """:meth:`check` with an open_clip tokenizer's count (start and end tokens included)."""
        encode = getattr(tokenizer, "encode", None)
        if encode is None:  # an HF-backed open_clip tokenizer
            inner = getattr(tokenizer, "tokenizer", None)
            return self.check_hf(inner, prompt) if inner is not None else False
        body = encode(prompt)
        n = len(body) + 2
        if n <= self.max_tokens:
            return False
        keep = self.max_tokens - 2
        decode = getattr(tokenizer, "decode", None)
        if decode is None:
            return self.check(prompt, n)
        return self.check(prompt, n, kept=decode(body[:keep]).strip(), dropped=decode(body[keep:]).strip())


__all__ = ["TruncationWarner", "autocast_regime"]
