"""The TLS transport socket factories of a filter chain (``DownstreamTlsContext``) and a
cluster (``UpstreamTlsContext``): the compiled context, and in a worker the SSL contexts and
stats that wrap each new connection. Imported when a configuration names TLS, not before:
it brings in OpenSSL's certificate handling (``cryptography``), which a proxy without TLS
does not need in memory."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from legatus.extensions.transport_sockets.tls.client_context import ClientContext
from legatus.extensions.transport_sockets.tls.context_config import (
    ClientTlsConfig,
    ServerTlsConfig,
    compile_downstream,
    compile_upstream,
)
from legatus.extensions.transport_sockets.tls.server_context import ServerContext
from legatus.extensions.transport_sockets.tls.stats import HandshakeStats, SocketFactoryStats
from legatus.extensions.transport_sockets.tls.transport import TlsTransport

log = logging.getLogger("legatus.config")


class DownstreamTlsSocketFactory:
    """A filter chain's TLS: wraps each accepted connection (see network/transport_socket).

    With SDS secrets, an accepted update makes a new ``ServerContext`` (new SSL contexts):
    new connections use it, connections already open keep the one they started with."""

    __slots__ = ("__weakref__", "_context", "_factory_stats", "_stats", "config")

    def __init__(self, config: ServerTlsConfig, scope: Any) -> None:
        self.config = config
        self._context: ServerContext | None = None
        self._factory_stats: SocketFactoryStats | None = None
        self._stats: HandshakeStats | None = None
        if scope is not None:
            self._factory_stats = SocketFactoryStats(scope.scope("server_ssl_socket_factory."))
            self._stats = HandshakeStats(scope)
            self._context = ServerContext(config, self._stats)
            common = config.common
            # Envoy counts the first value of each secret from SDS as an update of the
            # context (a static secret has no updates).
            for provider in (*common.certificate_providers, common.validation_provider):
                if provider is not None and provider.dynamic:
                    self._factory_stats.ssl_context_update_by_sds.inc()
            for provider in common.certificate_providers:
                provider.add_callback(self._on_secret_update)
            if common.validation_provider is not None:
                common.validation_provider.add_callback(self._on_secret_update)

    def _on_secret_update(self) -> None:
        try:
            config = self.config.refreshed()
            context = ServerContext(config, self._stats)
        except Exception:  # checked before the provider accepted it: not expected
            log.exception("TLS context update from SDS failed; keeping the current one")
            return
        self.config = config
        self._context = context
        self._factory_stats.ssl_context_update_by_sds.inc()

    @property
    def context(self) -> ServerContext:
        if self._context is None:
            raise RuntimeError("a validate-only TLS socket factory cannot make connections")
        return self._context

    def attach(self, connection: Any, raw_transport: Any) -> TlsTransport:
        return TlsTransport(self.context.new_socket(), connection).attach(raw_transport)


class UpstreamTlsSocketFactory:
    """A cluster's TLS: the protocol upstream connections connect with."""

    __slots__ = ("_context", "config")

    def __init__(self, config: ClientTlsConfig, scope: Any) -> None:
        self.config = config
        self._context: ClientContext | None = None
        if scope is not None:
            SocketFactoryStats(scope.scope("client_ssl_socket_factory."))
            self._context = ClientContext(config, HandshakeStats(scope))

    @property
    def context(self) -> ClientContext:
        if self._context is None:
            raise RuntimeError("a validate-only TLS socket factory cannot make connections")
        return self._context

    def upstream_protocol(
        self,
        connection: Any,
        on_connected: Callable[[], None],
        on_failed: Callable[[Any], None],
        server_name: str | None = None,
        host: Any = None,
    ) -> TlsTransport:
        return TlsTransport(
            self.context.new_socket(server_name, host),
            connection,
            on_connected=on_connected,
            on_failed=on_failed,
        )


def downstream(proto, context, path: str) -> DownstreamTlsSocketFactory:
    config = compile_downstream(proto, path, getattr(context, "secret_manager", None))
    scope = None
    if not context.validating and context.listener_stat_prefix is not None:
        scope = context.store.scope(context.listener_stat_prefix)
    return DownstreamTlsSocketFactory(config, scope)


def upstream(proto, context, path: str) -> UpstreamTlsSocketFactory:
    """``context`` here is the cluster's: ``UpstreamContext(store scope or None)``."""
    return UpstreamTlsSocketFactory(compile_upstream(proto, path), getattr(context, "scope", None))
