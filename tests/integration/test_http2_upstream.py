"""HTTP clients (curl, httpx, raw sockets) through a running legatus to an HTTP/2 upstream.

The cluster speaks HTTP/2 (``explicit_http_config.http2_protocol_options``, or
``use_downstream_protocol_config``) to an ``H2Upstream`` (tests/support/h2_upstream.py),
which answers as each request's query string says. What the differential suite compares
with Envoy is not repeated here; these tests hold multiplexing, limits, flow control with
real clients, and the protocol selection.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.h2_upstream import H2Upstream
from tests.support.http_upstream import http_proxy_config
from tests.support.process import start_proxy, wait_for
from tests.support.tls import TlsFiles, upstream_tls

HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def h2_config(port: int, *, http2: dict | None = None, common: dict | None = None,
              protocol: dict | None = None, **kw) -> dict:  # fmt: skip
    options: dict = {"@type": f"type.googleapis.com/{HPO}"}
    options.update(protocol or {"explicit_http_config": {"http2_protocol_options": http2 or {}}})
    if common:
        options["common_http_protocol_options"] = common
    config = http_proxy_config(port, **kw)
    config["static_resources"]["clusters"][0]["typed_extension_protocol_options"] = {HPO: options}
    return config


@pytest.fixture
def upstream():
    server = H2Upstream()
    yield server
    server.close()


def _start(tmp_path, config):
    return start_proxy(config, tmp_path, args=["--concurrency", "1"])


def test_curl_through_to_an_http2_upstream(tmp_path, upstream):
    proxy = _start(tmp_path, h2_config(upstream.port))
    try:
        port = proxy.listener_port("http")
        out = subprocess.run(
            ["curl", "-sS", "-i", "-H", "te: trailers", "-H", "x-custom: 1", "-H",
             "connection: keep-alive", f"http://127.0.0.1:{port}/path?q=1"],
            capture_output=True, timeout=10,
        )  # fmt: skip
        head, _, body = out.stdout.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and body == b"ok"
        assert b"x-upstream-stream: 1" in head and b"transfer-encoding: chunked" in head
        request = upstream.requests[0]
        assert request.protocol == "HTTP/2"
        assert request.pseudo == {":method": "GET", ":path": "/path?q=1", ":scheme": "http",
                                  ":authority": f"127.0.0.1:{port}"}  # fmt: skip
        names = [name for name, _ in request.regular]
        assert "connection" not in names and "keep-alive" not in names
        assert ("te", "trailers") in request.regular and ("x-custom", "1") in request.regular
        stats = proxy.stats()
        assert stats["cluster.backend.upstream_cx_http2_total"] == 1
        assert stats["cluster.backend.upstream_cx_http1_total"] == 0
        assert stats["cluster.backend.http2.nghttp2_upstream_connections"] == 1
        assert stats["cluster.backend.upstream_rq_200"] == 1
    finally:
        proxy.stop()


def test_a_grpc_request_keeps_its_headers(tmp_path, upstream):
    proxy = _start(tmp_path, h2_config(upstream.port))
    try:
        port = proxy.listener_port("http")
        r = httpx.post(f"http://127.0.0.1:{port}/svc.Echo/Call?echo=1&trailers=1",
                       content=b"\x00\x00\x00\x00\x02hi",
                       headers={"content-type": "application/grpc", "grpc-timeout": "300m",
                                "te": "trailers"})  # fmt: skip
        assert r.status_code == 200 and r.content == b"\x00\x00\x00\x00\x02hi"
        regular = dict(upstream.requests[0].regular)
        assert regular["grpc-timeout"] == "300m" and regular["te"] == "trailers"
        assert regular["content-type"] == "application/grpc"
    finally:
        proxy.stop()


def test_concurrent_requests_are_multiplexed_on_one_connection(tmp_path, upstream):
    proxy = _start(tmp_path, h2_config(upstream.port))
    try:
        port = proxy.listener_port("http")
        assert httpx.get(f"http://127.0.0.1:{port}/warm").status_code == 200
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(httpx.get, f"http://127.0.0.1:{port}/r{i}?hold=1",
                                   timeout=10) for i in range(16)]  # fmt: skip
            assert upstream.wait_for(lambda: len(upstream.requests) == 17)
            upstream.release()
            assert [f.result().status_code for f in futures] == [200] * 16
        assert upstream.connections == 1 and upstream.records[0].max_open == 16
        stats = proxy.stats()
        assert stats["cluster.backend.upstream_cx_total"] == 1
        assert stats["cluster.backend.upstream_rq_total"] == 17
    finally:
        proxy.stop()


def test_max_concurrent_streams_is_honoured(tmp_path, upstream):
    proxy = _start(tmp_path, h2_config(upstream.port, http2={"max_concurrent_streams": 2}))
    try:
        port = proxy.listener_port("http")
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(httpx.get, f"http://127.0.0.1:{port}/r{i}?hold=1",
                                   timeout=10) for i in range(6)]  # fmt: skip
            assert upstream.wait_for(lambda: len(upstream.requests) == 6)
            upstream.release()
            assert [f.result().status_code for f in futures] == [200] * 6
        assert upstream.connections == 3
        assert [r.max_open for r in upstream.records] == [2, 2, 2]
        assert proxy.stats()["cluster.backend.upstream_cx_total"] == 3
    finally:
        proxy.stop()


def test_max_requests_per_connection(tmp_path, upstream):
    proxy = _start(tmp_path, h2_config(upstream.port, common={"max_requests_per_connection": 3}))
    try:
        port = proxy.listener_port("http")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            for i in range(7):
                assert client.get(f"/r{i}").status_code == 200
        assert [r.connection for r in upstream.requests] == [0, 0, 0, 1, 1, 1, 2]
        assert [r.stream_id for r in upstream.requests] == [1, 3, 5, 1, 3, 5, 1]
        wait_for(lambda: proxy.stats()["cluster.backend.upstream_cx_destroy"] == 2)
        assert proxy.stats()["cluster.backend.upstream_cx_max_requests"] == 2
    finally:
        proxy.stop()


def test_goaway_refused_streams_are_retried(tmp_path, upstream):
    routes = [{"match": {"prefix": "/"}, "route": {
        "cluster": "backend",
        "retry_policy": {"retry_on": "refused-stream", "num_retries": 2}}}]  # fmt: skip
    proxy = _start(tmp_path, h2_config(upstream.port, routes=routes))
    try:
        port = proxy.listener_port("http")
        with ThreadPoolExecutor(2) as pool:
            held = pool.submit(httpx.get, f"http://127.0.0.1:{port}/held?hold=1", timeout=10)
            assert upstream.wait_for(lambda: len(upstream.requests) == 1)
            # The upstream's GOAWAY keeps stream 1 only: the second request (stream 3) is
            # refused, then retried on a new connection.
            refused = pool.submit(httpx.get, f"http://127.0.0.1:{port}/goaway?goaway=1",
                                  timeout=10)  # fmt: skip
            assert upstream.wait_for(lambda: len(upstream.requests) == 3)
            upstream.release()
            assert held.result().status_code == 200
            assert refused.result().status_code == 200
        assert [(r.connection, r.stream_id) for r in upstream.requests] == [(0, 1), (0, 3),
                                                                            (1, 1)]  # fmt: skip
        stats = proxy.stats()
        assert stats["cluster.backend.upstream_cx_close_notify"] == 2
        assert stats["cluster.backend.upstream_rq_retry"] == 1
        assert stats["cluster.backend.upstream_rq_retry_success"] == 1
    finally:
        proxy.stop()


def test_refused_stream_without_retry_is_a_503(tmp_path, upstream):
    proxy = _start(tmp_path, h2_config(upstream.port))
    try:
        port = proxy.listener_port("http")
        r = httpx.get(f"http://127.0.0.1:{port}/?refuse=1")
        assert r.status_code == 503
        assert r.text == ("upstream connect error or disconnect/reset before headers. reset "
                          "reason: remote refused stream reset")  # fmt: skip
    finally:
        proxy.stop()


def test_upstream_reset_mid_response_resets_the_client(tmp_path, upstream):
    proxy = _start(tmp_path, h2_config(upstream.port))
    try:
        port = proxy.listener_port("http")
        out = subprocess.run(["curl", "-sS", f"http://127.0.0.1:{port}/?size=100000&rst=2&after=500"],
                             capture_output=True, timeout=10)  # fmt: skip
        assert out.returncode != 0 and len(out.stdout) == 500
        r = httpx.get(f"http://127.0.0.1:{port}/?rst=2&after=-1")
        assert r.status_code == 503 and r.text.endswith("reset reason: remote reset")
        stats = proxy.stats()
        assert stats["cluster.backend.upstream_rq_rx_reset"] == 2
        assert stats["http.ingress.downstream_rq_tx_reset"] == 1  # the client's stream
        assert stats["cluster.backend.upstream_cx_total"] == 1  # the connection lived on
    finally:
        proxy.stop()


def test_large_bodies_both_ways(tmp_path, upstream):
    proxy = _start(tmp_path, h2_config(upstream.port))
    try:
        port = proxy.listener_port("http")
        body = tmp_path / "body"
        payload = bytes(range(256)) * 40_000  # 10 MB
        body.write_bytes(payload)
        out = subprocess.run(["curl", "-sS", "--data-binary", f"@{body}",
                              f"http://127.0.0.1:{port}/up?echo=1"],
                             capture_output=True, timeout=30)  # fmt: skip
        assert out.stdout == payload
        chunked = subprocess.run(["curl", "-sS", "-H", "transfer-encoding: chunked",
                                  "--data-binary", f"@{body}",
                                  f"http://127.0.0.1:{port}/up?echo=1"],
                                 capture_output=True, timeout=30)  # fmt: skip
        assert chunked.stdout == payload
        down = subprocess.run(["curl", "-sS", f"http://127.0.0.1:{port}/down?size=20000000"],
                              capture_output=True, timeout=30)  # fmt: skip
        assert len(down.stdout) == 20_000_000
        assert upstream.requests[0].body == payload and upstream.requests[1].body == payload
    finally:
        proxy.stop()


def test_a_slow_client_stops_the_upstream_stream(tmp_path, upstream):
    # Small windows and buffers: what the proxy holds for a client that does not read is
    # bounded by them, and the upstream is told to stop (its window is not given back).
    windows = {"initial_stream_window_size": 65535, "initial_connection_window_size": 1 << 20}
    config = h2_config(upstream.port, http2=windows)
    config["static_resources"]["clusters"][0]["per_connection_buffer_limit_bytes"] = 65536
    config["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] = 65536
    proxy = _start(tmp_path, config)
    try:
        port = proxy.listener_port("http")
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET /big?size=30000000 HTTP/1.1\r\nhost: x\r\n\r\n")
        wait_for(lambda: proxy.stats()["cluster.backend.upstream_flow_control_paused_reading_total"]
                 >= 1, what="the proxy pausing the upstream stream")  # fmt: skip
        time.sleep(0.3)
        sent = proxy.stats()["cluster.backend.upstream_cx_rx_bytes_total"]
        time.sleep(0.3)
        assert proxy.stats()["cluster.backend.upstream_cx_rx_bytes_total"] == sent
        assert sent < 30_000_000 // 4  # the upstream was stopped well before the end
        received = 0
        sock.settimeout(10)
        while received < 30_000_000:
            data = sock.recv(1 << 20)
            assert data
            received += len(data)
        sock.close()
        assert proxy.stats()["cluster.backend.upstream_flow_control_resumed_reading_total"] >= 1
    finally:
        proxy.stop()


def test_a_slow_upstream_reader_stops_the_client(tmp_path, upstream):
    # The upstream never gives its window back: past its 64 KiB and the buffer limit, the
    # proxy stops reading the client, whose upload then stalls.
    config = h2_config(upstream.port)
    config["static_resources"]["clusters"][0]["per_connection_buffer_limit_bytes"] = 65536
    config["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] = 65536
    proxy = _start(tmp_path, config)
    try:
        port = proxy.listener_port("http")
        size = 50_000_000
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        sock.sendall(b"POST /up?noack=1 HTTP/1.1\r\nhost: x\r\n"
                     b"content-length: %d\r\n\r\n" % size)  # fmt: skip
        sock.settimeout(1.0)
        sent = 0
        chunk = b"x" * 65536
        try:
            while sent < size:
                sent += sock.send(chunk)
        except TimeoutError:
            pass
        assert sent < size // 5  # held back by the proxy, not read to the end
        stats = proxy.stats()
        assert stats["cluster.backend.upstream_flow_control_backed_up_total"] >= 1
        assert stats["http.ingress.downstream_flow_control_paused_reading_total"] >= 1
        assert len(upstream.requests[0].body) <= 65535
        sock.close()
    finally:
        proxy.stop()


def test_trailers_both_ways(tmp_path, upstream):
    config = h2_config(upstream.port, hcm={"http_protocol_options": {"enable_trailers": True}})
    proxy = _start(tmp_path, config)
    try:
        port = proxy.listener_port("http")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /t?echo=1&trailers=1 HTTP/1.1\r\nhost: x\r\n"
                         b"transfer-encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n"
                         b"x-checksum: abc\r\n\r\n")  # fmt: skip
            data = b""
            while not data.endswith(b"\r\n\r\n") or b"\r\n0\r\n" not in data:
                chunk = sock.recv(65536)
                assert chunk
                data += chunk
        assert b"\r\n4\r\nbody\r\n0\r\n" in data
        assert b"x-trailer: yes\r\n" in data and b"x-request-trailer-x-checksum: abc\r\n" in data
        assert upstream.requests[0].trailers == [("x-checksum", "abc")]
        assert upstream.requests[0].body == b"body"
    finally:
        proxy.stop()


def test_use_downstream_protocol_config(tmp_path, upstream):
    protocol = {"use_downstream_protocol_config": {}}
    config = h2_config(upstream.port, hcm={"codec_type": "AUTO"}, protocol=protocol)
    proxy = _start(tmp_path, config)
    try:
        port = proxy.listener_port("http")
        h1 = subprocess.run(["curl", "-sS", f"http://127.0.0.1:{port}/one"],
                            capture_output=True, timeout=10)  # fmt: skip
        h2 = subprocess.run(["curl", "-sS", "--http2-prior-knowledge",
                             f"http://127.0.0.1:{port}/two"],
                            capture_output=True, timeout=10)  # fmt: skip
        assert h1.stdout == b"http1" and h2.stdout == b"ok"
        assert [r.protocol for r in upstream.requests] == ["HTTP/1.1", "HTTP/2"]
        stats = proxy.stats()
        assert stats["cluster.backend.upstream_cx_http1_total"] == 1
        assert stats["cluster.backend.upstream_cx_http2_total"] == 1
        assert stats["cluster.backend.upstream_cx_total"] == 2  # one pool per protocol
    finally:
        proxy.stop()


def test_tls_upstream_gets_alpn_h2(tmp_path):
    # The cluster's TLS context names no ALPN protocol: an HTTP/2 pool offers h2 (Envoy's
    # ALPN fallback), which a server that requires it accepts.
    files = TlsFiles.make(tmp_path / "certs")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(*files.server)
    server_ctx.set_alpn_protocols(["h2"])
    upstream = H2Upstream(ssl_context=server_ctx)
    try:
        config = h2_config(upstream.port)
        cluster = config["static_resources"]["clusters"][0]
        cluster["transport_socket"] = upstream_tls(sni="localhost", ca=files.ca_path)
        proxy = _start(tmp_path, config)
        try:
            port = proxy.listener_port("http")
            assert httpx.get(f"http://127.0.0.1:{port}/tls").text == "ok"
            assert upstream.records[0].alpn == "h2"
            assert upstream.requests[0].pseudo[":scheme"] == "http"  # (the request's own)
            assert proxy.stats()["cluster.backend.ssl.handshake"] == 1
        finally:
            proxy.stop()
    finally:
        upstream.close()


def test_auto_config_needs_an_alpn_transport_socket(tmp_path, upstream):
    """auto_config chooses the protocol by ALPN: a plaintext cluster is refused with Envoy's
    message (the ALPN cases are in tests/differential/test_upstream_auto_config_envoy.py)."""
    config = h2_config(upstream.port, protocol={"auto_config": {}})
    with pytest.raises(RuntimeError) as e:
        _start(tmp_path, config)
    assert "auto_config: ALPN configured for cluster backend which has a non-ALPN transport" in (
        str(e.value)
    )
