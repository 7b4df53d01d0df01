"""``r0kit plugins`` and ``--verbose``: contracts, versions, and failed plugins with their reason."""

from __future__ import annotations

import types

import r0kit
from r0kit.cli import main
from r0kit.testing import registered_plugin


def _plugin_module(name: str, version: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__version__ = version
    contract = r0kit.RewardContract(size=336, resize="bicubic", mean=(0.5, 0.25, 0.125), std=(0.2, 0.3, 0.4), needs_prompt=True)

    @r0kit.hookimpl
    def r0kit_register_rewards(register):
        register("cv_scored", lambda scale=1.0: (lambda x, p: x.mean((1, 2, 3)) * scale), contract=contract, description="a test reward")

    mod.r0kit_register_rewards = r0kit_register_rewards
    return mod


def test_verbose_shows_contract_version_and_options(capsys):
    with registered_plugin(_plugin_module("cv_plugin", "3.1.4")):
        assert main(["plugins", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "  cv_plugin 3.1.4 (runtime): ok, registered 1 reward" in out
    rest = out.split("  cv_scored  (plugin cv_plugin 3.1.4)\n", 1)[1].splitlines()
    block = "\n".join(line for line in rest[: next(i for i, s in enumerate(rest) if not s.startswith("      "))])
    assert "a test reward" in block
    assert "input: 336x336, bicubic resize, antialiased, center crop" in block
    assert "mean: (0.5, 0.25, 0.125)  std: (0.2, 0.3, 0.4)" in block
    assert "needs prompt: yes  differentiable: yes" in block
    assert "options: scale" in block
    # every built-in reward has its contract listed
    for name in ("colorfulness", "contrast", "symmetry", "target_color"):
        assert f"  {name}  (plugin r0kit_analytic " in out
    assert out.count("input: ") >= 5


def test_failed_plugins_are_listed_with_their_reason(capsys):
    from r0kit.plugins import get_host

    host = get_host()
    broken = types.ModuleType("cv_broken")

    @r0kit.hookimpl
    def r0kit_register_rewards(register):
        raise RuntimeError("the weights folder is missing\nsecond line of the reason")

    broken.r0kit_register_rewards = r0kit_register_rewards
    assert host.add_plugin(broken, name="cv_broken", version="0.9") is None
    try:
        assert main(["plugins", "--verbose"]) == 0
        verbose = capsys.readouterr().out
        assert main(["plugins"]) == 0
        short = capsys.readouterr().out
    finally:
        host.remove_plugin("cv_broken")
    assert "  cv_broken 0.9 (runtime): FAILED to load" in verbose
    assert "the weights folder is missing" in verbose and "second line of the reason" in verbose
    assert "cv_broken" in short and "failed" in short and "--verbose" in short
    assert "second line" not in short


def test_plain_listing_shows_plugins_and_versions(capsys):
    with registered_plugin(_plugin_module("cv_plugin2", "2.7.1")):
        assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "cv_scored" in out and "cv_plugin2" in out and "2.7.1" in out
