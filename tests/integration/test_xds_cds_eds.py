"""CDS and EDS over ADS, end to end: a legatus process driven by a control plane.

The control plane is the test's own (tests/support/xds_server.py); traffic goes through a
static HTTP listener whose route names a cluster that only CDS defines
(``validate_clusters: false``, as with Envoy), to real upstreams (HttpUpstream).
"""

from __future__ import annotations

import httpx
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import json_format

from legatus.config_subscription.decode import CLUSTER, ENDPOINT
from tests.support.http_upstream import HttpUpstream, http_proxy_config
from tests.support.process import start_proxy, wait_for
from tests.support.xds_thread import XdsThread, ads_bootstrap


def eds_cluster(name: str, **extra) -> cluster_pb2.Cluster:
    return json_format.ParseDict(
        {
            "name": name,
            "type": "EDS",
            "connect_timeout": "1s",
            "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"}},
            **extra,
        },
        cluster_pb2.Cluster(),
    )


def assignment(name: str, *ports: int) -> endpoint_pb2.ClusterLoadAssignment:
    return json_format.ParseDict(
        {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": p}
                                }
                            }
                        }
                        for p in ports
                    ]
                }
            ],
        },
        endpoint_pb2.ClusterLoadAssignment(),
    )


def bootstrap(xds_port: int, *, delta: bool = False) -> dict:
    listener_config = http_proxy_config(0, hcm={})
    listener = listener_config["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["route_config"]["validate_clusters"] = False
    return ads_bootstrap(xds_port, delta=delta, static_resources={"listeners": [listener]})


def get(proxy, path: str = "/") -> httpx.Response:
    port = proxy.listener_port("http")
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)


@pytest.fixture
def upstreams():
    ups = [HttpUpstream(), HttpUpstream()]
    yield ups
    for u in ups:
        u.close()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_clusters_and_endpoints_from_ads(tmp_path, upstreams, delta):
    a, b = upstreams
    with XdsThread() as xds:
        xds.set_resources(CLUSTER, [eds_cluster("backend")])
        xds.set_resources(ENDPOINT, [assignment("backend", a.port)])
        proxy = start_proxy(bootstrap(xds.port, delta=delta), tmp_path, args=["--concurrency", "2"])
        try:
            # The cluster warmed with its endpoints before the server went LIVE.
            assert get(proxy).status_code == 200
            assert a.connections >= 1
            stats = proxy.stats()
            assert stats["cluster_manager.cds.update_success"] >= 1
            assert stats["cluster_manager.active_clusters"] == 2
            assert stats["cluster_manager.warming_clusters"] == 0
            assert stats["cluster.backend.membership_total"] == 1
            assert stats["cluster.backend.update_success"] >= 1
            assert stats["control_plane.connected_state"] == 1

            # New endpoints: traffic moves to the other upstream.
            xds.set_resources(ENDPOINT, [assignment("backend", b.port)])
            wait_for(lambda: proxy.stats()["cluster.backend.update_success"] >= 2, what="EDS")
            before = b.connections
            for _ in range(4):
                assert get(proxy).status_code == 200
            assert b.connections > before

            # A bad cluster is NACKed by name; the cluster in place keeps serving.
            bad = eds_cluster("backend")
            bad.ClearField("eds_cluster_config")
            version = xds.set_resources(CLUSTER, [bad])
            nack = xds.wait_for(lambda r: r.type_url == CLUSTER and r.is_nack, timeout=10)
            assert "backend" in nack.error_detail.message
            assert "eds_config" in nack.error_detail.message
            assert nack.version_info != version
            wait_for(lambda: proxy.stats()["cluster_manager.cds.update_rejected"] >= 1, what="NACK")
            assert get(proxy).status_code == 200

            # Removed by CDS: no cluster, Envoy's 503 (NC).
            xds.set_resources(CLUSTER, [])
            wait_for(lambda: proxy.stats()["cluster_manager.cluster_removed"] >= 1, what="removal")
            wait_for(lambda: get(proxy).status_code == 503, what="503 once removed")
            assert proxy.stats()["cluster_manager.active_clusters"] == 1

            # Back again: warm (EDS still has its assignment), then served.
            xds.set_resources(CLUSTER, [eds_cluster("backend")])
            wait_for(lambda: get(proxy).status_code == 200, what="cluster back")
            proxy.assert_nothing_raised()
        finally:
            proxy.stop()


