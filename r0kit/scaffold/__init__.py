"""Plugin package templates for ``r0kit new-plugin``.

:func:`render` returns the files of a complete plugin package, relative path
to text; :func:`write` creates the package folder and writes them, refusing a
folder that already exists. Each template is a working plugin that passes
:func:`r0kit.testing.assert_conforms` as generated.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path
from string import Template

from r0kit.errors import ConfigError

KINDS = ("reward", "regularizer", "generator", "metric")

_PYPROJECT = Template('''\
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "r0kit-$dash"
version = "0.1.0"
description = "$summary"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["r0kit>=0.1", "torch"]

[project.optional-dependencies]
test = ["pytest>=7"]

# r0kit finds the plugin through this entry point: the name is the plugin's
# name, the value the module holding its @r0kit.hookimpl functions.
[project.entry-points.r0kit]
$module = "$module"

[tool.setuptools]
py-modules = ["$module"]

[tool.pytest.ini_options]
testpaths = ["tests"]
pythonpath = ["."]
''')

_CONFTEST = '''\
"""Test settings: the fixtures of r0kit.testing, and no autoload of other installed plugins."""

import os

os.environ.setdefault("R0KIT_DISABLE_AUTOLOAD", "1")

pytest_plugins = ["r0kit.testing.fixtures"]
'''

_README = Template('''\
# r0kit-$dash

$summary

    pip install -e .            # r0kit finds it through the `r0kit` entry point
    r0kit plugins --verbose     # lists the $kind `$name`
    pip install -e '.[test]' && pytest

$usage
''')

_USAGE = {
    "reward": 'Use it by name: `r0kit.reward("$name")` in Python, or an\n`[objective.rewards.$name]` table in a TOML objective.',
    "regularizer": 'Use it by name: `r0kit.regularizer("$name")` in Python, or an\n`[objective.regularizers.$name]` table in a TOML objective.',
    "generator": 'Use it by name: `r0kit.generator("$name")` in Python, `r0kit optimize --generator $name`,\nor `name = "$name"` in a run config\'s `[generator]` table.',
    "metric": 'Use it by name: `r0kit evaluate SOURCES --metric $name`, or `metrics = ["$name"]`\nin a training config\'s `[evaluate]` table.',
}

_REWARD = Template('''\
"""$summary

An r0kit plugin: it registers the reward ``$name``. Replace the scoring in
``$cls.forward`` with yours, and keep ``CONTRACT`` in step with what
``forward`` expects: the core resizes, crops and normalizes the generator's
[0, 1] images to the contract before calling the reward.
"""

from __future__ import annotations

import torch

import r0kit

__version__ = "0.1.0"

CONTRACT = r0kit.RewardContract(
    size=64,  # the reward sees 64x64 images...
    resize="bilinear",
    crop="center",  # ...resized on the shorter side, then center-cropped
    mean=(0.5, 0.5, 0.5),  # normalized to [-1, 1]
    std=(0.5, 0.5, 0.5),
    needs_prompt=False,  # set True when forward reads the prompts
    differentiable=True,
)

_LUMA = (0.299, 0.587, 0.114)


class $cls(torch.nn.Module):
    """Exposure: minus the mean squared distance of each pixel's luma to ``target``.

    :param target: the preferred brightness, in [0, 1].
    """

    def __init__(self, target: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= float(target) <= 1.0:
            raise r0kit.OptionError(f"$name: target must be in [0, 1], got {target!r}")
        self.target = float(target)

    def forward(self, x: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        # x: [B, 3, 64, 64], normalized as CONTRACT declares. Return one score per image: [B].
        rgb = x * 0.5 + 0.5
        luma = (rgb * rgb.new_tensor(_LUMA).view(1, 3, 1, 1)).sum(dim=1)
        return -((luma - self.target) ** 2).flatten(1).mean(dim=1)


@r0kit.hookimpl
def r0kit_register_rewards(register):
    register("$name", $cls, contract=CONTRACT, description="$summary")
''')

_REWARD_TEST = Template('''\
import torch

import r0kit
import $module
from r0kit.testing import assert_conforms


def test_conforms(r0kit_plugin):
    r0kit_plugin($module)
    assert_conforms("$name")


def test_prefers_the_target_brightness(r0kit_plugin):
    r0kit_plugin($module)
    objective = r0kit.Objective([r0kit.reward("$name", target=0.5)])
    gray = torch.full((1, 3, 32, 32), 0.5)
    black = torch.zeros(1, 3, 32, 32)
    scores = objective.evaluate(r0kit.Sample(torch.cat([gray, black])), ["a", "b"]).total
    assert scores[0] > scores[1]
''')

_REGULARIZER = Template('''\
"""$summary

