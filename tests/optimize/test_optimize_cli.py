"""``r0kit optimize --generator noise --model <folder>`` end to end on a tiny pipeline."""

from __future__ import annotations

import csv
import json

import pytest

from r0kit.cli import main
from r0kit.outputs import read_png_metadata

OBJECTIVE = """
[objective.rewards.colorfulness]
weight = 1.0
[objective.rewards.contrast]
weight = 1.0
[objective.regularizers.noise_norm]
weight = 0.0001
"""


@pytest.fixture
def objective_file(tmp_path):
    p = tmp_path / "objective.toml"
    p.write_text(OBJECTIVE)
    return p


def test_cli_noise_run_writes_its_files(tiny_sd, objective_file, tmp_path, capsys):
    out = tmp_path / "out"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\n# a comment\na blue ball\n")
    rc = main([
        "optimize", "--prompts-file", str(prompts), "--generator", "noise", "--model", str(tiny_sd),
        "--objective", str(objective_file), "--height", "16", "--width", "16", "--steps", "3",
        "-G", "steps=2", "-G", "device='cpu'", "--batch-size", "2", "--no-progress", "-o", str(out),
    ])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["objective_last"][0] > summary["objective_first"][0]
    for name in ("image_000.png", "image_001.png", "log.csv", "curves.png", "contact_sheet.png"):
        assert (out / name).is_file(), name
    meta = read_png_metadata(out / "image_001.png")
    assert meta["prompt"] == "a blue ball" and json.loads(meta["generator"])["name"] == "noise"
    assert "noise_norm" in json.loads(meta["values"])
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert len(rows) == 4 * 2 and {"colorfulness", "contrast", "noise_norm", "grad_norm"} <= set(rows[0])


def test_cli_uses_reno_defaults_for_the_noise_generator(tiny_sd, objective_file):
    import argparse

    from r0kit.commands.optimize import build_config

    ns = argparse.Namespace(
        prompts=["x"], config=None, preset=None, objective=objective_file, prompts_file=None, generator="noise",
        model=str(tiny_sd), steps=None, seed=None, lr=None, optimizer=None, grad_clip=None, normalize_gradients=None,
        output=None, height=16, width=16, generator_option=["scheduler='ddim'"], batch_size=None, device=None, dtype=None,
    )
    cfg = build_config(ns)
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.grad_clip, cfg.steps) == ("sgd", 5.0, 0.1, 50)
    assert cfg.generator.options["scheduler"] == "ddim" and cfg.generator.options["model"] == str(tiny_sd)


def test_cli_folder_that_is_not_a_pipeline(tmp_path, objective_file, capsys):
    rc = main([
        "optimize", "x", "--generator", "noise", "--model", str(tmp_path), "--objective", str(objective_file),
        "--no-progress", "-o", str(tmp_path / "o"),
    ])
    assert rc == 2
    assert "not a diffusers pipeline" in capsys.readouterr().err


def test_cli_unsupported_step_count(tiny_sd, tmp_path, objective_file, capsys):
    rc = main([
        "optimize", "x", "--generator", "noise", "--model", str(tiny_sd), "--objective", str(objective_file),
        "--height", "16", "--width", "16", "-G", "steps=9", "--no-progress", "-o", str(tmp_path / "o"),
    ])
    assert rc == 2
    assert "steps must be 1 to 4" in capsys.readouterr().err


def test_cli_long_prompt_warns_once_and_runs(tiny_sd, tmp_path, objective_file, capsys):
    """The truncation is said once, as r0kit: warning: (it was a log line and a warning with its source line)."""
    rc = main([
        "optimize", "a very long prompt that the tiny text encoder cannot take whole", "--generator", "noise",
        "--model", str(tiny_sd), "--objective", str(objective_file), "--height", "16", "--width", "16",
        "--steps", "1", "-G", "device='cpu'", "--no-progress", "-o", str(tmp_path / "o"),
    ])
    assert rc == 0 and (tmp_path / "o" / "image.png").is_file()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "prompt truncated" in line]
    assert len(lines) == 1 and lines[0].startswith("r0kit: warning: prompt truncated"), err