def test_a_control_plane_restart_keeps_the_config_and_reconnects(tmp_path, upstreams):
    a, b = upstreams
    with XdsThread() as xds:
        xds.set_resources(CLUSTER, [eds_cluster("backend")])
        xds.set_resources(ENDPOINT, [assignment("backend", a.port)])
        proxy = start_proxy(bootstrap(xds.port), tmp_path)
        try:
            assert get(proxy).status_code == 200
            opened = xds.call(lambda: xds.server.streams_opened)
            xds.run(xds.server.stop())
            wait_for(lambda: proxy.stats()["control_plane.connected_state"] == 0, what="lost")
            assert get(proxy).status_code == 200  # the last config keeps serving
            xds.run(xds.server.start())  # the same port
            wait_for(
                lambda: xds.call(lambda: xds.server.streams_opened) > opened,
                timeout=15,
                what="the proxy reconnecting",
            )
            wait_for(lambda: proxy.stats()["control_plane.connected_state"] == 1, what="back")
            xds.set_resources(ENDPOINT, [assignment("backend", b.port)])
            before = b.connections
            wait_for(lambda: get(proxy).status_code == 200 and b.connections > before,
                     timeout=15, what="the new endpoint served")  # fmt: skip
            proxy.assert_nothing_raised()
        finally:
            proxy.stop()


def test_an_assignment_policy_and_priorities_apply(tmp_path, upstreams):
    """The assignment's policy (overprovisioning factor) and priorities reach the workers'
    balancing: with priority 0's only host unhealthy, traffic spills to priority 1."""
    a, b = upstreams
    cla = assignment("backend", a.port)
    cla.policy.overprovisioning_factor.value = 200
    cla.endpoints[0].lb_endpoints[0].health_status = 2  # UNHEALTHY
    spill = cla.endpoints.add()
    spill.priority = 1
    endpoint = spill.lb_endpoints.add().endpoint.address.socket_address
    endpoint.address, endpoint.port_value = "127.0.0.1", b.port
    with XdsThread() as xds:
        xds.set_resources(CLUSTER, [eds_cluster("backend")])
        xds.set_resources(ENDPOINT, [cla])
        proxy = start_proxy(bootstrap(xds.port), tmp_path, args=["--concurrency", "2"])
        try:
            for _ in range(6):
                assert get(proxy).status_code == 200
            assert len(b.requests) == 6 and not a.requests
            stats = proxy.stats()
            assert stats["cluster.backend.membership_total"] == 2
            assert stats["cluster.backend.membership_healthy"] == 1
            assert stats["cluster_manager.cds.update_rejected"] == 0
        finally:
            proxy.stop()


def test_drop_overloads_answer_as_envoy(tmp_path, upstreams):
    """An assignment's drop_overloads, with the answers Envoy 1.40 gives (checked against the
    real binary): all dropped is 503 'unconditional drop overload' with
    x-envoy-unconditional-drop-overload and UDO; a share is 503 'drop overload' with DO; both
    charged to the cluster's upstream 503s."""
    a, _ = upstreams
    log_path = tmp_path / "access.log"
    cla = assignment("backend", a.port)
    drop = cla.policy.drop_overloads.add(category="throttle")
    drop.drop_percentage.numerator = 100
    with XdsThread() as xds:
        config = bootstrap(xds.port)
        hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        hcm["typed_config"]["access_log"] = [
            {
                "name": "file",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3."
                    "FileAccessLog",
                    "path": str(log_path),
                    "log_format": {"text_format": "%RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n"},
                },
            }
        ]
        xds.set_resources(CLUSTER, [eds_cluster("backend")])
        xds.set_resources(ENDPOINT, [cla])
        proxy = start_proxy(config, tmp_path / "proxy", args=["--file-flush-interval-msec", "100"])
        try:
            response = get(proxy)
            assert (response.status_code, response.text) == (503, "unconditional drop overload")
            assert response.headers["x-envoy-unconditional-drop-overload"] == "true"
            assert not a.requests

            drop.drop_percentage.numerator = 50
            xds.set_resources(ENDPOINT, [cla])
            wait_for(lambda: get(proxy).text == "drop overload", what="a 50 % drop")
            answers = {get(proxy).status_code for _ in range(40)}
            assert answers == {200, 503}  # about half dropped
            stats = proxy.stats()
            assert stats["cluster.backend.upstream_rq_503"] >= 2
            # (each worker flushes its own access log buffer)
            wait_for(
                lambda: (
                    "\nDO drop_overload" in "\n" + log_path.read_text()
                    and "UDO unconditional_drop_overload" in log_path.read_text()
                ),
                timeout=15,
                what="both answers in the access log",
            )
        finally:
            proxy.stop()
