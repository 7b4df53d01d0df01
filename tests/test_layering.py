"""The core never imports a plugin: built-ins reach it only through the registries, as third-party plugins do."""

from __future__ import annotations

import ast
from pathlib import Path

import r0kit

ROOT = Path(r0kit.__file__).resolve().parent
PLUGINS = {p.name for p in (ROOT.parent / "plugins").iterdir() if (p / "__init__.py").is_file()}


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def test_the_plugins_folder_holds_the_built_in_plugins():
    from r0kit.plugins import DEFAULT_PLUGINS

    assert set(DEFAULT_PLUGINS) <= PLUGINS


def test_no_core_module_imports_a_plugin_at_any_depth():
    offending = [
        f"{path.relative_to(ROOT.parent)}:{line} imports {name}"
        for path in sorted(ROOT.rglob("*.py"))
        for line, name in _imports(path)
        if name.split(".")[0] in PLUGINS
    ]
    assert offending == []


def test_an_export_folder_is_recognised_through_the_generator_registry(tmp_path):
    from r0kit.evaluate import export_entry, source_kind

    folder = tmp_path / "export"
    folder.mkdir()
    assert export_entry(folder) is None
    (folder / "kstep.json").write_text("{}")
    entry = export_entry(folder)
    assert entry is not None and entry.name == "kstep"
    assert source_kind(str(folder)) == "generator"
