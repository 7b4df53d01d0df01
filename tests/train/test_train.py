"""The R0 training loop: reward goes up, exact resume, checkpoints, logs, export, bad input."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

import r0kit
from r0kit.train import TrainConfig, load_train_config, train

from .conftest import SIZE, train_config


def _weights(folder):
    return load_file(str(folder / "trainable.safetensors"))


def _eval_reward(gen, prompts):
    gen.eval()
    with torch.no_grad():
        imgs = gen.sample(prompts, noise=gen.noise_for_seeds(range(len(prompts)))).images
    gen.train(True)
    return float(r0kit.reward("colorfulness").module(imgs, prompts).mean())


def test_a_few_steps_raise_the_training_reward(tiny_sd, tmp_path):
    from r0kit_r0 import KStepGenerator

    # full fine-tuning: the tiny UNet's attention layers (LoRA's targets) carry little of its output
    cfg = train_config(tiny_sd, tmp_path / "run", steps=6, optimizer={"lr": 1e-3}, sample_every=3,
                       generator={"train": "full"}, ema={"enabled": True, "decay": 0.5},
                       objective={"normalize_gradients": True, "rewards": {"colorfulness": {"weight": 1.0}}, "regularizers": {}})
    gen = KStepGenerator(**{**cfg.generator.options()})
    prompts = list(cfg.prompts)
    before = _eval_reward(gen, prompts)
    res = train(cfg, generator=gen)
    after = _eval_reward(gen, prompts)
    assert res.step == 6 and not res.interrupted
    assert after > before + 0.01, (before, after)
    # logs: one CSV row per step with the loss, every reward and regularizer
    rows = list(csv.DictReader(open(tmp_path / "run" / "logs" / "train" / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    assert {"loss", "colorfulness", "grad_norm", "lr"} <= set(rows[0])
    assert (tmp_path / "run" / "samples" / "step-0000003.png").is_file()
    assert (tmp_path / "run" / "samples" / "final.png").is_file()
    assert (tmp_path / "run" / "export" / "model_index.json").is_file()  # a full pipeline


def test_resume_is_exact_through_ctrl_c_and_max_steps(tiny_sd, tmp_path):
    over = dict(steps=4, grad_accum=2, ema={"enabled": True, "decay": 0.9}, export=False)
    straight = train(train_config(tiny_sd, tmp_path / "a", **over))

    cfg_b = train_config(tiny_sd, tmp_path / "b", **over)

    def interrupt(step, values):
        if step == 2:
            raise KeyboardInterrupt

    first = train(cfg_b, callback=interrupt)
    assert first.interrupted and first.step == 2
    assert (tmp_path / "b" / "checkpoints" / "step-0000002" / "state.json").is_file()
    # the manifest claims every output the run may write, so --overwrite after a kill replaces them all
    from r0kit.train import TRAIN_OUTPUTS

    manifest = json.loads((tmp_path / "b" / "r0kit-run.json").read_text())
    assert set(TRAIN_OUTPUTS) <= set(manifest["files"]) and manifest["command"] == "train" and "argv" in manifest
    second = train(cfg_b, resume="latest", max_steps=3)
    assert second.step == 3
    third = train(cfg_b, resume="latest")
    assert third.step == 4

    a, b = straight.checkpoint, third.checkpoint
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    for name in ("optimizer.safetensors", "ema.safetensors", "rng.safetensors"):
        ta, tb = load_file(str(a / name)), load_file(str(b / name))
        assert ta.keys() == tb.keys()
        assert all(torch.equal(ta[k], tb[k]) for k in ta), name
    # the weights did move, so equality is not trivial
    start = train_config(tiny_sd, tmp_path / "c", **{**over, "steps": 1})
    w1 = _weights(train(start).checkpoint)
    assert any(not torch.equal(w1[k], wa[k]) for k in wa)
    # the log of the resumed run has each step once
    rows = list(csv.DictReader(open(tmp_path / "b" / "logs" / "train" / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state: a run with another mixed_precision needs it reset, before and after."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_resume_is_exact_with_bf16_autocast_and_sample_grids(tiny_sd, tmp_path, fresh_accelerate_state):
    """Sample grids encode prompts outside autocast between bf16 steps; a resumed run must not see the difference."""
    over = dict(steps=4, mixed_precision="bf16", sample_every=1, export=False,
                sample_prompts=["a blue car", "a white cat", "a black dog"])
    straight = train(train_config(tiny_sd, tmp_path / "a", **over))
    cfg_b = train_config(tiny_sd, tmp_path / "b", **over)
    train(cfg_b, max_steps=2)
    resumed = train(cfg_b, resume="latest")
    assert resumed.step == 4
    wa, wb = _weights(straight.checkpoint), _weights(resumed.checkpoint)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    for name in ("step-0000003.png", "step-0000004.png"):
        assert (tmp_path / "a" / "samples" / name).read_bytes() == (tmp_path / "b" / "samples" / name).read_bytes()


#: The mini demo's rewards on their shipped weights (offline): text-conditioned rewards, each with a prompt cache.
MINI_REWARDS = {
    "hpsv2": {"model": "r0kit-mini-clip", "checkpoint": "r0kit-mini-hps"},
    "clip": {"model": "r0kit-mini-clip"},
    "aesthetic": {"clip_model": "r0kit-mini-aesthetic", "checkpoint": "r0kit-mini-aesthetic"},
}


def test_resume_is_exact_with_the_demo_recipe_and_repeated_prompts(tiny_sd, tmp_path):
    """The mini demo's recipe (random eta, three normalized reward gradients, weight_l2, warmup, grad clip) on the
    tiny model, stopped at step 3 (inside the warmup) and resumed to step 10: every logged value of every step, the
    final weights, optimizer state and RNG state are bit-identical to one uninterrupted run.

    The prompts repeat, as the demo's do. The uninterrupted run serves a repeated prompt's text features from the
    rewards' caches, filled steps earlier; the resumed run starts with empty caches and encodes it again. When the
    caches encoded the missing prompts in one batch, a prompt's features depended in their last bits on which
    prompts were missing with it, and the resumed run drifted from step 5 on (the demo from step 51 of 200). The
    other resume tests train on weight-free rewards, which read no prompt.
    """
    from r0kit.train import batch_prompts

    stop, steps, batch = 3, 10, 3
    prompts = ["a red circle", "two squares", "a blue square", "a red circle", "three circles", "two squares",
               "a cyan square"]
    over = dict(prompts=prompts, steps=steps, batch_size=batch, export=False,
                generator={"eta": [0.0, 1.0]}, optimizer={"lr": 1e-2, "warmup_steps": 5, "grad_clip": 1.0},
                objective={"normalize_gradients": True, "rewards": MINI_REWARDS,
                           "regularizers": {"weight_l2": {"weight": 1e-3}}})
    # the case at issue: a step after the resume has a prompt the steps before it had
    seen = {p for s in range(stop) for p in batch_prompts(prompts, 3, s, 0, batch, 0, 1, 1)}
    assert seen & set(batch_prompts(prompts, 3, stop, 0, batch, 0, 1, 1))

    straight = train(train_config(tiny_sd, tmp_path / "a", **over))
    cfg_b = train_config(tiny_sd, tmp_path / "b", **over)
    first = train(cfg_b, max_steps=stop)
    resumed = train(cfg_b, resume="latest")
    assert first.step == stop and resumed.step == steps
    logged = first.history + resumed.history
    assert [h["step"] for h in logged] == [h["step"] for h in straight.history] == list(range(1, steps + 1))
    for want, got in zip(straight.history, logged):
        assert got == want, (want["step"], {k: (want[k], got[k]) for k in want if got[k] != want[k]})
    for name in ("trainable.safetensors", "optimizer.safetensors", "rng.safetensors"):
        ta, tb = load_file(str(straight.checkpoint / name)), load_file(str(resumed.checkpoint / name))
        assert ta.keys() == tb.keys()
        assert [k for k in ta if not torch.equal(ta[k], tb[k])] == [], name
    # the weights moved after the resume, so equality is not trivial
    w_stop, w_end = _weights(first.checkpoint), _weights(resumed.checkpoint)
    assert any(not torch.equal(w_stop[k], w_end[k]) for k in w_end)


def test_resume_from_another_model_or_config_says_what_differs(tiny_sd, tiny_sd_other, tmp_path):
    train(train_config(tiny_sd, tmp_path / "run", steps=1, export=False))
    with pytest.raises(r0kit.ConfigError, match=r"generator\.model"):
        train(train_config(tiny_sd_other, tmp_path / "run", steps=2, export=False), resume="latest")
    with pytest.raises(r0kit.ConfigError, match=r"generator\.steps: checkpoint 3, config 2"):
        train(train_config(tiny_sd, tmp_path / "run", steps=2, export=False,
                           generator={"steps": 2}), resume="latest")
    with pytest.raises(r0kit.ConfigError, match=r"objective"):
        train(train_config(tiny_sd, tmp_path / "run", steps=2, export=False,
                           objective={"normalize_gradients": False}), resume="latest")
    # one line per differing term value, not a dump of every term (it was cut off mid-list)
    rewards = {"colorfulness": {"weight": 1.0}, "contrast": {"weight": 2.0}}
    with pytest.raises(r0kit.ConfigError, match=r"objective\.rewards\.contrast\.weight: checkpoint 0\.5, config 2\.0\n"):
        train(train_config(tiny_sd, tmp_path / "run", steps=2, export=False, objective={"rewards": rewards}), resume="latest")


def test_a_term_s_device_is_no_part_of_what_a_resume_must_share():
    """-R clip.device=cpu at the start made every resume without it fail: a reward's placement is not its math."""
    from r0kit.train import objective_fingerprint

    spec = {"terms": [["reward", "clip", "clip", 1.0, [["device", "cpu"], ["gradient_checkpointing", True], ["model", "m"]]]],
            "normalize_gradients": True, "eps": 1e-8}
    keyed = {"rewards.clip": {"name": "clip", "weight": 1.0, "options": {"model": "m"}}, "normalize_gradients": True, "eps": 1e-8}
    assert objective_fingerprint(spec) == keyed
    assert objective_fingerprint(keyed) == keyed  # a checkpoint of this version is read as it is


