"""Plugin loading: built-ins, the allowlist, broken plugins, duplicates, entry points."""

from __future__ import annotations

import sys
import textwrap
import types

import pytest

import r0kit
from r0kit import plugins as plugins_mod
from r0kit.errors import PluginError, R0kitWarning, UnknownNameError

BUILTIN_REWARDS = {"colorfulness", "contrast", "symmetry", "target_color"}


def test_builtins_load_as_plugins(fresh_host):
    host = fresh_host()
    assert BUILTIN_REWARDS <= set(host.rewards.entries)
    assert {"tv", "l2_init"} <= set(host.regularizers.entries)
    assert "pixel" in host.generators
    for name in ("r0kit_analytic", "r0kit_regularizers", "r0kit_pixel"):
        st = host.statuses[name]
        assert st.ok and st.source == "builtin", st
    # Built-ins are ordinary pluggy plugins, registered under their module names.
    assert host.pm.get_plugin("r0kit_analytic") is sys.modules["r0kit_analytic"]
    assert host.rewards.get("contrast").plugin == "r0kit_analytic"


def test_allowlist_loads_only_named_plugins(monkeypatch, fresh_host):
    monkeypatch.setenv("R0KIT_LOAD_PLUGINS", "r0kit_pixel")
    plugins_mod.reset_host()
    host = fresh_host()
    assert "pixel" in host.generators
    assert len(host.rewards) == 0 and len(host.regularizers) == 0
    assert host.pm.is_blocked("r0kit_analytic") and "r0kit_analytic" in host.blocked
    # a name the allowlist filters out is not a mystery
    with pytest.raises(UnknownNameError) as exc:
        r0kit.reward("contrast")
    msg = str(exc.value)
    assert "Known rewards: none." in msg and "R0KIT_LOAD_PLUGINS='r0kit_pixel' is set" in msg and "r0kit_analytic" in msg


def test_an_allowlist_name_that_matches_no_plugin_is_said(monkeypatch, fresh_host):
    monkeypatch.setenv("R0KIT_LOAD_PLUGINS", "r0kit_pixel,r0kit_analytics")
    plugins_mod.reset_host()
    with pytest.warns(R0kitWarning, match=r"'r0kit_analytics', which matches no plugin \(did you mean 'r0kit_analytic'\?\)"):
        fresh_host()


@pytest.mark.parametrize("value", ["", " ", ",", " , "])
def test_an_allowlist_that_names_no_plugin_is_said(monkeypatch, fresh_host, value):
    """An empty R0KIT_LOAD_PLUGINS loaded nothing, silently: every reward was then 'unknown'."""
    monkeypatch.setenv("R0KIT_LOAD_PLUGINS", value)
    plugins_mod.reset_host()
    with pytest.warns(R0kitWarning, match=r"names no plugin, so none loads.*unset it"):
        host = fresh_host()
    assert len(host.rewards) == 0


def test_a_plugin_disabled_by_a_name_clash_is_said_by_every_command(tmp_path, monkeypatch, fresh_host):
    _write_module(tmp_path, "r0kit_clash", """
        import r0kit

        @r0kit.hookimpl
        def r0kit_register_rewards(register):
            register("contrast", lambda: None, contract=r0kit.RewardContract())
        """)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins_mod, "DEFAULT_PLUGINS", plugins_mod.DEFAULT_PLUGINS + ("r0kit_clash",))
    plugins_mod.reset_host()
    with pytest.warns(R0kitWarning, match="plugin 'r0kit_clash' was not loaded: reward 'contrast' is registered by both"):
        fresh_host()


def _write_module(tmp_path, name, body):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))


