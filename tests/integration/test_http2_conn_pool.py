"""The HTTP/2 connection pool against a real HTTP/2 upstream (``h2``) on 127.0.0.1, in the test's
event loop.

The pool comes from a ``ThreadLocalCluster`` compiled from a Cluster proto with
``explicit_http_config.http2_protocol_options``, as the router gets it. ``H2Upstream``
(tests/support/h2_upstream.py) answers as each request's query string says: held answers,
resets, GOAWAYs, large or echoed bodies, trailers. Tests wait on events (responses, resets,
what the upstream recorded), never on timing, except to check that something did *not*
happen.
"""

from __future__ import annotations

import asyncio
import gc
import random

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401 (Any)
from google.protobuf import json_format

from legatus.conn_pool import ResponseDecoder, StreamResetReason
from legatus.conn_pool.base import ClientState
from legatus.conn_pool.http2 import Http2ConnPool
from legatus.http.headers import HeaderMap
from legatus.network.address import SocketAddress
from legatus.stats.store import Store
from legatus.upstream.cluster import HostConfig, compile_cluster
from legatus.upstream.thread_local_cluster import ThreadLocalCluster
from tests.support.h2_upstream import H2Upstream

CLUSTER = "cluster.backend."
WAIT = 5.0
HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


class Exchange(ResponseDecoder):
    """One request through the pool: the pool callbacks and the response decoder."""

    def __init__(self, path: str, *, body: bytes | None = None, trailers=None,
                 headers=()) -> None:  # fmt: skip
        self.path = path
        self.body = body
        self.request_trailers = trailers
        self.extra_headers = headers
        self.encoder = None
        self.failure: tuple | None = None
        self.headers: HeaderMap | None = None
        self.data = bytearray()
        self.trailers: HeaderMap | None = None
        self.reset: tuple | None = None
        self.done = asyncio.Event()
        self.ready = asyncio.Event()
        self.on_first_data = None
        self.watermarks: list[str] = []

    def on_pool_ready(self, encoder, host) -> None:
        self.encoder = encoder
        encoder.add_callbacks(self)
        headers = HeaderMap([(":method", "POST" if self.body is not None else "GET"),
                             (":path", self.path), (":authority", "backend"),
                             (":scheme", "http"), *self.extra_headers])  # fmt: skip
        end = self.body is None and self.request_trailers is None
        assert encoder.encode_headers(headers, end) is None
        if self.body is not None:
            encoder.encode_data(self.body, self.request_trailers is None)
        if self.request_trailers is not None:
            encoder.encode_trailers(HeaderMap(self.request_trailers))
        self.ready.set()

    def on_pool_failure(self, reason, transport_failure_reason, host) -> None:
        self.failure = (reason, transport_failure_reason)
        self.done.set()

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

    def on_trailers(self, trailers: HeaderMap) -> None:
        self.trailers = trailers
        self.done.set()

    def on_reset(self, reason, details: str) -> None:
        self.reset = (reason, details)
        self.done.set()

    def on_above_write_buffer_high_watermark(self) -> None:
        self.watermarks.append("above")

    def on_below_write_buffer_low_watermark(self) -> None:
        self.watermarks.append("below")

    async def wait(self) -> Exchange:
        await asyncio.wait_for(self.done.wait(), WAIT)
        return self

    @property
    def status(self) -> str | None:
        return None if self.headers is None else self.headers.get(":status")


