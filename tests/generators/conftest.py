"""Tiny on-disk diffusers pipelines, built once per session (see tests/tiny_diffusers.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from tiny_diffusers import build_tiny_pipeline  # noqa: E402


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "sd")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "sdxl", "sdxl")


@pytest.fixture(scope="session")
def sd_model(tiny_sd):
    """The tiny SD pipeline loaded by folder path (shared: do not change its memory options)."""
    from r0kit.diffusion import load

    return load(str(tiny_sd), device="cpu")
