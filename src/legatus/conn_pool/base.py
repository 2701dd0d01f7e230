"""The connection-pool state machine shared by every protocol: Envoy's ``ConnPoolImplBase``.

One pool per (host, priority) per worker. Theory of operation:

- A pool owns ``ActiveClient``s (one connection each) in one of five states; every change of
  state goes through ``ConnPool.transition``, which refuses a change the table does not allow
  (the two moves of every stream, READY -> BUSY at attach and BUSY -> READY at its end, are
  copies of it inlined where the old state is known, so the table always allows them)::

      CONNECTING ──> READY <──> BUSY ──> DRAINING ──> CLOSED
          │            │          │                      ^
          └──> BUSY / DRAINING / CLOSED; any state but CLOSED ──> CLOSED

  READY: can take another stream now. BUSY: at its concurrent-stream limit (1 for HTTP/1).
  DRAINING: takes no new stream and closes when its last stream ends
  (``max_requests_per_connection`` reached, or the pool is draining).
- ``new_stream(decoder, callbacks)`` attaches the stream to the most recently readied client
  at once (``callbacks.on_pool_ready(encoder, host)``, returns None), or queues it as pending
  (returns the ``PendingStream`` to cancel it) and opens a connection if the connecting
  capacity does not cover the queue and the circuit breaker allows it (a pool with no
  connection at all opens one anyway, as Envoy does). Pending streams are served FIFO.
- Limits (``ResourceManager``): a full pending queue fails the stream with ``OVERFLOW``
  (``upstream_rq_pending_overflow``); no room for a connection counts ``upstream_cx_overflow``
  and the stream waits; no room for an active request fails it with ``OVERFLOW`` when it is
  attached (``upstream_rq_active_overflow``, as Envoy 1.38+ counts it).
- A connection that closes before it connected fails *every* pending stream of the pool (not
  only the one it was opened for), with ``TIMEOUT``, ``REMOTE_CONNECTION_FAILURE`` or
  ``LOCAL_CONNECTION_FAILURE`` and the transport failure reason, as Envoy's
  ``purgePendingStreams``; a stream queued from inside ``on_pool_failure`` (a retry) is not
  failed with them.
- Time comes from the injected loop: one connect timer per connecting client and one idle
  timer per idle client that re-arms itself for the time left (so a busy connection costs no
  timer operations per request).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from typing import Any

from legatus.conn_pool import (
    CancelPolicy,
    DrainBehavior,
    PoolCallbacks,
    PoolContext,
    PoolFailureReason,
    PoolStateError,
)
from legatus.network.connection import connect_failure_reason
from legatus.network.filter import CloseType, ConnectionEvent
from legatus.upstream.host import Host

log = logging.getLogger("legatus.pool")

UNLIMITED_STREAMS = (1 << 32) - 1  # Envoy's translateZeroToUnlimited for stream limits


class ClientState(enum.Enum):
    CONNECTING = "connecting"
    READY = "ready"
    BUSY = "busy"
    DRAINING = "draining"
    CLOSED = "closed"

    # Members are singletons compared by identity: hash them by identity too, in C (Enum's
    # own __hash__ is Python code, and states are dict keys twice per stream).
    __hash__ = object.__hash__


S = ClientState
_TRANSITIONS: dict[ClientState, frozenset[ClientState]] = {
    S.CONNECTING: frozenset({S.READY, S.BUSY, S.DRAINING, S.CLOSED}),
    S.READY: frozenset({S.BUSY, S.DRAINING, S.CLOSED}),
    S.BUSY: frozenset({S.READY, S.DRAINING, S.CLOSED}),
    S.DRAINING: frozenset({S.CLOSED}),
    S.CLOSED: frozenset(),
}
_ALLOWED = frozenset((old, new) for old, news in _TRANSITIONS.items() for new in news)
# The members as module globals: reading a member through its enum class runs Python code in
# 3.11 (about ten times a global's cost), and the pool tests states several times a stream.
_CONNECTING, _READY, _BUSY, _DRAINING, _CLOSED = ClientState


class PendingStream:
    """A stream waiting for a connection: Envoy's ``Cancellable``."""

    __slots__ = ("callbacks", "decoder", "pool")

    def __init__(self, pool: ConnPool, decoder: Any, callbacks: PoolCallbacks) -> None:
        self.pool = pool
        self.decoder = decoder
        self.callbacks = callbacks

    def cancel(self, policy: CancelPolicy = CancelPolicy.DEFAULT) -> None:
        """Give up waiting (no callback follows). A no-op once the stream got its answer."""
        self.pool._on_pending_cancel(self, policy)


