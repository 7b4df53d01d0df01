"""The optimization tests need diffusers and transformers; their tiny pipelines are in tests/conftest.py."""

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from r0kit.testing.fixtures import r0kit_plugin  # noqa: E402,F401  (registers a test plugin for one test)
