"""``r0kit new-plugin``: a package that passes the conformance check as generated, and refusals."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from r0kit import scaffold
from r0kit.cli import main
from r0kit.testing import assert_conforms, registered_plugin


def _import(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("kind", ["reward", "regularizer", "generator", "metric"])
def test_scaffold_conforms_out_of_the_box(tmp_path, capsys, kind):
    name = f"np_{kind}_demo"
    target = tmp_path / "pkg"
    assert main(["new-plugin", name, "--kind", kind, "--output", str(target)]) == 0
    assert f"created the {kind} plugin r0kit_{name}" in capsys.readouterr().out
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert files == sorted(["pyproject.toml", "README.md", "conftest.py", f"r0kit_{name}.py", f"tests/test_{name}.py", "r0kit-run.json"])
    meta = tomllib.loads((target / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["r0kit"] == {f"r0kit_{name}": f"r0kit_{name}"}
    assert meta["tool"]["setuptools"]["py-modules"] == [f"r0kit_{name}"]
    module = _import(target / f"r0kit_{name}.py", f"r0kit_{name}")
    with registered_plugin(module) as plugin:
        assert plugin == f"r0kit_{name}"
        report = assert_conforms(name, kind=kind)
    assert report.kind == kind and not report.failures


@pytest.mark.parametrize("kind", ["reward", "regularizer", "generator", "metric"])
def test_generated_test_functions_pass(tmp_path, kind):
    """The generated tests, called in this process with registered_plugin standing in for the fixture."""
    import contextlib

    name = f"np_{kind}_gen"
    target = tmp_path / "pkg"
    scaffold.write(name, kind, target)
    sys.modules[f"r0kit_{name}"] = _import(target / f"r0kit_{name}.py", f"r0kit_{name}")
    try:
        tests = _import(target / "tests" / f"test_{name}.py", f"test_{name}")
        funcs = [f for n, f in vars(tests).items() if n.startswith("test_") and callable(f)]
        assert len(funcs) == 2
        for func in funcs:
            with contextlib.ExitStack() as stack:
                func(lambda plugin, name=None: stack.enter_context(registered_plugin(plugin, name)))
    finally:
        del sys.modules[f"r0kit_{name}"]


@pytest.mark.slow
def test_generated_tests_pass_with_pytest(tmp_path):
    target = tmp_path / "r0kit-np-sub"
    assert main(["new-plugin", "np_sub", "--output", str(target)]) == 0
    env = {**os.environ, "R0KIT_DISABLE_AUTOLOAD": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=target, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout


def test_default_dir_is_named_after_the_plugin(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["new-plugin", "np_default"]) == 0
    assert (tmp_path / "r0kit-np-default" / "r0kit_np_default.py").is_file()


@pytest.mark.parametrize("bad", ["my-reward", "9lives", "class", "naïve", "two words", ""])
def test_invalid_name_is_refused_without_traceback(tmp_path, monkeypatch, capsys, bad):
    monkeypatch.chdir(tmp_path)
    assert main(["new-plugin", bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith("r0kit: error: plugin name") and "Traceback" not in err
    assert "letters, digits and underscores" in err
    assert list(tmp_path.iterdir()) == []


def test_invalid_name_suggests_a_valid_one(capsys):
    assert main(["new-plugin", "My-Reward"]) == 2
    assert "(for example 'my_reward')" in capsys.readouterr().err


def test_existing_directory_is_refused_and_left_alone(tmp_path, capsys):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    assert main(["new-plugin", "np_taken", "--output", str(target)]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    assert (target / "notes.txt").read_text() == "keep me"
    # --overwrite writes the package beside the user's file and leaves that file alone
    assert main(["new-plugin", "np_taken", "--output", str(target), "--overwrite"]) == 0
    assert (target / "notes.txt").read_text() == "keep me" and (target / "r0kit_np_taken.py").is_file()


def test_a_name_already_registered_is_refused(tmp_path, capsys):
    assert main(["new-plugin", "contrast", "--output", str(tmp_path / "x")]) == 2
    assert "already registered by plugin 'r0kit_analytic'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_failed_write_removes_only_what_it_created(tmp_path, monkeypatch):
    real = Path.write_text
    calls = []

    def flaky(self, *args, **kwargs):
        calls.append(self)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", flaky)
    with pytest.raises(OSError, match="disk full"):
        scaffold.write("np_flaky", "reward", tmp_path / "pkg")
    assert not (tmp_path / "pkg").exists() and tmp_path.exists()