An r0kit plugin: it registers the regularizer ``$name``. A regularizer
returns a penalty per sample, shape ``[B]`` (or one scalar for the batch);
the objective subtracts it with its weight.
"""

from __future__ import annotations

import torch

import r0kit

__version__ = "0.1.0"


class $cls:
    """Clipping: the mean squared amount by which pixels leave [margin, 1 - margin].

    Keeps an optimized image away from the flat, gradient-free ends of [0, 1].

    :param margin: the width of the band at each end, in [0, 0.5).
    """

    def __init__(self, margin: float = 0.05) -> None:
        if not 0.0 <= float(margin) < 0.5:
            raise r0kit.OptionError(f"$name: margin must be in [0, 0.5), got {margin!r}")
        self.margin = float(margin)

    def __call__(self, sample: r0kit.Sample, generator=None) -> torch.Tensor:
        x = sample.images
        below = torch.relu(self.margin - x)
        above = torch.relu(x - (1.0 - self.margin))
        return ((below + above) ** 2).flatten(1).mean(dim=1)


@r0kit.hookimpl
def r0kit_register_regularizers(register):
    register("$name", $cls, description="$summary")
''')

_REGULARIZER_TEST = Template('''\
import torch

import r0kit
import $module
from r0kit.testing import assert_conforms


def test_conforms(r0kit_plugin):
    r0kit_plugin($module)
    assert_conforms("$name", kind="regularizer")


def test_penalizes_only_the_ends(r0kit_plugin):
    r0kit_plugin($module)
    reg = r0kit.regularizer("$name", margin=0.1).module
    images = torch.stack([torch.full((3, 8, 8), 0.5), torch.zeros(3, 8, 8)])
    penalty = reg(r0kit.Sample(images))
    assert penalty[0] == 0 and penalty[1] > 0
''')

_GENERATOR = Template('''\
"""$summary

