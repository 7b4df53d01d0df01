"""Checks every command runs before it loads a model or takes a step.

A run that takes minutes or hours on a GPU must not find out at its end that
its output path is a file, or at its start (after loading a model) that the
GPU it was told to use does not exist. The commands call these first:

* :func:`check_device`: a device string that exists on this machine;
* :func:`check_output_dir` / :func:`check_output_file`: an output path that
  can be created and, unless the user asked to replace or continue a run,
  holds nothing yet (the output rule, documented in the README).

``what`` names what the user typed (``--device``, ``generator.device`` in
``run.toml``, ...) so that the message points at it.
"""

from __future__ import annotations

import os
from pathlib import Path

from r0kit.errors import ConfigError

#: The manifest every run writes into its output folder: what wrote it and which files are its own.
MANIFEST = "r0kit-run.json"

#: The largest weight a term may have. A weighted image gradient much larger than
#: this overflows float32 in Adam's second moment (g² > 3.4e38 once |g| > 1.8e19)
#: and turns the first step into NaN; no reward needs a weight near it.
MAX_WEIGHT = 1e6
#: The largest learning rate a run accepts; ReNO's SGD uses 5 on unit-variance noise.
MAX_LR = 1e4
#: Seeds are non-negative and leave room for one seed per sample (seed + index).
MAX_SEED = 2**63 - 2**32


def check_weight(weight: float) -> None:
    """Raise ``ValueError`` for a weight that is not finite or beyond ±:data:`MAX_WEIGHT`."""
    import math

    if not math.isfinite(weight):
        raise ValueError(f"a weight must be a finite number, got {weight}")
    if abs(weight) > MAX_WEIGHT:
        raise ValueError(
            f"a weight must lie within ±{MAX_WEIGHT:g}, got {weight:g}: a gradient weighted that much "
            "overflows float32 in the optimizer; rescale the reward instead"
        )


def check_number(value: object, what: str, *, at_least: float | None = None, above: float | None = None) -> float:
    """A plugin option that must be a finite real number (not a bool, a string, NaN or ±inf), optionally
    ``>= at_least`` or ``> above``: the one check every factory's float options go through.

    :param what: the option as the user wrote it (``"pixel: init_scale"``).
    :returns: ``value`` as a float.
    :raises OptionError: naming ``what``, the rule and the value.
    """
    import math

    from r0kit.errors import OptionError

    rule = "a finite number" + (f" >= {at_least:g}" if at_least is not None else "") + (f" > {above:g}" if above is not None else "")
    try:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:  # an int beyond any float
        ok = False
    if ok and at_least is not None and value < at_least:
        ok = False
    if ok and above is not None and value <= above:
        ok = False
    if not ok:
        shown = repr(value)
        raise OptionError(f"{what} must be {rule}, got {shown if len(shown) <= 40 else shown[:37] + '...'}")
    return float(value)  # type: ignore[arg-type]


def check_eta_range(eta: object, what: str = "eta") -> tuple[float, float]:
    """The random-η range of R0's sampler: ``[min, max]`` with ``0 <= min <= max <= 1`` (one number ``x``
    is ``[x, x]``); the one rule the ``kstep`` generator and the ``[generator]`` table apply.

    :returns: ``(min, max)`` as floats.
    :raises OptionError: naming ``what``, for anything else (a string, bools, NaN, a wrong length or order).
    """
    from r0kit.errors import OptionError

    if isinstance(eta, (int, float)) and not isinstance(eta, bool):
        eta = (eta, eta)
    if not isinstance(eta, (list, tuple)) or len(eta) != 2:
        raise OptionError(f"{what} must be a range [min, max] inside [0, 1], got {eta!r}")
    lo, hi = (check_number(v, f"{what}'s min and max each") for v in eta)
    if not (0.0 <= lo <= hi <= 1.0):
        raise OptionError(f"{what} range must satisfy 0 <= min <= max <= 1, got [{lo}, {hi}]")
    return lo, hi


def check_device(device: object, what: str = "--device") -> str:
    """Return ``device`` as a string if it names a device this machine has; ``"auto"`` passes.

    :raises ConfigError: naming ``what``, for a string that is not a device, a CUDA
        device on a machine without one (or an index past the last GPU), or an MPS
        device where MPS is not available.
    """
    spec = "auto" if device is None else str(device).strip()
    if spec == "auto":
        return spec
    import torch

    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"{what} {spec!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return spec
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{what} {spec!r}: torch finds no CUDA GPU on this machine (torch.cuda.is_available() is False; "
                "check the driver, CUDA_VISIBLE_DEVICES and that torch was built with CUDA); use cpu or auto"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"{what} {spec!r}: this machine has {count} CUDA GPU(s), numbered 0 to {count - 1}")
        return spec
    if dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(f"{what} {spec!r}: MPS is not available on this machine; use cpu or auto")
        return spec
    backend = getattr(torch, dev.type, None)
    if dev.type == "meta" or backend is None or not callable(getattr(backend, "is_available", None)):
        raise ConfigError(f"{what} {spec!r}: r0kit runs on cpu, cuda or mps; use one of those, or auto")
    if not backend.is_available():
        raise ConfigError(f"{what} {spec!r}: no {dev.type} device is available on this machine; use cpu or auto")
    return spec


