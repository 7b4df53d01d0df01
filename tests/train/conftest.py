"""Training-test helpers: a second tiny pipeline (seed 1), a fresh model per test, k-step generators, configs.

The seed-0 pipeline ``tiny_sd`` comes from tests/conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

SIZE = 16  # image side; the tiny VAE downsamples by 2, so latents are 8x8x4


@pytest.fixture(scope="session")
def tiny_sd_other(tmp_path_factory) -> Path:
    from r0kit.testing.pipelines import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny_other") / "sd", "sd", seed=1)


@pytest.fixture
def tiny_model(tiny_sd):
    """A freshly loaded tiny model (a LoRA generator adds its adapter to the UNet it gets)."""
    from r0kit.diffusion import load

    return load(str(tiny_sd), device="cpu")


def kstep(model, **kw):
    from r0kit_r0 import KStepGenerator

    opts = dict(model=model, height=SIZE, width=SIZE, lora_rank=4, device="cpu")
    opts.update(kw)
    return KStepGenerator(**opts)


def train_config(model: Path, output: Path, **over):
    """A small training config for the tiny model with weight-free rewards."""
    from r0kit.train import parse_train

    data = {
        "prompts": ["a red apple", "a blue car", "a green tree", "a yellow sun", "a white cat"],
        "seed": 3,
        "steps": 4,
        "batch_size": 2,
        "output": str(output),
        "generator": {"model": str(model), "steps": 3, "height": SIZE, "width": SIZE, "lora_rank": 4, "device": "cpu"},
        "optimizer": {"lr": 1e-2, "grad_clip": 1.0},
        "objective": {
            "normalize_gradients": True,
            "rewards": {"colorfulness": {"weight": 1.0}, "contrast": {"weight": 0.5}},
            "regularizers": {"weight_l2": {"weight": 1e-3}},
        },
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    return parse_train(data, "<test>")