An r0kit plugin: it registers the generator ``$name``. A generator owns the
tensors an optimizer updates: ``prepare`` (re)initializes them for a batch of
prompts and a seed, ``parameters`` returns them, and ``sample`` turns them
into an image batch in [0, 1] that is differentiable with respect to them.
"""

from __future__ import annotations

import torch

import r0kit
from r0kit.checks import check_number

__version__ = "0.1.0"


class $cls:
    """Linear colour fields: each channel is ``sigmoid(a + b·u + c·v)`` over the image plane.

    Three coefficients per channel and image: a tiny parameterization that can
    only make smooth gradients, handy to see what a reward pulls towards.
    """

    def __init__(self, height: int = 64, width: int = 64, init_scale: float = 1.0) -> None:
        for label, v in (("height", height), ("width", width)):
            if not isinstance(v, int) or v < 2:
                raise r0kit.OptionError(f"$name: {label} must be an int >= 2, got {v!r}")
        self.height, self.width = height, width
        self.init_scale = check_number(init_scale, "$name: init_scale", at_least=0)
        self.coeffs: torch.Tensor | None = None
        self.coeffs_init: torch.Tensor | None = None

    def prepare(self, prompts: list[str], seed: int) -> None:
        # Sample i draws from seed + i: a prompt starts the same whatever batch it is in.
        starts = [torch.randn(3, 3, generator=torch.Generator().manual_seed(int(seed) + i)) for i in range(len(prompts))]
        self.coeffs = (torch.stack(starts) * self.init_scale).requires_grad_(True)
        self.coeffs_init = self.coeffs.detach().clone()

    def parameters(self) -> list[torch.Tensor]:
        if self.coeffs is None:
            raise r0kit.InputError("$name: call prepare(prompts, seed) first")
        return [self.coeffs]

    def sample(self, prompts: list[str], generator: torch.Generator | None = None) -> r0kit.Sample:
        (coeffs,) = self.parameters()
        if len(prompts) != coeffs.shape[0]:
            raise r0kit.InputError(f"$name: prepared for {coeffs.shape[0]} prompt(s), got {len(prompts)}")
        v, u = torch.meshgrid(
            torch.linspace(-1, 1, self.height), torch.linspace(-1, 1, self.width), indexing="ij"
        )
        basis = torch.stack([torch.ones_like(u), u, v])  # [3 terms, H, W]
        images = torch.sigmoid(torch.einsum("bct,thw->bchw", coeffs, basis))
        return r0kit.Sample(images, state={"param": coeffs, "param_init": self.coeffs_init})


@r0kit.hookimpl
def r0kit_register_generators(register):
    register("$name", $cls, description="$summary")
''')

_GENERATOR_TEST = Template('''\
import r0kit
import $module
from r0kit.testing import assert_conforms


def test_conforms(r0kit_plugin):
    r0kit_plugin($module)
    assert_conforms("$name", kind="generator")


def test_sample_size(r0kit_plugin):
    r0kit_plugin($module)
    gen = r0kit.generator("$name", height=16, width=24)
    gen.prepare(["a", "b"], seed=0)
    assert gen.sample(["a", "b"]).images.shape == (2, 3, 16, 24)
''')

_METRIC = Template('''\
"""$summary