class ActiveClient:
    """One connection of a pool; protocol subclasses implement the four methods at the end
    and report ``pool.on_connection_event`` / ``pool.on_stream_closed``."""

    def __init__(self, pool: ConnPool, *, concurrent_stream_limit: int) -> None:
        ctx = pool.context
        self.pool = pool
        self.id = 0  # the connection id, set by the subclass
        self.state = _CONNECTING
        limit = ctx.settings.max_requests_per_connection
        self.remaining_streams = limit if limit else UNLIMITED_STREAMS
        self.concurrent_stream_limit = concurrent_stream_limit or UNLIMITED_STREAMS
        self.has_handshake_completed = False
        self.timed_out = False
        self.resources_released = False
        self.streams_total = 0
        loop = ctx.loop
        self.created_at = loop.time()
        self.idle_since = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None
        self.connect_timer: asyncio.TimerHandle | None = loop.call_later(
            ctx.settings.connect_timeout, self.on_connect_timeout
        )
        host = pool.host
        host.stats.cx_total.inc()
        host.stats.cx_active.inc()
        ctx.stats.upstream_cx_total.inc()
        ctx.stats.upstream_cx_active.inc()
        ctx.resource_manager.connections.inc()

    def current_unused_capacity(self) -> int:
        free = self.concurrent_stream_limit - self.num_active_streams()
        remaining = self.remaining_streams
        return remaining if remaining < free else free

    def on_connect_timeout(self) -> None:
        self.connect_timer = None
        log.debug("[C%d] connect timeout", self.id)
        self.pool.context.stats.upstream_cx_connect_timeout.inc()
        self.timed_out = True
        self.close()

    def release_resources(self) -> None:
        if self.resources_released:
            return
        self.resources_released = True
        ctx = self.pool.context
        ctx.stats.upstream_cx_length_ms.record((ctx.loop.time() - self.created_at) * 1000)
        ctx.stats.upstream_cx_active.dec()
        self.pool.host.stats.cx_active.dec()
        ctx.resource_manager.connections.dec()

    def cancel_timers(self) -> None:
        for timer in (self.connect_timer, self.idle_timer):
            if timer is not None:
                timer.cancel()
        self.connect_timer = self.idle_timer = None

    # Protocol interface --------------------------------------------------------

    def num_active_streams(self) -> int:
        raise NotImplementedError

    def closing_with_incomplete_stream(self) -> bool:
        """For ``upstream_cx_destroy_with_active_rq``: a stream was cut off by the close."""
        raise NotImplementedError

    def close(self) -> None:
        """Close now (no flush); must report ``on_connection_event`` with a close event, once."""
        raise NotImplementedError

    def new_stream_encoder(self, decoder: Any) -> Any:
        """Start a stream whose response goes to ``decoder``; returns its request encoder."""
        raise NotImplementedError

    # For clients over one upstream ``connection`` opened by a ``PendingConnect`` kept in
    # ``_connecting``: the connect's outcome (Envoy: a failed connect is a remote close, with
    # the transport failure reason the pool reports to the waiting streams).

    def _on_connect_done(self, error: BaseException | None) -> None:
        """PendingConnect's outcome (never called after close() cancelled it)."""
        self._connecting = None
        if error is None:
            self._on_connected()
            return
        self._failure_reason = connect_failure_reason(error)
        self.remote_closed = True
        self.connection.close(CloseType.NO_FLUSH)

    def _on_connected(self) -> None:
        self.pool.on_connection_event(self, ConnectionEvent.CONNECTED)


