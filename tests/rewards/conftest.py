"""Tiny on-disk reward models, built once per session, and a private Hugging Face cache per test."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tiny  # noqa: E402


@dataclass
class Assets:
    root: Path
    open_clip_ckpt: Path  # open_clip_model.safetensors (clip)
    hps_ckpt: Path  # HPS_v2.1_compressed.pt layout: {"state_dict": ...}
    imagereward: Path  # folder: ImageReward.pt, med_config.json, vocab.txt
    hf_clip: Path  # transformers CLIPModel folder (PickScore, aesthetic backbone)
    clip_tokenizer: Path  # vocab.json + merges.txt
    aesthetic_head: Path  # aesthetic-model.pth

    def options(self, name: str) -> dict:
        """Explicit local-path options that load ``name`` from these files."""
        return {
            "clip": {"model": tiny.TINY_OPEN_CLIP, "checkpoint": str(self.open_clip_ckpt), "device": "cpu"},
            "hpsv2": {"model": tiny.TINY_OPEN_CLIP, "checkpoint": str(self.hps_ckpt), "device": "cpu"},
            "imagereward": {
                "checkpoint": str(self.imagereward),
                "tokenizer": str(self.imagereward / "vocab.txt"),
                "device": "cpu",
            },
            "pickscore": {"model": str(self.hf_clip), "processor": str(self.clip_tokenizer), "device": "cpu"},
            "aesthetic": {"clip_model": str(self.hf_clip), "checkpoint": str(self.aesthetic_head), "device": "cpu"},
        }[name]


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> Assets:
    pytest.importorskip("open_clip")
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("reward_assets")
    tiny.register_tiny_open_clip(root / "open_clip_configs")
    oc = tiny.tiny_open_clip(seed=0)
    return Assets(
        root=root,
        open_clip_ckpt=tiny.save_open_clip_checkpoint(oc, root / "clip" / "open_clip_model.safetensors"),
        hps_ckpt=tiny.save_hps_checkpoint(tiny.tiny_open_clip(seed=1), root / "hps" / "HPS_v2.1_compressed.pt"),
        imagereward=tiny.write_imagereward_folder(root / "imagereward"),
        hf_clip=tiny.write_hf_clip_folder(root / "hf_clip"),
        clip_tokenizer=tiny.write_clip_tokenizer(root / "clip_tokenizer"),
        aesthetic_head=tiny.write_aesthetic_head(root / "aesthetic" / "aesthetic-model.pth"),
    )


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty, private Hugging Face cache, offline."""
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def reward_host(fresh_host):
    """The plugin host, rebuilt for this test (the five reward plugins are built-ins)."""
    return fresh_host()
