"""The exceptions r0kit raises on bad input.

Every one derives from :class:`R0kitError`, whose message says what is wrong
and how to fix it. The command line prints that message, with no traceback,
and exits non-zero.
"""


class R0kitError(Exception):
    """Base class of every user-facing r0kit error."""


class PluginError(R0kitError):
    """A plugin failed to import or register, or two plugins clash."""


class UnknownNameError(R0kitError, KeyError):
    """A reward, regularizer or generator name that no plugin registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0] if self.args else ""


class OptionError(R0kitError, TypeError):
    """An option a factory does not accept, or a bad value for one.

    :ivar option: the option's name where one option is at fault (``"height"``), else ``None``;
        a command that set the option from a flag of its own names that flag by it.
    """

    def __init__(self, *args: object, option: str | None = None) -> None:
        super().__init__(*args)
        self.option = option


class ConfigError(R0kitError, ValueError):
    """A configuration file or value that does not validate."""


class InputError(R0kitError, ValueError):
    """A tensor of the wrong shape, dtype or range, or other bad input."""


class NonFiniteError(R0kitError, FloatingPointError):
    """A reward or regularizer produced NaN or Inf."""


class WeightsError(R0kitError, FileNotFoundError):
    """Model weights that cannot be found, fetched or read."""


class R0kitWarning(UserWarning):
    """Something the user should know that does not stop the run (a plugin filtered out or disabled).

    The command line prints it as ``r0kit: warning: <message>``.
    """


class PromptTruncationWarning(R0kitWarning):
    """A prompt was longer than a text encoder takes and was cut (warned once per prompt and reader;
    the command line prints it once, as ``r0kit: warning: ...``)."""


class RunError(R0kitError):
    """A run that failed part-way. Its message says what failed, what was kept and where;
    the original exception is ``__cause__``."""


#: How torch's CPU allocator says it failed (a ``RuntimeError``, not a ``MemoryError``; c10/core/CPUAllocator.cpp).
_CPU_ALLOCATOR_FAILURES = ("DefaultCPUAllocator: can't allocate memory", "DefaultCPUAllocator: not enough memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for ``torch.OutOfMemoryError`` (a device ran out), ``MemoryError`` or torch's CPU allocator's
    ``RuntimeError`` (the host did).

    Does not import torch: an exception cannot be torch's unless torch is loaded.
    """
    import sys

    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, RuntimeError) and any(m in str(exc) for m in _CPU_ALLOCATOR_FAILURES):
        return True
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.OutOfMemoryError)


def describe_failure(exc: BaseException) -> str:
    """One line saying what ended a run, with advice where there is some."""
    if is_out_of_memory(exc):
        first = (str(exc).splitlines() or [""])[0]
        return (
            f"out of memory ({first[:160]}); lower the batch size or the image size, "
            "or turn on gradient checkpointing (-G gradient_checkpointing=true)"
        )
    if isinstance(exc, R0kitError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
