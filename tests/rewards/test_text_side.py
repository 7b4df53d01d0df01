"""The rewards' text side: caches keyed by the autocast regime, values read before a dtype cast, truncation warnings."""

from __future__ import annotations

import warnings

import pytest
import torch

import r0kit
from r0kit.backbones import PromptCache
from r0kit.errors import PromptTruncationWarning
from r0kit.images import preprocess

from test_rewards import PROMPTS, build

TEXT_REWARDS = ("clip", "hpsv2", "imagereward", "pickscore")
LONG = "a photo of a red cat on a blue house " * 12  # > 77 CLIP tokens, > 35 BERT tokens
BUDGET = {"clip": 77, "hpsv2": 77, "pickscore": 77, "imagereward": 35}


def test_prompt_cache_keys_by_the_autocast_regime():
    seen = []

    def encode(ps):
        on = torch.is_autocast_enabled("cpu")
        seen.append(on)
        return torch.full((len(ps), 1), 2.0 if on else 1.0)

    cache = PromptCache()
    assert cache.get(["a"], encode).item() == 1.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "a" not in cache
        assert cache.get(["a"], encode).item() == 2.0  # not the value computed outside autocast
        assert cache.get(["a"], encode).item() == 2.0
    assert cache.get(["a"], encode).item() == 1.0
    assert seen == [False, True] and len(cache) == 2


@pytest.mark.parametrize("name", TEXT_REWARDS)
def test_score_outside_autocast_does_not_depend_on_an_earlier_autocast_call(assets, name):
    """Training under bf16 autocast, then scoring in float32: the float32 score is the fresh one, bit for bit."""
    x = preprocess(torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)), r0kit.RewardContract())
    fresh = build(assets, name).module
    with torch.no_grad():
        want = fresh(x, PROMPTS)
        used = build(assets, name).module
        with torch.autocast("cpu", dtype=torch.bfloat16):
            used(x, PROMPTS)
        got = used(x, PROMPTS)
    assert torch.equal(got, want)


def test_pickscore_logit_scale_is_the_checkpoints_in_any_dtype(assets):
    from transformers import CLIPModel

    ref = float(CLIPModel.from_pretrained(str(assets.hf_clip)).logit_scale.float().exp())
    for dtype in ("bfloat16", "float16"):
        assert build(assets, "pickscore", dtype=dtype).module.logit_scale == ref, dtype


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_imagereward_head_keeps_its_float32_checkpoint_values(assets, dtype):
    sd = torch.load(str(assets.imagereward / "ImageReward.pt"), weights_only=True)
    mlp = build(assets, "imagereward", dtype=dtype).module.model.mlp
    for k, v in mlp.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, sd["mlp." + k]), k


@pytest.mark.parametrize("name", TEXT_REWARDS)
def test_long_prompt_warns_once_per_prompt_and_reward(assets, name):
    x = preprocess(torch.rand(1, 3, 224, 224), r0kit.RewardContract())
    module = build(assets, name).module
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        module(x, [LONG])
        module(x, [LONG])
        with torch.autocast("cpu", dtype=torch.bfloat16):  # encoded again for this regime, not warned again
            module(x, [LONG])
        module(x, [PROMPTS[0]])
    msgs = [str(w.message) for w in rec if issubclass(w.category, PromptTruncationWarning)]
    assert len(msgs) == 1, msgs
    assert f"reads the first {BUDGET[name]}" in msgs[0] and "dropped" in msgs[0]
    other = build(assets, name).module  # another reward instance says it again
    with pytest.warns(PromptTruncationWarning):
        other(x, [LONG])


@pytest.mark.parametrize("name", TEXT_REWARDS)
def test_a_truncation_is_said_once_as_an_r0kit_warning_naming_its_reward(assets, name, caplog):
    """It was said twice on the command line (a log record and a warning) in two formats; now once,
    as ``r0kit: warning: ...``, naming which reward's encoder cut the prompt."""
    import logging

    from r0kit.cli import _show_warning
    from r0kit.errors import R0kitWarning

    x = preprocess(torch.rand(1, 3, 224, 224), r0kit.RewardContract())
    module = build(assets, name).module
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        module(x, [LONG])
    assert not [r for r in caplog.records if "truncated" in r.getMessage()]
    (w,) = [w for w in rec if issubclass(w.category, PromptTruncationWarning)]
    assert issubclass(w.category, R0kitWarning)
    if name in ("clip", "hpsv2"):
        assert f"of the {name} reward" in str(w.message)
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        _show_warning(w.message, w.category, w.filename, w.lineno)
    assert err.getvalue().startswith("r0kit: warning: prompt truncated") and err.getvalue().count("\n") == 1
