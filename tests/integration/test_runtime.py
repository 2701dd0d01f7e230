"""The runtime on a real legatus: ``/runtime``, ``/runtime_modify``, ``runtime.*`` stats, and
``runtime_fraction`` routes in every worker following the admin layer and a disk layer (a
symlink swap, an edit in place, a file that does not read)."""

from __future__ import annotations

import http.client
import json
import os
import signal
from pathlib import Path

import pytest

from tests.support.process import start_proxy, wait_for, workers

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
    for pid in workers(proxy.pid):
        os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: proxy.stats().get("server.worker_restarts") == restarts + 2,
        what="both workers replaced",
    )
    wait_for(lambda: len(workers(proxy.pid)) == 2, what="two workers")
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


# A disk layer ---------------------------------------------------------------------------------


def _swap(root: Path, target: Path) -> None:
    """The atomic swap operators use: a new link renamed onto the root's name."""
    new = root.parent / f".{root.name}.new"
    new.symlink_to(target)
    os.replace(new, root)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _disk_config(data: Path) -> dict:
    config = _config()
    config["layered_runtime"]["layers"][1:1] = [
        {
            "name": "disk",
            "disk_layer": {
                "symlink_root": str(data / "current"),
                "subdirectory": "envoy",
                "append_service_cluster": True,
            },
        }
    ]
    routes = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes = routes["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    routes.insert(0, _route("disk", "routes.disk", 0))
    return config


@pytest.fixture(scope="module")
def disk_proxy(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("runtime_disk")
    data = workdir / "data"
    _write(data / "v1/envoy/web/routes/disk", "0\n")
    _write(data / "v1/envoy/web/plain", "# the static layer says text\nfrom disk\n")
    _write(data / "v2/envoy/web/routes/disk", "{numerator: 100}\n")
    (data / "current").symlink_to(data / "v1")
    p = start_proxy(
        _disk_config(data), workdir, args=["--concurrency", "2", "--service-cluster", "web"]
    )
    yield p, data
    p.stop()


def _entries(proxy) -> dict:
    return json.loads(proxy.admin("/runtime")[1])["entries"]


def test_a_disk_layer_reaches_every_worker_and_follows_the_symlink(disk_proxy):
    proxy, data = disk_proxy
    runtime = json.loads(proxy.admin("/runtime")[1])
    assert runtime["layers"] == ["base", "disk", "admin"]
    assert runtime["entries"]["plain"] == {
        "final_value": "from disk",  # the comment dropped, the last line trimmed
        "layer_values": ["text", "from disk", ""],
    }
    assert _answers(proxy, "/disk") == {404}
    stats = _runtime_stats(proxy)
    assert (stats["runtime.load_success"], stats["runtime.num_layers"]) == (2, 3)
    assert stats["runtime.override_dir_not_exists"] == 2  # one disk layer: Envoy's count

    _swap(data / "current", data / "v2")
    wait_for(lambda: _answers(proxy, "/disk", 10) == {200}, what="the swap in the workers")
    assert _answers(proxy, "/disk") == {200}
    entries = _entries(proxy)
    assert entries["routes.disk"]["layer_values"] == ["", "{numerator: 100}", ""]
    assert "plain" in entries and entries["plain"]["layer_values"] == ["text", "", ""]
    assert _runtime_stats(proxy)["runtime.load_success"] == 3


def test_an_in_place_edit_reaches_every_worker(disk_proxy):
    proxy, data = disk_proxy
    _swap(data / "current", data / "v2")  # whatever the previous test left
    wait_for(lambda: _answers(proxy, "/disk", 10) == {200}, what="v2")
    (data / "v2/envoy/web/routes/disk").write_text("0")
    wait_for(lambda: _answers(proxy, "/disk", 10) == {404}, what="the edit in the workers")
    assert _answers(proxy, "/disk") == {404}
    assert _entries(proxy)["routes.disk"]["final_value"] == "0"


def test_a_bad_file_counts_an_error_and_keeps_the_layer(disk_proxy):
    proxy, data = disk_proxy
    (data / "v2/envoy/web/routes/disk").write_text("100")
    wait_for(lambda: _answers(proxy, "/disk", 10) == {200}, what="100 %")
    errors = _runtime_stats(proxy)["runtime.load_error"]
    (data / "v2/envoy/web/bad").write_text("{")
    wait_for(lambda: _runtime_stats(proxy)["runtime.load_error"] > errors, what="the failed read")
    assert _answers(proxy, "/disk") == {200}
    assert "bad" not in _entries(proxy)
    (data / "v2/envoy/web/bad").unlink()


def test_the_admin_layer_overrides_the_disk_layer_and_new_workers_get_both(disk_proxy):
    proxy, data = disk_proxy
    _write(data / "v2/envoy/web/routes/disk", "100")
    _write(data / "v2/envoy/web/routes/admin", "100")
    wait_for(lambda: _answers(proxy, "/admin", 10) == {200}, what="the disk's routes.admin")
    assert _post(proxy, "/runtime_modify?routes.disk=0")[0] == 200
    assert _answers(proxy, "/disk") == {404}
    restarts = proxy.stats().get("server.worker_restarts", 0)
    for pid in workers(proxy.pid):
        os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: proxy.stats().get("server.worker_restarts") == restarts + 2,
        what="both workers replaced",
    )
    wait_for(lambda: len(workers(proxy.pid)) == 2, what="two workers")
    wait_for(lambda: _listening(proxy), what="the new workers listening")
    assert _answers(proxy, "/disk") == {404}  # the admin layer
    assert _answers(proxy, "/admin") == {200}  # the disk layer
    assert _post(proxy, "/runtime_modify?routes.disk=")[0] == 200
    assert _answers(proxy, "/disk") == {200}
