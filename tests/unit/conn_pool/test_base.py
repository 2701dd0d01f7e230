"""ConnPool, the protocol-independent state machine, driven without sockets.

``FakeClient`` stands for a connection: the test says when it connects, closes or finishes a
stream. ``FakeLoop`` is the injected clock: timers run only when the test advances time.
Assertions go through callbacks, the pool's public queries and the stats.
"""

from __future__ import annotations

import heapq
import itertools

import pytest

from legatus.conn_pool import (
    CancelPolicy,
    ConnPoolStats,
    DrainBehavior,
    PoolContext,
    PoolFailureReason,
    PoolSettings,
    PoolStateError,
)
from legatus.conn_pool.base import ActiveClient, ClientState, ConnPool
from legatus.network.address import SocketAddress
from legatus.network.filter import ConnectionEvent
from legatus.stats.store import Store
from legatus.upstream.cluster import HostConfig
from legatus.upstream.host import Host
from legatus.upstream.resource_manager import ResourceManager
from legatus.upstream.stats import ClusterTrafficStats

S = ClientState
CLUSTER = "cluster.backend."
HOST = "cluster.backend.host.10.0.0.1:80."


class FakeHandle:
    def __init__(self, when: float, callback, args) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: FakeHandle) -> bool:
        return self.when < other.when


