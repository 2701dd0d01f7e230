"""Tag extraction, against what Envoy 1.40's /stats/prometheus shows for the same stats."""

from __future__ import annotations

import pytest
from envoy.config.metrics.v3 import stats_pb2
from google.protobuf import json_format

from legatus.stats.prometheus import format_tags, metric_name
from legatus.stats.tag_extractor import TagConfigError, TagExtractor

# (stat name, the series key Envoy 1.40 printed for it), copied from the real binary's
# /stats and /stats/prometheus with a static cluster, a tcp_proxy and an HCM listener.
ENVOY_SERIES = [
    (
        "cluster.backend.upstream_rq_total",
        'envoy_cluster_upstream_rq_total{envoy_cluster_name="backend"}',
    ),
    (
        "cluster.backend.circuit_breakers.default.cx_open",
        'envoy_cluster_circuit_breakers_default_cx_open{envoy_cluster_name="backend"}',
    ),
    (
        "http.admin.downstream_rq_2xx",
        'envoy_http_downstream_rq_xx{envoy_response_code_class="2",envoy_http_conn_manager_prefix="admin"}',
    ),
    (
        "http.ingress_http.rq_total",
        'envoy_http_rq_total{envoy_http_conn_manager_prefix="ingress_http"}',
    ),
    (
        "listener.127.0.0.1_0.downstream_cx_total",
        'envoy_listener_downstream_cx_total{envoy_listener_address="127.0.0.1_0"}',
    ),
    (
        "listener.127.0.0.1_0.http.ingress_http.downstream_rq_5xx",
        'envoy_listener_http_downstream_rq_xx{envoy_response_code_class="5",'
        'envoy_http_conn_manager_prefix="ingress_http",envoy_listener_address="127.0.0.1_0"}',
    ),
    (
        "listener.127.0.0.1_0.worker_1.downstream_cx_total",
        'envoy_listener_worker_downstream_cx_total{envoy_worker_id="1",envoy_listener_address="127.0.0.1_0"}',
    ),
    ("listener.admin.downstream_cx_total", "envoy_listener_admin_downstream_cx_total{}"),
    (
        "listener.admin.http.admin.downstream_rq_4xx",
        'envoy_listener_admin_http_downstream_rq_xx{envoy_response_code_class="4",'
        'envoy_http_conn_manager_prefix="admin"}',
    ),
    (
        "listener.admin.main_thread.downstream_cx_total",
        "envoy_listener_admin_main_thread_downstream_cx_total{}",
    ),
    ("server.live", "envoy_server_live{}"),
    ("server.worker_1.watchdog_miss", 'envoy_server_worker_watchdog_miss{envoy_worker_id="1"}'),
    (
        "tcp.ingress_tcp.downstream_cx_total",
        'envoy_tcp_downstream_cx_total{envoy_tcp_prefix="ingress_tcp"}',
    ),
    (
        "thread_local_cluster_manager.worker_0.clusters_inflated",
        'envoy_thread_local_cluster_manager_worker_clusters_inflated{envoy_worker_id="0"}',
    ),
    # A cluster named "foo.x": the name token stops at the first dot, as in Envoy.
    (
        "cluster.foo.x.upstream_cx_total",
        'envoy_cluster_x_upstream_cx_total{envoy_cluster_name="foo"}',
    ),
]


def _series(extractor: TagExtractor, name: str) -> str:
    extracted, tags = extractor.extract(name)
    return metric_name(extracted) + "{" + format_tags(tags) + "}"


@pytest.mark.parametrize(("name", "series"), ENVOY_SERIES)
def test_default_tags_match_envoy(name: str, series: str) -> None:
    assert _series(TagExtractor.default(), name) == series


# Patterns of well_known_names.cc not exercised by a minimal config, worked out from
# the regex table: (name, tag-extracted name, tags in extraction order).
DERIVED = [
    (
        "cluster.backend.upstream_rq_503",
        "cluster.upstream_rq",
        (("envoy.response_code", "503"), ("envoy.cluster_name", "backend")),
    ),
    (
        "vhost.vh.vcluster.other.upstream_rq_200",
        "vhost.vcluster.upstream_rq",
        (
            ("envoy.response_code", "200"),
            ("envoy.virtual_cluster", "other"),
            ("envoy.virtual_host", "vh"),
        ),
    ),
    (
        "vhost.vh.route.r1.upstream_rq_total",
        "vhost.route.upstream_rq_total",
        (("envoy.virtual_host", "vh"), ("envoy.route", "r1")),
    ),
    (
        "http.hcm.rds.my.routes.update_success",
        "http.rds.update_success",
        (("envoy.rds_route_config", "my.routes"), ("envoy.http_conn_manager_prefix", "hcm")),
    ),
    (
        "http.hcm.user_agent.ios.downstream_cx_total",
        "http.user_agent.downstream_cx_total",
        (("envoy.http_user_agent", "ios"), ("envoy.http_conn_manager_prefix", "hcm")),
    ),
    (
        "listener.0.0.0.0_443.ssl.ciphers.ECDHE-RSA-AES128-GCM-SHA256",
        "listener.ssl.ciphers",
        (
            ("envoy.ssl_cipher", "ECDHE-RSA-AES128-GCM-SHA256"),
            ("envoy.listener_address", "0.0.0.0_443"),
        ),
    ),
    (
        "listener.[__1]_80.ssl.versions.TLSv1.3",
        "listener.ssl.versions",
        (("envoy.ssl_version", "TLSv1.3"), ("envoy.listener_address", "[__1]_80")),
    ),
    (
        "cluster.c.ssl.ciphers.AES256-SHA",
        "cluster.ssl.ciphers",
        (("cipher_suite", "AES256-SHA"), ("envoy.cluster_name", "c")),
    ),
    (
        "proxy_proto.versions.v2.found",
        "proxy_proto.found",
        (("envoy.proxy_protocol_version", "2"),),
    ),
    (
        "proxy_proto.pp.not_proxy_protocol",
        "proxy_proto.not_proxy_protocol",
        (("envoy.proxy_protocol_prefix", "pp"),),
    ),
    (
        "http.hcm.rbac.policy.p1.allowed",
        "http.rbac.policy.allowed",
        (("envoy.rbac_policy_name", "p1"), ("envoy.http_conn_manager_prefix", "hcm")),
    ),
    (
        "http.hcm.rbac.shadow.allowed",
        "http.rbac.allowed",
        (("envoy.rbac_http_prefix", "shadow"), ("envoy.http_conn_manager_prefix", "hcm")),
    ),
    ("net_rbac.rbac.denied", "rbac.denied", (("envoy.rbac_prefix", "net_rbac"),)),
    (
        "mongo.m.collection.c.callsite.s.query.total",
        "mongo.collection.callsite.query.total",
        (
            ("envoy.mongo_callsite", "s"),
            ("envoy.mongo_collection", "c"),
            ("envoy.mongo_prefix", "m"),
        ),
    ),
    (
        "foo.http_local_rate_limit.rate_limited",
        "http_local_rate_limit.rate_limited",
        (("envoy.local_http_ratelimit_prefix", "foo"),),
    ),
    (
        "cluster.c.health_check.name.hc1.attempt",
        "cluster.health_check.attempt",
        (("envoy.health_check_name", "hc1"), ("envoy.cluster_name", "c")),
    ),
    (
        "sds.my_secret.key_rotation_failed",
        "sds.key_rotation_failed",
        (("envoy.xds_resource_name", "my_secret"),),
    ),
    ("cluster.only", "cluster.only", ()),  # "cluster.$.**" needs a segment after the name
]


