"""The loop's best-iterate, batching, interruption and sharding logic (weight-free)."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager

import pytest
import torch

import r0kit
from r0kit.objective import Term
from r0kit.optimize import merge_results, optimize, optimize_prompts, shard_prompts

RAW = r0kit.RewardContract(size=None, crop="none", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), needs_prompt=False)


def _scripted(values: list[list[float]]):
    """A reward whose per-sample value at evaluation k is values[k], with the gradient of the image mean."""
    calls = {"n": 0}

    def f(x, prompts):
        k = calls["n"]
        calls["n"] += 1
        m = x.mean(dim=(1, 2, 3))
        return m - m.detach() + torch.tensor(values[min(k, len(values) - 1)])

    return Term(kind="reward", name="scripted", module=f, contract=RAW)


def test_best_iterate_is_kept_per_sample():
    vals = [[0.0, 5.0], [3.0, 1.0], [1.0, 6.0], [2.0, 2.0]]
    gen = r0kit.generator("pixel", height=4, width=4)
    seen = []
    res = optimize(r0kit.Objective([_scripted(vals)]), gen, ["a", "b"], steps=3, optimizer="adam", lr=0.5,
                   callback=lambda i: seen.append(i.images.clone()))
    assert res.best_step == [1, 2]
    assert res.best_values["total"] == [3.0, 6.0]
    torch.testing.assert_close(res.images[0], seen[1][0])
    torch.testing.assert_close(res.images[1], seen[2][1])
    assert not torch.allclose(seen[1][0], seen[2][0])  # the parameters did move


def test_ctrl_c_keeps_the_best_so_far():
    gen = r0kit.generator("pixel", height=4, width=4)

    def cb(info):
        if info.step == 2:
            raise KeyboardInterrupt

    obj = r0kit.reward("colorfulness")
    res = optimize(obj, gen, ["a"], steps=10, optimizer="adam", lr=0.1, callback=cb)
    assert res.stopped.startswith("interrupted") and len(res.history) == 3 and res.images.shape == (1, 3, 4, 4)


def test_callback_can_stop():
    gen = r0kit.generator("pixel", height=4, width=4)
    res = optimize(r0kit.reward("contrast"), gen, ["a"], steps=10, callback=lambda i: i.step == 1)
    assert "by the callback" in res.stopped and len(res.history) == 2


def test_batches_merge_and_use_global_seeds():
    gen = r0kit.generator("pixel", height=4, width=4)
    obj = r0kit.reward("colorfulness") + r0kit.reward("contrast")
    prompts = ["p0", "p1", "p2"]
    res = optimize_prompts(obj, gen, prompts, batch_size=2, seed=7, steps=2, optimizer="adam", lr=0.1)
    assert res.prompts == prompts and res.indices == [0, 1, 2] and res.images.shape == (3, 3, 4, 4)
    assert len(res.history) == 3 and all(len(r["values"]["total"]) == 3 for r in res.history)
    # the batch holding p2 alone was prepared with seed 7 + 2
    alone = optimize(obj, gen, ["p2"], seed=9, steps=2, optimizer="adam", lr=0.1)
    torch.testing.assert_close(res.images[2], alone.images[0])
    with pytest.raises(r0kit.OptionError, match="batch_size"):
        optimize_prompts(obj, gen, prompts, batch_size=0)


def test_interrupt_stops_the_remaining_batches():
    gen = r0kit.generator("pixel", height=4, width=4)

    def cb(info):
        raise KeyboardInterrupt

    res = optimize_prompts(r0kit.reward("contrast"), gen, ["a", "b", "c"], batch_size=1, steps=3, callback=cb)
    assert res.prompts == ["a"] and "interrupted" in res.stopped


def test_merge_pads_a_batch_that_stopped_early():
    gen = r0kit.generator("pixel", height=4, width=4)
    obj = r0kit.reward("contrast")
    a = optimize(obj, gen, ["a"], steps=3)
    b = optimize(obj, gen, ["b"], steps=1)
    b.stops = ["stopped at step 1: stopped by the callback"]
    b.indices = [1]
    m = merge_results([a, b])
    assert len(m.history) == 4 and m.history[3]["values"]["total"] == [a.history[3]["values"]["total"][0], None]
    assert m.stopped == f"prompt 1: stopped at step 1: stopped by the callback; kept its best iterate (step {b.best_step[0]})"


class _FakeState:
    """accelerate.PartialState's interface, for the split of 5 prompts over 2 ranks."""

    def __init__(self, rank, world):
        self.process_index, self.num_processes, self.device = rank, world, torch.device("cpu")

    @contextmanager
    def split_between_processes(self, items):
        n, k = len(items), self.num_processes
        per, extra = divmod(n, k)
        start = self.process_index * per + min(self.process_index, extra)
        yield items[start : start + per + (1 if self.process_index < extra else 0)]


def test_shard_prompts_covers_every_prompt_once():
    prompts = [f"p{i}" for i in range(5)]
    shards = [shard_prompts(prompts, _FakeState(r, 2)) for r in range(2)]
    assert sorted(i for s in shards for i in s.indices) == list(range(5))
    assert all(s.prompts == [prompts[i] for i in s.indices] for s in shards)
    single = shard_prompts(prompts)
    assert single.indices == list(range(5)) and not single.distributed


def test_shard_prompts_with_accelerate_single_process():
    accelerate = pytest.importorskip("accelerate")
    s = shard_prompts(["a", "b", "c"], accelerate.PartialState(cpu=True))
    assert s.indices == [0, 1, 2] and s.world_size == 1


@pytest.mark.slow
def test_two_process_run_through_accelerate(tmp_path):
    """``accelerate launch`` with two CPU processes (gloo): each rank optimizes its shard."""
    pytest.importorskip("accelerate")
    out = tmp_path / "out"
    env = dict(os.environ, R0KIT_DISABLE_AUTOLOAD="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "r0kit.cli", "optimize",
        "p0", "p1", "p2", "--steps", "3", "--no-progress", "-o", str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    shards = [json.loads((out / f"rank{r}" / "shard.json").read_text()) for r in range(2)]
    assert sorted(i for s in shards for i in s["indices"]) == [0, 1, 2]
    assert [s["world_size"] for s in shards] == [2, 2]
    for s in shards:
        folder = out / f"rank{s['rank']}"
        assert (folder / "log.csv").is_file()
        assert len(list(folder.glob("image*.png"))) == len(s["indices"])
