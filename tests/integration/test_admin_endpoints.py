"""Every admin endpoint on a real legatus, with curl and httpx as operators use them."""

from __future__ import annotations

import json
import socket
import subprocess

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.process import start_proxy, wait_for
from tests.support.upstreams import EchoServer, tcp_proxy_config


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    echo = EchoServer()
    p = start_proxy(
        tcp_proxy_config(upstream_port=echo.port),
        tmp_path_factory.mktemp("admin"),
        args=["--concurrency", "2"],
    )
    port = p.listener_port("tcp")
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"x")
            assert s.recv(1) == b"x"
    wait_for(lambda: p.stats().get("tcp.tcp.downstream_cx_total") == 3, what="3 connections")
    yield p
    p.stop()
    echo.close()


@pytest.fixture
def client(proxy):
    with httpx.Client(base_url=f"http://127.0.0.1:{proxy.admin_port}", timeout=5) as c:
        yield c


def test_curl_reads_stats(proxy):
    out = subprocess.run(
        ["curl", "-fsS", f"http://127.0.0.1:{proxy.admin_port}/stats?filter=^tcp\\."],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout
    assert "tcp.tcp.downstream_cx_total: 3\n" in out


def test_ready_server_info_and_home(client):
    r = client.get("/ready")
    assert (r.status_code, r.text) == (200, "LIVE\n")
    info = client.get("/server_info").json()
    assert info["state"] == "LIVE"
    assert info["version"].split("/")[1] == "1.40.0"
    assert info["command_line_options"]["concurrency"] == 2
    assert client.get("/").status_code == 200
    assert client.get("/help").text.startswith("admin commands are:")
    assert client.get("/nope").status_code == 404


def test_stats_text_json_filter_usedonly(client):
    text = client.get("/stats").text
    assert "cluster.backend.upstream_cx_total: 3\n" in text
    assert "cluster.backend.host." not in text  # per-host stats are hidden
    assert "server.live: 1\n" in text
    body = client.get("/stats", params={"format": "json", "filter": "^tcp\\."}).json()
    names = {s["name"] for s in body["stats"] if "name" in s}
    assert "tcp.tcp.downstream_cx_total" in names
    assert all(n.startswith("tcp.") for n in names)
    used = client.get("/stats", params={"usedonly": ""}).text
    assert "tcp.tcp.downstream_cx_total: 3" in used
    assert "tcp.tcp.idle_timeout" not in used


def test_prometheus_parses(client):
    families = {
        f.name: f for f in text_string_to_metric_families(client.get("/stats/prometheus").text)
    }
    # The parser names a counter family without its "_total" suffix.
    cx = families["envoy_cluster_upstream_cx"]
    assert cx.type == "counter"
    (sample,) = [
        s
        for s in cx.samples
        if s.name == "envoy_cluster_upstream_cx_total"
        and s.labels.get("envoy_cluster_name") == "backend"
    ]
    assert sample.value == 3
    tcp = families["envoy_tcp_downstream_cx"]
    assert any(
        s.name == "envoy_tcp_downstream_cx_total"
        and s.labels == {"envoy_tcp_prefix": "tcp"}
        and s.value == 3
        for s in tcp.samples
    )
    hist = families["envoy_cluster_upstream_cx_connect_ms"]
    assert hist.type == "histogram"
    assert families["envoy_server_live"].type == "gauge"


def test_listeners_and_clusters(proxy, client):
    port = proxy.listener_port("tcp")
    assert client.get("/listeners").text == f"tcp::127.0.0.1:{port}\n"
    text = client.get("/clusters").text
    assert "backend::default_priority::max_connections::1024\n" in text
    assert "::cx_total::3\n" in text
    clusters = client.get("/clusters", params={"format": "json"}).json()
    assert clusters["cluster_statuses"][0]["name"] == "backend"


def test_config_dump_memory(client):
    dump = client.get("/config_dump").json()
    types = [c["@type"].rsplit(".", 1)[1] for c in dump["configs"]]
    assert types[:3] == ["BootstrapConfigDump", "ClustersConfigDump", "ListenersConfigDump"]
    mem = client.get("/memory").json()
    assert int(mem["allocated"]) > 0


def test_mutations_need_post(client):
    for path in ("/quitquitquit", "/healthcheck/fail", "/reset_counters", "/logging"):
        r = client.get(path)
        assert (r.status_code, r.text) == (405, "Method GET not allowed, POST required.")


def test_healthcheck_fail_and_ok(client):
    assert client.post("/healthcheck/fail").text == "OK\n"
    assert client.get("/ready").status_code == 503
    assert client.post("/healthcheck/ok").text == "OK\n"
    assert client.get("/ready").status_code == 200


def test_logging_levels(client):
    r = client.post("/logging", params={"upstream": "debug"})
    assert r.status_code == 200
    assert "  upstream: debug\n" in r.text
    r = client.post("/logging", params={"level": "info"})
    assert "  upstream: info\n" in r.text


def test_reset_counters(proxy, client):
    assert client.post("/reset_counters").text == "OK\n"
    stats = proxy.stats()
    assert stats["tcp.tcp.downstream_cx_total"] == 0
    assert stats["server.live"] == 1  # gauges keep their values
    assert json.loads(client.get("/server_info").text)["state"] == "LIVE"
