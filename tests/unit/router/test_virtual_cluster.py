"""Virtual clusters and route stat prefixes, compiled: what is refused, which stats exist once
the configuration is loaded, which a request is counted under, and the pieces that count
(response code stats ``under`` more scopes, retry outcomes)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from legatus.config.errors import ConfigError
from legatus.config.factory_context import FactoryContext
from legatus.config.proto_json import parse
from legatus.http.codes import ResponseCodeStats
from legatus.router.config import compile_route_config
from legatus.router.rds import RouteConfigProviderManager, compile_rds_table
from legatus.router.retry_policy import RetryOn, RetryPolicy
from legatus.router.retry_state import RetryState, RetryStatus
from legatus.router.route_stats import RouteStatOwners, RouteStats
from legatus.router.virtual_cluster import VirtualClusterStats
from legatus.stats.store import Store
from legatus.upstream.stats import ClusterTrafficStats
from tests.unit.router.support import direct, forward, request, vhost

COUNTERS = (
    "upstream_rq_retry",
    "upstream_rq_retry_limit_exceeded",
    "upstream_rq_retry_overflow",
    "upstream_rq_retry_success",
    "upstream_rq_timeout",
    "upstream_rq_total",
)


def compile_in(store: Store, virtual_hosts: list[dict]):
    proto = parse({"name": "rc", "virtual_hosts": virtual_hosts}, route_pb2.RouteConfiguration)
    context = FactoryContext(
        registry=None,  # type: ignore[arg-type]
        store=store,
        options=None,  # type: ignore[arg-type]
        random=random.Random(1),
        cluster_names=frozenset({"c1"}),
    )
    return compile_route_config(proto, context, "route_config")


def vcluster(name: str, **string_match) -> dict:
    return {"name": name, "headers": [{"name": ":path", "string_match": string_match}]}


def names(store: Store, prefix: str) -> set[str]:
    return {s.name for s in store if s.name.startswith(prefix)}


def test_a_virtual_cluster_without_headers_is_refused_as_envoy_refuses_it():
    with pytest.raises(ConfigError) as e:
        compile_in(Store(), [vhost([], virtual_clusters=[{"name": "v"}])])
    assert e.value.path == "route_config.virtual_hosts[0].virtual_clusters[0].headers"
    assert e.value.message == "virtual clusters must define 'headers'"


def test_a_virtual_cluster_needs_a_name():
    with pytest.raises(ConfigError) as e:
        compile_in(Store(), [vhost([], virtual_clusters=[{"headers": [{"name": "a"}]}])])
    assert e.value.path == "route_config.virtual_hosts[0].virtual_clusters[0].name"


def test_the_configuration_makes_the_counters_of_each_virtual_cluster_and_route_prefix():
    store = Store()
    compile_in(store, [
        vhost([forward("r", {"cluster": "c1"}, stat_prefix="rp"),
               direct("d", stat_prefix="dp"), forward("plain", {"cluster": "c1"})],
              name="vh", virtual_clusters=[vcluster("a", prefix="/a")]),
        vhost([forward("r", {"cluster": "c1"})], domains=("other",), name="bare"),
    ])  # fmt: skip
    expected = {
        f"vhost.vh.{scope}.{counter}"
        for scope in ("vcluster.a", "vcluster.other", "route.rp", "route.dp")
        for counter in COUNTERS
    }
    assert names(store, "vhost.") == expected  # and nothing for the bare virtual host
    assert all(store.value(n) == 0 for n in expected)


def test_a_route_is_plain_only_without_request_stats():
    table = compile_in(Store(), [
        vhost([forward("stats", {"cluster": "c1"}, match={"prefix": "/s"}, stat_prefix="s"),
               forward("retries", {"cluster": "c1", "retry_policy": {"retry_on": "5xx"}},
                       match={"prefix": "/r"}, stat_prefix="r"),
               forward("none", {"cluster": "c1"})]),
    ])  # fmt: skip
    stats, retries, none = (r.action for r in table.virtual_hosts[0].routes)
    assert not stats.plain and not retries.plain_retries
    assert none.plain and none.request_stats is None


def test_the_first_matching_virtual_cluster_is_the_request_s_and_other_the_rest():
    table = compile_in(Store(), [vhost(
        [forward("r", {"cluster": "c1"}, stat_prefix="rp")],
        name="vh",
        virtual_clusters=[
            {"name": "get-a", "headers": [
                {"name": ":path", "string_match": {"prefix": "/a"}},
                {"name": ":method", "string_match": {"exact": "GET"}}]},
            vcluster("any-a", prefix="/a"),
        ],
    )])  # fmt: skip
    select = table.virtual_hosts[0].routes[0].action.request_stats.select
    got = select(request("/a/1"))
    assert got.virtual_cluster_name == "get-a"
    assert got.scopes == ("vhost.vh.vcluster.get-a.", "vhost.vh.route.rp.")
    assert [type(s) for s in got.stats] == [VirtualClusterStats, RouteStats]
    assert select(request("/a/1", method="POST")).virtual_cluster_name == "any-a"
    other = select(request("/b"))
    assert other.virtual_cluster_name is None  # %VIRTUAL_CLUSTER_NAME% shows nothing
    assert other.scopes == ("vhost.vh.vcluster.other.", "vhost.vh.route.rp.")
    assert select(request("/b")) is other  # prebuilt, not made per request


def test_a_route_prefix_alone_counts_every_request_of_the_route():
    table = compile_in(Store(), [vhost([forward("r", {"cluster": "c1"}, stat_prefix="p")])])
    got = table.virtual_hosts[0].routes[0].action.request_stats.select(request("/x"))
    assert got.scopes == ("vhost.vh.route.p.",)
    assert got.virtual_cluster_name is None


def test_a_new_configuration_counts_on_the_same_stats():
    store = Store()
    config = [vhost([forward("r", {"cluster": "c1"})], name="vh",
                    virtual_clusters=[vcluster("a", prefix="/a")])]  # fmt: skip
    first = compile_in(store, config).virtual_hosts[0].virtual_clusters
    first.entries[0].stats.upstream_rq_total.inc()
    second = compile_in(store, config).virtual_hosts[0].virtual_clusters
    second.entries[0].stats.upstream_rq_total.inc()
    assert store.value("vhost.vh.vcluster.a.upstream_rq_total") == 2


def test_response_codes_are_also_charged_under_the_request_s_scopes_without_categories():
    store = Store()
    codes = ResponseCodeStats(store.scope("cluster.c1."))
    under = ("vhost.vh.vcluster.a.", "vhost.vh.route.p.")
    codes.charge(503, under=under)
    codes.charge(200)
    codes.record_time(4.0, under=under)
    for scope in under:
        assert names(store, scope) == {
            f"{scope}upstream_rq_completed", f"{scope}upstream_rq_5xx",
            f"{scope}upstream_rq_503", f"{scope}upstream_rq_time",
        }  # fmt: skip
    assert store.value("cluster.c1.upstream_rq_completed") == 2
    assert store.value("cluster.c1.external.upstream_rq_503") == 1
    assert store.value("vhost.vh.route.p.upstream_rq_time") == 1


def _cluster(store: Store, max_retries: int):
    retries = SimpleNamespace(count=0)
    retries.can_create = lambda: retries.count < max_retries
    retries.inc = lambda: setattr(retries, "count", retries.count + 1)
    retries.dec = lambda: setattr(retries, "count", retries.count - 1)
    return SimpleNamespace(
        stats=ClusterTrafficStats(store.scope("cluster.c1.")),
        resource_managers=[SimpleNamespace(retries=retries)],
    )


def test_retry_outcomes_are_counted_for_the_request_s_stats_as_for_the_cluster():
    store = Store()
    more = (VirtualClusterStats(store.scope("vhost.vh.vcluster.a.")),)
    policy = RetryPolicy(retry_on=int(RetryOn.FIVE_XX), num_retries=1)
    state = RetryState(policy, policy.retry_on, _cluster(store, 3), random.Random(1))
    state.request_stats = more
    assert state.should_retry(True) is RetryStatus.YES
    assert state.should_retry(False) is RetryStatus.NO  # the retry succeeded
    assert state.should_retry(True) is RetryStatus.LIMIT_EXCEEDED
    overflowing = RetryState(policy, policy.retry_on, _cluster(store, 0), random.Random(1))
    overflowing.request_stats = more
    assert overflowing.should_retry(True) is RetryStatus.OVERFLOW
    for counter in ("retry", "retry_success", "retry_limit_exceeded", "retry_overflow"):
        cluster = store.value(f"cluster.c1.upstream_rq_{counter}")
        assert store.value(f"vhost.vh.vcluster.a.upstream_rq_{counter}") == cluster == 1


# Removed by an update ----------------------------------------------------------------------


def _route_config(virtual_clusters: list[str], stat_prefix: str) -> bytes:
    proto = parse({"name": "rc", "virtual_hosts": [vhost(
        [forward("r", {"cluster": "c"}, stat_prefix=stat_prefix)],
        virtual_clusters=[vcluster(n, prefix="/") for n in virtual_clusters])]},
        route_pb2.RouteConfiguration)  # fmt: skip
    return proto.SerializeToString()


def test_an_update_drops_the_counters_of_what_it_removed_and_keeps_the_rest():
    store = Store()
    context = FactoryContext(
        registry=None,  # type: ignore[arg-type]
        store=store,
        options=None,  # type: ignore[arg-type]
        random=random.Random(1),
    )
    manager = RouteConfigProviderManager()
    owners = RouteStatOwners.of(store)
    rds = hcm_pb2.Rds(route_config_name="rc")
    provider = manager.provider(rds, compile_rds_table(context, "rds"), "h", owners)
    manager.update(provider.key, _route_config(["a", "b"], "p"))
    store.counter("vhost.vh.vcluster.b.upstream_rq_200").inc()  # a response code stat
    manager.update(provider.key, _route_config(["a"], "q"))
    assert names(store, "vhost.vh.vcluster.b.") == {"vhost.vh.vcluster.b.upstream_rq_200"}
    assert names(store, "vhost.vh.route.p.") == set()
    assert {f"vhost.vh.vcluster.a.{c}" for c in COUNTERS} == names(store, "vhost.vh.vcluster.a.")
    assert {f"vhost.vh.route.q.{c}" for c in COUNTERS} == names(store, "vhost.vh.route.q.")
    assert set(owners.take_removed()) == {"vhost.vh.vcluster.b.", "vhost.vh.route.p."}
    provider.close()  # its listener is gone: no configuration has the rest any more
    assert names(store, "vhost.") == {"vhost.vh.vcluster.b.upstream_rq_200"}
    assert len(owners.take_removed()) == 3  # a, other, q