class ConnectionStreamEncoder:
    """What a request encoder on a connection of its own (one stream per connection: HTTP/1,
    TCP) does the same way whatever the protocol: nested read-disabling of the connection,
    its write-buffer watermarks for the router, the facts the stream info records, and the
    detach that gives the connection back its reads. ``_client`` is the ActiveClient; its
    ``connection`` is the upstream Connection."""

    # Class-level defaults (no __slots__): a subclass's stream sets only what it changes.
    _read_disabled = 0
    done = False  # detached from the connection: encoding is a no-op

    def __init__(self, client: Any, decoder: Any) -> None:
        self._client = client
        self.decoder = decoder
        self._callbacks: list[Any] = []
        self._read_disabled = 0
        self.done = False  # detached from the connection: encoding is a no-op

    def read_disable(self, disable: bool) -> None:
        """Stop (True) or resume (False) reading the upstream; calls nest."""
        if self.done:
            return
        if disable:
            self._read_disabled += 1
        elif self._read_disabled:
            self._read_disabled -= 1
        else:
            return
        self._client.connection.read_disable(disable)

    def add_callbacks(self, callbacks: Any) -> None:
        """Subscribe to the upstream write buffer's watermarks (``on_above_...``/``on_below_...``);
        told at once if the buffer is already above its high mark."""
        self._callbacks.append(callbacks)
        if not self.done and self._client.connection.above_high_watermark:
            callbacks.on_above_write_buffer_high_watermark()

    def remove_callbacks(self, callbacks: Any) -> None:
        if callbacks in self._callbacks:
            self._callbacks.remove(callbacks)

    @property
    def above_high_watermark(self) -> bool:
        return not self.done and self._client.connection.above_high_watermark

    @property
    def connection_id(self) -> int:
        return self._client.connection.id

    @property
    def local_address(self) -> tuple[Any, ...] | None:
        return self._client.connection.local_address

    @property
    def ssl(self) -> Any:
        """The upstream connection's SslConnectionInfo (None: plaintext)."""
        return self._client.connection.ssl

    def _detach(self) -> None:
        self.done = True
        while self._read_disabled:
            self._read_disabled -= 1
            self._client.connection.read_disable(False)


