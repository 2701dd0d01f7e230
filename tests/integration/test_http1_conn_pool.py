"""The HTTP/1 connection pool against a real upstream on 127.0.0.1, in the test's event loop.

``Upstream`` is a small asyncio HTTP/1.1 server whose behaviour is chosen by the request path
(keep-alive, close after the response, close mid-response, answer before the request body,
stall, broken responses). Each test waits on events (responses, closes), never on timing,
except to check that something did *not* happen.
"""

from __future__ import annotations

import asyncio
import inspect
import random

import pytest
import uvloop
from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import json_format

from legatus.conn_pool import (
    DrainBehavior,
    PoolContext,
    PoolFailureReason,
    ResponseDecoder,
    StreamResetReason,
)
from legatus.conn_pool.http1 import Http1ConnPool
from legatus.http.headers import HeaderMap
from legatus.network.address import SocketAddress
from legatus.stats.store import Store
from legatus.upstream.cluster import HostConfig, compile_cluster
from legatus.upstream.resource_manager import ResourceManager
from legatus.upstream.thread_local_cluster import ThreadLocalCluster
from tests.support.upstreams import free_port

CLUSTER = "cluster.backend."
WAIT = 5.0


class Upstream:
    """HTTP/1.1 on 127.0.0.1:0; ``connections`` counts accepted ones, ``closed`` is set each
    time one of them ends."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[tuple[int, str, bytes]] = []  # (connection number, path, body)
        self.closed = asyncio.Event()
        self.closes = 0
        self.release = asyncio.Event()  # lets /wait and /stall answer
        self.server: asyncio.Server | None = None
        self.port = 0
        self.tasks: set[asyncio.Task] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> Upstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        self.release.set()
        for writer in self.writers:
            writer.close()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=WAIT)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        self.writers.append(writer)
        self.connections += 1
        number = self.connections
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                headers = dict(
                    (k.strip().lower(), v.strip())
                    for k, v in (line.split(":", 1) for line in lines[1:] if line)
                )
                if path == "/early":  # answer before reading the body
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly")
                    await writer.drain()
                    await reader.read()
                    return
                if path == "/stall":  # read nothing until released
                    await self.release.wait()
                body = await self._body(reader, headers)
                self.requests.append((number, path, body))
                if not await self._answer(path, writer):
                    return
        finally:
            writer.close()
            self.closes += 1
            self.closed.set()

    async def _body(self, reader: asyncio.StreamReader, headers: dict) -> bytes:
        if "content-length" in headers:
            return await reader.readexactly(int(headers["content-length"]))
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    return body
                body += chunk[:-2]
        return b""

    async def _answer(self, path: str, writer: asyncio.StreamWriter) -> bool:
        """Write the response for ``path``; False to close the connection after it."""
        if path == "/wait":
            await self.release.wait()
        if path == "/close":
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
            return False
        if path == "/http10":  # no length: the body runs to the close
            writer.write(b"HTTP/1.0 200 OK\r\n\r\nuntil-eof")
            return False
        if path == "/abort":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
            await writer.drain()
            return False
        if path == "/bad":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: x\r\n\r\n")
            return True
        if path == "/slow-body":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nfirst")
            await writer.drain()
            await self.release.wait()
            writer.write(b"second")
            return True
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        return True


class Exchange(ResponseDecoder):
    """One request through the pool: the pool callbacks and the response decoder."""

    def __init__(self, path: str, *, method: str = "GET", body: bytes | None = None) -> None:
        self.path = path
        self.method = method
        self.body = body
        self.encoder = None
        self.failure: tuple | None = None
        self.headers: HeaderMap | None = None
        self.data = b""
        self.reset: tuple | None = None
        self.done = asyncio.Event()
        self.on_first_data = None

    # Pool callbacks
    def on_pool_ready(self, encoder, host) -> None:
        self.encoder = encoder
        headers = HeaderMap(
            [(":method", self.method), (":path", self.path), (":authority", "backend")]
        )
        if self.body is None:
            assert encoder.encode_headers(headers, True) is None
        else:
            headers.add("content-length", str(len(self.body)))
            assert encoder.encode_headers(headers, False) is None
            encoder.encode_data(self.body, True)

    def on_pool_failure(self, reason, transport_failure_reason, host) -> None:
        self.failure = (reason, transport_failure_reason)
        self.done.set()

    # Response decoder
    def on_headers(self, headers: HeaderMap, end_stream: bool) -> None:
        self.headers = headers
        if end_stream:
            self.done.set()

    def on_data(self, data: bytes, end_stream: bool) -> None:
        first = not self.data
        self.data += data
        if first and self.on_first_data is not None:
            self.on_first_data(self)
        if end_stream:
            self.done.set()

    def on_reset(self, reason, details: str) -> None:
        self.reset = (reason, details)
        self.done.set()

    async def wait(self) -> Exchange:
        await asyncio.wait_for(self.done.wait(), WAIT)
        return self


class Setup:
    """A cluster ``backend`` with one host (the upstream) and its HTTP/1 pool."""

    def __init__(self, port: int, *, buffer_limit: int = 1 << 20, **settings) -> None:
        self.store = Store()
        proto = json_format.ParseDict(
            {
                "name": "backend",
                "connect_timeout": "1s",
                "per_connection_buffer_limit_bytes": buffer_limit,
            },
            cluster_pb2.Cluster(),
        )
        cluster = ThreadLocalCluster(compile_cluster(proto, "cluster"), self.store, random.Random())
        address = SocketAddress(host="127.0.0.1", port=port)
        cluster.update_hosts((HostConfig(address=address, hostname="", weight=1, priority=0),))
        scope = self.store.scope(CLUSTER)
        limits = {k: settings.pop(k) for k in _LIMITS if k in settings}
        self.context = PoolContext.for_cluster(
            cluster,
            scope,
            asyncio.get_running_loop(),
            resource_manager=ResourceManager(scope, **limits),
            **settings,
        )
        self.pool = Http1ConnPool(cluster.hosts[0], self.context)

    def send(self, path: str, **kw) -> Exchange:
        exchange = Exchange(path, **kw)
        self.pool.new_stream(exchange, exchange)
        return exchange

    def stat(self, name: str) -> int:
        return self.store.value(CLUSTER + name)  # type: ignore[return-value]


_LIMITS = ("max_connections", "max_pending_requests", "max_requests")


@pytest.fixture
async def upstream():
    server = await Upstream().start()
    yield server
    await server.stop()


async def wait_closes(upstream: Upstream, n: int) -> None:
    while upstream.closes < n:
        upstream.closed.clear()
        await asyncio.wait_for(upstream.closed.wait(), WAIT)


# --- reuse and concurrency ---------------------------------------------------------


async def test_sequential_requests_reuse_one_connection(upstream):
    s = Setup(upstream.port)
    for _ in range(3):
        e = await s.send("/").wait()
        assert e.headers.get(":status") == "200" and e.data == b"ok"
    assert upstream.connections == 1
    assert [r[0] for r in upstream.requests] == [1, 1, 1]
    assert (s.stat("upstream_cx_total"), s.stat("upstream_cx_http1_total")) == (1, 1)
    assert (s.stat("upstream_rq_total"), s.stat("upstream_rq_active")) == (3, 0)
    assert s.stat("upstream_rq_pending_total") == 1  # only the first waited for a connection
    assert s.stat("upstream_cx_active") == 1
    assert s.context.stats.upstream_cx_rx_bytes_total.value == 3 * 40


async def test_concurrent_requests_get_a_second_connection(upstream):
    s = Setup(upstream.port)
    first, second = s.send("/wait"), s.send("/wait")
    while len(upstream.requests) < 2:
        await asyncio.sleep(0.01)
    upstream.release.set()
    await first.wait()
    await second.wait()
    assert upstream.connections == 2 and s.stat("upstream_cx_total") == 2
    await s.send("/").wait()
    assert upstream.connections == 2  # back to the idle ones


async def test_max_requests_per_connection(upstream):
    s = Setup(upstream.port, max_requests_per_connection=2)
    for _ in range(3):
        await s.send("/").wait()
    await wait_closes(upstream, 1)
    assert [r[0] for r in upstream.requests] == [1, 1, 2]
    assert s.stat("upstream_cx_max_requests") == 1
    assert s.stat("upstream_cx_destroy_local") == 1
    assert s.stat("upstream_cx_destroy_with_active_rq") == 0


async def test_pool_deleted_while_busy_closes_the_connection_after_its_stream(upstream):
    s = Setup(upstream.port)
    idle = []
    s.pool.add_idle_callback(lambda: idle.append(True))
    e = s.send("/wait")
    while not upstream.requests:
        await asyncio.sleep(0.01)
    s.pool.drain(DrainBehavior.DRAIN_AND_DELETE)
    assert upstream.closes == 0 and not idle  # the stream runs on
    upstream.release.set()
    await e.wait()
    assert e.headers.get(":status") == "200" and e.data == b"ok" and e.reset is None
    await wait_closes(upstream, 1)
    assert idle and s.pool.is_idle()
    assert s.stat("upstream_cx_destroy_local") == 1
    assert s.stat("upstream_cx_destroy_with_active_rq") == 0
    assert (s.stat("upstream_rq_active"), s.stat("upstream_cx_active")) == (0, 0)


async def test_idle_timeout_closes_the_connection(upstream):
    s = Setup(upstream.port, idle_timeout=0.1)
    await s.send("/").wait()
    await wait_closes(upstream, 1)
    assert s.stat("upstream_cx_idle_timeout") == 1
    assert (s.stat("upstream_cx_active"), s.stat("upstream_cx_destroy_local")) == (0, 1)
    await s.send("/").wait()
    assert upstream.connections == 2


# --- failures -----------------------------------------------------------------------


async def test_connect_refused_fails_with_the_transport_reason():
    s = Setup(free_port())
    a, b = s.send("/"), s.send("/")
    await a.wait()
    await b.wait()
    expected = (
        PoolFailureReason.REMOTE_CONNECTION_FAILURE,
        "delayed connect error: Connection refused",
    )
    assert a.failure == expected and b.failure == expected
    assert s.stat("upstream_cx_connect_fail") == 2  # one connection per pending stream
    assert s.stat("upstream_rq_pending_failure_eject") == 2
    assert (s.stat("upstream_cx_destroy_remote"), s.stat("upstream_cx_active")) == (2, 0)
    host_stat = f"{CLUSTER}host.127.0.0.1:{s.pool.host.address[1]}.cx_connect_fail"
    assert s.store.value(host_stat) == 2


async def test_pending_overflow(upstream):
    s = Setup(upstream.port, max_pending_requests=1)
    first, second = s.send("/"), s.send("/")
    assert second.failure == (PoolFailureReason.OVERFLOW, "")
    await first.wait()
    assert first.data == b"ok"
    assert s.stat("upstream_rq_pending_overflow") == 1
    assert s.stat("upstream_rq_pending_total") == 1 and s.stat("upstream_rq_total") == 1


async def test_upstream_closing_mid_response_resets_with_connection_termination(upstream):
    s = Setup(upstream.port)
    e = await s.send("/abort").wait()
    assert e.headers.get(":status") == "200" and e.data == b"partial"
    assert e.reset == (StreamResetReason.CONNECTION_TERMINATION, "")
    assert s.stat("upstream_cx_destroy_remote_with_active_rq") == 1
    assert s.stat("upstream_rq_active") == 0 and s.stat("upstream_cx_active") == 0


async def test_protocol_error_resets_with_protocol_error(upstream):
    s = Setup(upstream.port)
    e = await s.send("/bad").wait()
    assert e.reset == (StreamResetReason.PROTOCOL_ERROR, "")
    assert e.encoder.protocol_error_details
    assert s.stat("upstream_cx_protocol_error") == 1
    assert s.stat("upstream_cx_destroy_local_with_active_rq") == 1


# --- connection reuse decisions ----------------------------------------------------------


async def test_connection_close_from_upstream(upstream):
    s = Setup(upstream.port)
    e = await s.send("/close").wait()
    assert e.data == b"ok" and e.reset is None
    assert s.stat("upstream_cx_close_notify") == 1
    await s.send("/").wait()
    assert upstream.connections == 2
    assert s.stat("upstream_cx_destroy_with_active_rq") == 0


async def test_http10_response_runs_to_the_close(upstream):
    s = Setup(upstream.port)
    e = await s.send("/http10").wait()
    assert e.data == b"until-eof" and e.reset is None
    assert s.stat("upstream_cx_close_notify") == 1  # HTTP/1.0 without keep-alive
    assert s.stat("upstream_cx_destroy_remote") == 1


async def test_response_before_the_request_is_complete_closes_the_connection(upstream):
    s = Setup(upstream.port)
    e = Exchange("/early", method="POST")
    encoders = []

    def ready(encoder, host):  # send the head only: the body comes later
        encoders.append(encoder)
        headers = HeaderMap([(":method", "POST"), (":path", "/early"), (":authority", "b")])
        headers.add("content-length", "10")
        encoder.encode_headers(headers, False)

    e.on_pool_ready = ready  # type: ignore[method-assign]
    s.pool.new_stream(e, e)
    await e.wait()
    assert e.data == b"early" and e.reset is None
    encoders[0].encode_data(b"0123456789", True)  # too late: a no-op
    await wait_closes(upstream, 1)
    # Envoy counts the stream as cut off (its request was not complete).
    assert s.stat("upstream_cx_destroy_local_with_active_rq") == 1
    await s.send("/").wait()
    assert upstream.connections == 2


async def test_local_reset_closes_the_connection_without_callback(upstream):
    s = Setup(upstream.port)
    e = s.send("/wait")
    while not upstream.requests:
        await asyncio.sleep(0.01)
    e.encoder.reset()
    assert s.stat("upstream_cx_active") == 0 and s.stat("upstream_rq_active") == 0
    assert s.stat("upstream_cx_destroy_local_with_active_rq") == 1
    upstream.release.set()
    await wait_closes(upstream, 1)
    assert e.reset is None and not e.done.is_set()


async def test_request_body_is_sent(upstream):
    s = Setup(upstream.port)
    await s.send("/", method="POST", body=b"x" * 100_000).wait()
    assert upstream.requests[0][2] == b"x" * 100_000
    assert s.context.stats.upstream_cx_tx_bytes_total.value > 100_000


# --- flow control ---------------------------------------------------------------------


async def test_read_disable_pauses_the_response(upstream):
    s = Setup(upstream.port)
    e = s.send("/slow-body")
    e.on_first_data = lambda ex: ex.encoder.read_disable(True)
    while e.data != b"first":
        await asyncio.sleep(0.01)
    upstream.release.set()
    await asyncio.sleep(0.1)  # the rest is on the wire but not read
    assert e.data == b"first" and not e.done.is_set()
    e.encoder.read_disable(False)
    await e.wait()
    assert e.data == b"firstsecond"


class Watermarks:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.drained = asyncio.Event()

    def on_above_write_buffer_high_watermark(self) -> None:
        self.events.append("above")

    def on_below_write_buffer_low_watermark(self) -> None:
        self.events.append("below")
        self.drained.set()


async def test_write_buffer_watermarks_reach_the_stream(upstream):
    s = Setup(upstream.port, buffer_limit=16 * 1024)
    e = Exchange("/stall", method="POST")
    marks = Watermarks()

    def ready(encoder, host):
        e.encoder = encoder
        encoder.add_callbacks(marks)
        headers = HeaderMap([(":method", "POST"), (":path", "/stall"), (":authority", "b")])
        headers.add("content-length", str(32 << 20))
        encoder.encode_headers(headers, False)
        encoder.encode_data(b"x" * (32 << 20), True)  # more than the socket buffers take

    e.on_pool_ready = ready  # type: ignore[method-assign]
    s.pool.new_stream(e, e)
    await asyncio.sleep(0)
    while e.encoder is None:
        await asyncio.sleep(0.01)
    assert marks.events == ["above"] and e.encoder.above_high_watermark
    upstream.release.set()
    await asyncio.wait_for(marks.drained.wait(), WAIT)
    await e.wait()
    assert marks.events == ["above", "below"] and e.data == b"ok"


# --- the same scenarios on uvloop, which the workers run ------------------------------------

_SCENARIOS = {
    name: f
    for name, f in dict(globals()).items()
    if name.startswith("test_") and inspect.iscoroutinefunction(f)
}


@pytest.mark.parametrize("name", sorted(_SCENARIOS))
def test_on_uvloop(name):
    scenario = _SCENARIOS[name]

    async def run() -> None:
        server = await Upstream().start()
        try:
            if inspect.signature(scenario).parameters:
                await scenario(server)
            else:
                await scenario()
        finally:
            await server.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())
