"""Multi-process training on the CPU: ``accelerate launch`` with 2 gloo processes.

DDP: two processes with batch B give the weights one process gives with batch 2B.
FSDP: accelerate engages its FSDP plugin only on accelerators (on the CPU it falls
back to DDP), so the FSDP2 paths of the loop are run here by sharding the network
with PyTorch's ``fully_shard`` where accelerate would (see ``_fsdp_worker.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from r0kit.train import train

import r0kit

from .conftest import SIZE

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["a red apple", "a blue car", "a green tree", "a yellow sun", "a white cat", "a black dog"]


def _env() -> dict[str, str]:
    path = os.pathsep.join([str(ROOT), str(ROOT / "plugins"), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path, R0KIT_DISABLE_AUTOLOAD="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
                HF_HUB_OFFLINE="1")


def _write_config(path: Path, model: Path, output: Path, *, batch_size: int, eta: float, train_mode: str) -> Path:
    """Plain SGD: the update is linear in the gradient, so the comparison measures the gradients
    (Adam's g/(√v + ε) magnifies the all-reduce's rounding where a gradient is near 0)."""
    path.write_text(f"""
prompts = {PROMPTS!r}
seed = 5
steps = 3
batch_size = {batch_size}
output = "{output}"
export = false
trackers = ["csv"]
[generator]
model = "{model}"
steps = 2
height = {SIZE}
width = {SIZE}
train = "{train_mode}"
lora_rank = 4
eta = [0.0, {eta}]
max_sequence_length = 24
[optimizer]
name = "sgd"
momentum = 0.0
lr = {0.5 if train_mode == "lora" else 0.05}
grad_clip = 1.0
[objective]
normalize_gradients = true
[objective.rewards.colorfulness]
weight = 1.0
[objective.rewards.contrast]
weight = 0.5
[objective.regularizers.weight_l2]
weight = 1e-3
""")
    return path


def _launch(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``accelerate launch`` with 2 processes; without CUDA they are MULTI_CPU (gloo) ranks."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.mark.slow
def test_two_process_ddp_equals_one_process_on_the_combined_batch(tiny_flux, tmp_path):
    """η = 0: every random draw is the global batch's, so the only difference is the gradient all-reduce's rounding."""
    cfg2 = _write_config(tmp_path / "ddp.toml", tiny_flux, tmp_path / "ddp", batch_size=1, eta=0.0, train_mode="lora")
    proc = _launch(["-m", "r0kit.cli", "train", "--config", str(cfg2), "--no-progress"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    from r0kit.train import load_train_config

    single = train(load_train_config(_write_config(tmp_path / "one.toml", tiny_flux, tmp_path / "one", batch_size=2,
                                                   eta=0.0, train_mode="lora")))
    wa = load_file(str(tmp_path / "ddp" / "checkpoints" / "step-0000003" / "trainable.safetensors"))
    wb = load_file(str(single.checkpoint / "trainable.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6, msg=k)
    w0 = dict(r0kit.generator("kstep", **load_train_config(tmp_path / "one.toml").generator.options()).named_parameters())
    assert max(float((wb[k] - w0[k]).abs().max()) for k in wb) > 1e-3  # the weights moved in three steps


@pytest.mark.slow
@pytest.mark.parametrize("train_mode", ["lora", "full"])
def test_fsdp2_sharded_training_equals_one_process_and_resumes_exactly(tiny_flux, tmp_path, train_mode):
    """FSDP2 on 2 gloo processes (parameters, gradients, optimizer state and EMA sharded as DTensors):
    the same weights as one process on the combined batch; checkpoints hold the full tensors; a resumed
    sharded run continues exactly; the sharded export equals the unsharded one."""
    worker = Path(__file__).with_name("_fsdp_worker.py")
    for name, extra in (("fsdp", []), ("fsdp-resumed", ["--max-steps", "2"]), ("fsdp-resumed", ["--resume"])):
        cfg = _write_config(tmp_path / f"{name}.toml", tiny_flux, tmp_path / name, batch_size=1, eta=0.0, train_mode=train_mode)
        proc = _launch([str(worker), str(cfg), *extra], tmp_path)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        assert "sharded: True" in proc.stdout
    from r0kit.train import load_train_config

    single = train(load_train_config(_write_config(tmp_path / "one.toml", tiny_flux, tmp_path / "one", batch_size=2,
                                                   eta=0.0, train_mode=train_mode)))
    final = "step-0000003"
    ws = load_file(str(single.checkpoint / "trainable.safetensors"))
    for name in ("fsdp", "fsdp-resumed"):
        wf = load_file(str(tmp_path / name / "checkpoints" / final / "trainable.safetensors"))
        assert wf.keys() == ws.keys()
        for k in ws:
            torch.testing.assert_close(wf[k], ws[k], rtol=1e-4, atol=1e-6, msg=f"{name}: {k}")
    for f in ("trainable.safetensors", "optimizer.safetensors", "ema.safetensors"):
        a = load_file(str(tmp_path / "fsdp" / "checkpoints" / final / f))
        b = load_file(str(tmp_path / "fsdp-resumed" / "checkpoints" / final / f))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
    assert (tmp_path / "fsdp" / "export" / "kstep.json").is_file()
    assert (tmp_path / "fsdp" / "samples" / "step-0000003.png").is_file()