class ConnPool:
    """Streams to one host, over a set of ``ActiveClient``s (see module doc)."""

    def __init__(
        self,
        host: Host,
        context: PoolContext,
        client_factory: Callable[[ConnPool], ActiveClient],
    ) -> None:
        self.host = host
        self.context = context
        self.loop = context.loop
        self._client_factory = client_factory
        self._clients: dict[ClientState, dict[ActiveClient, None]] = {
            s: {} for s in (_CONNECTING, _READY, _BUSY, _DRAINING)
        }
        self._pending: dict[PendingStream, None] = {}  # insertion order = FIFO
        self._purging: dict[PendingStream, None] | None = None
        self._connecting_capacity = 0
        self._active_streams = 0
        self._idle_callbacks: list[Callable[[], None]] = []
        self._draining_for_deletion = False
        self._upstream_ready_handle: asyncio.Handle | None = None
        # What every stream touches, looked up once (the stats and limits are fixed for the
        # pool's life): a stream costs a few attribute reads less at attach and at close.
        self._ready = self._clients[_READY]
        self._busy = self._clients[_BUSY]
        self._requests = context.resource_manager.requests
        self._idle_timeout = context.settings.idle_timeout
        stats, host_stats = context.stats, host.stats
        self._host_rq_total = host_stats.rq_total  # (counters: ``value += 1`` is inc())
        self._host_rq_active_inc = host_stats.rq_active.inc
        self._host_rq_active_dec = host_stats.rq_active.dec
        self._rq_total = stats.upstream_rq_total
        self._rq_active_inc = stats.upstream_rq_active.inc
        self._rq_active_dec = stats.upstream_rq_active.dec

    # Public API ----------------------------------------------------------------

    def new_stream(self, decoder: Any, callbacks: PoolCallbacks) -> PendingStream | None:
        if self._draining_for_deletion:
            raise PoolStateError("new_stream on a pool draining for deletion")
        if self._ready:
            self._attach(next(reversed(self._ready)), decoder, callbacks)
            return None
        rm = self.context.resource_manager
        if not rm.can_queue():
            self.context.pool_stats.upstream_rq_pending_overflow.inc()
            callbacks.on_pool_failure(PoolFailureReason.OVERFLOW, "", None)
            return None
        pending = PendingStream(self, decoder, callbacks)
        stats = self.context.stats
        stats.upstream_rq_pending_total.inc()
        stats.upstream_rq_pending_active.inc()
        rm.pending_requests.inc()
        self._pending[pending] = None
        self._try_create_connections()
        return pending

    def drain(self, behavior: DrainBehavior = DrainBehavior.DRAIN_EXISTING_CONNECTIONS) -> None:
        if behavior is DrainBehavior.DRAIN_AND_DELETE:
            self._draining_for_deletion = True
            self.check_idle_and_close_if_draining()
            return
        self._close_idle_clients()
        for state in (_READY, _BUSY):
            for client in list(self._clients[state]):
                self.transition(client, _DRAINING)

    def add_idle_callback(self, callback: Callable[[], None]) -> None:
        """``callback()`` runs when the pool is found empty (no pending stream, no client);
        possibly more than once for one emptying, as Envoy's idle callbacks."""
        self._idle_callbacks.append(callback)

    def clear_idle_callbacks(self) -> None:
        """The owner deleted this pool: no idle callback runs any more. (They name the pool,
        which holds them: cleared, reference counting frees the pool at once.)"""
        self._idle_callbacks.clear()

    def is_idle(self) -> bool:
        return not self._pending and not any(self._clients.values())

    def has_active_streams(self) -> bool:
        return bool(self._pending) or self._active_streams > 0

    def clients(self, state: ClientState) -> tuple[ActiveClient, ...]:
        return tuple(self._clients[state]) if state is not _CLOSED else ()

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    # The state machine ----------------------------------------------------------

    def transition(self, client: ActiveClient, new: ClientState) -> None:
        old = client.state
        if (old, new) not in _ALLOWED:
            raise PoolStateError(f"C{client.id}: {old.value} -> {new.value} is not allowed")
        clients = self._clients
        del clients[old][client]
        client.state = new
        if new is not _CLOSED:
            clients[new][client] = None

    # Reported by the clients ------------------------------------------------------

    def on_connection_event(
        self, client: ActiveClient, event: ConnectionEvent, failure_reason: str = ""
    ) -> None:
        if event is ConnectionEvent.CONNECTED:
            self._on_connected(client)
            return
        ctx = self.context
        stats = ctx.stats
        client.cancel_timers()
        if not client.has_handshake_completed:
            self._connecting_capacity -= client.current_unused_capacity()
        client.remaining_streams = 0
        log.debug("[C%d] client disconnected, failure reason: %s", client.id, failure_reason)
        remote = event is ConnectionEvent.REMOTE_CLOSE
        stats.upstream_cx_destroy.inc()
        (stats.upstream_cx_destroy_remote if remote else stats.upstream_cx_destroy_local).inc()
        if client.closing_with_incomplete_stream():
            stats.upstream_cx_destroy_with_active_rq.inc()
            if remote:
                stats.upstream_cx_destroy_remote_with_active_rq.inc()
            else:
                stats.upstream_cx_destroy_local_with_active_rq.inc()
        if client.has_handshake_completed:
            ctx.pool_stats.upstream_rq_per_cx.record(client.streams_total)
        else:
            client.has_handshake_completed = True
            stats.upstream_cx_connect_fail.inc()
            self.host.stats.cx_connect_fail.inc()
            if client.timed_out:
                reason = PoolFailureReason.TIMEOUT
            elif remote:
                reason = PoolFailureReason.REMOTE_CONNECTION_FAILURE
            else:
                reason = PoolFailureReason.LOCAL_CONNECTION_FAILURE
            self._purge_pending(reason, failure_reason)
            if not self._draining_for_deletion:
                self._try_create_connections()
        client.release_resources()
        self.transition(client, _CLOSED)
        self._check_idle()
        if self._pending:
            self._try_create_connections()

    def on_stream_closed(self, client: ActiveClient, *, delay_attaching: bool) -> None:
        """A stream of ``client`` ended (completed or reset); the client no longer counts it."""
        self._active_streams -= 1
        self._host_rq_active_dec()
        self._rq_active_dec()
        self._requests.dec()
        state = client.state
        active = client.num_active_streams()
        if state is _DRAINING:
            if active == 0:
                client.close()
                return
        elif (
            state is _BUSY
            and client.remaining_streams > 0
            and client.concurrent_stream_limit > active  # current_unused_capacity() > 0
        ):
            # BUSY -> READY, always allowed (the table's check, inlined on this hot path).
            del self._busy[client]
            client.state = _READY
            self._ready[client] = None
            if not delay_attaching:
                self._on_upstream_ready()
                active = client.num_active_streams()
        if active == 0 and client.state is not _CLOSED:
            self._start_idle(client)

    def on_keep_alive_stream_closed(self, client: ActiveClient) -> None:
        """The stream of a one-stream client (HTTP/1) completed and the connection stays for
        the next one: ``schedule_on_upstream_ready()``, ``on_stream_closed(client,
        delay_attaching=True)`` and ``check_idle_and_close_if_draining()`` in one call, for
        the path every keep-alive request takes (the client has no stream left).

        The attach is scheduled only when streams are waiting: ``_on_upstream_ready`` does
        nothing without them, and none can start waiting before the next iteration while
        this client is ready (``new_stream`` takes a ready client at once; a stream that
        waits because the client closed meanwhile got its connection attempt from
        ``new_stream``, as it would from the callback). This spares a callback per request
        and pool on the keep-alive path."""
        if self._pending and self._upstream_ready_handle is None:
            self._upstream_ready_handle = self.loop.call_soon(self._scheduled_upstream_ready)
        self._active_streams -= 1
        self._host_rq_active_dec()
        self._rq_active_dec()
        self._requests.dec()
        if client.state is _BUSY and client.remaining_streams > 0:
            # BUSY -> READY, always allowed (the table's check, inlined on this hot path).
            del self._busy[client]
            client.state = _READY
            self._ready[client] = None
        elif client.state is _DRAINING or client.state is _CLOSED:
            if client.state is _DRAINING:  # its last stream ended
                client.close()
            self.check_idle_and_close_if_draining()
            return
        if self._idle_timeout:  # _start_idle, inlined
            client.idle_since = self.loop.time()
            if client.idle_timer is None:
                client.idle_timer = self.loop.call_later(
                    self._idle_timeout, self._on_idle_check, client
                )
        if self._draining_for_deletion:  # (else the open client keeps the pool from idle)
            self.check_idle_and_close_if_draining()

    def schedule_on_upstream_ready(self) -> None:
        """Attach pending streams on the next loop iteration (an HTTP/1 upstream may close
        right after its response: give that close a chance to be seen first).

        Scheduled even when nothing is pending, as Envoy does: a stream queued before the
        next iteration (its client closed meanwhile) is then served, or its connection
        retried, by this callback."""
        if self._upstream_ready_handle is None:
            self._upstream_ready_handle = self.loop.call_soon(self._scheduled_upstream_ready)

    def check_idle_and_close_if_draining(self) -> None:
        if self._draining_for_deletion:
            self._close_idle_clients()
        if self._idle_callbacks and self.is_idle():  # _check_idle, inlined: once a stream
            for callback in list(self._idle_callbacks):
                callback()

    # Internals --------------------------------------------------------------------

    def _on_connected(self, client: ActiveClient) -> None:
        ctx = self.context
        if client.connect_timer is not None:
            client.connect_timer.cancel()
            client.connect_timer = None
        self._connecting_capacity -= client.current_unused_capacity()
        client.has_handshake_completed = True
        ctx.stats.upstream_cx_connect_ms.record((ctx.loop.time() - client.created_at) * 1000)
        if client.state is _CONNECTING:
            self.transition(client, _READY if client.current_unused_capacity() > 0 else _BUSY)
        if client.state is _READY:
            self._on_upstream_ready()
        if client.state is not _CLOSED and client.num_active_streams() == 0:
            self._start_idle(client)
        self.check_idle_and_close_if_draining()

    def _attach(self, client: ActiveClient, decoder: Any, callbacks: PoolCallbacks) -> None:
        """Give ``client`` (a READY one: both callers take it from that set) the stream."""
        if not self._requests.try_inc():  # rm.can_send_request(), and it counts the stream
            # Envoy 1.38+ counts the active-request breaker apart from the pending queue's.
            self.context.stats.upstream_rq_active_overflow.inc()
            callbacks.on_pool_failure(PoolFailureReason.OVERFLOW, "", self.host)
            return
        client.streams_total += 1
        remaining = client.remaining_streams = client.remaining_streams - 1
        if remaining == 0:
            log.debug("[C%d] maximum requests per connection, start draining", client.id)
            self.context.pool_stats.upstream_cx_max_requests.inc()
            self.transition(client, _DRAINING)
        elif remaining > 0 and (
            client.concurrent_stream_limit == 1  # (a READY one-stream client has no stream)
            or client.concurrent_stream_limit - client.num_active_streams() == 1
        ):
            # This stream takes the last free slot (remaining_streams was above 1, so the
            # capacity was the free slots). READY -> BUSY, always allowed: inlined.
            del self._ready[client]
            client.state = _BUSY
            self._busy[client] = None
        self._active_streams += 1
        self._host_rq_total.value += 1
        self._host_rq_active_inc()
        self._rq_total.value += 1
        self._rq_active_inc()
        callbacks.on_pool_ready(client.new_stream_encoder(decoder), self.host)

    def _on_upstream_ready(self) -> None:
        pending, ready = self._pending, self._clients[_READY]
        while pending and ready:
            stream = next(iter(pending))
            self._release_pending(stream)
            self._attach(next(reversed(ready)), stream.decoder, stream.callbacks)
        if pending:
            self._try_create_connections()

    def _scheduled_upstream_ready(self) -> None:
        self._upstream_ready_handle = None
        if self._pending:  # (``_on_upstream_ready`` does nothing without pending streams)
            self._on_upstream_ready()

    def _release_pending(self, stream: PendingStream) -> None:
        del self._pending[stream]
        self.context.stats.upstream_rq_pending_active.dec()
        self.context.resource_manager.pending_requests.dec()

    def _try_create_connections(self) -> None:
        # Envoy tries up to 3 (its preconnect cap); without preconnect one is enough.
        for _ in range(3):
            if not self._try_create_connection():
                return

    def _try_create_connection(self) -> bool:
        """Open a connection if the queue needs one; True if one was opened within limits."""
        if len(self._pending) <= self._connecting_capacity:
            return False
        ctx = self.context
        allowed = ctx.resource_manager.can_create_connection()
        if not allowed:
            ctx.pool_stats.upstream_cx_overflow.inc()
            if any(self._clients.values()):
                return False
        log.debug("creating a new connection (connecting=%d)", len(self._clients[_CONNECTING]))
        client = self._client_factory(self)
        self._clients[_CONNECTING][client] = None
        self._connecting_capacity += client.current_unused_capacity()
        return allowed

    def _purge_pending(self, reason: PoolFailureReason, failure_reason: str) -> None:
        purging = self._purging = self._pending
        self._pending = {}
        stats = self.context.stats
        rm = self.context.resource_manager
        try:
            while purging:
                stream = next(iter(purging))
                del purging[stream]
                stats.upstream_rq_pending_active.dec()
                rm.pending_requests.dec()
                stats.upstream_rq_pending_failure_eject.inc()
                stream.callbacks.on_pool_failure(reason, failure_reason, self.host)
        finally:
            self._purging = None

    def _on_pending_cancel(self, stream: PendingStream, policy: CancelPolicy) -> None:
        purging = self._purging
        if purging is not None and stream in purging:
            del purging[stream]
            self.context.stats.upstream_rq_pending_active.dec()
            self.context.resource_manager.pending_requests.dec()
        elif stream in self._pending:
            self._release_pending(stream)
        else:
            return  # already attached or failed
        connecting = self._clients[_CONNECTING]
        if policy is CancelPolicy.CLOSE_EXCESS and connecting:
            client = next(reversed(connecting))
            if len(self._pending) <= self._connecting_capacity - client.current_unused_capacity():
                self.transition(client, _DRAINING)
                client.close()
        self.context.pool_stats.upstream_rq_cancelled.inc()
        self.check_idle_and_close_if_draining()

    def _close_idle_clients(self) -> None:
        idle = [c for c in self._clients[_READY] if c.num_active_streams() == 0]
        if not self._pending:
            idle.extend(self._clients[_CONNECTING])
        for client in idle:
            client.close()

    def _check_idle(self) -> None:
        if self._idle_callbacks and self.is_idle():
            for callback in list(self._idle_callbacks):
                callback()

    # Per-client idle timeout (Envoy's CodecClient idle timer) ----------------------

    def _start_idle(self, client: ActiveClient) -> None:
        timeout = self._idle_timeout
        if not timeout:
            return
        client.idle_since = self.loop.time()
        if client.idle_timer is None:
            client.idle_timer = self.loop.call_later(timeout, self._on_idle_check, client)

    def _on_idle_check(self, client: ActiveClient) -> None:
        client.idle_timer = None
        if client.state is _CLOSED or client.num_active_streams() > 0:
            return  # the end of the current stream re-arms it
        timeout = self.context.settings.idle_timeout or 0.0
        remaining = client.idle_since + timeout - self.loop.time()
        if remaining > 0:
            client.idle_timer = self.loop.call_later(remaining, self._on_idle_check, client)
            return
        log.debug("[C%d] idle timeout", client.id)
        self.context.pool_stats.upstream_cx_idle_timeout.inc()
        client.close()
