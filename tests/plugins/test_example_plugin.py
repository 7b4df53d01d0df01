"""The example third-party plugin: installed (or its metadata put on the path), it is found
through the ``r0kit`` entry point, listed by ``r0kit plugins`` and usable from a TOML objective."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

import r0kit
from r0kit.cli import main
from r0kit.config import load_objective
from r0kit.plugins import DEFAULT_PLUGINS, get_host, reset_host

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "r0kit-example-plugin"
MODULE = "r0kit_example_plugin"


def _metadata_dir(root: Path) -> Path:
    """A ``*.dist-info`` built from the example's own pyproject.toml: what an install writes."""
    meta = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    project = meta["project"]
    dist = root / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    eps = project["entry-points"]["r0kit"]
    (dist / "entry_points.txt").write_text("[r0kit]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))
    return root


@pytest.fixture
def autoload_with(monkeypatch):
    """Turn autoload on for this test only, with an allowlist of the built-ins and the example."""

    def enable(*paths: Path) -> None:
        for p in paths:
            monkeypatch.syspath_prepend(str(p))
        monkeypatch.delenv("R0KIT_DISABLE_AUTOLOAD", raising=False)
        monkeypatch.setenv("R0KIT_LOAD_PLUGINS", ",".join(DEFAULT_PLUGINS + (MODULE,)))
        reset_host()

    yield enable
    reset_host()
    sys.modules.pop(MODULE, None)


def _check_visible_and_usable(tmp_path: Path, capsys) -> None:
    assert main(["plugins"]) == 0
    listing = capsys.readouterr().out
    assert "vignette" in listing and MODULE in listing and "0.1.0" in listing
    assert main(["plugins", "--verbose"]) == 0
    verbose = capsys.readouterr().out
    assert f"  {MODULE} 0.1.0 (entrypoint): ok, registered 1 reward" in verbose
    assert "  vignette  (plugin r0kit_example_plugin 0.1.0)" in verbose
    assert "input: 96x96, bilinear resize, antialiased, center crop" in verbose

    toml = tmp_path / "objective.toml"
    toml.write_text(
        "[objective.rewards.vignette]\nweight = 2.0\nradius = 0.5\n\n"
        "[objective.rewards.contrast]\nweight = 0.5\n\n"
        "[objective.regularizers.tv]\nweight = 0.1\n"
    )
    objective = load_objective(toml)
    term = next(t for t in objective.rewards if t.name == "vignette")
    assert term.plugin == MODULE and term.weight == 2.0 and term.options == {"radius": 0.5}
    assert objective == 2 * r0kit.reward("vignette", radius=0.5) + 0.5 * r0kit.reward("contrast") - 0.1 * r0kit.regularizer("tv")
    v, u = torch.meshgrid(torch.linspace(-1, 1, 80), torch.linspace(-1, 1, 120), indexing="ij")
    bright_centre = (1 - (u**2 + v**2).sqrt() / 2**0.5).expand(1, 3, 80, 120)
    result = objective.evaluate(r0kit.Sample(torch.cat([bright_centre, 1 - bright_centre])), ["a", "b"])
    assert result.terms["vignette"][0] > 0.1 > -0.1 > result.terms["vignette"][1]


def test_example_plugin_via_its_distribution_metadata(tmp_path, capsys, autoload_with):
    autoload_with(EXAMPLE, _metadata_dir(tmp_path / "site"))
    host = get_host()
    assert host.statuses[MODULE].source == "entrypoint" and host.statuses[MODULE].version == "0.1.0"
    _check_visible_and_usable(tmp_path, capsys)


def test_without_autoload_the_example_is_not_loaded(monkeypatch, autoload_with, tmp_path):
    autoload_with(EXAMPLE, _metadata_dir(tmp_path / "site"))
    monkeypatch.setenv("R0KIT_DISABLE_AUTOLOAD", "1")
    reset_host()
    with pytest.warns(r0kit.R0kitWarning, match=f"names {MODULE!r}, an installed entry-point plugin, but R0KIT_DISABLE_AUTOLOAD"):
        assert MODULE not in get_host().statuses
    with pytest.raises(r0kit.UnknownNameError, match="vignette"):
        r0kit.reward("vignette")


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="pip install needs setuptools here")
def test_example_plugin_installed_with_pip(tmp_path, capsys, autoload_with):
    source = tmp_path / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    target = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (target / MODULE / "__init__.py").is_file()
    autoload_with(target)
    assert get_host().statuses[MODULE].ok
    _check_visible_and_usable(tmp_path, capsys)


def test_the_examples_own_tests_pass():
    """Run the example package's test functions (they use registered_plugin, no fixtures)."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        spec = importlib.util.spec_from_file_location("example_tests", EXAMPLE / "tests" / "test_vignette.py")
        tests = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tests)
        funcs = [f for n, f in vars(tests).items() if n.startswith("test_")]
        assert len(funcs) == 3
        for func in funcs:
            func()
    finally:
        sys.path.remove(str(EXAMPLE))
        sys.modules.pop(MODULE, None)
