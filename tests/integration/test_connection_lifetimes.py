"""Connections through the HTTP connection manager are freed by reference counting as they
close, in the test's own event loop: a listener built as a worker builds it, real clients on
127.0.0.1, and then nothing of legatus's left for the cyclic collector.

A worker's collector walks every tracked object, and under connection churn it used to run
for a third of the worker's time (docs/architecture.md, Workers). What each test checks:
the objects of the connections it made and closed that only the collector could free, for
HTTP/1, HTTP/2 and TLS downstream, the router and its HTTP/1 pool, retries and mirrors, a
rate limit service's gRPC calls, WebSocket upgrades and tcp_proxy.
"""

from __future__ import annotations

import asyncio
import random

import h2.config
import h2.connection
import h2.events
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from legatus.config.factory_context import FactoryContext
from legatus.config.proto_json import parse
from legatus.extensions.registry import default_registry
from legatus.network.address import SocketAddress
from legatus.network.listener import ActiveListener, bind_socket, compile_listener
from legatus.router.rds import RouteConfigProviderManager
from legatus.server.options import parse as parse_options
from legatus.server.server_health import ServerHealth
from legatus.stats.store import Store
from legatus.upstream.cluster import HostConfig, compile_cluster
from legatus.upstream.thread_local_cluster import ThreadLocalClusterManager
from tests.support.fake_rls import FakeRateLimitService
from tests.support.garbage import left_to_the_collector
from tests.support.http_upstream import HttpUpstream
from tests.support.tls import TlsFiles, client_context, downstream_tls
from tests.support.upstreams import EchoServer
from tests.support.websocket_upstream import WebSocketUpstream

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _listener(filters: list[dict], transport_socket: dict | None = None):
    """A listener on 127.0.0.1 with one filter chain of ``filters``."""
    chain_tls = {"transport_socket": transport_socket} if transport_socket else {}
    return parse({
        "name": "lifetimes",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": filters, **chain_tls}],
    }, listener_pb2.Listener)  # fmt: skip


def _hcm(action: dict, filters: tuple[dict, ...] = (), **hcm) -> list[dict]:
    """An HTTP connection manager whose one route does ``action`` (``{"route": ...}`` or
    ``{"direct_response": ...}``); ``filters``: HTTP filters before the router."""
    return [{
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": HCM + "HttpConnectionManager",
            "stat_prefix": "lifetimes",
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, **action},
            ]}]},
            "http_filters": [*filters, {"name": "envoy.filters.http.router",
                                        "typed_config": {"@type": ROUTER}}],
            **hcm,
        },
    }]  # fmt: skip


def _hcm_to(cluster: str, route: dict | None = None, **kw) -> list[dict]:
    """An HTTP connection manager routing everything to ``cluster`` (``route``: more of the
    RouteAction)."""
    return _hcm({"route": {"cluster": cluster, **(route or {})}}, **kw)


# A direct response: the connection manager alone, no upstream.
DIRECT = _hcm({"direct_response": {"status": 200, "body": {"inline_string": "ok"}}})


async def _start(
    transport_socket: dict | None = None,
    *,
    proto=None,
    clusters: dict[str, int] | None = None,
    cluster_options: dict[str, dict] | None = None,
) -> tuple[ActiveListener, int]:
    """A listener (``proto``, else the direct-response one) as a worker starts it, with
    ``clusters`` (name -> port of its one host on 127.0.0.1; ``cluster_options``: more of a
    cluster's fields, by name)."""
    cluster_options = cluster_options or {}
    loop = asyncio.get_running_loop()
    store, rng = Store(), random.Random(1)
    cluster_manager = ThreadLocalClusterManager(store, rng, loop)
    for name, port in (clusters or {}).items():
        document = {"name": name, "connect_timeout": "1s", **cluster_options.get(name, {})}
        cluster_proto = parse(document, cluster_pb2.Cluster)
        host = HostConfig(address=SocketAddress("127.0.0.1", port), hostname="", weight=1,
                          priority=0)  # fmt: skip
        cluster_manager.add_or_update(compile_cluster(cluster_proto, f"cluster {name}"), (host,))
    context = FactoryContext(
        registry=default_registry(),
        store=store,
        options=parse_options(["-c", "unused.yaml"]),
        random=rng,
        loop=loop,
        cluster_manager=cluster_manager,
        cluster_names=frozenset(clusters or ()),
        route_config_providers=RouteConfigProviderManager(),
        server_health=ServerHealth(),
    )
    proto = proto if proto is not None else _listener(DIRECT, transport_socket)
    config = compile_listener(proto, context, "listener lifetimes")
    active = ActiveListener(config, context, 0)
    sock = bind_socket(SocketAddress("127.0.0.1", 0), reuse_port=False, listen=True)
    await active.start(sock)
    return active, sock.getsockname()[1]


