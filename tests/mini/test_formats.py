"""The conversions the mini world's build relies on, checked on random weights (no build needed)."""

from __future__ import annotations

import json

import pytest
import torch

from r0kit.mini import formats
from r0kit.mini import world as W

pytest.importorskip("open_clip")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    formats.write_tokenizer(folder, W.vocabulary())
    from transformers import CLIPTokenizer

    vocab = len(CLIPTokenizer.from_pretrained(str(folder)).get_vocab())
    (folder / "open_clip_config.json").write_text(json.dumps(formats.open_clip_config(vocab, image_size=W.RESOLUTION)))
    return folder


def test_tokenizer_merges_every_word_and_falls_back_to_bytes(clip_folder):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(clip_folder))
    vocab = tok.get_vocab()
    assert vocab["<|endoftext|>"] == max(vocab.values())  # open_clip pools at the argmax token
    assert all(len(tok(w, add_special_tokens=False)["input_ids"]) == 1 for w in W.vocabulary())
    assert len(tok("zebra", add_special_tokens=False)["input_ids"]) > 1  # unknown words still tokenize


def test_open_clip_to_transformers_conversion_keeps_every_output(clip_folder):
    import open_clip
    from transformers import CLIPTokenizer

    torch.manual_seed(0)
    oc = open_clip.create_model("local-dir:" + str(clip_folder), load_weights=False).eval()
    with torch.no_grad():  # non-trivial weights everywhere (LayerNorms included)
        for p in oc.parameters():
            p.add_(0.05 * torch.randn_like(p))
    cfg = json.loads((clip_folder / "open_clip_config.json").read_text())
    hf = formats.openclip_to_hf(oc, cfg, CLIPTokenizer.from_pretrained(str(clip_folder)))
    x = torch.randn(3, 3, W.RESOLUTION, W.RESOLUTION)
    ids = open_clip.get_tokenizer("local-dir:" + str(clip_folder))(["a red circle", "two blue squares above", "x"])
    with torch.no_grad():
        img_oc, img_hf = oc.encode_image(x), formats.image_embeds(hf, x)
        txt_oc = oc.encode_text(ids)
        out = hf.get_text_features(input_ids=ids)
        txt_hf = out if isinstance(out, torch.Tensor) else out.pooler_output
    torch.testing.assert_close(img_hf, img_oc, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(txt_hf, txt_oc, rtol=1e-4, atol=1e-5)
    assert float(img_oc.std()) > 0.1  # not a degenerate comparison
