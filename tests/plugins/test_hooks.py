"""One test per hook spec: a plugin implementing the hook, and its effect.

``tests/test_docs.py`` checks that every hook in ``r0kit.hookspecs`` has a
``test_hook_<name>`` here.
"""

from __future__ import annotations

import pytest
import torch

import r0kit
from r0kit.testing import registered_plugin


class _Brightness(torch.nn.Module):
    def forward(self, x, prompts):
        return x.flatten(1).mean(dim=1) * self.scale

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale


class _RewardPlugin:
    @r0kit.hookimpl
    def r0kit_register_rewards(self, register):
        contract = r0kit.RewardContract(size=16, resize="bilinear", mean=(0, 0, 0), std=(1, 1, 1), needs_prompt=False)
        register("hook_brightness", _Brightness, contract=contract, description="mean brightness")


def test_hook_r0kit_register_rewards():
    from r0kit.plugins import get_host

    with registered_plugin(_RewardPlugin(), "hook_reward_plugin") as name:
        entry = get_host().rewards.get("hook_brightness")
        assert entry.plugin == name and entry.description == "mean brightness" and entry.contract.size == 16
        images = torch.stack([torch.full((3, 40, 30), 0.25), torch.full((3, 40, 30), 0.75)])
        result = r0kit.Objective([3 * r0kit.reward("hook_brightness", scale=2.0)]).evaluate(r0kit.Sample(images), ["a", "b"])
        torch.testing.assert_close(result.terms["hook_brightness"], torch.tensor([0.5, 1.5]))
        torch.testing.assert_close(result.total, torch.tensor([1.5, 4.5]))
    assert "hook_brightness" not in get_host().rewards


class _Darkness:
    def __call__(self, sample, generator=None):
        return sample.images.flatten(1).mean(dim=1)


class _RegularizerPlugin:
    @r0kit.hookimpl
    def r0kit_register_regularizers(self, register):
        register("hook_darkness", _Darkness)


def test_hook_r0kit_register_regularizers():
    from r0kit.plugins import get_host

    with registered_plugin(_RegularizerPlugin(), "hook_regularizer_plugin"):
        images = torch.stack([torch.full((3, 8, 8), 0.5), torch.full((3, 8, 8), 1.0)])
        objective = r0kit.reward("contrast") - 0.5 * r0kit.regularizer("hook_darkness")
        result = objective.evaluate(r0kit.Sample(images), ["a", "b"])
        torch.testing.assert_close(result.terms["hook_darkness"], torch.tensor([0.5, 1.0]))
        # flat images have ~zero contrast, so the total is minus half the penalty
        torch.testing.assert_close(result.total, torch.tensor([-0.25, -0.5]), atol=1e-5, rtol=0)
    assert "hook_darkness" not in get_host().regularizers


class _Constant:
    def __init__(self, value: float = 0.5, size: int = 8):
        self.value, self.size = value, size
        self.x: torch.Tensor | None = None

    def prepare(self, prompts, seed):
        self.x = torch.full((len(prompts), 3, self.size, self.size), self.value).requires_grad_(True)

    def parameters(self):
        return [self.x]

    def sample(self, prompts, generator=None):
        return r0kit.Sample(self.x.clamp(0, 1), {"param": self.x})


class _GeneratorPlugin:
    @r0kit.hookimpl
    def r0kit_register_generators(self, register):
        register("hook_constant", _Constant, description="a constant image")


def test_hook_r0kit_register_generators():
    from r0kit.optimize import optimize
    from r0kit.plugins import get_host

    with registered_plugin(_GeneratorPlugin(), "hook_generator_plugin"):
        gen = r0kit.generator("hook_constant", value=0.25, size=6)
        gen.prepare(["a", "b"], seed=0)
        assert gen.sample(["a", "b"]).images.shape == (2, 3, 6, 6)
        # the optimizer loop drives it like any generator
        target = r0kit.reward("target_color", color=(1.0, 1.0, 1.0))
        result = optimize(r0kit.Objective([target]), gen, ["a"], steps=3, lr=0.1, optimizer="adam", progress=False)
        assert result.history[-1]["values"]["total"][0] > result.history[0]["values"]["total"][0]
    with pytest.raises(r0kit.UnknownNameError):
        get_host().generators.get("hook_constant")


class _MeanBrightness:
    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def __call__(self, images, prompts):
        return {"brightness": float(images.mean()) * self.scale, "prompts": len(set(prompts))}


class _MetricPlugin:
    @r0kit.hookimpl
    def r0kit_register_metrics(self, register):
        register("hook_brightness_metric", _MeanBrightness, description="mean brightness of the set")


def test_hook_r0kit_register_metrics(tmp_path):
    from r0kit.evaluate import evaluate
    from r0kit.outputs import save_png
    from r0kit.plugins import get_host

    for i, v in enumerate((0.2, 0.6)):
        save_png(tmp_path / "imgs" / f"{i}.png", torch.full((3, 8, 8), v), {"prompt": f"p{i}"})
    with registered_plugin(_MetricPlugin(), "hook_metric_plugin") as name:
        assert get_host().metrics.get("hook_brightness_metric").plugin == name
        result = evaluate([str(tmp_path / "imgs")], None, rewards=["contrast"], metrics=["hook_brightness_metric"],
                          metric_options={"hook_brightness_metric": {"scale": 2.0}}, output=tmp_path / "eval")
        row = result.rows[0]
        assert row.metrics["brightness"] == pytest.approx(0.8, abs=2e-3) and row.metrics["prompts"] == 2.0
        assert result.held_out == [] and "brightness" in result.metrics
    with pytest.raises(r0kit.UnknownNameError):
        get_host().metrics.get("hook_brightness_metric")
