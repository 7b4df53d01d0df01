"""The r0kit.testing fixtures, as a plugin author's suite gets them."""

from r0kit.testing.fixtures import r0kit_host, r0kit_plugin  # noqa: F401
