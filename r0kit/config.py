"""pydantic models for objectives and runs, and their TOML files.

An objective table::

    [objective]
    normalize_gradients = false      # R0's per-reward gradient normalization
    eps = 1e-8

    [objective.rewards.hpsv2]        # the key is the term's label and, by default, the reward name
    weight = 5
    version = "2.1"                  # every other key is an option of the reward's factory

    [objective.rewards.clip_small]
    name = "clip"                    # use a registered name different from the label
    weight = 0.01

    [objective.regularizers.noise_norm]
    weight = 0.01                    # subtracted: regularizer weights are penalties

Errors name the key, the bad value and what is allowed.
"""

from __future__ import annotations

import contextlib
import difflib
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator

from r0kit.checks import MAX_LR, MAX_SEED, check_weight
from r0kit.errors import ConfigError


#: A number inside a lax field (a tuple from a TOML list): still neither a bool nor a string.
StrictFloat = Annotated[float, Strict()]
#: Strict mode refuses a str for a Path; a path field takes the TOML string (``Field(strict=False)``).
PATH_FIELD: dict[str, Any] = {"strict": False}


class StrictModel(BaseModel):
    """A pydantic model that refuses unknown keys, validates assignments and takes values as written:
    ``steps = "1"``, ``weight = true`` or ``lr = "1e-3"`` are errors, not 1, 1.0 and 0.001
    (pydantic's strict mode; an int is still a float)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


class TermConfig(BaseModel):
    """One term. ``name`` and ``weight`` are reserved; other keys are factory options."""

    model_config = ConfigDict(extra="allow", strict=True)
    name: str | None = None
    weight: float = Field(1.0, allow_inf_nan=False)

    @field_validator("weight")
    @classmethod
    def _weight(cls, v: float) -> float:
        check_weight(v)
        return v

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ObjectiveConfig(StrictModel):
    rewards: dict[str, TermConfig] = Field(default_factory=dict)
    regularizers: dict[str, TermConfig] = Field(default_factory=dict)
    normalize_gradients: bool = False
    eps: float = Field(1e-8, gt=0, le=1, allow_inf_nan=False)

    @model_validator(mode="after")
    def _has_reward(self) -> ObjectiveConfig:
        if not self.rewards:
            raise ValueError("needs at least one [objective.rewards.<name>] table")
        return self


class GeneratorConfig(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class OptimizerConfig(StrictModel):
    name: Literal["adam", "sgd"] = "adam"
    lr: float = Field(0.05, gt=0, le=MAX_LR, allow_inf_nan=False)
    momentum: float = Field(0.9, ge=0, lt=1, allow_inf_nan=False)
    nesterov: bool = True
    weight_decay: float = Field(0.0, ge=0, le=1e3, allow_inf_nan=False)
    grad_clip: float | None = Field(None, gt=0, allow_inf_nan=False)


class RunConfig(StrictModel):
    """A test-time optimization run (``r0kit optimize``)."""

    prompts: list[str] = Field(default_factory=list)
    prompts_file: Path | None = Field(None, **PATH_FIELD)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    steps: int = Field(50, ge=1, le=100_000)
    batch_size: int = Field(1, ge=1, le=65_536)
    output: Path = Field(Path("r0kit-out"), **PATH_FIELD)
    device: str = "auto"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    best_by: Literal["reward", "total"] = "reward"
    generator: GeneratorConfig = GeneratorConfig(name="pixel")
    optimizer: OptimizerConfig = OptimizerConfig()
    objective: ObjectiveConfig

    @field_validator("prompts")
    @classmethod
    def _no_empty(cls, v: list[str]) -> list[str]:
        check_prompts(v)
        return v


def check_prompts(prompts: list[str]) -> None:
    """Raise ``ValueError`` naming the first empty prompt (counted from 1)."""
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"prompt {i + 1} of {len(prompts)} is empty ({p!r}); give every prompt some text")


def format_validation_error(
    exc: ValidationError,
    source: str,
    *,
    root_model: type[BaseModel],
    prefix: tuple = (),
    what: str = "config",
    origins: Mapping[str, str] | None = None,
) -> ConfigError:
    """A :class:`ConfigError` that lists every problem of ``exc`` by what the user typed.

    ``root_model`` is the model the TOML file's top level validates against and
    ``prefix`` the location of the validated table inside it; an unknown key gets
    the closest allowed key and the list of allowed keys at its place.

    ``origins`` maps a dotted key to what set it on the command line (``"steps"
    -> "--steps"``); a problem under such a key names that, not ``source``, so
    ``r0kit optimize --steps 0`` blames ``--steps`` rather than the preset file the
    other values came from. The longest matching key wins.
    """
    origins = dict(origins or {})
    from_file, from_user = [], []
    for err in exc.errors():
        parts = prefix + tuple(err["loc"])
        loc = ".".join(str(p) for p in parts)
        origin = _origin(parts, origins)
        if err["type"] == "extra_forbidden":
            key = str(err["loc"][-1])
            model = _model_at(root_model, prefix + tuple(err["loc"][:-1]))
            allowed = sorted(model.model_fields) if model else []
            hint = difflib.get_close_matches(key, allowed, n=1)
            line = (
                f"unknown key {loc!r}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + (f"; allowed keys here: {', '.join(allowed)}" if allowed else "")
            )
        elif err["type"] == "missing":
            line = f"missing key {loc!r}"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = "" if err["type"] == "value_error" else f" (got {err.get('input')!r})"  # r0kit's own messages show it
            line = f"{origin if origin is not None else loc or '<top>'}: {msg}{got}"
        (from_user if origin is not None else from_file).append(line)
    if not from_user:
        return ConfigError(f"invalid {what} {source}:\n  " + "\n  ".join(from_file))
    lines = from_user + [f"{line} (in {source})" for line in from_file]
    if len(lines) == 1:
        return ConfigError(lines[0])
    return ConfigError("invalid settings:\n  " + "\n  ".join(lines))


def _origin(loc: tuple, origins: Mapping[str, str]) -> str | None:
    for n in range(len(loc), 0, -1):
        key = ".".join(str(p) for p in loc[:n])
        if key in origins:
            return origins[key]
    return None


def _model_at(root: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    model: Any = root
    for part in loc:
        field = model.model_fields.get(str(part)) if model else None
        if field is None:
            return None
        ann = field.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return model


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        return tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {str(p)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(p)!r} cannot be read: {exc}") from None


def parse_objective(data: dict[str, Any], source: str = "<dict>") -> ObjectiveConfig:
    try:
        return ObjectiveConfig.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(exc, source, root_model=RunConfig, prefix=("objective",)) from None


def parse_run(data: dict[str, Any], source: str = "<dict>", origins: Mapping[str, str] | None = None) -> RunConfig:
    """Validate a run config; ``origins`` names the command-line flags that set keys (see :func:`format_validation_error`)."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(exc, source, root_model=RunConfig, origins=origins) from None


