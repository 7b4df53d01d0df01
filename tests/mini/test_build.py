"""The build command is reproducible: the same seed writes byte-identical model files."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("diffusers")
pytest.importorskip("open_clip")


@pytest.mark.slow
def test_quick_build_twice_writes_identical_files(tmp_path):
    from r0kit.mini.build import STAGES, Settings, build

    for name in ("a", "b"):
        times = build(tmp_path / name / "models", Settings.quick(threads=1), STAGES)
        assert set(times) >= set(STAGES)
    a = json.loads((tmp_path / "a" / "models" / "checksums.json").read_text())
    b = json.loads((tmp_path / "b" / "models" / "checksums.json").read_text())
    assert a == b and len(a) >= 20
    assert {k.split("/")[0] for k in a} == {"pipeline", "clip", "hps", "aesthetic", "judge"}
    # a different seed gives different weights
    build(tmp_path / "c" / "models", Settings.quick(threads=1, seed=1), STAGES)
    c = json.loads((tmp_path / "c" / "models" / "checksums.json").read_text())
    assert c["pipeline/unet/diffusion_pytorch_model.safetensors"] != a["pipeline/unet/diffusion_pytorch_model.safetensors"]
