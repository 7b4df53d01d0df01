"""The ``r0kit`` command.

Each subcommand is a module under :mod:`r0kit.commands` exposing
``add_parser(subparsers)`` and ``run(args) -> int``.

Every way a command can fail prints one line (or a short list) starting with
``r0kit: error:``, with no traceback, and exits non-zero:

* 2: bad input (argparse's own errors included), or a failure that ended a
  run; what the run kept, and where, is in the message;
* 1: a run stopped early on a NaN or Inf; what it kept is in the message;
* 130: Ctrl-C, at any point, start-up included.

``R0KIT_TRACEBACK=1`` shows the traceback as well, for debugging a plugin.
Warnings that do not stop the command (a plugin filtered out or disabled)
print as ``r0kit: warning: ...``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
import warnings

from r0kit.errors import R0kitError, R0kitWarning, describe_failure, is_out_of_memory

COMMANDS: tuple[str, ...] = (
    "r0kit.commands.plugins",
    "r0kit.commands.optimize",
    "r0kit.commands.score",
    "r0kit.commands.new_plugin",
    "r0kit.commands.bench",
    "r0kit.commands.train",
    "r0kit.commands.evaluate",
)


def build_parser() -> argparse.ArgumentParser:
    from r0kit import __version__

    parser = argparse.ArgumentParser(
        prog="r0kit",
        description="Regularized reward maximization for text-to-image generation.",
    )
    parser.add_argument("--version", action="version", version=f"r0kit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for modname in COMMANDS:
        importlib.import_module(modname).add_parser(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, R0kitWarning):
        print(f"r0kit: warning: {message}", file=sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def import_torch_holding_ctrl_c() -> None:
    """Import torch with a Ctrl-C held until the import ends, then raised as ``KeyboardInterrupt``.

    torch's C extension imports numpy while it initializes and takes any failure
    there, a ``KeyboardInterrupt`` included, for "numpy is unavailable": a Ctrl-C in
    that window was lost, and the command ran on with a half-imported numpy. Does
    nothing when torch is already imported, off the main thread (where signal
    handlers cannot be set), or when SIGINT is ignored.

    Raises:
        KeyboardInterrupt: a Ctrl-C arrived during the import.
    """
    if "torch" in sys.modules or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        import torch  # noqa: F401
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        import torch  # noqa: F401
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        raise KeyboardInterrupt


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or ``kill``'s stop), raised where a Ctrl-C would be so that a run ends the
    same way: ``train`` writes a checkpoint, an ``--overwrite`` that has no results yet puts the earlier
    run's files back, and the output folder keeps what was finished."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    debug = os.environ.get("R0KIT_TRACEBACK", "").lower() in ("1", "true", "yes")
    previous = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
        import_torch_holding_ctrl_c()
        with warnings.catch_warnings():
            warnings.simplefilter("always", R0kitWarning)
            warnings.showwarning = _show_warning
            return int(args.run(args) or 0)
    except Terminated:
        print("r0kit: terminated (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("r0kit: interrupted", file=sys.stderr)
        return 130
    except R0kitError as exc:
        if debug:
            raise
        print(f"r0kit: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, MemoryError) as exc:
        if debug:
            raise
        print(f"r0kit: error: {_describe(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if debug:
            raise
        if is_out_of_memory(exc):
            print(f"r0kit: error: {describe_failure(exc)}", file=sys.stderr)
            return 2
        print(
            f"r0kit: error: {type(exc).__name__}: {exc}\n"
            "This is a bug in r0kit or a plugin: rerun with R0KIT_TRACEBACK=1 to see where, and report it.",
            file=sys.stderr,
        )
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _describe(exc: BaseException) -> str:
    import errno

    if isinstance(exc, MemoryError):
        return "out of memory; lower the batch size or the image size"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"no space left on the device ({exc.filename or 'writing a file'}); free some space and run again"
    return f"{exc.strerror or exc}: {exc.filename!r}" if isinstance(exc, OSError) and exc.filename else str(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
