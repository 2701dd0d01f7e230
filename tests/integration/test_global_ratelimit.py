"""Global rate limiting end to end: ``legatus ratelimit`` backed by a real Redis, shared by
two legatus processes and by the real Envoy (whose HTTP/2 gRPC client proves the service
speaks the wire protocol), plus the network filter in front of a TCP proxy.

Redis comes from the Debian package ``redis-server`` (scripts/setup.sh installs it); the
tests fail, never skip, without it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tests.support.http_upstream import HttpUpstream, http_proxy_config
from tests.support.process import envoy_command, start_proxy, wait_for
from tests.support.upstreams import EchoServer, free_port, static_cluster, tcp_proxy_config

HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
RL = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit"
NRL = "type.googleapis.com/envoy.extensions.filters.network.ratelimit.v3.RateLimit"
RLS_SERVICE = {
    "transport_api_version": "V3",
    "grpc_service": {"envoy_grpc": {"cluster_name": "rls"}},
}
RLS_CONFIG = """\
domain: edge
descriptors:
  - key: generic_key
    value: shared
    rate_limit: {unit: hour, requests_per_unit: 3}
  - key: generic_key
    value: envoy
    rate_limit: {unit: hour, requests_per_unit: 2, name: envoy-limit}
---
domain: tcp
descriptors:
  - key: listener
    value: echo
    rate_limit: {unit: hour, requests_per_unit: 1}
