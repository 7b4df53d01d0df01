"""The pytest fixtures of r0kit.testing.fixtures, used as a plugin author's tests use them."""

from __future__ import annotations

import types

import pytest

import r0kit
from r0kit.plugins import get_host

RAW = r0kit.RewardContract(size=None, crop="none", mean=(0, 0, 0), std=(1, 1, 1), needs_prompt=False)


def _module(name: str, reward: str) -> types.ModuleType:
    mod = types.ModuleType(name)

    @r0kit.hookimpl
    def r0kit_register_rewards(register):
        register(reward, lambda: (lambda x, p: x.flatten(1).mean(1)), contract=RAW)

    mod.r0kit_register_rewards = r0kit_register_rewards
    return mod


FIXTURE_PLUGIN = _module("fx_plugin", "fx_mean")


def test_r0kit_plugin_registers_for_this_test(r0kit_plugin):
    assert r0kit_plugin(FIXTURE_PLUGIN) == "fx_plugin"
    assert r0kit_plugin(_module("fx_other", "fx_other_mean"), name="fx_renamed") == "fx_renamed"
    assert get_host().rewards.get("fx_mean").plugin == "fx_plugin"
    assert get_host().rewards.get("fx_other_mean").plugin == "fx_renamed"


def test_r0kit_plugin_unregistered_it_after_the_test():
    # Runs after the test above (file order): its plugins and their rewards are gone.
    host = get_host()
    assert "fx_mean" not in host.rewards and "fx_other_mean" not in host.rewards
    assert "fx_plugin" not in host.statuses and host.pm.get_plugin("fx_renamed") is None


def test_r0kit_plugin_reports_a_failed_registration(r0kit_plugin):
    class Broken:
        @r0kit.hookimpl
        def r0kit_register_rewards(self, register):
            register("fx bad name", lambda: None, contract=RAW)

    with pytest.raises(r0kit.PluginError, match="names must be Python identifiers"):
        r0kit_plugin(Broken(), "fx_broken")
    assert "fx_broken" not in get_host().statuses


def test_a_plugin_the_host_already_loaded_is_used_as_is(r0kit_plugin):
    import r0kit_analytic

    assert r0kit_plugin(r0kit_analytic) == "r0kit_analytic"
    assert get_host().statuses["r0kit_analytic"].source == "builtin"


def test_r0kit_host_is_fresh_with_the_builtins_only(r0kit_host, r0kit_plugin):
    assert r0kit_host is get_host()
    assert {s.source for s in r0kit_host.statuses.values()} == {"builtin"}
    r0kit_plugin(_module("fx_host_plugin", "fx_host_mean"))
    assert "fx_host_mean" in r0kit_host.rewards


def test_r0kit_host_gave_the_next_test_a_new_host(r0kit_host):
    assert "fx_host_mean" not in r0kit_host.rewards
