"""The mini world's benchmark scripts: what they write where, without running them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "mini" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reward_agreement_writes_each_split_to_its_own_table():
    """``--split train`` without ``--out`` once overwrote the held-out table."""
    script = _script("reward_agreement")
    assert script.default_out("heldout") == Path("benchmarks/results/mini_reward_agreement_cpu.csv")
    assert script.default_out("train") == Path("benchmarks/results/mini_reward_agreement_cpu_train.csv")
    assert (ROOT / script.default_out("heldout")).is_file() and (ROOT / script.default_out("train")).is_file()
