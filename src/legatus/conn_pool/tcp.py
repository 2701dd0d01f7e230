"""The TCP connection pool of the router's TCP upstream: Envoy's ``Tcp::ConnPoolImpl`` with
the ``TcpUpstream`` of ``envoy.upstreams.http.tcp``.

A route whose ``upgrade_configs`` hold a ``connect_config`` terminates CONNECT at the proxy:
the router takes a stream from this pool instead of an HTTP one, and the stream's bytes are
the raw bytes of one TCP connection. The stream has the interface of an HTTP request
encoder (conn_pool/http1.py), so the router and its ``UpstreamRequest`` drive it the same way:

- ``encode_headers`` sends nothing (the upstream speaks no HTTP) and answers at once with a
  synthesized ``:status: 200``: the connection is up, the client may talk (Envoy's
  ``TcpUpstream::encodeHeaders``);
- request data is written as is; its end (``end_stream``, or trailers) is a FIN: the
  connection half-closes, as Envoy's TCP upstream does;
- the upstream's bytes are the response body, its FIN the end of the response; a close
  before that FIN resets the stream (``CONNECTION_TERMINATION``: the router's UC).

Each ``TcpActiveClient`` carries one stream and is never reused: once the stream ends (both
directions done, or a reset) the connection closes, as a tunnel leaves the connection in a
state no other stream could use. A FIN from the upstream while the request still flows ends
the response and closes the connection from this side (counted as a local close with an
active request, as Envoy counts it). Flow control: the connection's write-buffer watermarks
reach the stream's subscribers, ``read_disable`` stops reading the upstream (nested).
"""

from __future__ import annotations

from typing import Any

from legatus.conn_pool import PoolContext, ResponseDecoder, StreamResetReason
from legatus.conn_pool.base import ActiveClient, ConnectionStreamEncoder, ConnPool
from legatus.http.headers import HeaderMap
from legatus.network.connection import Connection, PendingConnect
from legatus.network.filter import CloseType, ConnectionEvent, FilterStatus, ReadFilter
from legatus.upstream.host import Host


class TcpStreamEncoder(ConnectionStreamEncoder):
    """One stream on an upstream TCP connection (the router's side of it)."""

    __slots__ = ("encode_complete", "response_complete")

    def __init__(self, client: TcpActiveClient, decoder: ResponseDecoder) -> None:
        self._client = client
        self.decoder = decoder
        self._callbacks: list[Any] = []
        self._read_disabled = 0
        self.encode_complete = False  # our FIN went out
        self.response_complete = False  # the upstream's FIN came in
        self.done = False  # detached from the connection: encoding is a no-op

    # Request ------------------------------------------------------------------

    def encode_headers(self, headers: HeaderMap, end_stream: bool) -> str | None:
        """Nothing goes out for the head; the answer is a 200 made here (see module doc)."""
        if self.done:
            return None
        if end_stream:
            self._client.write(b"", True)
            self.encode_complete = True
        self.decoder.on_headers(HeaderMap([(":status", "200")]), False)
        return None

    def encode_data(self, data: bytes, end_stream: bool) -> None:
        if self.done or self.encode_complete:
            return
        if end_stream:
            self.encode_complete = True
        self._client.write(data, end_stream)

    def encode_trailers(self, trailers: HeaderMap) -> None:
        """Trailers have no TCP form: they only end the request (a FIN)."""
        self.encode_data(b"", True)

    def reset(self) -> None:
        """Abandon the stream: the connection closes at once, the decoder is not called back."""
        if not self.done:
            self._client.reset_stream(self)

    # Protocol facts (the rest is ConnectionStreamEncoder's) -------------------------

    @property
    def protocol(self) -> None:
        """No HTTP upstream: %UPSTREAM_PROTOCOL% is ``-``, as Envoy logs it."""
        return None


