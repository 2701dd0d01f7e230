"""TlsTransport, the asyncio glue, over real loopback sockets with an in-process server."""

from __future__ import annotations

import asyncio
import ssl

from legatus.config.proto_json import parse
from legatus.extensions.transport_sockets.tls.context_config import (
    DownstreamTlsContext,
    compile_downstream,
)
from legatus.extensions.transport_sockets.tls.socket_factory import DownstreamTlsSocketFactory
from legatus.network.connection import Connection
from legatus.network.filter import CloseType, FilterStatus, ReadFilter
from legatus.stats.store import Store
from tests.support.certs import CA
from tests.unit.extensions.transport_sockets.tls_helpers import cert_entry


class _Recorder(ReadFilter):
    def __init__(self, on_new=None):
        self.data = bytearray()
        self.ended = False
        self.on_new = on_new

    def on_new_connection(self):
        if self.on_new is not None:
            self.on_new(self.read_callbacks.connection)
        return FilterStatus.CONTINUE

    def on_data(self, data, end_stream):
        self.data += data
        self.ended = self.ended or end_stream
        return FilterStatus.STOP_ITERATION


async def _server(filter_factory):
    ca = CA()
    leaf = ca.issue("localhost")
    config = compile_downstream(
        parse({"common_tls_context": {"tls_certificates": [cert_entry(leaf)]}},
              DownstreamTlsContext), "tls")  # fmt: skip
    store = Store()
    factory = DownstreamTlsSocketFactory(config, store.scope("listener.t."))
    conns = []

    class _Conn(Connection):
        def connection_made(self, transport):
            super().connection_made(transport)
            conns.append(self)
            factory.attach(self, transport)
            self.add_read_filter(filter_factory())
            self.initialize_read_filters()

    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Conn, "127.0.0.1", 0)
    ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    return server, server.sockets[0].getsockname()[1], ctx, conns, store


async def test_write_and_close_before_the_handshake_are_delivered_after_it():
    """A filter that answers and closes at once (direct_response) on a TLS connection: the
    bytes go out once the handshake is done, then the connection closes cleanly."""

    def answer(conn):
        conn.write(b"hello")
        conn.close(CloseType.FLUSH_WRITE)

    server, port, ctx, _, _ = await _server(lambda: _Recorder(on_new=answer))
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
        )
        assert await asyncio.wait_for(reader.read(), 5) == b"hello"
        writer.close()
    finally:
        server.close()


async def test_half_close_both_ways_and_large_writes():
    recorders = []

    def make():
        recorders.append(_Recorder())
        return recorders[-1]

    server, port, ctx, conns, store = await _server(make)
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
        )
        payload = bytes(range(256)) * 2048  # 512 KiB in many records
        writer.write(payload)
        await writer.drain()
        for _ in range(100):
            if len(recorders[0].data) == len(payload):
                break
            await asyncio.sleep(0.01)
        assert bytes(recorders[0].data) == payload
        conns[0].write(payload, end_stream=False)
        assert await asyncio.wait_for(reader.readexactly(len(payload)), 5) == payload
        conns[0].write(b"", end_stream=True)  # our close_notify then FIN
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert store.get("listener.t.ssl.handshake").value == 1
        writer.close()
    finally:
        server.close()
