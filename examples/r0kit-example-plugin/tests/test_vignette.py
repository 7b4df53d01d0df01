import pytest
import torch

import r0kit
import r0kit_example_plugin
from r0kit.testing import assert_conforms, registered_plugin


def test_conforms():
    with registered_plugin(r0kit_example_plugin):
        assert_conforms("vignette")
        assert_conforms("vignette", radius=0.3, softness=0.02)


def test_prefers_a_bright_centre():
    with registered_plugin(r0kit_example_plugin):
        v, u = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
        centre = (1 - (u**2 + v**2).sqrt() / 2**0.5).expand(1, 3, 64, 64)
        images = torch.cat([centre, 1 - centre, torch.full((1, 3, 64, 64), 0.5)])
        scores = r0kit.Objective([r0kit.reward("vignette")]).evaluate(r0kit.Sample(images), ["a", "b", "c"]).total
        assert scores[0] > 0 > scores[1]
        assert scores[2].abs() < 1e-5  # a flat image has no vignette


def test_rejects_bad_options():
    with registered_plugin(r0kit_example_plugin):
        with pytest.raises(r0kit.OptionError, match="radius"):
            r0kit.reward("vignette", radius=1.5)
        with pytest.raises(r0kit.OptionError, match="strength"):
            r0kit.reward("vignette", strength=2)
