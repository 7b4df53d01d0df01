"""One rank of an FSDP2 training run on the CPU (run by tests/train/test_distributed.py under torchrun).

accelerate applies FSDP only on accelerators; on the CPU its ``prepare`` gives DDP. Here
``Accelerator.prepare`` shards the network the way accelerate's FSDP2 plugin does
(``fully_shard`` on each of the model's ``_no_split_modules`` blocks, then on the root; the
optimizer's parameters swapped for the sharded ones), so the loop's FSDP2 paths run unchanged.

usage: accelerate launch --multi_gpu --num_processes 2 _fsdp_worker.py CONFIG.toml [--max-steps N] [--resume]
"""

from __future__ import annotations

import argparse

import accelerate


def fsdp2_prepare(self, model, optimizer):
    from torch.distributed.fsdp import fully_shard

    names = {id(p): n for n, p in model.named_parameters()}
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(model)
    sharded = dict(model.named_parameters())
    for group in optimizer.param_groups:
        group["params"] = [sharded[names[id(p)]] for p in group["params"]]
    return model, optimizer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args()
    accelerate.Accelerator.prepare = fsdp2_prepare

    import r0kit
    from r0kit.sharding import is_sharded
    from r0kit.train import load_train_config, train

    cfg = load_train_config(args.config)
    cfg.ema.enabled = True
    cfg.sample_every = 3
    cfg.checkpoint_every = 1
    cfg.export = True
    gen = r0kit.generator("kstep", **cfg.generator.options())
    result = train(cfg, generator=gen, max_steps=args.max_steps, resume="latest" if args.resume else None)
    print(f"step: {result.step} sharded: {any(is_sharded(q) for q in gen.parameters())}", flush=True)


if __name__ == "__main__":
    main()