class FakeLoop:
    """time(), call_later() and call_soon(), driven by ``advance()`` / ``run_soon()``."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, int, FakeHandle]] = []
        self.soon: list[FakeHandle] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback, *args) -> FakeHandle:
        handle = FakeHandle(self.now + delay, callback, args)
        heapq.heappush(self.timers, (handle.when, next(self._seq), handle))
        return handle

    def call_soon(self, callback, *args) -> FakeHandle:
        handle = FakeHandle(self.now, callback, args)
        self.soon.append(handle)
        return handle

    def run_soon(self) -> None:
        soon, self.soon = self.soon, []
        for handle in soon:
            if not handle.cancelled:
                handle.callback(*handle.args)

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while self.timers and self.timers[0][0] <= end:
            when, _, handle = heapq.heappop(self.timers)
            self.now = when
            if not handle.cancelled:
                handle.callback(*handle.args)
        self.now = end

    def pending_timers(self) -> int:
        return sum(1 for _, _, h in self.timers if not h.cancelled)


class FakeStream:
    def __init__(self, client: FakeClient, decoder) -> None:
        self.client = client
        self.decoder = decoder


class FakeClient(ActiveClient):
    ids = itertools.count(1)

    def __init__(self, pool: ConnPool) -> None:
        super().__init__(pool, concurrent_stream_limit=pool.concurrency)
        self.id = next(self.ids)
        self.streams: list[FakeStream] = []
        self.closed = False
        pool.created.append(self)

    def num_active_streams(self) -> int:
        return len(self.streams)

    def closing_with_incomplete_stream(self) -> bool:
        return bool(self.streams)

    def close(self) -> None:
        self._gone(ConnectionEvent.LOCAL_CLOSE, "")

    def new_stream_encoder(self, decoder) -> FakeStream:
        stream = FakeStream(self, decoder)
        self.streams.append(stream)
        return stream

    # What the test makes happen
    def connect(self) -> None:
        self.pool.on_connection_event(self, ConnectionEvent.CONNECTED)

    def remote_close(self, reason: str = "") -> None:
        self._gone(ConnectionEvent.REMOTE_CLOSE, reason)

    def finish(self, stream: FakeStream) -> None:
        self.streams.remove(stream)
        self.pool.on_stream_closed(self, delay_attaching=False)

    def _gone(self, event: ConnectionEvent, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.pool.on_connection_event(self, event, reason)
        for _ in range(len(self.streams)):
            self.streams.pop()
            self.pool.on_stream_closed(self, delay_attaching=True)


class Callbacks:
    """Records what the pool reports; ``on_ready``/``on_failure`` hooks let a test react."""

    def __init__(self, log: list, name: str, *, on_ready=None, on_failure=None) -> None:
        self.log = log
        self.name = name
        self.stream: FakeStream | None = None
        self.failure: tuple | None = None
        self._on_ready = on_ready
        self._on_failure = on_failure

    def on_pool_ready(self, encoder, host) -> None:
        self.stream = encoder
        self.log.append(("ready", self.name, encoder.client.id))
        if self._on_ready:
            self._on_ready(self)

    def on_pool_failure(self, reason, transport_failure_reason, host) -> None:
        self.failure = (reason, transport_failure_reason, host)
        self.log.append(("failure", self.name, reason))
        if self._on_failure:
            self._on_failure(self)


class Harness:
    def __init__(self, *, concurrency: int = 1, **limits) -> None:
        settings = {
            k: limits.pop(k)
            for k in ("connect_timeout", "max_requests_per_connection", "idle_timeout")
            if k in limits
        }
        self.loop = FakeLoop()
        self.store = Store()
        scope = self.store.scope(CLUSTER)
        self.rm = ResourceManager(scope, **limits)
        context = PoolContext(
            loop=self.loop,  # type: ignore[arg-type]
            stats=ClusterTrafficStats(scope),
            pool_stats=ConnPoolStats(scope),
            resource_manager=self.rm,
            settings=PoolSettings(**settings),
        )
        address = SocketAddress(host="10.0.0.1", port=80)
        host = Host(
            HostConfig(address=address, hostname="", weight=1, priority=0),
            self.store.scope(HOST),
        )
        self.pool = ConnPool(host, context, FakeClient)  # type: ignore[arg-type]
        self.pool.concurrency = concurrency  # type: ignore[attr-defined]
        self.pool.created = []  # type: ignore[attr-defined]
        self.log: list = []

    @property
    def created(self) -> list[FakeClient]:
        return self.pool.created  # type: ignore[attr-defined]

    def stream(self, name: str, **hooks):
        cb = Callbacks(self.log, name, **hooks)
        return cb, self.pool.new_stream(decoder=name, callbacks=cb)

    def stat(self, name: str) -> int:
        value = self.store.value(name if name.startswith("cluster.") else CLUSTER + name)
        assert value is not None, name
        return value  # type: ignore[return-value]

    def host_stat(self, name: str) -> int:
        return self.store.value(HOST + name)  # type: ignore[return-value]


# --- attaching, reuse, queueing ---------------------------------------------------


def test_first_stream_waits_for_a_new_connection_then_reuses_it():
    h = Harness()
    a, pending = h.stream("a")
    assert pending is not None and h.log == []
    (client,) = h.created
    assert client.state is S.CONNECTING
    assert (h.stat("upstream_rq_pending_total"), h.stat("upstream_rq_pending_active")) == (1, 1)
    assert (h.stat("upstream_cx_total"), h.stat("upstream_cx_active")) == (1, 1)
    assert (h.host_stat("cx_total"), h.host_stat("cx_active")) == (1, 1)

    h.loop.advance(0.25)
    client.connect()
    assert h.log == [("ready", "a", client.id)]
    assert client.state is S.BUSY  # HTTP/1: one stream per connection
    assert h.stat("upstream_rq_pending_active") == 0
    assert (h.stat("upstream_rq_total"), h.stat("upstream_rq_active")) == (1, 1)
    assert (h.host_stat("rq_total"), h.host_stat("rq_active")) == (1, 1)
    assert h.store.get(CLUSTER + "upstream_cx_connect_ms").sample_sum == 250

    client.finish(a.stream)
    assert client.state is S.READY and h.stat("upstream_rq_active") == 0
    _b, pending = h.stream("b")
    assert pending is None  # attached at once, on the same connection
    assert h.log[-1] == ("ready", "b", client.id)
    assert len(h.created) == 1 and h.stat("upstream_rq_total") == 2


def test_concurrent_streams_get_their_own_connections_and_queue_fifo():
    h = Harness()
    streams = [h.stream(n)[0] for n in "abc"]
    assert len(h.created) == 3
    h.created[2].connect()  # whichever connects first serves the oldest pending stream
    h.created[0].connect()
    assert [e[1] for e in h.log] == ["a", "b"]
    assert streams[0].stream.client is h.created[2]
    h.created[1].connect()
    assert [e[1] for e in h.log] == ["a", "b", "c"]


def test_higher_concurrency_limit_shares_one_connection():
    h = Harness(concurrency=2)
    h.stream("a")
    h.stream("b")
    h.stream("c")
    assert len(h.created) == 2  # capacity 2 per connecting client covers two streams
    h.created[0].connect()
    assert [e[1] for e in h.log] == ["a", "b"] and h.created[0].state is S.BUSY


def test_max_connections_keeps_streams_pending_and_counts_cx_overflow():
    h = Harness(max_connections=1)
    a, _ = h.stream("a")
    h.stream("b")
    h.stream("c")
    assert len(h.created) == 1
    assert h.stat("upstream_cx_overflow") == 2
    assert h.stat("cluster.backend.circuit_breakers.default.cx_open") == 1
    client = h.created[0]
    client.connect()
    client.finish(a.stream)
    client.finish(h.pool.clients(S.BUSY)[0].streams[0])
    assert [e[1] for e in h.log] == ["a", "b", "c"]
    assert h.pool.pending_count == 0


def test_a_pool_without_connections_opens_one_even_at_the_connection_limit():
    # Envoy: other pools of the cluster may hold every connection; never starve this one.
    h = Harness(max_connections=0)
    h.stream("a")
    assert len(h.created) == 1 and h.stat("upstream_cx_overflow") == 1
    h.stream("b")
    assert len(h.created) == 1 and h.stat("upstream_cx_overflow") == 2


def test_pending_overflow_fails_the_stream_at_once():
    h = Harness(max_pending_requests=1)
    h.stream("a")
    b, pending = h.stream("b")
    assert pending is None
    assert b.failure == (PoolFailureReason.OVERFLOW, "", None)
    assert h.stat("upstream_rq_pending_overflow") == 1
    assert h.stat("upstream_rq_pending_total") == 1
    assert h.stat("cluster.backend.circuit_breakers.default.rq_pending_open") == 1


def test_max_requests_overflow_is_checked_when_attaching():
    h = Harness(max_requests=1)
    _a, _ = h.stream("a")
    b, _ = h.stream("b")
    h.created[0].connect()
    h.created[1].connect()
    assert b.failure[0] is PoolFailureReason.OVERFLOW
    # Envoy 1.38+ counts the active-request breaker apart from the pending queue.
    assert h.stat("upstream_rq_active_overflow") == 1
    assert h.stat("upstream_rq_pending_overflow") == 0
    assert h.stat("upstream_rq_total") == 1 and h.stat("upstream_rq_pending_active") == 0
    assert h.stat("cluster.backend.circuit_breakers.default.rq_open") == 1


# --- connect failures ---------------------------------------------------------------


def test_connect_failure_fails_every_pending_stream_with_the_reason():
    h = Harness(max_connections=1)
    a, _ = h.stream("a")
    b, _ = h.stream("b")
    (client,) = h.created
    client.remote_close("delayed connect error: Connection refused")
    reason = (
        PoolFailureReason.REMOTE_CONNECTION_FAILURE,
        "delayed connect error: Connection refused",
    )
    assert a.failure[:2] == reason and b.failure[:2] == reason
    assert a.failure[2] is h.pool.host
    assert h.stat("upstream_cx_connect_fail") == 1 and h.host_stat("cx_connect_fail") == 1
    assert h.stat("upstream_rq_pending_failure_eject") == 2
    assert h.stat("upstream_rq_pending_active") == 0
    assert (h.stat("upstream_cx_destroy"), h.stat("upstream_cx_destroy_remote")) == (1, 1)
    assert (h.stat("upstream_cx_active"), h.host_stat("cx_active")) == (0, 0)
    assert h.rm.connections.count == 0 and h.rm.pending_requests.count == 0
    assert h.pool.is_idle() and h.loop.pending_timers() == 0
    assert h.store.get(CLUSTER + "upstream_rq_per_cx").sample_count == 0  # never connected


def test_connect_timeout_on_the_injected_clock():
    h = Harness(connect_timeout=0.5)
    a, _ = h.stream("a")
    h.loop.advance(0.49)
    assert a.failure is None
    h.loop.advance(0.01)
    assert a.failure[:2] == (PoolFailureReason.TIMEOUT, "")
    # Envoy counts a timed-out connect as a connect failure too, closed locally.
    assert h.stat("upstream_cx_connect_timeout") == 1 and h.stat("upstream_cx_connect_fail") == 1
    assert h.stat("upstream_cx_destroy_local") == 1


def test_a_retry_from_on_pool_failure_is_not_failed_with_the_purge():
    h = Harness()
    retried = []

    def retry(cb):
        retried.append(h.stream("a-retry"))

    a, _ = h.stream("a", on_failure=retry)
    h.created[0].remote_close("boom")
    assert a.failure is not None
    ((retry_cb, pending),) = retried
    assert pending is not None and retry_cb.failure is None
    assert len(h.created) == 2 and h.created[1].state is S.CONNECTING
    h.created[1].connect()
    assert h.log[-1] == ("ready", "a-retry", h.created[1].id)


def test_cancelling_a_pending_stream_inside_the_purge_skips_its_failure():
    h = Harness(max_connections=1)
    handles = {}
    a, _ = h.stream("a", on_failure=lambda cb: handles["b"].cancel())
    b, handles["b"] = h.stream("b")
    h.created[0].remote_close("x")
    assert a.failure is not None and b.failure is None
    assert h.stat("upstream_rq_cancelled") == 1 and h.stat("upstream_rq_pending_failure_eject") == 1
    assert h.stat("upstream_rq_pending_active") == 0


# --- cancel -------------------------------------------------------------------------


def test_cancel_pending_stream():
    h = Harness()
    _a, pending = h.stream("a")
    pending.cancel()
    assert h.stat("upstream_rq_cancelled") == 1 and h.stat("upstream_rq_pending_active") == 0
    client = h.created[0]
    assert client.state is S.CONNECTING  # the default policy keeps the connection
    client.connect()
    assert h.log == [] and client.state is S.READY
    pending.cancel()  # after the fact: nothing
    assert h.stat("upstream_rq_cancelled") == 1


def test_cancel_close_excess_closes_the_unneeded_connecting_client():
    h = Harness()
    _, _first = h.stream("a")
    _, second = h.stream("b")
    second.cancel(CancelPolicy.CLOSE_EXCESS)
    newest = h.created[1]
    assert newest.closed and newest.state is S.CLOSED
    # Closing a client that never connected is a connect failure for Envoy: the remaining
    # pending stream is purged with LOCAL_CONNECTION_FAILURE.
    assert h.log == [("failure", "a", PoolFailureReason.LOCAL_CONNECTION_FAILURE)]
    assert h.stat("upstream_cx_connect_fail") == 1 and h.stat("upstream_cx_destroy_local") == 1


# --- limits per connection, idle timeout ------------------------------------------------


def test_max_requests_per_connection_drains_the_client():
    h = Harness(max_requests_per_connection=2)
    a, _ = h.stream("a")
    client = h.created[0]
    client.connect()
    client.finish(a.stream)
    b, _ = h.stream("b")
    assert client.state is S.DRAINING and h.stat("upstream_cx_max_requests") == 1
    _c, pending = h.stream("c")  # a draining client takes no stream: a new connection
    assert pending is not None and len(h.created) == 2
    client.finish(b.stream)
    assert client.closed and client.state is S.CLOSED
    assert h.stat("upstream_cx_destroy_local") == 1
    assert h.stat("upstream_cx_destroy_with_active_rq") == 0
    per_cx = h.store.get(CLUSTER + "upstream_rq_per_cx")
    assert (per_cx.sample_count, per_cx.sample_sum) == (1, 2)


def test_idle_timeout_closes_an_idle_client_and_is_pushed_back_by_use():
    h = Harness(idle_timeout=10.0)
    a, _ = h.stream("a")
    client = h.created[0]
    client.connect()
    h.loop.advance(9)
    client.finish(a.stream)  # idle from t=9
    h.loop.advance(2)  # the first timer (t=10) finds it idle for 1 s only: re-armed
    assert client.state is S.READY
    b, _ = h.stream("b")
    h.loop.advance(30)  # busy: the timer does not close it
    assert client.state is S.BUSY
    client.finish(b.stream)  # idle from t=41
    h.loop.advance(9.9)
    assert client.state is S.READY
    h.loop.advance(0.1)
    assert client.closed and h.stat("upstream_cx_idle_timeout") == 1
    assert h.store.get(CLUSTER + "upstream_cx_length_ms").sample_sum == 51_000


def test_idle_timeout_zero_disables_it():
    h = Harness(idle_timeout=0)
    h.stream("a")
    h.created[0].connect()
    h.created[0].finish(h.created[0].streams[0])
    h.loop.advance(10 * 3600)
    assert h.created[0].state is S.READY and h.loop.pending_timers() == 0


# --- closing, draining ----------------------------------------------------------------


def test_remote_close_with_an_active_stream_counts_destroy_with_active_rq():
    h = Harness()
    h.stream("a")
    client = h.created[0]
    client.connect()
    client.remote_close()
    assert h.stat("upstream_cx_destroy_remote_with_active_rq") == 1
    assert h.stat("upstream_cx_destroy_with_active_rq") == 1
    assert h.stat("upstream_rq_active") == 0 and h.host_stat("rq_active") == 0
    assert h.stat("upstream_cx_connect_fail") == 0
    assert h.rm.requests.count == 0 and h.rm.connections.count == 0


def test_pending_streams_get_a_new_connection_when_one_is_lost():
    h = Harness(max_connections=1)
    h.stream("a")
    h.created[0].connect()
    h.stream("b")
    assert len(h.created) == 1
    h.created[0].remote_close()  # frees the connection slot
    assert len(h.created) == 2
    h.created[1].connect()
    assert h.log[-1] == ("ready", "b", h.created[1].id)


def test_drain_closes_idle_and_drains_busy_clients():
    h = Harness()
    a, _ = h.stream("a")
    b, _ = h.stream("b")
    c, _ = h.stream("c")
    busy, idle, connecting = h.created
    busy.connect()
    idle.connect()
    idle.finish(b.stream)  # "c" was waiting: it takes the first ready connection
    idle.finish(c.stream)
    h.pool.drain()
    assert idle.closed and connecting.closed  # no pending stream needs the connecting one
    assert busy.state is S.DRAINING
    busy.finish(a.stream)
    assert busy.closed and h.pool.is_idle()


def test_drain_keeps_a_connecting_client_that_pending_streams_wait_for():
    h = Harness()
    h.stream("a")
    h.pool.drain()
    (client,) = h.created
    assert client.state is S.CONNECTING
    client.connect()
    assert h.log == [("ready", "a", client.id)]


def test_drain_and_delete_closes_clients_as_they_become_idle():
    h = Harness()
    idle_calls = []
    h.pool.add_idle_callback(lambda: idle_calls.append(h.pool.is_idle()))
    a, _ = h.stream("a")
    client = h.created[0]
    client.connect()
    h.pool.drain(DrainBehavior.DRAIN_AND_DELETE)
    assert not client.closed and idle_calls == []
    with pytest.raises(PoolStateError):
        h.stream("b")
    client.finish(a.stream)
    h.pool.check_idle_and_close_if_draining()  # what a protocol client calls after a stream
    assert client.closed and idle_calls and all(idle_calls)  # maybe more than once, as Envoy


def test_transition_table_refuses_unexpected_changes():
    h = Harness()
    h.stream("a")
    client = h.created[0]
    with pytest.raises(PoolStateError, match="connecting -> connecting"):
        h.pool.transition(client, S.CONNECTING)
    client.connect()
    h.pool.transition(client, S.DRAINING)
    with pytest.raises(PoolStateError, match="draining -> ready"):
        h.pool.transition(client, S.READY)
    client.remote_close()
    with pytest.raises(PoolStateError, match="closed -> ready"):
        h.pool.transition(client, S.READY)
    with pytest.raises(PoolStateError):
        h.pool.on_connection_event(client, ConnectionEvent.LOCAL_CLOSE)  # reported twice


def test_upstream_ready_scheduled_for_the_next_iteration():
    h = Harness()
    a, _ = h.stream("a")
    client = h.created[0]
    client.connect()
    h.stream("b")  # pending, a second connection is connecting
    client.streams.remove(a.stream)
    h.pool.schedule_on_upstream_ready()
    h.pool.on_stream_closed(client, delay_attaching=True)
    assert client.state is S.READY and h.log == [("ready", "a", client.id)]
    h.loop.run_soon()
    assert h.log[-1] == ("ready", "b", client.id)


def test_resource_manager_remaining_gauges_when_tracked():
    store = Store()
    rm = ResourceManager(store.scope(CLUSTER), max_connections=2, track_remaining=True)
    assert store.value(CLUSTER + "circuit_breakers.default.remaining_cx") == 2
    rm.connections.inc()
    rm.connections.inc()
    assert not rm.can_create_connection()
    assert store.value(CLUSTER + "circuit_breakers.default.remaining_cx") == 0
    assert store.value(CLUSTER + "circuit_breakers.default.cx_open") == 1
    rm.connections.dec()
    assert store.value(CLUSTER + "circuit_breakers.default.cx_open") == 0
    assert store.get(CLUSTER + "circuit_breakers.high.cx_open") is None


def test_resource_manager_from_circuit_breakers():
    from envoy.config.cluster.v3 import circuit_breaker_pb2

    from legatus.upstream.resource_manager import ResourcePriority

    cb = circuit_breaker_pb2.CircuitBreakers()
    high = cb.thresholds.add(priority=1)
    high.max_pending_requests.value = 7
    scope = Store().scope(CLUSTER)
    rm = ResourceManager.from_circuit_breakers(cb, scope, ResourcePriority.HIGH)
    assert (rm.pending_requests.max, rm.connections.max, rm.retries.max) == (7, 1024, 3)
    default = ResourceManager.from_circuit_breakers(cb, scope, ResourcePriority.DEFAULT)
    assert default.pending_requests.max == 1024
