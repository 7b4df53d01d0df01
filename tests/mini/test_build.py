"""The build command is reproducible: the same seed writes byte-identical model files."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("open_clip")


@pytest.mark.slow
def test_quick_build_twice_writes_identical_files(tmp_path):
    from r0kit.mini.build import STAGES, Settings, build

    for name in ("a", "b"):
        times = build(tmp_path / name / "models", Settings.quick(threads=1), STAGES)
        assert set(times) >= set(STAGES)
    a = json.loads((tmp_path / "a" / "models" / "checksums.json").read_text())
    b = json.loads((tmp_path / "b" / "models" / "checksums.json").read_text())
    assert a == b and len(a) >= 20
    assert {k.split("/")[0] for k in a} == {"pipeline", "clip", "hps", "aesthetic", "judge"}
    # a different seed gives different weights
    build(tmp_path / "c" / "models", Settings.quick(threads=1, seed=1), STAGES)
    c = json.loads((tmp_path / "c" / "models" / "checksums.json").read_text())
    assert c["pipeline/unet/diffusion_pytorch_model.safetensors"] != a["pipeline/unet/diffusion_pytorch_model.safetensors"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--quick"], "--out is needed with --quick"),
        (["--stages", "unet"], "--out is needed with --quick, --set, --seed or --stages"),
        (["--set", "clip_steps", "--out", "x"], "expected KEY=VALUE with KEY one of images, clip_steps"),
        (["--set", "clip_steps=abc", "--out", "x"], "clip_steps takes a JSON int, like 700"),
        (["--set", "unet_channels=[1,\"a\"]", "--out", "x"], "unet_channels takes a JSON list of ints, like [32, 64, 128]"),
        (["--set", "seed=3", "--out", "x"], "expected KEY=VALUE"),
        (["--set", "snr_gamma=\"x\"", "--out", "x"], "snr_gamma takes a JSON float or null, like 5.0"),
        (["--set", "snr_gamma=0", "--out", "x"], "snr_gamma must be > 0 or null (no weighting), got 0.0"),
        (["--set", "text_layers=-1", "--out", "x"], "text_layers must be in [0, 3] (0: the text tower's embeddings only; 3: the whole tower), got -1"),
        (["--set", "text_layers=4", "--out", "x"], "text_layers must be in [0, 3]"),
        (["--set", "text_layers=1.5", "--out", "x"], "text_layers takes a JSON int, like 0"),
        (["--set", "unet_steps=true", "--out", "x"], "unet_steps takes a JSON int, like 2000"),
        (["--set", "unet_steps=Infinity", "--out", "x"], "unet_steps takes a JSON int, like 2000"),
        (["--seed", "-1", "--out", "x"], "seed must be >= 0, got -1"),
        (["--threads", "0", "--out", "x"], "threads must be >= 1, got 0"),
        (["--stages", "unet", "--out", "/nonexistent-r0kit-dir"], "stage unet needs /nonexistent-r0kit-dir/clip (from stage clip; add it to --stages before unet)"),
        (["--set", "ema_decay=1", "--out", "x"], "ema_decay must be in [0, 1), got 1.0"),
        (["--set", "unet_steps=0", "--out", "x"], "unet_steps must be >= 1, got 0"),
    ],
)
def test_build_refuses_bad_options_before_any_work_and_never_overwrites_the_shipped_models_by_default(argv, message, capsys, monkeypatch):
    import r0kit.mini.build as B

    monkeypatch.setattr(B, "build", lambda *a, **k: pytest.fail("the build ran"))
    with pytest.raises(SystemExit) as exc:
        B.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "Traceback" not in err


def test_mini_command_line_help_and_unknown_commands(capsys):
    from r0kit.mini.__main__ import main

    assert main(["--help"]) == 0 and "build" in capsys.readouterr().out
    assert main(["bogus"]) == 2 and "unknown command 'bogus'; the commands are build" in capsys.readouterr().err
    assert main([]) == 2 and "no command given" in capsys.readouterr().err


def test_the_pipeline_text_encoder_is_the_world_clip_tower_cut_to_its_first_layers(tmp_path):
    """``Settings.text_layers`` (0: token and position embeddings, final layer norm) is what ships, and
    the cut tower gives the same states as the whole tower's ``hidden_states[layers]`` through its final norm."""
    import shutil

    import torch
    from transformers import CLIPTextModel, CLIPTokenizer

    import r0kit.mini.build as B

    shutil.copytree(B.MODELS / "clip", tmp_path / "clip")
    shutil.copytree(B.MODELS / "pipeline" / "tokenizer", tmp_path / "tokenizer")
    tok = CLIPTokenizer.from_pretrained(str(tmp_path / "tokenizer"))
    ids = tok(["a red circle on the left", "two blue squares"], padding="max_length", max_length=tok.model_max_length,
              return_tensors="pt").input_ids
    whole = CLIPTextModel.from_pretrained(str(B.build_text_encoder(tmp_path, None))).eval()
    layers = whole.config.num_hidden_layers
    assert layers == 3
    tower = getattr(whole, "text_model", whole)
    with torch.no_grad():
        states = whole(ids, output_hidden_states=True).hidden_states
        for keep in (0, 1):
            cut = CLIPTextModel.from_pretrained(str(B.build_text_encoder(tmp_path, keep))).eval()
            assert cut.config.num_hidden_layers == keep
            torch.testing.assert_close(cut(ids).last_hidden_state, tower.final_layer_norm(states[keep]))
    with pytest.raises(ValueError, match=r"text encoder layers must be in \[0, 3\], got 4"):
        B.build_text_encoder(tmp_path, layers + 1)
    shipped = CLIPTextModel.from_pretrained(str(B.MODELS / "pipeline" / "text_encoder"))
    assert shipped.config.num_hidden_layers == B.Settings().text_layers == 0


def test_build_refuses_a_file_as_out_and_the_shipped_folder_for_anything_but_a_full_default_build(tmp_path, capsys, monkeypatch):
    import r0kit.mini.build as B

    monkeypatch.setattr(B, "build", lambda *a, **k: pytest.fail("the build ran"))
    afile = tmp_path / "afile"
    afile.write_text("x")
    for argv, message in (
        (["--quick", "--out", str(afile)], "is a file; give a folder"),
        (["--quick", "--out", str(B.MODELS)], "is the shipped models' folder"),
        (["--stages", "pipeline", "--out", str(tmp_path)], "stage pipeline needs"),
    ):
        with pytest.raises(SystemExit) as exc:
            B.main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and "Traceback" not in err, err


def test_build_api_names_what_is_wrong_before_any_work(tmp_path):
    from r0kit.mini.build import Settings, build

    with pytest.raises(ValueError, match=r"text_layers must be in \[0, 3\]"):
        build(tmp_path, Settings.quick(text_layers=-2), ["vae"])
    with pytest.raises(ValueError, match="text_layers must be a number"):
        build(tmp_path, Settings.quick(text_layers=None), ["vae"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"use \['prompts'\]"):
        build(tmp_path, Settings.quick(), "prompts")
    with pytest.raises(ValueError, match="stage hps needs"):
        build(tmp_path, Settings.quick(), ["hps"])
    assert not any(tmp_path.iterdir())
