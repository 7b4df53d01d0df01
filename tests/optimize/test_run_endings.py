"""Every way a run ends keeps what it earned and says where: a plugin's exception, a write error,
a NaN at step 0, Ctrl-C, out of memory; and an earlier run is never destroyed."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import r0kit
from r0kit.cli import main
from r0kit.outputs import read_png_metadata

RAW = r0kit.RewardContract(size=None, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), needs_prompt=False)


class Scripted:
    """A plugin whose reward ``scripted`` misbehaves from its ``at``-th call on (``mode``)."""

    @r0kit.hookimpl
    def r0kit_register_rewards(self, register):
        def factory(at: int = 6, mode: str = "raise"):
            calls = {"n": 0}

            def reward(x, prompts):
                calls["n"] += 1
                if calls["n"] > at:
                    if mode == "raise":
                        raise ValueError("boom inside the plugin")
                    if mode == "nan":
                        return x.flatten(1).mean(1) * float("nan")
                    if mode == "oom":
                        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
                    if mode == "ctrl-c":
                        raise KeyboardInterrupt
                return x.flatten(1).mean(1)

            return reward

        register("scripted", factory, contract=RAW)


@pytest.fixture
def scripted(r0kit_plugin, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r0kit_plugin(Scripted(), "scripted_plugin")

    def objective(at: int, mode: str) -> str:
        path = tmp_path / f"obj_{mode}_{at}.toml"
        path.write_text(f"[objective.rewards.scripted]\nat = {at}\nmode = '{mode}'\n[objective.rewards.contrast]\n")
        return str(path)

    return objective


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "r0kit-run.json").read_text())


def test_plugin_exception_mid_run_keeps_the_best_iterate_and_says_where(scripted, capsys):
    # batch 1, three prompts: the reward's 7th call (prompt 0, step 6) raises
    rc = main(["optimize", "a", "b", "c", "--objective", scripted(6, "raise"), "--steps", "10", "--no-progress", "-o", "out"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "r0kit: error: prompt 0: stopped at step 6: reward 'scripted' (plugin scripted_plugin) raised ValueError" in err
    assert "kept its best iterate (step 5)" in err and "prompts 1-2 not run" in err and "'out'" in err
    assert read_png_metadata(Path("out/image_000.png"))["best_step"] == "5"
    assert not Path("out/image_001.png").exists()
    m = _manifest(Path("out"))
    assert m["status"] == "failed" and [p["image"] for p in m["prompts"]] == ["image_000.png", None, None]
    assert [p["stopped"] for p in m["prompts"]][1:] == ["not run", "not run"]


def test_write_error_puts_the_results_in_a_rescue_folder(scripted, capsys, monkeypatch):
    import r0kit.outputs

    real = r0kit.outputs.save_png

    def disk_full(path, *args, **kwargs):
        if "out" in Path(path).parts:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(r0kit.outputs, "save_png", disk_full)
    rc = main(["optimize", "a", "--objective", scripted(99, "raise"), "--steps", "3", "--no-progress", "-o", "out"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "cannot write to 'out'" in err and "No space left on device" in err
    rescue = Path(err.split("wrote the results to '")[1].split("'")[0])
    try:
        assert (rescue / "image.png").is_file() and (rescue / "log.csv").is_file()
        assert read_png_metadata(rescue / "image.png")["prompt"] == "a"
    finally:
        import shutil

        shutil.rmtree(rescue, ignore_errors=True)
    assert not Path("out").exists()  # the staged files were removed, the folder it made too


def test_nan_at_step_0_says_nothing_was_kept_and_writes_nothing(scripted, capsys):
    Path("out").mkdir()
    (Path("out") / "keep.txt").write_text("mine")
    rc = main(["optimize", "a", "b", "--objective", scripted(0, "nan"), "--steps", "5", "--no-progress", "-o", "out",
               "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert "stopped at step 0: the term(s) scripted went NaN or Inf before any finite iterate, so nothing was kept" in err
    assert "kept the best finite iterate" not in err and "Nothing was written" in err
    assert sorted(p.name for p in Path("out").iterdir()) == ["keep.txt"]


def test_nan_mid_run_stops_only_that_prompt(scripted, capsys):
    # batch of two: the reward goes NaN for both at its 4th call, i.e. step 3
    rc = main(["optimize", "a", "b", "--objective", scripted(3, "nan"), "--steps", "6", "--batch-size", "2",
               "--no-progress", "-o", "out"])
    err = capsys.readouterr().err
    assert rc == 1 and "prompts 0-1: stopped at step 3: the term(s) scripted went NaN or Inf; kept the best iterate of each" in err
    assert [p["best_step"] for p in _manifest(Path("out"))["prompts"]] == [2, 2]


def test_out_of_memory_keeps_the_best_iterate(scripted, capsys):
    rc = main(["optimize", "a", "--objective", scripted(2, "oom"), "--steps", "6", "--no-progress", "-o", "out"])
    err = capsys.readouterr().err
    assert rc == 2 and "out of memory" in err and "gradient_checkpointing" in err and "Traceback" not in err
    assert read_png_metadata(Path("out/image.png"))["best_step"] == "1"


def test_ctrl_c_in_a_multi_prompt_run_keeps_finished_prompts_and_names_the_rest(scripted, capsys):
    # batch 1: prompt 0 runs 3 steps (4 evaluations), prompt 1 is interrupted at its step 1
    rc = main(["optimize", "a", "b", "c", "d", "--objective", scripted(5, "ctrl-c"), "--steps", "3", "--no-progress",
               "-o", "out"])
    err = capsys.readouterr().err
    assert rc == 130 and "Traceback" not in err
    assert "prompt 1: interrupted at step 1; kept its best iterate (step 0)" in err and "prompts 2-3 not run" in err
    assert sorted(p.name for p in Path("out").glob("image_*.png")) == ["image_000.png", "image_001.png"]
    assert _manifest(Path("out"))["status"] == "interrupted"


def test_overwrite_replaces_the_earlier_run_without_stale_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["optimize", "a", "b", "c", "--steps", "2", "--no-progress", "-o", "out"]) == 0
    (tmp_path / "out" / "notes.txt").write_text("the user's")
    assert main(["optimize", "z", "--steps", "2", "--no-progress", "-o", "out", "--overwrite"]) == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["curves.png", "image.png", "log.csv", "notes.txt", "r0kit-run.json"]
    assert read_png_metadata(tmp_path / "out" / "image.png")["prompt"] == "z"


# -- training --------------------------------------------------------------------------------------


def _train_toml(tmp_path: Path, model: Path, extra_reward: str = "") -> Path:
    (tmp_path / "train.toml").write_text(f"""
