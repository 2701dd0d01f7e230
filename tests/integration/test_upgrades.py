"""WebSocket and CONNECT over HTTP/1.1 through a running legatus, with real clients.

The ``websockets`` client talks to a ``websockets`` server through legatus (text and binary
messages, messages far larger than the buffer limits, both close handshakes, refusals);
CONNECT goes through curl's ``--proxytunnel`` and raw sockets, terminated at legatus (a TCP
connection to the cluster's host, ``connect_config``) or proxied to an HTTP/1.1 upstream.
What the differential suite compares with Envoy byte for byte (headers, stats, access log)
is not repeated here; these tests hold what only legatus can be asked: bytes flow both ways
under flow control, the tunnel outlives the route timeout, nothing raises in the worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import subprocess
import sys
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.support.http_upstream import HttpUpstream, http_proxy_config
from tests.support.process import start_proxy, wait_for
from tests.support.upstreams import EchoServer, SinkServer, free_port
from tests.support.websocket_upstream import WebSocketUpstream

WEBSOCKET = [{"upgrade_type": "websocket"}]
CONNECT = [{"upgrade_type": "CONNECT"}]
SMALL_BUFFER = 32 * 1024  # per_connection_buffer_limit_bytes: watermarks every few reads
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


@pytest.fixture
def ws_upstream():
    server = WebSocketUpstream(stall_seconds=3.0)
    yield server
    server.close()


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


def _start(tmp_path, config):
    return start_proxy(config, tmp_path, args=["--concurrency", "1"])


def _small_buffers(config: dict) -> dict:
    """Both connections of every tunnel get a small buffer limit (watermarks fire often)."""
    resources = config["static_resources"]
    for listener in resources["listeners"]:
        listener["per_connection_buffer_limit_bytes"] = SMALL_BUFFER
    for cluster in resources["clusters"]:
        cluster["per_connection_buffer_limit_bytes"] = SMALL_BUFFER
    return config


def _ws_config(port: int, **hcm) -> dict:
    return http_proxy_config(port, hcm={"upgrade_configs": WEBSOCKET, **hcm})


# WebSocket ---------------------------------------------------------------------------------


def test_text_and_binary_messages_echo_and_the_upstream_sees_the_upgrade(tmp_path, ws_upstream):
    proxy = _start(tmp_path, _ws_config(ws_upstream.port))
    try:
        port = proxy.listener_port("http")
        with connect(f"ws://127.0.0.1:{port}/echo", compression=None) as client:
            client.send("héllo")
            assert client.recv(timeout=5) == "héllo"
            client.send(b"\x00\x01\xff" * 1000)
            assert client.recv(timeout=5) == b"\x00\x01\xff" * 1000
            stats = proxy.stats()
            assert stats["http.ingress.downstream_cx_upgrades_total"] == 1
            assert stats["http.ingress.downstream_cx_upgrades_active"] == 1
            assert stats["cluster.backend.upstream_rq_101"] == 1
        path, headers = ws_upstream.requests[0]
        names = [name for name, _ in headers]
        assert path == "/echo"
        assert ("upgrade", "websocket") in headers
        assert ("connection", "Upgrade") in headers
        assert {"sec-websocket-key", "sec-websocket-version", "x-forwarded-proto"} <= set(names)
        wait_for(
            lambda: proxy.stats()["http.ingress.downstream_cx_upgrades_active"] == 0,
            what="the upgraded stream to end",
        )
        stats = proxy.stats()
        # The upstream connection of a tunnel is never given back to the pool.
        assert stats["cluster.backend.upstream_cx_active"] == 0
        assert stats["cluster.backend.upstream_cx_destroy"] == 1
    finally:
        proxy.stop()


def test_large_messages_flow_under_watermarks_both_ways(tmp_path, ws_upstream):
    proxy = _start(tmp_path, _small_buffers(_ws_config(ws_upstream.port)))
    try:
        port = proxy.listener_port("http")
        stats = proxy.stats
        messages = [bytes([i]) * (1 << 20) for i in range(32)]  # 32 MiB, far past any buffer
        with connect(f"ws://127.0.0.1:{port}/stall", max_size=None, compression=None) as client:
            sender = threading.Thread(target=lambda: [client.send(m) for m in messages])
            sender.start()
            # The upstream reads nothing for a while: legatus stops reading the client.
            wait_for(
                lambda: stats()["http.ingress.downstream_flow_control_paused_reading_total"],
                what="the client's read to pause",
            )
            digests = [hashlib.sha256(m).hexdigest() for m in messages]
            assert [client.recv(timeout=30) for _ in messages] == digests
            sender.join(30)
        flood = len(messages) << 20
        with connect(f"ws://127.0.0.1:{port}/flood/{flood}", max_size=None, compression=None) as c:
            # This client reads nothing for a while: legatus stops reading the upstream.
            wait_for(
                lambda: stats()["cluster.backend.upstream_flow_control_paused_reading_total"],
                what="the upstream read to pause",
            )
            received = 0
            while received < flood:
                received += len(c.recv(timeout=30))
            assert received == flood
        counts = stats()
        assert counts["http.ingress.downstream_flow_control_resumed_reading_total"] >= 1
        assert counts["cluster.backend.upstream_flow_control_backed_up_total"] >= 1
        assert counts["cluster.backend.upstream_flow_control_resumed_reading_total"] >= 1
    finally:
        proxy.stop()


def test_close_handshakes_from_either_side(tmp_path, ws_upstream):
    proxy = _start(tmp_path, _ws_config(ws_upstream.port))
    try:
        port = proxy.listener_port("http")
        with connect(f"ws://127.0.0.1:{port}/echo", compression=None, close_timeout=5) as client:
            client.send("x")
            assert client.recv(timeout=5) == "x"
            client.close(1000, "done")
            assert client.close_code == 1000  # the server's answer to our close frame
        assert ws_upstream.closed.wait(5)
        with connect(f"ws://127.0.0.1:{port}/close", compression=None) as client:
            client.send("last")
            assert client.recv(timeout=5) == "last"
            with pytest.raises(ConnectionClosed) as closed:
                client.recv(timeout=5)
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4000, "bye")
        wait_for(
            lambda: proxy.stats()["http.ingress.downstream_cx_upgrades_active"] == 0,
            what="both upgraded streams to end",
        )
        assert proxy.stats()["http.ingress.downstream_cx_upgrades_total"] == 2
    finally:
        proxy.stop()


def test_upgrade_refused_unless_enabled(tmp_path, ws_upstream):
    routes = [
        {"match": {"prefix": "/on"}, "route": {"cluster": "backend", "upgrade_configs": WEBSOCKET}},
        {"match": {"prefix": "/"}, "route": {"cluster": "backend"}},
    ]
    proxy = _start(tmp_path, http_proxy_config(ws_upstream.port, routes=routes))
    try:
        port = proxy.listener_port("http")
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://127.0.0.1:{port}/echo", open_timeout=5)
        assert refused.value.response.status_code == 403
        # The route enables what the connection manager does not.
        with connect(f"ws://127.0.0.1:{port}/on", compression=None) as client:
            client.send("yes")
            assert client.recv(timeout=5) == "yes"
        stats = proxy.stats()
        assert stats["http.ingress.downstream_rq_ws_on_non_ws_route"] == 1
        assert stats["http.ingress.downstream_cx_upgrades_total"] == 1
        assert [path for path, _ in ws_upstream.requests] == ["/on"]
    finally:
        proxy.stop()


def test_a_route_disables_what_the_connection_manager_enables(tmp_path, ws_upstream):
    off = [{"upgrade_type": "WebSocket", "enabled": False}]
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "backend", "upgrade_configs": off}}]
    config = http_proxy_config(ws_upstream.port, routes=routes, hcm={"upgrade_configs": WEBSOCKET})
    proxy = _start(tmp_path, config)
    try:
        port = proxy.listener_port("http")
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://127.0.0.1:{port}/echo", open_timeout=5)
        assert refused.value.response.status_code == 403
        assert ws_upstream.requests == []
    finally:
        proxy.stop()


def test_upstream_refusal_reaches_the_client(tmp_path, ws_upstream):
    proxy = _start(tmp_path, _ws_config(ws_upstream.port))
    try:
        port = proxy.listener_port("http")
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://127.0.0.1:{port}/reject", open_timeout=5)
        response = refused.value.response
        assert response.status_code == 403
        assert response.headers["x-refused"] == "yes"
        assert response.body == b"no"
        wait_for(
            lambda: proxy.stats()["cluster.backend.upstream_cx_active"] == 0,
            what="the upstream connection to close",
        )
    finally:
        proxy.stop()


def test_the_route_timeout_ends_at_the_101_and_idle_timeouts_still_apply(tmp_path, ws_upstream):
    routes = [
        {"match": {"prefix": "/idle"}, "route": {"cluster": "backend", "idle_timeout": "0.4s"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "backend", "timeout": "0.3s"}},
    ]
    config = http_proxy_config(ws_upstream.port, routes=routes, hcm={"upgrade_configs": WEBSOCKET})
    proxy = _start(tmp_path, config)
    try:
        port = proxy.listener_port("http")
        with connect(f"ws://127.0.0.1:{port}/echo", compression=None) as client:
            time.sleep(0.8)  # well past the route timeout
            client.send("still here")
            assert client.recv(timeout=5) == "still here"
        with connect(f"ws://127.0.0.1:{port}/idle", compression=None) as client:
            started = time.monotonic()
            with pytest.raises(ConnectionClosed):
                client.recv(timeout=5)  # nothing moves: the route's idle timeout ends it
            assert 0.3 < time.monotonic() - started < 3.0
        stats = proxy.stats()
        assert stats["http.ingress.downstream_rq_idle_timeout"] == 1
        assert stats["cluster.backend.upstream_rq_timeout"] == 0
    finally:
        proxy.stop()


def test_per_upgrade_filters_replace_the_default_chain(tmp_path, ws_upstream):
    fault = {
        "name": "envoy.filters.http.fault",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
            "abort": {"http_status": 418, "percentage": {"numerator": 100}},
        },
    }
    router = {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}
    upgrades = [
        {"upgrade_type": "websocket"},
        {"upgrade_type": "teapot", "filters": [fault, router]},
    ]
    proxy = _start(tmp_path, http_proxy_config(ws_upstream.port, hcm={"upgrade_configs": upgrades}))
    try:
        port = proxy.listener_port("http")
        with connect(f"ws://127.0.0.1:{port}/echo", compression=None) as client:
            client.send("plain chain")
            assert client.recv(timeout=5) == "plain chain"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(
                b"GET / HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: teapot\r\n\r\n"
            )
            assert s.recv(4096).startswith(b"HTTP/1.1 418 ")
    finally:
        proxy.stop()


# CONNECT ------------------------------------------------------------------------------------


def _connect_config(cluster_port: int, *, terminate: bool = True, allow_post: bool = False):
    upgrade: dict = {"upgrade_type": "CONNECT"}
    if terminate:
        upgrade["connect_config"] = {"allow_post": True} if allow_post else {}
    routes = [
        {"match": {"connect_matcher": {}},
         "route": {"cluster": "backend", "upgrade_configs": [upgrade]}},
        {"match": {"prefix": "/"}, "route": {"cluster": "backend", "upgrade_configs": [upgrade]}},
    ]  # fmt: skip
    return http_proxy_config(cluster_port, routes=routes, hcm={"upgrade_configs": CONNECT})


def _connect(port: int, authority: str = "example.com:443") -> tuple[socket.socket, bytes]:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        assert chunk, head
        head += chunk
    return s, head


def _exchange(s: socket.socket, payload: bytes) -> bytes:
    """Send ``payload`` from one thread while reading its echo in this one."""
    sender = threading.Thread(target=s.sendall, args=(payload,), daemon=True)
    sender.start()
    received = bytearray()
    while len(received) < len(payload):
        chunk = s.recv(1 << 20)
        assert chunk, len(received)
        received += chunk
    sender.join(10)
    return bytes(received)


def test_connect_terminated_here_tunnels_bytes(tmp_path, echo):
    proxy = _start(tmp_path, _connect_config(echo.port))
    try:
        port = proxy.listener_port("http")
        s, head = _connect(port)
        with s:
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"content-length" not in head and b"transfer-encoding" not in head
            payload = bytes(range(256)) * (16 * 1024)  # 4 MiB
            assert _exchange(s, payload) == payload
        stats = proxy.stats()
        assert stats["http.ingress.downstream_cx_upgrades_total"] == 1
        assert stats["cluster.backend.upstream_rq_200"] == 1
        assert stats.get("cluster.backend.upstream_cx_http1_total", 0) == 0  # raw TCP
    finally:
        proxy.stop()


def test_a_slow_connect_target_pauses_the_client(tmp_path):
    sink = SinkServer()
    sink.paused.set()  # reads nothing until resumed
    proxy = _start(tmp_path, _small_buffers(_connect_config(sink.port)))
    try:
        s, head = _connect(proxy.listener_port("http"))
        with s:
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            size = 32 << 20
            sender = threading.Thread(target=s.sendall, args=(b"s" * size,), daemon=True)
            sender.start()
            wait_for(
                lambda: proxy.stats()["http.ingress.downstream_flow_control_paused_reading_total"],
                what="the client's read to pause",
            )
            sink.resumed.set()
            sink.paused.clear()
            sender.join(30)
            wait_for(lambda: sink.received == size, what="every byte to reach the target")
        stats = proxy.stats()
        assert stats["cluster.backend.upstream_flow_control_backed_up_total"] >= 1
        assert stats["http.ingress.downstream_flow_control_resumed_reading_total"] >= 1
    finally:
        proxy.stop()
        sink.close()


def test_curl_proxytunnel_through_a_terminated_connect(tmp_path):
    upstream = HttpUpstream()
    proxy = _start(tmp_path, _connect_config(upstream.port))
    try:
        port = proxy.listener_port("http")
        out = subprocess.run(
            ["curl", "-sS", "--proxytunnel", "-x", f"http://127.0.0.1:{port}",
             f"http://127.0.0.1:{upstream.port}/echo/through"],
            capture_output=True, timeout=10,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert b'"path": "/echo/through"' in out.stdout
        # The request inside the tunnel reached the upstream as curl sent it, untouched.
        assert dict(upstream.requests[0]["headers"]).get("x-forwarded-proto") is None
    finally:
        proxy.stop()
        upstream.close()


def test_connect_to_a_refusing_host_is_503_uf(tmp_path):
    proxy = _start(tmp_path, _connect_config(free_port()))
    try:
        port = proxy.listener_port("http")
        s, head = _connect(port)
        with s:
            assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
            body = s.recv(4096)
            assert body.endswith(b"reset reason: remote connection failure")
        assert proxy.stats()["cluster.backend.upstream_cx_connect_fail"] == 1
    finally:
        proxy.stop()


class _ConnectUpstream:
    """An HTTP/1.1 upstream that accepts CONNECT (200) and then echoes the tunnel's bytes."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.heads: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            conn, _ = self.sock.accept()
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += conn.recv(1)
                self.heads.append(head)
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                while data := conn.recv(65536):
                    conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


