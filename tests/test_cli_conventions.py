"""One command-line convention for every command, checked by walking every subcommand's parser."""

from __future__ import annotations

import argparse
import re

import pytest

from r0kit.cli import build_parser
from r0kit.commands._common import SHORT_FLAGS, key_values
from r0kit.commands.optimize import preset_names

#: Commands that write files, and so follow the output rule.
WRITERS = {"optimize", "score", "evaluate", "train", "new-plugin"}
#: Commands that load models, and so take a --device checked before they load one.
LOADERS = {"optimize", "evaluate"}


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    return dict(sub.choices)


COMMANDS = _commands()


def _options(p: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in p._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]  # noqa: SLF001


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_follows_the_conventions(name):
    p = COMMANDS[name]
    assert p.description, f"{name} has no description"
    flags = {s: a for a in _options(p) for s in a.option_strings}
    for action in _options(p):
        longs = [s for s in action.option_strings if s.startswith("--")]
        shorts = [s for s in action.option_strings if not s.startswith("--")]
        assert len(longs) == 1, f"{name}: {action.option_strings} should have exactly one long name (no aliases)"
        assert "_" not in longs[0], f"{name}: {longs[0]} uses '_'; flags use '-'"
        assert action.help, f"{name}: {longs[0]} has no help"
        for short in shorts:
            assert SHORT_FLAGS.get(short) == longs[0], f"{name}: {short} means {longs[0]}, elsewhere {SHORT_FLAGS.get(short)}"
        if action.metavar and "=" in str(action.metavar):  # KEY=VALUE options: one name and one TOML parser
            assert longs[0] in ("--generator-option", "--reward-option", "--metric-option"), f"{name}: {longs[0]} takes KEY=VALUE"
    if name in WRITERS:
        assert "--output" in flags and "-o" in flags and "--overwrite" in flags, f"{name} writes files: --output/-o, --overwrite"
    if name in LOADERS:
        assert "--device" in flags, f"{name} loads models: --device"
    for flag in flags:
        if "prompts" in flag:
            assert flag == "--prompts-file", f"{name}: prompts come from --prompts-file, not {flag}"


def test_shared_flags_mean_the_same_everywhere():
    seen: dict[str, tuple[str, object]] = {}
    for name, p in COMMANDS.items():
        for action in _options(p):
            long = next(s for s in action.option_strings if s.startswith("--"))
            kind = (type(action).__name__, action.nargs)
            if long in seen and long not in ("--steps",):  # --steps: optimizer steps or sampling steps, both ints
                assert seen[long][1] == kind, f"{long}: {name} and {seen[long][0]} parse it differently"
            seen.setdefault(long, (name, kind))


def test_key_value_options_are_toml_in_every_command():
    assert key_values(["steps=2", "scheduler='ddim'", "bare=word", "flag=true", "x=[1, 2]"], "-G") == {
        "steps": 2, "scheduler": "ddim", "bare": "word", "flag": True, "x": [1, 2]}
    assert key_values(["hpsv2.version='2.0'", "clip.device=cpu"], "-R", dotted=True) == {
        "hpsv2": {"version": "2.0"}, "clip": {"device": "cpu"}}


def test_help_names_only_presets_that_exist():
    names = set(preset_names())
    assert "train_tiny" in names
    for name, p in COMMANDS.items():
        for word in re.findall(r"\b(?:train_\w+|demo|reno)\b", p.format_help()):
            assert word in names, f"{name} --help names the preset {word!r}, which does not exist"


def test_the_objective_prints_regularizers_subtracted():
    import r0kit

    obj = r0kit.reward("contrast") - 0.1 * r0kit.regularizer("tv") + 2 * r0kit.reward("colorfulness")
    assert repr(obj) == "Objective(1*reward('contrast') - 0.1*regularizer('tv') + 2*reward('colorfulness'))"
