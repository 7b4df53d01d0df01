"""pytest fixtures for plugin authors.

Enable them in your project's top-level ``conftest.py``::

    pytest_plugins = ["r0kit.testing.fixtures"]

``r0kit_plugin``
    a function ``r0kit_plugin(plugin, name=None) -> name`` that registers a
    plugin for the current test only.
``r0kit_host``
    a fresh process-wide plugin host holding only the built-in plugins
    (entry-point autoload off), discarded after the test.

This module imports nothing heavy at import time.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import pytest


@pytest.fixture
def r0kit_plugin() -> Iterator[Callable[..., str]]:
    """Register plugins for one test; each is unregistered at teardown."""
    from r0kit.testing.plugins import registered_plugin

    with contextlib.ExitStack() as stack:

        def register(plugin: Any, name: str | None = None) -> str:
            return stack.enter_context(registered_plugin(plugin, name))

        yield register


@pytest.fixture
def r0kit_host(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fresh plugin host with the built-ins only; the next test gets its own."""
    from r0kit.plugins import get_host, reset_host

    monkeypatch.setenv("R0KIT_DISABLE_AUTOLOAD", "1")
    monkeypatch.delenv("R0KIT_LOAD_PLUGINS", raising=False)
    reset_host()
    try:
        yield get_host()
    finally:
        reset_host()
