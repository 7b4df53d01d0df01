"""The conformance checks themselves: each broken plugin fails its check, by name, and only its checks."""

from __future__ import annotations

import zlib

import pytest
import torch

import r0kit
from r0kit.testing import (
    ConformanceReport,
    assert_conforms,
    check,
    check_generator,
    check_regularizer,
    check_reward,
    registered_plugin,
)

RAW = r0kit.RewardContract(size=None, crop="none", mean=(0, 0, 0), std=(1, 1, 1), needs_prompt=False)
SQUARE = r0kit.RewardContract(size=32, resize="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3, needs_prompt=False)
PROMPTED = r0kit.RewardContract(size=32, resize="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3, needs_prompt=True)


def _h(p: str) -> float:
    return zlib.crc32(p.encode()) / 2**32


def _mean(x):
    return x.flatten(1).mean(1)


class Good(torch.nn.Module):
    def forward(self, x, prompts):
        return _mean(x**2) + x.new_tensor([_h(p) for p in prompts])


class WrongShape(torch.nn.Module):
    def forward(self, x, prompts):
        return _mean(x).unsqueeze(1)


class Detached(torch.nn.Module):
    def forward(self, x, prompts):
        return _mean(x).detach()


class LogBrightness(torch.nn.Module):
    def forward(self, x, prompts):
        return torch.log(_mean(x * 0.5 + 0.5))  # -inf on an all-black image


class BatchNormed(torch.nn.Module):
    def forward(self, x, prompts):
        m = _mean(x)
        return (m - m.mean()) ** 2  # depends on the rest of the batch


class Misaligned(torch.nn.Module):
    def forward(self, x, prompts):
        return _mean(x) + x.new_tensor([_h(p) for p in reversed(prompts)])


class Noisy(torch.nn.Module):
    def forward(self, x, prompts):
        return _mean(torch.nn.functional.dropout(x, 0.5, training=True))


class InPlace(torch.nn.Module):
    def forward(self, x, prompts):
        x.clamp_(-0.25, 0.25)
        return _mean(x)


class FixedSize(torch.nn.Module):
    def forward(self, x, prompts):
        return x.reshape(x.shape[0], 3, 64, 64).mean(dim=(1, 2, 3))


class PromptBlind(torch.nn.Module):
    def forward(self, x, prompts):
        return _mean(x**2)


REWARDS = {
    "cc_good": (Good, PROMPTED),
    "cc_wrong_shape": (WrongShape, SQUARE),
    "cc_detached": (Detached, SQUARE),
    "cc_log": (LogBrightness, SQUARE),
    "cc_batchnorm": (BatchNormed, SQUARE),
    "cc_misaligned": (Misaligned, PROMPTED),
    "cc_noisy": (Noisy, SQUARE),
    "cc_inplace": (InPlace, SQUARE),
    "cc_fixed_size": (FixedSize, RAW),
    "cc_prompt_blind": (PromptBlind, PROMPTED),
    "cc_good_raw": (PromptBlind, RAW),
}


class BrokenRewards:
    @r0kit.hookimpl
    def r0kit_register_rewards(self, register):
        for name, (cls, contract) in REWARDS.items():
            register(name, cls, contract=contract)


@pytest.fixture(scope="module")
def broken():
    with registered_plugin(BrokenRewards(), "cc_broken_rewards"):
        yield


@pytest.mark.parametrize(
    "name, expected",
    [
        ("cc_good", set()),
        ("cc_good_raw", set()),
        ("cc_wrong_shape", {"output_shape", "objective"}),
        ("cc_detached", {"contract", "finite_gradient"}),
        ("cc_log", {"extreme_inputs"}),
        ("cc_batchnorm", {"batch_independence"}),
        ("cc_misaligned", {"pairing", "batch_independence"}),
        ("cc_noisy", {"contract", "eval_determinism", "batch_independence", "pairing", "objective"}),
        ("cc_inplace", {"contract"}),
        ("cc_fixed_size", {"output_shape", "finite_output", "contract", "finite_gradient"}),
        ("cc_prompt_blind", {"contract"}),
    ],
)
def test_each_broken_reward_fails_exactly_its_checks(broken, name, expected):
    report = check_reward(name)
    assert set(report.failures) == expected, str(report)
    assert report.ok is (not expected)
    assert set(report.passed) | set(report.failures) | set(report.skipped) >= {
        "build", "output_shape", "finite_output", "contract", "finite_gradient",
        "eval_determinism", "extreme_inputs", "batch_independence", "pairing", "objective",
    }


def test_failure_messages_say_what_is_wrong(broken):
    f = check_reward("cc_wrong_shape").failures
    assert "returned shape (3, 1), expected [3]" in f["output_shape"]
    assert "cc_wrong_shape" in f["objective"] and "cc_broken_rewards" in f["objective"]
    assert "declare differentiable=False" in check_reward("cc_detached").failures["contract"]
    assert "all black" in check_reward("cc_log").failures["extreme_inputs"]
    assert "in place" in check_reward("cc_inplace").failures["contract"]
    assert "declare needs_prompt=False" in check_reward("cc_prompt_blind").failures["contract"]
    assert "48x80" in check_reward("cc_fixed_size").failures["output_shape"]


def test_assert_conforms_lists_every_failure(broken):
    with pytest.raises(AssertionError) as exc:
        assert_conforms("cc_fixed_size")
    msg = str(exc.value)
    for name in ("output_shape", "finite_output", "contract", "finite_gradient"):
        assert f"FAIL {name}:" in msg
    report = assert_conforms("cc_good")
    assert isinstance(report, ConformanceReport) and report.ok
    with pytest.raises(AssertionError, match="FAIL batch_independence"):
        assert_conforms(check_reward("cc_batchnorm"))


def test_terms_and_options(broken):
    assert check_reward(r0kit.reward("target_color", color="#00ff00")).ok
    assert check_reward("target_color", color=(0.2, 0.4, 0.6)).ok
    report = check_reward("target_color", colour="#00ff00")
    assert set(report.failures) == {"build"} and "did you mean 'color'" in report.failures["build"]
    with pytest.raises(TypeError, match="by name"):
        check_reward(r0kit.reward("contrast"), color=1)
    assert "build" in check_reward(r0kit.regularizer("tv")).failures
    assert "not_registered_anywhere" in check_reward("not_registered_anywhere").failures["build"]


def test_non_differentiable_reward_skips_the_gradient_check():
    contract = r0kit.RewardContract(size=16, mean=(0, 0, 0), std=(1, 1, 1), needs_prompt=False, differentiable=False)

    class Plugin:
        @r0kit.hookimpl
        def r0kit_register_rewards(self, register):
            register("cc_argmax", lambda: (lambda x, p: x.flatten(1).argmax(1).float()), contract=contract)

    with registered_plugin(Plugin(), "cc_argmax_plugin"):
        report = check_reward("cc_argmax")
    assert report.ok, str(report)
    assert "finite_gradient" in report.skipped


# -- regularizers ----------------------------------------------------------------------


class WideRegularizer:
    def __call__(self, sample, generator=None):
        return sample.images.flatten(1).mean(1, keepdim=True)


class LogRegularizer:
    def __call__(self, sample, generator=None):
        return -torch.log(sample.images.flatten(1).mean(1))


class BatchRegularizer:
    def __call__(self, sample, generator=None):
        m = sample.images.flatten(1).mean(1)
        return m.mean().expand_as(m) * 1.0  # the batch's mean, not the sample's


class ConstantRegularizer:
    def __call__(self, sample, generator=None):
        return torch.zeros(sample.batch_size)


class BrokenRegularizers:
    @r0kit.hookimpl
    def r0kit_register_regularizers(self, register):
        register("cc_wide", WideRegularizer)
        register("cc_logreg", LogRegularizer)
        register("cc_batchreg", BatchRegularizer)
        register("cc_constreg", ConstantRegularizer)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("cc_wide", {"output_shape", "batch_independence"}),
        ("cc_logreg", {"extreme_inputs"}),
        ("cc_batchreg", {"batch_independence"}),
        ("cc_constreg", {"finite_gradient"}),
    ],
)
def test_broken_regularizers(name, expected):
    with registered_plugin(BrokenRegularizers(), "cc_broken_regularizers"):
        report = check_regularizer(name)
    assert set(report.failures) == expected, str(report)


