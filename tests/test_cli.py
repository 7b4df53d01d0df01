"""The ``r0kit`` command end to end: the offline default run and its error paths."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from r0kit.cli import main
from r0kit.outputs import read_png_metadata


def _run_cli(*args, cwd):
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "r0kit.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_offline_default_run_end_to_end(tmp_path):
    proc = _run_cli("optimize", "--steps", "25", "--seed", "7", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "r0kit-out"
    for name in ("image.png", "log.csv", "curves.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    meta = read_png_metadata(out / "image.png")
    assert meta["prompt"] == "an orange, colourful, symmetric abstract pattern"
    assert meta["seed"] == "7"
    assert "colorfulness" in meta["objective"] and "total" in json.loads(meta["values"])
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [int(r["step"]) for r in rows] == list(range(26))
    assert float(rows[-1]["total"]) > float(rows[0]["total"])
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["objective_last"][0] > summary["objective_first"][0]
    # No temporary files are left behind by the atomic writes.
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_several_prompts_write_a_contact_sheet(tmp_path):
    assert main(["optimize", "a", "b", "c", "--steps", "3", "-o", str(tmp_path / "o"), "--no-progress"]) == 0
    names = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert names == ["contact_sheet.png", "curves.png", "image_000.png", "image_001.png", "image_002.png", "log.csv", "r0kit-run.json"]
    meta = read_png_metadata(tmp_path / "o" / "image_002.png")
    assert meta["prompt"] == "c" and meta["seed"] == "2"
    # The recorded seed reproduces that image alone: samples are independent problems.
    assert main(["optimize", "c", "--steps", "3", "--seed", "2", "-o", str(tmp_path / "alone"), "--no-progress"]) == 0
    import numpy as np
    from PIL import Image

    batched = np.asarray(Image.open(tmp_path / "o" / "image_002.png"))
    alone = np.asarray(Image.open(tmp_path / "alone" / "image.png"))
    assert np.abs(batched.astype(int) - alone.astype(int)).max() <= 1


def test_unknown_reward_exits_nonzero_without_traceback(tmp_path):
    obj = tmp_path / "obj.toml"
    obj.write_text("[objective.rewards.colourfulness]\nweight = 1\n")
    proc = _run_cli("optimize", "--objective", str(obj), "--steps", "2", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "unknown reward 'colourfulness'" in proc.stderr and "did you mean 'colorfulness'" in proc.stderr
    assert not (tmp_path / "r0kit-out").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["optimize", "--preset", "nope"], "--preset 'nope': no such preset"),
        (["optimize", "--config", "missing.toml"], "does not exist"),
        (["optimize", "--generator", "pixels"], "did you mean 'pixel'"),
        (["optimize", "--steps", "0"], "steps"),
    ],
)
def test_bad_arguments_give_clear_errors(tmp_path, monkeypatch, capsys, args, needle):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["optimize", "--steps", "many"])
    assert exc.value.code == 2
    assert "invalid int value" in capsys.readouterr().err


def test_plugins_command_lists_builtins(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for needle in ("colorfulness", "r0kit_analytic", "pixel", "tv", "ok"):
        assert needle in out


def test_atomic_writes_keep_default_permissions_and_leave_nothing_on_error(tmp_path):
    import stat

    from r0kit.io import atomic_path, write_text

    old = os.umask(0o022)
    try:
        path = write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("half written")
            raise RuntimeError("interrupted")
    assert (tmp_path / "a.txt").read_text() == "x"  # nothing already written is lost
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_sigterm_ends_a_command_as_ctrl_c_does_and_the_handler_is_put_back(tmp_path, monkeypatch, capsys):
    """A scheduler's SIGTERM killed the process outright: an --overwrite run left the earlier run's files
    hidden in a .r0kit-replaced folder. It is now raised where a Ctrl-C would be (train checkpoints, a
    replaced folder is rolled back), the exit status is 143, and the previous handler is restored."""
    import signal

    from r0kit.commands import plugins as plugins_cmd

    def terminated(args):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not interrupt the command")

    monkeypatch.setattr(plugins_cmd, "run", terminated)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["plugins"]) == 128 + signal.SIGTERM
    assert "r0kit: terminated (SIGTERM)" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_cpu_allocator_s_failure_is_out_of_memory_not_a_bug(monkeypatch, capsys):
    """`evaluate --size 100000` ended in torch's "DefaultCPUAllocator: can't allocate memory", a
    RuntimeError, reported as "a bug in r0kit"; it is an out-of-memory with advice."""
    from r0kit.commands import plugins as plugins_cmd

    def allocate(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 10000000000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(plugins_cmd, "run", allocate)
    assert main(["plugins"]) == 2
    err = capsys.readouterr().err
    assert "out of memory" in err and "lower the batch size or the image size" in err and "bug" not in err


def test_optimize_s_progress_bar_is_on_stderr_so_stdout_stays_its_json(tmp_path, monkeypatch, capsys):
    """The bar went to stdout, where optimize prints its JSON summary for scripts that pipe it."""
    monkeypatch.chdir(tmp_path)
    assert main(["optimize", "--steps", "3", "--seed", "7"]) == 0
    captured = capsys.readouterr()
    assert "optimize ━" in captured.err and "4/4" in captured.err  # steps 0 to 3
    assert "━" not in captured.out and "objective_last" in json.loads(captured.out.strip().splitlines()[-1])
