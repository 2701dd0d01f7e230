"""A TCP connection: the thin I/O layer under the network filters.

``Connection`` is the ``asyncio.Protocol`` of one socket, downstream (accepted
by a listener) or upstream (opened by a cluster). It owns:

- the read filter chain (``on_data`` in order, stop/continue) and the write
  filter chain (``on_write`` in reverse order) of the filter contract in
  ``network/filter.py``;
- half-close: a FIN from the peer reaches the filters as ``end_stream`` and the
  socket stays open for writing until this side ends its stream too;
- flow control with Envoy's watermarks: the write buffer's high mark is the
  connection's buffer limit (``per_connection_buffer_limit_bytes``), the low
  mark half of it. Crossing them calls the watermark callbacks, which the
  proxying filter answers by pausing/resuming reads on the *other* connection.
  ``read_disable`` nests, as Envoy's does.

A transport socket (TLS: ``extensions/transport_sockets/tls/transport.py``) is an object
put between the socket's asyncio transport and the connection: the connection sees it as its
``transport``. A plaintext connection has none and pays nothing for the possibility. What a
TLS connection negotiated is ``ssl`` (Envoy's ``connection.ssl()``) and ``next_protocol``
(the ALPN protocol); both are None on plaintext connections.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

from legatus.network.filter import (
    CloseType,
    ConnectionCallbacks,
    ConnectionEvent,
    FilterStatus,
    ReadFilter,
    WriteFilter,
)

log = logging.getLogger("legatus.connection")

DEFAULT_BUFFER_LIMIT = 1024 * 1024  # Envoy's per_connection_buffer_limit_bytes default


class State(enum.Enum):
    CONNECTING = 0
    OPEN = 1
    CLOSING = 2  # closed with FLUSH_WRITE: what is buffered still drains, then CLOSED
    CLOSED = 3


_OPEN = State.OPEN
_ENDED = frozenset((State.CLOSING, State.CLOSED))
_STOP = FilterStatus.STOP_ITERATION

_ids = itertools.count()  # one sequence for downstream and upstream, from 0, as Envoy's


def _connection_id() -> int:
    return next(_ids)


class Connection(asyncio.Protocol):
    # Set by a transport socket (class defaults: a plaintext connection never writes them).
    secure = False  # a TLS connection, from its start (Envoy: connection.ssl() != nullptr)
    ssl: Any = None  # SslConnectionInfo once the TLS handshake is done
    next_protocol: str | None = None  # the ALPN protocol the handshake negotiated
    transport_failure_reason: str | None = None  # why the transport socket failed
    drain_decision: Any = None  # a listener's ListenerDrainDecision (accepted connections)

    def __init__(
        self,
        *,
        buffer_limit: int = DEFAULT_BUFFER_LIMIT,
        on_close: Callable[[Connection], None] | None = None,
    ) -> None:
        self.id = _connection_id()
        self.transport: asyncio.Transport | None = None
        self.state = State.CONNECTING
        self.buffer_limit = buffer_limit or DEFAULT_BUFFER_LIMIT
        self.local_address: tuple[Any, ...] | None = None
        self.remote_address: tuple[Any, ...] | None = None
        self.read_filters: list[ReadFilter] = []
        self.write_filters: list[WriteFilter] = []
        self.callbacks: list[ConnectionCallbacks] = []
        self.bytes_received = 0
        self.bytes_sent = 0
        self.read_ended = False  # peer sent FIN
        self.write_ended = False  # we sent FIN
        self.above_high_watermark = False
        self.close_event: ConnectionEvent | None = None
        self._on_close = on_close
        self._read_disable_count = 0
        self._peer_closes = False
        self._held_bytes = 0
        self._held: list[tuple[bytes, bool]] = []  # data that arrived while a filter stopped
        self._stopped_at: int | None = None
        self._pending: list[bytes] | None = None  # written this loop iteration, not yet sent
        self._rx_gauge: Any = None  # see set_buffer_gauges
        self._tx_gauge: Any = None
        self._last_read = 0
        self._last_tx = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    # Filter chain ------------------------------------------------------------

    def add_read_filter(self, f: ReadFilter) -> None:
        f.initialize_read_filter_callbacks(_ReadCallbacks(self, len(self.read_filters)))
        self.read_filters.append(f)

    def add_write_filter(self, f: WriteFilter) -> None:
        self.write_filters.insert(0, f)

    def add_filter(self, f: Any) -> None:
        """Add a filter as reader, writer or both, by the hooks it implements."""
        if isinstance(f, ReadFilter):
            self.add_read_filter(f)
        if isinstance(f, WriteFilter):
            self.add_write_filter(f)

    def add_connection_callbacks(self, cb: ConnectionCallbacks) -> None:
        self.callbacks.append(cb)

    def initialize_read_filters(self) -> None:
        """Run ``on_new_connection`` over the chain."""
        if self.read_filters:
            self._iterate(0, None, False)

    def _iterate(self, start: int, data: bytes | None, end_stream: bool) -> None:
        filters = self.read_filters
        for i in range(start, len(filters)):
            if self.state in _ENDED:
                return
            f = filters[i]
            status = f.on_new_connection() if data is None else f.on_data(data, end_stream)
            if status is _STOP:
                if data is None:
                    self._stopped_at = i
                return
        if data is None:
            self._stopped_at = None
            held, self._held = self._held, []
            if self._held_bytes > self.buffer_limit:
                self.read_disable(False)
            self._held_bytes = 0
            for chunk, end in held:
                self._iterate(0, chunk, end)

    def continue_reading(self) -> None:
        """Resume a chain stopped in ``on_new_connection``: the remaining filters, then the
        bytes held meanwhile. (A filter that stopped ``on_data`` owns those bytes.)"""
        if self._stopped_at is not None:
            start = self._stopped_at + 1
            self._stopped_at = None
            self._iterate(start, None, False)

    # asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        self._loop = asyncio.get_running_loop()
        self.state = State.OPEN
        transport.set_write_buffer_limits(high=self.buffer_limit, low=self.buffer_limit // 2)
        # uvloop sets TCP_NODELAY on every TCP socket itself (as Envoy does).
        self.local_address = transport.get_extra_info("sockname")
        self.remote_address = transport.get_extra_info("peername")

    def set_buffer_gauges(self, rx: Any, tx: Any) -> None:
        """Keep Envoy's ``*_cx_rx_bytes_buffered`` / ``*_cx_tx_bytes_buffered`` gauges (shared
        by the connections of a listener's filter or a cluster) as Envoy's connections do: rx
        holds what the last read brought in (Envoy updates it on each read, before its
        filters drain the buffer), tx what waits to be written, sampled when the write buffer
        crosses its watermarks. Both give back this connection's share when it closes."""
        self._rx_gauge = rx
        self._tx_gauge = tx
        self._last_read = 0  # the gauge holds none of what was read before

    def data_received(self, data: bytes) -> None:
        n = len(data)
        self.bytes_received += n
        if n != self._last_read:  # (the gauge moves by the difference only)
            rx = self._rx_gauge
            if rx is not None:
                rx.add(n - self._last_read)
            self._last_read = n
        if self._stopped_at is not None:
            # Keep reading while the chain waits (so a reset is seen at once), holding
            # up to the buffer limit; past it, stop reading until the chain continues.
            self._held.append((data, False))
            before = self._held_bytes
            self._held_bytes += n
            if before <= self.buffer_limit < self._held_bytes:
                self.read_disable(True)
            return
        try:
            filters = self.read_filters
            if len(filters) == 1:  # the common chain (one terminal filter): no loop
                if self.state not in _ENDED:
                    filters[0].on_data(data, False)
            else:
                self._iterate(0, data, False)
        except Exception:
            # A bug, never traffic: the connection goes, the worker stays.
            log.exception("[C%d] error while processing data; closing the connection", self.id)
            self.close(CloseType.NO_FLUSH)

    def eof_received(self) -> bool:
        self.read_ended = True
        # The peer's FIN after ours ends the connection, and the peer spoke last: however
        # the close is triggered from here on (even by a filter), it is a remote close.
        self._peer_closes = self.write_ended
        if self._stopped_at is not None:
            self._held.append((b"", True))
        else:
            self._iterate(0, b"", True)
        if self.write_ended:
            self._close_transport(CloseType.FLUSH_WRITE)
            return False
        return True  # keep the socket open for writing (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state is not State.CLOSED:
            if self.state is State.CLOSING and exc is None:
                # Our FLUSH_WRITE close has drained: the close is ours (or the peer's, when
                # its FIN completed a half-closed connection).
                event = (
                    ConnectionEvent.REMOTE_CLOSE
                    if self._peer_closes
                    else ConnectionEvent.LOCAL_CLOSE
                )
            else:
                event = ConnectionEvent.REMOTE_CLOSE
            self.state = State.CLOSED
            self._raise_event(event)
        # The transport is gone. A transport socket (TLS) points back at this connection:
        # letting go of it lets reference counting free both at once.
        self.transport = None

    def _sample_tx(self) -> None:
        tx = self._tx_gauge
        if tx is not None and self.transport is not None:
            size = self.transport.get_write_buffer_size()
            tx.add(size - self._last_tx)
            self._last_tx = size

    def pause_writing(self) -> None:
        self._sample_tx()
        self.above_high_watermark = True
        for cb in self.callbacks:
            cb.on_above_write_buffer_high_watermark()

    def resume_writing(self) -> None:
        self._sample_tx()
        self.above_high_watermark = False
        for cb in self.callbacks:
            cb.on_below_write_buffer_low_watermark()

    # Connection API ----------------------------------------------------------

    def write(self, data: bytes, end_stream: bool = False) -> None:
        if self.state is not _OPEN or self.write_ended:
            return
        if self.write_filters:
            for f in self.write_filters:
                if f.on_write(data, end_stream) is _STOP:
                    return
        self.raw_write(data, end_stream)

    def raw_write(self, data: bytes, end_stream: bool) -> None:
        """Queue ``data``; it reaches the socket at the end of this loop iteration, together
        with whatever else is written meanwhile (Envoy writes a connection's buffer once per
        event too). A response head and body sent in one go cost one send(2), not two."""
        if data:
            self.bytes_sent += len(data)
            pending = self._pending
            if pending is None:
                self._pending = [data]
                self._loop.call_soon(self._flush)
            else:
                pending.append(data)
        if end_stream:
            self._flush()
            transport = self.transport
            self.write_ended = True
            if self.read_ended:
                self._close_transport(CloseType.FLUSH_WRITE)
            elif transport is not None and transport.can_write_eof():
                transport.write_eof()  # type: ignore[union-attr]

    def _flush(self) -> None:
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        if self.state is _OPEN:
            self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))  # type: ignore[union-attr]

    def close(self, close_type: CloseType = CloseType.FLUSH_WRITE, *, remote: bool = False) -> None:
        """Close the connection. ``remote``: the peer ended it (its FIN on a connection that
        does not half-close), so the close event is REMOTE_CLOSE."""
        if self.state is State.CLOSED:
            return
        if remote:
            self._peer_closes = True
        if self.state is State.CLOSING:
            if close_type is not CloseType.FLUSH_WRITE:
                self.transport.abort()  # type: ignore[union-attr]  # connection_lost follows
            return
        if self.transport is None:
            self.state = State.CLOSED
            self._raise_event(ConnectionEvent.LOCAL_CLOSE)
            return
        self._close_transport(close_type)

    def _close_transport(self, close_type: CloseType) -> None:
        if self.state is State.CLOSED or self.state is State.CLOSING:
            return
        transport = self.transport
        if close_type is CloseType.FLUSH_WRITE:
            self._flush()
            if transport.get_write_buffer_size():  # type: ignore[union-attr]
                # Envoy keeps a flushing connection until its bytes are written; the
                # close event (and the stats that follow it) wait for connection_lost.
                self.state = State.CLOSING
                transport.close()  # type: ignore[union-attr]
                return
            self.state = State.CLOSED
            transport.close()  # type: ignore[union-attr]
        else:
            self.state = State.CLOSED
            if close_type is CloseType.ABORT_RESET:
                sock = transport.get_extra_info("socket")  # type: ignore[union-attr]
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()  # type: ignore[union-attr]
        self._raise_event(
            ConnectionEvent.REMOTE_CLOSE if self._peer_closes else ConnectionEvent.LOCAL_CLOSE
        )

    def read_disable(self, disable: bool) -> None:
        """Stop (or resume) reading; calls nest, reading resumes when all are undone."""
        transport = self.transport
        if disable:
            self._read_disable_count += 1
            if self._read_disable_count == 1 and transport is not None and self.state is State.OPEN:
                transport.pause_reading()
        elif self._read_disable_count > 0:
            self._read_disable_count -= 1
            if self._read_disable_count == 0 and transport is not None and self.state is State.OPEN:
                transport.resume_reading()

    def write_buffer_size(self) -> int:
        t = self.transport
        if t is None or self.state is not State.OPEN:
            return 0
        pending = self._pending
        return t.get_write_buffer_size() + (sum(map(len, pending)) if pending else 0)

    def _raise_event(self, event: ConnectionEvent) -> None:
        self.close_event = event
        if self._rx_gauge is not None:
            self._rx_gauge.sub(self._last_read)
            self._tx_gauge.sub(self._last_tx)
            self._rx_gauge = self._tx_gauge = None
        for cb in list(self.callbacks):
            cb.on_event(event)
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close(self)
        # Filters and callbacks point back at the connection: drop them so reference
        # counting frees a closed connection at once instead of the cyclic GC.
        self.read_filters = []
        self.write_filters = []
        self.callbacks = []
        self._held = []


