"""benchmarks/mini/text_states_trial.py runs end to end on a few steps, with either kind of text state."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "mini" / "text_states_trial.py"


@pytest.mark.slow
@pytest.mark.parametrize("states", ["last", "embed"])
def test_the_trial_trains_samples_and_reports_where_objects_land(states, capsys):
    spec = importlib.util.spec_from_file_location("text_states_trial", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--states", states, "--steps", "2", "--images", "300", "--batch", "4", "--samples", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert f"states={states}, 2 steps" in out
    for where in mod.POSITIONS:
        assert where in out
    assert "judge on training-split prompts: object" in out and "correct" in out
