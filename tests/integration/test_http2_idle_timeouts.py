"""HTTP/2 idle timers end to end (h2 client, legatus, an HTTP/1.1 upstream that stalls).

An HTTP/2 connection keeps its streams' idle deadlines as numbers under one timer: each
stream must still time out at its own deadline (moved by its own activity, or set by its
route), and the connection's ``idle_timeout`` must count from the start of its last idle
period, however many came before.
"""

from __future__ import annotations

import socket
import time

import h2.config
import h2.connection
import h2.events
import pytest

from tests.support.http_upstream import HttpUpstream, http_proxy_config
from tests.support.process import start_proxy

GET = [(":method", "GET"), (":scheme", "http"), (":authority", "a.example")]


@pytest.fixture
def upstream():
    server = HttpUpstream()
    yield server
    server.close()


class Client:
    """An HTTP/2 client on a socket, driven by hand; ``poll`` collects what came."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.conn.initiate_connection()
        self.flush()
        self.start = time.monotonic()
        self.statuses: dict[int, tuple[str, float]] = {}  # stream id -> (status, when)
        self.goaways: list[float] = []
        self.closed = False

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def poll(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        while not self.closed and (left := until - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return
            except ConnectionResetError:
                data = b""
            if not data:
                self.closed = True
                return
            for event in self.conn.receive_data(data):
                when = time.monotonic() - self.start
                if isinstance(event, h2.events.ResponseReceived):
                    self.statuses[event.stream_id] = (dict(event.headers)[":status"], when)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    self.goaways.append(when)
            self.flush()

    def close(self) -> None:
        self.sock.close()


def test_each_stream_times_out_at_its_own_idle_deadline(tmp_path, upstream):
    hcm = {"stream_idle_timeout": "0.6s"}
    routes = [
        {
            "match": {"prefix": "/short"},
            "route": {
                "cluster": "backend",
                "timeout": "0s",
                "idle_timeout": "0.2s",
                "prefix_rewrite": "/stall",
            },
        },
        {"match": {"prefix": "/"}, "route": {"cluster": "backend", "timeout": "0s"}},
    ]
    config = http_proxy_config(upstream.port, routes=routes, hcm=hcm)
    proxy = start_proxy(config, tmp_path, args=["--concurrency", "1"])
    client = None
    try:
        client = Client(proxy.listener_port("http"))
        post = [(":method", "POST"), (":scheme", "http"), (":authority", "a"), (":path", "/stall")]
        client.conn.send_headers(1, post)  # its body keeps coming: it stays alive
        client.conn.send_headers(3, [*GET, (":path", "/short")], end_stream=True)
        client.flush()
        client.poll(0.3)
        client.conn.send_headers(5, [*GET, (":path", "/stall")], end_stream=True)
        client.flush()
        for _ in range(6):  # 1.2 s of body, a piece every 0.2 s
            client.conn.send_data(1, b"x")
            client.flush()
            last_body = time.monotonic() - client.start
            client.poll(0.2)
        client.poll(1.5)
        statuses = client.statuses
        assert statuses[3][0] == "504" and statuses[3][1] < 0.6  # the route's 0.2 s
        assert statuses[5][0] == "504" and 0.8 < statuses[5][1] < 1.4  # opened at 0.3
        assert statuses[1][0] == "408"  # (its request never ended)
        assert last_body + 0.5 < statuses[1][1] < last_body + 1.0
        assert proxy.stats()["http.ingress.downstream_rq_idle_timeout"] == 3
    finally:
        if client is not None:
            client.close()
        proxy.stop()


def test_the_connection_idle_timeout_counts_from_its_last_idle_period(tmp_path, upstream):
    hcm = {"common_http_protocol_options": {"idle_timeout": "0.8s"}, "drain_timeout": "0.1s"}
    proxy = start_proxy(
        http_proxy_config(upstream.port, hcm=hcm), tmp_path, args=["--concurrency", "1"]
    )
    client = None
    try:
        client = Client(proxy.listener_port("http"))
        client.poll(0.5)  # idle since the start
        client.conn.send_headers(1, [*GET, (":path", "/echo")], end_stream=True)
        client.flush()
        client.poll(0.2)
        assert client.statuses[1][0] == "200"  # idle again, from about 0.55 s
        assert not client.goaways
        client.poll(2.5)
        assert client.goaways, "the idle connection was not drained"
        assert 1.2 < client.goaways[0] < 2.0  # 0.8 s after the response, not after the start
        assert proxy.stats()["http.ingress.downstream_cx_idle_timeout"] == 1
    finally:
        if client is not None:
            client.close()
        proxy.stop()