class Setup:
    """A cluster ``backend`` speaking HTTP/2 to one host (the upstream), and its pool."""

    def __init__(self, port: int, *, http2: dict | None = None, common: dict | None = None,
                 buffer_limit: int = 1 << 20, breakers: dict | None = None) -> None:  # fmt: skip
        self.store = Store()
        explicit = {"http2_protocol_options": http2 or {}}
        options: dict = {"@type": f"type.googleapis.com/{HPO}", "explicit_http_config": explicit}
        if common:
            options["common_http_protocol_options"] = common
        document = {
            "name": "backend",
            "connect_timeout": "1s",
            "per_connection_buffer_limit_bytes": buffer_limit,
            "typed_extension_protocol_options": {HPO: options},
        }
        if breakers:
            document["circuit_breakers"] = {"thresholds": [breakers]}
        proto = json_format.ParseDict(document, cluster_pb2.Cluster())
        self.cluster = ThreadLocalCluster(
            compile_cluster(proto, "cluster"), self.store, random.Random(1),
            asyncio.get_running_loop(),
        )  # fmt: skip
        address = SocketAddress(host="127.0.0.1", port=port)
        self.cluster.update_hosts((HostConfig(address=address, hostname="", weight=1,
                                              priority=0),))  # fmt: skip
        self.pool = self.cluster.http_conn_pool(self.cluster.hosts[0])
        assert isinstance(self.pool, Http2ConnPool)

    def send(self, path: str, **kw) -> Exchange:
        exchange = Exchange(path, **kw)
        self.pool.new_stream(exchange, exchange)
        return exchange

    def stat(self, name: str) -> int:
        value = self.store.value(CLUSTER + name)
        return 0 if value is None else value  # type: ignore[return-value]


@pytest.fixture
def upstream():
    server = H2Upstream()
    yield server
    server.close()


