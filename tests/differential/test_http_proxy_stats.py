"""Every stat of an HTTP listener and its clusters after a fixed mix of traffic, Envoy against
legatus.

The mix: keep-alive GETs, a HEAD, a POST with a body, an upstream 404, a route that does not
exist, a direct response, a refused upstream connection, an upstream timeout and a malformed
request. Afterwards the whole of ``http.mix.*``, ``listener.<addr>.*`` (with
``listener.<addr>.http.mix.*``), ``cluster.mix.*``, ``cluster.mix_refused.*`` and the HTTP/1
codec's ``http1.*`` must hold the same counters and gauges with the same values, the same
histogram names, and the same series in ``/stats/prometheus`` (Envoy's tag extraction:
``envoy_http_conn_manager_prefix``, ``envoy_cluster_name``, ``envoy_listener_address``,
``envoy_response_code``...). Stats that Envoy only creates after certain traffic are part of
the comparison: a proxy that declares them up front differs.
"""

from __future__ import annotations

from tests.differential.http_scenario import (  # noqa: F401 (fixtures)
    Cluster,
    Listener,
    Reply,
    http_pair_fixture,
    http_pair_processes_fixture,
    route,
    scenario,
)

SCRIPTS = {"/up/missing": Reply(status=404, body=b"not here"), "/up/slow": Reply(delay=1.0)}
MIX = Listener(
    name="mix",
    routes=[
        route("/direct", {"direct_response": {"status": 200, "body": {"inline_string": "d"}}}),
        route("/refused", {"route": {"cluster": "mix_refused"}}),
        route("/up/slow", {"route": {"cluster": "mix", "timeout": "0.3s"}}),
        route("/up", {"route": {"cluster": "mix"}}),
    ],
    hcm={"delayed_close_timeout": "0.1s"},
)


def _mix(side) -> list:
    out = []
    with side.connect("mix") as c:
        out += [c.request("GET", f"/up/{i}").view() for i in range(3)]
        out.append(c.request("HEAD", "/up/head").view())
        out.append(c.request("POST", "/up/post", body=b"p" * 1024).view())
        out.append(c.request("GET", "/up/missing").view())
        out.append(c.request("GET", "/nowhere").view())
        out.append(c.request("GET", "/direct").view())
    out.append(side.request("mix", "GET", "/refused").view())
    out.append(side.request("mix", "GET", "/up/slow").view())
    with side.connect("mix") as c:
        c.send(b"GET / HTTP/1.1\r\nhost: example.com\r\nbad header\r\n\r\n")
        out += [c.response().view(), c.ending()]
    return out


@scenario(MIX, Cluster(name="mix"), Cluster(name="mix_refused", endpoint="refused"))
def test_all_stats_after_a_fixed_mix(http_pair):
    out = http_pair.run(_mix, full_stats=True, prometheus=True)
    stats = out.envoy.stats
    assert [r["status"] for r in out.envoy.result[:10]] == [
        "HTTP/1.1 200 OK", "HTTP/1.1 200 OK", "HTTP/1.1 200 OK", "HTTP/1.1 200 OK",
        "HTTP/1.1 200 OK", "HTTP/1.1 404 Not Found", "HTTP/1.1 404 Not Found",
        "HTTP/1.1 200 OK", "HTTP/1.1 503 Service Unavailable", "HTTP/1.1 504 Gateway Timeout",
    ]  # fmt: skip
    want = {
        "http.mix.downstream_rq_total": 11,
        "http.mix.downstream_rq_2xx": 6,
        "http.mix.downstream_rq_4xx": 3,
        "http.mix.downstream_rq_5xx": 2,
        "http.mix.downstream_cx_total": 4,
        "http.mix.downstream_cx_protocol_error": 1,
        "http.mix.no_route": 1,
        "http.mix.rq_direct_response": 1,
        "listener.127.0.0.1_<mix>.downstream_cx_total": 4,
        "listener.127.0.0.1_<mix>.http.mix.downstream_rq_4xx": 3,
        "cluster.mix.upstream_rq_total": 7,
        "cluster.mix.upstream_rq_404": 1,
        "cluster.mix.upstream_rq_504": 1,
        "cluster.mix.upstream_rq_timeout": 1,
        "cluster.mix.upstream_cx_total": 1,  # the slow request reuses the connection
        "cluster.mix_refused.upstream_cx_connect_fail": 1,
        "cluster.mix_refused.upstream_rq_503": 1,
    }
    assert {k: stats.get(k) for k in want} == want
    prometheus = out.envoy.prometheus
    assert prometheus["counter envoy_cluster_upstream_rq_total{envoy_cluster_name=mix,"
                      "envoy_response_code=404}"] == 1  # fmt: skip
    assert prometheus["counter envoy_http_downstream_rq_xx_total{envoy_http_conn_manager_prefix"
                      "=mix,envoy_response_code_class=4}"] == 3  # fmt: skip
    # Stats Envoy creates only when traffic needs them: per-code counters, the external/
    # internal split of upstream codes and its histogram.
    assert stats["cluster.mix.external.upstream_rq_404"] == 1
    assert "cluster.mix.upstream_rq_500" not in stats
    assert "cluster.mix.internal.upstream_rq_200" not in stats
    assert "cluster.mix.external.upstream_rq_time" in out.envoy.histograms
    assert "cluster.mix_refused.external.upstream_rq_time" not in out.envoy.histograms
    out.assert_same()
