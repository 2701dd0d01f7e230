"""Connections through the HTTP connection manager are freed by reference counting as they
close, in the test's own event loop: a listener built as a worker builds it, real clients on
127.0.0.1, and then nothing of legatus's left for the cyclic collector.

A worker's collector walks every tracked object, and under connection churn it used to run
for a third of the worker's time (docs/architecture.md, Workers). What each test checks:
the objects of the connections it made and closed that only the collector could free.
"""

from __future__ import annotations

import asyncio
import gc
import random

import h2.config
import h2.connection
import h2.events

from legatus.config.factory_context import FactoryContext
from legatus.config.proto_json import parse
from legatus.extensions.registry import default_registry
from legatus.network.address import SocketAddress
from legatus.network.listener import ActiveListener, bind_socket, compile_listener
from legatus.router.rds import RouteConfigProviderManager
from legatus.server.options import parse as parse_options
from legatus.server.server_health import ServerHealth
from legatus.stats.store import Store
from legatus.upstream.thread_local_cluster import ThreadLocalClusterManager
from tests.support.tls import TlsFiles, client_context, downstream_tls

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def _listener_proto(transport_socket: dict | None = None):
    from envoy.config.listener.v3 import listener_pb2

    chain_tls = {"transport_socket": transport_socket} if transport_socket else {}
    return parse({
        "name": "lifetimes",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": HCM + "HttpConnectionManager",
                "stat_prefix": "lifetimes",
                "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                    {"match": {"prefix": "/"},
                     "direct_response": {"status": 200, "body": {"inline_string": "ok"}}},
                ]}]},
                "http_filters": [{"name": "envoy.filters.http.router",
                                  "typed_config": {"@type": ROUTER}}],
            },
        }], **chain_tls}],
    }, listener_pb2.Listener)  # fmt: skip


async def _start(transport_socket: dict | None = None) -> tuple[ActiveListener, int]:
    loop = asyncio.get_running_loop()
    store, rng = Store(), random.Random(1)
    context = FactoryContext(
        registry=default_registry(),
        store=store,
        options=parse_options(["-c", "unused.yaml"]),
        random=rng,
        loop=loop,
        cluster_manager=ThreadLocalClusterManager(store, rng, loop),
        route_config_providers=RouteConfigProviderManager(),
        server_health=ServerHealth(),
    )
    config = compile_listener(_listener_proto(transport_socket), context, "listener lifetimes")
    active = ActiveListener(config, context, 0)
    sock = bind_socket(SocketAddress("127.0.0.1", 0), reuse_port=False, listen=True)
    await active.start(sock)
    return active, sock.getsockname()[1]


async def _until_closed(active: ActiveListener) -> None:
    for _ in range(200):
        if not active.connections:
            break
        await asyncio.sleep(0.01)
    assert not active.connections
    for _ in range(5):  # what the closes scheduled (transports, timers)
        await asyncio.sleep(0)


async def _left_for_the_collector(traffic, transport_socket: dict | None = None) -> set[str]:
    """Run ``traffic(port)`` against a fresh listener, wait until its connections are gone,
    and name the legatus objects that only the cyclic collector could free."""
    active, port = await _start(transport_socket)
    gc.collect()
    gc.disable()
    try:
        await traffic(port)
        await _until_closed(active)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        return {type(o).__name__ for o in gc.garbage if type(o).__module__.startswith("legatus")}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
        active.stop()


async def _http1(port: int, request: bytes, *, half_close: bool = False, ssl=None) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ssl)
    writer.write(request)
    await writer.drain()
    response = await reader.readuntil(b"ok")
    if half_close and ssl is None:
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