def _first_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_creatable(path: Path, what: str) -> None:
    """``path`` does not exist yet: its nearest existing ancestor must be a writable folder."""
    anc = _first_existing(path.parent if path.parent != path else path)
    if not anc.is_dir():
        raise ConfigError(f"{what} {str(path)!r}: cannot create it, because {str(anc)!r} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {str(path)!r}: cannot create it, because {str(anc)!r} is not writable")


def is_used(folder: str | os.PathLike) -> bool:
    """True when ``folder`` exists and holds anything but dot-files."""
    p = Path(folder)
    return p.is_dir() and any(not e.name.startswith(".") for e in p.iterdir())


def check_output_dir(
    folder: str | os.PathLike,
    what: str = "--output",
    *,
    overwrite: bool = False,
    resume: bool = False,
    resume_hint: str = "",
    outputs: tuple[str, ...] = (),
) -> Path:
    """Check that ``folder`` can be a run's output folder, before any work starts.

    The output rule: a folder that does not exist, or is empty, is used as it is.
    A folder that already holds files is refused, unless ``overwrite`` (the new
    run replaces the earlier run's files once it has results of its own) or
    ``resume`` (the run continues the earlier one). ``resume_hint`` is the
    command's resume flag, named in the refusal when it has one. ``outputs`` are
    the names a replacing run takes over: a used folder where no run's manifest
    lists those it holds is refused as :func:`r0kit.io.check_replaceable` says,
    with or without ``overwrite``, since ``--overwrite`` would not help.

    :raises ConfigError: naming ``what`` for a file where the folder should be, a
        folder that cannot be created or written, or a used folder.
    """
    if not str(folder).strip():
        raise ConfigError(f"{what} is empty; give a folder (a new one, or an empty one), such as {what} run1")
    p = Path(folder).expanduser()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{what} {str(p)!r} is a file; give a folder (a new one, or an empty one)")
    if not p.exists():
        _check_creatable(p, what)
        return p
    if not os.access(p, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {str(p)!r} is not writable")
    if is_used(p) and outputs and not resume:
        from r0kit.io import check_replaceable

        check_replaceable(p, outputs, what)
    if is_used(p) and not (overwrite or resume):
        hint = f", {resume_hint} to continue the run in it," if resume_hint else ""
        raise ConfigError(
            f"{what} {str(p)!r} already holds files (an earlier run's?); nothing was changed. "
            f"Pass --overwrite to replace that run's files{hint} or choose another {what}"
        )
    return p


def check_output_file(path: str | os.PathLike, what: str = "--output", *, overwrite: bool = False) -> Path:
    """Check that the file ``path`` can be written, and is not there yet unless ``overwrite``.

    :raises ConfigError: naming ``what`` for a folder where the file should be, a path
        under a file, an unwritable folder, or an existing file without ``overwrite``.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise ConfigError(f"{what} {str(p)!r} is a folder; give a file name, e.g. {str(p / 'scores.csv')!r}")
    if p.exists():
        if not overwrite:
            raise ConfigError(f"{what} {str(p)!r} already exists; pass --overwrite to replace it, or choose another file")
        if not os.access(p, os.W_OK) or not os.access(p.parent, os.W_OK | os.X_OK):
            raise ConfigError(f"{what} {str(p)!r} is not writable")
        return p
    _check_creatable(p, what)
    return p


def check_model(model: object, what: str = "--model") -> None:
    """A model given as a local folder must be a diffusers pipeline folder; a hub id is left to the loader.

    The same rule as :func:`r0kit.weights.resolve_repo`: an existing folder, or a string
    that can only be a path (absolute, ``./``, ``~``, or more than one ``/``), is local.

    :raises ConfigError: naming ``what``, for a local path that does not exist, is a
        file, or is a folder without ``model_index.json``.
    """
    if not isinstance(model, str) or not model:
        return
    local = Path(model).expanduser()
    if local.is_dir():
        if not (local / "model_index.json").is_file():
            from r0kit.diffusion import read_model_index
            from r0kit.errors import WeightsError

            try:
                read_model_index(local)
            except WeightsError as exc:
                raise ConfigError(f"{what}: {exc}") from None
        return
    if local.exists():
        raise ConfigError(f"{what} {model!r} is a file; give a diffusers pipeline folder or a hub id")
    if local.is_absolute() or model.startswith((".", "~")) or model.count("/") > 1:
        raise ConfigError(f"{what} {model!r}: the local folder does not exist")
    base, at, steps = model.rpartition("@")
    if at and steps.isdigit():
        raise ConfigError(
            f"{what} {model!r}: '@{steps}' (sampling steps) is r0kit evaluate's source syntax; "
            f"give the model as {base!r} and the steps with the generator's steps option"
        )