async def _until_closed(active: ActiveListener) -> None:
    for _ in range(1000):  # (10 s at most)
        if not active.connections:
            break
        await asyncio.sleep(0.01)
    assert not active.connections
    for _ in range(5):  # what the closes scheduled (transports, timers)
        await asyncio.sleep(0)


async def _left_for_the_collector(traffic, transport_socket: dict | None = None, **kw) -> set[str]:
    """Run ``traffic(port)`` against a fresh listener, wait until its connections are gone,
    and name the legatus objects that only the cyclic collector could free (upstream
    connections kept alive in their pools are not garbage)."""
    active, port = await _start(transport_socket, **kw)
    try:
        with left_to_the_collector("legatus") as found:
            await traffic(port)
            await _until_closed(active)
        return found
    finally:
        active.stop()


async def _http1(port: int, request: bytes, *, half_close: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    response = await reader.readuntil(b"ok")
    if half_close:
        writer.write_eof()
    await reader.read()  # to the proxy's close
    writer.close()
    await writer.wait_closed()
    return response


async def test_http1_connections_leave_no_reference_cycles():
    async def traffic(port: int) -> None:
        # keep-alive then the client closes; the client asks for the close (a delayed close
        # ended by the client's FIN); a 400 (a codec error's local reply).
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(3):
                writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                await reader.readuntil(b"ok")
            writer.close()
            await writer.wait_closed()
        for _ in range(3):
            got = await _http1(
                port, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n", half_close=True
            )
            assert got.startswith(b"HTTP/1.1 200 OK")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n")
        assert (await reader.read()).startswith(b"HTTP/1.1 400 Bad Request")
        writer.close()
        await writer.wait_closed()

    assert await _left_for_the_collector(traffic) == set()


async def test_http2_connections_leave_no_reference_cycles():
    async def one_connection(port: int, streams: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        ended = 0
        for i in range(streams):
            client.send_headers(1 + 2 * i, [(":method", "GET"), (":path", "/"),
                                            (":scheme", "http"), (":authority", "x")],
                                end_stream=True)  # fmt: skip
        writer.write(client.data_to_send())
        while ended < streams:
            data = await reader.read(65536)
            assert data, "the proxy closed early"
            for event in client.receive_data(data):
                if isinstance(event, h2.events.StreamEnded):
                    ended += 1
            writer.write(client.data_to_send())
        client.close_connection()
        writer.write(client.data_to_send())
        writer.close()
        await writer.wait_closed()

    async def traffic(port: int) -> None:
        for streams in (1, 4, 4):
            await one_connection(port, streams)

    assert await _left_for_the_collector(traffic) == set()


async def test_tls_connections_leave_no_reference_cycles(tmp_path):
    """The TLS transport and its connection name each other until the close; HTTP/1 and,
    by ALPN, HTTP/2 over it."""
    files = TlsFiles.make(tmp_path)
    tls = downstream_tls(files.server, alpn=["h2", "http/1.1"])

    async def traffic(port: int) -> None:
        for alpn in (["http/1.1"], ["http/1.1"], ["h2"]):
            ctx = client_context(files, alpn=alpn)
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
            )
            if alpn == ["h2"]:
                client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
                client.initiate_connection()
                client.send_headers(1, [(":method", "GET"), (":path", "/"), (":scheme", "https"),
                                        (":authority", "x")], end_stream=True)  # fmt: skip
                writer.write(client.data_to_send())
                done = False
                while not done:
                    data = await reader.read(65536)
                    assert data, "the proxy closed early"
                    done = any(isinstance(e, h2.events.StreamEnded)
                               for e in client.receive_data(data))  # fmt: skip
            else:
                writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200 OK")
            writer.close()
            await writer.wait_closed()

    assert await _left_for_the_collector(traffic, tls) == set()


@pytest.fixture
def upstream():
    server = HttpUpstream()
    yield server
    server.close()


@pytest.fixture
def shadow():
    server = HttpUpstream()
    yield server
    server.close()


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def websocket_upstream():
    server = WebSocketUpstream()
    yield server
    server.close()


@pytest.fixture
def rate_limit_service():
    service = FakeRateLimitService()
    yield service
    service.close()


async def test_websocket_upgrades_leave_no_reference_cycles(websocket_upstream):
    """An upgraded stream (the tunnel through the router and its own upstream connection),
    closed by the client, then by the server."""
    proto = _listener(_hcm_to("ws", upgrade_configs=[{"upgrade_type": "websocket"}]))

    async def traffic(port: int) -> None:
        for path in ("/echo", "/close"):
            async with ws_connect(f"ws://127.0.0.1:{port}{path}") as ws:
                await ws.send("hello")
                assert await ws.recv() == "hello"
                if path == "/close":
                    with pytest.raises(ConnectionClosed):
                        await ws.recv()

    clusters = {"ws": websocket_upstream.port}
    assert await _left_for_the_collector(traffic, proto=proto, clusters=clusters) == set()


async def test_proxied_http1_leaves_no_reference_cycles(upstream):
    """Through the router and the HTTP/1 pool: keep-alive, a client that asks for the close,
    and an upstream that closes without answering (503 UC)."""
    proto = _listener(_hcm_to("backend"))

    async def traffic(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(3):
            writer.write(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n")
            assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200 OK")
        writer.write(b"GET /close HTTP/1.1\r\nhost: x\r\n\r\n")
        assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 503")
        writer.close()
        await writer.wait_closed()
        got = await _http1(port, b"GET /b HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 200 OK")

    clusters = {"backend": upstream.port}
    assert await _left_for_the_collector(traffic, proto=proto, clusters=clusters) == set()


async def test_tcp_proxy_connections_leave_no_reference_cycles(echo):
    proto = _listener([{
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.network."
                                  "tcp_proxy.v3.TcpProxy",
                         "stat_prefix": "lifetimes", "cluster": "echo"},
    }])  # fmt: skip

    async def traffic(port: int) -> None:
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            writer.write_eof()
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()

    clusters = {"echo": echo.port}
    assert await _left_for_the_collector(traffic, proto=proto, clusters=clusters) == set()


async def test_retried_and_mirrored_requests_leave_no_reference_cycles(upstream, shadow):
    """A request retried after an upstream reset (it then fails again: 503 URX), and
    requests mirrored to a shadow cluster."""
    route = {
        "retry_policy": {"retry_on": "reset,5xx", "num_retries": 1},
        "request_mirror_policies": [{"cluster": "shadow"}],
    }
    proto = _listener(_hcm_to("backend", route))

    async def traffic(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for path in (b"/a", b"/close", b"/b"):
            writer.write(b"GET " + path + b" HTTP/1.1\r\nhost: x\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            assert head.startswith(b"HTTP/1.1 503" if path == b"/close" else b"HTTP/1.1 200")
        writer.close()
        await writer.wait_closed()
        for _ in range(100):  # the shadows are answered apart from their requests
            if len(shadow.requests) == 3:
                break
            await asyncio.sleep(0.01)
        assert len(shadow.requests) == 3
        assert [r["path"] for r in upstream.requests] == ["/a", "/close", "/close", "/b"]

    clusters = {"backend": upstream.port, "shadow": shadow.port}
    assert await _left_for_the_collector(traffic, proto=proto, clusters=clusters) == set()


async def test_rate_limit_service_calls_leave_no_reference_cycles(upstream, rate_limit_service):
    """Requests that wait for the rate limit service's answer (a gRPC call over the HTTP/2
    pool of its cluster) before going on."""
    ratelimit = {"name": "envoy.filters.http.ratelimit", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
        "domain": "edge", "timeout": "2s", "failure_mode_deny": True,
        "rate_limit_service": {"transport_api_version": "V3",
                               "grpc_service": {"envoy_grpc": {"cluster_name": "rls"}}},
    }}  # fmt: skip
    route = {"rate_limits": [{"actions": [{"generic_key": {"descriptor_value": "k"}}]}]}
    proto = _listener(_hcm_to("backend", route, filters=(ratelimit,)))
    h2_options = {"typed_extension_protocol_options": {HPO: {
        "@type": f"type.googleapis.com/{HPO}",
        "explicit_http_config": {"http2_protocol_options": {}}}}}  # fmt: skip

    async def traffic(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(3):
            writer.write(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n")
            assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200 OK")
        writer.close()
        await writer.wait_closed()
        assert len(rate_limit_service.calls) == 3

    clusters = {"backend": upstream.port, "rls": rate_limit_service.port}
    left = await _left_for_the_collector(
        traffic, proto=proto, clusters=clusters, cluster_options={"rls": h2_options}
    )
    assert left == set()
