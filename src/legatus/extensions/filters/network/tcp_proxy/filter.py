"""The TCP proxy filter: one upstream connection per downstream connection.

Life of a connection:
1. ``on_new_connection`` picks the cluster (weighted if configured), a host from
   its load balancer, and starts connecting; the chain stops until the upstream
   is connected. Bytes that arrive meanwhile are held by the connection (up to
   its buffer limit, then it stops reading) and replayed on ``continue_reading``;
   a client that resets meanwhile cancels the connect.
2. A failed or timed-out connect is retried on a newly chosen host up to
   ``max_connect_attempts``; then the downstream is closed with UF (and URX
   when more than one attempt was allowed).
3. Connected: bytes flow both ways; a FIN on one side is passed to the other
   (half-close); either side closing closes the other after flushing.
4. Backpressure: when one side's write buffer passes its high watermark, the
   other side stops reading until it drains below the low watermark.
5. Idle timeout: activity only stamps a time; one timer re-arms itself for the
   remaining time, so the data path never touches timers.
"""

from __future__ import annotations

import asyncio
import logging

from legatus.network.connection import Connection, PendingConnect, State, connect_failure_reason
from legatus.network.filter import CloseType, ConnectionEvent, FilterStatus, ReadFilter
from legatus.stream_info import ResponseFlag

log = logging.getLogger("legatus.filter")


class _UpstreamCallbacks:
    """Watermark and close events of the upstream connection, forwarded to the filter."""

    __slots__ = ("filter",)

    def __init__(self, f: TcpProxyFilter) -> None:
        self.filter = f

    def on_event(self, event: ConnectionEvent) -> None:
        self.filter.on_upstream_event(event)

    def on_above_write_buffer_high_watermark(self) -> None:
        f = self.filter
        f.cluster.stats.upstream_flow_control_backed_up_total.inc()
        f.downstream.read_disable(True)
        f.config.stats.downstream_flow_control_paused_reading_total.inc()

    def on_below_write_buffer_low_watermark(self) -> None:
        f = self.filter
        f.cluster.stats.upstream_flow_control_drained_total.inc()
        f.downstream.read_disable(False)
        f.config.stats.downstream_flow_control_resumed_reading_total.inc()


class _UpstreamReader(ReadFilter):
    """The upstream connection's only read filter: bytes go to the downstream."""

    __slots__ = ("filter",)

    def __init__(self, f: TcpProxyFilter) -> None:
        self.filter = f

    def on_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        f = self.filter
        f.last_activity = f.loop.time()
        if data:
            n = len(data)
            f.cluster.stats.upstream_cx_rx_bytes_total.add(n)
            f.config.stats.downstream_cx_tx_bytes_total.add(n)
            f.info.bytes_sent += n
        f.downstream.write(data, end_stream)
        return FilterStatus.STOP_ITERATION


