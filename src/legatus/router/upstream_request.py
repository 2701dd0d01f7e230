"""One try of a request on one upstream host (Envoy's ``UpstreamRequest``).

The router makes one per try: it asks the host's connection pool for a stream, hears the
pool's answer (ready, or a failure), receives the response as the pool's
``ResponseDecoder``, and relays the upstream connection's write-buffer watermarks to the
downstream read. Events of a try the router has given up on (a retry, a timeout) are
dropped here.

The pool is the host's HTTP one (HTTP/1.1 or HTTP/2, as the cluster's protocol options and,
with use_downstream_protocol_config, the downstream request say), or its TCP one for a
request the route terminates here (CONNECT, or POST with ``allow_post``, on a route with a
``connect_config``: router/upgrade.py).
The answer to a WebSocket upgrade is judged here, as Envoy's upstream codec filter does: a 101
opens the tunnel and ends the route timeout (which ran from the request head); a 4xx or 5xx is
an answer like any other; any other answer fails the handshake: the client gets its status
and headers without a body (``websocket_handshake_unsuccessful``) and the upstream connection
is dropped.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from legatus.conn_pool import PoolFailureReason, ResponseDecoder, StreamResetReason
from legatus.http.headers import HeaderMap
from legatus.router.upgrade import is_websocket_upgrade, uses_tcp_upstream

if TYPE_CHECKING:
    from legatus.router.router import Router

_POOL_FAILURES = {
    PoolFailureReason.OVERFLOW: StreamResetReason.OVERFLOW,
    PoolFailureReason.LOCAL_CONNECTION_FAILURE: StreamResetReason.LOCAL_CONNECTION_FAILURE,
    PoolFailureReason.REMOTE_CONNECTION_FAILURE: StreamResetReason.REMOTE_CONNECTION_FAILURE,
    PoolFailureReason.TIMEOUT: StreamResetReason.CONNECTION_TIMEOUT,
}


class UpstreamRequest(ResponseDecoder):
    """One try of the request on one upstream host: the pool's callbacks and the response
    decoder (Envoy's ``UpstreamRequest``)."""

    # Per-try state starts from these class-level defaults: a try writes only what it uses
    # (one per request, so its construction is on the hot path).
    encoder = None  # the pool's RequestEncoder, once ready (None again once detached)
    pending = None  # the pool's PendingStream while waiting for a connection
    response_started = False
    paused_downstream = False
    websocket = False  # a WebSocket upgrade: its answer is judged here

    def __init__(self, router: Router, cluster, host) -> None:
        self.router = router
        self.cluster = cluster
        self.host = host
        self.info = router.decoder_callbacks.stream_info  # the request's, which a try fills

    def start(self) -> None:
        router = self.router
        if "upgrade" in router.request_headers:
            self.websocket = is_websocket_upgrade(router.request_headers)
        if router.route.action.connect_config is not None and uses_tcp_upstream(
            router.route.action.connect_config, router.request_headers
        ):
            pool = self.cluster.tcp_conn_pool(self.host)
        elif self.cluster.use_downstream_protocol:  # use_downstream_protocol_config
            pool = self.cluster.http_conn_pool(self.host, router.decoder_callbacks.stream.protocol)
        else:
            pool = self.cluster.http_conn_pool(self.host)
        self.pending = pending = pool.new_stream(self, self)
        if pending is not None:  # queued for a connection: Envoy has the host from here on
            self.info.upstream_host = self.host.address_text
            self.info.upstream_host_config = self.host.config

    def reset(self) -> None:
        """The router gives up on this try (timeout, downstream gone)."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.cancel()
        encoder = self.encoder
        if encoder is not None:
            self._unsubscribe(encoder)
            encoder.reset()

    # Pool callbacks ---------------------------------------------------------------------

    def on_pool_ready(self, encoder, host) -> None:
        self.pending = None
        router = self.router
        if router.upstream is not self and self not in router.hedged:
            encoder.reset()
            return
        self.encoder = encoder
        info = self.info
        info.upstream_host = host.address_text
        info.upstream_host_config = host.config
        info.upstream_local_address = _fmt(encoder.local_address)
        info.upstream_connection_id = encoder.connection_id
        info.upstream_ssl = encoder.ssl  # TLS: %UPSTREAM_TLS_*% and friends
        info.upstream_protocol = encoder.protocol
        info.first_upstream_tx_byte_sent = router.config.loop.time()
        encoder.add_callbacks(self)  # the upstream's write buffer: see the watermark hooks
        router.decoder_callbacks.stream.add_watermark_callbacks(router)  # (the sink: one call)
        router.on_pool_ready(self)

    def on_pool_failure(self, reason: PoolFailureReason, transport_failure_reason: str, host):
        self.pending = None
        router = self.router
        if router.upstream is not self:
            return
        if host is not None:
            self.info.upstream_host = host.address_text
            self.info.upstream_host_config = host.config
        router.on_upstream_reset(_POOL_FAILURES[reason], transport_failure_reason, False)

    # Response ---------------------------------------------------------------------------

    def on_informational_headers(self, headers: HeaderMap) -> None:
        """A 1xx from the upstream: a 100 goes to the client if it asked for one (the
        connection manager strips Expect unless proxy_100_continue); others are dropped."""
        router = self.router
        if router.config.dynamic_stats:
            status = headers.get(":status", "")
            if status.isdigit():
                router.cluster.code_stats.charge(
                    int(status),
                    internal=router.decoder_callbacks.stream.internal,
                    under=router.scopes,
                )
        expect = router.request_headers.get("expect") if router.request_headers else None
        if headers.get(":status") == "100" and expect and expect.lower() == "100-continue":
            # Only a 100 the client asked for (and so proxy_100_continue let through).
            router.decoder_callbacks.stream.send_continue(headers)

    def on_headers(self, headers: HeaderMap, end_stream: bool) -> None:
        self.response_started = True
        router = self.router
        if router.upstream is not self and (  # a try the router gave up on (a retry)
            not router.hedged or not router.take_hedged(self, headers)
        ):
            return
        if router.try_idle_timer is not None:
            router.touch_try()
        self.info.first_upstream_rx_byte_received = router.config.loop.time()
        if self.websocket and not self._websocket_answer(headers):
            return
        if end_stream:
            self._complete()
        router.on_upstream_headers(headers, end_stream)

    def _websocket_answer(self, headers: HeaderMap) -> bool:
        """The answer to a WebSocket upgrade (see module doc); True when it goes on to the
        router as a response."""
        status = headers.get(":status", "")
        router = self.router
        if status == "101":
            timer = router.timer  # the route timeout ran until the tunnel opened
            if timer is not None:
                router.timer = None
                timer.cancel()
            return True
        if status >= "400":  # (three digits: compared as text)
            return True
        router.upstream = None
        self.reset()
        cb = router.decoder_callbacks
        route = router.route
        request = router.request_headers

        def copy_answer(reply: HeaderMap) -> None:
            route.finalize_response_headers(request, reply, cb.stream_info)
            for name, value in headers.items():
                if name[0] != ":":
                    reply.add(name, value)

        cb.send_local_reply(
            int(status) if status.isdigit() else 502,
            b"",
            details="websocket_handshake_unsuccessful",
            modify_headers=copy_answer,
        )
        return False

    def on_data(self, data: bytes, end_stream: bool) -> None:
        router = self.router
        if router.upstream is not self:
            return
        if router.try_idle_timer is not None:
            router.touch_try()
        router.decoder_callbacks.stream.touch()
        if end_stream:  # _complete, inlined: the end of most responses
            self.info.last_upstream_rx_byte_received = router.config.loop.time()
            if self.encoder is not None:
                self._unsubscribe(self.encoder)
        router.on_upstream_data(data, end_stream)

    def on_trailers(self, trailers: HeaderMap) -> None:
        if self.router.upstream is not self:
            return
        self._complete()
        self.router.on_upstream_trailers(trailers)

    def on_reset(self, reason: StreamResetReason, details: str) -> None:
        router = self.router
        if router.upstream is not self:
            if router.hedged:
                self._detach()
                router.hedged_reset(self, reason, details)
            return
        self._detach()
        router.on_upstream_reset(reason, details, self.response_started)

    def _complete(self) -> None:
        self.info.last_upstream_rx_byte_received = self.router.config.loop.time()
        encoder = self.encoder  # _detach, inlined: once a request
        if encoder is not None:
            self._unsubscribe(encoder)

    def _detach(self) -> None:
        encoder = self.encoder
        if encoder is not None:
            self._unsubscribe(encoder)

    def _unsubscribe(self, encoder) -> None:
        self.encoder = None
        encoder.remove_callbacks(self)
        callbacks = self.router.decoder_callbacks
        callbacks.stream.remove_watermark_callbacks(self.router)
        if self.paused_downstream:  # the request is over: let the client read again
            self.on_below_write_buffer_low_watermark()

    # Watermarks of the upstream connection's write buffer ---------------------------------

    def on_above_write_buffer_high_watermark(self) -> None:
        """The upstream reads slowly: stop reading the client's request body."""
        if not self.paused_downstream:
            self.paused_downstream = True
            self.cluster.stats.upstream_flow_control_backed_up_total.inc()
            self.router.decoder_callbacks.on_decoder_filter_above_write_buffer_high_watermark()

    def on_below_write_buffer_low_watermark(self) -> None:
        if self.paused_downstream:
            self.paused_downstream = False
            self.cluster.stats.upstream_flow_control_drained_total.inc()
            self.router.decoder_callbacks.on_decoder_filter_below_write_buffer_low_watermark()


@functools.lru_cache(maxsize=4096)
def _fmt(address) -> str | None:
    if not address:
        return None
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