# -- generators -------------------------------------------------------------------------


class _Base:
    def __init__(self, size: int = 8):
        self.size = size

    def prepare(self, prompts, seed):
        g = torch.Generator().manual_seed(seed)
        self.z = torch.randn(len(prompts), 3, self.size, self.size, generator=g).requires_grad_(True)

    def parameters(self):
        return [self.z]

    def sample(self, prompts, generator=None):
        return r0kit.Sample(torch.sigmoid(self.z), {"param": self.z})


class Unbounded(_Base):
    def sample(self, prompts, generator=None):
        return r0kit.Sample(self.z * 3, {"param": self.z})


class Unseeded(_Base):
    def prepare(self, prompts, seed):
        self.z = torch.randn(len(prompts), 3, self.size, self.size).requires_grad_(True)


class DetachedImages(_Base):
    def sample(self, prompts, generator=None):
        return r0kit.Sample(torch.sigmoid(self.z).detach(), {"param": self.z})


class NonLeaf(_Base):
    def prepare(self, prompts, seed):
        super().prepare(prompts, seed)
        self.z = self.z * 1.0


class OneImage(_Base):
    def sample(self, prompts, generator=None):
        return r0kit.Sample(torch.sigmoid(self.z[:1]), {"param": self.z})


@pytest.mark.parametrize(
    "gen, expected",
    [
        (_Base(), set()),
        (Unbounded(), {"sample_contract"}),
        (Unseeded(), {"seed_determinism"}),
        (DetachedImages(), {"differentiable", "optimizer_step"}),
        (NonLeaf(), {"parameters", "optimizer_step"}),
        (OneImage(), {"sample_contract"}),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, set) else "",
)
def test_broken_generators(gen, expected):
    report = check_generator(gen)
    assert set(report.failures) == expected, str(report)


def test_generator_without_methods_fails_protocol():
    class Half:
        def prepare(self, prompts, seed):
            pass

    report = check_generator(Half())
    assert "protocol" in report.failures and "parameters, sample" in report.failures["protocol"]
    assert "sample_contract" in report.failures


def test_check_infers_the_kind():
    assert check("tv").kind == "regularizer"
    assert check("pixel", height=16, width=16).kind == "generator"
    assert check("contrast").kind == "reward"
    assert check(_Base()).kind == "generator"
    with pytest.raises(ValueError, match="kind"):
        check("tv", kind="sampler")
