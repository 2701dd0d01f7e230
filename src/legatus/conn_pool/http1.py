"""The HTTP/1.1 connection pool: Envoy's ``Http1::ActiveClient`` with its ``CodecClient``.

Each ``Http1ActiveClient`` owns one upstream ``Connection`` and one sans-I/O ``ClientCodec``
and carries one stream at a time (no pipelining, as Envoy). Life of a stream:

1. ``on_pool_ready(encoder, host)`` hands the router a ``RequestEncoder``; request bytes go out
   as the router encodes them. Response bytes go to the codec, which calls the client back
   (``ResponseCallbacks``) as it decodes; the client makes those ``ResponseDecoder`` calls
   (``on_informational_headers``, ``on_headers``, ``on_data``, ``on_trailers``).
2. When the response is complete the connection is reused (READY again, attached to the next
   pending stream on the next loop iteration) unless: the request was not complete yet (the
   connection is closed, as Envoy's "response before request complete"); the upstream said
   ``connection: close`` or answered HTTP/1.0 without keep-alive, or the body ran to the close
   (closed, ``upstream_cx_close_notify`` when the headers asked for it); or the upstream
   already closed.
3. A connection that closes under an unfinished response resets the stream: ``on_reset`` with
   ``CONNECTION_TERMINATION`` (the router's UC), or ``PROTOCOL_ERROR`` after a codec error
   (UPE; ``upstream_cx_protocol_error``). ``encoder.reset()`` (the router giving up) closes
   the connection without calling the decoder back. A response delimited by the close of the
   connection completes when the upstream closes, FIN or RST.
4. Flow control: ``encoder.read_disable(True)`` stops reading the upstream (nested, undone
   when the stream ends); the upstream connection's write-buffer watermarks reach the
   stream's ``add_callbacks`` subscribers (``on_above_write_buffer_high_watermark``,
   ``on_below_write_buffer_low_watermark``), for the router to pause the downstream.
5. Upgrades and CONNECT: the request head goes out at once, its payload waits here until
   the answer opens the tunnel (a 101, or a 2xx to CONNECT), then follows; any other answer
   drops it: bytes meant for a tunnel never reach an upstream that still speaks HTTP (Envoy's
   ``paused_for_websocket_`` / ``paused_for_connect_``). What waits counts against the
   connection's buffer limit like its write buffer (the same watermark callbacks). A
   connection that carried such a request is never reused.

A FIN from the upstream closes the connection (HTTP upstreams do not half-close, as Envoy's
codec client) and counts as a remote close.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from legatus.conn_pool import PoolContext, ResponseDecoder, StreamResetReason
from legatus.conn_pool.base import ActiveClient, ConnectionStreamEncoder, ConnPool
from legatus.http.headers import HeaderMap
from legatus.http.http1 import common as h1
from legatus.http.http1.client_codec import ClientCodec
from legatus.http.http1.events import HTTP_10, HTTP_11, ProtocolError
from legatus.network.connection import Connection, PendingConnect
from legatus.network.filter import CloseType, ConnectionEvent, FilterStatus, ReadFilter
from legatus.upstream.host import Host

log = logging.getLogger("legatus.pool")
_STOP_ITERATION = FilterStatus.STOP_ITERATION  # a global: enum members are slow to read in 3.11
_REFUSED: tuple = ()  # RequestEncoder._held once the answer refused the tunnel


class RequestEncoder(ConnectionStreamEncoder):
    """One request on an upstream HTTP/1 connection (the router's side of a stream)."""

    # Per-stream state starts from class-level defaults (these and ConnectionStreamEncoder's;
    # no __slots__), so that a new stream writes only what it uses: one per request.
    encode_complete = False  # the whole request went to the connection
    response_complete = False  # the decoder saw the end of the response
    decode_complete = False  # Envoy's decode_complete_ (complete and request done)
    close_connection = False
    protocol_error_details: str | None = None  # the codec's details after UPE
    # A tunnel's payload waiting for the answer that opens it (None: not waiting;
    # _REFUSED: the answer refused the tunnel, the payload is dropped).
    _held: list[tuple[bytes | None, Any]] | tuple | None = None
    _held_bytes = 0
    _held_above = False
    protocol = HTTP_11  # a constant: %UPSTREAM_PROTOCOL%

    def __init__(self, client: Http1ActiveClient, decoder: ResponseDecoder) -> None:
        self._client = client
        self.decoder = decoder
        self._callbacks: list[Any] = []  # (_read_disabled, done: the class defaults)

    # Request ------------------------------------------------------------------

    def encode_headers(self, headers: HeaderMap, end_stream: bool) -> str | None:
        """Send the request head; returns an error message (and sends nothing) for a head the
        codec cannot write (a required header removed, CR/LF in a value), as Envoy's
        ``encodeHeaders`` status: the router answers it with a local reply and resets."""
        if self.done:
            return None
        client = self._client
        try:
            data = client.codec.encode_request_headers(headers, end_stream)
        except ValueError as e:
            return str(e)
        # client.write(data), inlined; a head is never empty, so ``value +=`` is add()
        client.tx_bytes_total.value += len(data)
        client.connection.write(data)
        if end_stream:
            self.encode_complete = True
        elif client.codec.tunnel_request:
            self._held = []  # the payload waits for the tunnel (see module doc)
        return None

    def encode_data(self, data: bytes, end_stream: bool) -> None:
        if self.done or self.encode_complete:
            return
        if self._held is not None:
            if self._held is not _REFUSED:
                self._hold(data, end_stream)
            return
        out = self._client.codec.encode_data(data, end_stream)
        if out:
            self._client.write(out)
        if end_stream:
            self.encode_complete = True

    def encode_trailers(self, trailers: HeaderMap) -> None:
        if self.done or self.encode_complete:
            return
        if self._held is not None:
            if self._held is not _REFUSED:
                self._hold(None, trailers)
            return
        out = self._client.codec.encode_trailers(trailers)
        if out:
            self._client.write(out)
        self.encode_complete = True

    def reset(self) -> None:
        """Abandon the stream (the router's local reset): HTTP/1 closes the connection. The
        decoder is not called back."""
        if not self.done:
            self._client.reset_stream(self)

    # A tunnel's payload ---------------------------------------------------------

    def _hold(self, data: bytes | None, extra: Any) -> None:
        """Keep a piece of payload (``data`` None: trailers in ``extra``; else ``extra`` is
        end_stream) until the tunnel opens; past the buffer limit the subscribers hear the
        high watermark, as if the connection's write buffer had filled."""
        held = self._held
        assert isinstance(held, list)
        held.append((data, extra))
        if data:
            self._held_bytes += len(data)
            connection = self._client.connection
            if not self._held_above and self._held_bytes > connection.buffer_limit:
                self._held_above = True
                for cb in list(self._callbacks):
                    cb.on_above_write_buffer_high_watermark()

    def on_tunnel_answer(self, opened: bool) -> None:
        """The response head came: the payload follows it into the tunnel, or (the upgrade or
        CONNECT refused) is dropped."""
        held = self._held
        if held is None or held is _REFUSED:
            return
        if opened:
            self._held = None
            for data, extra in held:
                if data is None:
                    self.encode_trailers(extra)
                else:
                    self.encode_data(data, extra)
        else:
            self._held = _REFUSED  # nothing more goes to an upstream that refused
        self._held_bytes = 0
        if self._held_above:
            self._held_above = False
            for cb in list(self._callbacks):
                cb.on_below_write_buffer_low_watermark()


class _CodecReadFilter(ReadFilter):
    """The upstream connection's only read filter: bytes go to the codec."""

    __slots__ = ("client",)

    def __init__(self, client: Http1ActiveClient) -> None:
        self.client = client

    def on_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        client = self.client
        if data:
            client.rx_bytes_total.value += len(data)  # (Counter.add of a non-zero amount)
            try:  # the codec calls the client back (ResponseCallbacks)
                client.codec.dispatch(data)
            except Exception:
                client.codec_failed()
        if end_stream:
            client.on_remote_eof()
        return _STOP_ITERATION


class Http1ActiveClient(ActiveClient):
    def __init__(self, pool: Http1ConnPool, connection: Connection | None = None) -> None:
        """``connection``: one already connected (the mixed pool's, after ALPN chose
        HTTP/1.1); the pool then reports it connected. Else the client connects its own."""
        super().__init__(pool, concurrent_stream_limit=1)
        ctx = pool.context
        ctx.stats.upstream_cx_http1_total.inc()
        self.rx_bytes_total = ctx.stats.upstream_cx_rx_bytes_total
        self.tx_bytes_total = ctx.stats.upstream_cx_tx_bytes_total
        connected = connection is not None
        if connection is None:
            connection = Connection(buffer_limit=ctx.settings.buffer_limit)
        connection.set_buffer_gauges(
            ctx.stats.upstream_cx_rx_bytes_buffered, ctx.stats.upstream_cx_tx_bytes_buffered
        )
        self.id = connection.id
        self.connection = connection
        self.codec = pool.codec_factory(callbacks=self)
        self.stream: RequestEncoder | None = None
        self.remote_closed = False
        self.protocol_error = False
        self._eof_fed = False
        self._closed = False
        self._failure_reason = ""
        connection.add_read_filter(_CodecReadFilter(self))
        connection.add_connection_callbacks(self)
        # TCP, then the cluster's transport socket handshake (TLS), if any; the pool keeps the
        # connect timer.
        self._connecting: PendingConnect | None = None
        if not connected:
            self._connecting = PendingConnect(
                ctx.loop,
                connection,
                pool.host.address,
                None,
                self._on_connect_done,
                transport_socket=ctx.transport_socket,
                host=pool.host,
            )

    # ActiveClient --------------------------------------------------------------

    def num_active_streams(self) -> int:
        return 0 if self.stream is None else 1

    def closing_with_incomplete_stream(self) -> bool:
        return self.stream is not None and not self.stream.decode_complete

    def close(self) -> None:
        if self._closed:
            return
        connecting = self._connecting
        if connecting is not None:
            self._connecting = None
            connecting.cancel()
        self.connection.close(CloseType.NO_FLUSH)  # raises the close event: on_event

    def new_stream_encoder(self, decoder: Any) -> RequestEncoder:
        stream = self.stream = RequestEncoder(self, decoder)
        return stream

    # Reading ---------------------------------------------------------------------

    # The codec's callbacks (ResponseCallbacks): to the stream's decoder. Calls for no stream,
    # or after its end or its reset, are dropped; a protocol error loses the connection.

    def on_informational_headers(self, headers: HeaderMap) -> None:
        stream = self.stream
        if stream is not None and not stream.done and not stream.response_complete:
            stream.decoder.on_informational_headers(headers)

    def on_response_headers(
        self, headers: HeaderMap, end_stream: bool, keep_alive: bool, upgrade: bool, protocol: str
    ) -> None:
        stream = self.stream
        if stream is None or stream.done or stream.response_complete:
            return
        if stream._held is not None:  # an upgrade or CONNECT: the answer is in
            stream.on_tunnel_answer(upgrade)
        # A response the codec keeps alive did not ask to close (the codec checked).
        if not keep_alive:
            stream.close_connection = True
            if h1.should_close_connection(protocol == HTTP_10, headers):
                self.pool.context.pool_stats.upstream_cx_close_notify.inc()
        if not end_stream:
            stream.decoder.on_headers(headers, False)
            return
        stream.response_complete = True
        stream.decoder.on_headers(headers, True)
        if not stream.done:
            self._on_response_complete(stream)

    def on_response_data(self, data: bytes, end_stream: bool) -> None:
        stream = self.stream
        if stream is None or stream.done or stream.response_complete:
            return
        if not end_stream:
            stream.decoder.on_data(data, False)
            return
        stream.response_complete = True
        stream.decoder.on_data(data, True)
        if not stream.done:
            self._on_response_complete(stream)

    def on_response_trailers(self, trailers: HeaderMap) -> None:
        stream = self.stream
        if stream is None or stream.done or stream.response_complete:
            return
        stream.response_complete = True
        stream.decoder.on_trailers(trailers)
        if not stream.done:
            self._on_response_complete(stream)

    def _on_response_complete(self, stream: RequestEncoder) -> None:
        if not stream.encode_complete:
            self.close()  # response before request complete: the connection is not reusable
        elif stream.close_connection or self.remote_closed or not self.codec.reusable:
            stream.decode_complete = True  # (read by the close: the stream was complete)
            self.close()
        else:  # (decode_complete: no one asks once the stream is detached)
            # _detach_stream, inlined: this runs once a keep-alive stream.
            stream.done = True
            if stream._read_disabled:
                stream._detach()
            self.stream = None
            self.pool.on_keep_alive_stream_closed(self)

    def _detach_stream(self, stream: RequestEncoder) -> None:
        stream._detach()
        self.stream = None

    def on_protocol_error(self, error: ProtocolError) -> None:
        self.pool.context.pool_stats.upstream_cx_protocol_error.inc()
        self.protocol_error = True
        if self.stream is not None:
            self.stream.protocol_error_details = error.details
        self.close()

    def on_remote_eof(self) -> None:
        self.remote_closed = True
        self._feed_eof()
        if not self._closed:
            self.connection.close(CloseType.NO_FLUSH)

    def _feed_eof(self) -> None:
        if not self._eof_fed:
            self._eof_fed = True
            try:
                self.codec.dispatch_eof()
            except Exception:
                self.codec_failed()

    def codec_failed(self) -> None:
        """A codec bug: never into the loop; the connection is lost instead."""
        log.exception("[C%d] HTTP/1 client codec failed", self.id)
        self.on_protocol_error(ProtocolError(status=502, details=h1.CODEC_ERROR))

    # Writing ---------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        self.tx_bytes_total.add(len(data))
        self.connection.write(data)

    def reset_stream(self, stream: RequestEncoder) -> None:
        if stream is self.stream and not stream.done:
            stream.done = True  # no decoder callback for a local reset
            self.close()

    # Connection callbacks ------------------------------------------------------------

    def on_event(self, event: ConnectionEvent) -> None:
        if self._closed or event is ConnectionEvent.CONNECTED:
            return
        if event is ConnectionEvent.REMOTE_CLOSE:
            self.remote_closed = True
            self._feed_eof()  # a response delimited by the close is complete now (even on RST)
        if self.remote_closed:
            event = ConnectionEvent.REMOTE_CLOSE
        self._closed = True
        stream = self.stream
        if stream is not None and not stream.done and not stream.response_complete:
            stream.done = True
            reason = (
                StreamResetReason.PROTOCOL_ERROR
                if self.protocol_error
                else StreamResetReason.CONNECTION_TERMINATION
            )
            stream.decoder.on_reset(reason, "")
        self.pool.on_connection_event(self, event, self._failure_reason)
        if stream is not None:
            self._detach_stream(stream)
            self.pool.on_stream_closed(self, delay_attaching=True)
        self.codec.release()  # (cycles through the codec: see ClientCodec.release)

    def on_above_write_buffer_high_watermark(self) -> None:
        stream = self.stream
        if stream is not None and not stream.done:
            for cb in list(stream._callbacks):
                cb.on_above_write_buffer_high_watermark()

    def on_below_write_buffer_low_watermark(self) -> None:
        stream = self.stream
        if stream is not None and not stream.done:
            for cb in list(stream._callbacks):
                cb.on_below_write_buffer_low_watermark()


class Http1ConnPool(ConnPool):
    """HTTP/1.1 streams to one host (Envoy's ``Http1::allocateConnPool``)."""

    def __init__(
        self,
        host: Host,
        context: PoolContext,
        *,
        codec_factory: Callable[..., ClientCodec] = ClientCodec,
    ) -> None:
        super().__init__(host, context, Http1ActiveClient)  # type: ignore[arg-type]
        self.codec_factory = codec_factory
