"""HTTP/2 downstream (h2c) end to end: real clients (curl, httpx, h2load, the h2 package)
through a running legatus to an HTTP/1.1 upstream, on 127.0.0.1.

What the differential suite compares with Envoy is not repeated; these tests hold what only
legatus can be asked: many streams share one connection, flow control bounds memory both
ways and pauses the other side, the abuse protections close the connection, timers fire.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import struct
import subprocess
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import httpx
import pytest

from tests.support.http_upstream import HttpUpstream, http_proxy_config
from tests.support.process import rss_bytes, start_proxy, wait_for, workers

H2LOAD = shutil.which("h2load")
GET = [(":method", "GET"), (":scheme", "http"), (":authority", "a.example")]


@pytest.fixture
def upstream():
    server = HttpUpstream()
    yield server
    server.close()


def _start(tmp_path, config):
    return start_proxy(config, tmp_path, args=["--concurrency", "1"])


def _curl(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["curl", "-sS", "--http2-prior-knowledge", *args], capture_output=True, timeout=timeout
    )


class RawClient:
    """An HTTP/2 client on a socket, driven by hand (the h2 package)."""

    def __init__(self, port: int, settings: dict | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def events(self, timeout: float = 5.0) -> list:
        self.sock.settimeout(timeout)
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("closed")
        events = self.conn.receive_data(data)
        self.flush()
        return events

    def close(self) -> None:
        self.sock.close()


def test_curl_with_prior_knowledge_get_upload_download(tmp_path, upstream):
    proxy = _start(tmp_path, http_proxy_config(upstream.port))
    try:
        port = proxy.listener_port("http")
        url = f"http://127.0.0.1:{port}"
        out = _curl("-v", f"{url}/echo/h2")
        assert out.returncode == 0, out.stderr
        assert b"< HTTP/2 200" in out.stderr and b"< server: envoy" in out.stderr
        assert b'"path": "/echo/h2"' in out.stdout
        body = tmp_path / "body"
        body.write_bytes(b"a" * 300_000)
        out = _curl("--data-binary", f"@{body}", f"{url}/upload")
        assert out.stdout == b"300000", out.stderr
        out = _curl(f"{url}/bytes/3000000")
        assert len(out.stdout) == 3_000_000
        missing = _curl(
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            f"{url}/echo",
            "-H",
            "x-envoy-upstream-rq-timeout-ms: bad",
        )
        assert missing.stdout == b"200"
        stats = proxy.stats()
        assert stats["http.ingress.downstream_cx_http2_total"] == 4
        assert stats["http.ingress.downstream_rq_http2_total"] == 4
        assert stats["http.ingress.downstream_cx_http1_total"] == 0
        assert stats["http2.nghttp2_downstream_connections"] == 4
        # An HTTP/1.1 client on the same listener (codec AUTO) is still served.
        assert httpx.get(f"{url}/echo/h1", timeout=5).status_code == 200
    finally:
        proxy.stop()


def test_httpx_multiplexes_many_concurrent_requests_on_one_connection(tmp_path, upstream):
    proxy = _start(tmp_path, http_proxy_config(upstream.port))
    try:
        port = proxy.listener_port("http")

        async def run() -> list[httpx.Response]:
            async with httpx.AsyncClient(
                http1=False, http2=True, base_url=f"http://127.0.0.1:{port}"
            ) as client:
                return await asyncio.gather(*(client.get(f"/echo/{i}") for i in range(100)))

        responses = asyncio.run(run())
        assert all(r.status_code == 200 and r.http_version == "HTTP/2" for r in responses)
        assert [r.json()["path"] for r in responses] == [f"/echo/{i}" for i in range(100)]
        stats = proxy.stats()
        assert stats["http.ingress.downstream_cx_http2_total"] == 1
        assert stats["http.ingress.downstream_rq_http2_total"] == 100
        assert stats["http.ingress.downstream_rq_2xx"] == 100
    finally:
        proxy.stop()


def test_h2load_many_streams_per_connection(tmp_path, upstream):
    if H2LOAD is None:
        pytest.fail("h2load is missing: apt-get install nghttp2-client (scripts/setup.sh)")
    proxy = _start(tmp_path, http_proxy_config(upstream.port))
    try:
        port = proxy.listener_port("http")
        out = subprocess.run(
            [H2LOAD, "-n", "2000", "-c", "4", "-m", "16", f"http://127.0.0.1:{port}/echo"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert re.search(
            r"requests: 2000 total, 2000 started, 2000 done, 2000 succeeded", out.stdout
        ), out.stdout
        assert "status codes: 2000 2xx" in out.stdout, out.stdout
        stats = proxy.stats()
        assert stats["http.ingress.downstream_rq_http2_total"] == 2000
        assert stats["http.ingress.downstream_cx_protocol_error"] == 0
    finally:
        proxy.stop()


def test_large_bodies_both_ways_through_small_windows(tmp_path, upstream):
    hcm = {
        "http2_protocol_options": {
            "initial_stream_window_size": 65535,
            "initial_connection_window_size": 65535,
        }
    }
    proxy = _start(tmp_path, http_proxy_config(upstream.port, hcm=hcm))
    try:
        port = proxy.listener_port("http")
        body = tmp_path / "body"
        body.write_bytes(b"u" * 5_000_000)
        url = f"http://127.0.0.1:{port}"
        out = _curl("--data-binary", f"@{body}", f"{url}/upload")
        assert out.stdout == b"5000000", out.stderr
        out = _curl(f"{url}/bytes/20000000")
        assert len(out.stdout) == 20_000_000
    finally:
        proxy.stop()


def test_slow_reader_pauses_the_upstream_and_memory_stays_bounded(tmp_path, upstream):
    proxy = _start(tmp_path, http_proxy_config(upstream.port))
    try:
        port = proxy.listener_port("http")
        (worker,) = workers(proxy.pid)
        baseline = rss_bytes(worker)
        size = 128 << 20
        client = RawClient(port, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535})
        client.conn.send_headers(1, [*GET, (":path", f"/bytes/{size}")], end_stream=True)
        client.flush()
        time.sleep(0.5)  # the stream's window is spent: the proxy holds the rest
        wait_for(
            lambda: proxy.stats()["cluster.backend.upstream_flow_control_paused_reading_total"],
            what="the upstream read to pause",
        )
        received = 0
        peak = rss_bytes(worker)
        while received < size:
            for event in client.events(10):
                if isinstance(event, h2.events.DataReceived):
                    received += len(event.data)
                    client.conn.acknowledge_received_data(event.flow_controlled_length, 1)
            client.flush()
            if received % (16 << 20) < 65536:
                peak = max(peak, rss_bytes(worker))
        client.close()
        assert received == size
        assert peak - baseline < 48 << 20, (baseline, peak)
        assert proxy.stats()["cluster.backend.upstream_flow_control_resumed_reading_total"] >= 1
    finally:
        proxy.stop()


def test_slow_upstream_holds_the_clients_window(tmp_path, upstream):
    hcm = {
        "http2_protocol_options": {
            "initial_stream_window_size": 65535,
            "initial_connection_window_size": 65535,
        }
    }
    listener = {"per_connection_buffer_limit_bytes": 32768}
    config = http_proxy_config(upstream.port, hcm=hcm, listener=listener)
    config["static_resources"]["clusters"][0]["per_connection_buffer_limit_bytes"] = 32768
    proxy = _start(tmp_path, config)
    try:
        port = proxy.listener_port("http")
        size = 8 << 20
        client = RawClient(port)
        client.conn.send_headers(
            1,
            [
                (":method", "POST"),
                *GET[1:],
                (":path", "/upload"),
                ("x-slow", "1"),
                ("content-length", str(size)),
            ],
        )
        sent = 0
        answer = b""
        deadline = time.monotonic() + 30
        while not answer and time.monotonic() < deadline:
            # As much body as the proxy's windows allow; it gives more only as the upstream
            # reads (the upstream sleeps first: the windows stay closed meanwhile).
            while sent < size and client.conn.local_flow_control_window(1) >= 16384:
                client.conn.send_data(1, b"u" * 16384, end_stream=sent + 16384 == size)
                sent += 16384
            client.flush()
            for event in client.events(10):
                if isinstance(event, h2.events.DataReceived):
                    answer += event.data
        assert answer == str(size).encode()
        stats = proxy.stats()
        assert stats["http.ingress.downstream_flow_control_paused_reading_total"] >= 1
        assert stats["cluster.backend.upstream_flow_control_backed_up_total"] >= 1
        client.close()
    finally:
        proxy.stop()


def test_client_reset_of_one_stream_leaves_the_others(tmp_path, upstream):
    proxy = _start(tmp_path, http_proxy_config(upstream.port))
    try:
        port = proxy.listener_port("http")
        client = RawClient(port)
        client.conn.send_headers(1, [*GET, (":path", "/stall")], end_stream=True)
        client.flush()
        wait_for(lambda: any(r["path"] == "/stall" for r in upstream.requests))
        client.conn.reset_stream(1)
        client.conn.send_headers(3, [*GET, (":path", "/echo")], end_stream=True)
        client.flush()
        ended = False
        while not ended:
            ended = any(
                isinstance(e, h2.events.StreamEnded) and e.stream_id == 3 for e in client.events()
            )
        client.close()
        stats = proxy.stats()
        assert stats["http.ingress.downstream_rq_rx_reset"] == 1
        assert stats["http2.rx_reset"] == 1
        assert stats["http.ingress.downstream_rq_2xx"] == 1
    finally:
        proxy.stop()


def test_rapid_reset_closes_the_connection(tmp_path, upstream):
    proxy = _start(tmp_path, http_proxy_config(upstream.port))
    try:
        port = proxy.listener_port("http")
        encoder = hpack.Encoder()
        frames = [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"]
        for i in range(300):
            sid = 2 * i + 1
            block = encoder.encode([*GET, (":path", "/stall")])
            frames.append(
                len(block).to_bytes(3, "big") + b"\x01\x05" + struct.pack(">L", sid) + block
            )
            frames.append(b"\x00\x00\x04\x03\x00" + struct.pack(">LL", sid, 8))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            try:
                s.sendall(b"".join(frames))
                while s.recv(65536):
                    pass
            except ConnectionResetError:
                pass
        stats = wait_for(
            lambda: (st := proxy.stats())["http.ingress.downstream_cx_active"] == 0 and st
        )
        assert stats["http.ingress.downstream_rq_too_many_premature_resets"] == 1
        total = stats["http.ingress.downstream_rq_total"]
        assert 250 <= total < 300  # closed once 250 of the streams were reset early
        assert stats["http.ingress.downstream_rq_rx_reset"] == total
    finally:
        proxy.stop()


def test_codec_type_http2_refuses_http1_clients(tmp_path, upstream):
    proxy = _start(tmp_path, http_proxy_config(upstream.port, hcm={"codec_type": "HTTP2"}))
    try:
        port = proxy.listener_port("http")
        out = _curl("-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/")
        assert out.stdout == b"200"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            assert s.recv(65536) == b""  # closed, nothing said
        stats = proxy.stats()
        assert stats["http.ingress.downstream_cx_protocol_error"] == 1
        assert stats["http.ingress.downstream_cx_http2_total"] == 2
    finally:
        proxy.stop()


def test_keepalive_closes_a_connection_whose_peer_stops_answering(tmp_path, upstream):
    hcm = {
        "http2_protocol_options": {"connection_keepalive": {"interval": "0.2s", "timeout": "0.3s"}}
    }
    proxy = _start(tmp_path, http_proxy_config(upstream.port, hcm=hcm))
    try:
        port = proxy.listener_port("http")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as mute:
            mute.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            start = time.monotonic()
            pings = 0
            try:
                while data := mute.recv(65536):
                    pings += data.count(b"\x00\x00\x08\x06\x00")
            except ConnectionResetError:
                pass
            assert 0.4 < time.monotonic() - start < 3 and pings >= 1
        assert proxy.stats()["http2.keepalive_timeout"] == 1
        alive = RawClient(port)  # acknowledges the PINGs (h2 does, as it reads)
        acked = 0
        until = time.monotonic() + 1.5
        while time.monotonic() < until:
            for event in alive.events(1):
                acked += isinstance(event, h2.events.PingReceived)
        alive.close()
        assert acked >= 3
        assert proxy.stats()["http2.keepalive_timeout"] == 1
    finally:
        proxy.stop()


def test_stream_idle_timeout_and_connection_idle_timeout(tmp_path, upstream):
    hcm = {
        "stream_idle_timeout": "0.3s",
        "common_http_protocol_options": {"idle_timeout": "0.5s"},
        "drain_timeout": "0.2s",
    }
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "backend", "timeout": "0s"}}]
    proxy = _start(tmp_path, http_proxy_config(upstream.port, routes=routes, hcm=hcm))
    try:
        port = proxy.listener_port("http")
        client = RawClient(port)
        client.conn.send_headers(1, [*GET, (":path", "/stall")], end_stream=True)
        client.conn.send_headers(3, [*GET, (":path", "/echo")], end_stream=True)
        client.flush()
        statuses = {}
        goaways = []
        start = time.monotonic()
        try:
            while True:
                for event in client.events(5):
                    if isinstance(event, h2.events.ResponseReceived):
                        statuses[event.stream_id] = dict(event.headers)[":status"]
                    if isinstance(event, h2.events.ConnectionTerminated):
                        goaways.append(event.last_stream_id)
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        assert statuses == {1: "504", 3: "200"}
        assert goaways and goaways[0] == 2**31 - 1  # the idle drain's first GOAWAY
        assert 0.8 < time.monotonic() - start < 4
        stats = proxy.stats()
        assert stats["http.ingress.downstream_rq_idle_timeout"] == 1
        assert stats["http.ingress.downstream_cx_idle_timeout"] == 1
        client.close()
    finally:
        proxy.stop()


def goaway_ids(sock: socket.socket, wait: float) -> list[int]:
    """The last stream ids of the GOAWAY frames read within ``wait`` (or until the close)."""
    data = b""
    deadline = time.monotonic() + wait
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    out = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        if data[3] == 7:
            out.append(int.from_bytes(data[9:13], "big"))
        data = data[9 + length :]
    return out


def test_failing_health_check_drains_with_goaway(tmp_path, upstream):
    hcm = {"drain_timeout": "0.3s"}
    proxy = _start(tmp_path, http_proxy_config(upstream.port, hcm=hcm))
    try:
        port = proxy.listener_port("http")
        client = RawClient(port)
        client.conn.send_headers(1, [*GET, (":path", "/echo")], end_stream=True)
        client.flush()
        client.events()
        status, _ = proxy.admin("/healthcheck/fail", method="POST")
        assert status == 200
        client.conn.send_headers(3, [*GET, (":path", "/echo")], end_stream=True)
        client.flush()
        # The response drain-closes: GOAWAY (2^31-1) at once, GOAWAY (3) after drain_timeout,
        # then the close.
        assert goaway_ids(client.sock, 3) == [2**31 - 1, 3]
        assert proxy.stats()["http.ingress.downstream_cx_drain_close"] == 1
        client.close()
    finally:
        proxy.stop()


def test_alpn_h2_over_tls_picks_http2(tmp_path, upstream):
    from tests.support.tls import TlsFiles, downstream_tls

    files = TlsFiles.make(tmp_path / "certs")
    config = http_proxy_config(upstream.port)
    config["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"] = (
        downstream_tls(files.server, alpn=["h2", "http/1.1"])
    )
    proxy = _start(tmp_path, config)
    try:
        port = proxy.listener_port("http")
        common = [
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--cacert",
            str(files.ca_path),
            "--resolve",
            f"localhost:{port}:127.0.0.1",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ]
        h2 = subprocess.run(
            [*common, "--http2", f"https://localhost:{port}/echo"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        h1 = subprocess.run(
            [*common, "--http1.1", f"https://localhost:{port}/echo"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        assert (h2.stdout, h1.stdout) == ("2 200", "1.1 200"), (h2.stderr, h1.stderr)
        stats = proxy.stats()
        assert stats["http.ingress.downstream_cx_http2_total"] == 1
        assert stats["http.ingress.downstream_cx_http1_total"] == 1
    finally:
        proxy.stop()
