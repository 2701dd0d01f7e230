"""A cluster's ``transport_socket``: compiled with the cluster, made per worker.

Clusters are compiled without a factory context (in the main process and in each worker from
the same proto), so the upstream transport socket extensions have a registry of their own
here, with the same lookup and the same refusal of an extension legatus does not have (its
name, type URL and path). ``compile_cluster_transport_socket`` gives the frozen config (None
for plaintext); ``upstream_socket_factory`` makes the worker's factory (SSL context, session
cache, ``cluster.<name>.ssl.*`` stats) from it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from legatus.registry import Category, Registry


@cache
def _registry() -> Registry:
    from legatus.extensions.transport_sockets import raw_buffer, tls

    registry = Registry()
    tls.register(registry)
    raw_buffer.register(registry)
    return registry


class _CompileOnly:
    """What an upstream transport socket factory gets at compile time: no stats scope, and
    the process's SDS secrets (None: static secrets are unknown, file ones read afresh)."""

    scope = None

    def __init__(self, secret_manager: Any = None) -> None:
        self.secret_manager = secret_manager


def compile_cluster_transport_socket(proto, path: str, secrets: Any = None) -> Any:
    """The compiled ``Cluster.transport_socket`` (a frozen ClientTlsConfig), or None."""
    from legatus.config.supported import check_supported

    check_supported(proto, ("name", "typed_config"), path, "TransportSocket")
    context = _CompileOnly(secrets)
    factory = _registry().create(Category.TRANSPORT_SOCKET_UPSTREAM, proto, context, path)
    return None if factory is None else factory.config


def upstream_socket_factory(compiled: Any, scope: Any) -> Any:
    """The worker's factory for a cluster whose ``transport_socket`` compiled to
    ``compiled`` (None: plaintext); ``scope`` is the cluster's ``cluster.<name>.``."""
    if compiled is None:
        return None
    from legatus.extensions.transport_sockets.tls.socket_factory import UpstreamTlsSocketFactory

    return UpstreamTlsSocketFactory(compiled, scope)
