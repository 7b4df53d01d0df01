"""Meta-tests on the plugin documentation, the datasette way.

* every hook spec appears, with its arguments, in CONTRIBUTING.md, and the
  generated hook reference there is current;
* every hook has a ``test_hook_<name>`` test somewhere under tests/;
* the plugin examples in CONTRIBUTING.md work: their pyproject.toml is
  complete, and each example module registers something that passes the
  conformance check.
"""

from __future__ import annotations

import re
import tomllib
import types
from pathlib import Path

import pytest

from r0kit.testing import assert_conforms, registered_plugin
from r0kit.testing.docs import current_reference, hook_arguments, hook_reference, hook_specs, main as docs_main

ROOT = Path(__file__).resolve().parents[1]
CONTRIBUTING = ROOT / "CONTRIBUTING.md"
HOOKS = list(hook_specs())


@pytest.fixture(scope="module")
def text() -> str:
    return CONTRIBUTING.read_text(encoding="utf-8")


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_there_are_hooks():
    assert "r0kit_register_rewards" in HOOKS and len(HOOKS) >= 3


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_with_its_arguments(text, hook):
    args = ", ".join(hook_arguments(hook))
    assert f"### `{hook}({args})`" in text, f"CONTRIBUTING.md has no reference section for {hook}({args})"


def test_hook_reference_is_current(text):
    assert current_reference(text) is not None, "CONTRIBUTING.md lost its hook-reference markers"
    assert current_reference(text) == hook_reference(), (
        "the hook reference in CONTRIBUTING.md is stale; run: python -m r0kit.testing.docs --write"
    )
    assert docs_main([str(CONTRIBUTING)]) == 0


def test_docs_check_detects_a_stale_reference(tmp_path, text):
    stale = tmp_path / "CONTRIBUTING.md"
    stale.write_text(text.replace("Register reward factories.", "Register rewards, somehow."))
    assert docs_main([str(stale)]) == 1
    assert docs_main([str(stale), "--write"]) == 0
    assert stale.read_text() == text


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook):
    pattern = re.compile(rf"^def test_hook_{hook}\(", re.M)
    found = [p for p in (ROOT / "tests").rglob("test_*.py") if pattern.search(p.read_text(encoding="utf-8"))]
    assert found, f"no test_hook_{hook} under tests/ (add one to tests/plugins/test_hooks.py)"


@pytest.mark.parametrize(
    "heading",
    [
        "## Writing a plugin",
        "## The hook reference",
        "## Testing a plugin",
        "## Working on r0kit itself",
        "### Adding a kernel op",
        "### Benchmark etiquette",
    ],
)
def test_sections(text, heading):
    assert re.search(rf"^{re.escape(heading)}$", text, flags=re.M)


def test_testing_api_named_in_the_guide_exists(text):
    import r0kit.testing
    import r0kit.testing.fixtures as fixtures

    section = text.split("## Testing a plugin", 1)[1].split("## Working on r0kit itself", 1)[0]
    names = set(re.findall(r"`(\w+)\(", section)) & set(dir(r0kit.testing)) | set(re.findall(r"r0kit\.testing\.(\w+)", section))
    for name in ("check_reward", "check_regularizer", "check_generator", "assert_conforms", "registered_plugin",
                 "tiny_open_clip", "save_tiny_open_clip", "register_tiny_open_clip", "tiny_unet", "tiny_vae"):
        assert f"`{name}(" in section or f"r0kit.testing.{name}" in section, name
    import importlib.util

    for name in names - {"fixtures", "docs"}:
        # a submodule (r0kit.testing.pipelines) is an attribute only once something imported it
        assert hasattr(r0kit.testing, name) or importlib.util.find_spec(f"r0kit.testing.{name}") is not None, name
    for fixture in ("r0kit_plugin", "r0kit_host"):
        assert f"`{fixture}" in section and hasattr(fixtures, fixture)


def _example_modules(text: str) -> dict[str, str]:
    section = text.split("## Writing a plugin", 1)[1].split("## The hook reference", 1)[0]
    modules = {}
    for block in _blocks(section, "python"):
        m = re.match(r"# (r0kit_\w+)\.py\n", block)
        if m:
            modules[m.group(1)] = block
    return modules


def test_example_pyproject_registers_every_example_module(text):
    section = text.split("## Writing a plugin", 1)[1].split("## The hook reference", 1)[0]
    pyprojects = [tomllib.loads(b) for b in _blocks(section, "toml") if "[project]" in b]
    assert len(pyprojects) == 1
    meta = pyprojects[0]
    assert meta["build-system"]["build-backend"] and meta["project"]["name"] and meta["project"]["version"]
    modules = _example_modules(text)
    assert meta["project"]["entry-points"]["r0kit"] == {m: m for m in modules}
    assert sorted(meta["tool"]["setuptools"]["py-modules"]) == sorted(modules)


EXPECTED = {"r0kit_sharpness": ("reward", "sharpness"), "r0kit_grayworld": ("regularizer", "grayworld"), "r0kit_palette": ("generator", "palette")}


@pytest.mark.parametrize("module_name", sorted(EXPECTED))
def test_contributing_example_plugin_works(text, module_name):
    source = _example_modules(text)[module_name]
    module = types.ModuleType(module_name)
    exec(compile(source, f"CONTRIBUTING.md:{module_name}.py", "exec"), module.__dict__)
    kind, name = EXPECTED[module_name]
    with registered_plugin(module):
        report = assert_conforms(name, kind=kind)
    assert report.kind == kind


def test_contributing_test_example_passes(text):
    """The sample test file of 'Testing a plugin' runs against the sample reward."""
    import sys

    section = text.split("## Testing a plugin", 1)[1]
    sample = next(b for b in _blocks(section, "python") if "def test_conforms" in b)
    plugin = types.ModuleType("r0kit_sharpness")
    exec(compile(_example_modules(text)["r0kit_sharpness"], "r0kit_sharpness.py", "exec"), plugin.__dict__)
    sys.modules["r0kit_sharpness"] = plugin
    try:
        tests = types.ModuleType("test_sharpness")
        exec(compile(sample, "test_sharpness.py", "exec"), tests.__dict__)
        funcs = [f for n, f in vars(tests).items() if n.startswith("test_")]
        assert len(funcs) == 2
        import contextlib

        for func in funcs:
            with contextlib.ExitStack() as stack:
                func(lambda p, name=None: stack.enter_context(registered_plugin(p, name)))
    finally:
        del sys.modules["r0kit_sharpness"]


def test_the_readme_s_objective_example_runs_as_written():
    """It used an undefined ``sample`` and weights that need the Hub; it now runs offline on the mini world."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Objectives", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(code, "README.md (Objectives)", "exec"), scope)
    assert scope["result"].total.shape == (2,) and scope["images"].grad is not None
    assert scope["images"].grad.abs().sum() > 0
