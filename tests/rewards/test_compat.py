"""The upstream compatibility shim patches only inside its block, and undoes everything."""

from __future__ import annotations

import gzip
import sys

import pytest

from r0kit.compat import upstream


def _state():
    import transformers.modeling_utils as mu

    return {
        "gzip.open": gzip.open,
        "clip": sys.modules.get("clip"),
        "pkg_resources": sys.modules.get("pkg_resources"),
        "apply_chunking_to_forward": getattr(mu, "apply_chunking_to_forward", None),
        "find_pruneable_heads_and_indices": getattr(mu, "find_pruneable_heads_and_indices", None),
        "prune_linear_layer": getattr(mu, "prune_linear_layer", None),
        "get_head_mask": mu.PreTrainedModel.__dict__.get("get_head_mask"),
        "invert_attention_mask": mu.PreTrainedModel.__dict__.get("invert_attention_mask"),
        "init_weights": mu.PreTrainedModel.__dict__.get("init_weights"),
    }


def test_patches_inside_and_restores_on_exit():
    pytest.importorskip("transformers")
    import transformers.modeling_utils as mu

    before = _state()
    with upstream.upstream_compat():
        assert gzip.open is not before["gzip.open"]
        assert callable(mu.apply_chunking_to_forward) and callable(mu.prune_linear_layer)
        assert hasattr(mu.PreTrainedModel, "get_head_mask") and hasattr(mu.PreTrainedModel, "invert_attention_mask")
        import clip  # noqa: F401  (the real package or the stand-in)
        import pkg_resources

        assert hasattr(pkg_resources, "packaging")
    assert _state() == before


def test_restores_on_error():
    before = _state()
    with pytest.raises(RuntimeError, match="boom"):
        with upstream.upstream_compat():
            raise RuntimeError("boom")
    assert _state() == before


def test_bpe_redirect_only_for_the_missing_hpsv2_file(tmp_path):
    pytest.importorskip("open_clip")
    missing = tmp_path / "site" / "hpsv2" / "src" / "open_clip" / "bpe_simple_vocab_16e6.txt.gz"
    other = tmp_path / "other.txt.gz"
    with upstream.upstream_compat():
        with gzip.open(missing) as f:
            assert f.read(20)  # served from open_clip's copy
        with pytest.raises(FileNotFoundError):
            gzip.open(other)


def test_restored_transformers_helpers_behave_like_4x():
    torch = pytest.importorskip("torch")
    heads, index = upstream.find_pruneable_heads_and_indices({1}, n_heads=3, head_size=2, already_pruned_heads=set())
    assert heads == {1} and index.tolist() == [0, 1, 4, 5]

    class M:
        dtype = torch.float32

    mask = upstream._invert_attention_mask(M(), torch.tensor([[1, 0]]))
    assert mask.shape == (1, 1, 1, 2) and mask[0, 0, 0, 0] == 0 and mask[0, 0, 0, 1] == torch.finfo(torch.float32).min
    assert upstream._get_head_mask(M(), None, 3) == [None, None, None]
    assert upstream._get_head_mask(M(), torch.ones(2), 3).shape == (3, 1, 2, 1, 1)


def test_stub_clip_says_what_to_install():
    stub = upstream._stub_clip()
    with pytest.raises(ImportError, match="openai/CLIP"):
        stub.load("ViT-L/14")


@pytest.mark.upstream
def test_upstream_packages_import_inside_and_run_after_import():
    pytest.importorskip("hpsv2")
    pytest.importorskip("fairscale")
    with upstream.upstream_compat():
        import hpsv2.src.open_clip.tokenizer as hps_tok
        import ImageReward  # noqa: F401

        assert hps_tok.tokenize(["a cat"]).shape == (1, 77)
    assert "clip" not in sys.modules or sys.modules["clip"].__doc__ is None or "Stand-in" not in sys.modules["clip"].__doc__