@pytest.mark.parametrize(("name", "extracted", "tags"), DERIVED)
def test_default_patterns(name: str, extracted: str, tags: tuple) -> None:
    assert TagExtractor.default().extract(name) == (extracted, tags)


def _config(data: dict) -> stats_pb2.StatsConfig:
    return json_format.ParseDict(data, stats_pb2.StatsConfig())


def test_custom_tags_order_and_cuts_match_envoy() -> None:
    """Envoy 1.40 with these stats_tags printed
    ``envoy_tcp_stream_cx_drain_close{my_fixed="fv",envoy_tcp_prefix="ingress_tcp",my_regex="down"}``
    for tcp.ingress_tcp.downstream_cx_drain_close: fixed tags come before defaults keyed by
    the first segment, and a custom regex keyed by ``^tcp`` after the default ``tcp.$.**``."""
    extractor = TagExtractor.from_stats_config(
        _config(
            {
                "stats_tags": [
                    {"tag_name": "my_fixed", "fixed_value": "fv"},
                    {"tag_name": "my_regex", "regex": r"^tcp\.(?:[^.]+)\.(down)stream"},
                ]
            }
        )
    )
    assert _series(extractor, "tcp.ingress_tcp.downstream_cx_drain_close") == (
        'envoy_tcp_stream_cx_drain_close{my_fixed="fv",envoy_tcp_prefix="ingress_tcp",'
        'my_regex="down"}'
    )
    assert _series(extractor, "cluster.a_b.assignment_stale") == (
        'envoy_cluster_assignment_stale{my_fixed="fv",envoy_cluster_name="a_b"}'
    )


def test_custom_regex_value_is_group_two_when_present() -> None:
    extractor = TagExtractor.from_stats_config(
        _config(
            {
                "use_all_default_tags": False,
                "stats_tags": [{"tag_name": "team", "regex": r"^svc\.((.+?)\.)"}],
            }
        )
    )
    assert extractor.extract("svc.payments.requests") == ("svc.requests", (("team", "payments"),))
    assert extractor.extract("cluster.c.upstream_rq_200") == ("cluster.c.upstream_rq_200", ())


def test_use_all_default_tags_false_with_a_default_by_name() -> None:
    extractor = TagExtractor.from_stats_config(
        _config(
            {
                "use_all_default_tags": False,
                "stats_tags": [{"tag_name": "envoy.cluster_name"}],
            }
        )
    )
    assert extractor.extract("cluster.c.upstream_rq_200") == (
        "cluster.upstream_rq_200",
        (("envoy.cluster_name", "c"),),
    )


def test_unknown_tag_without_regex_is_envoys_error() -> None:
    with pytest.raises(TagConfigError, match="no default regex for name: 'nope'"):
        TagExtractor.from_stats_config(_config({"stats_tags": [{"tag_name": "nope"}]}))


def test_bad_regex_is_a_config_error() -> None:
    with pytest.raises(TagConfigError, match="Invalid regex"):
        TagExtractor.from_stats_config(_config({"stats_tags": [{"tag_name": "x", "regex": "("}]}))


def test_cli_tags_are_fixed_tags() -> None:
    extractor = TagExtractor.from_stats_config(None, [("az", "us-east-1a")])
    assert extractor.extract("server.live") == ("server.live", (("az", "us-east-1a"),))


def test_results_are_cached_per_name() -> None:
    extractor = TagExtractor.default()
    first = extractor.extract("cluster.backend.upstream_rq_503")
    assert extractor.extract("cluster.backend.upstream_rq_503") is first


def test_duplicate_tag_names_count_once() -> None:
    """Both envoy.http_conn_manager_prefix patterns could match a listener's HCM stat;
    only the first match counts (Envoy's dup check)."""
    _, tags = TagExtractor.default().extract("listener.admin.http.admin.downstream_rq_200")
    assert [name for name, _ in tags].count("envoy.http_conn_manager_prefix") == 1