class _ReadCallbacks:
    """A read filter's callbacks. It names its filter by position, not by reference: a
    filter keeps its callbacks, and a reference back would be a cycle outliving the
    connection (left to the cyclic collector, whose passes over a worker's heap cost more
    than a short connection)."""

    __slots__ = ("connection", "index")

    def __init__(self, connection: Connection, index: int) -> None:
        self.connection = connection
        self.index = index

    def continue_reading(self) -> None:
        self.connection.continue_reading()

    def inject_read_data_to_filter_chain(self, data: bytes, end_stream: bool) -> None:
        """Envoy's injectReadDataToFilterChain: hand bytes this filter took (it stopped
        ``on_data``) to the filters after it."""
        conn = self.connection
        if conn.state is State.OPEN and self.index < len(conn.read_filters):
            conn._iterate(self.index + 1, data, end_stream)


class PendingConnect:
    """An outgoing connect under way into ``connection``: TCP, then the transport socket's
    handshake when there is one (``transport_socket``: an upstream transport socket factory,
    see ``network/transport_socket.py``; ``server_name``: an SNI for this connection;
    ``host``: the upstream host, whose hostname a transport socket may use as SNI).

    ``on_done(error)`` runs once: with None when connected (handshake included, as Envoy
    raises Connected for TLS), an OSError, a ``TransportSocketError`` (carrying Envoy's
    transport failure reason), or a TimeoutError after ``timeout`` seconds (None: no timer,
    the caller keeps its own); never after ``cancel()``. One task and one timer: no
    coroutine-level timeout, since ``asyncio.timeout``/``wait_for`` cost extra tasks or a
    getpid() per call in Python 3.11, per connection.
    """

    __slots__ = ("_cancelled", "_handshaking", "_on_done", "_task", "_timed_out", "_timer")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        connection: Connection,
        address: tuple,
        timeout: float | None,
        on_done: Callable[[BaseException | None], None],
        *,
        transport_socket: Any = None,
        server_name: str | None = None,
        host: Any = None,
    ) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._on_done = on_done
        self._cancelled = self._timed_out = False
        protocol: Any = connection
        self._handshaking = transport_socket is not None
        if transport_socket is not None:
            protocol = transport_socket.upstream_protocol(
                connection, self._handshake_done, self._handshake_failed, server_name, host
            )
        self._task = loop.create_task(
            loop.create_connection(lambda: protocol, address[0], address[1], family=family)
        )
        self._task.add_done_callback(self._finished)
        self._timer = loop.call_later(timeout, self._expire) if timeout is not None else None

    def cancel(self) -> None:
        self._cancelled = True
        if self._timer is not None:
            self._timer.cancel()
        self._task.cancel()
        if self._task.done() and not self._task.cancelled() and self._task.exception() is None:
            self._task.result()[0].abort()  # connected, handshake under way: drop it

    def _expire(self) -> None:
        self._timed_out = True
        if self._task.done():
            if not self._task.cancelled() and self._task.exception() is None:
                self._task.result()[0].abort()  # the handshake did not finish in time
            self._report(TimeoutError())
        else:
            self._task.cancel()

    def _finished(self, task: asyncio.Task) -> None:
        if self._cancelled:
            if not task.cancelled() and task.exception() is None:
                task.result()[0].abort()  # connected just as it was cancelled: drop it
            return
        if task.cancelled():
            if self._timed_out:
                self._report(TimeoutError())
            return  # cancelled by someone else: nothing to report to
        error = task.exception()
        if error is not None:
            self._report(error)
        elif not self._handshaking:
            self._report(None)
        # else: the transport socket's handshake reports the outcome

    def _handshake_done(self) -> None:
        if not self._cancelled:
            self._report(None)

    def _handshake_failed(self, failure: Any) -> None:
        if not self._cancelled and not self._timed_out:
            self._report(TransportSocketError(getattr(failure, "reason", "") or ""))

    def _report(self, error: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done(error)


def connect_failure_reason(error: BaseException) -> str:
    """Envoy's transport failure reason for a failed upstream connect (``PendingConnect``'s
    error): a TLS handshake's own reason, else ``delayed connect error: <strerror>``."""
    reason = getattr(error, "transport_failure_reason", None)
    if reason is not None:
        return reason
    errno = getattr(error, "errno", None)
    return f"delayed connect error: {os.strerror(errno) if errno else error}"


class TransportSocketError(ConnectionError):
    """A connect whose transport socket (TLS) handshake failed: ``transport_failure_reason``
    is Envoy's text for it (``TLS_error:|...:TLS_error_end``; empty when the peer just
    closed). It counts as a connect failure, closed by the remote side, as in Envoy."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason or "TLS handshake failed")
        self.transport_failure_reason = reason
