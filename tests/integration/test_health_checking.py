"""Active health checking end to end: real upstreams on 127.0.0.1, legatus with 2 workers."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

import pytest

from tests.support.health_upstream import HealthUpstream
from tests.support.process import start_proxy, wait_for

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"  # noqa: E501
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def bootstrap(cluster: dict) -> dict:
    hcm = {
        "@type": HCM,
        "stat_prefix": "h",
        "route_config": {"virtual_hosts": [{"name": "a", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": cluster["name"]}}]}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }  # fmt: skip
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [{
                "name": "l",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]}],
            }],
            "clusters": [cluster],
        },
    }  # fmt: skip


def cluster(name: str, ports: list[int], **extra) -> dict:
    endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
        for p in ports
    ]
    return {
        "name": name,
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
        **extra,
    }


def http_check(**extra) -> dict:
    return {
        "timeout": "0.5s",
        "interval": "0.1s",
        "no_traffic_interval": "0.1s",
        "unhealthy_threshold": 2,
        "healthy_threshold": 2,
        "http_health_check": {"path": "/healthz"},
        **extra,
    }


def get(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/x", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def flags(proxy, cluster_name: str) -> dict[str, str]:
    _, body = proxy.admin("/clusters")
    out = {}
    for line in body.splitlines():
        parts = line.split("::")
        if parts[0] == cluster_name and len(parts) == 4 and parts[2] == "health_flags":
            out[parts[1]] = parts[3]
    return out


@pytest.fixture
def upstreams():
    ups = [HealthUpstream("a"), HealthUpstream("b")]
    yield ups
    for u in ups:
        u.close()


def test_failing_host_gets_no_traffic_and_recovers(tmp_path, upstreams):
    a, b = upstreams
    config = bootstrap(cluster("backend", [a.port, b.port], health_checks=[http_check()]))
    proxy = start_proxy(config, tmp_path, args=["--concurrency", "2"])
    try:
        port = proxy.listener_port("l")
        assert flags(proxy, "backend") == {
            f"127.0.0.1:{a.port}": "healthy",
            f"127.0.0.1:{b.port}": "healthy",
        }
        # The check the upstream sees is Envoy's.
        head = next(h for h in a.heads if b"/healthz" in h)
        assert head == b"GET /healthz HTTP/1.1\r\nhost: backend\r\nuser-agent: Envoy/HC"
        b.hc_status = 503  # fails at once, whatever unhealthy_threshold
        wait_for(
            lambda: flags(proxy, "backend")[f"127.0.0.1:{b.port}"] == "/failed_active_hc",
            timeout=3,
            what="b failed",
        )
        time.sleep(0.1)  # the health push reaches both workers
        before = b.traffic
        # New connections spread over both workers: none of them sends to b any more.
        bodies = {get(port)[1] for _ in range(20)}
        assert bodies == {"a"} and b.traffic == before
        stats = proxy.stats()
        assert stats["cluster.backend.membership_healthy"] == 1
        assert stats["cluster.backend.health_check.healthy"] == 1
        assert stats["cluster.backend.health_check.failure"] >= 1
        b.hc_status = 200
        wait_for(
            lambda: flags(proxy, "backend")[f"127.0.0.1:{b.port}"] == "healthy",
            timeout=3,
            what="b healthy again",
        )
        time.sleep(0.1)
        assert {get(port)[1] for _ in range(20)} == {"a", "b"}
        assert proxy.stats()["cluster.backend.membership_healthy"] == 2
    finally:
        proxy.stop()


def test_down_host_counts_network_failures_to_the_threshold(tmp_path, upstreams):
    a, b = upstreams
    config = bootstrap(
        cluster("backend", [a.port, b.port], health_checks=[http_check(unhealthy_threshold=3)])
    )
    proxy = start_proxy(config, tmp_path, args=["--concurrency", "2"])
    try:
        b.close()
        wait_for(
            lambda: flags(proxy, "backend")[f"127.0.0.1:{b.port}"] == "/failed_active_hc",
            timeout=3,
            what="b failed",
        )
        stats = proxy.stats()
        assert stats["cluster.backend.health_check.network_failure"] >= 3
        assert stats["cluster.backend.membership_healthy"] == 1
        port = proxy.listener_port("l")
        assert {get(port)[1] for _ in range(10)} == {"a"}
    finally:
        proxy.stop()


def test_no_host_healthy_routes_to_all(tmp_path, upstreams):
    a, b = upstreams
    a.hc_status = b.hc_status = 500
    config = bootstrap(cluster("backend", [a.port, b.port], health_checks=[http_check()]))
    proxy = start_proxy(config, tmp_path, args=["--concurrency", "1"])
    try:
        assert set(flags(proxy, "backend").values()) == {"/failed_active_hc"}
        assert proxy.stats()["cluster.backend.membership_healthy"] == 0
        port = proxy.listener_port("l")
        assert {get(port)[1] for _ in range(6)} == {"a", "b"}  # panic: every host
    finally:
        proxy.stop()


class _TcpPeer:
    """Answers ``PONG`` to ``PING`` while ``ok`` is true, else nothing."""

    def __init__(self) -> None:
        self.ok = True
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn) -> None:
        with conn:
            while data := conn.recv(100):
                if b"PING" in data and self.ok:
                    conn.sendall(b"..PONG")

    def close(self) -> None:
        self.sock.close()


def test_tcp_check_with_payloads(tmp_path):
    peer = _TcpPeer()
    check = {
        "timeout": "0.3s",
        "interval": "0.1s",
        "no_traffic_interval": "0.1s",
        "unhealthy_threshold": 2,
        "healthy_threshold": 1,
        "tcp_health_check": {"send": {"text": "50494e47"}, "receive": [{"text": "504f4e47"}]},
    }
    config = bootstrap(cluster("tcp", [peer.port], health_checks=[check]))
    proxy = start_proxy(config, tmp_path, args=["--concurrency", "1"])
    try:
        assert flags(proxy, "tcp") == {f"127.0.0.1:{peer.port}": "healthy"}
        peer.ok = False
        wait_for(
            lambda: (
                flags(proxy, "tcp")[f"127.0.0.1:{peer.port}"]
                == "/failed_active_hc/active_hc_timeout"
            ),
            timeout=3,
            what="timed out",
        )
        assert proxy.stats()["cluster.tcp.health_check.network_failure"] >= 2
        peer.ok = True
        wait_for(
            lambda: flags(proxy, "tcp")[f"127.0.0.1:{peer.port}"] == "healthy",
            timeout=3,
            what="healthy again",
        )
    finally:
        proxy.stop()
        peer.close()


def test_grpc_health_check_is_refused(tmp_path):
    check = {
        "timeout": "1s",
        "interval": "1s",
        "unhealthy_threshold": 1,
        "healthy_threshold": 1,
        "grpc_health_check": {},
    }
    config = bootstrap(cluster("g", [1], health_checks=[check]))
    with pytest.raises(RuntimeError) as e:
        start_proxy(config, tmp_path)
    assert "static_resources.clusters[0].health_checks[0].grpc_health_check" in str(e.value)
