"""The HTTP connection manager over HTTP/2: Envoy's ``ConnectionManagerImpl`` with its
HTTP/2 codec, beside the HTTP/1.1 one (conn_manager.py) and sharing its ``ActiveStream``.

``Http2ConnectionManager`` is made by the HCM's filter factory for codec_type HTTP2, or
takes a connection over from the HTTP/1 manager when AUTO sees HTTP/2 (``take_over``). It
feeds the bytes to the sans-I/O ``ServerConnection`` (http2/server.py) and is its callbacks:

- a request head opens an ``Http2ActiveStream`` (the shared ``ActiveStream`` with the
  codec-specific half: how a response is framed, reset, paused), many at once; its body and
  trailers reach it through the codec stream's ``decoder``;
- the codec's output is written once per read (``dispatching``) or per stream write;
- a codec error ends the connection as Envoy's does: streams reset, a GOAWAY when the codec
  made one, the close delayed by ``delayed_close_timeout`` (``downstream_cx_protocol_error``
  unless a flood);
- drain (listener drain, a failing health check, idle timeout, max connection duration,
  max_requests_per_connection): GOAWAY with the last stream id 2^31-1 at once, a GOAWAY with
  the real one ``drain_timeout`` later, then the connection closes when its streams are done;
- rapid reset (CVE-2023-44487): as Envoy, the connection is aborted once half of its closed
  streams (counted from ``overload.premature_reset_total_stream_count``, 500, on) were reset
  by the client within ``overload.premature_reset_min_stream_lifetime_seconds`` (1 s) and
  before a response code (``downstream_rq_too_many_premature_resets``).

Timers: the streams' route timeouts, their ``stream_idle_timeout`` and the connection's
``idle_timeout`` (while no stream is open) are ``Deadline`` numbers under one timer per
connection (``Deadlines``), which fires at the nearest and re-arms itself: activity and new
streams only store numbers, they create no timer. The streams' idle deadlines are plain
numbers on the streams (``idle_at``) under one ``Deadline`` (``stream_idle``), set for the
nearest when a stream opens sooner than it: when it comes, the streams past theirs time out
and it is set for the next. The connection's idle deadline (``idle_at``) is a number too,
under the ``idle`` Deadline, which checks it when it comes: a stream opening or the
connection going idle again only stores a number. ``request_timeout`` and
``max_stream_duration``, when configured, are loop timers per stream.

Flow control, end to end: the client's window exhausted (its stream's send buffer above the
connection's buffer limit) or the connection's write buffer above its high watermark calls
the stream's watermark callbacks: the router stops reading the upstream. The upstream's
write buffer above its high watermark (the router's ``on_decoder_filter_above_...``) stops
consuming the stream's data: its WINDOW_UPDATEs wait, and the client stops sending.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from legatus.http.conn_manager import ActiveStream
from legatus.http.conn_manager_utility import date_header, mutate_response_headers
from legatus.http.deadlines import Deadline, Deadlines
from legatus.http.headers import HeaderMap
from legatus.http.http1.events import RequestHeaders
from legatus.http.http2 import frames as f
from legatus.http.http2.server import ServerConnection
from legatus.http.http2.stream import ResetReason
from legatus.http.local_reply import LocalReply
from legatus.http.upgrades import upgrade_type
from legatus.network.connection import State
from legatus.network.filter import CloseType, ConnectionEvent, FilterStatus, ReadFilter
from legatus.stream_info import ResponseFlag

log = logging.getLogger("legatus.http")

HTTP_2 = "HTTP/2"
NOT_DRAINING, DRAINING, CLOSING = 0, 1, 2
# Response headers an HTTP/2 message must not carry (RFC 9113 8.2.2).
_HOP_BY_HOP = frozenset(("connection", "keep-alive", "proxy-connection", "transfer-encoding",
                         "upgrade"))  # fmt: skip
_CONTINUE_100 = ((":status", "100"),)
# Envoy's reply to a request whose :path is not origin-form (HCM decodeHeaders).
_ABSOLUTE_PATH = LocalReply(status=404, details="absolute_path_rejected")
_PREMATURE_TOTAL_KEY = "overload.premature_reset_total_stream_count"
_PREMATURE_LIFETIME_KEY = "overload.premature_reset_min_stream_lifetime_seconds"
_REMOTE_RESETS = (ResetReason.REMOTE_RESET, ResetReason.REMOTE_REFUSED_STREAM_RESET)


class Http2ConnectionManager(ReadFilter):
    """The terminal filter of an HTTP/2 connection (see module doc)."""

    def __init__(self, config, context) -> None:
        self.config = config
        self.context = context
        self.loop = context.loop
        self.connection: Any = None
        self.codec: ServerConnection | None = None
        self.streams: dict[int, Http2ActiveStream] = {}
        self.codec_stats = config.http2_stats.get()
        self.rq_protocol_total = config.stats.named.downstream_rq_http2_total
        self.requests = 0
        # ActiveStream's HTTP/1 close-after-response flag: set by shared code (local replies
        # that close an HTTP/1 connection), without meaning here: Envoy keeps an HTTP/2
        # connection after them.
        self.draining = False
        self.drain_state = NOT_DRAINING
        self.closing = False
        self.dispatching = False
        self.flush_scheduled = False
        self.above_write_watermark = False
        self.remote_closed = False
        self.codec_error = None
        self.started = 0.0
        self.deadlines = Deadlines(self.loop)
        self.idle = Deadline(self.deadlines)  # idle_timeout: checks ``idle_at`` (module doc)
        self.idle_at: float | None = None  # the connection's idle deadline (no stream open)
        self.stream_idle = Deadline(self.deadlines)  # the nearest stream idle deadline
        self.duration_timer: Any = None
        self.drain_timer: Any = None
        self.delayed_close_timer: Any = None
        self.keepalive_timer: Any = None
        self.keepalive_timeout_timer: Any = None
        self.keepalive_opaque: bytes | None = None
        self.closed_streams = 0  # for the premature reset check
        self.premature_resets = 0
        self.abort = False
        self.rejected_stream = False

    # Connection life -------------------------------------------------------------------

    def on_new_connection(self) -> FilterStatus:
        """codec_type HTTP2: this is the connection's filter from the start."""
        conn = self.read_callbacks.connection
        stats = self.config.stats.named
        stats.downstream_cx_total.inc()
        stats.downstream_cx_active.inc()
        if conn.secure:
            stats.downstream_cx_ssl_total.inc()
            stats.downstream_cx_ssl_active.inc()
        conn.add_connection_callbacks(self)
        conn.set_buffer_gauges(
            stats.downstream_cx_rx_bytes_buffered, stats.downstream_cx_tx_bytes_buffered
        )
        config = self.config
        self.started = self.loop.time()
        self._start(conn)
        if config.max_connection_duration:
            self.duration_timer = self.loop.call_later(
                config.max_connection_duration, self._on_max_connection_duration
            )
        return FilterStatus.CONTINUE

    def take_over(self, conn, started: float, data: bytes, end_stream: bool) -> FilterStatus:
        """codec_type AUTO chose HTTP/2 on the first bytes: the HTTP/1 manager counted the
        connection and registered itself (its hooks now call ours)."""
        self.started = started
        self._start(conn)
        config = self.config
        if config.max_connection_duration:
            remaining = config.max_connection_duration - (self.loop.time() - started)
            self.duration_timer = self.loop.call_later(
                max(remaining, 0.0), self._on_max_connection_duration
            )
        return self.on_data(data, end_stream)

    def _start(self, conn) -> None:
        self.connection = conn
        config = self.config
        stats = config.stats.named
        stats.downstream_cx_http2_total.inc()
        stats.downstream_cx_http2_active.inc()
        self.codec_stats.nghttp2_downstream_connections.inc()
        self.codec = ServerConnection(
            config.http2_settings, self.codec_stats, self, buffer_limit=conn.buffer_limit
        )
        if config.idle_timeout:
            self._go_idle(config.idle_timeout)
        if config.http2_settings.keepalive_interval:
            self._schedule_keepalive()

    def on_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        if data:
            self.config.stats.named.downstream_cx_rx_bytes_total.add(len(data))
            codec = self.codec
            if not self.closing and codec is not None:
                self.dispatching = True
                try:
                    error = codec.feed(data)
                finally:
                    self.dispatching = False
                if error is None and not self.abort:
                    self.write_out()
                    # Frames the client made us queue (and not yet sent) count against the
                    # outbound flood limits.
                    error = codec.on_transport_buffer(self.connection.write_buffer_size())
                if error is not None:
                    self._on_codec_error(error)
                elif self.abort:
                    self._abort()
        if end_stream and self.connection.state is State.OPEN:
            # HTTP connections do not half-close (as in Envoy).
            close_type = CloseType.FLUSH_WRITE if self.closing else CloseType.NO_FLUSH
            self.connection.close(close_type, remote=True)
        return FilterStatus.STOP_ITERATION

    def flush(self) -> None:
        """Have what the codec queued written: once after the read being parsed, or once at
        the end of this loop iteration for the streams' writes (the frames of the responses
        that completed in it go out together)."""
        if self.dispatching or self.flush_scheduled:
            return
        self.flush_scheduled = True
        self.loop.call_soon(self.write_out)

    def write_out(self, *, closing: bool = False) -> None:
        """Write what the codec has queued, now (while it parses, only if the connection is
        closing: otherwise after the read, in one piece)."""
        self.flush_scheduled = False
        codec = self.codec
        if (self.dispatching and not closing) or codec is None:
            return
        out = codec.data_to_send()
        if out:
            conn = self.connection
            if conn.state is not State.OPEN or conn.write_ended:
                return
            self.config.stats.named.downstream_cx_tx_bytes_total.add(len(out))
            if conn.write_filters:
                conn.write(bytes(out))
            else:
                conn.raw_write(out, False)

    def on_event(self, event: ConnectionEvent) -> None:
        if event is ConnectionEvent.CONNECTED:
            return
        stats = self.config.stats.named
        stats.downstream_cx_active.dec()
        if self.read_callbacks.connection.secure:
            stats.downstream_cx_ssl_active.dec()
        stats.downstream_cx_http2_active.dec()
        stats.downstream_cx_destroy.inc()
        remote = event is ConnectionEvent.REMOTE_CLOSE
        (stats.downstream_cx_destroy_remote if remote else stats.downstream_cx_destroy_local).inc()
        stats.downstream_cx_length_ms.record((self.loop.time() - self.started) * 1000)
        if any(not s.response_complete for s in self.streams.values()):
            stats.downstream_cx_destroy_active_rq.inc()
            (stats.downstream_cx_destroy_remote_active_rq if remote
             else stats.downstream_cx_destroy_local_active_rq).inc()  # fmt: skip
        self.remote_closed = remote
        self._cancel_timers()
        codec = self.codec
        if codec is not None:
            codec.terminate()
            self.codec = None

    def on_above_write_buffer_high_watermark(self) -> None:
        self.above_write_watermark = True
        for stream in list(self.streams.values()):
            stream.on_downstream_watermark(True)

    def on_below_write_buffer_low_watermark(self) -> None:
        self.above_write_watermark = False
        for stream in list(self.streams.values()):
            stream.on_downstream_watermark(False)

    def _cancel_timers(self) -> None:
        self.deadlines.close()
        for name in ("duration_timer", "drain_timer", "delayed_close_timer",
                     "keepalive_timer", "keepalive_timeout_timer"):  # fmt: skip
            timer = getattr(self, name)
            if timer is not None:
                timer.cancel()
                setattr(self, name, None)

    # Codec callbacks -------------------------------------------------------------------

    def on_request_headers(self, h2_stream, head, end_stream: bool) -> None:
        headers = head.header_map()
        event = RequestHeaders(headers, end_stream, True, head.expect_continue, head.upgrade,
                               HTTP_2)  # fmt: skip
        stream = Http2ActiveStream(self, event, h2_stream)
        h2_stream.decoder = stream
        self.idle_at = None  # (a stream is open)
        self.streams[h2_stream.id] = stream
        path = headers.get(":path")
        if path is None or path[:1] == "/" or head.connect:
            stream.decode_headers(event)
        else:
            stream.reject_absolute_path(event)

    def on_stream_rejected(self, details: str, reason: ResetReason) -> None:
        """The codec refused a request head: Envoy had made a stream for it, reset at once
        (``REMOTE_RESET`` for the codec's resets, as Envoy reports them; ``LOCAL_RESET``
        for a malformed one under stream_error_on_invalid_http_messaging) or with the
        connection (``CONNECTION_TERMINATION``)."""
        stream = Http2ActiveStream(self, None, None)
        if reason is ResetReason.CONNECTION_TERMINATION:
            self.rejected_stream = True  # an active request when the connection closes
            stream.info.set_flag(ResponseFlag.DOWNSTREAM_PROTOCOL_ERROR)
        stream.on_stream_reset(reason, details)

    def on_ping_ack(self, opaque: bytes) -> None:
        if opaque == self.keepalive_opaque:
            self.keepalive_opaque = None
            if self.keepalive_timeout_timer is not None:
                self.keepalive_timeout_timer.cancel()
                self.keepalive_timeout_timer = None
            self._schedule_keepalive()

    def _on_codec_error(self, error) -> None:
        """Envoy's handleCodecError / handleCodecOverloadError: the streams are reset (DPE),
        the connection closes after a delay."""
        self.codec_error = error
        stats = self.config.stats.named
        if not error.flood:
            stats.downstream_cx_protocol_error.inc()
        if self.streams or self.rejected_stream:
            stats.downstream_cx_destroy_active_rq.inc()
            stats.downstream_cx_destroy_local_active_rq.inc()
            for stream in self.streams.values():
                stream.info.set_flag(ResponseFlag.DOWNSTREAM_PROTOCOL_ERROR)
        self._close_delayed()
        codec = self.codec
        if codec is not None:
            codec.terminate()

    # Streams ---------------------------------------------------------------------------

    def on_stream_done(self, stream: Http2ActiveStream) -> None:
        streams = self.streams
        # (the entry under a stream's id is that stream, if any: ids are never reused; a
        # stream the codec refused has none)
        streams.pop(stream.stream_id, None)
        if not stream.internally_destroyed:
            # Envoy's rapid reset defence (see module doc): a stream reset before its
            # response within the minimum lifetime is premature.
            self.closed_streams += 1
            if stream.info.response_code is None and self._premature(stream.info):
                self.premature_resets += 1
            if self.premature_resets * 2 >= self.closed_streams:
                self._check_premature_resets()
        if streams or self.connection.state is not State.OPEN:
            return
        if self.drain_state == CLOSING:
            self._close_delayed()
        elif self.config.idle_timeout and not self.closing:
            self._go_idle(self.config.idle_timeout)

    def _go_idle(self, timeout: float) -> None:
        """No stream is open: the connection's idle deadline is ``timeout`` from now (the
        ``idle`` Deadline, when already set for sooner, checks it then)."""
        self.idle_at = self.loop.time() + timeout
        if self.idle.deadline is None:
            self.idle.set(timeout, self._on_idle_timeout)

    def on_stream_idle(self) -> None:
        """The nearest stream idle deadline came (see module doc)."""
        now = self.loop.time()
        nearest = None
        for stream in list(self.streams.values()):
            at = stream.idle_at
            if at is None or stream.destroyed:
                continue
            if at <= now:
                stream.idle_at = None
                stream.on_idle_timeout()
            elif nearest is None or at < nearest:
                nearest = at
        if nearest is not None:
            self.arm_stream_idle(nearest, now)

    def arm_stream_idle(self, at: float, now: float) -> None:
        """A stream's idle deadline ``at``: the ``stream_idle`` Deadline is set for it if
        it is sooner than the one set (or none is)."""
        timer = self.stream_idle
        if timer.deadline is None or at < timer.deadline:
            timer.set(at - now, self.on_stream_idle)

    def _premature(self, info) -> bool:
        """A stream without a response ended within the minimum lifetime."""
        runtime = self.context.runtime
        lifetime = runtime.get_integer(_PREMATURE_LIFETIME_KEY, 1) if runtime is not None else 1
        return self.loop.time() - info.start_monotonic <= lifetime

    def _check_premature_resets(self) -> None:
        """Abort once premature resets are half of the closed streams, counted from the
        configured total on (``on_stream_done`` asks only once they are half of them)."""
        runtime = self.context.runtime
        limit = runtime.get_integer(_PREMATURE_TOTAL_KEY, 500) if runtime is not None else 500
        closed = self.closed_streams
        if self.premature_resets * 2 < (limit if closed < limit else closed):
            return
        if self.connection.state is State.OPEN and not self.abort:
            self.config.stats.named.downstream_rq_too_many_premature_resets.inc()
            self.abort = True
            if self.dispatching:
                self.codec.halt()  # the rest of this read is not looked at
            else:
                self._abort()

    def _abort(self) -> None:
        self.config.stats.named.downstream_cx_protocol_error.inc()
        self.closing = True
        self.connection.close(CloseType.NO_FLUSH)

    def on_max_requests_reached(self, stream: ActiveStream) -> None:
        """max_requests_per_connection: Envoy drains an HTTP/2 connection (GOAWAY)."""
        if self.drain_state == NOT_DRAINING:
            self.config.stats.named.downstream_cx_max_requests_reached.inc()
            self.start_drain()

    def drain_close(self) -> bool:
        """Envoy's ``drainClose()``, asked once per response: the listener's drain decision
        (its drain, or failing health checks), or without one the server's health."""
        decision = self.connection.drain_decision
        if decision is not None:
            return decision.drain_close()
        return self.health_failed()

    def health_failed(self) -> bool:
        health = self.config.server_health
        return health is not None and health.failed

    def set_deadline(self, timeout: float | None) -> None:
        """The HTTP/1 manager's shared idle timer, which ``ActiveStream.__init__`` arms; an
        HTTP/2 stream keeps its own deadline instead (``Http2ActiveStream``)."""

    # Drain and close -------------------------------------------------------------------

    def start_drain(self) -> None:
        """Envoy's startDrainSequence (see module doc)."""
        if self.drain_state != NOT_DRAINING or self.closing or self.codec is None:
            return
        self.drain_state = DRAINING
        self.codec.shutdown_notice()
        self.write_out()
        self.drain_timer = self.loop.call_later(self.config.drain_timeout, self._on_drain_timeout)

    def _on_drain_timeout(self) -> None:
        self.drain_timer = None
        codec = self.codec
        if codec is None or self.closing:
            return
        codec.goaway(f.NO_ERROR)
        self.codec_stats.goaway_sent.inc()
        self.write_out()
        self.drain_state = CLOSING
        if not self.streams:
            self._close_delayed()

    def _close_delayed(self) -> None:
        """Envoy's FlushWriteAndDelay: what is queued goes out, then the connection closes
        when the client does or ``delayed_close_timeout`` later (reading on, dropping)."""
        if self.closing:
            return
        self.write_out(closing=True)
        self.closing = True
        conn = self.connection
        timeout = self.config.delayed_close_timeout
        if not timeout or conn.read_ended or conn.state is not State.OPEN:
            conn.close(CloseType.FLUSH_WRITE)
            return
        self.delayed_close_timer = self.loop.call_later(timeout, self._on_delayed_close)

    def _on_delayed_close(self) -> None:
        self.delayed_close_timer = None
        if self.connection.state is State.OPEN:
            self.config.stats.named.downstream_cx_delayed_close_timeout.inc()
            self.connection.close(CloseType.FLUSH_WRITE)

    def _on_max_connection_duration(self) -> None:
        self.duration_timer = None
        self.config.stats.named.downstream_cx_max_duration_reached.inc()
        self.start_drain()

    # Timers ----------------------------------------------------------------------------

    def _on_idle_timeout(self) -> None:
        at = self.idle_at
        if at is None or self.streams:
            return  # (a stream opened since: the next idle period sets the deadline again)
        now = self.loop.time()
        if at > now:
            self.idle.set(at - now, self._on_idle_timeout)  # idle again since: not yet
            return
        self.idle_at = None
        if self.connection.state is State.OPEN:
            self.config.stats.named.downstream_cx_idle_timeout.inc()
            self.start_drain()

    def _schedule_keepalive(self) -> None:
        settings = self.config.http2_settings
        interval = settings.keepalive_interval
        if not interval or self.closing:
            return
        jitter = interval * settings.keepalive_jitter
        delay = interval + self.context.random.uniform(-jitter, jitter) if jitter else interval
        self.keepalive_timer = self.loop.call_later(max(delay, 0.001), self._send_keepalive)

    def _send_keepalive(self) -> None:
        self.keepalive_timer = None
        codec = self.codec
        if codec is None or self.closing:
            return
        self.keepalive_opaque = os.urandom(8)
        codec.ping(self.keepalive_opaque)
        self.write_out()
        self.keepalive_timeout_timer = self.loop.call_later(
            self.config.http2_settings.keepalive_timeout, self._on_keepalive_timeout
        )

    def _on_keepalive_timeout(self) -> None:
        self.keepalive_timeout_timer = None
        if self.connection.state is State.OPEN:
            self.codec_stats.keepalive_timeout.inc()
            self.closing = True
            self.connection.close(CloseType.NO_FLUSH)


