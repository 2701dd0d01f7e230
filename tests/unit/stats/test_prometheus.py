"""/stats/prometheus rendering, byte for byte against Envoy 1.40's output."""

# ruff: noqa: E501 (the golden lines are Envoy's, unwrapped)

from __future__ import annotations

import math

from envoy.config.metrics.v3 import stats_pb2
from google.protobuf import json_format
from prometheus_client.parser import text_string_to_metric_families

from legatus.stats import prometheus
from legatus.stats.store import Histogram, Store
from legatus.stats.tag_extractor import TagExtractor

# Families copied from the real Envoy 1.40's /stats/prometheus, run with the stats_tags
# below, clusters "a_b", "backend" (alt_stat_name backend_alt), "foo", "foo-bar", "foo.x"
# and custom buckets for http.ingress_http.downstream_rq_time.
ENVOY_GOLDEN = """\
# TYPE envoy_cluster_upstream_cx_total counter
envoy_cluster_upstream_cx_total{my_fixed="fv",envoy_cluster_name="a_b"} 0
envoy_cluster_upstream_cx_total{my_fixed="fv",envoy_cluster_name="backend_alt"} 1
envoy_cluster_upstream_cx_total{my_fixed="fv",envoy_cluster_name="foo"} 0
envoy_cluster_upstream_cx_total{my_fixed="fv",envoy_cluster_name="foo-bar"} 0
# TYPE envoy_cluster_x_upstream_cx_total counter
envoy_cluster_x_upstream_cx_total{my_fixed="fv",envoy_cluster_name="foo"} 0
# TYPE envoy_listener_http_downstream_rq_xx counter
envoy_listener_http_downstream_rq_xx{envoy_response_code_class="1",my_fixed="fv",envoy_http_conn_manager_prefix="ingress_http",envoy_listener_address="127.0.0.1_0"} 0
envoy_listener_http_downstream_rq_xx{envoy_response_code_class="2",my_fixed="fv",envoy_http_conn_manager_prefix="ingress_http",envoy_listener_address="127.0.0.1_0"} 5
envoy_listener_http_downstream_rq_xx{envoy_response_code_class="3",my_fixed="fv",envoy_http_conn_manager_prefix="ingress_http",envoy_listener_address="127.0.0.1_0"} 0
envoy_listener_http_downstream_rq_xx{envoy_response_code_class="4",my_fixed="fv",envoy_http_conn_manager_prefix="ingress_http",envoy_listener_address="127.0.0.1_0"} 0
envoy_listener_http_downstream_rq_xx{envoy_response_code_class="5",my_fixed="fv",envoy_http_conn_manager_prefix="ingress_http",envoy_listener_address="127.0.0.1_0"} 1
# TYPE envoy_tcp_stream_cx_drain_close counter
envoy_tcp_stream_cx_drain_close{my_fixed="fv",envoy_tcp_prefix="ingress_tcp",my_regex="down"} 0
# TYPE envoy_cluster_membership_healthy gauge
envoy_cluster_membership_healthy{my_fixed="fv",envoy_cluster_name="a_b"} 1
envoy_cluster_membership_healthy{my_fixed="fv",envoy_cluster_name="backend_alt"} 2
envoy_cluster_membership_healthy{my_fixed="fv",envoy_cluster_name="foo"} 1
envoy_cluster_membership_healthy{my_fixed="fv",envoy_cluster_name="foo-bar"} 1
# TYPE envoy_server_live gauge
envoy_server_live{my_fixed="fv"} 1
# TYPE envoy_http_downstream_rq_time histogram
envoy_http_downstream_rq_time_bucket{my_fixed="fv",envoy_http_conn_manager_prefix="admin",le="0.5"} 1
envoy_http_downstream_rq_time_bucket{my_fixed="fv",envoy_http_conn_manager_prefix="admin",le="1"} 1
envoy_http_downstream_rq_time_bucket{my_fixed="fv",envoy_http_conn_manager_prefix="admin",le="5"} 1
envoy_http_downstream_rq_time_bucket{my_fixed="fv",envoy_http_conn_manager_prefix="admin",le="10"} 1
envoy_http_downstream_rq_time_bucket{my_fixed="fv",envoy_http_conn_manager_prefix="admin",le="25"} 1
envoy_http_downstream_rq_time_bucket{my_fixed="fv",envoy_http_conn_manager_prefix="admin",le="50"} 1
envoy_http_downstream_rq_time_bucket{my_fixed="fv",envoy_http_conn_manager_prefix="admin",le="100"} 1
envoy_http_downstream_rq_time_bucket{my_fixed="fv",envoy_http_conn_manager_prefix="admin",le="250"} 1
envoy_http_downstream_rq_time_bucket{my_fixed="fv",envoy_http_conn_manager_prefix="admin",le="500"} 1
envoy_http_downstream_rq_time_bucket{my_fixed="fv",envoy_http_conn_manager_prefix="admin",le="1000"} 1
envoy_http_downstream_rq_time_bucket{my_fixed="fv",envoy_http_conn_manager_prefix="admin",le="2500"} 1
envoy_http_downstream_rq_time_bucket{my_fixed="fv",envoy_http_conn_manager_prefix="admin",le="5000"} 1
envoy_http_downstream_rq_time_bucket{my_fixed="fv",envoy_http_conn_manager_prefix="admin",le="10000"} 1
envoy_http_downstream_rq_time_bucket{my_fixed="fv",envoy_http_conn_manager_prefix="admin",le="30000"} 1
envoy_http_downstream_rq_time_bucket{my_fixed="fv",envoy_http_conn_manager_prefix="admin",le="60000"} 1
envoy_http_downstream_rq_time_bucket{my_fixed="fv",envoy_http_conn_manager_prefix="admin",le="300000"} 1
envoy_http_downstream_rq_time_bucket{my_fixed="fv",envoy_http_conn_manager_prefix="admin",le="600000"} 1
envoy_http_downstream_rq_time_bucket{my_fixed="fv",envoy_http_conn_manager_prefix="admin",le="1800000"} 1
envoy_http_downstream_rq_time_bucket{my_fixed="fv",envoy_http_conn_manager_prefix="admin",le="3600000"} 1
envoy_http_downstream_rq_time_bucket{my_fixed="fv",envoy_http_conn_manager_prefix="admin",le="+Inf"} 1
envoy_http_downstream_rq_time_sum{my_fixed="fv",envoy_http_conn_manager_prefix="admin"} 0
envoy_http_downstream_rq_time_count{my_fixed="fv",envoy_http_conn_manager_prefix="admin"} 1
envoy_http_downstream_rq_time_bucket{my_fixed="fv",envoy_http_conn_manager_prefix="ingress_http",le="9.9999999999999995474811182588626e-08"} 6
envoy_http_downstream_rq_time_bucket{my_fixed="fv",envoy_http_conn_manager_prefix="ingress_http",le="0.0010000000000000000208166817117217"} 6
envoy_http_downstream_rq_time_bucket{my_fixed="fv",envoy_http_conn_manager_prefix="ingress_http",le="0.10000000000000000555111512312578"} 6
envoy_http_downstream_rq_time_bucket{my_fixed="fv",envoy_http_conn_manager_prefix="ingress_http",le="1.5"} 6
envoy_http_downstream_rq_time_bucket{my_fixed="fv",envoy_http_conn_manager_prefix="ingress_http",le="2"} 6
envoy_http_downstream_rq_time_bucket{my_fixed="fv",envoy_http_conn_manager_prefix="ingress_http",le="250.25"} 6
envoy_http_downstream_rq_time_bucket{my_fixed="fv",envoy_http_conn_manager_prefix="ingress_http",le="12345678901234567168"} 6
envoy_http_downstream_rq_time_bucket{my_fixed="fv",envoy_http_conn_manager_prefix="ingress_http",le="+Inf"} 6
envoy_http_downstream_rq_time_sum{my_fixed="fv",envoy_http_conn_manager_prefix="ingress_http"} 0
envoy_http_downstream_rq_time_count{my_fixed="fv",envoy_http_conn_manager_prefix="ingress_http"} 6
# TYPE envoy_server_initialization_time_ms histogram
envoy_server_initialization_time_ms_bucket{my_fixed="fv",le="0.5"} 0
envoy_server_initialization_time_ms_bucket{my_fixed="fv",le="1"} 0
envoy_server_initialization_time_ms_bucket{my_fixed="fv",le="5"} 0
envoy_server_initialization_time_ms_bucket{my_fixed="fv",le="10"} 0
envoy_server_initialization_time_ms_bucket{my_fixed="fv",le="25"} 1
envoy_server_initialization_time_ms_bucket{my_fixed="fv",le="50"} 1
envoy_server_initialization_time_ms_bucket{my_fixed="fv",le="100"} 1
envoy_server_initialization_time_ms_bucket{my_fixed="fv",le="250"} 1
envoy_server_initialization_time_ms_bucket{my_fixed="fv",le="500"} 1
envoy_server_initialization_time_ms_bucket{my_fixed="fv",le="1000"} 1
envoy_server_initialization_time_ms_bucket{my_fixed="fv",le="2500"} 1
envoy_server_initialization_time_ms_bucket{my_fixed="fv",le="5000"} 1
envoy_server_initialization_time_ms_bucket{my_fixed="fv",le="10000"} 1
envoy_server_initialization_time_ms_bucket{my_fixed="fv",le="30000"} 1
envoy_server_initialization_time_ms_bucket{my_fixed="fv",le="60000"} 1
envoy_server_initialization_time_ms_bucket{my_fixed="fv",le="300000"} 1
envoy_server_initialization_time_ms_bucket{my_fixed="fv",le="600000"} 1
envoy_server_initialization_time_ms_bucket{my_fixed="fv",le="1800000"} 1
envoy_server_initialization_time_ms_bucket{my_fixed="fv",le="3600000"} 1
envoy_server_initialization_time_ms_bucket{my_fixed="fv",le="+Inf"} 1
envoy_server_initialization_time_ms_sum{my_fixed="fv"} 15.483870967741935942285635974258
envoy_server_initialization_time_ms_count{my_fixed="fv"} 1
"""