def test_broken_plugin_is_reported_and_others_load(tmp_path, monkeypatch, fresh_host):
    _write_module(tmp_path, "r0kit_broken_on_import", "raise RuntimeError('boom at import')\n")
    _write_module(
        tmp_path,
        "r0kit_broken_on_register",
        """
        import r0kit

        @r0kit.hookimpl
        def r0kit_register_rewards(register):
            register("half_registered", lambda: None, contract=r0kit.RewardContract())
            raise ValueError("boom while registering")
        """,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(
        plugins_mod, "DEFAULT_PLUGINS", ("r0kit_broken_on_import", "r0kit_broken_on_register") + plugins_mod.DEFAULT_PLUGINS
    )
    plugins_mod.reset_host()
    with pytest.warns(R0kitWarning) as warned:
        host = fresh_host()
    said = " | ".join(str(w.message) for w in warned)
    assert "plugin 'r0kit_broken_on_import' was not loaded: import failed" in said
    assert "plugin 'r0kit_broken_on_register' was not loaded" in said and "boom while registering" in said
    bad = host.statuses["r0kit_broken_on_import"]
    assert not bad.ok and "boom at import" in bad.error
    bad = host.statuses["r0kit_broken_on_register"]
    assert not bad.ok and "boom while registering" in bad.error
    # Its partial registration was rolled back; the others loaded.
    assert "half_registered" not in host.rewards
    assert BUILTIN_REWARDS <= set(host.rewards.entries)


def test_duplicate_name_is_an_error_naming_both(fresh_host):
    host = fresh_host()

    class Dup:
        @r0kit.hookimpl
        def r0kit_register_rewards(self, register):
            register("contrast", lambda: None, contract=r0kit.RewardContract())

    assert host.add_plugin(Dup(), name="dup_plugin") is None
    err = host.statuses["dup_plugin"].error
    assert "r0kit_analytic" in err and "dup_plugin" in err and "'contrast'" in err
    assert host.rewards.get("contrast").plugin == "r0kit_analytic"


def test_registering_a_class_is_a_friendly_type_error(fresh_host):
    class NotAnInstance:
        pass

    with pytest.raises(TypeError, match=r"NotAnInstance\(\)"):
        fresh_host().add_plugin(NotAnInstance)


def test_non_callable_factory_and_missing_contract_name_the_plugin(fresh_host):
    host = fresh_host()

    class NoCall:
        @r0kit.hookimpl
        def r0kit_register_regularizers(self, register):
            register("broken", 42)

    class NoContract:
        @r0kit.hookimpl
        def r0kit_register_rewards(self, register):
            register("nocontract", lambda: None)

    host.add_plugin(NoCall(), name="nocall")
    assert "not callable" in host.statuses["nocall"].error and "nocall" in host.statuses["nocall"].error
    host.add_plugin(NoContract(), name="nocontract_plugin")
    assert "without a contract" in host.statuses["nocontract_plugin"].error


def test_unknown_hook_fails_validation(fresh_host):
    host = fresh_host()

    class Typo:
        @r0kit.hookimpl
        def r0kit_register_reward(self, register):  # missing "s"
            pass

    assert host.add_plugin(Typo(), name="typo") is None
    assert "r0kit_register_reward" in host.statuses["typo"].error


def test_remove_plugin_drops_its_entries(fresh_host):
    host = fresh_host()

    class Extra:
        @r0kit.hookimpl
        def r0kit_register_rewards(self, register):
            register("extra_reward", lambda: None, contract=r0kit.RewardContract())

    host.add_plugin(Extra(), name="extra")
    assert "extra_reward" in host.rewards
    host.remove_plugin("extra")
    assert "extra_reward" not in host.rewards and "extra" not in host.statuses


def _make_distribution(tmp_path, dist, module, body, group="r0kit", version="1.2.3"):
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(body))
    info = tmp_path / f"{dist}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{dist} = {module}\n")


ENTRY_PLUGIN = """
    import torch
    import r0kit

    @r0kit.hookimpl
    def r0kit_register_rewards(register):
        register("mean_brightness", lambda: (lambda x, prompts: x.flatten(1).mean(1)),
                 contract=r0kit.RewardContract(size=None, mean=(0, 0, 0), std=(1, 1, 1), needs_prompt=False))
"""


def test_entry_point_plugin_loads_with_autoload(tmp_path, monkeypatch, autoload):
    _make_distribution(tmp_path, "r0kit-ep-demo", "r0kit_ep_demo", ENTRY_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    host = autoload()
    st = host.statuses["r0kit-ep-demo"]
    assert st.ok and st.source == "entrypoint" and st.version == "1.2.3"
    term = r0kit.reward("mean_brightness")
    assert term.plugin == "r0kit-ep-demo"
    x = r0kit.Sample(images=__import__("torch").full((2, 3, 8, 8), 0.25))
    assert term.module(x.images, ["a", "b"]).tolist() == [0.25, 0.25]


def test_entry_points_are_skipped_without_autoload(tmp_path, monkeypatch, fresh_host):
    _make_distribution(tmp_path, "r0kit-ep-demo2", "r0kit_ep_demo2", ENTRY_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    host = fresh_host()
    assert "r0kit-ep-demo2" not in host.statuses
    assert "mean_brightness" not in host.rewards


def test_allowlist_blocks_entry_points_too(tmp_path, monkeypatch, autoload):
    _make_distribution(tmp_path, "r0kit-ep-blocked", "r0kit_ep_blocked", ENTRY_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("R0KIT_LOAD_PLUGINS", "r0kit_analytic")
    host = autoload()
    assert "r0kit-ep-blocked" not in host.statuses and host.pm.is_blocked("r0kit-ep-blocked")
    assert "contrast" in host.rewards


def test_entry_point_that_fails_to_import_is_reported(tmp_path, monkeypatch, autoload):
    _make_distribution(tmp_path, "r0kit-ep-broken", "r0kit_ep_broken", "raise ImportError('needs torchfoo')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(R0kitWarning, match="plugin 'r0kit-ep-broken' was not loaded: import of 'r0kit_ep_broken' failed"):
        host = autoload()
    st = host.statuses["r0kit-ep-broken"]
    assert not st.ok and "needs torchfoo" in st.error
    assert "contrast" in host.rewards


def test_unknown_name_lists_known_and_closest(fresh_host):
    with pytest.raises(UnknownNameError) as exc:
        r0kit.reward("colorfulnes")
    msg = str(exc.value)
    assert "did you mean 'colorfulness'" in msg and "contrast" in msg and "target_color" in msg


def test_bad_option_names_the_option(fresh_host):
    with pytest.raises(r0kit.OptionError, match=r"no option 'colour'.*did you mean 'color'"):
        r0kit.reward("target_color", colour="#ffffff")
    with pytest.raises(r0kit.OptionError, match="color"):
        r0kit.reward("target_color", color="not-a-colour")
    with pytest.raises(r0kit.OptionError, match="height"):
        r0kit.generator("pixel", height=1)


def test_plugin_error_type(fresh_host):
    host = fresh_host()
    with pytest.raises(PluginError, match="already registered"):
        host.add_plugin(types.ModuleType("r0kit_analytic"), name="r0kit_analytic")
