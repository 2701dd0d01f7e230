"""The runtime on a real legatus: ``/runtime``, ``/runtime_modify``, ``runtime.*`` stats, and
``runtime_fraction`` routes in every worker following the admin layer."""

from __future__ import annotations

import http.client
import json
import os
import signal

import pytest

from tests.support.process import children, start_proxy, wait_for

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def _route(name: str, key: str, numerator: int) -> dict:
    return {
        "name": name,
        "match": {
            "prefix": f"/{name}",
            "runtime_fraction": {"default_value": {"numerator": numerator}, "runtime_key": key},
        },
        "direct_response": {"status": 200, "body": {"inline_string": name}},
    }


def _config() -> dict:
    routes = [
        _route("static", "routes.static", 0),  # the static layer says 100
        _route("admin", "routes.admin", 0),  # nothing says anything until /runtime_modify
        {
            "name": "miss",
            "match": {"prefix": "/"},
            "direct_response": {"status": 404, "body": {"inline_string": "miss"}},
        },
    ]
    hcm = {
        "@type": HCM,
        "stat_prefix": "http",
        "route_config": {"virtual_hosts": [{"name": "vh", "domains": ["*"], "routes": routes}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    listener = {
        "name": "http",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                          "typed_config": hcm}]}
        ],
    }  # fmt: skip
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "layered_runtime": {
            "layers": [
                {"name": "base", "static_layer": {"routes": {"static": 100}, "plain": "text"}},
                {"name": "admin", "admin_layer": {}},
            ]
        },
        "static_resources": {"listeners": [listener]},
    }


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    p = start_proxy(_config(), tmp_path_factory.mktemp("runtime"), args=["--concurrency", "2"])
    yield p
    p.stop()


def _post(proxy, path: str) -> tuple[int, str]:
    return proxy.admin(path, method="POST")


def _answers(proxy, path: str, requests: int = 30) -> set[int]:
    """Statuses of ``requests`` requests, each on a new connection (so both workers answer)."""
    port = proxy.listener_port("http")
    statuses = set()
    for _ in range(requests):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            statuses.add(response.status)
        finally:
            conn.close()
    return statuses


def _listening(proxy) -> bool:
    try:
        return bool(_answers(proxy, "/", 1))
    except OSError:
        return False


def _runtime_stats(proxy) -> dict[str, int]:
    return {k: v for k, v in proxy.stats().items() if k.startswith("runtime.")}


def test_runtime_shows_the_layers(proxy):
    status, body = proxy.admin("/runtime")
    assert status == 200
    assert json.loads(body) == {
        "entries": {
            "plain": {"final_value": "text", "layer_values": ["text", ""]},
            "routes.static": {"final_value": "100", "layer_values": ["100", ""]},
        },
        "layers": ["base", "admin"],
    }


def test_static_layer_drives_routes(proxy):
    assert _answers(proxy, "/static") == {200}
    assert _answers(proxy, "/admin") == {404}


def test_runtime_modify_reaches_every_worker(proxy):
    assert proxy.admin("/runtime_modify") == (405, "Method GET not allowed, POST required.")
    assert _post(proxy, "/runtime_modify")[0] == 400
    before = _runtime_stats(proxy)
    assert _post(proxy, "/runtime_modify?routes.admin=100&routes.static=0") == (200, "OK\n")
    assert _answers(proxy, "/admin") == {200}
    assert _answers(proxy, "/static") == {404}
    entries = json.loads(proxy.admin("/runtime")[1])["entries"]
    assert entries["routes.static"] == {"final_value": "0", "layer_values": ["100", "0"]}
    after = _runtime_stats(proxy)
    assert after["runtime.load_success"] == before["runtime.load_success"] + 1
    assert (after["runtime.admin_overrides_active"], after["runtime.num_keys"]) == (1, 3)

    status, body = _post(proxy, "/runtime_modify?routes.admin=%7B")
    assert status == 503 and body
    assert _runtime_stats(proxy)["runtime.load_success"] == after["runtime.load_success"]

    assert _post(proxy, "/runtime_modify?routes.static=")[0] == 200
    assert _answers(proxy, "/static") == {200}


def test_a_replaced_worker_gets_the_admin_layer(proxy):
    assert _post(proxy, "/runtime_modify?routes.admin=100")[0] == 200
    restarts = proxy.stats().get("server.worker_restarts", 0)
    for pid in children(proxy.pid):
        os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: proxy.stats().get("server.worker_restarts") == restarts + 2,
        what="both workers replaced",
    )
    wait_for(lambda: len(children(proxy.pid)) == 2, what="two workers")
    wait_for(lambda: _listening(proxy), what="the new workers listening")
    assert _answers(proxy, "/admin") == {200}


def test_stats_at_start_up(tmp_path):
    """Envoy 1.40's values for a bootstrap without layered_runtime."""
    p = start_proxy(
        {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}},
        tmp_path,
        args=["--concurrency", "1"],
    )
    try:
        assert _runtime_stats(p) == {
            "runtime.admin_overrides_active": 0,
            "runtime.deprecated_feature_seen_since_process_start": 0,
            "runtime.deprecated_feature_use": 0,
            "runtime.load_error": 0,
            "runtime.load_success": 2,
            "runtime.num_keys": 0,
            "runtime.num_layers": 0,
            "runtime.override_dir_exists": 0,
            "runtime.override_dir_not_exists": 2,
        }
        assert p.admin("/runtime") == (200, '{\n "entries": {},\n "layers": []\n}\n')
        assert _post(p, "/runtime_modify?a=1") == (503, "No admin layer specified")
    finally:
        p.stop()
