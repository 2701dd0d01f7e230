"""The TLS inspector filter: one per accepted socket, fed the socket's first bytes."""

from __future__ import annotations

from typing import Any

from legatus.extensions.transport_sockets.tls.hello import ClientHelloParser, ParseState
from legatus.network.listener_filter import AcceptedSocket, ListenerFilter, ListenerFilterStatus
from legatus.stats.store import StatSet, counter, histogram

_CONTINUE = ListenerFilterStatus.CONTINUE
_STOP = ListenerFilterStatus.STOP_ITERATION


class TlsInspectorStats(StatSet):
    client_hello_too_large = counter()
    tls_found = counter()
    tls_not_found = counter()
    alpn_found = counter()
    alpn_not_found = counter()
    sni_found = counter()
    sni_not_found = counter()
    bytes_processed = histogram()


class TlsInspectorConfig:
    """The compiled config and its stats (made once per listener, per worker)."""

    __slots__ = ("close_on_parsing_errors", "max_client_hello_size", "stats")

    def __init__(self, *, max_client_hello_size: int, close_on_parsing_errors: bool,
                 store: Any) -> None:  # fmt: skip
        self.max_client_hello_size = max_client_hello_size
        self.close_on_parsing_errors = close_on_parsing_errors
        self.stats = TlsInspectorStats(store.scope("tls_inspector.")) if store is not None else None


class TlsInspectorFilter(ListenerFilter):
    __slots__ = ("_config", "_parser", "max_read_bytes")

    def __init__(self, config: TlsInspectorConfig) -> None:
        self._config = config
        self._parser = ClientHelloParser(config.max_client_hello_size)
        self.max_read_bytes = config.max_client_hello_size

    def on_accept(self, socket: AcceptedSocket) -> ListenerFilterStatus:
        return _STOP

    def on_data(self, socket: AcceptedSocket, data: bytes) -> ListenerFilterStatus:
        parser = self._parser
        seen = parser.bytes_fed
        state = parser.feed(data[seen:])
        if state is ParseState.NEED_MORE:
            return _STOP
        stats = self._config.stats
        stats.bytes_processed.record(parser.bytes_processed)
        if state is ParseState.DONE:
            hello = parser.hello
            stats.tls_found.inc()
            socket.detected_transport_protocol = "tls"
            if hello.server_name:
                stats.sni_found.inc()
                socket.requested_server_name = hello.server_name
            else:
                stats.sni_not_found.inc()
            if hello.has_alpn:
                stats.alpn_found.inc()
                socket.requested_application_protocols = hello.alpn
            else:
                stats.alpn_not_found.inc()
            return _CONTINUE
        if state is ParseState.TOO_LARGE:
            stats.client_hello_too_large.inc()
            socket.close()
            return _STOP
        if self._config.close_on_parsing_errors:
            socket.close()
            return _STOP
        stats.tls_not_found.inc()
        return _CONTINUE
