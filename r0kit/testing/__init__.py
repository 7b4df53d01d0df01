"""Helpers for testing r0kit plugins: registration, tiny models, conformance checks.

>>> from r0kit.testing import assert_conforms, registered_plugin
>>> import my_plugin
>>> with registered_plugin(my_plugin):
...     assert_conforms("my_reward")

pytest fixtures (``r0kit_plugin``, ``r0kit_host``) come from
:mod:`r0kit.testing.fixtures`: add ``pytest_plugins = ["r0kit.testing.fixtures"]``
to your top-level ``conftest.py``. The tiny-model builders live in
:mod:`r0kit.testing.models` and import open_clip / diffusers only when called.
"""

from r0kit.testing.conformance import (
    ConformanceReport,
    assert_conforms,
    check,
    check_generator,
    check_metric,
    check_regularizer,
    check_reward,
)
from r0kit.testing.models import (
    register_tiny_open_clip,
    save_tiny_open_clip,
    tiny_open_clip,
    tiny_open_clip_config,
    tiny_unet,
    tiny_vae,
)
from r0kit.testing.plugins import registered_plugin

__all__ = [
    "ConformanceReport",
    "assert_conforms",
    "check",
    "check_generator",
    "check_metric",
    "check_regularizer",
    "check_reward",
    "register_tiny_open_clip",
    "registered_plugin",
    "save_tiny_open_clip",
    "tiny_open_clip",
    "tiny_open_clip_config",
    "tiny_unet",
    "tiny_vae",
]
