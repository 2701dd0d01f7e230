"""CDS from a file (path_config_source), end to end: reloaded on in-place edits and symlink
swaps (which Envoy misses), a broken file keeps the last good clusters."""

from __future__ import annotations

import os

import httpx
import yaml

from tests.support.http_upstream import HttpUpstream, http_proxy_config
from tests.support.process import start_proxy, wait_for

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


def cds_file(version: str, port: int) -> str:
    cluster = {
        "@type": CLUSTER,
        "name": "dyn",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "dyn",
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    return yaml.safe_dump({"version_info": version, "resources": [cluster]})


def bootstrap(cds_path: str) -> dict:
    route = {"match": {"prefix": "/"}, "route": {"cluster": "dyn"}}
    config = http_proxy_config(0, routes=[route])
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    hcm["typed_config"]["route_config"]["validate_clusters"] = False
    config["node"] = {"id": "node1", "cluster": "web"}  # required for any xDS, as in Envoy
    config["dynamic_resources"] = {
        "cds_config": {"path_config_source": {"path": cds_path}, "resource_api_version": "V3"}
    }
    return config


def served_by(proxy, upstream: HttpUpstream) -> bool:
    before = len(upstream.requests)
    port = proxy.listener_port("http")
    response = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
    return response.status_code == 200 and len(upstream.requests) > before


def test_cds_file_reloads_on_edits_and_swaps_and_keeps_the_last_good(tmp_path):
    a, b = HttpUpstream(), HttpUpstream()
    data = tmp_path / "data"
    data.mkdir()
    real = data / "cds-1.yaml"
    real.write_text(cds_file("1", a.port))
    link = tmp_path / "cds.yaml"
    link.symlink_to(real)
    proxy = start_proxy(bootstrap(str(link)), tmp_path / "proxy")
    try:
        assert served_by(proxy, a)
        assert proxy.stats()["cluster_manager.cds.version_text"] == "1"

        # An in-place rewrite of the file the link points at (Envoy only sees moves).
        real.write_text(cds_file("2", b.port))
        wait_for(lambda: proxy.stats()["cluster_manager.cds.version_text"] == "2", what="edit")
        wait_for(lambda: served_by(proxy, b), what="traffic to b")

        # A broken file: the clusters in place keep serving.
        real.write_text("resources: [")
        wait_for(lambda: proxy.stats()["cluster_manager.cds.update_failure"] >= 1, what="error")
        assert served_by(proxy, b)

        # A symlink swap (a Kubernetes ConfigMap update).
        other = data / "cds-3.yaml"
        other.write_text(cds_file("3", a.port))
        tmp_link = tmp_path / "cds.yaml.tmp"
        tmp_link.symlink_to(other)
        os.replace(tmp_link, link)
        wait_for(lambda: proxy.stats()["cluster_manager.cds.version_text"] == "3", what="swap")
        wait_for(lambda: served_by(proxy, a), what="traffic back to a")
        proxy.assert_nothing_raised()
    finally:
        proxy.stop()
        a.close()
        b.close()


def test_xds_without_a_node_is_refused_as_envoy_refuses_it(tmp_path):
    import subprocess

    from tests.support.process import legatus_command

    path = tmp_path / "cds.yaml"
    path.write_text(cds_file("1", 1))
    config = bootstrap(str(path))
    del config["node"]
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [*legatus_command(), "--mode", "validate", "-c", str(tmp_path / "b.yaml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert (
        "dynamic_resources.cds_config: type.googleapis.com/envoy.config.cluster.v3.Cluster: "
        "node 'id' and 'cluster' are required"
    ) in result.stdout + result.stderr
