"""/stats and /stats/prometheus against a fake context; shapes are Envoy 1.40's."""

from __future__ import annotations

import json

import pytest

from legatus.server.admin.stats import format_number, json_number

TEXT = "text/plain; charset=UTF-8"


@pytest.fixture
def stats(context):
    store = context.stats
    store.counter("cluster.foo.upstream_cx_total").add(2)
    store.counter("cluster.foo-bar.upstream_cx_total")
    store.gauge("server.live").set(1)
    store.text_readout("control_plane.identifier").set("cp-1")
    store.histogram("server.initialization_time_ms").record(15)
    store.histogram("cluster.foo.upstream_cx_length_ms")
    return store


async def test_text_order_and_shapes(admin, stats, context):
    status, content_type, body = await admin("/stats")
    assert (status, content_type) == (200, TEXT)
    # Text readouts, then counters and gauges sorted as strings ('-' < '.'), histograms last.
    assert body.splitlines() == [
        'control_plane.identifier: "cp-1"',
        "cluster.foo-bar.upstream_cx_total: 0",
        "cluster.foo.upstream_cx_total: 2",
        "server.live: 1",
        "cluster.foo.upstream_cx_length_ms: No recorded values",
        # One sample reads as itself at every quantile, as in Envoy.
        "server.initialization_time_ms: P0(nan,15) P25(nan,15) P50(nan,15) P75(nan,15)"
        " P90(nan,15) P95(nan,15) P99(nan,15) P99.5(nan,15) P99.9(nan,15) P100(nan,15)",
    ]
    assert context.refreshes == 1


async def test_hidden_stats_need_hidden_param(admin, stats):
    _, _, body = await admin("/stats?filter=hosts")
    assert body == ""
    _, _, body = await admin("/stats?hidden=include&filter=hosts")
    assert body == (
        "cluster.backend.hosts.127.0.0.1:9.cx_active: 0\n"
        "cluster.backend.hosts.127.0.0.1:9.cx_total: 0\n"
    )
    for value in ("only", "showonly"):
        _, _, body = await admin(f"/stats?hidden={value}&type=Counters")
        assert body == "cluster.backend.hosts.127.0.0.1:9.cx_total: 0\n"
    status, _, body = await admin("/stats?hidden=bogus")
    assert (status, body) == (400, "usage: /stats?hidden=(include|only|exclude)\n\n")


async def test_usedonly_filter_invert_and_type(admin, stats):
    _, _, body = await admin("/stats?usedonly&type=Counters")
    assert body == "cluster.foo.upstream_cx_total: 2\n"
    # '+' is not a space in Envoy's admin queries, %xx is decoded.
    _, _, body = await admin("/stats?filter=server%5C.(li)+ve")
    assert body == "server.live: 1\n"
    _, _, body = await admin("/stats?filter=cluster&invert_filter&type=Gauges")
    assert body == "server.live: 1\n"
    _, _, body = await admin("/stats?type=TextReadouts")
    assert body == 'control_plane.identifier: "cp-1"\n'


async def test_bad_params_answer_envoys_400s(admin, stats):
    assert await admin("/stats?format=bogus") == (
        400,
        TEXT,
        "usage: /stats?format=(html|active-html|json|prometheus|text)\n\n",
    )
    assert await admin("/stats?type=bogus") == (400, TEXT, "invalid &type= param")
    assert await admin("/stats?histogram_buckets=bogus") == (
        400,
        TEXT,
        "usage: /stats?histogram_buckets=(cumulative|disjoint|detailed|summary|prometheusnative)\n",
    )
    status, _, body = await admin("/stats?filter=(")
    assert status == 400 and body.startswith("Invalid re2 regex: ")


