"""The generator tests need diffusers and transformers; their tiny pipelines are in tests/conftest.py."""

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
