"""R0 learns in the mini world: a short run raises the held-out judge's accuracy over the 4-step base."""

from __future__ import annotations

import statistics

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")


@pytest.mark.slow
def test_short_r0_run_beats_the_4_step_base_on_held_out_prompts(tmp_path):
    """The mini preset for STEPS steps, against the same 4-step generator before training (no guidance,
    as R0 samples), on the 40 held-out prompts under 3 noise seed sets. The committed models measure a
    gain of 0.058 (0.075 / 0.125 / 0.075 to 0.125 / 0.15 / 0.175) against a seed spread of 0.029; on the
    previous build, whose base ignored position words, it was 0.017 against 0.014."""
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
