"""Response code stats (Envoy's CodeStatsImpl) and reason phrases."""

from __future__ import annotations

from legatus.http.codes import (
    DownstreamCodeStats,
    ResponseCodeStats,
    code_class,
    reason_phrase,
)
from legatus.http.conn_manager_stats import declare_conn_manager_stats
from legatus.stats.store import Store


def values(store: Store) -> dict[str, int]:
    return {s.name: store.value(s.name) for s in store}


def test_cluster_codes_with_categories():
    store = Store()
    stats = ResponseCodeStats(store.scope("cluster.backend."))
    stats.charge(200)
    stats.charge(503, internal=True)
    stats.charge(200, canary=True)
    assert values(store) == {
        "cluster.backend.upstream_rq_completed": 3,
        "cluster.backend.upstream_rq_2xx": 2,
        "cluster.backend.upstream_rq_200": 2,
        "cluster.backend.external.upstream_rq_completed": 2,
        "cluster.backend.external.upstream_rq_2xx": 2,
        "cluster.backend.external.upstream_rq_200": 2,
        "cluster.backend.upstream_rq_5xx": 1,
        "cluster.backend.upstream_rq_503": 1,
        "cluster.backend.internal.upstream_rq_completed": 1,
        "cluster.backend.internal.upstream_rq_5xx": 1,
        "cluster.backend.internal.upstream_rq_503": 1,
        "cluster.backend.canary.upstream_rq_completed": 1,
        "cluster.backend.canary.upstream_rq_2xx": 1,
        "cluster.backend.canary.upstream_rq_200": 1,
    }


def test_codes_outside_the_known_range_are_unknown():
    store = Store()
    stats = ResponseCodeStats(store.scope("vhost.v.vcluster.other."), categories=False)
    stats.charge(99)
    stats.charge(600)
    assert values(store) == {
        "vhost.v.vcluster.other.upstream_rq_completed": 2,
        "vhost.v.vcluster.other.upstream_rq_unknown": 2,
    }


def test_stats_are_created_on_first_use_then_cached():
    store = Store()
    stats = ResponseCodeStats(store.scope("cluster.a."))
    assert len(store) == 0  # as Envoy: upstream_rq_503 appears with the first 503
    stats.charge(503)
    created = len(store)
    for _ in range(3):
        stats.charge(503)
    assert len(store) == created
    assert store.value("cluster.a.upstream_rq_503") == 4


def test_response_time_histograms():
    store = Store()
    stats = ResponseCodeStats(store.scope("cluster.a."))
    stats.record_time(12.0)
    stats.record_time(3.0, internal=True, canary=True)
    assert values(store) == {
        "cluster.a.upstream_rq_time": 2,
        "cluster.a.external.upstream_rq_time": 1,
        "cluster.a.canary.upstream_rq_time": 1,
        "cluster.a.internal.upstream_rq_time": 1,
    }


def test_downstream_codes_on_hcm_and_listener():
    store = Store()
    sets = declare_conn_manager_stats(
        store.scope(""), "ingress", listener_prefix="listener.0.0.0.0_80."
    )
    stats = DownstreamCodeStats(sets.named, sets.listener)
    stats.charge(200)
    stats.charge(404)
    stats.charge(204, health_check=True)  # health checks are not charged
    stats.charge(700)  # only completed
    for prefix in ("http.ingress.", "listener.0.0.0.0_80.http.ingress."):
        assert store.value(prefix + "downstream_rq_completed") == 3
        assert store.value(prefix + "downstream_rq_2xx") == 1
        assert store.value(prefix + "downstream_rq_4xx") == 1
        assert store.value(prefix + "downstream_rq_5xx") == 0
    no_listener = DownstreamCodeStats(sets.named)
    no_listener.charge(500)
    assert store.value("http.ingress.downstream_rq_5xx") == 1
    assert store.value("listener.0.0.0.0_80.http.ingress.downstream_rq_5xx") == 0


def test_reason_phrases_and_classes():
    assert reason_phrase(431) == "Request Header Fields Too Large"
    assert reason_phrase(418) == "Unknown"  # as Envoy's status line
    assert reason_phrase(599) == "Last Unassigned Server Error Code"
    assert [code_class(c) for c in (100, 204, 302, 404, 503, 600, 42)] == [1, 2, 3, 4, 5, 0, 0]
