"""Test settings: the fixtures of r0kit.testing, and no autoload of other installed plugins."""

import os

os.environ.setdefault("R0KIT_DISABLE_AUTOLOAD", "1")

pytest_plugins = ["r0kit.testing.fixtures"]