async def settle() -> None:
    """Let the loop run what the last events scheduled (attachments, closes)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def until(predicate, timeout: float = WAIT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)


# --- multiplexing ----------------------------------------------------------------------


async def test_concurrent_requests_share_one_connection(upstream):
    s = Setup(upstream.port)
    exchanges = [s.send(f"/r{i}?hold=1") for i in range(20)]
    await until(lambda: len(upstream.requests) == 20)
    assert upstream.connections == 1 and upstream.records[0].max_open == 20
    assert s.stat("upstream_rq_active") == 20
    upstream.release()
    for e in exchanges:
        await e.wait()
        assert e.status == "200" and bytes(e.data) == b"ok"
    assert (s.stat("upstream_cx_total"), s.stat("upstream_cx_http2_total")) == (1, 1)
    assert (s.stat("upstream_cx_http1_total"), s.stat("upstream_rq_total")) == (0, 20)
    assert s.stat("upstream_rq_pending_total") == 20  # they all waited for the one connection
    await settle()
    assert (s.stat("upstream_rq_active"), s.stat("upstream_cx_active")) == (1 - 1, 1)
    assert s.stat("http2.nghttp2_upstream_connections") == 1
    assert s.stat("http2.streams_active") == 0
    e = await s.send("/again").wait()  # the connection is reused
    assert e.status == "200" and upstream.connections == 1
    assert [r.stream_id for r in upstream.requests][-1] == 41


async def test_configured_max_concurrent_streams_opens_more_connections(upstream):
    s = Setup(upstream.port, http2={"max_concurrent_streams": 3})
    exchanges = [s.send(f"/r{i}?hold=1") for i in range(7)]
    await until(lambda: len(upstream.requests) == 7)
    assert upstream.connections == 3
    assert sorted(r.max_open for r in upstream.records) == [1, 3, 3]
    upstream.release()
    for e in exchanges:
        assert (await e.wait()).status == "200"
    assert s.stat("upstream_cx_total") == 3


async def test_the_servers_max_concurrent_streams_is_honoured():
    upstream = H2Upstream(max_concurrent_streams=2)
    try:
        s = Setup(upstream.port, breakers={"max_connections": 1})
        assert (await s.send("/first").wait()).status == "200"  # its SETTINGS are known now
        exchanges = [s.send(f"/r{i}?hold=1") for i in range(5)]
        await until(lambda: len(upstream.requests) == 3)
        await asyncio.sleep(0.05)
        assert len(upstream.requests) == 3 and s.pool.pending_count == 3
        assert s.pool.clients(ClientState.BUSY)
        upstream.release()
        for e in exchanges:
            assert (await e.wait()).status == "200"
        assert upstream.connections == 1 and upstream.records[0].max_open == 2
    finally:
        upstream.close()


async def test_a_server_that_speaks_first():
    # Its SETTINGS (one stream at a time) may be read before the connect is reported: the
    # pool must still count the connection's capacity right, and open a second one for B.
    # (Whether they are is a race: ten pools make it likely that some are.)
    upstream = H2Upstream(max_concurrent_streams=1, speak_first=True)
    try:
        for i in range(10):
            s = Setup(upstream.port)
            a = s.send("/a?hold=1")
            await until(lambda n=2 * i + 1: len(upstream.requests) == n)
            b = s.send("/b")
            assert (await b.wait()).status == "200"
            assert upstream.connections == 2 * i + 2
            upstream.release()
            assert (await a.wait()).status == "200"
            upstream.hold()
            s.pool.drain()
    finally:
        upstream.close()


async def test_the_pending_queue_waits_for_a_free_stream(upstream):
    s = Setup(upstream.port, http2={"max_concurrent_streams": 1},
              breakers={"max_connections": 1})  # fmt: skip
    first, second = s.send("/a?hold=1"), s.send("/b")
    await until(lambda: len(upstream.requests) == 1)
    await asyncio.sleep(0.05)
    assert len(upstream.requests) == 1 and s.pool.pending_count == 1
    upstream.release()
    assert (await first.wait()).status == "200"
    assert (await second.wait()).status == "200"
    assert upstream.connections == 1
    assert [r.stream_id for r in upstream.requests] == [1, 3]


async def test_max_requests_per_connection_drains(upstream):
    s = Setup(upstream.port, common={"max_requests_per_connection": 2})
    for _ in range(5):
        assert (await s.send("/").wait()).status == "200"
    assert [r.connection for r in upstream.requests] == [0, 0, 1, 1, 2]
    assert s.stat("upstream_cx_max_requests") == 2
    await upstream.async_wait_for(lambda: sum(r.closed for r in upstream.records) == 2)
    assert s.stat("upstream_cx_destroy_local") == 2
    assert s.stat("upstream_cx_destroy_with_active_rq") == 0


async def test_max_requests_per_connection_caps_concurrency(upstream):
    s = Setup(upstream.port, common={"max_requests_per_connection": 2})
    exchanges = [s.send(f"/r{i}?hold=1") for i in range(4)]
    await until(lambda: len(upstream.requests) == 4)
    assert upstream.connections == 2
    upstream.release()
    for e in exchanges:
        await e.wait()


async def test_idle_timeout_closes_the_connection(upstream):
    s = Setup(upstream.port, common={"idle_timeout": "0.1s"})
    await s.send("/").wait()
    await upstream.async_wait_for(lambda: upstream.records[0].closed)
    assert s.stat("upstream_cx_idle_timeout") == 1
    assert s.stat("upstream_cx_destroy_local") == 1
    await s.send("/").wait()
    assert upstream.connections == 2


# --- GOAWAY ---------------------------------------------------------------------------


async def test_goaway_drains_the_connection(upstream):
    s = Setup(upstream.port)
    held = s.send("/held?hold=1")
    await until(lambda: len(upstream.requests) == 1)
    upstream.goaway(last_stream_id=1)
    await until(lambda: s.stat("upstream_cx_close_notify") == 1)
    assert s.pool.clients(ClientState.DRAINING)
    after = await s.send("/after").wait()  # a new connection: the first takes no stream
    assert after.status == "200" and upstream.requests[-1].connection == 1
    upstream.release()
    assert (await held.wait()).status == "200"
    await upstream.async_wait_for(lambda: upstream.records[0].closed)
    await until(lambda: s.stat("upstream_cx_destroy") == 1)


async def test_goaway_refuses_the_streams_it_leaves_out(upstream):
    s = Setup(upstream.port)
    first = s.send("/first?hold=1")
    await until(lambda: len(upstream.requests) == 1)
    second = s.send("/second?hold=1")
    third = s.send("/third?goaway=1")  # GOAWAY(last stream 1) when its head arrives
    for e in (second, third):
        await e.wait()
        assert e.reset == (StreamResetReason.REMOTE_REFUSED_STREAM_RESET, "")
    assert s.stat("upstream_cx_close_notify") == 1
    upstream.release()
    assert (await first.wait()).status == "200"
    await until(lambda: s.stat("upstream_cx_destroy") == 1)
    assert s.stat("upstream_rq_active") == 0


async def test_goaway_on_an_idle_connection_closes_it(upstream):
    s = Setup(upstream.port)
    await s.send("/").wait()
    upstream.goaway(last_stream_id=1)
    await until(lambda: s.stat("upstream_cx_destroy_local") == 1)
    assert s.stat("upstream_cx_close_notify") == 1


# --- resets and connection errors -------------------------------------------------------


async def test_upstream_reset_mid_response(upstream):
    s = Setup(upstream.port)
    e = await s.send("/?size=1000&rst=2&after=100").wait()
    assert e.status == "200" and len(e.data) == 100
    assert e.reset == (StreamResetReason.REMOTE_RESET, "")
    assert s.stat("upstream_rq_rx_reset") == 1 and s.stat("http2.rx_reset") == 1
    ok = await s.send("/").wait()  # the connection lives on
    assert ok.status == "200" and upstream.connections == 1


async def test_refused_stream(upstream):
    s = Setup(upstream.port)
    e = await s.send("/?refuse=1").wait()
    assert e.reset == (StreamResetReason.REMOTE_REFUSED_STREAM_RESET, "")
    assert e.headers is None


async def test_connection_closed_mid_response_resets_every_stream(upstream):
    s = Setup(upstream.port)
    held = s.send("/held?hold=1")
    await until(lambda: len(upstream.requests) == 1)
    cut = await s.send("/cut?close=1").wait()
    await held.wait()
    assert cut.status == "200" and bytes(cut.data) == b"partial"
    for e in (cut, held):
        assert e.reset == (StreamResetReason.CONNECTION_TERMINATION, "")
    assert s.stat("upstream_cx_destroy_remote_with_active_rq") == 1
    assert s.stat("upstream_rq_pending_failure_eject") == 2
    assert (s.stat("upstream_rq_active"), s.stat("upstream_cx_active")) == (0, 0)


async def test_protocol_error_resets_with_protocol_error(upstream):
    s = Setup(upstream.port)
    held = s.send("/held?hold=1")
    await until(lambda: len(upstream.requests) == 1)
    bad = await s.send("/bad?garbage=1").wait()
    await held.wait()
    for e in (bad, held):
        assert e.reset == (StreamResetReason.PROTOCOL_ERROR, "")
    assert s.stat("upstream_cx_protocol_error") == 1
    assert s.stat("upstream_rq_tx_reset") == 2
    assert s.stat("upstream_cx_destroy_with_active_rq") == 0  # as Envoy counts it
    await upstream.async_wait_for(lambda: upstream.records[0].closed)
    assert upstream.records[0].goaways == [(0, 1)]  # our GOAWAY PROTOCOL_ERROR went out first
    await settle()
    assert (s.stat("upstream_rq_active"), s.stat("upstream_cx_active")) == (0, 0)


async def test_a_stream_reset_in_the_read_that_fails(upstream):
    s = Setup(upstream.port)
    held = s.send("/held?hold=1")
    await until(lambda: len(upstream.requests) == 1)
    reset = await s.send("/r?rst=2&after=-1&garbage=after").wait()
    await held.wait()
    assert reset.reset[0] in (StreamResetReason.REMOTE_RESET, StreamResetReason.PROTOCOL_ERROR)
    assert held.reset == (StreamResetReason.PROTOCOL_ERROR, "")
    await settle()
    assert (s.stat("upstream_rq_active"), s.stat("upstream_cx_active")) == (0, 0)
    assert s.pool.is_idle()


async def test_local_reset_sends_rst_stream_internal_error(upstream):
    s = Setup(upstream.port)
    e = s.send("/?hold=1")
    await until(lambda: len(upstream.requests) == 1)
    e.encoder.reset()
    await upstream.async_wait_for(lambda: upstream.records[0].resets)
    assert upstream.records[0].resets == [(1, 2)]  # INTERNAL_ERROR, as Envoy
    assert s.stat("upstream_rq_tx_reset") == 1 and s.stat("http2.tx_reset") == 1
    await settle()
    assert s.stat("upstream_rq_active") == 0
    assert e.reset is None  # no callback for the router's own reset


async def test_response_before_request_complete_resets_the_stream(upstream):
    s = Setup(upstream.port)
    e = Exchange("/?early=1")
    e.on_pool_ready = lambda encoder, host: _start_body(e, encoder)  # type: ignore[method-assign]
    s.pool.new_stream(e, e)
    await e.wait()
    assert e.status == "200" and bytes(e.data) == b"ok"
    await upstream.async_wait_for(lambda: upstream.records[0].resets)
    assert upstream.records[0].resets == [(1, 2)]  # INTERNAL_ERROR, as Envoy
    assert s.stat("upstream_rq_tx_reset") == 1
    await settle()
    assert s.stat("upstream_rq_active") == 0


def _start_body(e: Exchange, encoder) -> None:
    e.encoder = encoder
    headers = HeaderMap([(":method", "POST"), (":path", e.path), (":authority", "a"),
                         (":scheme", "http")])  # fmt: skip
    encoder.encode_headers(headers, False)
    encoder.encode_data(b"part of the body", False)


async def test_connect_failure_fails_the_pending_streams():
    from legatus.conn_pool import PoolFailureReason
    from tests.support.upstreams import free_port

    s = Setup(free_port())
    a, b = s.send("/"), s.send("/")
    await a.wait()
    await b.wait()
    expected = (PoolFailureReason.REMOTE_CONNECTION_FAILURE,
                "delayed connect error: Connection refused")  # fmt: skip
    assert a.failure == expected and b.failure == expected
    assert s.stat("upstream_cx_connect_fail") == 1


# --- bodies, flow control, trailers -------------------------------------------------------


async def test_large_bodies_both_ways(upstream):
    s = Setup(upstream.port, buffer_limit=65536)
    body = bytes(range(256)) * 20000  # 5 MB
    e = await s.send("/?echo=1", body=body).wait()
    assert e.status == "200" and bytes(e.data) == body
    assert upstream.requests[0].body == body


async def test_a_slow_reader_stops_the_upstream(upstream):
    s = Setup(upstream.port, http2={"initial_stream_window_size": 65535})
    e = Exchange("/?size=1000000")
    e.on_first_data = lambda x: x.encoder.read_disable(True)
    s.pool.new_stream(e, e)
    await until(lambda: len(e.data) > 0)
    await asyncio.sleep(0.2)
    assert len(e.data) <= 65535  # the window, and not a byte more
    e.encoder.read_disable(False)
    await e.wait()
    assert len(e.data) == 1000000


async def test_a_slow_upstream_reader_raises_the_watermark(upstream):
    s = Setup(upstream.port, buffer_limit=16384)
    body = b"x" * 200000
    e = s.send("/?noack=1", body=body)
    await until(lambda: e.ready.is_set())
    # The server never gives its window back: beyond it, the body waits in the stream,
    # past the buffer limit the subscribers hear it (the router pauses the downstream).
    assert e.watermarks == ["above"]
    assert e.encoder.above_high_watermark
    assert s.stat("http2.pending_send_bytes") == 200000 - 65535
    e.encoder.reset()


async def test_trailers_both_ways(upstream):
    s = Setup(upstream.port)
    e = await s.send("/?trailers=1&echo=1", body=b"payload",
                     trailers=[("x-checksum", "abc")]).wait()  # fmt: skip
    assert e.status == "200" and bytes(e.data) == b"payload"
    assert e.trailers is not None
    assert e.trailers.get("x-trailer") == "yes"
    assert e.trailers.get("x-request-trailer-x-checksum") == "abc"
    assert upstream.requests[0].trailers == [("x-checksum", "abc")]


async def test_request_headers_are_translated(upstream):
    s = Setup(upstream.port)
    extra = [("te", "trailers, deflate"), ("keep-alive", "timeout=5"), ("x-a", "b")]
    e = s.send("/?echo=1", body=b"", headers=extra)
    await e.wait()
    request = upstream.requests[0]
    assert request.pseudo == {":method": "POST", ":path": "/?echo=1", ":authority": "backend",
                              ":scheme": "http"}  # fmt: skip
    assert request.regular == [("x-a", "b"), ("te", "trailers")]


async def test_connect_goes_without_scheme_and_path(upstream):
    s = Setup(upstream.port)
    e = Exchange("")
    request = HeaderMap([(":method", "CONNECT"), (":authority", "db.example:5432"),
                         (":scheme", "http")])  # fmt: skip

    def ready(encoder, host) -> None:
        e.encoder = encoder
        assert encoder.encode_headers(request, False) is None
        encoder.encode_data(b"tunnel bytes", True)

    e.on_pool_ready = ready  # type: ignore[method-assign]
    s.pool.new_stream(e, e)
    assert (await e.wait()).status == "200"
    seen = upstream.requests[0]
    assert seen.pseudo == {":method": "CONNECT", ":authority": "db.example:5432"}
    assert seen.body == b"tunnel bytes"
    assert ":scheme" in request  # (the router's map is its own)


async def test_an_upgrade_is_refused_before_anything_is_sent(upstream):
    s = Setup(upstream.port)
    e = Exchange("/ws")
    headers = HeaderMap([(":method", "GET"), (":path", "/ws"), (":authority", "a"),
                         (":scheme", "http"), ("connection", "upgrade"),
                         ("upgrade", "websocket")])  # fmt: skip
    errors = []

    def ready(encoder, host) -> None:
        errors.append(encoder.encode_headers(headers, False))
        encoder.reset()  # what the router does with the error

    e.on_pool_ready = ready  # type: ignore[method-assign]
    s.pool.new_stream(e, e)
    await until(lambda: errors)
    assert "extended CONNECT" in errors[0]
    assert (await s.send("/next").wait()).status == "200"
    assert [r.stream_id for r in upstream.requests] == [1]  # no stream id was spent on it


# --- keepalive ------------------------------------------------------------------------------


async def test_keepalive_pings(upstream):
    s = Setup(upstream.port, http2={"connection_keepalive": {"interval": "0.05s",
                                                              "timeout": "1s"}})  # fmt: skip
    await s.send("/").wait()
    await upstream.async_wait_for(lambda: upstream.records[0].pings >= 2)
    assert s.stat("http2.keepalive_timeout") == 0


async def test_keepalive_timeout_closes_a_silent_connection():
    # A peer that accepts and never speaks: no SETTINGS, no PING ACK.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        s = Setup(port, http2={"connection_keepalive": {"interval": "0.05s",
                                                         "timeout": "0.1s"}})  # fmt: skip
        e = await s.send("/").wait()
        assert e.reset == (StreamResetReason.CONNECTION_TERMINATION, "")
        assert s.stat("http2.keepalive_timeout") == 1
    finally:
        server.close()


# --- memory ------------------------------------------------------------------------------


async def test_ended_streams_and_connections_leave_no_reference_cycles(upstream):
    """A stream and its connection are freed by reference counting as they end: the codec's
    stream names its encoder, and the codec its client, until then (cycles that would leave
    every request to the cyclic collector)."""
    s = Setup(upstream.port, common={"max_requests_per_connection": 2})
    gc.collect()
    gc.disable()
    try:
        for i in range(4):
            e = await s.send(f"/r{i}").wait()
            assert e.status == "200"
            e.encoder.remove_callbacks(e)  # as the router lets go at the end of its request
            e.encoder = None
        await until(lambda: s.stat("upstream_cx_destroy") == 2)
        await settle()
        del e
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        ours = {type(o).__name__ for o in gc.garbage if type(o).__module__.startswith("legatus")}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert upstream.connections == 2
    assert not ours, sorted(ours)
