"""Suite-wide settings: no entry-point autoload, no network, no display, one torch thread per test.

Also the tiny on-disk diffusers pipelines (r0kit.testing.pipelines), built at
most once per session and only by the tests that ask for them.
"""

from __future__ import annotations

import os

# Before r0kit builds its plugin host: only the built-in plugins load in tests,
# unless a test asks for autoload (see the ``autoload`` fixture).
os.environ["R0KIT_DISABLE_AUTOLOAD"] = "1"
os.environ.pop("R0KIT_LOAD_PLUGINS", None)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402  (importing torch does not import triton)

# Triton decides between compiling and interpreting when it is first imported, so the
# CPU interpreter has to be chosen here, before any test module imports it. Only the
# kernel tests that force R0KIT_KERNELS=triton use it; "auto" runs the torch reference
# on CPU tensors.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from r0kit.plugins import reset_host  # noqa: E402


@pytest.fixture
def fresh_host():
    """A plugin host rebuilt for this test from the current environment, and forgotten after it."""
    from r0kit.plugins import get_host

    reset_host()
    yield get_host
    reset_host()


@pytest.fixture
def autoload(monkeypatch, fresh_host):
    """Turn entry-point autoload on for one test."""
    monkeypatch.delenv("R0KIT_DISABLE_AUTOLOAD", raising=False)
    reset_host()
    return fresh_host


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op torch thread for each test, restored after it.

    The suite's tensors and models are tiny, so a second thread only adds
    waiting; and the suite runs one pytest-xdist worker per core, where more
    threads per worker oversubscribe the machine (10-20x slower on 2 cores).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seeded_torch_rng():
    """torch's global RNG seeded at each test's start.

    Without it a test's random inputs depend on which tests ran before it in its
    pytest-xdist worker, so a tolerance that a rare draw breaks fails in one full
    run and passes alone.
    """
    import torch

    torch.manual_seed(0)


def _tiny_pipeline(folder: Path, kind: str, **options) -> Path:
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from r0kit.testing.pipelines import build_tiny_pipeline

    return build_tiny_pipeline(folder, kind, **options)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """A tiny Stable Diffusion pipeline folder (seed 0)."""
    return _tiny_pipeline(tmp_path_factory.mktemp("tiny") / "sd", "sd")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    """A tiny SDXL pipeline folder (seed 0)."""
    return _tiny_pipeline(tmp_path_factory.mktemp("tiny") / "sdxl", "sdxl")


@pytest.fixture(scope="session")
def sd_model(tiny_sd):
    """The tiny SD pipeline loaded by folder path (shared: do not change its memory options)."""
    from r0kit.diffusion import load

    return load(str(tiny_sd), device="cpu")


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory) -> Path:
    """A tiny Stable Diffusion 3 pipeline folder (CLIP-L, CLIP-G, T5; SD3's scheduler, shift 3)."""
    return _tiny_pipeline(tmp_path_factory.mktemp("tiny") / "sd3", "sd3")


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory) -> Path:
    """A tiny FLUX.1-schnell-style pipeline folder (no guidance embedding, static shift 1)."""
    return _tiny_pipeline(tmp_path_factory.mktemp("tiny") / "flux", "flux")


@pytest.fixture(scope="session")
def tiny_flux_dev(tmp_path_factory) -> Path:
    """A tiny FLUX.1-dev-style pipeline folder: guidance embedding and the resolution-dependent shift."""
    from r0kit.testing.pipelines import FLOW_SCHEDULER_CONFIGS

    return _tiny_pipeline(
        tmp_path_factory.mktemp("tiny") / "flux-dev", "flux", transformer_options={"guidance_embeds": True},
        scheduler=FLOW_SCHEDULER_CONFIGS["black-forest-labs/FLUX.1-dev"],
    )