STATS_CONFIG = {
    "stats_tags": [
        {"tag_name": "my_fixed", "fixed_value": "fv"},
        {"tag_name": "my_regex", "regex": r"^tcp\.(?:[^.]+)\.(down)stream"},
    ]
}
CUSTOM_BUCKETS = (1e-07, 0.001, 0.1, 1.5, 2, 250.25, 12345678901234567890)


def _extractor() -> TagExtractor:
    config = json_format.ParseDict(STATS_CONFIG, stats_pb2.StatsConfig())
    return TagExtractor.from_stats_config(config)


def _histogram(
    store: Store,
    name: str,
    cumulative: list[int],
    count: int,
    total: float,
    bounds: tuple[float, ...] | None = None,
) -> Histogram:
    h = store.histogram(name)
    if bounds is not None:
        h.bounds = bounds
        h.counts = [0] * (len(bounds) + 1)
    previous = 0
    for i, c in enumerate(cumulative):
        h.counts[i] = c - previous
        previous = c
    h.counts[-1] = count - previous
    h.sample_count = count
    h.sample_sum = total
    h.used = True
    return h


def _envoy_store() -> Store:
    """The stats behind ENVOY_GOLDEN, created in an order unlike Envoy's output."""
    store = Store()
    store.gauge("server.live").set(1)
    for cluster, healthy, cx in (
        ("foo-bar", 1, 0),
        ("foo", 1, 0),
        ("backend_alt", 2, 1),
        ("a_b", 1, 0),
    ):
        store.gauge(f"cluster.{cluster}.membership_healthy").set(healthy)
        store.counter(f"cluster.{cluster}.upstream_cx_total").add(cx)
    store.counter("cluster.foo.x.upstream_cx_total")
    for klass, value in (("5", 1), ("3", 0), ("2", 5), ("1", 0), ("4", 0)):
        store.counter(f"listener.127.0.0.1_0.http.ingress_http.downstream_rq_{klass}xx").add(value)
    store.counter("tcp.ingress_tcp.downstream_cx_drain_close")
    _histogram(
        store,
        "server.initialization_time_ms",
        [0] * 4 + [1] * 15,
        1,
        15.483870967741935942285635974258,
    )
    _histogram(store, "http.ingress_http.downstream_rq_time", [6] * 7, 6, 0.0, CUSTOM_BUCKETS)
    _histogram(store, "http.admin.downstream_rq_time", [1] * 19, 1, 0.0)
    return store


