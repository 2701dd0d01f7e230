"""The extensions legatus ships, registered into an explicit Registry."""

from __future__ import annotations

from legatus.registry import Registry


def default_registry() -> Registry:
    from legatus.extensions.access_loggers import file, stream
    from legatus.extensions.filters.network import direct_response, echo, tcp_proxy

    registry = Registry()
    for module in (tcp_proxy, echo, direct_response, file, stream):
        module.register(registry)
    return registry
