"""/config_dump: the dump list, ?resource=, ?mask=, ?name_regex=, ?include_eds, as Envoy 1.40."""

from __future__ import annotations

import json

PREFIX = "type.googleapis.com/envoy.admin.v3."


def _types(body: str) -> list[str]:
    return [c["@type"].removeprefix(PREFIX) for c in json.loads(body)["configs"]]


async def test_full_dump(admin, context):
    status, content_type, body = await admin("/config_dump")
    assert (status, content_type) == (200, "application/json")
    assert _types(body) == [
        "BootstrapConfigDump",
        "ClustersConfigDump",
        "ListenersConfigDump",
        "ScopedRoutesConfigDump",
        "RoutesConfigDump",
        "SecretsConfigDump",
    ]
    configs = json.loads(body)["configs"]
    bootstrap = configs[0]
    assert bootstrap["bootstrap"]["node"]["user_agent_name"] == "envoy"
    assert bootstrap["last_updated"].endswith("Z")
    static = configs[1]["static_clusters"][0]
    assert static["cluster"]["@type"] == "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    assert static["cluster"]["name"] == "backend"
    listeners = configs[2]["static_listeners"]
    assert [item["listener"]["name"] for item in listeners] == ["tcp_in", "http_in"]
    # As configured, like Envoy: port 0 stays 0 in the dump.
    assert listeners[0]["listener"]["address"]["socket_address"]["port_value"] == 0
    assert configs[3] == {"@type": PREFIX + "ScopedRoutesConfigDump"}
    routes = configs[4]["static_route_configs"]
    assert [r["route_config"]["name"] for r in routes] == ["local_route"]
    assert routes[0]["route_config"]["@type"].endswith("envoy.config.route.v3.RouteConfiguration")
    assert body.startswith('{\n "configs": [\n  {\n   "@type": ') and body.endswith("}\n")


async def test_include_eds(admin):
    _, _, body = await admin("/config_dump?include_eds")
    assert _types(body)[2] == "EndpointsConfigDump"
    endpoint = json.loads(body)["configs"][2]["static_endpoint_configs"][0]["endpoint_config"]
    # The shape Envoy 1.40 rebuilds from its hosts.
    assert endpoint == {
        "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        "cluster_name": "backend",
        "endpoints": [
            {
                "locality": {},
                "lb_endpoints": [
                    {
                        "endpoint": {
                            "address": {
                                "socket_address": {"address": "127.0.0.1", "port_value": 9}
                            },
                            "health_check_config": {},
                        },
                        "health_status": "HEALTHY",
                        "load_balancing_weight": 1,
                    }
                ],
                "load_balancing_weight": 0,
            }
        ],
        "policy": {"overprovisioning_factor": 140},
    }


async def test_resource_and_mask(admin):
    _, _, body = await admin("/config_dump?resource=static_clusters&mask=cluster.name")
    assert json.loads(body) == {
        "configs": [
            {
                "@type": PREFIX + "ClustersConfigDump.StaticCluster",
                "cluster": {
                    "@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                    "name": "backend",
                },
            }
        ]
    }
    _, _, body = await admin("/config_dump?resource=static_listeners")
    assert _types(body) == ["ListenersConfigDump.StaticListener"] * 2
    assert await admin("/config_dump?resource=dynamic_listeners") == (
        200,
        "application/json",
        "{}\n",
    )


async def test_resource_errors(admin, context):
    response_body = "bogus not found in config dump"
    assert await admin("/config_dump?resource=bogus") == (404, "text/plain", response_body)
    assert await admin("/config_dump?resource=bootstrap") == (
        400,
        "text/plain; charset=UTF-8",
        "bootstrap is not a repeated field. Use ?mask=bootstrap to get only this field",
    )
    status, _, body = await admin("/config_dump?resource=static_clusters&mask=bogus")
    assert status == 400 and body.endswith("could not be successfully used.")


async def test_mask_on_whole_dumps(admin):
    _, _, body = await admin("/config_dump?mask=bootstrap.node")
    configs = json.loads(body)["configs"]
    assert [c["@type"] for c in configs] == [PREFIX + "BootstrapConfigDump"]
    assert list(configs[0]) == ["@type", "bootstrap"]  # last_updated trimmed away
    assert list(configs[0]["bootstrap"]) == ["node"]
    # Without ?resource=, mask paths do not go into Any fields (Envoy says so with a 400).
    for mask in ("bogus", "static_clusters.cluster.name", "bootstrap.node,static_clusters"):
        assert await admin(f"/config_dump?mask={mask}") == (
            400,
            "text/plain; charset=UTF-8",
            f"FieldMask {mask} could not be successfully applied to any configs.",
        )
    _, _, body = await admin("/config_dump?mask=static_clusters")
    assert _types(body) == ["ClustersConfigDump"]


async def test_name_regex(admin):
    _, _, body = await admin("/config_dump?name_regex=back.*")
    configs = json.loads(body)["configs"]
    assert "static_resources" in configs[0]["bootstrap"]  # the bootstrap is never filtered
    assert [c["cluster"]["name"] for c in configs[1]["static_clusters"]] == ["backend"]
    assert configs[2] == {"@type": PREFIX + "ListenersConfigDump"}
    _, _, body = await admin("/config_dump?name_regex=tcp.*&resource=static_listeners")
    assert [c["listener"]["name"] for c in json.loads(body)["configs"]] == ["tcp_in"]
    status, _, body = await admin("/config_dump?name_regex=(")
    assert status == 400
    assert body.startswith("INVALID_ARGUMENT: Error while parsing name_regex from (: ")


async def test_no_route_dumps_without_an_http_connection_manager(admin, context):
    context.listener_infos = [info for info in context.listener_infos if info.name == "tcp_in"]
    del context.bootstrap.static_resources.listeners[1]
    _, _, body = await admin("/config_dump")
    assert _types(body) == [
        "BootstrapConfigDump",
        "ClustersConfigDump",
        "ListenersConfigDump",
        "SecretsConfigDump",
    ]
