"""Config models and TOML files: errors name the key, the value and what is allowed."""

from __future__ import annotations

import pytest

from r0kit.config import load_objective, load_run, parse_run, read_prompts
from r0kit.errors import ConfigError, OptionError, UnknownNameError

BASE = """
prompts = ["a"]
[objective.rewards.contrast]
"""


def _write(tmp_path, text, name="run.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_valid_run_config(tmp_path):
    cfg = load_run(_write(tmp_path, BASE + "weight = 2\n"))
    assert cfg.objective.rewards["contrast"].weight == 2.0
    assert cfg.steps == 50 and cfg.generator.name == "pixel"


@pytest.mark.parametrize(
    "text, needles",
    [
        (BASE + "weight = 'heavy'\n", ["objective.rewards.contrast.weight", "'heavy'"]),
        ("stpes = 3\n" + BASE, ["'stpes'", "did you mean 'steps'"]),
        ("steps = 0\n" + BASE, ["steps", "greater than or equal to 1", "0"]),
        (BASE + "[optimizer]\nname = 'lbfgs'\n", ["optimizer.name", "'adam' or 'sgd'", "'lbfgs'"]),
        (BASE + "[optimizer]\nlr = -1\n", ["optimizer.lr", "greater than 0"]),
        ('prompts = ["a"]\n[objective]\nnormalize_gradients = true\n', ["objective", "at least one"]),
        (BASE + "[objective.extra]\n", ["'objective.extra'", "allowed keys here"]),
        ('prompts = [""]\n' + BASE.split("\n", 2)[2], ["prompts", "empty"]),
        (BASE + "weight = inf\n", ["weight", "finite"]),
    ],
)
def test_errors_name_the_key(tmp_path, text, needles):
    with pytest.raises(ConfigError) as exc:
        load_run(_write(tmp_path, text))
    msg = str(exc.value)
    for n in needles:
        assert n in msg, msg


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_run(_write(tmp_path, "steps = = 3"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_run(tmp_path / "nope.toml")


def test_objective_unknown_reward_and_option(tmp_path):
    with pytest.raises(UnknownNameError, match="contrast"):
        load_objective(_write(tmp_path, "[objective.rewards.contrst]\n"))
    with pytest.raises(OptionError, match="no option 'colour'"):
        load_objective(_write(tmp_path, "[objective.rewards.target_color]\ncolour = '#000000'\n"))
    with pytest.raises(ConfigError, match="no \\[objective\\] table"):
        load_objective(_write(tmp_path, "steps = 3\n"))


def test_label_with_explicit_name(tmp_path):
    obj = load_objective(
        _write(tmp_path, "[objective.rewards.warm]\nname='target_color'\ncolor='#ff0000'\n[objective.rewards.cool]\nname='target_color'\ncolor='#0000ff'\n")
    )
    assert [t.label for t in obj.terms] == ["warm", "cool"] and {t.name for t in obj.terms} == {"target_color"}


def test_read_prompts(tmp_path):
    assert read_prompts(_write(tmp_path, "# c\na cat\n\n a dog \n", "p.txt")) == ["a cat", "a dog"]
    assert read_prompts(_write(tmp_path, '{"prompt": "x"}\n{"prompt": "y"}\n', "p.jsonl")) == ["x", "y"]
    with pytest.raises(ConfigError, match="holds no prompts"):
        read_prompts(_write(tmp_path, "\n# only a comment\n", "empty.txt"))
    with pytest.raises(ConfigError, match="line 1"):
        read_prompts(_write(tmp_path, '{"text": "x"}\n', "bad.jsonl"))
    # a JSONL prompt that is not a non-empty string was read as "None", "5" or "" and optimized or scored
    for line, got in (('{"prompt": null}', "prompt null"), ('{"prompt": 5}', "prompt 5"), ('{"prompt": " "}', "an empty or blank prompt"),
                      ('"just a string"', 'no "prompt" key'), ("[1, 2]", 'no "prompt" key'), ("{broken", 'no "prompt" key')):
        with pytest.raises(ConfigError, match=f'line 2: expected a JSON object with a non-empty string "prompt", got {got}'):
            read_prompts(_write(tmp_path, '{"prompt": "ok"}\n' + line + "\n", "bad.jsonl"))
    with pytest.raises(ConfigError, match="does not exist"):
        read_prompts(tmp_path / "missing.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(ConfigError, match="cannot be read"):
        read_prompts(tmp_path / "bin.txt")


def test_parse_run_from_dict():
    cfg = parse_run({"prompts": ["x"], "objective": {"rewards": {"contrast": {}}}, "generator": {"name": "pixel", "height": 8}})
    assert cfg.generator.options == {"height": 8}


OBJECTIVE = {"rewards": {"contrast": {}}}
TRAIN = {"prompts": ["x"], "generator": {"model": "m"}, "objective": OBJECTIVE}


@pytest.mark.parametrize(
    "change, key",
    [
        ({"steps": "1"}, "steps"),
        ({"steps": 2.0}, "steps"),
        ({"seed": True}, "seed"),
        ({"optimizer": {"lr": "1e-3"}}, "lr"),
        ({"objective": {"rewards": {"contrast": {"weight": True}}}}, "weight"),
        ({"objective": {"rewards": {"contrast": {"weight": "1"}}}}, "weight"),
        ({"objective": {"rewards": {"contrast": {}}, "normalize_gradients": "yes"}}, "normalize_gradients"),
    ],
)
def test_a_run_config_takes_values_as_written_not_coerced(change, key):
    """`steps = "1"` or `weight = true` in a TOML is an error naming the key, not 1 or 1.0."""
    with pytest.raises(ConfigError, match=key):
        parse_run({"prompts": ["x"], "objective": OBJECTIVE, **change})


@pytest.mark.parametrize(
    "change, key",
    [
        ({"steps": "1"}, "steps"),
        ({"batch_size": 1.5}, "batch_size"),
        ({"generator": {"model": "m", "steps": "4"}}, "steps"),
        ({"generator": {"model": "m", "lora_rank": True}}, "lora_rank"),
        ({"generator": {"model": "m", "eta": [True, 1]}}, "eta"),
        ({"generator": {"model": "m", "eta": "0.5"}}, "eta"),
        ({"optimizer": {"betas": ["0.9", 0.99]}}, "betas"),
        ({"ema": {"enabled": 1}}, "enabled"),
        ({"evaluate": {"prompts": ["y"], "seeds": "2"}}, "seeds"),
    ],
)
def test_a_train_config_takes_values_as_written_not_coerced(change, key):
    from r0kit.train import parse_train

    with pytest.raises(ConfigError, match=key):
        parse_train({**TRAIN, **change})


def test_strict_values_still_take_ints_for_floats_lists_for_pairs_and_strings_for_paths():
    from pathlib import Path

    from r0kit.train import parse_train

    cfg = parse_train({**TRAIN, "output": "out", "prompts_file": "p.txt", "optimizer": {"lr": 1, "betas": [0, 0.5]},
                       "generator": {"model": "m", "eta": [0, 1]}, "objective": {"rewards": {"contrast": {"weight": 2}}}})
    assert cfg.output == Path("out") and cfg.prompts_file == Path("p.txt")
    assert cfg.optimizer.lr == 1.0 and cfg.optimizer.betas == (0.0, 0.5)
    assert cfg.generator.eta == (0.0, 1.0) and cfg.objective.rewards["contrast"].weight == 2.0
    run = parse_run({"prompts": ["x"], "objective": OBJECTIVE, "output": "o", "prompts_file": "q.txt"})
    assert run.output == Path("o") and run.prompts_file == Path("q.txt")


def test_check_objective_finds_an_option_typo_without_building_a_term_and_names_its_flag():
    from r0kit.config import check_objective, parse_objective

    cfg = parse_objective({"rewards": {"target_color": {"colr": "#ff0000"}, "colorfulness": {}}})
    with pytest.raises(OptionError, match=r"x.toml: \[objective.rewards.target_color\].*'colr'.*--reward-option target_color.colr"):
        check_objective(cfg, "x.toml", {"objective.rewards.target_color.colr": "--reward-option target_color.colr"})
    with pytest.raises(UnknownNameError, match=r"\[objective.rewards.nope\]"):
        check_objective(parse_objective({"rewards": {"nope": {}}}))
    check_objective(parse_objective({"rewards": {"target_color": {"color": "#ff0000"}}, "regularizers": {"tv": {}}}))


@pytest.mark.parametrize("dynamo_patched", [False, True])
def test_a_module_reward_without_an_init_of_its_own_takes_no_options(dynamo_patched, monkeypatch):
    """torch.nn.Module's inherited __init__(*args, **kwargs) hid that colorfulness takes no option: a typo
    passed the option check and failed only when the reward was built. Once torch.compile has run, dynamo
    replaces Module.__init__ by a wrapper of its own name (torch._dynamo.mutation_guard), which a check by
    name missed."""
    import torch

    from r0kit.plugins import get_host

    if dynamo_patched:
        init = torch.nn.Module.__init__

        def patched_init(self, *args, **kwargs):  # as install_generation_tagging_init does
            init(self, *args, **kwargs)

        monkeypatch.setattr(torch.nn.Module, "__init__", patched_init)

    entry = get_host().rewards.get("colorfulness")
    assert entry.accepted_options() == []
    with pytest.raises(OptionError, match="has no option 'nope'; it accepts: no options"):
        entry.check_options({"nope": 1})