"""


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    server = shutil.which("redis-server")
    assert server, "redis-server is missing: install the Debian package (scripts/setup.sh)"
    workdir = tmp_path_factory.mktemp("redis")
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip

    def ready():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    try:
        wait_for(ready, timeout=10, what="redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def rls_port(redis_url, tmp_path_factory):
    """``legatus ratelimit`` on a free port, counting in Redis."""
    workdir = tmp_path_factory.mktemp("rls")
    (workdir / "edge.yaml").write_text(RLS_CONFIG)
    cmd = [sys.executable, "-m", "legatus", "ratelimit", "--config", str(workdir),
           "--port", "0", "--redis-url", redis_url]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), line + proc.stdout.read()
        yield int(line.rsplit(":", 1)[1])
    finally:
        proc.terminate()
        out = proc.communicate(timeout=10)[0]
        assert "Traceback" not in out, out


@pytest.fixture
def upstream():
    server = HttpUpstream()
    yield server
    server.close()


def _wait_out_of_window_edge() -> None:
    """The limits count per hour: do not start within a few seconds of a new hour."""
    into = time.time() % 3600
    if into > 3590:
        time.sleep(3600 - into + 0.5)


def _rls_cluster(port: int) -> dict:
    cluster = static_cluster("rls", port)
    cluster["typed_extension_protocol_options"] = {HPO: {
        "@type": f"type.googleapis.com/{HPO}",
        "explicit_http_config": {"http2_protocol_options": {}}}}  # fmt: skip
    return cluster


def _http_config(upstream_port: int, rls_port: int, key: str) -> dict:
    config = http_proxy_config(upstream_port, routes=[{
        "match": {"prefix": "/"},
        "route": {"cluster": "backend", "rate_limits": [
            {"actions": [{"generic_key": {"descriptor_value": key}}]}]}}])  # fmt: skip
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    hcm["typed_config"]["http_filters"].insert(0, {
        "name": "envoy.filters.http.ratelimit", "typed_config": {
            "@type": RL, "domain": "edge", "timeout": "2s", "failure_mode_deny": True,
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "rate_limit_service": RLS_SERVICE}})  # fmt: skip
    config["static_resources"]["clusters"].append(_rls_cluster(rls_port))
    return config


def _statuses(proxy, n: int) -> list[int]:
    url = f"http://127.0.0.1:{proxy.listener_port('http')}/"
    return [httpx.get(url, timeout=5).status_code for _ in range(n)]


def test_two_legatus_processes_share_one_limit(tmp_path, upstream, rls_port):
    _wait_out_of_window_edge()
    config = _http_config(upstream.port, rls_port, "shared")
    a = start_proxy(config, tmp_path / "a", args=["--concurrency", "2"])
    b = start_proxy(config, tmp_path / "b", args=["--concurrency", "1"])
    try:
        assert _statuses(a, 2) == [200, 200]
        assert _statuses(b, 1) == [200]
        assert _statuses(a, 2) == [429, 429]
        assert _statuses(b, 2) == [429, 429]
        url = f"http://127.0.0.1:{b.listener_port('http')}/"
        limited = httpx.get(url, timeout=5)
        assert limited.headers["x-envoy-ratelimited"] == "true"
        assert limited.headers["x-ratelimit-limit"] == "3, 3;w=3600"
        assert limited.headers["x-ratelimit-remaining"] == "0"
        stats_a, stats_b = a.stats(), b.stats()
        assert stats_a["cluster.backend.ratelimit.ok"] == 2
        assert stats_a["cluster.backend.ratelimit.over_limit"] == 2
        assert stats_b["cluster.backend.ratelimit.over_limit"] == 3
    finally:
        a.stop()
        b.stop()


def test_envoy_talks_to_legatus_ratelimit(tmp_path, upstream, rls_port):
    _wait_out_of_window_edge()
    config = _http_config(upstream.port, rls_port, "envoy")
    envoy = start_proxy(config, tmp_path / "envoy", command=envoy_command(),
                        args=["--concurrency", "1"])  # fmt: skip
    try:
        url = f"http://127.0.0.1:{envoy.listener_port('http')}/"
        first = httpx.get(url, timeout=5)
        assert first.status_code == 200
        assert first.headers["x-ratelimit-limit"] == '2, 2;w=3600;name="envoy-limit"'
        assert first.headers["x-ratelimit-remaining"] == "1"
        assert _statuses(envoy, 3) == [200, 429, 429]
        stats = envoy.stats()
        assert stats["cluster.backend.ratelimit.ok"] == 2
        assert stats["cluster.backend.ratelimit.over_limit"] == 2
    finally:
        envoy.stop()


def test_rls_down_fails_closed_with_rlse(tmp_path, upstream):
    config = _http_config(upstream.port, free_port(), "shared")
    proxy = start_proxy(config, tmp_path, args=["--concurrency", "1"])
    try:
        assert _statuses(proxy, 1) == [500]
        assert proxy.stats()["cluster.backend.ratelimit.error"] == 1
    finally:
        proxy.stop()


def _echo_once(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"hello")
        data = b""
        try:
            while len(data) < 5:
                chunk = s.recv(64)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
        return data


def test_network_filter_closes_connections_over_the_limit(tmp_path, rls_port):
    _wait_out_of_window_edge()
    echo = EchoServer()
    config = tcp_proxy_config(upstream_port=echo.port)
    chain = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
    chain.insert(0, {"name": "envoy.filters.network.ratelimit", "typed_config": {
        "@type": NRL, "stat_prefix": "echo", "domain": "tcp", "timeout": "2s",
        "descriptors": [{"entries": [{"key": "listener", "value": "echo"}]}],
        "rate_limit_service": RLS_SERVICE}})  # fmt: skip
    config["static_resources"]["clusters"].append(_rls_cluster(rls_port))
    proxy = start_proxy(config, tmp_path, args=["--concurrency", "1"])
    try:
        port = proxy.listener_port("tcp")
        assert _echo_once(port) == b"hello"
        assert _echo_once(port) == b""
        stats = proxy.stats()
        assert stats["ratelimit.echo.total"] == 2
        assert stats["ratelimit.echo.ok"] == 1
        assert stats["ratelimit.echo.over_limit"] == 1
        assert stats["ratelimit.echo.cx_closed"] == 1
        assert stats["ratelimit.echo.active"] == 0
    finally:
        proxy.stop()
        echo.close()
