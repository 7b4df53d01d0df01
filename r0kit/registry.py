"""Typed registries, filled by the ``r0kit_register_*`` hooks.

A registry maps a name to an :class:`Entry`: the factory, the plugin that
registered it, and for rewards the input contract. Lookup of an unknown name
raises :class:`~r0kit.errors.UnknownNameError` listing the known names and
the closest match; options a factory does not take raise
:class:`~r0kit.errors.OptionError` naming the option, before the factory runs.
"""

from __future__ import annotations

import difflib
import inspect
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from r0kit.errors import OptionError, PluginError, UnknownNameError

Kind = Literal["reward", "regularizer", "generator", "metric"]


@dataclass(frozen=True)
class Entry:
    name: str
    kind: Kind
    factory: Callable[..., Any]
    plugin: str
    description: str = ""
    contract: Any = None  # RewardContract for rewards

    def signature(self) -> inspect.Signature:
        """The factory's signature. A ``torch.nn.Module`` subclass without an ``__init__`` of its own
        takes no options, although the ``__init__`` it inherits reads ``(*args, **kwargs)``.

        :raises TypeError, ValueError: as :func:`inspect.signature` does, for a factory it cannot read.
        """
        f = self.factory
        torch = sys.modules.get("torch")
        # by identity: torch may wrap Module.__init__ (so that inspect.signature fails on it), under its own name
        if isinstance(f, type) and torch is not None and f.__init__ is torch.nn.Module.__init__:
            return inspect.Signature()
        return inspect.signature(f)

    def accepted_options(self) -> list[str]:
        try:
            params = self.signature().parameters.values()
        except (TypeError, ValueError):
            return []
        return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]

    def check_options(self, options: dict[str, Any]) -> None:
        """Raise :class:`OptionError` naming any option ``factory`` rejects."""
        try:
            sig = self.signature()
        except (TypeError, ValueError):
            return
        if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            return
        known = self.accepted_options()
        for key in options:
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                raise OptionError(
                    f"{self.kind} {self.name!r} has no option {key!r}"
                    + (f" (did you mean {hint[0]!r}?)" if hint else "")
                    + f"; it accepts: {', '.join(known) or 'no options'}"
                )
        try:
            sig.bind(**options)
        except TypeError as exc:
            raise OptionError(f"{self.kind} {self.name!r}: {exc}") from None

    def create(self, **options: Any) -> Any:
        self.check_options(options)
        try:
            obj = self.factory(**options)
        except (TypeError, ValueError) as exc:
            # A factory's own validation of option values.
            if isinstance(exc, OptionError) or type(exc).__module__.startswith("r0kit"):
                raise
            raise OptionError(f"{self.kind} {self.name!r} rejected its options {options}: {exc}") from exc
        self._check_product(obj)
        return obj

    def _check_product(self, obj: Any) -> None:
        """Refuse, naming the plugin, a factory result that cannot work as its kind."""
        if self.kind == "generator":
            missing = [m for m in ("prepare", "parameters", "sample") if not callable(getattr(obj, m, None))]
            what = f"has no {', '.join(missing)} method{'s' if len(missing) > 1 else ''}" if missing else ""
        else:
            what = "is not callable" if not callable(obj) else ""
        if what:
            raise PluginError(
                f"plugin {self.plugin!r}: the factory of {self.kind} {self.name!r} returned a "
                f"{type(obj).__name__}, which {what}; see the r0kit_register_{self.kind}s hook for what it must return"
            )


@dataclass
class Registry:
    kind: Kind
    entries: dict[str, Entry] = field(default_factory=dict)
    #: Set by the plugin host: ``explain_missing(kind)`` says why a name may be missing
    #: (the R0KIT_LOAD_PLUGINS filter, plugins that failed to load), or ``""``.
    explain_missing: Callable[[str], str] | None = field(default=None, repr=False, compare=False)

    def add(self, entry: Entry) -> None:
        if not callable(entry.factory):
            raise PluginError(
                f"plugin {entry.plugin!r} registered {self.kind} {entry.name!r} with a "
                f"factory that is not callable ({type(entry.factory).__name__}); pass a "
                "function or class that builds the object from its options"
            )
        if not isinstance(entry.name, str) or not entry.name.isidentifier():
            raise PluginError(
                f"plugin {entry.plugin!r} registered {self.kind} name {entry.name!r}; "
                "names must be Python identifiers such as 'my_reward'"
            )
        if entry.name in self.entries:
            other = self.entries[entry.name].plugin
            raise PluginError(
                f"{self.kind} {entry.name!r} is registered by both plugin {other!r} and "
                f"plugin {entry.plugin!r}; uninstall or block one of them "
                "(R0KIT_LOAD_PLUGINS lists the plugins to load)"
            )
        self.entries[entry.name] = entry

    def get(self, name: str) -> Entry:
        try:
            return self.entries[name]
        except KeyError:
            known = sorted(self.entries)
            close = difflib.get_close_matches(name, known, n=1)
            why = self.explain_missing(self.kind) if self.explain_missing is not None else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}"
                + (f"; did you mean {close[0]!r}?" if close else ".")
                + f" Known {self.kind}s: {', '.join(known) or 'none'}."
                + (f" {why}" if why else "")
                + " Run `r0kit plugins` to see what is installed."
            ) from None

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def __iter__(self):
        return iter(sorted(self.entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self.entries)
