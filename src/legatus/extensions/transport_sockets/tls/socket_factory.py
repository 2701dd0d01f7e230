"""The TLS transport socket factories of a filter chain (``DownstreamTlsContext``) and a
cluster (``UpstreamTlsContext``): the compiled context, and in a worker the SSL contexts and
stats that wrap each new connection. Imported when a configuration names TLS, not before:
it brings in OpenSSL's certificate handling (``cryptography``), which a proxy without TLS
does not need in memory."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

from legatus.extensions.transport_sockets.tls.client_context import ClientContext
from legatus.extensions.transport_sockets.tls.context_config import (
    ClientTlsConfig,
    ServerTlsConfig,
    compile_downstream,
    compile_upstream,
)
from legatus.extensions.transport_sockets.tls.errors import TlsFailure
from legatus.extensions.transport_sockets.tls.server_context import ServerContext
from legatus.extensions.transport_sockets.tls.stats import HandshakeStats, SocketFactoryStats
from legatus.extensions.transport_sockets.tls.transport import TlsTransport

log = logging.getLogger("legatus.config")


# Envoy's NotReadySslSocket failure reason: a context whose SDS secret has not arrived.
SECRET_NOT_READY = "TLS error: Secret is not supplied by SDS"


def _watch_secrets(config: Any, callback: Callable[[], None], stats: SocketFactoryStats) -> None:
    """Have ``callback`` told of each SDS update of ``config``'s secrets. Envoy counts the
    first value of each secret from SDS as an update of the context (a static secret has
    no updates): a value there already counts now, one still to come when it arrives."""
    common = config.common
    for provider in (*common.certificate_providers, common.validation_provider):
        if provider is None:
            continue
        if provider.dynamic and getattr(provider, "ready", True):
            stats.ssl_context_update_by_sds.inc()
        provider.add_callback(callback)


class DownstreamTlsSocketFactory:
    """A filter chain's TLS: wraps each accepted connection (see network/transport_socket).

    With SDS secrets, an accepted update makes a new ``ServerContext`` (new SSL contexts):
    new connections use it, connections already open keep the one they started with. While
    a secret over xDS has not arrived there is no context: a connection is closed at once,
    counted in ``downstream_context_secrets_not_ready``, as Envoy does."""

    __slots__ = ("__weakref__", "_context", "_factory_stats", "_scope", "_stats", "config")

    def __init__(self, config: ServerTlsConfig, scope: Any) -> None:
        self.config = config
        self._context: ServerContext | None = None
        self._factory_stats: SocketFactoryStats | None = None
        self._stats: HandshakeStats | None = None
        self._scope = scope
        if scope is not None:
            self._factory_stats = SocketFactoryStats(scope.scope("server_ssl_socket_factory."))
            self._stats = HandshakeStats(scope)
            if config.common.ready:
                self._context = ServerContext(config, self._stats)
            _watch_secrets(config, self._on_secret_update, self._factory_stats)

    def _on_secret_update(self) -> None:
        try:
            config = self.config.refreshed()
            if not config.common.ready:
                self.config = config
                self._factory_stats.ssl_context_update_by_sds.inc()
                return
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

    def attach(self, connection: Any, raw_transport: Any) -> Any:
        if self._context is None and self._scope is not None:
            self._factory_stats.downstream_context_secrets_not_ready.inc()
            return _DownstreamNotReady(connection, raw_transport)
        return TlsTransport(self.context.new_socket(), connection).attach(raw_transport)


class _DownstreamNotReady(asyncio.Protocol):
    """Envoy's NotReadySslSocket downstream: at the first bytes (the ClientHello) the
    connection is closed without reading them, which the peer sees as a reset."""

    def __init__(self, connection: Any, raw: Any) -> None:
        self.connection = connection
        self.raw = raw
        connection.transport_failure_reason = SECRET_NOT_READY
        raw.set_protocol(self)
        sock = raw.get_extra_info("socket")
        if sock is not None:  # closed with its bytes unread: the kernel resets, as Envoy's
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def data_received(self, data: bytes) -> None:
        self.raw.abort()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection.connection_lost(exc)


class UpstreamTlsSocketFactory:
    """A cluster's TLS: the protocol upstream connections connect with. With SDS secrets,
    an update makes a new ``ClientContext`` for the connections made after it; while a
    secret over xDS has not arrived, a connection fails at once with Envoy's reason,
    counted in ``upstream_context_secrets_not_ready``."""

    __slots__ = ("__weakref__", "_context", "_factory_stats", "_stats", "config")

    def __init__(self, config: ClientTlsConfig, scope: Any) -> None:
        self.config = config
        self._context: ClientContext | None = None
        self._factory_stats: SocketFactoryStats | None = None
        self._stats: HandshakeStats | None = None
        if scope is not None:
            self._factory_stats = SocketFactoryStats(scope.scope("client_ssl_socket_factory."))
            self._stats = HandshakeStats(scope)
            if config.common.ready:
                self._context = ClientContext(config, self._stats)
            _watch_secrets(config, self._on_secret_update, self._factory_stats)

    def _on_secret_update(self) -> None:
        try:
            config = dataclasses.replace(self.config, common=self.config.common.refreshed())
            context = ClientContext(config, self._stats) if config.common.ready else None
        except Exception:  # checked before the provider accepted it: not expected
            log.exception("TLS context update from SDS failed; keeping the current one")
            return
        self.config = config
        if context is not None:
            self._context = context
        self._factory_stats.ssl_context_update_by_sds.inc()

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
    ) -> Any:
        if self._context is None and self._factory_stats is not None:
            self._factory_stats.upstream_context_secrets_not_ready.inc()
            return _NotReady(connection, on_failed)
        return TlsTransport(
            self.context.new_socket(server_name, host),
            connection,
            on_connected=on_connected,
            on_failed=on_failed,
        )


class _NotReady(asyncio.Protocol):
    """Envoy's NotReadySslSocket upstream: the connect completes, the connection fails."""

    def __init__(self, connection: Any, on_failed: Callable[[Any], None]) -> None:
        self.connection = connection
        self._on_failed: Callable[[Any], None] | None = on_failed

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        transport.close()
        self.connection.transport_failure_reason = SECRET_NOT_READY
        on_failed, self._on_failed = self._on_failed, None
        if on_failed is not None:
            on_failed(TlsFailure(SECRET_NOT_READY))


def downstream(proto, context, path: str) -> DownstreamTlsSocketFactory:
    config = compile_downstream(proto, path, getattr(context, "secret_manager", None))
    scope = None
    if not context.validating and context.listener_stat_prefix is not None:
        scope = context.store.scope(context.listener_stat_prefix)
    return DownstreamTlsSocketFactory(config, scope)


def upstream(proto, context, path: str) -> UpstreamTlsSocketFactory:
    """``context`` here is the cluster's: ``UpstreamContext(store scope or None)``, with the
    process's SDS secrets (``secret_manager``) when the cluster was compiled with them."""
    config = compile_upstream(proto, path, getattr(context, "secret_manager", None))
    return UpstreamTlsSocketFactory(config, getattr(context, "scope", None))
