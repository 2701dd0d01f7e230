"""The HTTP/2 connection pool: Envoy's ``Http2::ActiveClient`` (``MultiplexedActiveClientBase``)
with its ``CodecClient``.

Each ``Http2ActiveClient`` owns one upstream ``Connection`` and one sans-I/O
``ClientConnection`` (http/http2/client.py) and carries many streams at once
(``Http2RequestEncoder``, conn_pool/http2_stream.py). Theory of operation:

- Capacity. A connection takes ``min(max_concurrent_streams, max_requests_per_connection)``
  streams until the server's SETTINGS say otherwise (Envoy's calculateInitialStreamsLimit);
  then ``min(SETTINGS_MAX_CONCURRENT_STREAMS, max_concurrent_streams)`` (onSettings), which
  moves it between READY and BUSY. ``max_requests_per_connection`` (2^29 when unset, as
  Envoy) counts the streams it may ever carry: at the last one it drains (no new stream,
  closed when its last stream ends; ``upstream_cx_max_requests``).
- A stream is over for the pool when the codec is done with it: both ends (our END_STREAM
  may wait behind the peer's window), or a reset. A response complete before the router
  ended its request resets the stream (RST_STREAM NO_ERROR, ``upstream_rq_tx_reset``), as
  Envoy's router does. Streams ended while the codec parses are handed to the pool after
  the parse, and queued streams are attached on the next loop iteration: the pool never
  re-enters the codec from inside its own callbacks.
- GOAWAY from the server: ``upstream_cx_close_notify``; the connection drains (closed at
  once if idle); the streams past its last stream id are reset by the codec with
  ``REMOTE_REFUSED_STREAM_RESET``, which ``retry_on: refused-stream`` retries.
- Connection errors: a codec error (the server broke HTTP/2, or flooded us) counts
  ``upstream_cx_protocol_error`` and closes the connection (after the GOAWAY the codec made,
  if any); every stream still open is reset with ``PROTOCOL_ERROR`` (router: 502 UPE), else,
  on any other close, with ``CONNECTION_TERMINATION`` (UC). Stream resets count as Envoy's
  onStreamReset: ``upstream_rq_pending_failure_eject`` (closed under it),
  ``upstream_rq_tx_reset`` (ours), ``upstream_rq_rx_reset`` (the server's). A connection
  closed by what a read brought (a drained connection's last stream ending, a GOAWAY on an
  idle one) also counts ``upstream_cx_protocol_error``, as Envoy 1.40's codec client does
  (its codec fails the dispatch: "Connection was closed while dispatching frames").
- Bytes read before the connect is reported (a server that speaks first) wait for it: the
  pool hears of the connection before of anything that happens on it.
- Flow control. ``read_disable`` on a stream holds back its WINDOW_UPDATEs (the server
  stops when the window is used up). What waits to be sent, the stream's body beyond the
  server's window or the connection's write buffer, above the buffer limit reaches the
  stream's watermark subscribers (the router pauses the downstream read).
- Keepalive (``connection_keepalive``): a PING every interval (plus up to ``interval_jitter``
  of it), the connection closed when the ACK does not come within the timeout
  (``http2.keepalive_timeout``). ``idle_timeout`` is the base pool's.
- Stats: ``upstream_cx_http2_total`` per connection and the codec's ``http2.*`` under the
  cluster's scope (``cluster.<name>.http2.*``, declared with the first connection, as Envoy's
  lazily made codec stats).
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from typing import Any

from legatus.conn_pool import PoolContext, ResponseDecoder, StreamResetReason
from legatus.conn_pool.base import ActiveClient, ClientState, ConnPool
from legatus.conn_pool.http2_stream import Http2RequestEncoder
from legatus.http.headers import HeaderMap
from legatus.http.http2 import frames as f
from legatus.http.http2.client import ClientConnection
from legatus.http.http2.connection import CodecError
from legatus.http.http2.settings import Http2Settings
from legatus.http.http2.stats import LazyCodecStats
from legatus.http.http2.stream import ResetReason
from legatus.network.connection import Connection, PendingConnect
from legatus.network.filter import CloseType, ConnectionEvent, FilterStatus, ReadFilter
from legatus.upstream.host import Host

log = logging.getLogger("legatus.pool")

# Envoy's DEFAULT_MAX_STREAMS: the streams a connection may carry without a configured
# max_requests_per_connection ("2^31 client streams are half that, minus 0: 2^29 to be safe").
DEFAULT_MAX_STREAMS = 1 << 29
_STOP_ITERATION = FilterStatus.STOP_ITERATION
_READY, _BUSY, _DRAINING, _CLOSED = (
    ClientState.READY,
    ClientState.BUSY,
    ClientState.DRAINING,
    ClientState.CLOSED,
)
_CODEC_BUG = CodecError("HTTP/2 client codec failed")
_RESET_REASONS = {
    ResetReason.REMOTE_RESET: StreamResetReason.REMOTE_RESET,
    ResetReason.REMOTE_REFUSED_STREAM_RESET: StreamResetReason.REMOTE_REFUSED_STREAM_RESET,
    ResetReason.LOCAL_RESET: StreamResetReason.LOCAL_RESET,
    ResetReason.CONNECTION_TERMINATION: StreamResetReason.CONNECTION_TERMINATION,
    ResetReason.PROTOCOL_ERROR: StreamResetReason.PROTOCOL_ERROR,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Http2PoolOptions:
    """What the HTTP/2 pools of one cluster share on a worker, besides the ``PoolContext``."""

    settings: Http2Settings  # the cluster's http2_protocol_options, compiled
    codec_stats: LazyCodecStats  # cluster.<name>.http2.*
    transport_socket: Any = None  # TLS offering ALPN h2, None for plaintext (prior knowledge)
    random: random.Random | None = None  # keepalive jitter


class Http2ConnPool(ConnPool):
    """HTTP/2 streams to one host (Envoy's ``Http2::allocateConnPool``)."""

    def __init__(self, host: Host, context: PoolContext, options: Http2PoolOptions) -> None:
        super().__init__(host, context, Http2ActiveClient)  # type: ignore[arg-type]
        self.options = options


class _CodecReadFilter(ReadFilter):
    """The upstream connection's only read filter: bytes go to the codec."""

    __slots__ = ("client",)

    def __init__(self, client: Http2ActiveClient) -> None:
        self.client = client

    def on_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        client = self.client
        if data:
            client.on_read(data)
        if end_stream and not client.closed:  # HTTP upstreams do not half-close
            client.remote_closed = True
            client.connection.close(CloseType.NO_FLUSH, remote=True)
        return _STOP_ITERATION


class Http2ActiveClient(ActiveClient):
    """One HTTP/2 connection of a pool (see module doc)."""

    def __init__(self, pool: Http2ConnPool, connection: Connection | None = None) -> None:
        """``connection``: one already connected (the mixed pool's, after ALPN chose h2);
        the pool then calls ``_on_connected``. Else the client connects its own."""
        ctx = pool.context
        options = pool.options
        settings = options.settings
        codec_stats = options.codec_stats.get()
        connected = connection is not None
        if connection is None:
            connection = Connection(buffer_limit=ctx.settings.buffer_limit)
        self.codec = ClientConnection(
            settings, codec_stats, self, buffer_limit=connection.buffer_limit
        )
        configured = settings.max_concurrent_streams
        max_requests = ctx.settings.max_requests_per_connection
        # (and what the codec assumes of the server until its SETTINGS come)
        initial = min(configured, self.codec.peer_max_concurrent_streams)
        if max_requests:
            initial = min(initial, max_requests)
        super().__init__(pool, concurrent_stream_limit=initial)
        if not max_requests:
            self.remaining_streams = DEFAULT_MAX_STREAMS
        self.configured_stream_limit = configured
        stats = self.stats = ctx.stats
        stats.upstream_cx_http2_total.inc()
        codec_stats.nghttp2_upstream_connections.inc()
        self._rx_bytes_total = stats.upstream_cx_rx_bytes_total
        self._tx_bytes_total = stats.upstream_cx_tx_bytes_total
        connection.set_buffer_gauges(
            stats.upstream_cx_rx_bytes_buffered, stats.upstream_cx_tx_bytes_buffered
        )
        self.id = connection.id
        self.connection = connection
        self.codec_stats = codec_stats
        self.scheme = "https" if options.transport_socket is not None else "http"
        self.streams: dict[Http2RequestEncoder, None] = {}  # attached, not yet over
        self._peer_max_streams = self.codec.peer_max_concurrent_streams
        self.dispatching = False
        self._ended: list[Http2RequestEncoder] = []  # response complete while parsing
        self._gone: list[Http2RequestEncoder] = []  # over while parsing
        self._finishing: dict[Http2RequestEncoder, None] = {}  # our END_STREAM still queued
        self._close_after_dispatch = False
        self.reading = False  # handling what a read brought (the parse and its aftermath)
        self._transport_check = False
        self._early: list[bytes] = []  # read before the connect was reported
        self.closed = False
        self.remote_closed = False
        self.protocol_error = False
        self._closed_with_active_rq = False
        self._failure_reason = ""
        self._keepalive_timer: Any = None
        self._keepalive_timeout_timer: Any = None
        self._keepalive_opaque: bytes | None = None
        connection.add_read_filter(_CodecReadFilter(self))
        connection.add_connection_callbacks(self)
        self._connecting: PendingConnect | None = None
        if not connected:
            self._connecting = PendingConnect(
                ctx.loop,
                connection,
                pool.host.address,
                None,
                self._on_connect_done,
                transport_socket=options.transport_socket,
            )

    # ActiveClient -------------------------------------------------------------------

    def num_active_streams(self) -> int:
        return len(self.streams)

    def closing_with_incomplete_stream(self) -> bool:
        return self._closed_with_active_rq

    def close(self, close_type: CloseType = CloseType.NO_FLUSH) -> None:
        if self.closed:
            return
        if self.dispatching:  # never under the codec's feet: once it returns
            self._close_after_dispatch = True
            return
        if self.reading and not self.protocol_error:
            # What a read ended closes the connection (a drained connection's last stream,
            # a GOAWAY on an idle one): Envoy's codec then fails the dispatch ("Connection
            # was closed while dispatching frames"), which its codec client counts.
            self.pool.context.pool_stats.upstream_cx_protocol_error.inc()
            self.protocol_error = True
        connecting = self._connecting
        if connecting is not None:
            self._connecting = None
            connecting.cancel()
        self.connection.close(close_type)  # raises the close event: on_event

    def new_stream_encoder(self, decoder: ResponseDecoder) -> Http2RequestEncoder:
        encoder = Http2RequestEncoder(self, decoder, self.connection.above_high_watermark)
        self.streams[encoder] = None
        return encoder

    # Connecting ---------------------------------------------------------------------

    def _on_connected(self) -> None:
        """Connected (ActiveClient._on_connect_done): our preface and SETTINGS go out, then
        what the server sent meanwhile is read."""
        self.flush()
        self._schedule_keepalive()
        self.pool.on_connection_event(self, ConnectionEvent.CONNECTED)
        early, self._early = self._early, []
        for data in early:
            if self.closed:
                break
            self._dispatch(data)

    # Sending (the streams call these) ---------------------------------------------------

    def send_headers(self, encoder: Http2RequestEncoder, headers: HeaderMap, end: bool) -> None:
        codec = self.codec
        if not codec.can_open_stream:
            # The server's GOAWAY or SETTINGS came while the stream was being attached: it
            # never reaches the server, which is what a refused stream is.
            encoder.done = True
            self.pool.loop.call_soon(self._refuse, encoder)
            return
        stream = encoder.h2_stream = codec.open_stream(encoder)
        try:
            codec.send_headers(stream, headers, end)
        except ValueError:  # request_headers checked what the codec refuses: a codec bug
            log.exception("[C%d] HTTP/2 request headers could not be encoded", self.id)
            self._on_codec_error(_CODEC_BUG)
            return
        self.after_send(encoder)

    def after_send(self, encoder: Http2RequestEncoder) -> None:
        """A stream sent something: write it out; the stream may now be over."""
        self.flush()
        if encoder.response_complete and encoder.stream_closed:
            self._finishing.pop(encoder, None)
            self._stream_gone(encoder)

    def flush(self) -> None:
        """Write what the codec has queued (once after a parse, not during it)."""
        if self.dispatching:
            return
        out = self.codec.data_to_send()
        if out:
            self._tx_bytes_total.add(len(out))
            self.connection.write(out)

    def reset_stream(self, encoder: Http2RequestEncoder) -> None:
        """The router abandons ``encoder``: RST_STREAM INTERNAL_ERROR, what Envoy 1.40 sends
        upstream for its LocalReset."""
        encoder.done = True
        self.stats.upstream_rq_tx_reset.inc()
        stream = encoder.h2_stream
        if stream is not None and not encoder.stream_closed:
            self.codec.reset_stream(stream, f.INTERNAL_ERROR)
            self.flush()
        self._finishing.pop(encoder, None)
        self._stream_gone(encoder)

    # Reading -----------------------------------------------------------------------------

    def on_read(self, data: bytes) -> None:
        self._rx_bytes_total.add(len(data))
        if self._connecting is not None:
            # Read before the connect is reported (the server speaks first): the pool hears
            # of the connection before of anything on it, as Envoy's connected event.
            self._early.append(data)
            return
        self._dispatch(data)

    def _dispatch(self, data: bytes) -> None:
        codec = self.codec
        self.dispatching = self.reading = True
        try:
            error = codec.feed(data)
        except Exception:  # a codec bug: never into the loop; the connection is lost
            log.exception("[C%d] HTTP/2 client codec failed", self.id)
            error = _CODEC_BUG
        finally:
            self.dispatching = False
        try:
            if error is None:
                if codec.peer_max_concurrent_streams != self._peer_max_streams:
                    self._on_settings(codec.peer_max_concurrent_streams)
                self._after_dispatch()
                if self.closed:
                    return
                self.flush()
                error = self._check_transport()
            if error is not None:
                self._on_codec_error(error)
            elif self._close_after_dispatch:
                self._close_after_dispatch = False
                self.close()
        finally:
            self.reading = False

    def _check_transport(self) -> CodecError | None:
        """Frames the server made us queue (and not yet sent) count against the outbound
        flood limits and in ``http2.outbound_frames_active``; looked at again once the
        connection has written them (its writes go out at the end of the loop iteration)."""
        if self.closed:
            return None
        constraints = self.codec.constraints
        error = self.codec.on_transport_buffer(self.connection.write_buffer_size())
        if error is None and constraints.active_frames != (0, 0) and not self._transport_check:
            self._transport_check = True
            self.pool.loop.call_soon(self._recheck_transport)
        return error

    def _recheck_transport(self) -> None:
        self._transport_check = False
        error = self._check_transport()
        if error is not None:
            self._on_codec_error(error)

    def _on_codec_error(self, error: CodecError) -> None:
        """Envoy's CodecClient: a dispatch error is an ``upstream_cx_protocol_error`` and the
        connection closes; a GOAWAY the codec made for it goes out first."""
        if self.closed:
            return
        log.debug("[C%d] HTTP/2 upstream protocol error: %s", self.id, error.message)
        self.pool.context.pool_stats.upstream_cx_protocol_error.inc()
        self.protocol_error = True
        self._close_after_dispatch = False
        if error.goaway:
            if self.state is _READY or self.state is _BUSY:
                self.pool.transition(self, _DRAINING)  # (no stream while the GOAWAY leaves)
            self.flush()
            self.close(CloseType.FLUSH_WRITE)
        else:
            self.close()

    def _after_dispatch(self) -> None:
        """What the parse ended (see module doc): the pool hears of it now."""
        ended = self._ended
        if ended:
            self._ended = []
            for encoder in ended:
                if encoder.done or encoder not in self.streams:
                    continue
                if not encoder.encode_complete:
                    # Response before request complete: Envoy's router resets the stream.
                    self.reset_stream(encoder)
                elif encoder.stream_closed:
                    self._stream_gone(encoder)
                else:
                    self._finishing[encoder] = None
        if self._finishing:  # a WINDOW_UPDATE may have let the last of a request out
            for encoder in [e for e in self._finishing if e.stream_closed]:
                del self._finishing[encoder]
                self._stream_gone(encoder)
        gone = self._gone
        if gone:
            self._gone = []
            for encoder in gone:
                self._stream_gone(encoder)
        if self.state is _DRAINING and not self.streams:
            self.close()

    def on_response_complete(self, encoder: Http2RequestEncoder) -> None:
        if self.dispatching:
            self._ended.append(encoder)
        elif encoder.stream_closed:
            self._stream_gone(encoder)
        else:
            self._finishing[encoder] = None

    def on_stream_reset(self, encoder: Http2RequestEncoder, reason: ResetReason) -> None:
        """The codec reset ``encoder``'s stream (the server, a protocol error, or the end
        of the connection); counted as Envoy's onStreamReset."""
        mapped = _RESET_REASONS[reason]
        if mapped is StreamResetReason.CONNECTION_TERMINATION and self.protocol_error:
            mapped = StreamResetReason.PROTOCOL_ERROR
        stats = self.stats
        if mapped is StreamResetReason.CONNECTION_TERMINATION:
            stats.upstream_rq_pending_failure_eject.inc()
        elif mapped is StreamResetReason.REMOTE_RESET:
            stats.upstream_rq_rx_reset.inc()
        elif mapped is not StreamResetReason.REMOTE_REFUSED_STREAM_RESET:
            stats.upstream_rq_tx_reset.inc()
        self._finishing.pop(encoder, None)
        notify = not encoder.done and not encoder.response_complete
        encoder.done = True
        if notify:
            encoder.decoder.on_reset(mapped, "")
        if self.dispatching:
            self._gone.append(encoder)
        else:
            self._stream_gone(encoder)

    def _stream_gone(self, encoder: Http2RequestEncoder) -> None:
        """``encoder`` no longer counts against this connection (Envoy's onStreamDestroy)."""
        if self.streams.pop(encoder, 0) is not None:
            return  # already gone
        encoder.done = True
        # The codec is done with its stream (closed, reset, or never opened), which names
        # the encoder as its decoder: dropped, so reference counting frees the request's
        # objects now instead of the cyclic collector later.
        encoder.h2_stream = None
        pool = self.pool
        pool.on_stream_closed(self, delay_attaching=True)
        if self.closed:
            return
        if pool.pending_count:
            pool.schedule_on_upstream_ready()
        pool.check_idle_and_close_if_draining()

    def _refuse(self, encoder: Http2RequestEncoder) -> None:
        encoder.decoder.on_reset(StreamResetReason.REMOTE_REFUSED_STREAM_RESET, "")
        self._stream_gone(encoder)

    def _on_settings(self, peer_max: int) -> None:
        """The server's SETTINGS_MAX_CONCURRENT_STREAMS (Envoy's onSettings)."""
        self._peer_max_streams = peer_max
        self.concurrent_stream_limit = min(peer_max, self.configured_stream_limit)
        state = self.state
        capacity = self.current_unused_capacity()
        pool = self.pool
        if state is _READY and capacity <= 0:
            pool.transition(self, _BUSY)
        elif state is _BUSY and capacity > 0:
            pool.transition(self, _READY)
            if pool.pending_count:
                pool.schedule_on_upstream_ready()

    # Codec callbacks ------------------------------------------------------------------

    def on_goaway(self, last_stream_id: int, error_code: int) -> None:
        """The server will take no new stream (Envoy's onGoAway): drain. (Streams it will
        not process were reset by the codec just before.)"""
        log.debug("[C%d] remote goaway (last stream %d, code %d)", self.id, last_stream_id,
                  error_code)  # fmt: skip
        self.stats.upstream_cx_close_notify.inc()
        if self.state is _READY or self.state is _BUSY:
            self.pool.transition(self, _DRAINING)  # closed once its streams are over

    def on_ping_ack(self, opaque: bytes) -> None:
        if opaque == self._keepalive_opaque:
            self._keepalive_opaque = None
            timer = self._keepalive_timeout_timer
            if timer is not None:
                timer.cancel()
                self._keepalive_timeout_timer = None
            self._schedule_keepalive()

    # Keepalive ---------------------------------------------------------------------------

    def _schedule_keepalive(self) -> None:
        settings = self.pool.options.settings
        interval = settings.keepalive_interval
        if not interval or self.closed:
            return
        delay = interval
        rng = self.pool.options.random
        if settings.keepalive_jitter and rng is not None:
            delay += rng.uniform(0, interval * settings.keepalive_jitter)
        self._keepalive_timer = self.pool.loop.call_later(delay, self._send_keepalive)

    def _send_keepalive(self) -> None:
        self._keepalive_timer = None
        if self.closed:
            return
        self._keepalive_opaque = os.urandom(8)
        self.codec.ping(self._keepalive_opaque)
        self.flush()
        self._keepalive_timeout_timer = self.pool.loop.call_later(
            self.pool.options.settings.keepalive_timeout, self._on_keepalive_timeout
        )

    def _on_keepalive_timeout(self) -> None:
        self._keepalive_timeout_timer = None
        if not self.closed:
            log.debug("[C%d] keepalive timeout", self.id)
            self.codec_stats.keepalive_timeout.inc()
            self.close()

    # Connection callbacks ---------------------------------------------------------------

    def on_event(self, event: ConnectionEvent) -> None:
        if self.closed or event is ConnectionEvent.CONNECTED:
            return
        self.closed = True
        for timer in (self._keepalive_timer, self._keepalive_timeout_timer):
            if timer is not None:
                timer.cancel()
        self._keepalive_timer = self._keepalive_timeout_timer = None
        if event is ConnectionEvent.REMOTE_CLOSE:
            self.remote_closed = True
        elif self.remote_closed:
            event = ConnectionEvent.REMOTE_CLOSE
        # Envoy: streams cut off by the close (reset with "connection termination") make
        # it a close with an active request; a protocol error's resets do not.
        self._closed_with_active_rq = bool(self.streams) and not self.protocol_error
        self.pool.on_connection_event(self, event, self._failure_reason)
        self.codec.terminate()  # every stream still open: on_stream_reset
        # What the codec no longer knows: streams it reset in the read that failed (their
        # decoders were told), streams never opened.
        reason = (
            StreamResetReason.PROTOCOL_ERROR
            if self.protocol_error
            else StreamResetReason.CONNECTION_TERMINATION
        )
        self._ended.clear()
        self._gone.clear()
        self._finishing.clear()
        for encoder in list(self.streams):
            if not encoder.done and not encoder.response_complete:
                encoder.done = True
                encoder.decoder.on_reset(reason, "")
            self._stream_gone(encoder)
        # The codec names this client as its callbacks: a cycle, cut now that it is over.
        self.codec.callbacks = None

    def on_above_write_buffer_high_watermark(self) -> None:
        for encoder in list(self.streams):
            if not encoder.done:
                encoder.above()

    def on_below_write_buffer_low_watermark(self) -> None:
        for encoder in list(self.streams):
            if not encoder.done:
                encoder.below()
