"""A prompt's result does not depend on the batch it is optimized in (ReNO optimizes one prompt at a time).

Per-sample gradient clipping, best-iterate choice and stops; the loss is a sum over samples. The
same three prompts at batch sizes 1 and 3, with clipping active, give identical images and logs.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

import r0kit
from r0kit.cli import main
from r0kit.objective import Term
from r0kit.optimize import optimize, optimize_prompts

PROMPTS = ["a red apple", "a blue car", "a green tree"]
RAW = r0kit.RewardContract(size=None, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), needs_prompt=False)


def _run(objective, generator, batch_size: int, **kw):
    opts = dict(steps=6, seed=3, optimizer="sgd", lr=5.0, momentum=0.9, nesterov=True, grad_clip=0.01)
    opts.update(kw)
    return optimize_prompts(objective, generator, PROMPTS, batch_size=batch_size, **opts)


def _assert_same(a, b):
    assert a.best_step == b.best_step
    assert torch.equal(a.images, b.images)
    assert a.history == b.history  # every term and every per-sample gradient norm, at every step
    assert a.best_values == b.best_values


def test_pixel_batch_of_three_equals_three_batches_of_one():
    gen = r0kit.generator("pixel", height=16, width=16, resolution=8)
    obj = r0kit.reward("colorfulness") + r0kit.reward("contrast") - 0.1 * r0kit.regularizer("tv")
    one, three = _run(obj, gen, 1), _run(obj, gen, 3)
    # clipping was active: every sample's gradient norm was above the clip at every step
    norms = [g for rec in three.history[:-1] for g in rec["grad_norm"]]
    assert min(norms) > 0.01
    _assert_same(one, three)


def test_noise_generator_reno_setting_batch_of_three_equals_three_batches_of_one(sd_model):
    gen = r0kit.generator("noise", model=sd_model, height=16, width=16, steps=1)
    obj = r0kit.reward("colorfulness") + r0kit.reward("contrast") - 0.01 * r0kit.regularizer("noise_norm")
    one, three = _run(obj, gen, 1, steps=4), _run(obj, gen, 3, steps=4)
    assert min(g for rec in three.history[:-1] for g in rec["grad_norm"]) > 0.01
    torch.testing.assert_close(one.images, three.images, rtol=0, atol=1e-6)
    for a, b in zip(one.history, three.history):
        for k in a["values"]:
            np.testing.assert_allclose(a["values"][k], b["values"][k], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.get("grad_norm", []), b.get("grad_norm", []), rtol=1e-5)
    assert one.best_step == three.best_step


def test_cli_logs_and_images_do_not_depend_on_the_batch_size(tmp_path):
    for b in (1, 3):
        assert main(["optimize", *PROMPTS, "--steps", "5", "--seed", "3", "--optimizer", "sgd", "--lr", "5",
                     "--grad-clip", "0.001", "--batch-size", str(b), "--no-progress", "-o", str(tmp_path / f"b{b}")]) == 0
    log1, log3 = ((tmp_path / f"b{b}" / "log.csv").read_text() for b in (1, 3))
    assert log1 == log3
    rows = list(csv.DictReader(log1.splitlines()))
    assert min(float(r["grad_norm"]) for r in rows if r["grad_norm"]) > 0.001  # the clip was active
    for i in range(3):
        a, b = (np.asarray(Image.open(tmp_path / f"b{b}" / f"image_{i:03d}.png")) for b in (1, 3))
        assert np.array_equal(a, b)


def _scripted(values: list[list[float]], name: str = "scripted"):
    """The value of prompt ``"p{i}"`` at evaluation k is ``values[k][i]``, with the gradient of the image mean.

    Each prompt counts its own evaluations, so the reward stays batch-independent when a sample stops.
    """
    calls: dict[str, int] = {}

    def f(x, prompts):
        ks = [min(calls.get(p, 0), len(values) - 1) for p in prompts]
        for p in prompts:
            calls[p] = calls.get(p, 0) + 1
        m = x.flatten(1).mean(1)
        return m - m.detach() + torch.tensor([values[k][int(p[1:])] for k, p in zip(ks, prompts)])

    return Term(kind="reward", name=name, module=f, contract=RAW)


class _Penalty:
    """A regularizer whose per-sample value at evaluation k is values[k] (no gradient)."""

    def __init__(self, values):
        self.values, self.n = values, 0

    def __call__(self, sample, generator=None):
        k = min(self.n, len(self.values) - 1)
        self.n += 1
        return torch.tensor(self.values[k])


def test_best_iterate_is_ranked_by_the_reward_alone_by_default():
    # the reward peaks at step 2; with the regularizer subtracted the total peaks at step 1
    rewards = [[0.0], [1.0], [2.0], [0.5]]
    penalty = [[0.0], [0.0], [5.0], [0.0]]
    gen = r0kit.generator("pixel", height=4, width=4)

    def objective():
        reg = Term(kind="regularizer", name="scripted_penalty", module=_Penalty(penalty))
        return r0kit.Objective([_scripted(rewards), reg * -1.0])

    by_reward = optimize(objective(), gen, ["p0"], steps=3, optimizer="adam", lr=0.1)
    by_total = optimize(objective(), gen, ["p0"], steps=3, optimizer="adam", lr=0.1, best_by="total")
    assert by_reward.best_step == [2] and by_reward.best_by == "reward"
    assert by_total.best_step == [1]
    with pytest.raises(r0kit.OptionError, match="best_by"):
        optimize(objective(), gen, ["p0"], steps=1, best_by="loss")


def test_a_sample_that_goes_nan_stops_alone():
    # sample 1 goes NaN at step 2; samples 0 and 2 run every step, as they would alone
    nan = float("nan")
    values = [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, nan, 2.0], [3.0, 3.0, 3.0], [4.0, 4.0, 4.0]]
    gen = r0kit.generator("pixel", height=4, width=4)
    res = optimize(r0kit.Objective([_scripted(values)]), gen, ["p0", "p1", "p2"], steps=4, optimizer="adam", lr=0.1)
    assert res.best_step == [4, 1, 4]
    assert res.stops == [None, "stopped at step 2: the term(s) scripted went NaN or Inf", None]
    assert [rec["values"]["total"][1] for rec in res.history] == [0.0, 1.0, None, None, None]
    assert res.stopped == "prompt 1: stopped at step 2: the term(s) scripted went NaN or Inf; kept its best iterate (step 1)"


def test_shared_parameters_are_refused_for_a_batch():
    class Shared:
        def __init__(self):
            self.w = None

        def prepare(self, prompts, seed):
            self.w = torch.zeros(3, 4, 4, requires_grad=True)  # no batch dimension: one image for every prompt

        def parameters(self):
            return [self.w]

        def sample(self, prompts, generator=None):
            return r0kit.Sample(torch.sigmoid(self.w).expand(len(prompts), 3, 4, 4))

    with pytest.raises(r0kit.OptionError, match="leading batch dimension"):
        optimize(r0kit.reward("contrast"), Shared(), ["a", "b"], steps=1)
    assert optimize(r0kit.reward("contrast"), Shared(), ["a"], steps=1).best_step[0] is not None
