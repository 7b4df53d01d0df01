"""Weight resolution (path > HF cache > download) and safe checkpoint loading."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from r0kit.errors import WeightsError
from r0kit.weights import load_state_dict, resolve_file, resolve_repo


def _fake_cache(root, repo_id, filename, payload=b"weights"):
    """Lay out a Hugging Face hub cache entry the way huggingface_hub writes it."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / filename).write_bytes(payload)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snap / filename


def test_explicit_path_wins(tmp_path):
    f = tmp_path / "model.pt"
    f.write_bytes(b"x")
    assert resolve_file("org/repo", "model.pt", path=f) == f
    assert resolve_file("org/repo", "model.pt", path=tmp_path) == f
    assert resolve_file(str(tmp_path), "model.pt") == f
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_file("org/repo", "model.pt", path=tmp_path / "other.pt")


def test_hf_cache_is_used_offline(tmp_path, monkeypatch):
    cached = _fake_cache(tmp_path, "org/repo", "model.pt")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    assert resolve_file("org/repo", "model.pt").resolve() == cached.resolve()


def test_offline_miss_names_repo_file_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsError) as exc:
        resolve_file("xswu/HPSv2", "HPS_v2.1_compressed.pt", what="HPS v2.1 checkpoint")
    msg = str(exc.value)
    assert "xswu/HPSv2/HPS_v2.1_compressed.pt" in msg and "HF_HUB_OFFLINE" in msg
    assert "hf download xswu/HPSv2 HPS_v2.1_compressed.pt" in msg
    with pytest.raises(WeightsError, match="hf download stabilityai/sd-turbo"):
        resolve_repo("stabilityai/sd-turbo")
    with pytest.raises(WeightsError, match="local folder"):
        resolve_repo(str(tmp_path / "no" / "such" / "folder"))


def test_load_state_dict_safetensors_and_torch(tmp_path):
    sd = {"w": torch.arange(6.0).view(2, 3)}
    save_file(sd, tmp_path / "a.safetensors")
    torch.save(sd, tmp_path / "a.pt")
    for name in ("a.safetensors", "a.pt"):
        torch.testing.assert_close(load_state_dict(tmp_path / name)["w"], sd["w"])


def test_corrupt_and_unsafe_checkpoints_are_refused(tmp_path):
    (tmp_path / "trunc.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(WeightsError, match="trunc.safetensors.*corrupt"):
        load_state_dict(tmp_path / "trunc.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(WeightsError, match="junk.pt"):
        load_state_dict(tmp_path / "junk.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="evil.pt"):
        load_state_dict(tmp_path / "evil.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="not a state dict"):
        load_state_dict(tmp_path / "list.pt")
