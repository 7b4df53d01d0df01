"""The hook reference of ``CONTRIBUTING.md``, generated from :mod:`r0kit.hookspecs`.

The reference lives between two markers in ``CONTRIBUTING.md``::

    <!-- hook-reference:start -->
    ...
    <!-- hook-reference:end -->

``python -m r0kit.testing.docs`` checks that it matches the hook specs;
``python -m r0kit.testing.docs --write`` rewrites it.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path
from typing import Any, Callable

START = "<!-- hook-reference:start -->"
END = "<!-- hook-reference:end -->"


def hook_specs() -> dict[str, Callable[..., Any]]:
    """Every hook spec of :mod:`r0kit.hookspecs`, by name, in source order."""
    from r0kit import hookspecs

    specs = [
        obj
        for name, obj in vars(hookspecs).items()
        if callable(obj) and hasattr(obj, "r0kit_spec") and name.startswith("r0kit_")
    ]
    specs.sort(key=lambda f: f.__code__.co_firstlineno)
    return {f.__name__: f for f in specs}


def hook_arguments(name: str) -> list[str]:
    return list(inspect.signature(hook_specs()[name]).parameters)


def _callback_signature(annotation: Any) -> str | None:
    from r0kit import hookspecs

    cls = getattr(hookspecs, annotation, None) if isinstance(annotation, str) else annotation
    call = getattr(cls, "__call__", None) if isinstance(cls, type) else None
    if call is None or cls.__module__ != hookspecs.__name__:
        return None
    return _format_signature(inspect.signature(call), skip_self=True)


def _format_signature(sig: inspect.Signature, *, skip_self: bool = False) -> str:
    """Like ``str(sig)``, with string annotations written bare (``x: int``, not ``x: 'int'``)."""
    out: list[str] = []
    star_done = False
    for p in sig.parameters.values():
        if skip_self and p.name == "self":
            continue
        if p.kind is p.KEYWORD_ONLY and not star_done:
            out.append("*")
            star_done = True
        if p.kind is p.VAR_POSITIONAL:
            star_done = True
        prefix = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
        text = prefix + p.name
        if p.annotation is not p.empty:
            text += f": {p.annotation if isinstance(p.annotation, str) else inspect.formatannotation(p.annotation)}"
        if p.default is not p.empty:
            text += f" = {p.default!r}" if p.annotation is not p.empty else f"={p.default!r}"
        out.append(text)
    ret = sig.return_annotation
    tail = "" if ret is sig.empty else f" -> {ret if isinstance(ret, str) else inspect.formatannotation(ret)}"
    return f"({', '.join(out)}){tail}"


def _rst_to_md(doc: str) -> str:
    text = inspect.cleandoc(doc)
    text = re.sub(r":(?:class|func|meth|data|mod|attr):`~?([^`]+)`", r"`\1`", text)
    out: list[str] = []
    for line in text.splitlines():
        m = re.match(r":param (\w+):\s*(.*)", line)
        r = re.match(r":returns?:\s*(.*)", line)
        v = re.match(r"\.\. versionadded:: (\S+)", line)
        if m:
            out.append(f"- `{m.group(1)}`: {m.group(2)}")
        elif r:
            out.append(f"- returns: {r.group(1)}")
        elif v:
            out.append(f"*Added in {v.group(1)}.*")
        elif line.startswith("    ") and out and out[-1].startswith("- "):
            out[-1] += " " + line.strip()
        else:
            out.append(line)
    return "\n".join(out).strip()


def hook_reference() -> str:
    """The markdown of the hook reference, one section per hook."""
    parts = []
    for name, spec in hook_specs().items():
        sig = inspect.signature(spec)
        args = ", ".join(sig.parameters)
        opts = spec.r0kit_spec  # type: ignore[attr-defined]
        flags = [k for k in ("firstresult", "historic") if opts.get(k)]
        block = [f"### `{name}({args})`", ""]
        block.append("```python")
        block.append(f"@r0kit.hookimpl\ndef {name}{_format_signature(sig)}: ...")
        block.append("```")
        for p in sig.parameters.values():
            cb = _callback_signature(p.annotation)
            if cb is not None:
                block += ["", f"`{p.name}` is called as `{p.name}{cb}`."]
        if flags:
            block += ["", "Spec options: " + ", ".join(f"`{f}=True`" for f in flags) + "."]
        block += ["", _rst_to_md(spec.__doc__ or "(undocumented)")]
        parts.append("\n".join(block))
    return "\n\n".join(parts) + "\n"


def current_reference(text: str) -> str | None:
    """The text between the markers, or ``None`` when the markers are missing."""
    if START not in text or END not in text:
        return None
    return text.split(START, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def render(text: str) -> str:
    """``text`` with the part between the markers replaced by :func:`hook_reference`."""
    if START not in text or END not in text:
        raise ValueError(f"the file has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n\n{hook_reference()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m r0kit.testing.docs", description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default="CONTRIBUTING.md", type=Path)
    parser.add_argument("--write", action="store_true", help="rewrite the hook reference in place")
    args = parser.parse_args(argv)
    text = args.path.read_text(encoding="utf-8")
    new = render(text)
    if args.write:
        if new != text:
            args.path.write_text(new, encoding="utf-8")
            print(f"updated the hook reference in {args.path}")
        return 0
    if new != text:
        print(f"{args.path}: the hook reference is out of date; run python -m r0kit.testing.docs --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
