"""`check_number`: the one check of a factory's float options, and the generators that go through it."""

from __future__ import annotations

import math

import pytest

from r0kit.checks import check_number
from r0kit.errors import OptionError


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, True, "1", None, [1.0]])
def test_check_number_refuses_what_is_not_a_finite_real_number(value):
    with pytest.raises(OptionError, match=r"x: y must be a finite number, got"):
        check_number(value, "x: y")


def test_check_number_bounds_and_returns_a_float():
    assert check_number(2, "v", at_least=0) == 2.0 and isinstance(check_number(2, "v"), float)
    assert check_number(0, "v", at_least=0) == 0.0
    with pytest.raises(OptionError, match=">= 0"):
        check_number(-0.5, "v", at_least=0)
    with pytest.raises(OptionError, match="> 0"):
        check_number(0.0, "v", above=0)


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0, True])
def test_generators_refuse_a_non_finite_or_negative_init_scale_naming_it(value):
    import r0kit

    with pytest.raises(OptionError, match="pixel: init_scale must be a finite number >= 0"):
        r0kit.generator("pixel", height=8, width=8, init_scale=value)


@pytest.mark.parametrize(
    "name, options, needle",
    [
        ("latent", {"init_scale": math.nan}, "latent: init_scale must be a finite number >= 0"),
        ("kstep", {"lora_alpha": math.inf}, "kstep: lora_alpha must be a finite number > 0"),
        ("kstep", {"lora_alpha": 0}, "kstep: lora_alpha must be a finite number > 0"),
    ],
)
def test_diffusion_generators_check_float_options_before_loading_a_model(name, options, needle, tmp_path):
    import r0kit

    with pytest.raises(OptionError, match=needle):
        r0kit.generator(name, model=str(tmp_path / "no-such-model"), **options)


def test_an_int_beyond_any_float_is_refused_not_an_overflow_error():
    with pytest.raises(OptionError, match=r"must be a finite number, got 1000000.*\.\.\."):
        check_number(10**400, "pixel: init_scale")


@pytest.mark.parametrize("eta", ["01", [True, 1], ["0", 0.5], [0, math.nan], [0.5]])
def test_kstep_eta_takes_two_numbers_not_strings_or_bools(eta):
    from r0kit_r0 import check_eta_range

    with pytest.raises(OptionError, match="kstep: eta"):
        check_eta_range(eta)
    assert check_eta_range([0, 1]) == (0.0, 1.0) and check_eta_range(0.5) == (0.5, 0.5)


def test_kstep_takes_guidance_by_the_one_rule(tmp_path):
    """kstep demanded guidance_scale >= 1 while evaluate and its table accepted 0 (no guidance, diffusers' rule):
    [evaluate] guidance = 0 passed the checks before training, then every baseline failed after it."""
    import r0kit
    from r0kit.errors import WeightsError

    with pytest.raises(OptionError, match="kstep: guidance_scale must be a finite number >= 0"):
        r0kit.generator("kstep", model=str(tmp_path / "none"), guidance_scale=-1)
    with pytest.raises(WeightsError):  # 0 passes the option check; only the missing model stops it
        r0kit.generator("kstep", model=str(tmp_path / "none"), guidance_scale=0)


@pytest.mark.parametrize("color", [[True, 0, 0], ["0.5", 0, 0], [0.5, 0], "red"])
def test_target_color_refuses_bools_strings_and_wrong_lengths(color):
    import r0kit

    with pytest.raises(OptionError, match="color"):
        r0kit.reward("target_color", color=color)


@pytest.mark.parametrize("scale", [math.nan, "100", 0])
def test_the_clip_reward_checks_its_scale_before_loading(scale, tmp_path):
    import r0kit

    pytest.importorskip("open_clip")
    with pytest.raises(OptionError, match="the clip reward: scale must be a finite number > 0"):
        r0kit.reward("clip", model=str(tmp_path / "none"), scale=scale)
