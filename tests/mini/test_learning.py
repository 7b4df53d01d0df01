"""Does R0 learn in the mini world? A short run must raise the held-out judge's accuracy over the 4-step base."""

from __future__ import annotations

import statistics

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="among the base's own samples the world's rewards do not follow the judge's shape check (within-prompt "
    "correlation HPS +0.03, CLIP -0.07: benchmarks/results/mini_reward_agreement_cpu.csv), and shape gates every other "
    "check, so R0 does not raise the judge over its own starting point by more than the seed spread: 0.225 / 0.25 / 0.325 "
    "before, 0.35 / 0.275 / 0.275 after (gain 0.033, spread 0.052)",
)
def test_short_r0_run_beats_the_4_step_base_on_held_out_prompts(tmp_path):
    """The mini preset for STEPS steps, against the same 4-step generator before training (no guidance,
    as R0 samples), on the 40 held-out prompts under 3 noise seed sets, must gain more than the seed spread.

    It passed on the previous build (0.075 / 0.125 / 0.075 to 0.125 / 0.15 / 0.175), whose base drew a blob
    for every shape; R0 traded shape for the position words that base ignored. The committed base (``unet_lr``
    2e-3) draws the named shape and position, and on it the same run measures a gain of 0.033 against a
    seed spread of 0.052 (−0.025 before the reward caches encoded each prompt alone, which changed the
    run's last bits; strict xfail: it fails loudly once rewards that teach this base make it pass)."""
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
