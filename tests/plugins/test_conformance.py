"""Every built-in plugin passes the conformance check.

The weight-free plugins run in every test session. The model-backed rewards
and the diffusers generators run on tiny random-weight models of their real
architectures, saved in the upstream on-disk format and loaded through each
plugin's own loading code (marked ``slow``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from r0kit.plugins import PluginHost
from r0kit.testing import assert_conforms, check_generator, check_regularizer

TESTS = Path(__file__).resolve().parents[1]
WEIGHT_FREE = ("r0kit_analytic", "r0kit_regularizers", "r0kit_pixel")


def _entries(kind: str) -> list[str]:
    host = PluginHost()
    for modname in WEIGHT_FREE:
        assert host.add_plugin(importlib.import_module(modname), name=modname), host.statuses[modname].error
    return [e.name for e in host.registries[kind]]


def test_the_weight_free_plugins_register_something_of_each_kind():
    assert _entries("reward") and _entries("regularizer") and _entries("generator")


@pytest.mark.parametrize("name", _entries("reward"))
def test_builtin_reward_conforms(name):
    assert_conforms(name, kind="reward")


@pytest.mark.parametrize("name", _entries("regularizer"))
def test_builtin_regularizer_conforms(name):
    assert_conforms(name, kind="regularizer")


@pytest.mark.parametrize("name", _entries("generator"))
def test_builtin_generator_conforms(name):
    assert_conforms(name, kind="generator")


def test_pixel_generator_options_conform():
    assert_conforms(check_generator("pixel", height=20, width=36, resolution=8, init="gray"))
    assert_conforms(check_regularizer("tv", p=2, generator="pixel", generator_options={"height": 16, "width": 24}))


# -- model-backed plugins, on tiny weights ------------------------------------------------


def _load(name: str, path: Path):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_rewards():
    pytest.importorskip("open_clip")
    pytest.importorskip("transformers")
    return _load("r0kit_tests_rewards_tiny", TESTS / "rewards" / "tiny.py")


@pytest.mark.slow
def test_clip_conforms_on_a_tiny_open_clip(tmp_path):
    pytest.importorskip("open_clip")
    from r0kit.testing import register_tiny_open_clip, save_tiny_open_clip

    model = register_tiny_open_clip(tmp_path / "configs")
    weights = save_tiny_open_clip(tmp_path / "tiny-clip") / "open_clip_model.safetensors"
    assert_conforms("clip", model=model, checkpoint=str(weights))


@pytest.mark.slow
def test_hpsv2_conforms_on_a_tiny_checkpoint(tmp_path, tiny_rewards):
    tiny_rewards.register_tiny_open_clip(tmp_path / "configs")
    ckpt = tiny_rewards.save_hps_checkpoint(tiny_rewards.tiny_open_clip(seed=1), tmp_path / "HPS_v2.1_compressed.pt")
    assert_conforms("hpsv2", model=tiny_rewards.TINY_OPEN_CLIP, checkpoint=str(ckpt))


@pytest.mark.slow
def test_pickscore_conforms_on_a_tiny_clip(tmp_path, tiny_rewards):
    model = tiny_rewards.write_hf_clip_folder(tmp_path / "pickscore", seed=2)
    processor = tiny_rewards.write_clip_tokenizer(tmp_path / "processor")
    assert_conforms("pickscore", model=str(model), processor=str(processor))


@pytest.mark.slow
def test_aesthetic_conforms_on_a_tiny_clip_and_head(tmp_path, tiny_rewards):
    clip = tiny_rewards.write_hf_clip_folder(tmp_path / "clip", seed=3)
    head = tiny_rewards.write_aesthetic_head(tmp_path / "aesthetic.pth", input_size=16)
    assert_conforms("aesthetic", clip_model=str(clip), checkpoint=str(head))


@pytest.mark.slow
def test_imagereward_conforms_on_a_tiny_checkpoint(tmp_path, tiny_rewards):
    folder = tiny_rewards.write_imagereward_folder(tmp_path / "imagereward", seed=4)
    assert_conforms(
        "imagereward",
        checkpoint=str(folder / "ImageReward.pt"),
        med_config=str(folder / "med_config.json"),
        tokenizer=str(folder),
    )


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_sd):
    return str(tiny_sd)


# Short prompts: the tiny text encoder takes 16 tokens.
SHORT = ["a red cube", "a blue cat"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, options",
    [("noise", {"steps": 1}), ("latent", {}), ("kstep", {"steps": 2})],
)
def test_diffusers_generators_conform_on_a_tiny_pipeline(tiny_pipeline, name, options):
    assert_conforms(check_generator(name, model=tiny_pipeline, height=16, width=16, prompts=SHORT, **options))


@pytest.mark.slow
def test_weight_l2_conforms_on_a_kstep_generator(tiny_pipeline):
    import r0kit

    gen = r0kit.generator("kstep", model=tiny_pipeline, height=16, width=16, steps=2)
    report = check_regularizer("weight_l2", generator=gen, prompts=SHORT)
    assert_conforms(report)
    assert "batch_independence" in report.skipped  # one penalty on the weights, for the whole batch


@pytest.mark.parametrize("name", ["mini_geneval", "mini_fid", "mini_diversity"])
def test_the_mini_world_s_metrics_conform(name):
    """mini_fid drew its reference renders in the order the prompts came, so shuffling a set changed its FID."""
    pytest.importorskip("open_clip")
    from r0kit.mini import world as W
    from r0kit.testing import check_metric

    assert_conforms(check_metric(name, sizes=((32, 32),), prompts=W.evaluation_prompts("heldout")[:4]))


class _BrokenMetric:
    """A metric that breaks every metric check at once."""

    min_images_per_prompt = 0

    def __call__(self, images, prompts):
        images.mul_(0.5)
        return {"first": float("nan"), "order": float(images[0].sum())}


def test_the_metric_checks_name_each_failure():
    from r0kit.testing import check_metric

    report = check_metric(_BrokenMetric())
    assert set(report.failures) == {"needs"}, report  # the declared needs are checked first
    _BrokenMetric.min_images_per_prompt = 1
    try:
        report = check_metric(_BrokenMetric())
    finally:
        _BrokenMetric.min_images_per_prompt = 0
    assert set(report.failures) >= {"output", "inputs_unchanged", "determinism", "order"}, report
    assert "'first' is nan" in report.failures["output"]
    assert "changed the images" in report.failures["inputs_unchanged"]


def test_the_metric_check_meets_a_declared_need_of_three_images_per_prompt():
    from collections import Counter

    from r0kit.testing import check_metric

    class ThreeEach:
        min_images_per_prompt = 3

        def __call__(self, images, prompts):
            assert min(Counter(prompts).values()) >= 3, "fewer than 3 images of a prompt"
            return {"images": float(len(images))}

    report = check_metric(ThreeEach(), images=7)
    assert report.ok, report
