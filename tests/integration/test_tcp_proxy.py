"""tcp_proxy end to end: real sockets, a real legatus process, a real upstream."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from tests.support.process import start_proxy
from tests.support.upstreams import EchoServer, free_port, tcp_proxy_config


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def unanswering_port():
    """A loopback port whose connects hang: a listener with a full backlog that never accepts
    drops further SYNs (192.0.2.0/24 would do too, but tests stay on loopback)."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(0)
    fillers = []
    try:
        for _ in range(4):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(blocker.getsockname())
            fillers.append(c)
        time.sleep(0.2)
        yield blocker.getsockname()[1]
    finally:
        for c in fillers:
            c.close()
        blocker.close()


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _wait_stat(proxy, name: str, value, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = proxy.stats().get(name)
        if got == value:
            return
        time.sleep(0.05)
    raise AssertionError(f"{name} = {got!r}, expected {value!r}")


def test_bytes_flow_both_ways_and_are_counted(tmp_path, echo):
    proxy = start_proxy(tcp_proxy_config(upstream_port=echo.port), tmp_path)
    try:
        port = proxy.listener_port("tcp")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"hello legatus")
            assert _recv_exactly(s, 13) == b"hello legatus"
        _wait_stat(proxy, "tcp.tcp.downstream_cx_total", 1)
        _wait_stat(proxy, "cluster.backend.upstream_cx_destroy", 1)
        stats = proxy.stats()
        assert stats["tcp.tcp.downstream_cx_rx_bytes_total"] == 13
        assert stats["tcp.tcp.downstream_cx_tx_bytes_total"] == 13
        assert stats["cluster.backend.upstream_cx_total"] == 1
        assert stats["cluster.backend.upstream_cx_tx_bytes_total"] == 13
        assert stats["cluster.backend.upstream_cx_rx_bytes_total"] == 13
        assert stats["listener.127.0.0.1_0.downstream_cx_total"] == 1
    finally:
        proxy.stop()


def test_half_close_is_propagated(tmp_path, echo):
    proxy = start_proxy(tcp_proxy_config(upstream_port=echo.port), tmp_path)
    try:
        port = proxy.listener_port("tcp")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"abc")
            s.shutdown(socket.SHUT_WR)  # our FIN reaches the echo server, which FINs back
            data = b""
            while chunk := s.recv(100):
                data += chunk
            assert data == b"abc"  # all data, then EOF: the upstream's FIN came through
    finally:
        proxy.stop()


def test_refused_upstream_closes_and_counts(tmp_path):
    proxy = start_proxy(tcp_proxy_config(upstream_port=free_port()), tmp_path)
    try:
        port = proxy.listener_port("tcp")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.settimeout(5)
            assert s.recv(10) == b""
        _wait_stat(proxy, "cluster.backend.upstream_cx_connect_fail", 1)
        stats = proxy.stats()
        assert stats["cluster.backend.upstream_cx_active"] == 0
        assert stats["listener.127.0.0.1_0.downstream_cx_active"] == 0
    finally:
        proxy.stop()


def test_max_connect_attempts_retries(tmp_path):
    cfg = tcp_proxy_config(upstream_port=free_port(), extra_tcp_proxy={"max_connect_attempts": 3})
    proxy = start_proxy(cfg, tmp_path)
    try:
        port = proxy.listener_port("tcp")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.settimeout(5)
            assert s.recv(10) == b""
        _wait_stat(proxy, "cluster.backend.upstream_cx_connect_fail", 3)
        _wait_stat(proxy, "cluster.backend.upstream_cx_connect_attempts_exceeded", 1)
    finally:
        proxy.stop()


def test_connect_timeout_is_counted(tmp_path, unanswering_port):
    cfg = tcp_proxy_config(
        upstream_port=unanswering_port, extra_cluster={"connect_timeout": "0.25s"}
    )
    proxy = start_proxy(cfg, tmp_path)
    try:
        port = proxy.listener_port("tcp")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.settimeout(5)
            assert s.recv(10) == b""
        _wait_stat(proxy, "cluster.backend.upstream_cx_connect_timeout", 1)
        assert proxy.stats()["cluster.backend.upstream_cx_connect_fail"] == 1  # as Envoy
    finally:
        proxy.stop()


