"""The mini world's models in the real on-disk formats, and the conversions between them.

* The tokenizer is a CLIP BPE tokenizer (``vocab.json`` + ``merges.txt``, the
  ``transformers.CLIPTokenizer`` layout) whose merges make every word of the
  grammar one token; any other text falls back to byte tokens.
* The CLIP is an open_clip ``CLIP`` saved as open_clip's hub repositories are
  (``open_clip_config.json`` + ``open_clip_model.safetensors`` + the tokenizer
  files), so ``open_clip.create_model("local-dir:" + folder)`` loads it.
* :func:`openclip_to_hf` converts it to a ``transformers.CLIPModel`` (the layout
  of ``openai/clip-vit-large-patch14``); the diffusion pipeline's text encoder
  is that model's text tower (cut to its embeddings, see ``build.build_text_encoder``),
  as Stable Diffusion's is OpenAI CLIP's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

#: Token budget of the mini world's text towers (the longest grammar prompt is 9 words + 2 specials).
CONTEXT_LENGTH = 16


def _learn_merges(words: Sequence[str]) -> list[tuple[str, str]]:
    """Byte-pair encoding's training loop (Sennrich et al. 2016) on ``words``, each counted once, until every
    word is one symbol: merge the most frequent adjacent pair, ties broken by the pair's text.

    Written out rather than taken from the ``tokenizers`` trainer, which does not break ties in a fixed
    order: the same words gave different merges (and so different models) in two runs of one process.
    """
    spelled = [tuple(w[:-1]) + (w[-1] + "</w>",) for w in words]
    merges: list[tuple[str, str]] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for symbols in spelled:
            for pair in zip(symbols, symbols[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        merged = best[0] + best[1]
        out = []
        for symbols in spelled:
            new, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    new.append(merged)
                    i += 2
                else:
                    new.append(symbols[i])
                    i += 1
            out.append(tuple(new))
        spelled = out


def write_tokenizer(folder: str | Path, words: Iterable[str], *, max_length: int = CONTEXT_LENGTH) -> Path:
    """Write a CLIP BPE tokenizer whose merges spell each of ``words`` as one token.

    The vocabulary is CLIP's layout: the 256 byte characters, the same with
    ``</w>`` (end of word), the merged tokens, then ``<|startoftext|>`` and
    ``<|endoftext|>`` last, so the end-of-text token has the highest id (open_clip
    pools the text tower at the argmax token, as OpenAI CLIP does). The merges are
    learned by BPE on the words until no pair is left, so encoding any of the words
    replays its training merges into one token.
    """
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    words = sorted(set(words))
    from r0kit.testing.pipelines import _bytes_to_unicode  # CLIP's byte map, kept once

    chars = list(_bytes_to_unicode().values())
    merges = _learn_merges(words)
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)
    for word in words:
        ids = tok(word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"the tokenizer spells {word!r} as {len(ids)} tokens")
    tok.save_pretrained(str(folder))
    return folder


#: Transformer layers of the world CLIP's (vision, text) towers.
CLIP_LAYERS: tuple[int, int] = (3, 3)


def open_clip_config(
    vocab_size: int, *, image_size: int, embed_dim: int = 96, width: int = 96, layers: tuple[int, int] = CLIP_LAYERS
) -> dict[str, Any]:
    """The mini CLIP's ``open_clip_config.json`` (open_clip's hub schema: ``model_cfg`` + ``preprocess_cfg``).

    A ViT with 4-px patches (an 8×8 grid at 32 px) and a causal text transformer, ``layers``
    deep (vision, text), with 32-wide attention heads.
    """
    from r0kit.images import CLIP_MEAN, CLIP_STD

    return {
        "model_cfg": {
            "embed_dim": embed_dim,
            "vision_cfg": {"image_size": image_size, "layers": layers[0], "width": width, "head_width": 32, "patch_size": 4},
            "text_cfg": {
                "context_length": CONTEXT_LENGTH,
                "vocab_size": vocab_size,
                "width": width,
                "heads": width // 32,
                "layers": layers[1],
                # Any non-empty name makes open_clip use the tokenizer files of the model folder.
                "hf_tokenizer_name": "r0kit-mini",
            },
        },
        "preprocess_cfg": {
            "size": image_size,
            "mode": "RGB",
            "mean": list(CLIP_MEAN),
            "std": list(CLIP_STD),
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        },
    }


def openclip_to_hf(model: torch.nn.Module, cfg: dict[str, Any], tokenizer: Any):
    """A ``transformers.CLIPModel`` with the weights of an open_clip ``CLIP`` (same outputs, fp32).

    The key mapping is the one of transformers' ``convert_clip_original_pytorch_to_hf.py``:
    fused ``in_proj`` attention weights are split into ``q/k/v_proj``, and the
    projections are transposed.
    """
    from transformers import CLIPConfig, CLIPModel

    mc = cfg["model_cfg"]
    v, t = mc["vision_cfg"], mc["text_cfg"]
    config = CLIPConfig(
        text_config=dict(
            vocab_size=t["vocab_size"],
            hidden_size=t["width"],
            intermediate_size=4 * t["width"],
            num_hidden_layers=t["layers"],
            num_attention_heads=t["heads"],
            max_position_embeddings=t["context_length"],
            hidden_act="gelu",
            layer_norm_eps=1e-5,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=mc["embed_dim"],
        ),
        vision_config=dict(
            hidden_size=v["width"],
            intermediate_size=4 * v["width"],
            num_hidden_layers=v["layers"],
            num_attention_heads=v["width"] // v["head_width"],
            image_size=v["image_size"],
            patch_size=v["patch_size"],
            hidden_act="gelu",
            layer_norm_eps=1e-5,
            projection_dim=mc["embed_dim"],
        ),
        projection_dim=mc["embed_dim"],
    )
    hf = CLIPModel(config).eval()
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}

    def blocks(src: str, dst: str, n: int) -> None:
        for i in range(n):
            s, d = f"{src}.{i}", f"{dst}.{i}"
            q, k, vv = sd[f"{s}.attn.in_proj_weight"].chunk(3)
            qb, kb, vb = sd[f"{s}.attn.in_proj_bias"].chunk(3)
            out.update({
                f"{d}.self_attn.q_proj.weight": q, f"{d}.self_attn.q_proj.bias": qb,
                f"{d}.self_attn.k_proj.weight": k, f"{d}.self_attn.k_proj.bias": kb,
                f"{d}.self_attn.v_proj.weight": vv, f"{d}.self_attn.v_proj.bias": vb,
                f"{d}.self_attn.out_proj.weight": sd[f"{s}.attn.out_proj.weight"],
                f"{d}.self_attn.out_proj.bias": sd[f"{s}.attn.out_proj.bias"],
                f"{d}.layer_norm1.weight": sd[f"{s}.ln_1.weight"], f"{d}.layer_norm1.bias": sd[f"{s}.ln_1.bias"],
                f"{d}.layer_norm2.weight": sd[f"{s}.ln_2.weight"], f"{d}.layer_norm2.bias": sd[f"{s}.ln_2.bias"],
                f"{d}.mlp.fc1.weight": sd[f"{s}.mlp.c_fc.weight"], f"{d}.mlp.fc1.bias": sd[f"{s}.mlp.c_fc.bias"],
                f"{d}.mlp.fc2.weight": sd[f"{s}.mlp.c_proj.weight"], f"{d}.mlp.fc2.bias": sd[f"{s}.mlp.c_proj.bias"],
            })

    out["text_model.embeddings.token_embedding.weight"] = sd["token_embedding.weight"]
    out["text_model.embeddings.position_embedding.weight"] = sd["positional_embedding"]
    blocks("transformer.resblocks", "text_model.encoder.layers", t["layers"])
    out["text_model.final_layer_norm.weight"] = sd["ln_final.weight"]
    out["text_model.final_layer_norm.bias"] = sd["ln_final.bias"]
    out["text_projection.weight"] = sd["text_projection"].t()
    out["vision_model.embeddings.class_embedding"] = sd["visual.class_embedding"]
    out["vision_model.embeddings.patch_embedding.weight"] = sd["visual.conv1.weight"]
    out["vision_model.embeddings.position_embedding.weight"] = sd["visual.positional_embedding"]
    out["vision_model.pre_layrnorm.weight"] = sd["visual.ln_pre.weight"]
    out["vision_model.pre_layrnorm.bias"] = sd["visual.ln_pre.bias"]
    blocks("visual.transformer.resblocks", "vision_model.encoder.layers", v["layers"])
    out["vision_model.post_layernorm.weight"] = sd["visual.ln_post.weight"]
    out["vision_model.post_layernorm.bias"] = sd["visual.ln_post.bias"]
    out["visual_projection.weight"] = sd["visual.proj"].t()
    out["logit_scale"] = sd["logit_scale"]
    missing, unexpected = hf.load_state_dict(out, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"open_clip -> transformers CLIP: missing {missing}, unexpected {unexpected}")
    return hf


def image_embeds(hf_clip: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected image features ``[B, D]`` of a ``transformers.CLIPModel`` (a tensor in transformers 4,
    an output object in 5)."""
    out = hf_clip.get_image_features(pixel_values=pixel_values)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def write_preprocessor_config(folder: str | Path, image_size: int) -> None:
    """``preprocessor_config.json`` of ``CLIPImageProcessor`` at the mini world's size."""
    from r0kit.images import CLIP_MEAN, CLIP_STD

    cfg = {
        "crop_size": {"height": image_size, "width": image_size},
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "do_convert_rgb": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "image_processor_type": "CLIPImageProcessor",
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": image_size},
    }
    Path(folder, "preprocessor_config.json").write_text(json.dumps(cfg, indent=2))