prompts = ["a red apple", "a blue car"]
steps = 6
batch_size = 1
output = "run"
checkpoint_every = 2
[generator]
model = "{model}"
steps = 2
height = 16
width = 16
lora_rank = 2
device = "cpu"
[objective]
normalize_gradients = true
[objective.rewards.colorfulness]
{extra_reward}
""")
    return tmp_path / "train.toml"


def test_train_plugin_exception_keeps_a_checkpoint_to_resume_from(scripted, tiny_sd, tmp_path, capsys):
    pytest.importorskip("peft")
    toml = _train_toml(tmp_path, tiny_sd, "[objective.rewards.scripted]\nat = 3\nmode = 'raise'\n")
    rc = main(["train", "--config", str(toml), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "training stopped after step 3: reward 'scripted' (plugin scripted_plugin) raised ValueError" in err
    assert "the last checkpoint is 'run/checkpoints/step-0000003' (step 3); continue with --resume latest" in err
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-0000003" / "state.json").read_text())
    assert state["step"] == 3
    assert _manifest(tmp_path / "run")["status"] == "failed"


def test_train_failure_names_the_steps_to_continue_at(scripted, tiny_sd, tmp_path, capsys):
    """A run whose length came from --steps, stopped by a plugin's error, is continued with that --steps
    (the hint once said only --resume latest, which trains to the config's length)."""
    pytest.importorskip("peft")
    toml = _train_toml(tmp_path, tiny_sd, "[objective.rewards.scripted]\nat = 3\nmode = 'raise'\n")
    assert main(["train", "--config", str(toml), "--no-progress", "--steps", "8"]) == 2
    assert "(step 3); continue with --resume latest --steps 8" in capsys.readouterr().err


def test_train_failing_before_a_step_leaves_a_replaced_run_as_it_was(scripted, tiny_sd, tmp_path, capsys):
    pytest.importorskip("peft")
    toml = _train_toml(tmp_path, tiny_sd)
    assert main(["train", "--config", str(toml), "--no-progress", "--max-steps", "2"]) == 0
    before = {str(p): p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    bad = _train_toml(tmp_path, tiny_sd, "[objective.rewards.scripted]\nat = 0\nmode = 'raise'\n")
    rc = main(["train", "--config", str(bad), "--no-progress", "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 2 and "raised ValueError" in err and "Traceback" not in err
    after = {str(p): p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert after == before  # the earlier run, byte for byte, and nothing of the failed one
    # a resumed run that fails before its first step leaves the metrics it found
    rc = main(["train", "--config", str(bad), "--no-progress", "--resume", "latest"])
    assert rc == 2 and "Traceback" not in capsys.readouterr().err
    assert {str(p): p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="watches /proc/<pid>/maps to time the signal")
def test_ctrl_c_during_start_up_exits_130_without_a_traceback(tmp_path):
    """SIGINT while the command is still loading torch: the signal is sent once torch's library is mapped."""
    script = Path(sys.executable).parent / "r0kit"
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "r0kit.cli"]
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(root / "plugins")]))
    proc = subprocess.Popen([*cmd, "optimize", "x", "--steps", "1000", "-o", "out"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text():
                break
        except OSError:
            pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "r0kit: interrupted" in err
    assert not (tmp_path / "out").exists()


_CTRL_C_INSIDE_TORCH_S_NUMPY_IMPORT = """
import os, signal, sys

class CtrlCOnNumpy:
    # the first import of numpy comes from torch's C extension, which took a KeyboardInterrupt
    # raised there for "numpy is unavailable"
    def find_spec(self, name, path=None, target=None):
        if name == "numpy":
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGINT)
        return None

assert "torch" not in sys.modules and "numpy" not in sys.modules
sys.meta_path.insert(0, CtrlCOnNumpy())
from r0kit.cli import main
sys.exit(main(["optimize", "x", "--steps", "3", "-o", "out"]))
"""


def test_ctrl_c_inside_torch_s_own_numpy_import_is_not_lost(tmp_path):
    """Deterministic twin of the test above: the SIGINT lands exactly where torch swallowed it."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), str(root / "plugins")]))
    proc = subprocess.run([sys.executable, "-c", _CTRL_C_INSIDE_TORCH_S_NUMPY_IMPORT], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr and "r0kit: interrupted" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_train_write_error_names_the_last_good_checkpoint(tiny_sd, tmp_path, monkeypatch, capsys):
    pytest.importorskip("peft")
    import r0kit.train

    real = r0kit.train.save_checkpoint

    def disk_full_after_the_first(folder, **kw):
        if kw["step"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(folder))
        return real(folder, **kw)

    monkeypatch.setattr(r0kit.train, "save_checkpoint", disk_full_after_the_first)
    monkeypatch.chdir(tmp_path)
    rc = main(["train", "--config", str(_train_toml(tmp_path, tiny_sd)), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "No space left on device" in err
    assert "the last checkpoint is 'run/checkpoints/step-0000002' (step 2)" in err
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-0000002"]


def test_evaluate_stopped_part_way_keeps_the_finished_rows(scripted, tmp_path, capsys):
    import numpy as np
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    for folder in ("first", "second"):
        (tmp_path / folder).mkdir()
        for i in range(2):
            info = PngInfo()
            info.add_text("prompt", f"prompt {i}")
            Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(tmp_path / folder / f"{i}.png", pnginfo=info)
    # scored one image at a time: the third call (the second folder's first image) raises
    (tmp_path / "obj.toml").write_text("[objective.rewards.scripted]\nat = 2\nmode = 'raise'\n")
    rc = main(["evaluate", "first", "second", "--train-config", "obj.toml", "--held-out", "contrast", "-o", "ev"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "kept the rows of first in 'ev'; not evaluated: second" in err and "raised ValueError" in err
    rows = (tmp_path / "ev" / "evaluation.csv").read_text().splitlines()
    assert len(rows) == 3 and all(r.startswith("first,") for r in rows[1:])
    assert json.loads((tmp_path / "ev" / "r0kit-run.json").read_text())["status"] == "failed"
