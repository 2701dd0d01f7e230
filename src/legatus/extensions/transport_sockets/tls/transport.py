"""The asyncio glue of a TLS connection: ``TlsTransport`` sits between the socket's asyncio
transport and the ``Connection``.

To the socket's transport it is the protocol (``data_received``, ``eof_received``,
``connection_lost``, the write watermarks); to the ``Connection`` it is the transport
(``write``, ``write_eof``, ``close``, ``abort``, ``pause_reading``...). Bytes pass through
the sans-I/O ``SslSocket`` on the way. A plaintext connection has no such object: its
``Connection`` talks to the socket's transport directly, so TLS costs plaintext nothing.

Downstream, the listener swaps it in after the filter chain is chosen (``attach``); the
``Connection`` already exists and its read filters see plaintext once the handshake is done.
Upstream, it is the protocol ``loop.create_connection`` connects; the ``Connection`` is
made (``connection_made``) only when the handshake completes, which is when Envoy raises
``Connected`` for a TLS upstream, and a failed handshake is reported to ``on_failed``
instead, like a failed connect.

Closing: a flushing close sends close_notify first (Envoy's SslSocket::closeSocket); the
``Connection``'s end of stream (half-close) sends close_notify and then FIN. A peer's
close_notify or FIN is the ``Connection``'s end of stream. A failed handshake sends OpenSSL's
alert, records the failure reason on the connection and closes it, counted in ssl.* stats.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from legatus.extensions.transport_sockets.tls.errors import TlsFailure
from legatus.extensions.transport_sockets.tls.ssl_socket import SslSocket, SslState
from legatus.network.filter import CloseType

log = logging.getLogger("legatus.connection")

_OPEN = SslState.OPEN
_HANDSHAKING = (SslState.CLIENT_HELLO, SslState.HANDSHAKE)
_FLUSH_WRITE = CloseType.FLUSH_WRITE


class TlsTransport(asyncio.Protocol):
    __slots__ = ("_close_after_handshake", "_closing", "_eof_delivered", "_on_connected",
                 "_on_failed", "connection", "raw", "socket")  # fmt: skip

    def __init__(
        self,
        socket: SslSocket,
        connection: Any,
        *,
        on_connected: Callable[[], None] | None = None,
        on_failed: Callable[[TlsFailure], None] | None = None,
    ) -> None:
        self.socket = socket
        self.connection = connection
        self.raw: asyncio.Transport | None = None
        self._on_connected = on_connected
        self._on_failed = on_failed
        self._eof_delivered = False
        self._closing = False
        self._close_after_handshake = False

    # Set-up ------------------------------------------------------------------------------

    def attach(self, raw: asyncio.Transport) -> TlsTransport:
        """Downstream: take over an accepted connection's socket; returns self, which now
        receives its bytes (also those the listener filters read first)."""
        self.raw = raw
        raw.set_protocol(self)
        conn = self.connection
        conn.transport = self
        conn.secure = True
        return self

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Upstream: the TCP connect is done; send the ClientHello."""
        self.raw = transport
        self._flush()

    # Socket side (asyncio.Protocol) ---------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        sock = self.socket
        was_open = sock.state is _OPEN
        try:
            plain = sock.receive(data)
        except TlsFailure as failure:
            self._fail(failure)
            return
        except Exception:
            log.exception("[C%d] TLS error while reading; closing", self.connection.id)
            self._fail(TlsFailure(""))
            return
        out = sock.outgoing()
        if out:
            self.raw.write(out)  # type: ignore[union-attr]
        if not was_open and sock.state is _OPEN:
            self._on_handshake()
        conn = self.connection
        if plain:
            conn.data_received(plain)
        if sock.peer_closed and not self._eof_delivered:
            self._deliver_eof()

    def eof_received(self) -> bool:
        sock = self.socket
        if sock.state is not _OPEN and sock.state is not SslState.SHUTDOWN_SENT:
            try:
                sock.receive_eof()
            except TlsFailure as failure:
                self._fail(failure)
            return False
        if not self._eof_delivered:
            return self._deliver_eof()
        return not self.connection.write_ended

    def connection_lost(self, exc: Exception | None) -> None:
        conn = self.connection
        remember = getattr(self.socket._context, "remember_session", None)
        if remember is not None and self.socket.state is _OPEN:
            remember(self.socket)
        if conn.transport is not self:
            # Upstream, before the handshake completed: a failed connect (if not yet told).
            on_failed, self._on_failed = self._on_failed, None
            self._on_connected = None
            if on_failed is not None:
                on_failed(TlsFailure(""))
            return
        conn.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.connection.transport is self:
            self.connection.pause_writing()

    def resume_writing(self) -> None:
        if self.connection.transport is self:
            self.connection.resume_writing()

    # Connection side (the transport API a Connection uses) ---------------------------------

    def write(self, data: bytes) -> None:
        sock = self.socket
        try:
            sock.send(data)
        except TlsFailure as failure:
            self._fail(failure)
            return
        if sock.state is _OPEN:
            out = sock.outgoing()
            if out:
                self.raw.write(out)  # type: ignore[union-attr]

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.socket.shutdown()
        self._flush()
        raw = self.raw
        if raw is not None and raw.can_write_eof() and not raw.is_closing():
            raw.write_eof()

    def close(self) -> None:
        if self._closing:
            return
        sock = self.socket
        if sock.queued_bytes and sock.state in _HANDSHAKING:
            # A flushing close of what was written during the handshake: as Envoy's doWrite
            # drives the handshake first, the close waits for it and the data goes out.
            self._close_after_handshake = True
            return
        self._closing = True
        sock.shutdown()
        self._flush()
        if self.raw is not None:
            self.raw.close()

    def abort(self) -> None:
        self._closing = True
        if self.raw is not None:
            self.raw.abort()

    def is_closing(self) -> bool:
        return self._closing or self.raw is None or self.raw.is_closing()

    def get_write_buffer_size(self) -> int:
        raw = self.raw
        size = raw.get_write_buffer_size() if raw is not None else 0
        return size + self.socket.queued_bytes

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self.raw is not None:
            self.raw.set_write_buffer_limits(high=high, low=low)

    def pause_reading(self) -> None:
        if self.raw is not None:
            self.raw.pause_reading()

    def resume_reading(self) -> None:
        if self.raw is not None:
            self.raw.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self.raw is None:
            return default
        return self.raw.get_extra_info(name, default)

    # Internals ---------------------------------------------------------------------------

    def _flush(self) -> None:
        out = self.socket.outgoing()
        if out and self.raw is not None and not self.raw.is_closing():
            self.raw.write(out)

    def _on_handshake(self) -> None:
        conn = self.connection
        info = self.socket.info
        conn.ssl = info
        conn.next_protocol = info.alpn  # type: ignore[union-attr]
        stream_info = getattr(conn, "stream_info", None)
        if stream_info is not None:
            stream_info.downstream_ssl = info
        on_connected = self._on_connected
        if on_connected is not None:
            self._on_connected = self._on_failed = None
            conn.secure = True
            conn.connection_made(self)
            on_connected()
        else:
            self._flush()  # anything the connection wrote during the handshake
            if self._close_after_handshake:
                self.close()

    def _deliver_eof(self) -> bool:
        self._eof_delivered = True
        return self.connection.eof_received()

    def _fail(self, failure: TlsFailure) -> None:
        """Send what OpenSSL wrote (its alert), then close: the connection is closed locally
        (a downstream), or the connect fails (an upstream)."""
        raw = self.raw
        out = self.socket.outgoing()
        if raw is not None and out and not raw.is_closing():
            raw.write(out)
        conn = self.connection
        if failure.reason:
            conn.transport_failure_reason = failure.reason
        on_failed = self._on_failed
        if on_failed is not None:
            self._on_failed = self._on_connected = None
            self._closing = True
            if raw is not None:
                raw.close()
            on_failed(failure)
            return
        log.debug("[C%d] TLS error: %s", conn.id, failure.reason)
        info = getattr(conn, "stream_info", None)
        if info is not None and failure.reason:
            info.downstream_transport_failure_reason = failure.reason
        if self._close_after_handshake:
            # The connection is already closing (it waited for the handshake to flush its
            # data): end the socket; connection_lost completes the close.
            self._close_after_handshake = False
            self._closing = True
            if raw is not None:
                raw.close()
            return
        # Envoy closes a connection whose read failed as a remote close.
        conn.close(_FLUSH_WRITE, remote=True)