An r0kit plugin: it registers the metric ``$name``. A metric judges a *set*
of generated images and is never optimized: it is called with every image
of an evaluation, ``[N, 3, H, W]`` in [0, 1], and one prompt per image, and
returns named numbers, which ``r0kit evaluate --metric $name`` prints as
table columns.
"""

from __future__ import annotations

from typing import Sequence

import torch

import r0kit

__version__ = "0.1.0"


class $cls:
    """Spread: the mean over prompts of the per-pixel standard deviation across a prompt's images.

    0 when every seed of a prompt gives the same image; higher when they differ.

    :param channels: ``"rgb"`` or ``"luma"``, what the deviation is taken over.
    """

    #: Declared needs, checked by r0kit before any image is sampled: two images of each prompt.
    min_images_per_prompt = 2

    def __init__(self, channels: str = "rgb") -> None:
        if channels not in ("rgb", "luma"):
            raise r0kit.OptionError(f"$name: channels must be 'rgb' or 'luma', got {channels!r}")
        self.channels = channels

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> dict[str, float]:
        x = images.float()
        if self.channels == "luma":
            x = (x * x.new_tensor((0.299, 0.587, 0.114)).view(1, 3, 1, 1)).sum(1, keepdim=True)
        spreads = []
        for p in sorted(set(prompts)):
            group = x[[i for i, q in enumerate(prompts) if q == p]]
            if len(group) > 1:
                spreads.append(float(group.std(dim=0).mean()))
        return {"$name": sum(spreads) / len(spreads) if spreads else 0.0}


@r0kit.hookimpl
def r0kit_register_metrics(register):
    register("$name", $cls, description="$summary")
''')

_METRIC_TEST = Template('''\
import torch

import $module
from r0kit.testing import assert_conforms


def test_conforms(r0kit_plugin):
    r0kit_plugin($module)
    assert_conforms("$name", kind="metric")


def test_zero_for_identical_seeds_and_positive_otherwise(r0kit_plugin):
    r0kit_plugin($module)
    metric = $module.$cls()
    same = torch.full((4, 3, 8, 8), 0.5)
    assert metric(same, ["a", "a", "b", "b"])["$name"] == 0
    assert metric(torch.rand(4, 3, 8, 8), ["a", "a", "b", "b"])["$name"] > 0
''')

_TEMPLATES = {
    "reward": (_REWARD, _REWARD_TEST, "rewards", "an exposure reward"),
    "regularizer": (_REGULARIZER, _REGULARIZER_TEST, "regularizers", "a clipping penalty"),
    "generator": (_GENERATOR, _GENERATOR_TEST, "generators", "a linear colour-field generator"),
    "metric": (_METRIC, _METRIC_TEST, "metrics", "a seed-spread metric"),
}

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_name(name: str) -> None:
    """Raise :class:`~r0kit.ConfigError` unless ``name`` is an ASCII Python identifier and not a keyword."""
    if not _IDENT.fullmatch(name) or keyword.iskeyword(name):
        hint = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_").lower() or "my_reward"
        if hint[0].isdigit() or keyword.iskeyword(hint):
            hint = f"my_{hint}"
        why = "is a Python keyword" if keyword.iskeyword(name) else "is not a valid Python identifier"
        raise ConfigError(
            f"plugin name {name!r} {why}: it becomes the module r0kit_<name> and the registered name, so use "
            f"letters, digits and underscores, not starting with a digit (for example {hint!r})"
        )


def class_name(name: str) -> str:
    cls = "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)
    return cls if cls.isidentifier() and not keyword.iskeyword(cls) else "Plugin"


def render(name: str, kind: str = "reward") -> dict[str, str]:
    """The files of a plugin package for ``name``: relative path -> text."""
    check_name(name)
    if kind not in _TEMPLATES:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    module_t, test_t, table, what = _TEMPLATES[kind]
    subs = {
        "name": name,
        "module": f"r0kit_{name}",
        "dash": name.replace("_", "-"),
        "cls": class_name(name),
        "kind": kind,
        "table": table,
        "summary": f"{name}: an r0kit {kind} plugin (the scaffold starts it as {what}; make it yours)",
    }
    subs["usage"] = Template(_USAGE[kind]).substitute(subs)
    return {
        "pyproject.toml": _PYPROJECT.substitute(subs),
        "README.md": _README.substitute(subs),
        "conftest.py": _CONFTEST,
        f"r0kit_{name}.py": module_t.substitute(subs),
        f"tests/test_{name}.py": test_t.substitute(subs),
    }


def default_dir(name: str) -> Path:
    return Path(f"r0kit-{name.replace('_', '-')}")


def write(
    name: str, kind: str = "reward", target: str | Path | None = None, *, overwrite: bool = False
) -> tuple[Path, list[Path]]:
    """Write the package for ``name`` into ``target`` (default ``./r0kit-<name>``).

    ``target`` follows r0kit's output rule (:func:`r0kit.checks.check_output_dir`):
    it may be new or empty; a folder that holds files is refused before anything
    is written, unless ``overwrite``, which replaces the files an earlier scaffold
    wrote (listed, file by file, in its ``r0kit-run.json``) and leaves every other
    file alone: a file of the user's where the scaffold would write is refused
    (:meth:`r0kit.io.StagedDir.commit`). The files are written aside and moved in
    at the end, so a write that fails half-way changes nothing.
    """
    import json

    from r0kit.checks import MANIFEST, check_output_dir
    from r0kit.io import StagedDir

    files = render(name, kind)
    files[MANIFEST] = json.dumps({"command": "new-plugin", "kind": kind, "name": name,
                                  "files": sorted([*files, MANIFEST])}, indent=2) + "\n"
    target = check_output_dir(target if target is not None else default_dir(name), "--output", overwrite=overwrite)
    staged = StagedDir(target)
    staged.open()
    try:
        for rel, text in files.items():
            path = staged.path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        staged.commit()
    except BaseException:
        staged.discard()
        raise
    return target, [target / rel for rel in files]
