"""A broken plugin gets an error naming the plugin and what is wrong, at registration or first call."""

from __future__ import annotations

import pytest
import torch

import r0kit
from r0kit.plugins import PluginHost
from r0kit.testing import registered_plugin

RAW = r0kit.RewardContract(size=None, crop="none", mean=(0, 0, 0), std=(1, 1, 1), needs_prompt=False)


class NonCallableFactory:
    @r0kit.hookimpl
    def r0kit_register_rewards(self, register):
        register("bad_factory", {"not": "callable"}, contract=RAW)


def test_non_callable_factory_is_refused_at_registration_naming_the_plugin():
    host = PluginHost()
    assert host.add_plugin(NonCallableFactory(), name="bi_noncallable") is None
    error = host.statuses["bi_noncallable"].error
    assert "bi_noncallable" in error and "bad_factory" in error and "not callable" in error
    assert "bad_factory" not in host.rewards
    with pytest.raises(r0kit.PluginError, match=r"'bi_noncallable'.*not callable"):
        with registered_plugin(NonCallableFactory(), "bi_noncallable", host=PluginHost()):
            pass


def test_failed_registration_leaves_the_host_as_it_was():
    host = PluginHost()
    with pytest.raises(r0kit.PluginError):
        with registered_plugin(NonCallableFactory(), "bi_noncallable", host=host):
            pass
    assert "bi_noncallable" not in host.statuses and host.pm.get_plugin("bi_noncallable") is None


class WrongShape(torch.nn.Module):
    def forward(self, x, prompts):
        return x.mean(dim=(2, 3))  # [B, 3], not [B]


class FactoryReturnsNone:
    @r0kit.hookimpl
    def r0kit_register_rewards(self, register):
        register("bi_wrong_shape", WrongShape, contract=RAW)
        register("bi_returns_none", lambda: None, contract=RAW)

    @r0kit.hookimpl
    def r0kit_register_generators(self, register):
        register("bi_not_a_generator", lambda: object())


def test_wrong_output_shape_is_reported_at_first_call_naming_reward_and_plugin():
    with registered_plugin(FactoryReturnsNone(), "bi_plugin"):
        objective = r0kit.Objective([r0kit.reward("bi_wrong_shape")])
        with pytest.raises(r0kit.InputError) as exc:
            objective.evaluate(r0kit.Sample(torch.rand(2, 3, 8, 8)), ["a", "b"])
    msg = str(exc.value)
    assert "bi_wrong_shape" in msg and "bi_plugin" in msg and "(2, 3)" in msg and "[2]" in msg


def test_factory_returning_an_unusable_object_is_refused_when_built():
    with registered_plugin(FactoryReturnsNone(), "bi_plugin"):
        with pytest.raises(r0kit.PluginError, match=r"plugin 'bi_plugin'.*reward 'bi_returns_none'.*NoneType.*not callable"):
            r0kit.reward("bi_returns_none")
        with pytest.raises(r0kit.PluginError, match=r"generator 'bi_not_a_generator'.*no prepare, parameters, sample methods"):
            r0kit.generator("bi_not_a_generator")


def test_registering_a_class_is_a_friendly_type_error():
    with pytest.raises(TypeError, match=r"register an instance \(NonCallableFactory\(\)\)"):
        with registered_plugin(NonCallableFactory):
            pass


def test_a_reward_without_a_contract_names_the_plugin():
    class NoContract:
        @r0kit.hookimpl
        def r0kit_register_rewards(self, register):
            register("bi_no_contract", WrongShape, contract=None)

    with pytest.raises(r0kit.PluginError, match=r"'bi_no_contract_plugin'.*without a contract"):
        with registered_plugin(NoContract(), "bi_no_contract_plugin", host=PluginHost()):
            pass
