"""Cluster load-balancing config (lb_config.py) and the worker-side ThreadLocalCluster that
builds balancers from it: EDS-style health_status, refresh_health, stats."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import json_format

from legatus.config.errors import ConfigError
from legatus.stats.store import Store
from legatus.upstream.cluster import compile_cluster, static_hosts
from legatus.upstream.host import HealthFlag
from legatus.upstream.lb_config import HashFunction, LbPolicy
from legatus.upstream.thread_local_cluster import ThreadLocalCluster

PREFIX = "type.googleapis.com/envoy.extensions.load_balancing_policies."


def proto(endpoints=None, **fields) -> cluster_pb2.Cluster:
    doc = {
        "name": "c",
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": "c",
            "endpoints": endpoints or [{"lb_endpoints": [_endpoint(8000 + i) for i in range(3)]}],
        },
        **fields,
    }
    return json_format.ParseDict(doc, cluster_pb2.Cluster())


def _endpoint(port: int, **extra) -> dict:
    address = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
    return {"endpoint": {"address": address}, **extra}


def lb_of(**fields):
    return compile_cluster(proto(**fields), "cluster").lb


def error_of(**fields) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        compile_cluster(proto(**fields), "cluster")
    return e.value


def typed(kind: str, message: str, **config) -> dict:
    return {"policies": [{"typed_extension_config": {
        "name": f"envoy.load_balancing_policies.{kind}",
        "typed_config": {"@type": f"{PREFIX}{kind}.v3.{message}", **config}}}]}  # fmt: skip


def test_defaults():
    lb = lb_of()
    assert lb.policy is LbPolicy.ROUND_ROBIN
    assert (lb.healthy_panic_threshold, lb.overprovisioning_factor) == (50, 140)
    assert (lb.min_ring_size, lb.max_ring_size, lb.table_size) == (1024, 8 << 20, 65537)
    assert not lb.hashing


def test_legacy_policies_and_their_configs():
    assert lb_of(lb_policy="RANDOM").policy is LbPolicy.RANDOM
    lr = lb_of(
        lb_policy="LEAST_REQUEST",
        least_request_lb_config={"choice_count": 3, "active_request_bias": {
            "default_value": 0.5, "runtime_key": "k"}},
    )  # fmt: skip
    assert (lr.choice_count, lr.active_request_bias) == (3, 0.5)
    ring = lb_of(
        lb_policy="RING_HASH",
        ring_hash_lb_config={"minimum_ring_size": 64, "maximum_ring_size": 128,
                             "hash_function": "MURMUR_HASH_2"},
    )  # fmt: skip
    assert (ring.min_ring_size, ring.max_ring_size, ring.hash_function) == (
        64,
        128,
        HashFunction.MURMUR_HASH_2,
    )
    assert ring.hashing
    assert lb_of(lb_policy="MAGLEV", maglev_lb_config={"table_size": 1021}).table_size == 1021
    # Another policy's lb config is ignored, as Envoy does.
    assert lb_of(lb_policy="ROUND_ROBIN", maglev_lb_config={"table_size": 1021}).table_size == 65537


def test_common_lb_config():
    lb = lb_of(
        common_lb_config={
            "healthy_panic_threshold": {"value": 30.5},
            "locality_weighted_lb_config": {},
            "consistent_hashing_lb_config": {"use_hostname_for_hashing": True},
        }
    )
    assert (lb.healthy_panic_threshold, lb.locality_weighted, lb.use_hostname_for_hashing) == (
        31,
        True,
        True,
    )


def test_assignment_policy_and_locality_weights():
    endpoints = [
        {"locality": {"zone": "a"}, "load_balancing_weight": 3, "priority": 1,
         "lb_endpoints": [_endpoint(8000)]},
        {"locality": {"zone": "b"}, "lb_endpoints": [_endpoint(8001)]},
    ]  # fmt: skip
    c = compile_cluster(proto(endpoints=endpoints), "cluster")
    assert dict(c.lb.locality_weights) == {(1, "", "a", ""): 3, (0, "", "b", ""): 0}
    assert c.endpoints[0].locality_weight == 3
    p = proto(endpoints=endpoints)
    p.load_assignment.policy.overprovisioning_factor.value = 100
    p.load_assignment.policy.weighted_priority_health = True
    lb = compile_cluster(p, "cluster").lb
    assert (lb.overprovisioning_factor, lb.weighted_priority_health) == (100, True)


@pytest.mark.parametrize(
    ("fields", "path", "message"),
    [
        (
            {"common_lb_config": {"zone_aware_lb_config": {}}},
            "cluster.common_lb_config.zone_aware_lb_config",
            "field 'zone_aware_lb_config' of CommonLbConfig is not supported by legatus yet",
        ),
        (
            {"round_robin_lb_config": {"slow_start_config": {}}},
            "cluster.round_robin_lb_config.slow_start_config",
            "field 'slow_start_config' of RoundRobinLbConfig is not supported by legatus yet",
        ),
        (
            {"lb_policy": "MAGLEV", "maglev_lb_config": {"table_size": 1000}},
            "cluster.maglev_lb_config.table_size",
            "The table size of maglev must be prime number",
        ),
        (
            {"lb_policy": "RING_HASH", "ring_hash_lb_config": {"minimum_ring_size": 10,
                                                               "maximum_ring_size": 5}},
            "cluster.ring_hash_lb_config",
            "ring hash: minimum_ring_size (10) > maximum_ring_size (5)",
        ),
        (
            {"lb_policy": "CLUSTER_PROVIDED"},
            "cluster.lb_policy",
            "lb_policy CLUSTER_PROVIDED is not supported by legatus yet",
        ),
        (
            {"lb_subset_config": {"fallback_policy": "ANY_ENDPOINT"}},
            "cluster.lb_subset_config",
            "field 'lb_subset_config' of Cluster is not supported by legatus yet",
        ),
        (
            {"load_balancing_policy": typed(
                "round_robin", "RoundRobin",
                locality_lb_config={"zone_aware_lb_config": {}})},
            "cluster.load_balancing_policy.policies[0].typed_extension_config.typed_config"
            ".locality_lb_config.zone_aware_lb_config",
            "field 'zone_aware_lb_config' of LocalityLbConfig is not supported by legatus yet",
        ),
    ],
)  # fmt: skip
def test_refused_with_the_field_path(fields, path, message):
    e = error_of(**fields)
    assert (e.path, e.message) == (path, message)


def test_typed_policies():
    lr = lb_of(load_balancing_policy=typed(
        "least_request", "LeastRequest", choice_count=4, selection_method="FULL_SCAN",
        locality_lb_config={"locality_weighted_lb_config": {}}))  # fmt: skip
    assert (lr.policy, lr.choice_count, lr.full_scan, lr.locality_weighted) == (
        LbPolicy.LEAST_REQUEST,
        4,
        True,
        True,
    )
    hashing = {"hash_policy": [{"header": {"header_name": "x"}}]}
    ring = lb_of(load_balancing_policy=typed(
        "ring_hash", "RingHash", minimum_ring_size=16, hash_function="MURMUR_HASH_2",
        consistent_hashing_lb_config=hashing))  # fmt: skip
    assert (ring.policy, ring.min_ring_size, ring.hash_function) == (
        LbPolicy.RING_HASH,
        16,
        HashFunction.MURMUR_HASH_2,
    )
    assert ring.hash_policy is not None
    assert lb_of(load_balancing_policy=typed("maglev", "Maglev")).policy is LbPolicy.MAGLEV
    assert lb_of(load_balancing_policy=typed("random", "Random")).policy is LbPolicy.RANDOM


def test_first_known_typed_policy_wins():
    unknown = {"typed_extension_config": {"name": "custom", "typed_config": {
        "@type": "type.googleapis.com/google.protobuf.Empty"}}}  # fmt: skip
    policies = {"policies": [unknown, *typed("maglev", "Maglev")["policies"],
                             *typed("random", "Random")["policies"]]}  # fmt: skip
    assert lb_of(load_balancing_policy=policies).policy is LbPolicy.MAGLEV
    e = error_of(load_balancing_policy={"policies": [unknown]})
    assert e.message == (
        "cluster: didn't find a registered load balancer factory implementation for cluster: 'c'"
    )
    from envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3 import (
        client_side_weighted_round_robin_pb2,  # noqa: F401 (registers the type for parsing)
    )

    wrr = {
        "typed_extension_config": {
            "name": "wrr",
            "typed_config": {
                "@type": PREFIX + "client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin"
            },
        }
    }
    e = error_of(load_balancing_policy={"policies": [wrr, *typed("random", "Random")["policies"]]})
    assert "is not supported by legatus yet" in e.message


# ThreadLocalCluster ------------------------------------------------------------------------


def worker_cluster(store=None, **fields):
    config = compile_cluster(proto(**fields), "cluster")
    cluster = ThreadLocalCluster(config, store if store is not None else Store(), random.Random(7))
    cluster.update_hosts(static_hosts(config))
    return cluster


def test_health_status_sets_eds_flags():
    endpoints = [{"lb_endpoints": [
        _endpoint(8000, health_status="UNHEALTHY"), _endpoint(8001, health_status="DRAINING"),
        _endpoint(8002, health_status="TIMEOUT"), _endpoint(8003, health_status="DEGRADED"),
        _endpoint(8004, health_status="HEALTHY"), _endpoint(8005)]}]  # fmt: skip
    cluster = worker_cluster(endpoints=endpoints)
    flags = [h.health_flags for h in cluster.hosts]
    assert flags == [
        HealthFlag.FAILED_EDS_HEALTH,
        HealthFlag.EDS_STATUS_DRAINING,
        HealthFlag.FAILED_EDS_HEALTH,
        HealthFlag.DEGRADED_EDS_HEALTH,
        0,
        0,
    ]
    # 2 healthy, 1 degraded of 5 non-excluded (draining is excluded): 67% / 33% of the load
    counts = Counter(cluster.choose_host() for _ in range(300))
    assert set(counts) == set(cluster.hosts[3:])
    assert 70 < counts[cluster.hosts[3]] < 130


def test_refresh_health_rebuilds_and_keeps_eds_flags():
    endpoints = [{"lb_endpoints": [
        _endpoint(8000, health_status="UNHEALTHY"), _endpoint(8001), _endpoint(8002),
        _endpoint(8003)]}]  # fmt: skip
    cluster = worker_cluster(endpoints=endpoints)
    for host in cluster.hosts:  # what the worker does with the main process's flags
        host.health_flags = 0
    cluster.hosts[1].health_flags = HealthFlag.FAILED_ACTIVE_HC
    cluster.refresh_health()
    assert cluster.hosts[0].health_flags == HealthFlag.FAILED_EDS_HEALTH
    assert set(cluster.choose_host() for _ in range(10)) == set(cluster.hosts[2:])
    cluster.hosts[2].health_flags = HealthFlag.FAILED_OUTLIER_CHECK
    cluster.refresh_health()  # 1 of 4 healthy: panic
    assert len(set(cluster.choose_host() for _ in range(40))) == 4
    assert cluster.scope.store.value("cluster.c.lb_healthy_panic") == 40


def test_pick_host_follows_every_rebuild_of_the_balancer():
    cluster = worker_cluster()
    assert len({cluster.pick_host() for _ in range(6)}) == 3  # round robin over the three
    cluster.hosts[0].health_flags = HealthFlag.FAILED_ACTIVE_HC
    cluster.refresh_health()
    assert {cluster.pick_host() for _ in range(6)} == set(cluster.hosts[1:])
    cluster.update_hosts(tuple(h.config for h in cluster.hosts[2:]))
    assert {cluster.pick_host() for _ in range(4)} == {cluster.hosts[0]}
    cluster.update_hosts(())
    assert cluster.pick_host() is None


def test_hashing_cluster_declares_table_gauges():
    store = Store()
    cluster = worker_cluster(store, lb_policy="RING_HASH")
    assert cluster.hashing
    assert store.value("cluster.c.ring_hash_lb.size") == 1026
    assert store.value("cluster.c.ring_hash_lb.min_hashes_per_host") == 342
    maglev_store = Store()
    worker_cluster(maglev_store, lb_policy="MAGLEV")
    assert maglev_store.value("cluster.c.maglev_lb.min_entries_per_host") == 21845
    assert maglev_store.value("cluster.c.maglev_lb.max_entries_per_host") == 21846


def test_choose_host_with_a_hash_context():
    from envoy.config.route.v3 import route_components_pb2

    from legatus.http.headers import HeaderMap
    from legatus.router.hash_policy import HashContext, compile_hash_policy

    policy = route_components_pb2.RouteAction.HashPolicy()
    policy.header.header_name = "x-user"
    compiled = compile_hash_policy([policy], "p")
    cluster = worker_cluster(lb_policy="MAGLEV")
    picks = {
        cluster.choose_host(HashContext(compiled, HeaderMap([("x-user", "alice")])))
        for _ in range(10)
    }
    assert len(picks) == 1
