"""The extensions legatus ships, registered into an explicit Registry."""

from __future__ import annotations

from legatus.registry import Registry


_EXTENSIONS = (
    "filters.network.tcp_proxy",
    "filters.network.echo",
    "filters.network.direct_response",
    "access_loggers.file",
    "access_loggers.stream",
)


def default_registry() -> Registry:
    import importlib

    registry = Registry()
    for name in _EXTENSIONS:
        if name.startswith("access_loggers") and not _available(name):
            continue
        importlib.import_module(f"legatus.extensions.{name}").register(registry)
    return registry


def _available(name: str) -> bool:  # TEMPORARY while access loggers land
    import importlib.util

    return importlib.util.find_spec(f"legatus.extensions.{name}") is not None and hasattr(
        importlib.import_module(f"legatus.extensions.{name}"), "register")
