"""/config_dump of what came over xDS: a legatus process driven by a control plane over ADS
(CDS, EDS, LDS, RDS), then refused updates, checked in the JSON of /config_dump and of its
``?resource=``, ``?mask=`` and ``?name_regex=`` answers (the shapes checked against Envoy
1.40 in tests/differential/test_config_dump_xds_envoy.py)."""

from __future__ import annotations

import json
import time
from typing import Any

from google.protobuf import any_pb2, json_format, message_factory, symbol_database, timestamp_pb2
from google.protobuf.message import Message

from legatus.config_subscription.decode import CLUSTER, ENDPOINT, LISTENER, ROUTE
from tests.integration.test_xds_cds_eds import assignment, eds_cluster
from tests.integration.test_xds_lds_rds import TEAPOT, TO_BACKEND, listener, routes
from tests.support.http_upstream import HttpUpstream
from tests.support.process import ProxyProcess, start_proxy, wait_for
from tests.support.upstreams import free_port
from tests.support.xds_thread import XdsThread, ads_bootstrap

ADMIN = "type.googleapis.com/envoy.admin.v3."
LDS = {"lds_config": {"ads": {}, "resource_api_version": "V3"}}
NOPE = [
    {
        "name": "nope",
        "typed_config": {"@type": "type.googleapis.com/google.protobuf.Struct", "value": {}},
    }
]


def dump(proxy: ProxyProcess, query: str = "") -> dict[str, Any]:
    status, body = proxy.admin("/config_dump" + query)
    assert status == 200, body
    return json.loads(body)


def section(dumped: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in dumped["configs"] if c["@type"] == ADMIN + kind)


def unpacked(value: dict[str, Any]) -> Message:
    """A dumped Any back as its message."""
    packed = json_format.ParseDict(value, any_pb2.Any())
    pool = symbol_database.Default().pool
    descriptor = pool.FindMessageTypeByName(packed.type_url.rpartition("/")[2])
    message = message_factory.GetMessageClass(descriptor)()
    packed.Unpack(message)
    return message


def stat(proxy: ProxyProcess, name: str) -> int:
    return proxy.stats().get(name, 0)


def nacked(xds: XdsThread, type_url: str, since: int) -> bool:
    return any(r.is_nack for r in xds.requests(type_url)[since:])


def duplicate_domains():
    bad = routes(TEAPOT)
    bad.virtual_hosts.add().CopyFrom(bad.virtual_hosts[0])
    bad.virtual_hosts[1].name = "again"
    return bad


