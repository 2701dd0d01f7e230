"""The HTTP connection manager: Envoy's ``ConnectionManagerImpl`` over HTTP/1.1.

One ``ConnectionManager`` is the terminal network filter of a downstream connection. The
codec is chosen on the first bytes (``_on_first_data``): with codec_type AUTO, HTTP/2 (the
preface, or ALPN ``h2``) hands the connection to ``Http2ConnectionManager``
(conn_manager_http2.py), which shares ``ActiveStream``; codec_type HTTP2 makes that one
directly. Over HTTP/1.1, it feeds the bytes to the sans-I/O ``ServerCodec`` and turns its
events into streams:

- ``RequestHeaders`` opens an ``ActiveStream``: Envoy's request checks (a Host is required),
  the header policy (x-forwarded-*, x-request-id, x-envoy-* stripping), the route lookup,
  then the stream's HTTP filter chain (a ``FilterManager``) runs ``decode_headers``; the
  router, last in the chain, takes the request upstream.
- ``RequestData`` / ``RequestTrailers`` continue the current stream's decoding.
- ``ProtocolError`` answers the request with Envoy's codec-error reply and closes.

The encoder chain's output comes back through the stream (``StreamSink``): response
headers get the connection manager's response headers (date, server, via), then the
codec frames them and they are written. The codec pauses after each complete request
(pipelining): when a stream ends, the next request is released with ``codec.resume()`` on
the next loop iteration (a codec holding no request is unpaused at once: ``on_stream_done``).
A response that starts before its request is complete closes the
connection after it, as Envoy does for HTTP/1 (the rest of the request would otherwise have
to be read first). How and when the connection closes (at once, after a delay, after a
drain) follows Envoy 1.40: see docs/http-connection-manager.md.

Upgrades and CONNECT (docs/upgrades.md): the codec turns such a request into a tunnel at its
head; the upgrade configs (http/upgrades.py) let it through its filter chain, or refuse it.
A stream let through (``upgraded``) ends as Envoy ends an HTTP/1 stream whose request never
completes: at once when its response ends or it is reset, while the connection closes after
``delayed_close_timeout``.

Timers: ``idle_timeout`` (no stream on the connection) and ``stream_idle_timeout`` share one
timer, armed once per connection, whose deadline activity moves by storing a number (see
``set_deadline``), and the router's timeout has one re-arming timer per connection
(``route_timer``), so a plain request creates no timer.
``max_connection_duration``, ``request_headers_timeout`` (from the first byte of a request to
its head), ``request_timeout``, ``max_stream_duration`` and ``drain_timeout`` get timers only
when configured; so do the access-log options and the recommended status of Proxy-Status
(http/stream_options.py, attached by the same test as the stream's timers).

Flow control (Envoy's watermarks): the downstream write buffer above its high watermark
stops the upstream read of the current stream (through the router's watermark callbacks);
a filter (the router, for the upstream write buffer) above its watermark stops the
downstream read. Reasons nest (``Connection.read_disable``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from legatus.common.deadline_timer import DeadlineTimer
from legatus.http.conn_manager_utility import (
    date_header,
    is_upgrade,
    mutate_request_headers,
    mutate_response_headers,
    original_ip_rejection,
)
from legatus.http.filter_chain import NO_HTTP_FILTERS, HttpFilterChain
from legatus.http.filter_manager import FilterManager, TerminalFilterManager
from legatus.http.headers import HeaderMap
from legatus.http.http1.events import (
    HTTP_10,
    HTTP_11,
    ProtocolError,
    RequestData,
    RequestHeaders,
    RequestTrailers,
)
from legatus.http.http1.server_codec import ServerCodec
from legatus.http.http2.frames import PREFACE_PREFIX
from legatus.http.local_reply import (
    ENVOY_LOCAL_REPLIES,
    LocalReply,
    codec_error,
    is_grpc_request,
    original_ip_detection_rejection,
    path_normalization_redirect,
    render_local_reply,
)
from legatus.http.path_utility import FRAGMENT_ONLY, NormalizeResult, PathNormalization
from legatus.http.upgrades import upgrade_type
from legatus.network.connection import State
from legatus.network.filter import CloseType, ConnectionEvent, FilterStatus, ReadFilter
from legatus.router.timeouts import DISABLE as DURATION_DISABLED
from legatus.router.timeouts import stream_duration
from legatus.stream_info import ResponseFlag, StreamInfo

log = logging.getLogger("legatus.http")

_CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"
CODEC_AUTO = 0  # HttpConnectionManager.CodecType: AUTO, HTTP1, HTTP2
CODEC_HTTP1 = 1
CODEC_HTTP2 = 2
# Local replies after which Envoy closes the connection although the request was complete.
_CLOSING_DETAILS = frozenset(
    r.details for r in ENVOY_LOCAL_REPLIES.values() if r.close_connection
) - {r.details for r in ENVOY_LOCAL_REPLIES.values() if not r.close_connection}


class ConnectionManager(ReadFilter):
    """The terminal filter of an HTTP connection (see module doc)."""

    def __init__(self, config, context) -> None:
        self.config = config
        self.context = context
        self.loop = context.loop
        self.connection: Any = None
        self.codec: ServerCodec | None = None
        self.stream: ActiveStream | None = None
        self.requests = 0
        self.draining = False  # the next response says connection: close, then we close
        self.closing = False
        self.codec_read_disabled = False
        self.deadline: float | None = None  # see set_deadline
        self.tick: float | None = None
        self.timer: Any = None
        self.duration_timer: Any = None
        self.headers_timer: Any = None
        self.delayed_close_timer: Any = None
        self.drain_timer: Any = None
        self.route_timer: DeadlineTimer | None = None
        self.above_write_watermark = False
        stats = config.stats.named
        # What a stream counts as its protocol's request (downstream_rq_http1_total here).
        self.rq_protocol_total = stats.downstream_rq_http1_total
        # Counted on every read and write (``counter.value += n`` is the counter's add).
        self.rx_bytes_total = stats.downstream_cx_rx_bytes_total
        self.tx_bytes_total = stats.downstream_cx_tx_bytes_total

    # Connection life -------------------------------------------------------------------

    def on_new_connection(self) -> FilterStatus:
        conn = self.connection = self.read_callbacks.connection
        config = self.config
        stats = config.stats.named
        stats.downstream_cx_total.inc()
        stats.downstream_cx_active.inc()
        if conn.secure:
            stats.downstream_cx_ssl_total.inc()
            stats.downstream_cx_ssl_active.inc()
        conn.add_connection_callbacks(self)
        self.route_timer = DeadlineTimer(self.loop)  # the router's, for each stream in turn
        conn.set_buffer_gauges(
            stats.downstream_cx_rx_bytes_buffered, stats.downstream_cx_tx_bytes_buffered
        )
        self.started = self.loop.time()
        self._start_idle_timer()
        if config.max_connection_duration:
            self.duration_timer = self.loop.call_later(
                config.max_connection_duration, self._on_max_connection_duration
            )
        self.on_data = self._on_first_data  # type: ignore[method-assign]
        return FilterStatus.CONTINUE

    def _on_first_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        """The codec is made on the first bytes, as Envoy's ``createCodec``: with codec_type
        AUTO, a connection whose TLS handshake chose ``h2`` (``connection.next_protocol``, set
        by the TLS transport socket; absent on cleartext) or whose bytes start with the
        HTTP/2 preface is handed to an ``Http2ConnectionManager``; otherwise HTTP/1.1. Later
        reads go straight to ``on_data``."""
        if not data:
            return ConnectionManager.on_data(self, data, end_stream)
        del self.on_data
        config = self.config
        conn = self.connection
        if config.codec_type == CODEC_AUTO:
            next_protocol = getattr(conn, "next_protocol", None)
            if next_protocol == "h2" or (not next_protocol and data.startswith(PREFACE_PREFIX)):
                return self._hand_over_to_http2(data, end_stream)
        stats = config.stats.named
        stats.downstream_cx_http1_total.inc()
        stats.downstream_cx_http1_active.inc()
        self.codec = ServerCodec(config.codec_settings, buffer_limit=conn.buffer_limit)
        return self.on_data(data, end_stream)

    def _hand_over_to_http2(self, data: bytes, end_stream: bool) -> FilterStatus:
        """AUTO chose HTTP/2: an ``Http2ConnectionManager`` takes the connection over. This
        object stays the connection's filter and callbacks, its hooks bound to the new one's."""
        from legatus.http.conn_manager_http2 import Http2ConnectionManager

        self._cancel_timers()
        h2 = Http2ConnectionManager(self.config, self.context)
        h2.read_callbacks = self.read_callbacks
        for name in ("on_data", "on_event", "on_above_write_buffer_high_watermark",
                     "on_below_write_buffer_low_watermark", "start_drain"):  # fmt: skip
            setattr(self, name, getattr(h2, name))
        return h2.take_over(self.connection, self.started, data, end_stream)

    def on_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        if data:
            self.rx_bytes_total.value += len(data)
            if self.closing:
                return FilterStatus.STOP_ITERATION  # a delayed close drains what still comes
            codec = self.codec
            if self.stream is None and self.config.request_headers_timeout:
                self._start_headers_timer()
            self._dispatch(codec.feed(data))
        if end_stream:
            self._on_remote_eof()
        return FilterStatus.STOP_ITERATION

    def _on_remote_eof(self) -> None:
        """The client's FIN: HTTP connections do not half-close (as in Envoy), so the
        connection ends; a stream still in progress is reset."""
        if self.connection.state is State.OPEN:
            # Closing already (the reply is written): let what is queued still go out.
            close_type = CloseType.FLUSH_WRITE if self.closing else CloseType.NO_FLUSH
            self.connection.close(close_type, remote=True)

    def on_event(self, event: ConnectionEvent) -> None:
        if event is ConnectionEvent.CONNECTED:
            return
        stats = self.config.stats.named
        stats.downstream_cx_active.dec()
        if self.connection.secure:
            stats.downstream_cx_ssl_active.dec()
        if self.codec is not None:
            stats.downstream_cx_http1_active.dec()
        stats.downstream_cx_destroy.inc()
        remote = event is ConnectionEvent.REMOTE_CLOSE
        (stats.downstream_cx_destroy_remote if remote else stats.downstream_cx_destroy_local).inc()
        stats.downstream_cx_length_ms.record((self.loop.time() - self.started) * 1000)
        stream = self.stream
        if stream is not None and not stream.destroyed:
            if not stream.response_complete:
                stats.downstream_cx_destroy_active_rq.inc()
                if remote:
                    stats.downstream_cx_destroy_remote_active_rq.inc()
                else:
                    stats.downstream_cx_destroy_local_active_rq.inc()
            stream.on_reset(remote)
        self._cancel_timers()
        if self.codec is not None:
            self.codec.release()  # (cycles through the codec: see ServerCodec.release)
            self.codec = None
        elif "on_data" in self.__dict__:
            del self.on_data  # no byte came: the first-data hook, bound to self (a cycle)

    def on_above_write_buffer_high_watermark(self) -> None:
        self.above_write_watermark = True
        if self.stream is not None:
            self.stream.on_downstream_watermark(True)

    def on_below_write_buffer_low_watermark(self) -> None:
        self.above_write_watermark = False
        if self.stream is not None:
            self.stream.on_downstream_watermark(False)

    def _cancel_timers(self) -> None:
        if self.route_timer is not None:
            self.route_timer.close()
        for name in ("timer", "duration_timer", "headers_timer", "delayed_close_timer",
                     "drain_timer"):  # fmt: skip
            timer = getattr(self, name)
            if timer is not None:
                timer.cancel()
                setattr(self, name, None)

    # Codec events ----------------------------------------------------------------------

    def _dispatch(self, events: list) -> None:
        """Hand the codec's events to the streams. The codec pauses after each request, so
        one call carries at most one request; the next is released when the stream ends.
        Then reading follows what the codec wants (``_update_codec_read``, inlined), except
        in a delayed close: reading goes on then, so that the client's FIN ends the wait at
        once, as in Envoy."""
        for event in events:
            if self.codec is None or self.closing:
                break
            if type(event) is RequestHeaders:
                if self.headers_timer is not None:
                    self._cancel_headers_timer()
                stream = self.stream = ActiveStream(self, event)
                timeout = stream.idle_timeout  # stream_idle_timeout from now (set_deadline)
                self.deadline = stream.info.start_monotonic + timeout if timeout else None
                stream.decode_headers(event)
            else:
                self._on_event(event)
        codec = self.codec
        if codec is not None and codec.wants_data == self.codec_read_disabled and not self.closing:
            self.codec_read_disabled = disabled = not self.codec_read_disabled
            self.connection.read_disable(disabled)

    def _on_event(self, event) -> None:
        """A codec event other than a request head (``_dispatch`` opens streams)."""
        cls = type(event)
        if cls is RequestData:
            stream = self.stream
            if stream is not None and not stream.destroyed:
                stream.decode_data(event.data, event.end_stream)
        elif cls is RequestTrailers:
            stream = self.stream
            if stream is not None and not stream.destroyed:
                stream.decode_trailers(event.trailers)
        else:
            self._on_protocol_error(event)

    def _on_protocol_error(self, error: ProtocolError) -> None:
        self._cancel_headers_timer()
        self.config.stats.named.downstream_cx_protocol_error.inc()
        stream = self.stream
        if stream is None or stream.destroyed:
            stream = self.stream = ActiveStream(self, None)
            self.set_deadline(stream.idle_timeout)
        elif stream.response_started:
            self.close(CloseType.FLUSH_WRITE)
            return
        self.draining = True
        stream.send_codec_error(error)

    def _update_codec_read(self) -> None:
        codec = self.codec
        if codec is None:
            return
        want = codec.wants_data
        if want == self.codec_read_disabled:
            self.codec_read_disabled = not want
            self.connection.read_disable(not want)

    # Streams ---------------------------------------------------------------------------

    def on_response_complete(self, stream: ActiveStream) -> bool:
        """The response of ``stream`` went out. True if the connection stays for the next
        request; otherwise it is closing (the stream then ends with the connection). Envoy
        closes at once only after an upstream response to a complete request whose client
        asked for the close (``connection: close``, HTTP/1.0); otherwise (a local reply, a
        request still arriving, a drain) it delays the close."""
        if self.codec is None or self.connection.state is not State.OPEN:
            return False
        if self.draining or self.codec.close_after_response or not stream.request_complete:
            self._close_after_response(
                delay=stream.local_reply
                or not stream.request_complete
                or not stream.saw_connection_close
            )
            return False
        return True

    def on_max_requests_reached(self, stream: ActiveStream) -> None:
        """max_requests_per_connection: the connection closes after this response."""
        if not self.draining:
            self.config.stats.named.downstream_cx_max_requests_reached.inc()
        self.draining = True
        stream.saw_connection_close = True  # close when done, as if the client asked

    def on_stream_done(self, stream: ActiveStream) -> None:
        """A stream ended: release the next pipelined request on the next loop iteration (by
        then the upstream connection this stream used is free again, as in Envoy).

        When the codec holds nothing (the common case: no request arrived behind this one),
        releasing only unpauses it, which is done now: no request can start before the loop
        reads again, so this is what ``_resume`` would do on the next iteration. (The codec
        is never inside ``feed`` here: its events are dispatched after it returns.)"""
        if self.stream is stream:
            self.stream = None
        codec = self.codec
        if codec is None or self.closing or self.connection.state is not State.OPEN:
            return
        timeout = self.config.idle_timeout  # idle_timeout from now (see set_deadline)
        self.deadline = self.loop.time() + timeout if timeout else None
        if codec.holding or self.stream is not None:
            self.loop.call_soon(self._resume)
            return
        codec.paused = False  # (codec.resume(), inlined: nothing to release)
        if self.codec_read_disabled:
            # Nothing released: the codec wants bytes unless it is closed (see _resume).
            self._update_codec_read()

    def _resume(self) -> None:
        codec = self.codec
        if codec is not None and self.stream is None and not self.closing:
            events = codec.resume()
            if events:
                self._dispatch(events)
            elif self.codec_read_disabled:
                # Nothing released: the codec is not paused (any more), so it wants bytes
                # unless it is closed, which had disabled reading already.
                self._update_codec_read()

    def _close_after_response(self, *, delay: bool) -> None:
        """Close once the response is written. After a local reply Envoy waits (FlushWrite-
        AndDelay): it sends no FIN and keeps reading and dropping what the client still sends,
        until the client closes or ``delayed_close_timeout`` passes, so that unread request
        bytes do not turn the close into a RST that could destroy the reply. After an
        upstream response it closes at once."""
        if self.closing:
            return
        self.closing = True
        conn = self.connection
        timeout = self.config.delayed_close_timeout
        if not delay or not timeout or conn.read_ended:
            conn.close(CloseType.FLUSH_WRITE)
            return
        if self.codec_read_disabled:
            self.codec_read_disabled = False
            conn.read_disable(False)
        self.delayed_close_timer = self.loop.call_later(timeout, self._on_delayed_close)

    def _on_delayed_close(self) -> None:
        self.delayed_close_timer = None
        if self.connection.state is State.OPEN:
            self.config.stats.named.downstream_cx_delayed_close_timeout.inc()
            self.connection.close(CloseType.FLUSH_WRITE)

    def close(self, close_type: CloseType) -> None:
        self.closing = True
        self.connection.close(close_type)

    def drain_close(self) -> bool:
        """Envoy's ``drainClose()``, asked once per response (asking twice would double the
        chance of a gradual drain): the listener's drain decision (its drain, or failing
        health checks), or without a listener the server's health."""
        decision = self.connection.drain_decision
        if decision is not None:
            return decision.drain_close()
        health = self.config.server_health
        return health is not None and health.failed

    def start_drain(self) -> None:
        """Envoy's drain sequence for HTTP/1: the response in progress (if any) says
        ``connection: close`` and the connection closes after it; an idle connection closes
        ``drain_timeout`` later (a request arriving meanwhile is still served, and closes it)."""
        if self.draining:
            return
        self.draining = True
        if self.stream is None:
            self.drain_timer = self.loop.call_later(self.config.drain_timeout, self._on_drained)

    def _on_drained(self) -> None:
        self.drain_timer = None
        if self.stream is None:
            self._close_after_response(delay=True)

    # Timers ----------------------------------------------------------------------------

    def _start_idle_timer(self) -> None:
        """The idle timer of the connection (see ``set_deadline``), armed once."""
        config = self.config
        idle, stream_idle = config.idle_timeout, config.stream_idle_timeout
        tick = min(idle, stream_idle) if idle and stream_idle else idle or stream_idle
        if tick:
            self.tick = tick
            now = self.loop.time()
            if idle:
                self.deadline = now + idle
            self.timer = self.loop.call_at(now + tick, self._on_timer)

    def set_deadline(self, timeout: float | None) -> None:
        """The idle deadline is ``timeout`` from now (None or 0: no deadline).

        One timer serves both idle timeouts: the connection's ``idle_timeout`` while no
        stream is open, the stream's ``stream_idle_timeout`` while one is. It is armed once,
        at most ``tick`` (the shortest timeout in use) ahead, and re-arms itself the same
        way each time it fires, so a deadline at least ``tick`` from now is never missed:
        the request path sets one by storing ``deadline = now + timeout`` itself. This
        method is for the rest, and for a shorter timeout (a route's ``idle_timeout``),
        which shortens ``tick``."""
        now = self.loop.time()
        if not timeout:
            self.deadline = None
            return
        self.deadline = now + timeout
        tick = self.tick
        if tick is None or timeout < tick:
            self.tick = tick = timeout
        timer = self.timer
        if timer is None or now + tick < timer.when():
            if timer is not None:
                timer.cancel()
            self.timer = self.loop.call_at(now + tick, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        if self.connection.state is not State.OPEN:
            return
        loop = self.loop
        now = loop.time()
        deadline = self.deadline
        if deadline is None or now < deadline:
            at = now + self.tick
            if deadline is not None and deadline < at:
                at = deadline
            self.timer = loop.call_at(at, self._on_timer)
            return
        self.deadline = None
        stream = self.stream
        if stream is not None and not stream.destroyed:
            stream.on_idle_timeout()
        else:
            self.config.stats.named.downstream_cx_idle_timeout.inc()
            self.start_drain()
        if self.timer is None and self.connection.state is State.OPEN:
            self.timer = loop.call_at(loop.time() + self.tick, self._on_timer)

    def _on_max_connection_duration(self) -> None:
        self.duration_timer = None
        self.config.stats.named.downstream_cx_max_duration_reached.inc()
        self.start_drain()

    def _start_headers_timer(self) -> None:
        """request_headers_timeout: from the first byte of a request (not of bytes held while
        a request is in progress: those of a pipelined one start it when released)."""
        timeout = self.config.request_headers_timeout
        if timeout and self.headers_timer is None and not self.codec.paused:
            self.headers_timer = self.loop.call_later(timeout, self._on_headers_timeout)

    def _cancel_headers_timer(self) -> None:
        if self.headers_timer is not None:
            self.headers_timer.cancel()
            self.headers_timer = None

    def _on_headers_timeout(self) -> None:
        self.headers_timer = None
        self.config.stats.named.downstream_rq_header_timeout.inc()
        stream = self.stream = ActiveStream(self, None)
        self.set_deadline(stream.idle_timeout)
        self.draining = True
        stream.send_reply(ENVOY_LOCAL_REPLIES["request_header_timeout"])


# What a stream recreated for an internal redirect keeps from the one it replaces.
_CARRIED_OVER = (
    "connection_id", "downstream_local_address", "downstream_remote_address",
    "downstream_direct_remote_address", "protocol", "bytes_received",
    "last_downstream_rx_byte_received",
)  # fmt: skip


class ActiveStream:
    """One request and its response (Envoy's ``ActiveStream``); the filter manager's sink."""

    # Defaults at class level: a new stream sets only what differs (one per request).
    response_headers: HeaderMap | None = None
    response_trailers: HeaderMap | None = None
    filter_manager: FilterManager | TerminalFilterManager | None = None
    request_complete = False
    response_started = False
    response_complete = False
    destroyed = False
    internal = False
    local_reply = False
    upgraded = False  # an upgrade or CONNECT let through (a tunnel once answered)
    internal_redirects = 0
    saw_connection_close = False
    is_head = False
    http10 = False
    protocol = "HTTP/1.1"
    request_headers: HeaderMap | None = None
    request_timer: Any = None
    duration_timer: Any = None
    route_duration = False  # the route's max_stream_duration set the duration timer
    stream_options: Any = None  # the config's StreamOptions, attached (http/stream_options.py)
    flush_timer: Any = None  # access_log_flush_interval's
    random_value = 0

    def __init__(self, manager: ConnectionManager, event: RequestHeaders | None) -> None:
        self.manager = manager
        config = manager.config
        conn_info = manager.connection.stream_info
        info = self.info = StreamInfo(now_monotonic=manager.loop.time())
        info.connection_id = conn_info.connection_id
        info.downstream_local_address = conn_info.downstream_local_address
        info.downstream_remote_address = conn_info.downstream_remote_address
        info.downstream_direct_remote_address = conn_info.downstream_direct_remote_address
        info.downstream_ssl = conn_info.downstream_ssl
        info.requested_server_name = conn_info.requested_server_name
        info.listener_metadata = conn_info.listener_metadata
        if event is not None:
            self.request_headers = event.headers
            if event.protocol != HTTP_11:
                self.protocol = event.protocol
                self.http10 = event.protocol == HTTP_10
            if not event.keep_alive:
                self.saw_connection_close = True
        info.protocol = self.protocol
        self.watermark_callbacks: list = []
        # The stream's idle timeout (the manager that made it sets the deadline).
        self.idle_timeout = config.stream_idle_timeout
        self.route_table = config.route_provider.route_table  # kept: updates are for new streams
        stats = config.stats.named
        stats.downstream_rq_total.value += 1  # (a counter's inc)
        manager.rq_protocol_total.value += 1
        stats.downstream_rq_active.inc()
        manager.requests += 1
        if config.per_stream_setup:  # timers, stream options (decided by the config)
            self._start_timers(config, manager.loop)

    def _start_timers(self, config, loop) -> None:
        if config.request_timeout:
            self.request_timer = loop.call_later(config.request_timeout, self._on_request_timeout)
        if config.max_stream_duration:
            self.duration_timer = loop.call_later(
                config.max_stream_duration, self._on_max_stream_duration
            )
        if config.stream_options is not None:
            config.stream_options.attach(self, loop)

    @property
    def connection(self):
        return self.manager.connection

    # Decoding --------------------------------------------------------------------------

    def decode_headers(self, event: RequestHeaders) -> None:
        manager = self.manager
        config = manager.config
        headers = event.headers
        end_stream = event.end_stream
        if headers.get(":method") == "HEAD":
            self.is_head = True
        max_requests = config.max_requests_per_connection
        if max_requests and manager.requests >= max_requests:
            manager.on_max_requests_reached(self)
        info = self.info
        if end_stream:  # _end_decode, inlined (no response, so no destroy, yet)
            self.request_complete = True
            info.last_downstream_rx_byte_received = manager.loop.time()
            if self.request_timer is not None:
                self.request_timer.cancel()
                self.request_timer = None
        if ":authority" not in headers:
            self._create_filter_chain(NO_HTTP_FILTERS)
            self.send_reply(ENVOY_LOCAL_REPLIES["missing_host_header"])
            return
        if (
            config.before_mutation or "#" in headers.get(":path", "")
        ) and not self._before_mutation(headers, config, info):
            return
        random = manager.context.random
        result = mutate_request_headers(
            config.header_policy, headers, remote_address=info.downstream_remote_address or "",
            local_address=info.downstream_local_address, random=random, ssl=info.downstream_ssl,
            internal_only_headers=self.route_table.internal_only_headers,
        )  # fmt: skip
        info.downstream_remote_address = result.final_remote_address
        self.internal = result.internal
        if event.expect_continue and not config.proxy_100_continue:
            # Envoy answers 100-continue itself (unless proxy_100_continue) and drops Expect.
            headers.remove("expect")
            self.send_continue(None)
        random_value = self.random_value = random.getrandbits(63)
        route = self.route_table.route(headers, random_value)
        if route is not None:
            info.route = route
            info.route_name = route.name or None
            # %UPSTREAM_CLUSTER% once routed: the route's cluster if it exists (_known_cluster).
            name = route.cluster_name
            if name and manager.context.cluster_manager.get(name) is not None:
                info.upstream_cluster = name
            if getattr(route.route.action, "max_stream_duration", None) is not None:
                self._refresh_duration(route)
        chain = config.filter_chain
        if event.upgrade:
            chain = self._upgrade_filter_chain(headers, route)
            if chain is None:
                return
        fm = self._create_filter_chain(chain, route, self._resolve_route)
        fm.decode_headers(headers, end_stream)

    def _normalize_path(self, headers: HeaderMap, normalization: PathNormalization) -> bool:
        """Envoy's maybeNormalizePath, before anything reads the path: False once the request
        got its 400 (a fragment, an escaped slash refused, a path that does not canonicalize;
        a gRPC request to be redirected too) or its 307 (escaped slashes unescaped)."""
        path = headers.get(":path")
        if path is None:  # CONNECT
            return True
        result, normalized = normalization.apply(path)
        if normalized != path:
            headers.set(":path", normalized)
        if result is NormalizeResult.CONTINUE:
            return True
        self._create_filter_chain(NO_HTTP_FILTERS)
        stats = self.manager.config.stats.named
        if result is NormalizeResult.REJECT or is_grpc_request(headers):
            stats.downstream_rq_failed_path_normalization.inc()
            self.send_reply(ENVOY_LOCAL_REPLIES["path_normalization_failed"])
        else:
            stats.downstream_rq_redirected_with_normalized_path.inc()
            self.send_reply(path_normalization_redirect(normalized))
        return False

    def _before_mutation(self, headers: HeaderMap, config, info) -> bool:
        """What runs before the header rules, in Envoy's order: the path's normalization (a
        fragment refused, with or without options), the host's port and trailing dot
        stripped, then the original IP detection extensions' verdict (Envoy rejects a request
        before any header rule). False once the request got its answer."""
        if not self._normalize_path(headers, config.path_normalization or FRAGMENT_ONLY):
            return False
        if config.strip_port or config.strip_trailing_host_dot:
            _strip_host(headers, config, info.downstream_local_address)
        policy = config.header_policy
        if policy.original_ip_detection:
            status = original_ip_rejection(policy, headers, info.downstream_remote_address or "")
            if status is not None:
                config.stats.named.downstream_rq_rejected_via_ip_detection.inc()
                self._create_filter_chain(NO_HTTP_FILTERS)
                self.send_reply(original_ip_detection_rejection(status))
                return False
        return True

    def _upgrade_filter_chain(self, headers: HeaderMap, route):
        """Envoy's createUpgradeFilterChain (http/upgrades.py) for an upgrade or CONNECT: the
        filter chain of an allowed one (counted in downstream_cx_upgrades_*); for a refused
        one, the default chain when it has no route (the router answers 404), else None once
        it got Envoy's 403 (no more requests on this connection: its payload is not HTTP).
        Over HTTP/2 the same holds for CONNECT and extended CONNECT (made into an upgrade by
        the codec)."""
        config = self.manager.config
        upgrades = getattr(route.action, "upgrade_map", None) if route is not None else None
        chain = config.upgrades.filter_chain(upgrade_type(headers), upgrades, config.filter_chain)
        if chain is not None:
            self.upgraded = True
            stats = config.stats.named
            stats.downstream_cx_upgrades_total.inc()
            stats.downstream_cx_upgrades_active.inc()
            return chain
        if route is None:
            return config.filter_chain
        self._create_filter_chain(config.refused_upgrade_chain)
        self.saw_connection_close = True
        config.stats.named.downstream_rq_ws_on_non_ws_route.inc()
        self.send_reply(ENVOY_LOCAL_REPLIES["upgrade_failed"])
        return None

    def _resolve_route(self):
        headers = self.request_headers
        route = self.route_table.route(headers, self.random_value)
        info = self.info
        info.route = route
        info.route_name = route.name or None if route is not None else None
        info.upstream_cluster = self._known_cluster(route) if route is not None else None
        if route is not None and (
            self.route_duration
            or getattr(route.route.action, "max_stream_duration", None) is not None
        ):
            self._refresh_duration(route)
        return route

    def _refresh_duration(self, route) -> None:
        """Envoy's refreshDurationTimeout, for a route whose action has ``max_stream_duration``
        (or when the stream had one before the route changed): the stream's duration timer
        (from the stream's start) and a gRPC request's ``grpc-timeout`` follow the route.
        Without such a route the connection manager's own duration, armed at the stream's
        start, stands."""
        action = route.route.action
        if not hasattr(action, "max_stream_duration"):
            return  # a direct response or a redirect: Envoy's route has no route entry
        self.route_duration = action.max_stream_duration is not None
        manager = self.manager
        hcm_duration = manager.config.max_stream_duration
        decided = stream_duration(
            action.max_stream_duration,
            self.request_headers,
            int(hcm_duration * 1000) if hcm_duration else None,
            timer_running=self.duration_timer is not None,
        )
        if decided.grpc_timeout is not None:
            if decided.grpc_timeout:
                self.request_headers.set("grpc-timeout", decided.grpc_timeout)
            else:
                self.request_headers.remove("grpc-timeout")
        if decided.timer == DURATION_DISABLED:
            if self.duration_timer is not None:
                self.duration_timer.cancel()
                self.duration_timer = None
            return
        if self.duration_timer is not None:
            self.duration_timer.cancel()
        loop = manager.loop
        left = decided.timer / 1000 - (loop.time() - self.info.start_monotonic)
        self.duration_timer = loop.call_later(max(left, 0.0), self._on_max_stream_duration)

    def _known_cluster(self, route) -> str | None:
        """%UPSTREAM_CLUSTER% once routed: the route's cluster, if it exists (Envoy keeps
        the cluster's info, which an unknown name does not have)."""
        name = route.cluster_name
        if name and self.manager.context.cluster_manager.get(name) is not None:
            return name
        return None

    def _create_filter_chain(
        self, chain: HttpFilterChain, route=None, route_resolver=None
    ) -> FilterManager | TerminalFilterManager:
        """The stream's filter manager (also returned), on ``route``; ``route_resolver``
        finds the route again when a filter clears the route cache."""
        fm = self.filter_manager = chain.create_filter_manager(
            self, self.info, self.manager.connection.buffer_limit, route, route_resolver
        )
        return fm

    def decode_data(self, data: bytes, end_stream: bool) -> None:
        if data:
            self.info.bytes_received += len(data)
        timeout = self.idle_timeout
        if timeout:  # activity: the deadline moves (see ConnectionManager.set_deadline)
            manager = self.manager
            manager.deadline = manager.loop.time() + timeout
        if end_stream:
            self._end_decode()
        if self.filter_manager is not None and not self.response_complete:
            self.filter_manager.decode_data(data, end_stream)

    def decode_trailers(self, trailers: HeaderMap) -> None:
        timeout = self.idle_timeout
        if timeout:
            manager = self.manager
            manager.deadline = manager.loop.time() + timeout
        self._end_decode()
        if self.filter_manager is not None and not self.response_complete:
            self.filter_manager.decode_trailers(trailers)

    def _end_decode(self) -> None:
        self.request_complete = True
        self.info.last_downstream_rx_byte_received = self.manager.loop.time()
        if self.request_timer is not None:
            self.request_timer.cancel()
            self.request_timer = None
        if self.response_complete and not self.manager.closing:
            self._destroy()

    # Encoding (StreamSink) -------------------------------------------------------------

    def write_headers(self, headers: HeaderMap, end_stream: bool) -> None:
        if self.destroyed:
            return
        manager = self.manager
        config = manager.config
        status = headers.get(":status", "0")
        if status[0] == "1" and status != "101":  # (a 101 answers an upgrade: final)
            if status == "100":  # a proxied 100-continue (proxy_100_continue)
                self.send_continue(headers)
            return
        mutate_response_headers(
            config.header_policy, headers, self.request_headers, date=date_header(), info=self.info
        )
        self.response_started = True
        if self.request_timer is not None:  # Envoy: request_timeout ends as the response starts
            self.request_timer.cancel()
            self.request_timer = None
        if not self.request_complete or self.saw_connection_close:
            if not self.request_complete:
                config.stats.named.downstream_rq_response_before_rq_complete.inc()
            manager.draining = True
        elif not manager.draining:
            decision = manager.connection.drain_decision  # (drain_close, inlined: per response)
            if decision.drain_close() if decision is not None else manager.drain_close():
                manager.draining = True  # Envoy's drainClose(): a drain, or failed health checks
                config.stats.named.downstream_cx_drain_close.inc()
        if manager.draining and not (self.upgraded and _opens_tunnel(self, headers, status)):
            headers.set("connection", "close")
        elif self.http10:
            headers.set("connection", "keep-alive")
        self.response_headers = headers
        info = self.info
        info.response_code = int(status)
        info.first_downstream_tx_byte_sent = manager.loop.time()
        try:
            data = manager.codec.encode_headers(headers, end_stream)
        except ValueError:
            log.debug("[C%d] response headers could not be encoded", manager.connection.id)
            manager.close(CloseType.NO_FLUSH)
            return
        manager.tx_bytes_total.value += len(data)  # _write, inlined
        conn = manager.connection
        if conn.write_filters:
            conn.write(data)
        elif conn.state is State.OPEN and not conn.write_ended:
            conn.raw_write(data, False)
        if end_stream:
            self._end_encode()

    def write_data(self, data: bytes, end_stream: bool) -> None:
        if self.destroyed:
            return
        if data:
            self.info.bytes_sent += len(data)
        manager = self.manager
        if not end_stream and self.idle_timeout:  # (the stream's end sets the next deadline)
            manager.deadline = manager.loop.time() + self.idle_timeout
        out = manager.codec.encode_data(data, end_stream)
        if out:
            manager.tx_bytes_total.value += len(out)  # _write, inlined
            conn = manager.connection
            if conn.write_filters:
                conn.write(out)
            elif conn.state is State.OPEN and not conn.write_ended:
                conn.raw_write(out, False)
        if end_stream:
            self._end_encode()

    def write_trailers(self, trailers: HeaderMap) -> None:
        if self.destroyed:
            return
        self.response_trailers = trailers
        out = self.manager.codec.encode_trailers(trailers)
        if out:
            self._write(out)
        self._end_encode()

    def send_continue(self, headers: HeaderMap | None) -> None:
        """A 100 Continue: ours (``headers`` None) or the upstream's; counted as a response."""
        manager = self.manager
        if headers is None:
            data = _CONTINUE_100
        else:
            headers.remove("connection")
            headers.remove("transfer-encoding")
            data = manager.codec.encode_headers(headers, False)
        self._write(data)
        manager.config.code_stats.charge(100)

    def _write(self, data: bytes) -> None:
        """Bytes for the client (through the connection's write filters, if any)."""
        manager = self.manager
        manager.tx_bytes_total.value += len(data)
        conn = manager.connection
        if conn.write_filters:
            conn.write(data)
        elif conn.state is State.OPEN and not conn.write_ended:
            conn.raw_write(data, False)

    def _end_encode(self) -> None:
        self.response_complete = True
        self.info.last_downstream_tx_byte_sent = self.manager.loop.time()
        if self.manager.on_response_complete(self):
            if self.request_complete:
                self._destroy()
        elif self.upgraded and not self.request_complete:
            # Envoy's doEndStream: the stream ends now (a reset, its request never ends)
            # while the connection closes after its delay.
            self.on_reset(False)

    def on_watermark(self, *, decoding: bool, above: bool) -> None:
        if decoding:
            stats = self.manager.config.stats.named
            if above:
                stats.downstream_flow_control_paused_reading_total.inc()
            else:
                stats.downstream_flow_control_resumed_reading_total.inc()
            self.manager.connection.read_disable(above)
        else:
            self.on_downstream_watermark(above)

    def on_downstream_watermark(self, above: bool) -> None:
        for callbacks in list(self.watermark_callbacks):
            if above:
                callbacks.on_above_write_buffer_high_watermark()
            else:
                callbacks.on_below_write_buffer_low_watermark()

    def on_request_data_too_large(self) -> None:
        self.manager.config.stats.named.downstream_rq_too_large.inc()

    def add_watermark_callbacks(self, callbacks) -> None:
        self.watermark_callbacks.append(callbacks)
        if self.manager.above_write_watermark:
            callbacks.on_above_write_buffer_high_watermark()

    def remove_watermark_callbacks(self, callbacks) -> None:
        if callbacks in self.watermark_callbacks:
            self.watermark_callbacks.remove(callbacks)

    def build_local_reply(
        self,
        status: int,
        body: bytes,
        details: str,
        headers: dict[str, str] | None,
        modify_headers: Callable[[HeaderMap], None] | None = None,
    ) -> tuple[HeaderMap, bytes]:
        self.local_reply = True
        # Envoy's onLocalReply: a 400 is a messaging error, after which an HTTP/1 connection
        # closes unless the codec has stream_error_on_invalid_http_message (the flag is the
        # HTTP/1 manager's; the HTTP/2 one ignores it). Codec errors close in any case
        # (send_codec_error).
        if status == 400:
            if not self.manager.config.codec_settings.stream_error_on_invalid_http_message:
                self.manager.draining = True
        elif details in _CLOSING_DETAILS:
            self.manager.draining = True
        reply = LocalReply(
            status=status,
            body=body.decode("utf-8", "surrogateescape") if body else "",
            details=details,
            headers=tuple(headers.items()) if headers else (),
        )
        return render_local_reply(
            reply,
            request_headers=self.request_headers,
            info=self.info,
            config=self.manager.config.local_reply,
            modify_headers=modify_headers,
        )

    def send_reply(self, reply: LocalReply) -> None:
        """A local reply from the connection manager itself (not from a filter)."""
        if reply.flags:
            self.info.set_flags(reply.flags)
        if reply.close_connection and reply.status != 400:  # (a 400: build_local_reply)
            self.manager.draining = True
        if self.filter_manager is None:
            self._create_filter_chain(NO_HTTP_FILTERS)
        self.filter_manager.send_local_reply(
            reply.status,
            reply.body.encode(),
            details=reply.details,
            headers=dict(reply.headers) if reply.headers else None,
        )

    def send_codec_error(self, error: ProtocolError) -> None:
        reply = codec_error(error.status, error.details)
        self.manager.draining = True
        self.local_reply = True
        if self.response_started:
            self.manager.close(CloseType.FLUSH_WRITE)
            return
        self._reset_filters()  # the request is dead: cancel what its filters started upstream
        headers, body = render_local_reply(
            reply,
            request_headers=self.request_headers,
            info=self.info,
            config=self.manager.config.local_reply,
        )
        self.info.set_flags(reply.flags)  # DPE is set after the reply is formatted, as Envoy
        self.write_headers(headers, not body)
        if body:
            self.write_data(body, True)

    def _reset_filters(self) -> None:
        fm = self.filter_manager
        if fm is not None:
            self.filter_manager = None
            fm.on_destroy()

    def reset_stream(self) -> None:
        """A filter (the router, after the response started) gives up on the stream: HTTP/1
        has no stream reset, so the connection closes."""
        if self.destroyed:
            return
        stats = self.manager.config.stats.named
        stats.downstream_rq_tx_reset.inc()
        if self.upgraded:
            # A tunnel: Envoy ends the stream now and closes the connection after
            # delayed_close_timeout (FlushWriteAndDelay: its request was still arriving).
            self.manager._close_after_response(delay=True)
            self.on_reset(False)
            return
        self.manager.close(CloseType.FLUSH_WRITE)

    # Timers ----------------------------------------------------------------------------

    def recreate(self, headers: HeaderMap, body: bytes | bytearray | None) -> None:
        """Envoy's recreateStream, for an internal redirect: the request, with its new
        target, goes again through route lookup and a new filter chain (the connection
        manager's header policy is not applied twice). Deferred to the next loop iteration:
        the router asking for it is inside an upstream read."""
        self.internal_redirects += 1
        config = self.manager.config
        stats = config.stats.named
        stats.downstream_rq_total.inc()  # Envoy's recreated stream is a new request
        self.manager.rq_protocol_total.inc()
        fm = self.filter_manager
        self.filter_manager = None
        if fm is not None:
            fm.on_destroy()
        # The replaced stream is logged as Envoy logs it: the redirect's status, no response
        # headers, the request headers as they now are; the new one keeps its start time.
        old = self.info
        old.end_monotonic = self.manager.loop.time()
        for access_log in config.access_logs:
            access_log.log(old, headers, None, None)
        info = self.info = StreamInfo(now_monotonic=old.start_monotonic, now_wall=old.start_time)
        for name in _CARRIED_OVER:
            setattr(info, name, getattr(old, name))
        self.manager.loop.call_soon(self._restart, headers, body)

    def _restart(self, headers: HeaderMap, body) -> None:
        if self.destroyed:
            return
        config = self.manager.config
        route = self.route_table.route(headers, self.random_value)
        info = self.info
        info.route = route
        info.route_name = route.name or None if route is not None else None
        info.upstream_cluster = self._known_cluster(route) if route is not None else None
        if route is not None and (
            self.route_duration
            or getattr(route.route.action, "max_stream_duration", None) is not None
        ):
            self._refresh_duration(route)
        fm = self._create_filter_chain(config.filter_chain, route, self._resolve_route)
        fm.decode_headers(headers, not body)
        if body and self.filter_manager is fm:
            fm.decode_data(bytes(body), True)

    @property
    def route_timer(self) -> DeadlineTimer:
        """The route timeout's timer, shared by the connection's streams (one at a time)."""
        return self.manager.route_timer

    def set_idle_timeout(self, timeout: float) -> None:
        """A route's ``idle_timeout`` replaces the connection manager's for this stream
        (0 disables it)."""
        self.idle_timeout = timeout or None
        self.manager.set_deadline(self.idle_timeout)

    def touch(self) -> None:
        """Activity on the stream from a filter (upstream bytes): the idle deadline moves."""
        timeout = self.idle_timeout
        if timeout:
            manager = self.manager
            manager.deadline = manager.loop.time() + timeout

    def on_idle_timeout(self) -> None:
        self.manager.config.stats.named.downstream_rq_idle_timeout.inc()
        self._timeout_reply(
            "stream_idle_timeout"
            if self.request_complete
            else "stream_idle_timeout_request_incomplete"
        )

    def _on_request_timeout(self) -> None:
        self.request_timer = None
        if self.destroyed:
            return
        self.manager.config.stats.named.downstream_rq_timeout.inc()
        self._timeout_reply("request_timeout")

    def _on_max_stream_duration(self) -> None:
        self.duration_timer = None
        if self.destroyed:
            return
        self.manager.config.stats.named.downstream_rq_max_duration_reached.inc()
        self._timeout_reply("max_duration_timeout")

    def _timeout_reply(self, key: str) -> None:
        if self.response_started:
            if key.startswith("stream_idle"):
                self.info.set_flag(ResponseFlag.STREAM_IDLE_TIMEOUT)
            self.info.response_code_details = ENVOY_LOCAL_REPLIES[key].details
            self.reset_stream()
            return
        self.send_reply(ENVOY_LOCAL_REPLIES[key])

    # End of the stream -----------------------------------------------------------------

    def on_reset(self, remote: bool) -> None:
        """The connection closed under the stream."""
        if self.destroyed:
            return
        if not (self.request_complete and self.response_complete):
            self.manager.config.stats.named.downstream_rq_rx_reset.inc()
        if remote and not self.response_complete:
            self.info.set_flag(ResponseFlag.DOWNSTREAM_CONNECTION_TERMINATION)
            self.info.response_code_details = "downstream_remote_disconnect"
        self._destroy()

    def _destroy(self) -> None:
        if self.destroyed:
            return
        self.destroyed = True
        manager = self.manager
        config = manager.config
        if self.request_timer or self.duration_timer or self.stream_options:  # (mostly None)
            self._cancel_stream_timers()
        stats = config.stats.named
        stats.downstream_rq_active.dec()
        info = self.info
        now = info.end_monotonic = manager.loop.time()
        code = info.response_code
        if self.response_complete:
            stats.downstream_rq_time.record((now - info.start_monotonic) * 1000)
            if code:
                config.code_stats.charge(code, health_check=info.health_check)
        if self.upgraded:
            if code and not self.response_complete:
                config.code_stats.charge(code, health_check=info.health_check)
            stats.downstream_cx_upgrades_active.dec()
        fm = self.filter_manager
        if fm is not None:
            self.filter_manager = None
            fm.on_destroy()
        for access_log in config.access_logs:
            access_log.log(
                info, self.request_headers, self.response_headers, self.response_trailers
            )
        if self.watermark_callbacks:
            self.watermark_callbacks = []
        manager.on_stream_done(self)

    def _cancel_stream_timers(self) -> None:
        for timer in (self.request_timer, self.duration_timer):
            if timer is not None:
                timer.cancel()
        self.request_timer = self.duration_timer = None
        if self.stream_options is not None:
            self.stream_options.detach(self)


def _opens_tunnel(stream: ActiveStream, headers: HeaderMap, status: str) -> bool:
    """A 101 to an upgrade or a 2xx to CONNECT: not HTTP/1.1 any more, so no ``connection:
    close`` on it (Envoy's isUpgrade / isConnectResponse test before adding one)."""
    if status[0] == "2":
        request = stream.request_headers
        return request is not None and request.get(":method") == "CONNECT"
    return is_upgrade(headers)


def _strip_host(headers: HeaderMap, config, local_address: str | None) -> None:
    """strip_matching_host_port / strip_any_host_port / strip_trailing_host_dot on :authority."""
    host = headers.get(":authority")
    if not host:
        return
    colon = host.rfind(":")
    if colon > 0 and host.rfind("]") < colon:
        port = host[colon + 1 :]
        if config.strip_port == 2 or (
            config.strip_port == 1
            and local_address is not None
            and local_address.rsplit(":", 1)[-1] == port
        ):
            host = host[:colon]
    if config.strip_trailing_host_dot:
        colon = host.rfind(":")
        if colon > 0 and host.rfind("]") < colon:
            if host[colon - 1] == ".":
                host = host[: colon - 1] + host[colon:]
        elif host.endswith("."):
            host = host[:-1]
    headers.set(":authority", host)
