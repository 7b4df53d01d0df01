"""r0kit: regularized reward maximization for text-to-image generation.

Importing r0kit loads no model weights and no optional heavy package; even
torch is imported only when a name that needs it is first used (PEP 562), so
the ``r0kit`` command starts, and answers Ctrl-C, before torch has loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from r0kit.errors import (
    ConfigError,
    InputError,
    NonFiniteError,
    OptionError,
    PluginError,
    R0kitError,
    R0kitWarning,
    UnknownNameError,
    WeightsError,
)

from r0kit.generator import Generator, Sample  # torch-free
from r0kit.hookspecs import hookimpl  # pluggy only

__version__ = "0.1.0"


def generator(name: str, **options: Any) -> Any:
    """Instantiate the registered generator ``name`` (:func:`r0kit.objective.generator`).

    Defined here, not imported lazily, because the submodule ``r0kit.generator``
    would otherwise take this name on the package.
    """
    from r0kit.objective import generator as build

    return build(name, **options)


# name -> module that defines it; imported on first access.
_LAZY = {
    "RewardContract": "r0kit.images",
    "preprocess": "r0kit.images",
    "Objective": "r0kit.objective",
    "ObjectiveResult": "r0kit.objective",
    "Term": "r0kit.objective",
    "regularizer": "r0kit.objective",
    "reward": "r0kit.objective",
}

if TYPE_CHECKING:  # pragma: no cover
    from r0kit.images import RewardContract, preprocess
    from r0kit.objective import Objective, ObjectiveResult, Term, regularizer, reward


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        # A submodule (r0kit.config, ...) imported by attribute, as `import r0kit; r0kit.config` would.
        try:
            return importlib.import_module(f"r0kit.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"r0kit.{name}":
                raise
            raise AttributeError(f"module 'r0kit' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ConfigError",
    "Generator",
    "InputError",
    "NonFiniteError",
    "Objective",
    "ObjectiveResult",
    "OptionError",
    "PluginError",
    "R0kitError",
    "R0kitWarning",
    "RewardContract",
    "Sample",
    "Term",
    "UnknownNameError",
    "WeightsError",
    "generator",
    "hookimpl",
    "preprocess",
    "regularizer",
    "reward",
]