def test_matches_envoy_byte_for_byte() -> None:
    assert prometheus.render(_envoy_store(), _extractor()) == ENVOY_GOLDEN


def test_parses_as_prometheus_text() -> None:
    families = {
        f.name: f
        for f in text_string_to_metric_families(prometheus.render(_envoy_store(), _extractor()))
    }
    assert families["envoy_cluster_upstream_cx"].type == "counter"  # the parser drops _total
    assert families["envoy_server_live"].type == "gauge"
    rq_time = families["envoy_http_downstream_rq_time"]
    assert rq_time.type == "histogram"
    buckets = [s for s in rq_time.samples if s.name.endswith("_bucket")]
    assert {s.labels["envoy_http_conn_manager_prefix"] for s in buckets} == {
        "admin",
        "ingress_http",
    }
    inf = [s for s in buckets if s.labels["le"] == "+Inf"]
    assert sorted(s.value for s in inf) == [1, 6]
    rq_xx = families["envoy_listener_http_downstream_rq_xx"].samples
    assert [s.labels["envoy_response_code_class"] for s in rq_xx] == ["1", "2", "3", "4", "5"]


def test_untagged_stats_print_empty_braces() -> None:
    store = Store()
    store.counter("server.debug_assertion_failures").inc()
    assert prometheus.render(store, TagExtractor.default()) == (
        "# TYPE envoy_server_debug_assertion_failures counter\n"
        "envoy_server_debug_assertion_failures{} 1\n"
    )


