"""Register a plugin for the length of one block or one test."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from r0kit.errors import PluginError


@contextlib.contextmanager
def registered_plugin(plugin: Any, name: str | None = None, *, host: Any = None) -> Iterator[str]:
    """Register ``plugin`` (a module or an instance with ``@r0kit.hookimpl``
    methods) with the plugin host, yield its name, and unregister it, with
    everything it registered, on exit.

    A plugin that fails to register raises :class:`~r0kit.PluginError` with the
    host's reason, and leaves the host as it was. A plugin object that the
    host already loaded (say, from its installed entry point) is used as is
    and left registered.

    :param host: a :class:`r0kit.plugins.PluginHost`; default the process-wide one.
    """
    from r0kit.plugins import get_host

    host = host if host is not None else get_host()
    if host.pm.is_registered(plugin):
        yield host.pm.get_name(plugin)
        return
    name = name or getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{id(plugin):x}"
    registered = host.add_plugin(plugin, name=name)
    if registered is None:
        status = host.statuses.pop(name, None)
        raise PluginError(f"plugin {name!r} failed to register: {status.error if status else 'unknown reason'}")
    try:
        yield registered
    finally:
        host.remove_plugin(registered)