def test_corrupt_checkpoint_names_the_file(tiny_sd, tmp_path):
    res = train(train_config(tiny_sd, tmp_path / "run", steps=1, export=False))
    f = res.checkpoint / "optimizer.safetensors"
    original = f.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(r0kit.WeightsError, match="optimizer.safetensors"):
        train(train_config(tiny_sd, tmp_path / "run", steps=2, export=False), resume=res.checkpoint)
    f.write_bytes(original)
    (res.checkpoint / "rng.safetensors").unlink()
    with pytest.raises(r0kit.WeightsError, match="rng.safetensors"):
        train(train_config(tiny_sd, tmp_path / "run", steps=2, export=False), resume=res.checkpoint)


@pytest.mark.parametrize(
    "over,key",
    [
        ({"generator": {"steps": 0}}, "generator.steps"),
        ({"generator": {"eta": [0.0, 1.5]}}, "generator.eta"),
        ({"generator": {"eta": [-0.2, 0.5]}}, "generator.eta"),
        ({"mixed_precision": "fp16"}, "mixed_precision"),
        ({"batch_size": 0}, "batch_size"),
        ({"generator": {"backprop_steps": 9}}, "backprop_steps"),
        ({"stepz": 3}, "stepz"),
    ],
)
def test_bad_config_names_the_key(tiny_sd, tmp_path, over, key):
    with pytest.raises(r0kit.ConfigError, match=key.replace(".", r"\.")):
        train_config(tiny_sd, tmp_path, **over)


