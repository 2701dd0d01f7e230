"""The admin listener over real sockets: httpx as a client, raw sockets for the edge cases.

The expected bytes for refusals (400, 426) are what Envoy 1.40's admin port sends.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field

import httpx
import pytest
from envoy.admin.v3 import server_info_pb2
from envoy.config.bootstrap.v3 import bootstrap_pb2

from legatus.server.admin.context import ServerState
from legatus.server.admin.listener import start_admin
from legatus.stats.store import Store


class _Options:
    def to_proto(self) -> server_info_pb2.CommandLineOptions:
        return server_info_pb2.CommandLineOptions(concurrency=1)


class _LogSink:
    def levels(self) -> dict[str, str]:
        return {"admin": "info"}

    def set_level(self, level: str) -> None: ...

    def set_component_level(self, name: str, level: str) -> None: ...


@dataclass
class _Context:
    options: _Options = field(default_factory=_Options)
    stats: Store = field(default_factory=Store)
    log_sink: _LogSink = field(default_factory=_LogSink)
    bootstrap: bootstrap_pb2.Bootstrap = field(default_factory=bootstrap_pb2.Bootstrap)
    start_time: float = field(default_factory=time.time)
    state: ServerState = ServerState.LIVE
    healthcheck_failed: bool = False
    hot_restart_version: str = "11.104"
    shutdowns: int = 0

    async def refresh_stats(self) -> None:
        await asyncio.sleep(0)

    def listeners(self) -> list:
        return []

    def clusters(self) -> list:
        return []

    def shutdown(self) -> None:
        self.shutdowns += 1

    def set_healthcheck_failed(self, failed: bool) -> None:
        self.healthcheck_failed = failed

    def reopen_logs(self) -> None: ...


@pytest.fixture
async def admin():
    context = _Context()
    context.stats.gauge("server.live").set(1)
    server, port = await start_admin(context, "127.0.0.1", 0)
    yield context, port
    server.close()
    await server.wait_closed()


async def _raw(port: int, data: bytes, *, until_eof: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        if until_eof:
            return await asyncio.wait_for(reader.read(), 5)
        out = b""
        while b"\r\n\r\n" not in out:  # one response's head, then its body
            out += await asyncio.wait_for(reader.read(65536), 5)
        return out
    finally:
        writer.close()


async def test_get_post_404_405(admin):
    context, port = admin
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        r = await client.get("/ready")
        assert (r.status_code, r.text) == (200, "LIVE\n")
        assert r.headers["content-type"] == "text/plain; charset=UTF-8"
        assert r.headers["cache-control"] == "no-cache, max-age=0"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["server"] == "envoy"
        assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", r.headers["date"])
        r = await client.get("/stats?filter=^server")
        assert r.text == "server.live: 1\n"
        r = await client.get("/stats?filter=^listener.admin.(http|downstream_cx_total)")
        # The admin listener counts itself, as Envoy's: this connection, 2 answers so far.
        assert r.text == (
            "listener.admin.downstream_cx_total: 1\n"
            "listener.admin.http.admin.downstream_rq_1xx: 0\n"
            "listener.admin.http.admin.downstream_rq_2xx: 2\n"
            "listener.admin.http.admin.downstream_rq_3xx: 0\n"
            "listener.admin.http.admin.downstream_rq_4xx: 0\n"
            "listener.admin.http.admin.downstream_rq_5xx: 0\n"
            "listener.admin.http.admin.downstream_rq_completed: 2\n"
        )
        r = await client.get("/nope")
        assert r.status_code == 404 and r.text.startswith("invalid path. admin commands are:\n")
        r = await client.get("/healthcheck/fail")
        assert (r.status_code, r.text) == (405, "Method GET not allowed, POST required.")
        assert not context.healthcheck_failed
        r = await client.post("/healthcheck/fail")
        assert (r.status_code, r.text) == (200, "OK\n")
        assert context.healthcheck_failed
        r = await client.get("/ready")
        assert (r.status_code, r.text) == (503, "DRAINING\n")
        r = await client.post("/quitquitquit")
        assert (r.status_code, r.text) == (200, "OK\n")
    assert context.shutdowns == 1


async def test_keep_alive_reuses_one_connection(admin):
    _, port = admin
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        local_addresses = set()
        for path in ("/ready", "/stats", "/server_info", "/ready"):
            r = await client.get(path)
            assert r.status_code == 200
            local_addresses.add(r.extensions["network_stream"].get_extra_info("client_addr"))
        assert len(local_addresses) == 1


async def test_pipelined_requests_answer_in_order(admin):
    _, port = admin
    request = b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /hot_restart_version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    data = await _raw(port, request * 3 + last)
    responses = data.split(b"HTTP/1.1 ")[1:]
    assert len(responses) == 4
    assert all(r.endswith(b"\r\n\r\nLIVE\n") for r in responses[:3])
    assert b"connection: close\r\ncontent-length: 6\r\n\r\n11.104" in responses[3]


async def test_bad_request_is_400_and_close(admin):
    _, port = admin
    data = await _raw(port, b"GARBAGE\r\n\r\n")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"HTTP/1.1 400 Bad Request"
    assert [h.split(b":")[0] for h in head.split(b"\r\n")[1:]] == [
        b"content-length",
        b"content-type",
        b"date",
        b"server",
        b"connection",
    ]
    assert b"connection: close" in head and body == b"Bad Request"


async def test_http10_is_426_and_missing_host_400(admin):
    _, port = admin
    data = await _raw(port, b"GET /ready HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: 16\r\n")
    assert data.endswith(b"connection: close\r\n\r\nUpgrade Required")
    data = await _raw(port, b"GET /ready HTTP/1.1\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\ndate: ")
    assert data.endswith(b"server: envoy\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")


async def test_head_has_no_body(admin):
    _, port = admin
    data = await _raw(port, b"HEAD /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.endswith(b"content-length: 5\r\n\r\n")


async def test_form_post_and_half_close(admin):
    _, port = admin
    body = b"level=debug"
    request = (
        b"POST /logging HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded"
        b"\r\nContent-Length: 11\r\n\r\n" + body
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    writer.write_eof()  # the client is done sending; the answer must still come
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.endswith(b"active loggers:\n  admin: info\n\n")


async def test_expect_100_continue(admin):
    _, port = admin
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /reset_counters HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == (
        b"HTTP/1.1 100 Continue\r\n\r\n"
    )
    writer.write(b"{}")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert await reader.readexactly(3) == b"OK\n"
    writer.close()