def load_run(path: str | Path) -> RunConfig:
    cfg = parse_run(load_toml(path), str(path))
    if cfg.prompts_file is not None and not cfg.prompts_file.is_absolute():
        cfg.prompts_file = Path(path).parent / cfg.prompts_file
    return cfg


def objective_table(path: str | Path) -> dict[str, Any]:
    """The raw ``[objective]`` table of a TOML file (not yet validated)."""
    data = load_toml(path)
    if "objective" not in data:
        raise ConfigError(f"config file {str(path)!r} has no [objective] table")
    return data["objective"]


def load_objective_config(path: str | Path) -> ObjectiveConfig:
    return parse_objective(objective_table(path), str(path))


def flags_under(origins: Mapping[str, str] | None, prefix: str) -> str:
    """`` (given on the command line: -G steps, --height)`` for the flags that set keys under ``prefix``, or ``""``."""
    flags = sorted({v for k, v in (origins or {}).items() if k.startswith(prefix) and v.startswith("-")})
    return f" (given on the command line: {', '.join(flags)})" if flags else ""


@contextlib.contextmanager
def _term_errors(table: str, label: str, source: str | None, origins: Mapping[str, str] | None):
    """Name the term's table key, its file and the command-line flags that set its options in its errors."""
    from r0kit.errors import OptionError, UnknownNameError

    try:
        yield
    except (UnknownNameError, OptionError) as exc:
        where = f"{source}: " if source else ""
        given = flags_under(origins, f"objective.{table}.{label}.")
        raise type(exc)(f"{where}[objective.{table}.{label}]: {exc}{given}") from None


def check_objective(cfg: ObjectiveConfig, source: str | None = None, origins: Mapping[str, str] | None = None) -> None:
    """Every term's name and option names against its registered factory, without running one: a typo
    is found before a model loads. Raises as :func:`build_objective` does."""
    from r0kit.plugins import get_host

    host = get_host()
    for table, registry in (("rewards", host.rewards), ("regularizers", host.regularizers)):
        for label, t in getattr(cfg, table).items():
            with _term_errors(table, label, source, origins):
                registry.get(t.name or label).check_options(t.options)


def build_objective(cfg: ObjectiveConfig, source: str | None = None, origins: Mapping[str, str] | None = None):
    """Instantiate every term; the result equals the same objective written in Python.

    :param source: the file the table came from, named in errors.
    :param origins: dotted key -> the command-line flag that set it (``--reward-option clip.device``), named in errors.
    :raises UnknownNameError: a term names no registered reward or regularizer;
    :raises OptionError: a term's options do not fit its factory. Both name the term's
        key (``objective.rewards.<label>``) and ``source``.
    """
    from r0kit.objective import Objective, regularizer, reward

    terms = []
    for table, make, sign in (("rewards", reward, 1.0), ("regularizers", regularizer, -1.0)):
        for label, t in getattr(cfg, table).items():
            with _term_errors(table, label, source, origins):
                terms.append(make(t.name or label, label=label, **t.options) * (sign * t.weight))
    return Objective(terms, normalize_gradients=cfg.normalize_gradients, eps=cfg.eps)


def load_objective(path: str | Path):
    """Build the :class:`~r0kit.objective.Objective` of a TOML file's ``[objective]`` table."""
    return build_objective(load_objective_config(path), str(path))


def read_prompts(path: str | Path) -> list[str]:
    """One prompt a line from a ``.txt`` file, or a ``"prompt"`` field a line from ``.jsonl``.

    Blank lines and lines starting with ``#`` are skipped.
    """
    import json

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"prompt file {str(p)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"prompt file {str(p)!r} cannot be read: {exc}") from None
    prompts = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if p.suffix == ".jsonl":
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                obj = None
            prompt = obj.get("prompt") if isinstance(obj, dict) else None
            if not isinstance(prompt, str) or not prompt.strip():
                got = "an empty or blank prompt" if isinstance(prompt, str) else (
                    f"prompt {json.dumps(prompt)}" if isinstance(obj, dict) and "prompt" in obj else "no \"prompt\" key")
                raise ConfigError(f"{str(p)!r} line {n}: expected a JSON object with a non-empty string \"prompt\", got {got}")
            prompts.append(prompt)
        else:
            prompts.append(line)
    if not prompts:
        raise ConfigError(f"prompt file {str(p)!r} holds no prompts")
    return prompts