async def test_json_shape(admin, stats):
    status, content_type, body = await admin("/stats?format=json&filter=server")
    assert (status, content_type) == (200, "application/json")
    assert body == (
        '{"stats":[{"name":"server.live","value":1},{"histograms":{"supported_quantiles":'
        '[0,25,50,75,90,95,99,99.5,99.9,100],"computed_quantiles":[{"name":'
        '"server.initialization_time_ms","values":['
        + ",".join(['{"cumulative":15,"interval":null}'] * 10)
        + "]}]}}]}"
    )
    _, _, body = await admin("/stats?format=json&filter=nomatch")
    assert body == '{"stats":[]}'
    _, _, body = await admin("/stats?format=json&type=TextReadouts")
    assert json.loads(body) == {"stats": [{"name": "control_plane.identifier", "value": "cp-1"}]}
    _, _, body = await admin("/stats?format=json&filter=cx_length")
    assert json.loads(body)["stats"][0]["histograms"]["computed_quantiles"][0]["values"][0] == {
        "cumulative": None,
        "interval": None,
    }


async def test_histogram_bucket_modes(admin, stats):
    _, _, body = await admin("/stats?histogram_buckets=cumulative&filter=initialization")
    assert body.startswith(
        "server.initialization_time_ms: B0.5(0,0) B1(0,0) B5(0,0) B10(0,0) B25(0,1) B50(0,1)"
    )
    assert body.endswith(" B1.8e+06(0,1) B3.6e+06(0,1)\n")
    _, _, body = await admin("/stats?histogram_buckets=disjoint&filter=initialization")
    assert " B10(0,0) B25(0,1) B50(0,0)" in body
    _, _, body = await admin("/stats?histogram_buckets=detailed&filter=initialization")
    assert body.startswith(
        "server.initialization_time_ms:\n  totals=10,15:1\n  intervals=\n  summary=P0(nan,15)"
    )
    _, _, body = await admin("/stats?format=json&histogram_buckets=cumulative&filter=initial")
    buckets = json.loads(body)["stats"][0]["histograms"][0]["buckets"]
    assert buckets[4] == {"upper_bound": 25, "interval": 0, "cumulative": 1}
    assert '"upper_bound":3e+05' in body and '"upper_bound":1800000' in body


async def test_prometheus_endpoints(admin, stats, context):
    status, content_type, body = await admin("/stats/prometheus?filter=server.live")
    assert (status, content_type) == (200, TEXT)
    assert body == "# TYPE envoy_server_live gauge\nenvoy_server_live{} 1\n"
    assert await admin("/stats?format=prometheus&filter=server.live") == (200, TEXT, body)
    _, _, body = await admin("/stats/prometheus?usedonly&filter=cluster")
    assert body == (
        "# TYPE envoy_cluster_upstream_cx_total counter\n"
        'envoy_cluster_upstream_cx_total{envoy_cluster_name="foo"} 2\n'
    )
    _, _, body = await admin("/stats/prometheus?filter=identifier&text_readouts")
    assert 'envoy_control_plane_identifier{text_value="cp-1"} 0\n' in body
    assert await admin("/stats/prometheus?histogram_buckets=disjoint") == (
        400,
        TEXT,
        "unsupported prometheus histogram bucket mode",
    )
    assert "hosts" not in (await admin("/stats/prometheus"))[2]
    assert context.refreshes == 6


async def test_stats_config_tags_apply(admin, stats, context):
    tag = context.bootstrap.stats_config.stats_tags.add(tag_name="my_fixed")
    tag.fixed_value = "fv"
    _, _, body = await admin("/stats/prometheus?filter=server.live")
    assert body == '# TYPE envoy_server_live gauge\nenvoy_server_live{my_fixed="fv"} 1\n'


def test_number_formats():
    assert [format_number(x) for x in (0.0, 9.05, 1e16, float("nan"))] == [
        "0",
        "9.05",
        "1e+16",
        "nan",
    ]
    # std::to_chars: shorter of fixed and scientific, fixed on ties (seen in Envoy's JSON).
    assert [json_number(x) for x in (300000, 600000, 1800000, 60000, 0.5, 1e-07, 0)] == [
        "3e+05",
        "6e+05",
        "1800000",
        "60000",
        "0.5",
        "1e-07",
        "0",
    ]
    assert json_number(float("nan")) == "null"


async def test_html_is_the_text_in_a_page(admin, stats):
    status, content_type, body = await admin("/stats?format=html&filter=server.live")
    assert (status, content_type) == (200, "text/html; charset=UTF-8")
    assert "<pre>server.live: 1\n</pre>" in body