def test_filter_usedonly_and_hidden_are_the_callers_predicate() -> None:
    store = Store()
    store.counter("cluster.a.upstream_rq_total").inc()
    store.counter("cluster.a.upstream_cx_total")
    store.counter("cluster.a.hosts.h.rq_total", hidden=True).inc()
    body = prometheus.render(
        store, TagExtractor.default(), include=lambda s: s.used and not s.hidden
    )
    assert body == (
        "# TYPE envoy_cluster_upstream_rq_total counter\n"
        'envoy_cluster_upstream_rq_total{envoy_cluster_name="a"} 1\n'
    )


def test_text_readouts_only_when_asked() -> None:
    store = Store()
    store.text_readout("control_plane.identifier").set('cp "1"\\x\n')
    assert prometheus.render(store, TagExtractor.default()) == ""
    assert prometheus.render(store, TagExtractor.default(), text_readouts=True) == (
        "# TYPE envoy_control_plane_identifier gauge\n"
        'envoy_control_plane_identifier{text_value="cp \\"1\\"\\\\x\\n"} 0\n'
    )


def test_gauges_include_worker_values() -> None:
    store = Store()
    gauge = store.gauge("server.total_connections")
    gauge.set(1)
    gauge.worker_values = {0: 2, 1: 3}
    assert prometheus.render(store, TagExtractor.default()).endswith("{} 6\n")


def test_summary_mode_quantiles_sum_and_count() -> None:
    store = Store()
    h = store.histogram("server.initialization_time_ms")
    body = prometheus.render(store, TagExtractor.default(), summary=True)
    assert body.splitlines()[0] == "# TYPE envoy_server_initialization_time_ms summary"
    assert 'envoy_server_initialization_time_ms{quantile="0.995"} nan' in body
    h.record(3)
    body = prometheus.render(store, TagExtractor.default(), summary=True)
    assert "envoy_server_initialization_time_ms_count{} 1\n" in body
    quantiles = [line for line in body.splitlines() if "quantile=" in line]
    assert len(quantiles) == 10
    assert not any(math.isnan(float(line.rsplit(" ", 1)[1])) for line in quantiles)


def test_number_formatting_is_c_percent_32g() -> None:
    assert prometheus.format_double(0.5) == "0.5"
    assert prometheus.format_double(3600000) == "3600000"
    assert prometheus.format_double(0.1) == "0.10000000000000000555111512312578"
    assert prometheus.format_double(12345678901234567890) == "12345678901234567168"
