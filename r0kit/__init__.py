"""r0kit: regularized reward maximization for text-to-image generation.

Importing r0kit loads no model weights and no optional heavy package.
"""

from r0kit.errors import (
    ConfigError,
    InputError,
    NonFiniteError,
    OptionError,
    PluginError,
    R0kitError,
    UnknownNameError,
    WeightsError,
)
from r0kit.generator import Generator, Sample
from r0kit.hookspecs import hookimpl
from r0kit.images import RewardContract, preprocess
from r0kit.objective import Objective, ObjectiveResult, Term, generator, regularizer, reward

__version__ = "0.1.0"

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
