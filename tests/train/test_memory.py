"""``r0kit train --dry-run``: the memory estimate, from configs on the meta device."""

from __future__ import annotations

import pytest
import torch

from r0kit.memory import _fused_attention, _measure, estimate_training

from .conftest import SIZE, kstep, train_config


def _cfg(folder, tmp_path, **over):
    gen = {"max_sequence_length": 24, **over.pop("generator", {})}
    return train_config(folder, tmp_path / "run", generator=gen, **over)


@pytest.mark.parametrize("kind", ["sd", "sd3", "flux"])
@pytest.mark.parametrize("train_mode", ["lora", "full"])
def test_parameter_counts_are_those_of_the_loaded_model(kind, train_mode, tiny_sd, tiny_sd3, tiny_flux, tmp_path):
    from r0kit.diffusion import load

    folder = {"sd": tiny_sd, "sd3": tiny_sd3, "flux": tiny_flux}[kind]
    est = estimate_training(_cfg(folder, tmp_path, generator={"train": train_mode}))
    m = load(str(folder), device="cpu", max_sequence_length=24)
    want = {"backbone": m.backbone, "vae": m.vae}
    want.update({f"text_encoder{'' if i == 0 else f'_{i + 1}'}": e for i, e in enumerate(m.text_encoders)})
    want = {k: sum(p.numel() for p in v.parameters()) for k, v in want.items()}
    gen = kstep(m, steps=4, train=train_mode)
    assert est.trainable == sum(p.numel() for p in gen.parameters())
    assert est.params == (want if train_mode == "full" else {**want, "LoRA": est.trainable})
    assert est.grads == est.reference == 4 * est.trainable and est.optimizer == 2 * 4 * est.trainable  # fp32, AdamW
    assert not any(p.device.type == "meta" for p in gen.parameters())  # nothing of the estimate leaked


def test_activations_are_what_autograd_saves_in_a_real_forward(tiny_flux):
    """The meta-device measurement equals the same measurement on real CPU tensors."""
    from r0kit.diffusion import load

    m = load(str(tiny_flux), device="cpu", max_sequence_length=24)
    cond = m.encode_prompts(["a red apple", "a blue car"])

    def measured(device):
        net = m.backbone.to(device)
        m.device = torch.device(device)
        m._ids.clear()
        with torch.device(device):
            x = torch.zeros(2, 4, 8, 8, requires_grad=True)
            t = torch.full((2,), 999.0)
        c = type(cond)(cond.embeds.to(device), cond.pooled.to(device))
        return _measure(net, lambda: m._forward(x, t, c, 1.0))

    real = measured("cpu")
    meta = measured("meta")
    assert real == meta and real[0] > 0 and sum(real[1]) > 0 and len(real[1]) == 2  # one double, one single block


def test_fused_attention_keeps_no_n_by_n_matrix():
    q = torch.zeros(1, 2, 64, 8, requires_grad=True)
    net = torch.nn.Identity()
    with _fused_attention():
        out, _, _ = _measure(net, lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q))
    assert out == q.numel() * 4 * 2 + 64 * 2 * 4  # q (k, v are q), the output and a float32 log-sum-exp per query
    assert torch.nn.functional.scaled_dot_product_attention.__name__ == "scaled_dot_product_attention"  # restored


def test_checkpointing_batch_and_resolution(tiny_sd3, tmp_path):
    base = estimate_training(_cfg(tiny_sd3, tmp_path, batch_size=1))
    assert base.activations_ckpt < base.activations
    double = estimate_training(_cfg(tiny_sd3, tmp_path, batch_size=2))
    assert 1.8 < double.activations / base.activations < 2.2
    big = estimate_training(_cfg(tiny_sd3, tmp_path, batch_size=1, generator={"height": 4 * SIZE, "width": 4 * SIZE}))
    assert big.per_eval["VAE decode"] > 12 * base.per_eval["VAE decode"]  # 16x the pixels
    sharded = base.total(checkpointing=True, processes=4)
    assert base.total(checkpointing=True) - sharded == base.shardable - base.shardable // 4


def test_real_size_architectures_have_their_published_sizes(tmp_path):
    from r0kit.testing.pipelines import write_architecture

    est = estimate_training(train_config(write_architecture(tmp_path / "sd3", "sd3-medium"), tmp_path / "o",
                                         mixed_precision="bf16", gradient_checkpointing=True, batch_size=1,
                                         generator={"height": 1024, "width": 1024, "lora_rank": 64}))
    b = est.params
    assert round(b["backbone"] / 1e9, 2) == 2.03 and round(b["text_encoder_3"] / 1e9, 2) == 4.76
    assert round(b["text_encoder_2"] / 1e6) == 695 and round(b["text_encoder"] / 1e6) == 124
    assert est.activations_ckpt < est.activations
    flux = estimate_training(train_config(write_architecture(tmp_path / "flux", "flux-schnell"), tmp_path / "o",
                                          batch_size=1, generator={"height": 512, "width": 512}))
    assert round(flux.params["backbone"] / 1e9, 1) == 11.9


def test_cli_dry_run_prints_the_estimate_and_trains_nothing(tiny_flux, tmp_path, capsys):
    from r0kit.cli import main

    toml = tmp_path / "train.toml"
    toml.write_text(f"""
prompts = ["a red apple"]
output = "{tmp_path / 'out'}"
[generator]
model = "{tiny_flux}"
height = {SIZE}
width = {SIZE}
max_sequence_length = 24
[objective.rewards.colorfulness]
""")
    assert main(["train", "--config", str(toml), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "memory estimate" in out and "activations, gradient checkpointing" in out and "FSDP x4" in out
    assert not (tmp_path / "out").exists()
