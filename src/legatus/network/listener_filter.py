"""Listener filters (Envoy's ``Network::ListenerFilter``) and the accepted socket they run on.

A listener with ``listener_filters`` does not make a ``Connection`` at accept time: the
socket first goes through its listener filters (``ActiveTcpSocket``, as in Envoy), in
order. A filter answers ``on_accept`` with CONTINUE, or STOP_ITERATION to wait for the
connection's first bytes: it then sees everything read so far in ``on_data`` (Envoy peeks
with MSG_PEEK; here the bytes are read and kept, and handed to the connection afterwards, so
nothing is consumed). What the filters learn (SNI, transport protocol, ALPN) is set on the
``AcceptedSocket`` and picks the filter chain.

``listener_filters_timeout`` (default 15 s, 0: none) bounds the phase: past it the socket is
closed (``downstream_pre_cx_timeout``), or, with ``continue_on_listener_filters_timeout``,
goes on to its filter chain with what the filters have learnt. A peer that closes during the
phase is ``downstream_listener_filter_remote_close``; a filter that rejects the socket
closes it (``downstream_listener_filter_error``).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from typing import Any


class ListenerFilterStatus(enum.Enum):
    CONTINUE = 0
    """This filter is done: run the next one."""
    STOP_ITERATION = 1
    """Wait: call ``on_data`` when bytes arrive."""


class AcceptedSocket:
    """What listener filters learn about an accepted socket (Envoy's ConnectionSocket)."""

    __slots__ = ("closed_by_filter", "detected_transport_protocol",
                 "requested_application_protocols", "requested_server_name",
                 "transport_failure_reason")  # fmt: skip

    def __init__(self) -> None:
        self.requested_server_name = ""
        self.detected_transport_protocol = ""
        self.requested_application_protocols: tuple[str, ...] = ()
        self.transport_failure_reason: str | None = None
        self.closed_by_filter = False

    def close(self) -> None:
        """A filter rejects the socket (a malformed or oversized preamble)."""
        self.closed_by_filter = True


class ListenerFilter:
    """Base with safe defaults. ``max_read_bytes``: how much of the connection's start the
    filter may need (0: none)."""

    max_read_bytes = 0

    def on_accept(self, socket: AcceptedSocket) -> ListenerFilterStatus:
        return ListenerFilterStatus.CONTINUE

    def on_data(self, socket: AcceptedSocket, data: bytes) -> ListenerFilterStatus:
        return ListenerFilterStatus.CONTINUE

    def on_close(self) -> None:
        """The peer closed before the filter was done."""


_CONTINUE = ListenerFilterStatus.CONTINUE


class ActiveTcpSocket(asyncio.Protocol):
    """An accepted socket in its listener-filter phase; ``on_done(self, transport, socket,
    initial_bytes)`` makes the connection, ``on_gone(self, reason)`` is told how the phase
    ended otherwise (``"remote_close"``, ``"error"``, ``"timeout"``; ``"timeout_continue"``
    comes before ``on_done`` with ``continue_on_listener_filters_timeout``)."""

    __slots__ = ("_buffer", "_filters", "_finished", "_index", "_max_read", "_on_done",
                 "_on_gone", "_timer", "socket", "transport")  # fmt: skip

    def __init__(
        self,
        filters: list[ListenerFilter],
        *,
        loop: asyncio.AbstractEventLoop,
        timeout: float,
        continue_on_timeout: bool,
        on_done: Callable[[ActiveTcpSocket, asyncio.Transport, AcceptedSocket, bytes], None],
        on_gone: Callable[[ActiveTcpSocket, str], None],
    ) -> None:
        self._filters = filters
        self._on_done = on_done
        self._on_gone = on_gone
        self._buffer = bytearray()
        self._index = 0
        self._finished = False
        self._max_read = max((f.max_read_bytes for f in filters), default=0)
        self.socket = AcceptedSocket()
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        if timeout:
            self._timer = loop.call_later(
                timeout, self._on_timeout if not continue_on_timeout else self._timeout_continue
            )

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._iterate()

    def _iterate(self) -> None:
        filters = self._filters
        while self._index < len(filters):
            status = filters[self._index].on_accept(self.socket)
            if self._check_closed():
                return
            if status is not _CONTINUE:
                if self._buffer:
                    self._feed()
                return
            self._index += 1
        self._done()

    def data_received(self, data: bytes) -> None:
        if self._finished:
            return
        self._buffer += data  # all of it goes to the connection; filters see max_read_bytes
        self._feed()

    def _feed(self) -> None:
        f = self._filters[self._index]
        view = bytes(self._buffer[: self._max_read]) if self._max_read else bytes(self._buffer)
        status = f.on_data(self.socket, view)
        if self._check_closed():
            return
        if status is _CONTINUE:
            self._index += 1
            self._iterate()

    def eof_received(self) -> bool:
        if not self._finished:
            self._filters[self._index].on_close()
            self._end("remote_close")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._finished:
            self._end("remote_close")

    def _check_closed(self) -> bool:
        if self.socket.closed_by_filter:
            self._end("error")
            return True
        return False

    def _on_timeout(self) -> None:
        if not self._finished:
            self._end("timeout")

    def _timeout_continue(self) -> None:
        if not self._finished:
            self._on_gone(self, "timeout_continue")
            self._done()

    def _end(self, reason: str) -> None:
        self._finished = True
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            self.transport.abort()
        self._on_gone(self, reason)

    def _done(self) -> None:
        self._finished = True
        if self._timer is not None:
            self._timer.cancel()
        self._on_done(self, self.transport, self.socket, bytes(self._buffer))