def test_connect_without_connect_config_is_proxied_as_connect(tmp_path):
    upstream = _ConnectUpstream()
    proxy = _start(tmp_path, _connect_config(upstream.port, terminate=False))
    try:
        port = proxy.listener_port("http")
        s, head = _connect(port, "tunnel.example:8443")
        with s:
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert _exchange(s, b"through the proxy") == b"through the proxy"
        assert upstream.heads[0].startswith(
            b"CONNECT tunnel.example:8443 HTTP/1.1\r\nhost: tunnel.example:8443\r\n"
        )
    finally:
        proxy.stop()
        upstream.close()


def test_allow_post_sends_the_body_over_tcp(tmp_path, echo):
    proxy = _start(tmp_path, _connect_config(echo.port, allow_post=True))
    try:
        port = proxy.listener_port("http")
        out = subprocess.run(
            ["curl", "-sS", "-i", "--data-binary", "raw bytes", f"http://127.0.0.1:{port}/tcp"],
            capture_output=True, timeout=10,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        head, _, body = out.stdout.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and b"transfer-encoding: chunked" in head
        assert body == b"raw bytes"
    finally:
        proxy.stop()


def test_tunnel_config_errors_name_the_field(tmp_path):
    bad_route = [{"match": {"prefix": "/"}, "route": {"cluster": "backend", "upgrade_configs": [
        {"upgrade_type": "websocket", "connect_config": {}}]}}]  # fmt: skip
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(http_proxy_config(1, routes=bad_route)))
    out = subprocess.run(
        [sys.executable, "-m", "legatus", "--mode", "validate", "-c", str(path)],
        capture_output=True, timeout=30, text=True,
    )  # fmt: skip
    assert out.returncode == 1
    assert "upgrade_configs[0].connect_config" in out.stdout + out.stderr
    assert "Non-CONNECT upgrade type websocket has ConnectConfig" in out.stdout + out.stderr