class Http2ActiveStream(ActiveStream):
    """An ``ActiveStream`` on an HTTP/2 connection: responses are framed by the codec on
    this stream, a reset is an RST_STREAM, reading pauses by holding the stream's window,
    and the idle, route and duration timers are the stream's own."""

    protocol = HTTP_2
    idle_at: float | None = None  # the stream idle deadline (the manager's ``stream_idle``)
    own_route_timer: Deadline | None = None
    body_suppressed = False
    internally_destroyed = False

    def __init__(self, manager: Http2ConnectionManager, event, h2_stream) -> None:
        super().__init__(manager, event)
        self.h2_stream = h2_stream
        self.stream_id = h2_stream.id if h2_stream is not None else None
        if self.idle_timeout:
            at = self.idle_at = self.info.start_monotonic + self.idle_timeout
            if manager.stream_idle.deadline is None or at < manager.stream_idle.deadline:
                manager.stream_idle.set(self.idle_timeout, manager.on_stream_idle)

    def reject_absolute_path(self, event) -> None:
        """Instead of ``decode_headers``: a request whose ``:path`` is not origin-form (and
        not a CONNECT's) gets Envoy's 404 (the connection manager checks the path)."""
        if event.end_stream:
            self._end_decode()
        self.request_headers = event.headers
        self.manager.config.stats.named.downstream_rq_non_relative_path.inc()
        self.send_reply(_ABSOLUTE_PATH)

    def _upgrade_filter_chain(self, headers: HeaderMap, route):
        """An upgrade refused on its route: Envoy drains an HTTP/2 connection (GOAWAY, before
        the 403) where it closes an HTTP/1 one after the reply."""
        config = self.manager.config
        if route is not None and self.manager.drain_state == NOT_DRAINING:
            upgrades = getattr(route.action, "upgrade_map", None)
            kind = upgrade_type(headers)
            if config.upgrades.filter_chain(kind, upgrades, config.filter_chain) is None:
                self.manager.start_drain()
        return super()._upgrade_filter_chain(headers, route)

    # Decoding --------------------------------------------------------------------------

    def decode_data(self, data: bytes, end_stream: bool) -> None:
        if data:
            self.info.bytes_received += len(data)
        if self.idle_at is not None:
            self.idle_at = self.manager.loop.time() + self.idle_timeout
        if end_stream:
            self._end_decode()
        if self.filter_manager is not None and not self.response_complete:
            self.filter_manager.decode_data(data, end_stream)

    def decode_trailers(self, trailers: HeaderMap) -> None:
        if self.idle_at is not None:
            self.idle_at = self.manager.loop.time() + self.idle_timeout
        self._end_decode()
        if self.filter_manager is not None and not self.response_complete:
            self.filter_manager.decode_trailers(trailers)

    # Encoding (StreamSink) -------------------------------------------------------------

    def write_headers(self, headers: HeaderMap, end_stream: bool) -> None:
        if self.destroyed:
            return
        manager = self.manager
        status = headers.get(":status", "0")
        if status[0] == "1" and (status != "101" or not self.upgraded):
            if status == "100":
                self.send_continue(headers)
            return
        policy = manager.config.header_policy
        mutate_response_headers(
            policy, headers, self.request_headers, date=date_header(), info=self.info
        )
        if not _HOP_BY_HOP.isdisjoint(headers):
            headers.remove_all(_HOP_BY_HOP)
            if status == "101":  # the tunnel is open: RFC 8441's 200 (logged as the 101)
                headers.set(":status", "200")
        self.response_started = True
        if not self.request_complete:
            manager.config.stats.named.downstream_rq_response_before_rq_complete.inc()
        if manager.drain_state == NOT_DRAINING:
            decision = manager.connection.drain_decision  # (drain_close, inline: per response)
            if decision.drain_close() if decision is not None else manager.health_failed():
                manager.start_drain()  # Envoy's drainClose() over HTTP/2: GOAWAY
                manager.config.stats.named.downstream_cx_drain_close.inc()
        if self.is_head and not end_stream:
            end_stream = self.body_suppressed = True
        self.response_headers = headers
        self.info.response_code = int(status)
        self.info.first_downstream_tx_byte_sent = manager.loop.time()
        try:
            manager.codec.send_headers(self.h2_stream, headers, end_stream)
        except ValueError:
            log.debug("[C%d] response headers could not be encoded", manager.connection.id)
            self.reset_stream()
            return
        if not (manager.dispatching or manager.flush_scheduled):
            manager.flush()
        if end_stream:
            self._end_encode()

    def write_data(self, data: bytes, end_stream: bool) -> None:
        if self.destroyed or self.body_suppressed:
            if end_stream and not self.destroyed:
                self._end_encode()
            return
        self.info.bytes_sent += len(data)
        if not end_stream and self.idle_at is not None:
            self.idle_at = self.manager.loop.time() + self.idle_timeout
        manager = self.manager
        manager.codec.send_data(self.h2_stream, data, end_stream)
        if not (manager.dispatching or manager.flush_scheduled):
            manager.flush()
        if end_stream:
            self._end_encode()

    def write_trailers(self, trailers: HeaderMap) -> None:
        if self.destroyed:
            return
        self.response_trailers = trailers
        if not self.body_suppressed:
            manager = self.manager
            trailers.remove_all(_HOP_BY_HOP)
            manager.codec.send_trailers(self.h2_stream, trailers)
            manager.flush()
        self._end_encode()

    def send_continue(self, headers: HeaderMap | None) -> None:
        """A 100 Continue: ours (``headers`` None) or the upstream's, as HEADERS."""
        if self.destroyed:
            return
        manager = self.manager
        if headers is None:
            headers = HeaderMap(_CONTINUE_100)
        else:
            headers.remove_all(_HOP_BY_HOP)
        manager.codec.send_headers(self.h2_stream, headers, False)
        manager.flush()
        manager.config.code_stats.charge(100)

    def _end_encode(self) -> None:
        """The response is complete. A request still arriving is reset once the response's
        last frame is out (Envoy's doEndStream: RST_STREAM NO_ERROR, counted as a reset)."""
        self.response_complete = True
        manager = self.manager
        self.info.last_downstream_tx_byte_sent = manager.loop.time()
        if not self.request_complete and manager.codec is not None:
            code = f.CONNECT_ERROR if self.upgraded else f.NO_ERROR
            manager.codec.reset_stream(self.h2_stream, code, deferred=True)
            manager.config.stats.named.downstream_rq_rx_reset.inc()
            manager.flush()
        self._destroy()

    def on_watermark(self, *, decoding: bool, above: bool) -> None:
        if not decoding:
            self.on_downstream_watermark(above)
            return
        manager = self.manager
        stats = manager.config.stats.named
        if above:
            stats.downstream_flow_control_paused_reading_total.inc()
        else:
            stats.downstream_flow_control_resumed_reading_total.inc()
        if manager.codec is not None and self.h2_stream is not None:
            manager.codec.read_disable(self.h2_stream, above)
            manager.flush()

    def on_send_watermark(self, above: bool) -> None:
        """The codec: this stream's body waits for the client's window past the limit."""
        if not self.destroyed:
            self.on_downstream_watermark(above)

    def add_watermark_callbacks(self, callbacks) -> None:
        self.watermark_callbacks.append(callbacks)
        if self.manager.above_write_watermark:
            callbacks.on_above_write_buffer_high_watermark()
        if self.h2_stream is not None and self.h2_stream.above_watermark:
            callbacks.on_above_write_buffer_high_watermark()

    def reset_stream(self) -> None:
        """A filter gives up on the stream (the router, after the response started): only
        this stream is reset (RST_STREAM NO_ERROR, as Envoy's LocalReset; CONNECT_ERROR for
        a tunnel, RFC 8441's and Envoy's answer to an upstream that ends it)."""
        if self.destroyed:
            return
        manager = self.manager
        manager.config.stats.named.downstream_rq_tx_reset.inc()
        if manager.codec is not None and self.h2_stream is not None:
            code = f.CONNECT_ERROR if self.upgraded else f.NO_ERROR
            manager.codec.reset_stream(self.h2_stream, code)
            manager.flush()
        self.on_stream_reset(ResetReason.LOCAL_RESET, "")

    # Timers ----------------------------------------------------------------------------

    @property
    def route_timer(self) -> Deadline:
        timer = self.own_route_timer
        if timer is None:
            timer = self.own_route_timer = Deadline(self.manager.deadlines)
        return timer

    def set_idle_timeout(self, timeout: float) -> None:
        """A route's ``idle_timeout`` replaces the connection manager's (0 disables it)."""
        self.idle_timeout = timeout or None
        if self.idle_timeout:
            now = self.manager.loop.time()
            self.idle_at = now + self.idle_timeout
            self.manager.arm_stream_idle(self.idle_at, now)
        else:
            self.idle_at = None

    def touch(self) -> None:
        if self.idle_at is not None:
            self.idle_at = self.manager.loop.time() + self.idle_timeout

    def recreate(self, headers: HeaderMap, body) -> None:
        self.internally_destroyed = True  # the replaced stream is not a premature reset
        super().recreate(headers, body)
        self.internally_destroyed = False

    # End of the stream -----------------------------------------------------------------

    def on_stream_reset(self, reason: ResetReason, details: str) -> None:
        """The codec: the stream is gone (the client reset it, the codec did, or the
        connection ended). Envoy's onResetStream: every reset counts
        ``downstream_rq_rx_reset``."""
        if self.destroyed:
            return
        manager = self.manager
        manager.config.stats.named.downstream_rq_rx_reset.inc()
        info = self.info
        if reason in _REMOTE_RESETS:
            info.set_flag(ResponseFlag.DOWNSTREAM_REMOTE_RESET)
        elif reason is ResetReason.CONNECTION_TERMINATION:
            if manager.remote_closed and not self.response_complete:
                info.set_flag(ResponseFlag.DOWNSTREAM_CONNECTION_TERMINATION)
                info.response_code_details = "downstream_remote_disconnect"
        elif details and reason is ResetReason.LOCAL_RESET:
            info.set_flag(ResponseFlag.DOWNSTREAM_PROTOCOL_ERROR)
        if details:
            info.response_code_details = details
        self._destroy()

    def _destroy(self) -> None:
        # (a second call finds the timer cancelled and the decoder let go: no-ops, and
        # ActiveStream._destroy returns at once; the idle deadline, a number, needs nothing:
        # the manager's scan skips destroyed streams)
        if self.own_route_timer is not None:
            self.own_route_timer.cancel()
        h2_stream = self.h2_stream
        if h2_stream is not None:
            h2_stream.decoder = None
        super()._destroy()
