"""R0 learns in the mini world: a short run raises the held-out judge's accuracy over the 4-step base."""

from __future__ import annotations

import statistics

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="the committed base ignores position words (its objects' mean x is 0.49 under 'on the left' and under "
    "'on the right', 24 samples each) and draws few held-out objects right (shape 0.25 at 4 steps), and on its own samples "
    "the rewards barely rank the right shape first (benchmarks/mini/reward_agreement.py: +0.05 HPS, +0.07 CLIP), so "
    "this run's gain is 0.017 against a seed spread of 0.014, short of the 0.02 asserted; strict, "
    "so this test fails the day R0 clears it and the mark must go",
)
def test_short_r0_run_beats_the_4_step_base_on_held_out_prompts(tmp_path):
    from r0kit.commands.optimize import preset_path
    from r0kit.config import load_toml
    from r0kit.evaluate import _generate
    from r0kit.mini import judge as J
    from r0kit.mini import world as W
    from r0kit.objective import generator as build_generator
    from r0kit.train import parse_train, train

    torch.set_num_threads(2)
    path = preset_path("mini")
    data = load_toml(path)
    data.pop("evaluate")
    data.update(prompts_file=str(path.parent / data["prompts_file"]), steps=STEPS, output=str(tmp_path / "run"), log_every=10)
    cfg = parse_train(data, "mini preset")
    gen = build_generator("kstep", **{**cfg.generator.options(), "device": "cpu"})
    prompts = W.evaluation_prompts("heldout")

    def accuracies() -> list[float]:
        """GenEval accuracy on the held-out prompts, once per noise seed set (the seed spread)."""
        out = []
        for s in range(3):
            images = _generate(gen, prompts, 10_000 * (s + 1), 20)
            out.append(J.accuracy(J.score(prompts, images))["correct"])
        return out

    gen.eval()
    before = accuracies()
    result = train(cfg, generator=gen)
    assert result.step == STEPS
    gen.eval()
    after = accuracies()
    gain = statistics.fmean(after) - statistics.fmean(before)
    spread = max(statistics.stdev(before), statistics.stdev(after))
    print(f"held-out GenEval accuracy: base@4 {before} -> R0@4 {after}; gain {gain:.3f}, seed spread {spread:.3f}")
    assert gain > spread and gain > 0.02


STEPS = 120