def test_empty_or_unreadable_prompt_file(tiny_sd, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(r0kit.ConfigError, match="holds no prompts"):
        train(train_config(tiny_sd, tmp_path / "run", prompts=[], prompts_file=str(empty)))
    with pytest.raises(r0kit.ConfigError, match="does not exist"):
        train(train_config(tiny_sd, tmp_path / "run", prompts=[], prompts_file=str(tmp_path / "nope.txt")))
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(r0kit.ConfigError, match="cannot be read"):
        train(train_config(tiny_sd, tmp_path / "run", prompts=[], prompts_file=str(binary)))


def test_presets_validate():
    from r0kit.commands.optimize import preset_path

    for name in ("train_r0", "train_r0plus"):
        cfg = load_train_config(preset_path(name))
        assert isinstance(cfg, TrainConfig) and cfg.generator.steps == 4
        assert cfg.objective.normalize_gradients
    assert load_train_config(preset_path("train_r0plus")).generator.intermediate_supervision


def test_cli_train_with_progress_line_and_max_steps(tiny_sd, tmp_path, capsys):
    from r0kit.cli import main

    toml = tmp_path / "train.toml"
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "a red apple"}\n{"prompt": "a blue car"}\n')
    toml.write_text(f"""
prompts_file = "prompts.jsonl"
steps = 3
batch_size = 2
output = "{tmp_path / 'out[lr]'}"
[generator]
model = "{tiny_sd}"
steps = 2
height = {SIZE}
width = {SIZE}
lora_rank = 2
device = "cpu"
[objective]
normalize_gradients = true
[objective.rewards.colorfulness]
[objective.rewards.contrast]
weight = 0.5
[objective.regularizers.weight_l2]
weight = 0.01
""")
    assert main(["train", "--config", str(toml), "--max-steps", "2"]) == 0
    captured = capsys.readouterr()
    err = captured.err
    assert "step 2/3" in err and "colorfulness" in err and "contrast" in err and "weight_l2" in err and "loss" in err
    assert "1 steps to go: continue with --resume latest" in captured.out  # --max-steps stopped short: say how on
    assert main(["train", "--config", str(toml), "--resume", "latest", "-R", "contrast.weight=0.5"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    # a resumed run says, once, which checkpoint and step it continues from (brackets in the path are
    # not rich markup: they once vanished from the line)
    resumed_from = f"resuming from checkpoint {tmp_path / 'out[lr]' / 'checkpoints' / 'step-0000002'} at step 2 (of 3)"
    assert captured.err.count("resuming from") == 1 and resumed_from in captured.err
    assert "trained to step 3" in out and "to go" not in out and (tmp_path / "out[lr]" / "export" / "kstep.json").is_file()
    # resuming a finished run has nothing to train: it said "trained to step 3" and did nothing
    before = json.loads((tmp_path / "out[lr]" / "r0kit-run.json").read_text())
    assert main(["train", "--config", str(toml), "--resume", "latest"]) == 2
    assert "is at step 3, and the run trains 3 steps" in capsys.readouterr().err
    assert json.loads((tmp_path / "out[lr]" / "r0kit-run.json").read_text()) == before
    # the run's manifest records its command line, as every command's does
    manifest = json.loads((tmp_path / "out[lr]" / "r0kit-run.json").read_text())
    assert manifest["argv"] == ["train", "--config", str(toml), "--resume", "latest", "-R", "contrast.weight=0.5"]
    bad = tmp_path / "bad.toml"
    bad.write_text(toml.read_text().replace("steps = 2\n", "steps = 0\n"))
    assert main(["train", "--config", str(bad)]) == 2
    assert "generator.steps" in capsys.readouterr().err


def test_a_run_stopped_short_says_how_to_continue_at_its_own_length(tiny_sd, tmp_path, capsys):
    """``--steps 6 --max-steps 3`` once said "continue with --resume latest", and that command trained to the
    preset's 20 steps without a word: the hint now carries ``--steps``, and a resume to another length says so."""
    from r0kit.cli import main

    out = tmp_path / "run"
    args = ["train", "--preset", "train_tiny", "--model", str(tiny_sd), "-o", str(out), "--no-progress"]
    assert main([*args, "--steps", "6", "--max-steps", "3"]) == 0
    assert "3 steps to go: continue with --resume latest --steps 6" in capsys.readouterr().out
    assert json.loads((out / "checkpoints" / "step-0000003" / "state.json").read_text())["steps"] == 6
    assert main([*args, "--resume", "latest", "--max-steps", "4"]) == 0  # the preset's 20 steps
    captured = capsys.readouterr()
    assert ("note: the run that wrote it was training to step 6; this one trains to 20 (pass --steps 6 to keep its length)"
            in captured.err)
    assert "16 steps to go: continue with --resume latest\n" in captured.out  # the preset's own length: no --steps
    assert main([*args, "--resume", "latest", "--steps", "6"]) == 0  # step 4 was written by the 20-step run
    captured = capsys.readouterr()
    assert "note: the run that wrote it was training to step 20; this one trains to 6" in captured.err
    assert "trained to step 6" in captured.out
    assert main([*args, "--resume", "latest", "--steps", "8"]) == 0  # a finished run extended: nothing to note
    assert "note:" not in capsys.readouterr().err
    # a --max-steps the checkpoint has already passed trains nothing: refused, naming the fix (it once
    # "trained to step 8" doing nothing, and its hint forgot the stopped run's length)
    assert main([*args, "--resume", "latest", "--steps", "10", "--max-steps", "8"]) == 2
    assert "is at step 8, and --max-steps 8 would stop the run before it trains a step" in capsys.readouterr().err


def test_train_tiny_preset_runs_the_whole_loop(tiny_sd, tmp_path, capsys):
    """The try-it preset, on the session's tiny pipeline: checkpoints, samples, an export, resume."""
    from r0kit.cli import main

    out = tmp_path / "run"
    assert main(["train", "--preset", "train_tiny", "--model", str(tiny_sd), "-o", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "trained to step 20" in captured.out
    # no bar, but still a plain line per log_every (5) steps: the step and the loss
    lines = [ln for ln in captured.err.splitlines() if ln.startswith("step ")]
    assert [ln.split("  ")[0] for ln in lines] == ["step 5/20", "step 10/20", "step 15/20", "step 20/20"]
    assert all(ln.split("  ")[1].startswith("loss ") for ln in lines) and "━" not in captured.err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000010", "step-0000020"]
    assert (out / "samples" / "step-0000010.png").is_file() and (out / "export" / "kstep.json").is_file()
    # the same folder again is refused, naming both ways on
    assert main(["train", "--preset", "train_tiny", "--model", str(tiny_sd), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "--resume latest" in err
    # resumed without a bar: the resume line and the plain step lines still come
    resume = ["train", "--preset", "train_tiny", "--model", str(tiny_sd), "-o", str(out), "--no-progress"]
    assert main([*resume, "--resume", "latest", "--steps", "25"]) == 0
    err = capsys.readouterr().err
    assert f"resuming from checkpoint {out / 'checkpoints' / 'step-0000020'} at step 20 (of 25)" in err
    assert [ln.split("  ")[0] for ln in err.splitlines() if ln.startswith("step ")] == ["step 25/25"]


def test_the_tiny_model_name_builds_its_pipeline_once(tmp_path, monkeypatch):
    from r0kit.testing.pipelines import resolve_tiny_model

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = resolve_tiny_model("r0kit:tiny-sd")
    assert folder == str(tmp_path / "r0kit" / "tiny-sd") and (tmp_path / "r0kit" / "tiny-sd" / "model_index.json").is_file()
    stamp = (tmp_path / "r0kit" / "tiny-sd" / "model_index.json").stat().st_mtime_ns
    assert resolve_tiny_model("r0kit:tiny-sd") == folder
    assert (tmp_path / "r0kit" / "tiny-sd" / "model_index.json").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (tmp_path / "r0kit").iterdir()) == ["tiny-sd"]  # no build leftovers
    assert resolve_tiny_model("stabilityai/sd-turbo") == "stabilityai/sd-turbo"


def test_overwrite_keeps_the_user_s_files_inside_a_run_s_folders(tiny_sd, tmp_path, capsys):
    """--overwrite replaced a run's samples/ and export/ whole, deleting the photo a user had put there
    although the help says it never deletes files the earlier run did not write. The manifest of a run
    that ended lists each file it wrote; a folder holding others is refused before anything moves."""
    import json

    from r0kit.cli import main

    out = tmp_path / "run"
    args = ["train", "--preset", "train_tiny", "--model", str(tiny_sd), "-o", str(out), "--no-progress", "--steps", "10"]
    assert main(args) == 0
    written = json.loads((out / "r0kit-run.json").read_text())["written"]
    assert "export/kstep.json" in written and any(w.startswith("checkpoints/step-0000010/") for w in written)
    (out / "samples" / "my_photo.png").write_text("the user's")
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    assert main([*args, "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "holds samples/my_photo.png, which the earlier run did not write" in err and "nothing was changed" in err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before
    (out / "samples" / "my_photo.png").unlink()
    assert main([*args, "--overwrite"]) == 0
    assert "written" in json.loads((out / "r0kit-run.json").read_text())


def test_the_evaluate_table_s_outputs_belong_to_the_run(tiny_sd, tmp_path, capsys):
    """The [evaluate] table writes evaluation/ after the run: no manifest listed it, so --overwrite
    refused it as the user's, and a run without one left a stale evaluation/ beside its new export."""
    import json
    from importlib import resources

    from r0kit.cli import main

    text = (resources.files("r0kit") / "presets" / "train_tiny.toml").read_text()
    config = tmp_path / "t.toml"
    config.write_text(text.replace('model = "r0kit:tiny-sd"', f'model = "{tiny_sd}"').replace("steps = 20", "steps = 4")
                      + '\n[evaluate]\nprompts = ["a red apple", "a blue car"]\nseeds = 1\n')
    out = tmp_path / "run"
    args = ["train", "--config", str(config), "-o", str(out), "--no-progress"]
    assert main(args) == 0
    manifest = json.loads((out / "r0kit-run.json").read_text())
    assert "evaluation" in manifest["files"] and "evaluation/summary.csv" in manifest["written"]
    assert main([*args, "--overwrite"]) == 0, capsys.readouterr().err
    assert (out / "evaluation" / "summary.csv").is_file()
