"""The ALPN ("mixed") connection pool of ``auto_config`` clusters: Envoy's
``HttpConnPoolImplMixed``.

Each connection speaks HTTP/2 or HTTP/1.1, as its TLS handshake's ALPN chose. Theory of
operation:

- A new connection starts as an ``AlpnActiveClient`` (Envoy's ``Tcp::ActiveTcpClient`` in
  this pool): TCP, then the TLS handshake, offering ``h2,http/1.1`` unless the cluster's TLS
  context names its own ``alpn_protocols``. Until the protocol is known it counts for as
  many streams as an HTTP/2 connection would take (``max_concurrent_streams``, capped by
  ``max_requests_per_connection``), so requests queued meanwhile wait for it rather than
  each opening a connection.
- Once connected, the connection is handed to a new ``Http2ActiveClient`` (ALPN ``h2``) or
  ``Http1ActiveClient`` (``http/1.1``, or no protocol negotiated: an old TLS stack, most
  likely without HTTP/2), and the first client is discarded. The queue is then looked at
  again: over HTTP/2 the waiting requests share the connection (up to its stream limit);
  over HTTP/1.1 the ones it cannot carry open more connections. After an HTTP/1.1
  connection the pool counts one stream per connecting connection (Envoy's concurrency
  cache for the origin), until a connection negotiates h2 again.
- Stats follow Envoy's two clients per connection: ``upstream_cx_total`` (and the host's
  ``cx_total``) count both, and ``upstream_cx_connect_ms`` / ``upstream_cx_length_ms`` get a
  sample for each; ``upstream_cx_active`` counts the connection once; the protocol's client
  counts ``upstream_cx_http2_total`` or ``upstream_cx_http1_total``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from legatus.conn_pool import PoolContext, PoolStateError
from legatus.conn_pool.base import ActiveClient, ClientState, ConnPool
from legatus.conn_pool.http1 import Http1ActiveClient
from legatus.conn_pool.http2 import DEFAULT_MAX_STREAMS, Http2ActiveClient, Http2PoolOptions
from legatus.http.http1.client_codec import ClientCodec
from legatus.network.connection import Connection, PendingConnect
from legatus.network.filter import CloseType, ConnectionEvent
from legatus.upstream.host import Host

log = logging.getLogger("legatus.pool")

ALPN_H2 = "h2"
_CONNECTING, _CLOSED = ClientState.CONNECTING, ClientState.CLOSED


class MixedConnPool(ConnPool):
    """HTTP/2 or HTTP/1.1 streams to one host, per connection as ALPN chose."""

    def __init__(
        self,
        host: Host,
        context: PoolContext,
        options: Http2PoolOptions,
        *,
        codec_factory: Callable[..., ClientCodec] = ClientCodec,
        on_first_http1: Callable[[], None] | None = None,
    ) -> None:
        """``options``: the HTTP/2 clients' (its transport socket offers h2 and http/1.1);
        ``codec_factory``: the HTTP/1.1 clients' codec (the cluster's HTTP/1 settings);
        ``on_first_http1``: called when the first connection chooses HTTP/1.1 (the owner
        declares the HTTP/1 codec stats then, as Envoy)."""
        super().__init__(host, context, AlpnActiveClient)  # type: ignore[arg-type]
        self.options = options
        self.codec_factory = codec_factory
        self._on_first_http1 = on_first_http1
        # Streams a connecting connection is counted for, as the last handshake taught
        # (0: unknown, the HTTP/2 limit; 1: the upstream chose HTTP/1.1).
        self.learned_stream_limit = 0

    def on_alpn_connected(self, client: AlpnActiveClient) -> None:
        """``client`` connected: its connection goes to an HTTP/2 or HTTP/1.1 client."""
        ctx = self.context
        if client.connect_timer is not None:
            client.connect_timer.cancel()
            client.connect_timer = None
        self._connecting_capacity -= client.current_unused_capacity()
        client.has_handshake_completed = True
        ctx.stats.upstream_cx_connect_ms.record((ctx.loop.time() - client.created_at) * 1000)
        connection = client.connection
        http2 = connection.next_protocol == ALPN_H2
        log.debug("[C%d] ALPN chose %s", client.id, "HTTP/2" if http2 else "HTTP/1.1")
        self.learned_stream_limit = 0 if http2 else 1
        if not http2 and self._on_first_http1 is not None:
            self._on_first_http1()
            self._on_first_http1 = None
        connection.callbacks.remove(client)
        client.closed = True
        client.cancel_timers()
        client.release_resources()
        self.transition(client, _CLOSED)
        successor: ActiveClient = (
            Http2ActiveClient(self, connection)  # type: ignore[arg-type]
            if http2
            else Http1ActiveClient(self, connection)  # type: ignore[arg-type]
        )
        self._clients[_CONNECTING][successor] = None
        self._connecting_capacity += successor.current_unused_capacity()
        if self._pending:  # what the new client cannot carry opens more connections
            self._try_create_connections()
        successor._on_connected()  # (the pool hears CONNECTED for it, and attaches)


class AlpnActiveClient(ActiveClient):
    """A connection of the mixed pool until its handshake chose a protocol."""

    def __init__(self, pool: MixedConnPool) -> None:
        ctx = pool.context
        limit = pool.options.settings.max_concurrent_streams
        limit = min(limit, ctx.settings.max_requests_per_connection or DEFAULT_MAX_STREAMS)
        learned = pool.learned_stream_limit
        if learned and learned < limit:
            limit = learned
        super().__init__(pool, concurrent_stream_limit=limit)
        connection = Connection(buffer_limit=ctx.settings.buffer_limit)
        self.id = connection.id
        self.connection = connection
        self.closed = False
        self.remote_closed = False
        self._failure_reason = ""
        connection.add_connection_callbacks(self)
        self._connecting: PendingConnect | None = PendingConnect(
            ctx.loop,
            connection,
            pool.host.address,
            None,
            self._on_connect_done,
            transport_socket=pool.options.transport_socket,
            host=pool.host,
        )

    # ActiveClient ----------------------------------------------------------------

    def num_active_streams(self) -> int:
        return 0

    def closing_with_incomplete_stream(self) -> bool:
        return False

    def close(self) -> None:
        if self.closed:
            return
        connecting = self._connecting
        if connecting is not None:
            self._connecting = None
            connecting.cancel()
        self.connection.close(CloseType.NO_FLUSH)  # raises the close event: on_event

    def new_stream_encoder(self, decoder):
        raise PoolStateError(f"C{self.id}: a stream before the protocol was chosen")

    def _on_connected(self) -> None:
        self.pool.on_alpn_connected(self)  # type: ignore[attr-defined]

    # Connection callbacks ----------------------------------------------------------

    def on_event(self, event: ConnectionEvent) -> None:
        if self.closed or event is ConnectionEvent.CONNECTED:
            return
        self.closed = True
        if event is ConnectionEvent.REMOTE_CLOSE or self.remote_closed:
            event = ConnectionEvent.REMOTE_CLOSE
        self.pool.on_connection_event(self, event, self._failure_reason)

    def on_above_write_buffer_high_watermark(self) -> None:
        """No stream to tell: nothing is written before the protocol is chosen."""

    def on_below_write_buffer_low_watermark(self) -> None:
        """See ``on_above_write_buffer_high_watermark``."""