class TcpProxyFilter(ReadFilter):
    def __init__(self, config, context) -> None:
        self.config = config
        self.context = context
        self.loop: asyncio.AbstractEventLoop = context.loop
        self.cluster = None
        self.host = None
        self.upstream: Connection | None = None
        self.attempts = 0
        self.pending: PendingConnect | None = None
        self.last_activity = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None
        self.duration_timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.flushing = False
        self.upstream_connect_start = 0.0

    # Downstream --------------------------------------------------------------

    def on_new_connection(self) -> FilterStatus:
        downstream = self.read_callbacks.connection
        self.downstream = downstream
        self.info = downstream.stream_info
        stats = self.config.stats
        stats.downstream_cx_total.inc()
        downstream.add_connection_callbacks(_DownstreamCallbacks(self))
        downstream.set_buffer_gauges(
            stats.downstream_cx_rx_bytes_buffered, stats.downstream_cx_tx_bytes_buffered
        )
        name = self.config.pick_cluster(self.context.random)
        self.info.upstream_cluster = name
        cluster = self.context.cluster_manager.get(name)
        if cluster is None:
            stats.downstream_cx_no_route.inc()
            self.info.set_flag(ResponseFlag.NO_CLUSTER_FOUND)
            log.debug("[C%d] tcp_proxy: cluster '%s' not found", downstream.id, name)
            downstream.close(CloseType.NO_FLUSH)
            return FilterStatus.STOP_ITERATION
        self.cluster = cluster
        self.info.upstream_cluster_config = cluster.config
        if self.config.max_downstream_connection_duration:
            self.duration_timer = self.loop.call_later(
                self.config.max_downstream_connection_duration, self._on_max_duration
            )
        self._connect()
        return FilterStatus.STOP_ITERATION

    def on_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        self.last_activity = self.loop.time()
        if data:
            n = len(data)
            self.config.stats.downstream_cx_rx_bytes_total.add(n)
            self.cluster.stats.upstream_cx_tx_bytes_total.add(n)
            self.info.bytes_received += n
        upstream = self.upstream
        if upstream is not None:
            upstream.write(data, end_stream)
        return FilterStatus.STOP_ITERATION

    def on_downstream_event(self, event: ConnectionEvent) -> None:
        if self.closed:
            return
        if event is ConnectionEvent.REMOTE_CLOSE and self.upstream is None:
            self.info.set_flag(ResponseFlag.DOWNSTREAM_CONNECTION_TERMINATION)
        self._finish(CloseType.FLUSH_WRITE, downstream_gone=True)

    # Upstream ------------------------------------------------------------------

    def _connect(self) -> None:
        cluster = self.cluster
        host = cluster.choose_host()
        if host is None:
            cluster.stats.upstream_cx_none_healthy.inc()
            self.info.set_flag(ResponseFlag.NO_HEALTHY_UPSTREAM)
            log.debug(
                "[C%d] tcp_proxy: no healthy host in '%s'", self.downstream.id, cluster.config.name
            )
            self.downstream.close(CloseType.NO_FLUSH)
            return
        self.attempts += 1
        self.host = host
        self.info.upstream_host = str(host.config.address)
        self.info.upstream_host_config = host.config
        upstream = Connection(buffer_limit=cluster.config.buffer_limit)
        upstream.set_buffer_gauges(
            cluster.stats.upstream_cx_rx_bytes_buffered, cluster.stats.upstream_cx_tx_bytes_buffered
        )
        self.info.upstream_connection_id = upstream.id
        upstream.add_read_filter(_UpstreamReader(self))
        upstream.add_connection_callbacks(_UpstreamCallbacks(self))
        self.upstream = upstream
        stats = cluster.stats
        stats.upstream_cx_total.inc()
        stats.upstream_cx_active.inc()
        # Envoy's TCP pool counts each connection it hands out as a request.
        stats.upstream_rq_pending_total.inc()
        stats.upstream_rq_pending_active.inc()
        host.stats.cx_total.inc()
        host.stats.cx_active.inc()
        self.upstream_connect_start = self.loop.time()
        self.pending = PendingConnect(
            self.loop, upstream, host.address, cluster.config.connect_timeout,
            lambda error: self._on_connect_done(upstream, host, error),
            transport_socket=cluster.transport_socket, host=host,
        )  # fmt: skip

    def _on_connect_done(self, upstream: Connection, host, error: BaseException | None) -> None:
        self.pending = None
        if error is None:
            self._on_connected(upstream)
        elif isinstance(error, OSError | TimeoutError):
            self._on_connect_failure(upstream, host, error)
        else:  # not a network error: a bug; close, count, and keep the loop clean
            log.error("[C%d] tcp_proxy: connect failed: %r", self.downstream.id, error)
            self._on_connect_failure(upstream, host, OSError(str(error)))

    def _on_connect_failure(self, upstream: Connection, host, error: BaseException) -> None:
        cluster = self.cluster
        timed_out = isinstance(error, TimeoutError)
        cluster.stats.upstream_cx_connect_fail.inc()  # Envoy counts timeouts here too
        if timed_out:
            cluster.stats.upstream_cx_connect_timeout.inc()
            reason = ""  # Envoy gives no transport failure reason for a timeout
        else:
            reason = connect_failure_reason(error)
        host.stats.cx_connect_fail.inc()
        cluster.stats.upstream_rq_pending_active.dec()
        cluster.stats.upstream_rq_pending_failure_eject.inc()
        self._release_upstream(upstream, host, remote=not timed_out)
        self.upstream = None
        self.info.upstream_transport_failure_reason = reason or None
        log.debug(
            "[C%d] tcp_proxy: connect to %s failed: %s",
            self.downstream.id,
            host.config.address,
            reason,
        )
        if self.closed:
            return
        if self.attempts < self.config.max_connect_attempts:
            self._connect()
            return
        cluster.stats.upstream_cx_connect_attempts_exceeded.inc()
        self.info.set_flag(ResponseFlag.UPSTREAM_CONNECTION_FAILURE)
        self.info.set_flag(ResponseFlag.UPSTREAM_RETRY_LIMIT_EXCEEDED)
        self.downstream.close(CloseType.NO_FLUSH)

    def _release_upstream(self, upstream: Connection, host, *, remote: bool = False) -> None:
        """Undo the active-connection gauges of an upstream that never connected.

        A refused connection is a remote close for Envoy; a timeout or a cancel, local.
        """
        stats = self.cluster.stats
        stats.upstream_cx_active.dec()
        host.stats.cx_active.dec()
        stats.upstream_cx_destroy.inc()
        if remote:
            stats.upstream_cx_destroy_remote.inc()
        else:
            stats.upstream_cx_destroy_local.inc()
        upstream.state = State.CLOSED

    def _on_connected(self, upstream: Connection) -> None:
        now = self.loop.time()
        stats = self.cluster.stats
        stats.upstream_cx_connect_ms.record((now - self.upstream_connect_start) * 1000)
        stats.upstream_rq_pending_active.dec()
        stats.upstream_rq_total.inc()
        stats.upstream_rq_active.inc()
        self.host.stats.rq_total.inc()
        self.host.stats.rq_active.inc()
        self.info.upstream_connected_monotonic = now
        self.info.upstream_ssl = upstream.ssl  # TLS: %UPSTREAM_TLS_*% and friends
        if upstream.local_address is not None:
            la = upstream.local_address
            self.info.upstream_local_address = (
                f"[{la[0]}]:{la[1]}" if ":" in la[0] else f"{la[0]}:{la[1]}"
            )
        if self.closed:
            upstream.close(CloseType.NO_FLUSH)
            return
        self.last_activity = now
        if self.config.idle_timeout:
            self.idle_timer = self.loop.call_later(self.config.idle_timeout, self._on_idle_check)
        self.read_callbacks.continue_reading()

    def on_upstream_event(self, event: ConnectionEvent) -> None:
        upstream = self.upstream
        if upstream is None or upstream.state is not State.CLOSED:
            return
        cluster = self.cluster
        cluster.stats.upstream_cx_active.dec()
        self.host.stats.cx_active.dec()
        cluster.stats.upstream_cx_destroy.inc()
        if event is ConnectionEvent.REMOTE_CLOSE:
            cluster.stats.upstream_cx_destroy_remote.inc()
        else:
            cluster.stats.upstream_cx_destroy_local.inc()
        if self.info.upstream_connected_monotonic is not None:
            # Connected means handed to this proxy: Envoy's pool counts it "with active rq".
            stats = cluster.stats
            length = self.loop.time() - self.info.upstream_connected_monotonic
            stats.upstream_cx_length_ms.record(length * 1000)
            stats.upstream_rq_active.dec()
            self.host.stats.rq_active.dec()
            stats.upstream_cx_destroy_with_active_rq.inc()
            if event is ConnectionEvent.REMOTE_CLOSE:
                stats.upstream_cx_destroy_remote_with_active_rq.inc()
            else:
                stats.upstream_cx_destroy_local_with_active_rq.inc()
        self.upstream = None
        if self.flushing:
            self.flushing = False
            self.config.stats.upstream_flush_active.dec()
        if not self.closed:
            self._finish(CloseType.FLUSH_WRITE)

    # Timers and teardown -------------------------------------------------------

    def _on_idle_check(self) -> None:
        self.idle_timer = None
        if self.closed:
            return
        remaining = self.last_activity + self.config.idle_timeout - self.loop.time()
        if remaining > 0:
            self.idle_timer = self.loop.call_later(remaining, self._on_idle_check)
            return
        self.config.stats.idle_timeout.inc()
        log.debug("[C%d] tcp_proxy: idle timeout", self.downstream.id)
        self._finish(CloseType.NO_FLUSH)

    def _on_max_duration(self) -> None:
        self.duration_timer = None
        if self.closed:
            return
        self.config.stats.max_downstream_connection_duration.inc()
        self.info.set_flag(ResponseFlag.DURATION_TIMEOUT)
        self._finish(CloseType.NO_FLUSH)

    def _finish(self, close_type: CloseType, *, downstream_gone: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        for timer in (self.idle_timer, self.duration_timer):
            if timer is not None:
                timer.cancel()
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None
            self.cluster.stats.upstream_rq_pending_active.dec()
            self._release_upstream(self.upstream, self.host)
            self.upstream = None
        upstream = self.upstream
        if upstream is not None:
            if downstream_gone and upstream.write_buffer_size():
                # Envoy's "upstream flush": the client is gone, its last bytes still drain.
                self.flushing = True
                self.config.stats.upstream_flush_total.inc()
                self.config.stats.upstream_flush_active.inc()
            upstream.close(close_type)
        self.downstream.close(close_type)

    def on_downstream_closed(self) -> None:
        """The downstream connection is gone: write the access logs."""
        info = self.info
        info.end_monotonic = self.loop.time()
        for access_log in self.config.access_logs:
            access_log.log(info)


class _DownstreamCallbacks:
    __slots__ = ("filter",)

    def __init__(self, f: TcpProxyFilter) -> None:
        self.filter = f

    def on_event(self, event: ConnectionEvent) -> None:
        f = self.filter
        f.on_downstream_event(event)
        f.on_downstream_closed()

    def on_above_write_buffer_high_watermark(self) -> None:
        f = self.filter
        if f.upstream is not None:
            f.upstream.read_disable(True)
            f.cluster.stats.upstream_flow_control_paused_reading_total.inc()

    def on_below_write_buffer_low_watermark(self) -> None:
        f = self.filter
        if f.upstream is not None:
            f.upstream.read_disable(False)
            f.cluster.stats.upstream_flow_control_resumed_reading_total.inc()
