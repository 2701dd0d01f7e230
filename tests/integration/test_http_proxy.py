"""The HTTP connection manager and router end to end: real clients (httpx, curl, raw sockets),
a real upstream, a running legatus, on 127.0.0.1.

What the differential suite compares with Envoy byte for byte is not repeated here; these
tests hold what only legatus can be asked: flow control keeps memory bounded both ways,
keep-alive reuses upstream connections, pipelined requests are answered in order, timeouts
fire, nothing raises in the worker.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time

import httpx
import pytest

from tests.support.http_upstream import HttpUpstream, http_proxy_config
from tests.support.process import rss_bytes, start_proxy, wait_for, workers
from tests.support.upstreams import free_port, static_cluster


@pytest.fixture
def upstream():
    server = HttpUpstream()
    yield server
    server.close()


def _start(tmp_path, config):
    return start_proxy(config, tmp_path, args=["--concurrency", "1"])


def test_keep_alive_requests_reuse_one_upstream_connection(tmp_path, upstream):
    proxy = _start(tmp_path, http_proxy_config(upstream.port))
    try:
        port = proxy.listener_port("http")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            for i in range(5):
                r = client.get(f"/echo/{i}", headers={"x-envoy-retry-on": "5xx"})
                assert r.status_code == 200
                seen = dict(r.json()["headers"])
                assert seen["x-forwarded-proto"] == "http"
                assert seen["x-envoy-expected-rq-timeout-ms"] == "15000"
                assert len(seen["x-request-id"]) == 36
                assert "x-envoy-retry-on" not in seen  # external: x-envoy-* stripped
                assert r.headers["server"] == "envoy"
                assert r.headers["x-envoy-upstream-service-time"].isdigit()
                assert "date" in r.headers
        stats = proxy.stats()
        assert stats["http.ingress.downstream_rq_total"] == 5
        assert stats["http.ingress.downstream_rq_2xx"] == 5
        assert stats["cluster.backend.upstream_rq_200"] == 5
        assert stats["cluster.backend.upstream_cx_total"] == 1
        assert upstream.connections == 1
        _, clusters = proxy.admin("/clusters")
        host = f"backend::127.0.0.1:{upstream.port}::"
        assert f"{host}rq_success::5" in clusters and f"{host}rq_total::5" in clusters
    finally:
        proxy.stop()


def test_bodies_stream_both_ways_with_curl(tmp_path, upstream):
    proxy = _start(tmp_path, http_proxy_config(upstream.port))
    try:
        port = proxy.listener_port("http")
        body = tmp_path / "body"
        body.write_bytes(b"a" * 300_000)
        out = subprocess.run(
            ["curl", "-sS", "--data-binary", f"@{body}", f"http://127.0.0.1:{port}/upload"],
            capture_output=True,
            timeout=10,
        )
        assert out.stdout == b"300000"
        chunked = subprocess.run(
            ["curl", "-sS", "-H", "transfer-encoding: chunked", "--data-binary", f"@{body}",
             f"http://127.0.0.1:{port}/upload"],
            capture_output=True,
            timeout=10,
        )  # fmt: skip
        assert chunked.stdout == b"300000"
        download = subprocess.run(
            ["curl", "-sS", f"http://127.0.0.1:{port}/bytes/2000000"], capture_output=True,
            timeout=10,
        )  # fmt: skip
        assert len(download.stdout) == 2_000_000
    finally:
        proxy.stop()


def test_pipelined_requests_are_answered_in_order(tmp_path, upstream):
    proxy = _start(tmp_path, http_proxy_config(upstream.port))
    try:
        port = proxy.listener_port("http")
        requests = b"".join(b"GET /echo/%d HTTP/1.1\r\nhost: a\r\n\r\n" % i for i in range(4))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(requests)
            data = b""
            while data.count(b"HTTP/1.1 200") < 4 or not data.endswith(b"}"):
                chunk = s.recv(65536)
                assert chunk, data
                data += chunk
        paths = [
            json.loads(part[part.index(b"{") :])["path"] for part in data.split(b"HTTP/1.1")[1:]
        ]
        assert paths == ["/echo/0", "/echo/1", "/echo/2", "/echo/3"]
    finally:
        proxy.stop()


def test_slow_client_pauses_the_upstream_and_memory_stays_bounded(tmp_path, upstream):
    proxy = _start(tmp_path, http_proxy_config(upstream.port))
    try:
        port = proxy.listener_port("http")
        (worker,) = workers(proxy.pid)
        baseline = rss_bytes(worker)
        size = 256 << 20
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.sendall(b"GET /bytes/%d HTTP/1.1\r\nhost: a\r\n\r\n" % size)
            time.sleep(0.5)  # do not read: the proxy's write buffer fills up
            wait_for(
                lambda: (
                    proxy.stats()["cluster.backend.upstream_flow_control_paused_reading_total"] >= 1
                ),
                what="the upstream read to pause",
            )
            received = 0
            peak = rss_bytes(worker)
            while received < size:
                chunk = s.recv(1 << 20)
                assert chunk
                received += len(chunk)
                if received % (16 << 20) < len(chunk):
                    peak = max(peak, rss_bytes(worker))
        assert received >= size
        assert peak - baseline < 48 << 20, (baseline, peak)
        stats = proxy.stats()
        assert stats["cluster.backend.upstream_flow_control_resumed_reading_total"] >= 1
    finally:
        proxy.stop()


def test_slow_upstream_pauses_the_client(tmp_path, upstream):
    proxy = _start(tmp_path, http_proxy_config(upstream.port))
    try:
        port = proxy.listener_port("http")
        size = 64 << 20
        done = threading.Event()
        result: list = []

        def send() -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.sendall(
                    b"POST /upload HTTP/1.1\r\nhost: a\r\nx-slow: 1\r\ncontent-length: %d\r\n\r\n"
                    % size
                )
                piece = b"u" * (1 << 20)
                for _ in range(size // len(piece)):
                    s.sendall(piece)
                result.append(s.recv(4096))
            done.set()

        thread = threading.Thread(target=send, daemon=True)
        thread.start()
        assert done.wait(30)
        assert result and result[0].endswith(str(size).encode())
        stats = proxy.stats()
        assert stats["http.ingress.downstream_flow_control_paused_reading_total"] >= 1
        assert stats["cluster.backend.upstream_flow_control_backed_up_total"] >= 1
    finally:
        proxy.stop()


def test_route_timeout_answers_504_and_frees_the_stream(tmp_path, upstream):
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "backend", "timeout": "0.3s"}}]
    proxy = _start(tmp_path, http_proxy_config(upstream.port, routes=routes))
    try:
        port = proxy.listener_port("http")
        r = httpx.get(f"http://127.0.0.1:{port}/stall", timeout=5)
        assert r.status_code == 504
        assert r.text == "upstream request timeout"
        stats = proxy.stats()
        assert stats["cluster.backend.upstream_rq_timeout"] == 1
        assert stats["cluster.backend.upstream_rq_504"] == 1
        assert stats["http.ingress.downstream_rq_active"] == 0
    finally:
        proxy.stop()


def test_upstream_failures_are_local_replies(tmp_path, upstream):
    dead = static_cluster("dead", free_port())
    routes = [
        {"match": {"prefix": "/dead"}, "route": {"cluster": "dead"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "backend"}},
    ]
    proxy = _start(tmp_path, http_proxy_config(upstream.port, routes=routes, clusters=[dead]))
    try:
        port = proxy.listener_port("http")
        close = httpx.get(f"http://127.0.0.1:{port}/close", timeout=5)
        assert close.status_code == 503
        assert close.text.endswith("reset reason: connection termination")
        garbage = httpx.get(f"http://127.0.0.1:{port}/garbage", timeout=5)
        assert garbage.status_code == 502
        assert garbage.text.endswith("reset reason: protocol error")
        refused = httpx.get(f"http://127.0.0.1:{port}/dead", timeout=5)
        assert refused.status_code == 503
        assert refused.text.endswith("reset reason: remote connection failure")
        stats = proxy.stats()
        assert stats["cluster.backend.upstream_rq_503"] == 1
        assert stats["cluster.backend.upstream_rq_502"] == 1
        assert stats["cluster.dead.upstream_cx_connect_fail"] == 1
    finally:
        proxy.stop()


def test_stream_idle_timeout_and_connection_idle_timeout(tmp_path, upstream):
    hcm = {
        "stream_idle_timeout": "0.3s",
        "common_http_protocol_options": {"idle_timeout": "0.5s"},
        "drain_timeout": "0.2s",
        "delayed_close_timeout": "0.2s",
    }
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "backend", "timeout": "0s"}}]
    proxy = _start(tmp_path, http_proxy_config(upstream.port, routes=routes, hcm=hcm))
    try:
        port = proxy.listener_port("http")
        r = httpx.get(f"http://127.0.0.1:{port}/stall", timeout=5)
        assert r.status_code == 504
        assert r.text == "stream timeout"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /echo HTTP/1.1\r\nhost: a\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
            start = time.monotonic()
            while s.recv(65536):
                pass
            assert 0.3 < time.monotonic() - start < 3
        stats = proxy.stats()
        assert stats["http.ingress.downstream_rq_idle_timeout"] == 1
        assert stats["http.ingress.downstream_cx_idle_timeout"] >= 1
    finally:
        proxy.stop()


def test_max_requests_per_connection_closes_after_the_last(tmp_path, upstream):
    hcm = {"common_http_protocol_options": {"max_requests_per_connection": 2}}
    proxy = _start(tmp_path, http_proxy_config(upstream.port, hcm=hcm))
    try:
        port = proxy.listener_port("http")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            first = s.recv(65536)
            assert b"connection: close" not in first
            s.sendall(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            assert b"connection: close" in data
        assert proxy.stats()["http.ingress.downstream_cx_max_requests_reached"] == 1
    finally:
        proxy.stop()


def test_default_access_log_line(tmp_path, upstream):
    log_path = tmp_path / "access.log"
    hcm = {
        "access_log": [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3."
                    "FileAccessLog",
                    "path": str(log_path),
                },
            }
        ]
    }
    proxy = _start(tmp_path, http_proxy_config(upstream.port, hcm=hcm))
    try:
        port = proxy.listener_port("http")
        r = httpx.get(f"http://127.0.0.1:{port}/echo", headers={"user-agent": "tester"})
        assert r.status_code == 200
    finally:
        proxy.stop()
    line = log_path.read_text()
    assert '"GET /echo HTTP/1.1" 200 - 0 ' in line
    assert '"tester"' in line
    assert f'"127.0.0.1:{upstream.port}"' in line


def test_internal_redirect_is_followed(tmp_path, upstream):
    routes = [
        {
            "match": {"prefix": "/"},
            "route": {
                "cluster": "backend",
                "internal_redirect_policy": {"max_internal_redirects": 2},
            },
        }
    ]
    proxy = _start(tmp_path, http_proxy_config(upstream.port, routes=routes))
    try:
        port = proxy.listener_port("http")
        r = httpx.get(f"http://127.0.0.1:{port}/redirect-to/echo/done", timeout=5)
        assert r.status_code == 200
        seen = dict(r.json()["headers"])
        assert r.json()["path"] == "/echo/done"
        assert seen["x-envoy-original-url"] == f"http://127.0.0.1:{port}/redirect-to/echo/done"
        # Three hops exceed max_internal_redirects: the last redirect reaches the client.
        r = httpx.get(
            f"http://127.0.0.1:{port}/redirect-to/redirect-to/redirect-to/echo", timeout=5
        )
        assert r.status_code == 302
        stats = proxy.stats()
        assert stats["cluster.backend.upstream_internal_redirect_succeeded_total"] == 3
        assert stats["http.ingress.passthrough_internal_redirect_too_many_redirects"] == 1
    finally:
        proxy.stop()


def test_two_workers_share_the_traffic_and_the_stats_add_up(tmp_path, upstream):
    proxy = start_proxy(http_proxy_config(upstream.port), tmp_path, args=["--concurrency", "2"])
    try:
        port = proxy.listener_port("http")
        for _ in range(20):  # a new connection each time: the kernel spreads them
            assert httpx.get(f"http://127.0.0.1:{port}/echo").status_code == 200
        wait_for(
            lambda: proxy.stats()["http.ingress.downstream_rq_2xx"] == 20,
            what="the workers' stats to reach the main process",
        )
        stats = proxy.stats()
        assert stats["cluster.backend.upstream_rq_200"] == 20
        assert stats["http.ingress.downstream_cx_total"] == 20
        assert stats["listener.127.0.0.1_0.http.ingress.downstream_rq_completed"] == 20
    finally:
        proxy.stop()
