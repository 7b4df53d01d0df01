"""The mini world's judge as registered metrics, and r0kit evaluate computing them."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from r0kit.mini import world as W

pytest.importorskip("torchmetrics")


def _renders(prompts, seed=0):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(W.render_batch([W.scene_for_prompt(p, rng) for p in prompts]))


PROMPTS = W.evaluation_prompts("heldout")[::4]


def _metric(name, **options):
    from r0kit.plugins import get_host

    return get_host().metrics.get(name).create(**options)


def test_geneval_metric_is_perfect_on_renders_and_low_on_noise(fresh_host):
    m = _metric("mini_geneval")
    good = m(_renders(PROMPTS), PROMPTS)
    assert good["geneval"] == 1.0 and good["geneval/colour"] == 1.0
    noise = m(torch.rand(len(PROMPTS), 3, 32, 32, generator=torch.Generator().manual_seed(0)), PROMPTS)
    assert noise["geneval"] < 0.2


def test_fid_metric_separates_renders_from_noise(fresh_host):
    m = _metric("mini_fid", per_prompt=4)
    prompts = [p for p in PROMPTS for _ in range(4)]
    renders = _renders(prompts, seed=5)
    near = m(renders, prompts)["fid"]
    far = m(torch.rand_like(renders), prompts)["fid"]
    assert 0 <= near < far


def test_diversity_metric_is_zero_for_one_image_per_prompt_repeated(fresh_host):
    m = _metric("mini_diversity")
    x = _renders(PROMPTS)
    assert m(torch.cat([x, x]), PROMPTS + PROMPTS)["diversity"] == pytest.approx(0.0, abs=1e-6)
    y = _renders(PROMPTS, seed=9)
    assert m(torch.cat([x, y]), PROMPTS + PROMPTS)["diversity"] > 0.0


def test_evaluate_puts_base_models_at_two_step_counts_and_the_metrics_in_one_table(tmp_path, fresh_host):
    from r0kit.evaluate import evaluate

    prompts = PROMPTS[:3]
    result = evaluate(
        ["r0kit-mini@1", "r0kit-mini@3"],
        prompts,
        rewards=["clip"],
        reward_options={"clip": {"model": "r0kit-mini-clip"}},
        metrics=["mini_geneval", "mini_diversity"],
        output=tmp_path / "eval",
        seeds=2,
        device="cpu",
    )
    assert [r.label for r in result.rows] == ["r0kit-mini@1", "r0kit-mini@3"]
    assert result.held_out == []  # metrics are the held-out judges
    for row in result.rows:
        assert len(row.files) == 6 and row.prompts == [p for p in prompts for _ in range(2)]
        assert {"geneval", "diversity"} <= set(row.metrics)
    a, b = (r.images for r in result.rows)
    assert not torch.equal(a, b)  # 1 and 3 steps sample differently from the same noise
    summary = list(csv.DictReader(open(result.summary_csv)))
    assert {"geneval", "diversity"} <= set(summary[0])
    titles = [t for _, t, _ in result.columns()]
    assert "CLIP score" in titles and "geneval*" in titles


def test_evaluate_with_metrics_alone_needs_no_reward(tmp_path, fresh_host):
    """The scaffolded metric's README ran `r0kit evaluate SOURCES --metric NAME`, refused with 'needs a reward'."""
    from r0kit.errors import OptionError
    from r0kit.evaluate import evaluate

    result = evaluate(["r0kit-mini@1"], PROMPTS[:2], metrics=["mini_geneval"], output=tmp_path / "eval", seeds=1, device="cpu")
    assert "geneval" in result.rows[0].metrics and result.held_out == []
    summary = list(csv.DictReader(open(result.summary_csv)))
    assert float(summary[0]["geneval"]) == result.rows[0].metrics["geneval"]
    with pytest.raises(OptionError, match="at least one reward or metric"):
        evaluate(["r0kit-mini@1"], PROMPTS[:2], output=tmp_path / "e2")


def test_evaluate_refuses_a_step_suffix_on_an_image_folder(tmp_path):
    from r0kit.errors import InputError
    from r0kit.evaluate import evaluate

    (tmp_path / "imgs").mkdir()
    with pytest.raises(InputError, match="base models only"):
        evaluate([str(tmp_path / "imgs") + "@4"], None, rewards=["contrast"], output=tmp_path / "o")