def test_config_dump_shows_xds_resources_versions_and_refusals(tmp_path):
    up = HttpUpstream()
    port = free_port()
    first = listener(port)
    with XdsThread() as xds:
        xds.set_resources(CLUSTER, [eds_cluster("backend")])
        xds.set_resources(ENDPOINT, [assignment("backend", up.port)])
        xds.set_resources(ROUTE, [routes(TO_BACKEND)])
        xds.set_resources(LISTENER, [first])
        started = time.time()
        proxy = start_proxy(ads_bootstrap(xds.port, dynamic_resources=LDS), tmp_path,
                            args=["--drain-time-s", "2"])  # fmt: skip
        try:
            full = dump(proxy, "?include_eds")
            assert [c["@type"].removeprefix(ADMIN) for c in full["configs"]] == [
                "BootstrapConfigDump",
                "ClustersConfigDump",
                "EndpointsConfigDump",
                "ListenersConfigDump",
                "ScopedRoutesConfigDump",
                "RoutesConfigDump",
                "SecretsConfigDump",
            ]
            clusters = section(full, "ClustersConfigDump")
            assert clusters["version_info"] == "1"
            assert [c["cluster"]["name"] for c in clusters["static_clusters"]] == ["xds"]
            [active] = clusters["dynamic_active_clusters"]
            assert active["version_info"] == "1"
            assert unpacked(active["cluster"]) == eds_cluster("backend")
            assert "dynamic_warming_clusters" not in clusters
            # EDS shows as the CDS cluster's hosts, rebuilt (no version, no time), as in Envoy.
            endpoints = section(full, "EndpointsConfigDump")
            [dynamic_cla] = endpoints["dynamic_endpoint_configs"]
            assert set(dynamic_cla) == {"endpoint_config"}
            cla = dynamic_cla["endpoint_config"]
            assert cla["cluster_name"] == "backend"
            lb = cla["endpoints"][0]["lb_endpoints"][0]
            assert lb["endpoint"]["address"]["socket_address"]["port_value"] == up.port
            assert [c["endpoint_config"]["cluster_name"]
                    for c in endpoints["static_endpoint_configs"]] == ["xds"]  # fmt: skip
            listeners = section(full, "ListenersConfigDump")
            assert listeners["version_info"] == "1"
            [http] = listeners["dynamic_listeners"]
            assert set(http) == {"name", "active_state"}
            assert http["active_state"]["version_info"] == "1"
            assert unpacked(http["active_state"]["listener"]) == first
            route_dump = section(full, "RoutesConfigDump")
            [route] = route_dump["dynamic_route_configs"]
            assert route["version_info"] == "1"
            assert unpacked(route["route_config"]) == routes(TO_BACKEND)
            for stamp in (active["last_updated"], http["active_state"]["last_updated"],
                          route["last_updated"]):  # fmt: skip
                assert stamp.endswith("Z")
                parsed = timestamp_pb2.Timestamp()
                parsed.FromJsonString(stamp)
                assert parsed.ToSeconds() >= int(started)

            # A cluster waiting for its endpoints is warming, with the version that brought it.
            xds.set_resources(CLUSTER, [eds_cluster("backend"), eds_cluster("warm")])
            wait_for(lambda: stat(proxy, "cluster_manager.warming_clusters") == 1, what="warm")
            clusters = section(dump(proxy), "ClustersConfigDump")
            assert clusters["version_info"] == "2"
            assert [(c["cluster"]["name"], c["version_info"])
                    for c in clusters["dynamic_warming_clusters"]] == [("warm", "2")]  # fmt: skip
            assert [(c["cluster"]["name"], c["version_info"])
                    for c in clusters["dynamic_active_clusters"]] == [("backend", "1")]  # fmt: skip
            xds.set_resources(ENDPOINT, [assignment("backend", up.port), assignment("warm", 9)])
            wait_for(lambda: stat(proxy, "cluster_manager.warming_clusters") == 0, what="warm")

            # Refused updates. CDS and RDS: no error_state (Envoy 1.40 fills none there), the
            # resources and versions stay; LDS: error_state, by listener and on its own.
            marks = {t: len(xds.requests(t)) for t in (CLUSTER, LISTENER, ROUTE)}
            bad_cluster = eds_cluster("backend")
            bad_cluster.ClearField("eds_cluster_config")
            xds.set_resources(CLUSTER, [bad_cluster, eds_cluster("warm")])
            bad_listener = listener(port, filters=NOPE)
            xds.set_resources(LISTENER, [bad_listener])
            xds.set_resources(ROUTE, [duplicate_domains()])
            for type_url, since in marks.items():
                wait_for(lambda t=type_url, s=since: nacked(xds, t, s), what=f"NACK {type_url}")
            refused = dump(proxy)
            clusters = section(refused, "ClustersConfigDump")
            assert clusters["version_info"] == "2"  # the refused update changed nothing
            assert [(c["cluster"]["name"], c["version_info"], "error_state" in c)
                    for c in clusters["dynamic_active_clusters"]] == [
                ("backend", "1", False), ("warm", "2", False)]  # fmt: skip
            assert clusters["dynamic_active_clusters"][0]["last_updated"] == active["last_updated"]
            [route_now] = section(refused, "RoutesConfigDump")["dynamic_route_configs"]
            assert route_now == route
            listeners = section(refused, "ListenersConfigDump")
            assert listeners["version_info"] == "1"
            named, alone = listeners["dynamic_listeners"]
            assert named["name"] == "http"
            assert named["active_state"] == http["active_state"]
            error = named["error_state"]
            assert unpacked(error["failed_configuration"]) == bad_listener
            assert "nope" in error["details"]
            assert error["last_update_attempt"].endswith("Z")
            assert set(alone) == {"error_state"}
            assert alone["error_state"] == {
                "failed_configuration": error["failed_configuration"],
                "details": error["details"],
            }

            # ?resource= dumps each element; ?mask= applies to each; ?name_regex= matches
            # whole names (a listener's refusals stay in).
            elements = dump(proxy, "?resource=dynamic_active_clusters&mask=cluster.name,"
                                   "version_info")["configs"]  # fmt: skip
            assert elements == [
                {"@type": ADMIN + "ClustersConfigDump.DynamicCluster", "version_info": v,
                 "cluster": {"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                             "name": n}}
                for n, v in (("backend", "1"), ("warm", "2"))
            ]  # fmt: skip
            assert dump(proxy, "?resource=dynamic_route_configs&mask=version_info") == {
                "configs": [
                    {"@type": ADMIN + "RoutesConfigDump.DynamicRouteConfig", "version_info": "1"}
                ]
            }
            assert dump(proxy, "?resource=dynamic_listeners&mask=name") == {
                "configs": [
                    {"@type": ADMIN + "ListenersConfigDump.DynamicListener", "name": "http"},
                    {"@type": ADMIN + "ListenersConfigDump.DynamicListener"},
                ]
            }
            eds = dump(proxy, "?resource=dynamic_endpoint_configs&include_eds")["configs"]
            assert [e["endpoint_config"]["cluster_name"] for e in eds] == ["backend", "warm"]
            assert dump(proxy, "?resource=dynamic_warming_clusters") == {}
            only = dump(proxy, "?name_regex=war.*")
            clusters = section(only, "ClustersConfigDump")
            assert [c["cluster"]["name"] for c in clusters["dynamic_active_clusters"]] == ["warm"]
            assert "static_clusters" not in clusters
            listeners = section(only, "ListenersConfigDump")
            assert [set(d) for d in listeners["dynamic_listeners"]] == [
                {"name", "error_state"},
                {"error_state"},
            ]
            assert "dynamic_route_configs" not in section(only, "RoutesConfigDump")
            assert dump(proxy, "?name_regex=war")["configs"][1] == {
                "@type": ADMIN + "ClustersConfigDump",
                "version_info": "2",
            }
            assert proxy.admin("/config_dump?mask=dynamic_active_clusters.version_info") == (
                400,
                "FieldMask dynamic_active_clusters.version_info could not be successfully "
                "applied to any configs.",
            )
            status, body = proxy.admin(
                "/config_dump?resource=dynamic_listeners&mask=active_state.listener.name"
            )
            assert status == 400 and body.endswith("could not be successfully used.")

            # A listener replaced (not in place) drains, listed with its version until it is
            # gone; the next update clears the refusals. An update that changes nothing
            # changes no version.
            replaced = listener(port)
            replaced.per_connection_buffer_limit_bytes.value = 65536
            xds.set_resources(LISTENER, [replaced])
            wait_for(lambda: stat(proxy, "listener_manager.listener_modified") == 1, what="mod")
            [http] = section(dump(proxy), "ListenersConfigDump")["dynamic_listeners"]
            assert sorted(http) == ["active_state", "draining_state", "name"]
            assert http["active_state"]["version_info"] == "3"
            assert http["draining_state"]["version_info"] == "1"
            assert unpacked(http["draining_state"]["listener"]) == first
            xds.set_resources(ROUTE, [routes(TO_BACKEND)], version="same")
            wait_for(lambda: stat(proxy, "http.ingress.rds.routes.update_success") >= 2,
                     what="the same routes again")  # fmt: skip
            assert section(dump(proxy), "RoutesConfigDump")["dynamic_route_configs"] == [route]
            wait_for(lambda: "draining_state" not in section(dump(proxy), "ListenersConfigDump")
                     ["dynamic_listeners"][0], timeout=5, what="drained")  # fmt: skip
            proxy.assert_nothing_raised()
        finally:
            proxy.stop()
            up.close()
