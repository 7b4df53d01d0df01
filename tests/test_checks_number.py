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