def test_unknown_cluster_counts_no_route(tmp_path, echo):
    cfg = tcp_proxy_config(upstream_port=echo.port, cluster="missing")
    proxy = start_proxy(cfg, tmp_path)
    try:
        port = proxy.listener_port("tcp")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.settimeout(5)
            assert s.recv(10) == b""
        _wait_stat(proxy, "tcp.tcp.downstream_cx_no_route", 1)
    finally:
        proxy.stop()


def test_idle_timeout_closes(tmp_path, echo):
    cfg = tcp_proxy_config(upstream_port=echo.port, extra_tcp_proxy={"idle_timeout": "0.3s"})
    proxy = start_proxy(cfg, tmp_path)
    try:
        port = proxy.listener_port("tcp")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"x")
            assert s.recv(1) == b"x"
            s.settimeout(5)
            t0 = time.monotonic()
            assert s.recv(10) == b""
            assert time.monotonic() - t0 < 3
        _wait_stat(proxy, "tcp.tcp.idle_timeout", 1)
    finally:
        proxy.stop()


def test_weighted_clusters_split(tmp_path):
    a, b = EchoServer(), EchoServer()
    try:
        cfg = tcp_proxy_config(upstream_port=a.port)
        tcp = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        del tcp["typed_config"]["cluster"]
        tcp["typed_config"]["weighted_clusters"] = {
            "clusters": [{"name": "backend", "weight": 1}, {"name": "other", "weight": 1}]
        }
        other = dict(cfg["static_resources"]["clusters"][0], name="other")
        other["load_assignment"] = {
            "cluster_name": "other",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": b.port}
                                }
                            }
                        }
                    ]
                }
            ],
        }
        cfg["static_resources"]["clusters"].append(other)
        proxy = start_proxy(cfg, tmp_path)
        try:
            port = proxy.listener_port("tcp")
            for _ in range(40):
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.sendall(b"z")
                    assert s.recv(1) == b"z"
            _wait_stat(proxy, "tcp.tcp.downstream_cx_total", 40)
            stats = proxy.stats()
            n_a = stats["cluster.backend.upstream_cx_total"]
            n_b = stats["cluster.other.upstream_cx_total"]
            assert n_a + n_b == 40
            assert n_a >= 5 and n_b >= 5  # 1:1 weights; P(fewer than 5 of 40) is ~1e-7
        finally:
            proxy.stop()
    finally:
        a.close()
        b.close()


def test_failed_upstreams_leak_nothing(tmp_path, echo):
    """Refused upstreams and closed clients leave no sockets or gauges behind."""
    import os

    from tests.support.process import workers

    cfg = tcp_proxy_config(upstream_port=free_port(), extra_tcp_proxy={"max_connect_attempts": 2})
    proxy = start_proxy(cfg, tmp_path, args=["--concurrency", "1"])
    try:
        (worker,) = workers(proxy.pid)
        port = proxy.listener_port("tcp")
        baseline = len(os.listdir(f"/proc/{worker}/fd"))
        for i in range(50):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                if i % 2:
                    s.sendall(b"data that never reaches an upstream")
                s.settimeout(5)
                assert s.recv(10) == b""
        _wait_stat(proxy, "cluster.backend.upstream_cx_connect_attempts_exceeded", 50)
        stats = proxy.stats()
        assert stats["cluster.backend.upstream_cx_connect_fail"] == 100
        assert stats["cluster.backend.upstream_cx_active"] == 0
        assert stats["cluster.backend.upstream_rq_pending_active"] == 0
        assert stats["listener.127.0.0.1_0.downstream_cx_active"] == 0
        assert len(os.listdir(f"/proc/{worker}/fd")) <= baseline
    finally:
        proxy.stop()


def test_client_leaving_during_connect_cancels_it(tmp_path, unanswering_port):
    cfg = tcp_proxy_config(upstream_port=unanswering_port, extra_cluster={"connect_timeout": "30s"})
    proxy = start_proxy(cfg, tmp_path, args=["--concurrency", "1"])
    try:
        port = proxy.listener_port("tcp")
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        _wait_stat(proxy, "cluster.backend.upstream_rq_pending_active", 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # a reset: the client is gone, not merely done sending
        _wait_stat(proxy, "cluster.backend.upstream_rq_pending_active", 0)
        stats = proxy.stats()
        assert stats["cluster.backend.upstream_cx_active"] == 0
        assert stats["cluster.backend.upstream_cx_destroy_local"] == 1
        assert stats["cluster.backend.upstream_cx_connect_timeout"] == 0
    finally:
        proxy.stop()
