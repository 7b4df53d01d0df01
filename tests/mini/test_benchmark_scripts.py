"""The mini world's benchmark scripts: what they write where, without running them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script(name: str):
    """``benchmarks/mini/<name>.py`` as a module (registered first: its dataclasses look their module up)."""
    key = f"mini_benchmark_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / "benchmarks" / "mini" / f"{name}.py")
        sys.modules[key] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[key])
    return sys.modules[key]


def test_reward_agreement_writes_each_split_to_its_own_table():
    """``--split train`` without ``--out`` once overwrote the held-out table."""
    script = _script("reward_agreement")
    assert script.default_out("heldout") == Path("benchmarks/results/mini_reward_agreement_cpu.csv")
    assert script.default_out("train") == Path("benchmarks/results/mini_reward_agreement_cpu_train.csv")
    assert (ROOT / script.default_out("heldout")).is_file() and (ROOT / script.default_out("train")).is_file()


@pytest.mark.parametrize("name, argv, named", [
    ("reward_agreement", ["--source", "r0kit-mini@25"], "--source"),
    ("reward_agreement", ["--samples", "4", "--split", "train"], "--samples"),
    ("probe_conditioning", ["--model", "elsewhere"], "--model"),
    ("probe_conditioning", ["--seed", "4", "--samples", "8"], "--samples, --seed"),
    ("ablate", ["--steps", "150"], "--steps"),
])
def test_a_run_with_other_settings_must_name_its_out(name, argv, named, capsys):
    """Any measured option changed without ``--out`` is refused before anything loads, naming the options
    and the committed table it would have overwritten (it once wrote over it)."""
    with pytest.raises(SystemExit) as exc:
        _script(name).main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert named in err and "give --out" in err and "benchmarks/results" in err