class _UpstreamReader(ReadFilter):
    """The connection's only read filter: the upstream's bytes are the response body."""

    __slots__ = ("client",)

    def __init__(self, client: TcpActiveClient) -> None:
        self.client = client

    def on_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        self.client.on_upstream_data(data, end_stream)
        return FilterStatus.STOP_ITERATION


class TcpActiveClient(ActiveClient):
    """One upstream TCP connection carrying one stream (see module doc)."""

    def __init__(self, pool: TcpConnPool) -> None:
        super().__init__(pool, concurrent_stream_limit=1)
        ctx = pool.context
        self._rx_bytes_total = ctx.stats.upstream_cx_rx_bytes_total
        self._tx_bytes_total = ctx.stats.upstream_cx_tx_bytes_total
        connection = Connection(buffer_limit=ctx.settings.buffer_limit)
        connection.set_buffer_gauges(
            ctx.stats.upstream_cx_rx_bytes_buffered, ctx.stats.upstream_cx_tx_bytes_buffered
        )
        self.id = connection.id
        self.connection = connection
        self.stream: TcpStreamEncoder | None = None
        self.remote_closed = False
        self._closed = False
        self._failure_reason = ""
        connection.add_read_filter(_UpstreamReader(self))
        connection.add_connection_callbacks(self)
        # TCP, then the cluster's transport socket handshake (TLS), if any; the pool keeps the
        # connect timer.
        self._connecting: PendingConnect | None = PendingConnect(
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
        stream = self.stream
        return stream is not None and not (stream.encode_complete and stream.response_complete)

    def close(self) -> None:
        if self._closed:
            return
        connecting = self._connecting
        if connecting is not None:
            self._connecting = None
            connecting.cancel()
        self.connection.close(CloseType.NO_FLUSH)  # raises the close event: on_event

    def new_stream_encoder(self, decoder: Any) -> TcpStreamEncoder:
        stream = self.stream = TcpStreamEncoder(self, decoder)
        return stream

    # Data --------------------------------------------------------------------------

    def write(self, data: bytes, end_stream: bool) -> None:
        if data:
            self._tx_bytes_total.add(len(data))
        self.connection.write(data, end_stream)

    def on_upstream_data(self, data: bytes, end_stream: bool) -> None:
        if data:
            self._rx_bytes_total.add(len(data))
        stream = self.stream
        if stream is None or stream.done or stream.response_complete:
            return
        if end_stream:
            stream.response_complete = True
            if stream.encode_complete:
                # Both directions are done: the connection closes by itself (both FINs), a
                # remote close with no stream left on it.
                stream.done = True
        stream.decoder.on_data(data, end_stream)
        if end_stream and not stream.encode_complete and not self._closed:
            self.close()  # the tunnel is over while the request still flowed

    def reset_stream(self, stream: TcpStreamEncoder) -> None:
        if stream is self.stream and not stream.done:
            stream.done = True  # no decoder callback for a local reset
            self.close()

    # Connection callbacks ------------------------------------------------------------

    def on_event(self, event: ConnectionEvent) -> None:
        if self._closed or event is ConnectionEvent.CONNECTED:
            return
        if self.remote_closed:
            event = ConnectionEvent.REMOTE_CLOSE
        self._closed = True
        stream = self.stream
        if stream is not None and not stream.done and not stream.response_complete:
            stream.done = True
            stream.decoder.on_reset(StreamResetReason.CONNECTION_TERMINATION, "")
        self.pool.on_connection_event(self, event, self._failure_reason)
        if stream is not None:
            stream._detach()
            self.stream = None
            self.pool.on_stream_closed(self, delay_attaching=True)

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


class TcpConnPool(ConnPool):
    """Raw TCP streams to one host (Envoy's ``Tcp::ConnPoolImpl``)."""

    def __init__(self, host: Host, context: PoolContext) -> None:
        super().__init__(host, context, TcpActiveClient)  # type: ignore[arg-type]
