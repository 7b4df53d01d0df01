"""The plugin manager: built-ins, entry points, allowlist and failure isolation.

Built-in plugins are ordinary modules under ``plugins/`` listed in
:data:`DEFAULT_PLUGINS`; third-party plugins are found in the ``r0kit``
entry-point group. Both are registered with pluggy the same way and both go
through the same ``register`` callbacks.

Environment:

``R0KIT_LOAD_PLUGINS=a,b``
    Allowlist: load only the named plugins (built-in module names or
    entry-point names). Everything else is blocked.
``R0KIT_DISABLE_AUTOLOAD=1``
    Do not load entry-point plugins. The test suite sets this; tests that
    need autoload ask for it.

A plugin that fails to import, to validate against the hook specs, or to
register is recorded with its reason (``r0kit plugins`` shows it) and the
others still load. Nothing about the selection is silent: building the host
warns (:class:`~r0kit.errors.R0kitWarning`) about every plugin that failed and
every allowlist name that matches no plugin, and an unknown name says when
the allowlist is filtering. The registry entries of a failed registration are rolled
back, so a half-registered plugin never lingers.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import os
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import pluggy

from r0kit import hookspecs
from r0kit.errors import PluginError, R0kitWarning
from r0kit.registry import Entry, Registry

ENTRY_POINT_GROUP = "r0kit"
DEFAULT_PLUGINS: tuple[str, ...] = (
    "r0kit_analytic",
    "r0kit_regularizers",
    "r0kit_pixel",
    "r0kit_clip",
    "r0kit_hpsv2",
    "r0kit_imagereward",
    "r0kit_pickscore",
    "r0kit_aesthetic",
    "r0kit_diffusers",
    "r0kit_r0",
    "r0kit_fid",
    "r0kit_mini",
)

_HOOKS: tuple[tuple[str, str], ...] = (
    ("r0kit_register_rewards", "reward"),
    ("r0kit_register_regularizers", "regularizer"),
    ("r0kit_register_generators", "generator"),
    ("r0kit_register_metrics", "metric"),
)


@dataclass
class PluginStatus:
    name: str
    source: str  # "builtin", "entrypoint" or "runtime"
    version: str
    ok: bool
    error: str = ""


def _r0kit_version() -> str:
    try:
        return importlib.metadata.version("r0kit")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _allowlist() -> set[str] | None:
    raw = os.environ.get("R0KIT_LOAD_PLUGINS")
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def _autoload_disabled() -> bool:
    return os.environ.get("R0KIT_DISABLE_AUTOLOAD", "").lower() in ("1", "true", "yes")


class PluginHost:
    """A plugin manager and the registries it fills (rewards, regularizers, generators, metrics).

    Core code talks to plugins only through this facade.
    """

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("r0kit")
        self.pm.add_hookspecs(hookspecs)
        self.registries: dict[str, Registry] = {
            kind: Registry(kind) for _, kind in _HOOKS  # type: ignore[arg-type]
        }
        self.statuses: dict[str, PluginStatus] = {}
        self.blocked: list[str] = []  # plugins R0KIT_LOAD_PLUGINS kept out
        for registry in self.registries.values():
            registry.explain_missing = self.explain_missing

    # -- registries -------------------------------------------------------
    @property
    def rewards(self) -> Registry:
        return self.registries["reward"]

    @property
    def regularizers(self) -> Registry:
        return self.registries["regularizer"]

    @property
    def generators(self) -> Registry:
        return self.registries["generator"]

    @property
    def metrics(self) -> Registry:
        return self.registries["metric"]

    # -- loading ------------------------------------------------------------
    def load_defaults(self) -> None:
        allow = _allowlist()
        for modname in DEFAULT_PLUGINS:
            if allow is not None and modname not in allow:
                self.pm.set_blocked(modname)
                self.blocked.append(modname)
                continue
            try:
                module = importlib.import_module(modname)
            except Exception as exc:  # a broken plugin must not stop the others
                self._fail(modname, "builtin", _r0kit_version(), f"import failed: {exc!r}")
                continue
            self.add_plugin(module, name=modname, source="builtin", version=_r0kit_version())

    def load_entrypoints(self) -> None:
        if _autoload_disabled():
            return
        allow = _allowlist()
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            version = ep.dist.version if ep.dist is not None else "?"
            if ep.name in self.statuses or self.pm.is_blocked(ep.name):
                continue
            if allow is not None and ep.name not in allow:
                self.pm.set_blocked(ep.name)
                self.blocked.append(ep.name)
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                self._fail(ep.name, "entrypoint", version, f"import of {ep.value!r} failed: {exc!r}")
                continue
            self.add_plugin(plugin, name=ep.name, source="entrypoint", version=version)

    def add_plugin(
        self, plugin: Any, name: str | None = None, *, source: str = "runtime", version: str = ""
    ) -> str | None:
        """Register one plugin object (a module or an instance) and run its hooks.

        Returns the plugin's name, or ``None`` when it failed (the failure is
        recorded in :attr:`statuses`).
        """
        if inspect.isclass(plugin):
            raise TypeError(
                f"add_plugin() got the class {plugin.__name__}; register an instance "
                f"({plugin.__name__}()) or a module"
            )
        name = name or getattr(plugin, "__name__", None) or repr(plugin)
        version = version or getattr(plugin, "__version__", "") or _r0kit_version()
        if name in self.statuses and self.statuses[name].ok:
            raise PluginError(f"a plugin named {name!r} is already registered")
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except Exception as exc:
            if self.pm.get_plugin(name) is not None:
                self.pm.unregister(name=name)
            self._fail(name, source, version, f"hook validation failed: {exc}")
            return None
        try:
            self._run_registration(name)
        except Exception as exc:
            self.pm.unregister(name=name)
            self._fail(name, source, version, str(exc) if isinstance(exc, PluginError) else f"registration failed: {exc!r}")
            return None
        self.statuses[name] = PluginStatus(name, source, version, ok=True)
        return name

    def remove_plugin(self, name: str) -> None:
        """Unregister a plugin and drop everything it registered."""
        if self.pm.get_plugin(name) is not None:
            self.pm.unregister(name=name)
        for registry in self.registries.values():
            for key in [k for k, e in registry.entries.items() if e.plugin == name]:
                del registry.entries[key]
        self.statuses.pop(name, None)

    # -- saying what the selection did ----------------------------------------
    def selection_warnings(self) -> list[str]:
        """What the user should hear about the plugin selection, one sentence each.

        A name in ``R0KIT_LOAD_PLUGINS`` that matches no plugin, an entry-point
        plugin it names while autoload is off, and every plugin that failed to
        load (a broken import, a name clash with another plugin) are reported,
        so that a missing reward is never a silent surprise.
        """
        out = []
        allow = _allowlist()
        if allow == set():
            out.append(
                f"R0KIT_LOAD_PLUGINS={os.environ.get('R0KIT_LOAD_PLUGINS', '')!r} names no plugin, so none loads: there is "
                "no reward, regularizer, generator or metric; unset it to load them all, or name the ones to load"
            )
        if allow is not None:
            entry_points = {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
            for name in sorted(allow - set(self.statuses)):
                if name in entry_points and _autoload_disabled():
                    out.append(
                        f"R0KIT_LOAD_PLUGINS names {name!r}, an installed entry-point plugin, but R0KIT_DISABLE_AUTOLOAD "
                        "is set, so it was not loaded"
                    )
                elif name not in entry_points and name not in DEFAULT_PLUGINS:
                    known = sorted(set(DEFAULT_PLUGINS) | entry_points)
                    hint = difflib.get_close_matches(name, known, n=1)
                    out.append(
                        f"R0KIT_LOAD_PLUGINS names {name!r}, which matches no plugin"
                        + (f" (did you mean {hint[0]!r}?)" if hint else "")
                        + f"; the plugins are: {', '.join(known)}"
                    )
        for st in self.statuses.values():
            if not st.ok:
                first = (st.error.splitlines() or ["(no reason recorded)"])[0]
                out.append(f"plugin {st.name!r} was not loaded: {first} (r0kit plugins --verbose shows the details)")
        return out

    def explain_missing(self, kind: str) -> str:
        """Why a registry may lack a name: the plugin filter and the plugins that failed to load."""
        parts = []
        raw = os.environ.get("R0KIT_LOAD_PLUGINS")
        if raw is not None:
            parts.append(
                f"R0KIT_LOAD_PLUGINS={raw!r} is set, so only those plugins load"
                + (f"; it keeps out {', '.join(self.blocked)}" if self.blocked else "")
                + "; unset it, or add the plugin that provides the name."
            )
        failed = [st.name for st in self.statuses.values() if not st.ok]
        if failed:
            parts.append(f"Plugin(s) that failed to load: {', '.join(failed)} (r0kit plugins --verbose shows why).")
        return " ".join(parts)

    def _fail(self, name: str, source: str, version: str, error: str) -> None:
        self.statuses[name] = PluginStatus(name, source, version, ok=False, error=error)

    def _run_registration(self, plugin_name: str) -> None:
        staged: list[tuple[Registry, Entry]] = []
        for hookname, kind in _HOOKS:
            registry = self.registries[kind]
            for impl in getattr(self.pm.hook, hookname).get_hookimpls():
                if impl.plugin_name != plugin_name:
                    continue
                impl.function(**_kwargs_for(impl.argnames, register=self._register_callback(kind, plugin_name, staged)))
        # All-or-nothing: validate every staged entry before committing any.
        seen: dict[tuple[str, str], Entry] = {}
        for registry, entry in staged:
            if (registry.kind, entry.name) in seen:
                raise PluginError(f"plugin {plugin_name!r} registered {registry.kind} {entry.name!r} twice")
            seen[(registry.kind, entry.name)] = entry
            if entry.name in registry:
                registry.add(entry)  # raises, naming both plugins
        committed: list[tuple[Registry, Entry]] = []
        try:
            for registry, entry in staged:
                registry.add(entry)
                committed.append((registry, entry))
        except Exception:
            for registry, entry in committed:
                registry.entries.pop(entry.name, None)
            raise

    def _register_callback(self, kind: str, plugin_name: str, staged: list) -> Callable[..., None]:
        registry = self.registries[kind]

        def register(name: str, factory: Callable[..., Any], *, contract: Any = None, description: str = "") -> None:
            if kind == "reward":
                from r0kit.images import RewardContract

                if not isinstance(contract, RewardContract):
                    raise PluginError(
                        f"plugin {plugin_name!r} registered reward {name!r} without a contract; "
                        "pass contract=r0kit.RewardContract(...)"
                    )
            elif contract is not None:
                raise PluginError(f"plugin {plugin_name!r}: only rewards take a contract ({kind} {name!r})")
            entry = Entry(name=name, kind=kind, factory=factory, plugin=plugin_name, description=description, contract=contract)  # type: ignore[arg-type]
            if not callable(factory):
                registry.add(entry)  # raises the friendly error
            staged.append((registry, entry))

        return register


def _kwargs_for(argnames: Iterable[str], **available: Any) -> dict[str, Any]:
    return {k: v for k, v in available.items() if k in argnames}


_host: PluginHost | None = None
_lock = threading.Lock()


def get_host() -> PluginHost:
    """The process-wide plugin host, built on first use."""
    global _host
    with _lock:
        if _host is None:
            host = PluginHost()
            host.load_defaults()
            host.load_entrypoints()
            _host = host
            for message in host.selection_warnings():
                warnings.warn(message, R0kitWarning, stacklevel=3)
        return _host


def reset_host() -> None:
    """Forget the plugin host, so the next :func:`get_host` reloads (tests, env changes)."""
    global _host
    with _lock:
        _host = None
