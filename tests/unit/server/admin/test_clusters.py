"""/clusters and /listeners, compared with what Envoy 1.40 prints for the same config."""

from __future__ import annotations

import json

from legatus.server.admin.context import ClusterInfo, HostInfo

TEXT = "text/plain; charset=UTF-8"

# Envoy 1.40's /clusters for the fake context's bootstrap (one static host 127.0.0.1:9).
ENVOY_CLUSTERS = """\
backend::observability_name::backend
backend::default_priority::max_connections::1024
backend::default_priority::max_pending_requests::1024
backend::default_priority::max_requests::1024
backend::default_priority::max_retries::3
backend::high_priority::max_connections::1024
backend::high_priority::max_pending_requests::1024
backend::high_priority::max_requests::1024
backend::high_priority::max_retries::3
backend::added_via_api::false
backend::127.0.0.1:9::cx_active::0
backend::127.0.0.1:9::cx_connect_fail::0
backend::127.0.0.1:9::cx_total::0
backend::127.0.0.1:9::rq_active::0
backend::127.0.0.1:9::rq_error::0
backend::127.0.0.1:9::rq_pending_active::0
backend::127.0.0.1:9::rq_success::0
backend::127.0.0.1:9::rq_timeout::0
backend::127.0.0.1:9::rq_total::0
backend::127.0.0.1:9::hostname::
backend::127.0.0.1:9::health_flags::healthy
backend::127.0.0.1:9::weight::1
backend::127.0.0.1:9::region::
backend::127.0.0.1:9::zone::
backend::127.0.0.1:9::sub_zone::
backend::127.0.0.1:9::canary::false
backend::127.0.0.1:9::priority::0
backend::127.0.0.1:9::success_rate::-1
backend::127.0.0.1:9::local_origin_success_rate::-1
"""

# Envoy 1.40's ?format=json for the same cluster (one-space indent, zero values left out).
ENVOY_CLUSTERS_JSON = {
    "cluster_statuses": [
        {
            "name": "backend",
            "host_statuses": [
                {
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 9}},
                    "stats": [
                        {"name": "cx_connect_fail"},
                        {"name": "cx_total"},
                        {"name": "rq_error"},
                        {"name": "rq_success"},
                        {"name": "rq_timeout"},
                        {"name": "rq_total"},
                        {"type": "GAUGE", "name": "cx_active"},
                        {"type": "GAUGE", "name": "rq_active"},
                        {"type": "GAUGE", "name": "rq_pending_active"},
                    ],
                    "health_status": {"eds_health_status": "HEALTHY"},
                    "weight": 1,
                    "locality": {},
                }
            ],
            "circuit_breakers": {
                "thresholds": [
                    {
                        "max_connections": 1024,
                        "max_pending_requests": 1024,
                        "max_requests": 1024,
                        "max_retries": 3,
                    },
                    {
                        "priority": "HIGH",
                        "max_connections": 1024,
                        "max_pending_requests": 1024,
                        "max_requests": 1024,
                        "max_retries": 3,
                    },
                ]
            },
            "observability_name": "backend",
        }
    ]
}


async def test_text_matches_envoy(admin, context):
    assert await admin("/clusters") == (200, TEXT, ENVOY_CLUSTERS)
    assert await admin("/clusters?format=bogus") == (200, TEXT, ENVOY_CLUSTERS)
    assert context.refreshes == 2


async def test_json_matches_envoy(admin):
    status, content_type, body = await admin("/clusters?format=json")
    assert (status, content_type) == (200, "application/json")
    assert json.loads(body) == ENVOY_CLUSTERS_JSON
    assert body.startswith('{\n "cluster_statuses": [\n  {\n   "name": "backend",\n')
    assert body.endswith("}\n")


async def test_host_stats_thresholds_and_flags(admin, context):
    prefix = "cluster.backend.hosts.127.0.0.1:9."
    context.stats.counter(prefix + "cx_total", hidden=True).add(4)
    context.stats.gauge(prefix + "rq_active", hidden=True).set(2)
    config = context.cluster_infos[0].config
    threshold = config.circuit_breakers.thresholds.add()
    threshold.max_connections.value = 10
    config.alt_stat_name = "backend_alt"
    host = HostInfo(
        address="[::1]:80",
        hostname="h2.example",
        weight=3,
        priority=1,
        region="r1",
        zone="z1",
        sub_zone="sz1",
        health_flags=("/failed_active_hc", "/failed_outlier_check"),
    )
    context.cluster_infos[0] = ClusterInfo(
        name="backend",
        config=config,
        added_via_api=True,
        hosts=(*context.cluster_infos[0].hosts, host),
    )
    _, _, body = await admin("/clusters")
    lines = body.splitlines()
    assert "backend::observability_name::backend_alt" in lines
    assert "backend::default_priority::max_connections::10" in lines
    assert "backend::default_priority::max_requests::1024" in lines
    assert "backend::added_via_api::true" in lines
    assert "backend::127.0.0.1:9::cx_total::4" in lines
    assert "backend::127.0.0.1:9::rq_active::2" in lines
    assert "backend::[::1]:80::health_flags::/failed_active_hc/failed_outlier_check" in lines
    assert "backend::[::1]:80::hostname::h2.example" in lines
    assert "backend::[::1]:80::zone::z1" in lines
    assert "backend::[::1]:80::priority::1" in lines
    _, _, body = await admin("/clusters?format=json")
    status = json.loads(body)["cluster_statuses"][0]
    assert status["added_via_api"] is True
    second = status["host_statuses"][1]
    assert second["address"] == {"socket_address": {"address": "::1", "port_value": 80}}
    assert second["health_status"] == {
        "failed_active_health_check": True,
        "failed_outlier_check": True,
        "eds_health_status": "HEALTHY",
    }
    assert second["locality"] == {"region": "r1", "zone": "z1", "sub_zone": "sz1"}
    assert second["priority"] == 1 and second["hostname"] == "h2.example"
    assert status["host_statuses"][0]["stats"][1] == {"value": "4", "name": "cx_total"}


async def test_filter(admin, context):
    _, _, body = await admin("/clusters?filter=^nomatch")
    assert body == ""
    _, _, body = await admin("/clusters?filter=back")
    assert body == ENVOY_CLUSTERS
    assert await admin("/clusters?filter=(") == (400, TEXT, "Invalid re2 regex")


async def test_listeners(admin):
    assert await admin("/listeners") == (
        200,
        TEXT,
        "tcp_in::127.0.0.1:33689\nhttp_in::127.0.0.1:45139\n",
    )
    status, content_type, body = await admin("/listeners?format=json")
    assert (status, content_type) == (200, "application/json")
    assert json.loads(body) == {
        "listener_statuses": [
            {
                "name": "tcp_in",
                "local_address": {"socket_address": {"address": "127.0.0.1", "port_value": 33689}},
            },
            {
                "name": "http_in",
                "local_address": {"socket_address": {"address": "127.0.0.1", "port_value": 45139}},
            },
        ]
    }
    assert body.startswith('{\n "listener_statuses": [\n  {\n   "name": "tcp_in",')
