"""Virtual clusters and route stat prefixes, Envoy against legatus: the per-virtual-host stats
``vhost.<virtual host>.vcluster.<virtual cluster>.*`` and ``vhost.<virtual host>.route.
<stat_prefix>.*`` dashboards read, as /stats and /stats/prometheus show them, and
%VIRTUAL_CLUSTER_NAME% (in a request and a response header the routes add).

Besides what every http_scenario comparison covers, each test compares the stats of its own
virtual hosts (each test has virtual host names of its own: these stats are not under a
listener's or a cluster's name): counter values, histogram names, and the Prometheus series
with their ``envoy_virtual_host`` / ``envoy_virtual_cluster`` / ``envoy_route`` tags.
A route configuration update over RDS (a file moved over the watched path) must keep the
counts of what it keeps, as Envoy's stats store does.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.differential.http_scenario import (  # noqa: F401 (fixtures)
    Cluster,
    Listener,
    Reply,
    http_pair_fixture,
    http_pair_processes_fixture,
    route,
    scenario,
)
from tests.support.http_upstream import HttpUpstream, http_proxy_config
from tests.support.process import envoy_command, start_proxy, wait_for

SCRIPTS = {
    "/missing": Reply(status=404, body=b"nope"),
    "/slow": Reply(delay=1.0, body=b"late"),
    "/flaky-once": Reply(status=503, body=b"try again", then=Reply(body=b"finally")),
    "/flaky-always": Reply(status=503, body=b"try again"),
    "/overflow": Reply(status=503, body=b"try again"),
    "/pertry": Reply(delay=0.6, body=b"late", then=Reply(body=b"in time")),
}


def _header(path: str, **match) -> dict:
    return {"name": path, "string_match": match}


def _shown(name: str) -> dict:
    """A header whose value is the request's %VIRTUAL_CLUSTER_NAME% (in brackets)."""
    return {"header": {"key": name, "value": "[%VIRTUAL_CLUSTER_NAME%]"}}


def _to(cluster: str, **extra) -> dict:
    return {"cluster": cluster, **extra}


def vhost_stats(side, vhosts: tuple[str, ...], labels: tuple[str, ...]) -> dict:
    """The stats of the test's virtual hosts: /stats counter values and histogram names
    under ``vhost.<name>.``, and the /stats/prometheus series whose ``envoy_virtual_host``
    is in ``labels`` (counter values; histograms by series)."""
    pattern = re.compile(rf"^vhost\.({'|'.join(re.escape(v) for v in vhosts)})\.")
    status, body = side.proxy.admin("/stats?format=json")
    assert status == 200, body
    values, histograms = {}, set()
    for entry in json.loads(body)["stats"]:
        if "name" in entry and pattern.match(entry["name"]):
            values[entry["name"]] = entry["value"]
        for h in entry.get("histograms", {}).get("computed_quantiles", []):
            if pattern.match(h["name"]):
                histograms.add(h["name"])
    status, body = side.proxy.admin("/stats/prometheus")
    assert status == 200, body
    series = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.labels.get("envoy_virtual_host") not in labels:
                continue
            shown = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "le")
            key = f"{family.type} {sample.name}{{{shown}}}"
            series[key] = "series" if family.type == "histogram" else int(sample.value)
    return {"stats": values, "histograms": sorted(histograms), "prometheus": series}


def compare_vhost_stats(http_pair, vhosts: tuple[str, ...], labels=None) -> dict:
    """Both sides' stats of ``vhosts`` (once run() has settled); Envoy's, when they agree."""
    labels = labels or vhosts
    sides = http_pair.pair.sides
    envoy = vhost_stats(sides["envoy"], vhosts, labels)
    if "legatus" not in sides:
        pytest.fail(f"legatus did not run: {http_pair.pair.error}", pytrace=False)
    legatus = vhost_stats(sides["legatus"], vhosts, labels)
    for part in ("stats", "histograms", "prometheus"):
        a, b = envoy[part], legatus[part]
        if isinstance(a, dict):
            diff = {k: {"envoy": a.get(k, "<absent>"), "legatus": b.get(k, "<absent>")}
                    for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}  # fmt: skip
        else:
            diff = {"envoy": a, "legatus": b} if a != b else {}
        if diff:
            text = json.dumps(diff, indent=1)
            pytest.fail(f"Envoy and legatus differ on vhost {part}:\n{text}", pytrace=False)
    return envoy["stats"]


# First match, the catch-all, a virtual host without virtual clusters -------------------

FIRST_HOSTS = [
    {"name": "vc-first", "domains": ["*"],
     "virtual_clusters": [
         {"name": "users", "headers": [_header(":path", prefix="/users")]},
         {"name": "posts-get", "headers": [_header(":path", prefix="/posts"),
                                           _header(":method", exact="GET")]},
         {"name": "tagged", "headers": [{"name": "x-tag", "present_match": True}]},
         {"name": "users", "headers": [_header(":path", prefix="/people")]},
     ],
     "routes": [route("/", {"route": _to("vcs_first")},
                      request_headers_to_add=[_shown("x-vc")],
                      response_headers_to_add=[_shown("x-vc")])]},
    {"name": "vc-none", "domains": ["plain.example"],
     "routes": [route("/", {"route": _to("vcs_first")},
                      request_headers_to_add=[_shown("x-vc")])]},
]  # fmt: skip


@scenario(Listener(name="vcs_first", virtual_hosts=FIRST_HOSTS), Cluster(name="vcs_first"))
def test_requests_count_under_their_first_matching_virtual_cluster(http_pair):
    def traffic(side):
        return [side.request("vcs_first", *args, **kwargs).view() for args, kwargs in (
            (("GET", "/users/1"), {}),
            (("GET", "/posts/1"), {}),
            (("POST", "/posts/2", (), b"x"), {}),  # not a GET: the catch-all
            (("GET", "/people/7"), {}),  # a second virtual cluster of the same name
            (("GET", "/users/3", [("x-tag", "1")]), {}),  # the first that matches wins
            (("GET", "/other", [("x-tag", "1")]), {}),
            (("GET", "/other"), {}),
            (("GET", "/missing"), {}),
            (("GET", "/users/9"), {"host": "plain.example"}),
        )]  # fmt: skip

    out = http_pair.run(traffic, prometheus=True)
    out.assert_same()
    stats = compare_vhost_stats(http_pair, ("vc-first", "vc-none"))
    assert stats["vhost.vc-first.vcluster.users.upstream_rq_total"] == 3
    assert stats["vhost.vc-first.vcluster.other.upstream_rq_total"] == 3
    assert stats["vhost.vc-first.vcluster.other.upstream_rq_404"] == 1
    assert stats["vhost.vc-first.vcluster.posts-get.upstream_rq_2xx"] == 1
    assert not [n for n in stats if n.startswith("vhost.vc-none.")]
    seen = [next(h for h in u["headers"] if h.startswith("x-vc")) for u in out.envoy.upstream]
    assert seen[:3] == ["x-vc: [users]", "x-vc: [posts-get]", "x-vc: []"]  # other: unnamed


# Local replies, timeouts and connection failures; route stat prefixes ---------------------

FAIL_HOSTS = [
    {"name": "vc-fail", "domains": ["*"],
     "virtual_clusters": [{"name": "slow", "headers": [_header(":path", prefix="/slow")]}],
     "routes": [
         route("/nohealthy", {"route": _to("vcs_none")}, stat_prefix="nohealthy"),
         route("/refused", {"route": _to("vcs_refused")}, stat_prefix="refused"),
         route("/slow", {"route": _to("vcs_fail", timeout="0.3s")}, stat_prefix="slow"),
         route("/nocluster", {"route": _to("vcs_nope")}, stat_prefix="nocluster"),
         route("/direct", {"direct_response": {"status": 200}}, stat_prefix="direct"),
         route("/redirect", {"redirect": {"path_redirect": "/x"}}, stat_prefix="redirect"),
         route("/", {"route": _to("vcs_fail")},
               response_headers_to_add=[_shown("x-vc")]),
     ]},
]  # fmt: skip


@scenario(
    Listener(name="vcs_fail", virtual_hosts=FAIL_HOSTS,
             route_config={"validate_clusters": False}),
    Cluster(name="vcs_fail"), Cluster(name="vcs_none", endpoint="none"),
    Cluster(name="vcs_refused", endpoint="refused"),
)  # fmt: skip
def test_local_replies_timeouts_and_failures_count_as_the_cluster_does(http_pair):
    paths = ("/nohealthy", "/refused", "/slow", "/nocluster", "/direct", "/redirect", "/ok")

    def traffic(side):
        return [side.request("vcs_fail", "GET", p).view() for p in paths]

    out = http_pair.run(traffic)  # (the cluster's Prometheus series: other tests')
    out.assert_same()
    statuses = [int(r["status"].split()[1]) for r in out.envoy.result]
    assert statuses == [503, 503, 504, 503, 200, 301, 200]
    stats = compare_vhost_stats(http_pair, ("vc-fail",))
    assert stats["vhost.vc-fail.route.nohealthy.upstream_rq_503"] == 1
    assert stats["vhost.vc-fail.route.nohealthy.upstream_rq_total"] == 0  # never connected
    assert stats["vhost.vc-fail.vcluster.slow.upstream_rq_timeout"] == 1
    assert stats["vhost.vc-fail.route.direct.upstream_rq_total"] == 0
    assert "vhost.vc-fail.route.nocluster.upstream_rq_503" not in stats


# Retries: each try counted once connected, retry outcomes ------------------------------------

# No route timeout: each retry would be told the time left, which depends on timing.
RETRY = {"timeout": "0s", "retry_policy": {"retry_on": "5xx", "num_retries": 1}}
PER_TRY = {
    "timeout": "0s",
    "retry_policy": {"retry_on": "5xx", "num_retries": 1, "per_try_timeout": "0.2s"},
}
RETRY_HOSTS = [
    {"name": "vc-retry", "domains": ["*"],
     "virtual_clusters": [{"name": "flaky", "headers": [_header(":path", prefix="/flaky")]}],
     "routes": [
         route("/flaky-once", {"route": _to("vcs_retry", **RETRY)}, stat_prefix="once"),
         route("/flaky-always", {"route": _to("vcs_retry", **RETRY)}, stat_prefix="always"),
         route("/overflow", {"route": _to("vcs_retry_cb", **RETRY)}, stat_prefix="overflow"),
         route("/pertry", {"route": _to("vcs_retry", **PER_TRY)}, stat_prefix="pertry"),
     ]},
]  # fmt: skip
NO_RETRIES = {"circuit_breakers": {"thresholds": [{"max_retries": 0}]}}


@scenario(
    Listener(name="vcs_retry", virtual_hosts=RETRY_HOSTS),
    Cluster(name="vcs_retry"), Cluster(name="vcs_retry_cb", extra=NO_RETRIES),
)  # fmt: skip
def test_retries_count_under_the_virtual_cluster_and_the_route(http_pair):
    paths = ("/flaky-once", "/flaky-always", "/overflow", "/pertry")

    def traffic(side):
        return [side.request("vcs_retry", "GET", p).view() for p in paths]

    out = http_pair.run(traffic, prometheus=True)
    out.assert_same()
    stats = compare_vhost_stats(http_pair, ("vc-retry",))
    assert stats["vhost.vc-retry.route.once.upstream_rq_retry_success"] == 1
    assert stats["vhost.vc-retry.route.once.upstream_rq_total"] == 2
    assert stats["vhost.vc-retry.route.always.upstream_rq_retry_limit_exceeded"] == 1
    assert stats["vhost.vc-retry.route.overflow.upstream_rq_retry_overflow"] == 1
    assert stats["vhost.vc-retry.route.pertry.upstream_rq_timeout"] == 0  # a per-try one
    assert stats["vhost.vc-retry.vcluster.flaky.upstream_rq_retry"] == 2


# Names with dots and colons; dynamic_stats off ----------------------------------------------

DOTTED_HOSTS = [
    {"name": "vc.dots:x", "domains": ["*"],
     "virtual_clusters": [{"name": "v.1:a", "headers": [_header(":path", prefix="/v")]}],
     "routes": [route("/", {"route": _to("vcs_dots")}, stat_prefix="r.1:b")]},
]  # fmt: skip
QUIET_HOSTS = [
    {"name": "vc-quiet", "domains": ["*"],
     "virtual_clusters": [{"name": "all", "headers": [_header(":path", prefix="/")]}],
     "routes": [route("/", {"route": _to("vcs_quiet")}, stat_prefix="quiet")]},
]  # fmt: skip


@scenario(
    Listener(name="vcs_dots", virtual_hosts=DOTTED_HOSTS), Cluster(name="vcs_dots"),
    Listener(name="vcs_quiet", virtual_hosts=QUIET_HOSTS, router={"dynamic_stats": False}),
    Cluster(name="vcs_quiet"),
)  # fmt: skip
def test_names_are_kept_as_given_and_dynamic_stats_off_keeps_only_the_counters(http_pair):
    def traffic(side):
        return [side.request(listener, "GET", path).view()
                for listener, path in (("vcs_dots", "/v1"), ("vcs_dots", "/w"),
                                       ("vcs_quiet", "/q"))]  # fmt: skip

    out = http_pair.run(traffic, prometheus=True)
    out.assert_same()
    # Envoy's tag extraction stops at the first dot: the rest stays in the metric's name.
    stats = compare_vhost_stats(http_pair, ("vc.dots:x", "vc-quiet"), ("vc", "vc-quiet"))
    assert stats["vhost.vc.dots:x.vcluster.v.1:a.upstream_rq_200"] == 1
    assert stats["vhost.vc.dots:x.route.r.1:b.upstream_rq_total"] == 2
    assert stats["vhost.vc-quiet.vcluster.all.upstream_rq_total"] == 1
    assert "vhost.vc-quiet.vcluster.all.upstream_rq_200" not in stats


# A route configuration update (RDS from a file) -------------------------------------------


def _rds_file(version: str, virtual_clusters: list, stat_prefix: str) -> str:
    config = {
        "version_info": version,
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            "name": "vcs_rds",
            "virtual_hosts": [{
                "name": "vc-rds", "domains": ["*"], "virtual_clusters": virtual_clusters,
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"},
                            "stat_prefix": stat_prefix}],
            }],
        }],
    }  # fmt: skip
    return yaml.safe_dump(config)


def _vc(name: str, prefix: str) -> dict:
    return {"name": name, "headers": [_header(":path", prefix=prefix)]}


RDS_VERSIONS = (
    ("1", [_vc("a", "/a"), _vc("b", "/b")], ["/a", "/a", "/b", "/c"]),
    # a's matcher changes and c comes: a, b, other and the route keep counting
    ("2", [_vc("a", "/x"), _vc("b", "/b"), _vc("c", "/c")], ["/a", "/x", "/b", "/c"]),
)


def _rds_run(workdir, command, upstream: HttpUpstream) -> list:
    """Each route configuration version in turn, its traffic, then the vhost stats."""
    data = workdir / "data"
    data.mkdir(parents=True)
    path = data / "rds.yaml"
    path.write_text(_rds_file("1", RDS_VERSIONS[0][1], "main"))
    config = http_proxy_config(upstream.port)
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    del hcm["typed_config"]["route_config"]
    hcm["typed_config"]["rds"] = {"route_config_name": "vcs_rds", "config_source": {
        "path_config_source": {"path": str(path)}, "resource_api_version": "V3"}}  # fmt: skip
    config["node"] = {"id": "node1", "cluster": "web"}
    proxy = start_proxy(config, workdir / "proxy", command=command)
    seen = []
    try:
        port = proxy.listener_port("http")
        for number, (version, virtual_clusters, paths) in enumerate(RDS_VERSIONS, 1):
            if number > 1:
                tmp = data / "rds.yaml.tmp"
                tmp.write_text(_rds_file(version, virtual_clusters, "main"))
                os.replace(tmp, path)
                wait_for(
                    lambda n=number: (
                        proxy.stats().get("http.ingress.rds.vcs_rds.update_success") == n
                    ),
                    what=f"version {version}",
                )
            for p in paths:
                httpx.get(f"http://127.0.0.1:{port}{p}", timeout=5)
            total = 4 * number  # each request once, on the route's stats

            def settled(total=total):
                stats = proxy.stats()
                return stats.get("vhost.vc-rds.route.main.upstream_rq_completed") == total

            wait_for(settled, what=f"the stats of version {version}")
            seen.append({k: v for k, v in sorted(proxy.stats().items())
                         if k.startswith("vhost.")})  # fmt: skip
    finally:
        proxy.stop()
    return seen


def test_a_route_configuration_update_keeps_the_counts_of_what_it_keeps(tmp_path):
    ups = [HttpUpstream() for _ in range(2)]
    try:
        with ThreadPoolExecutor(2) as pool:
            envoy = pool.submit(_rds_run, tmp_path / "envoy", envoy_command(), ups[0])
            legatus = pool.submit(_rds_run, tmp_path / "legatus", None, ups[1])
            envoy, legatus = envoy.result(), legatus.result()
    finally:
        for u in ups:
            u.close()
    shown = yaml.safe_dump({"envoy": envoy, "legatus": legatus}, default_flow_style=None)
    assert envoy[1]["vhost.vc-rds.vcluster.a.upstream_rq_total"] == 3, shown
    assert envoy[1]["vhost.vc-rds.vcluster.other.upstream_rq_total"] == 2, shown
    assert envoy[1]["vhost.vc-rds.vcluster.c.upstream_rq_total"] == 1, shown
    assert envoy[1]["vhost.vc-rds.route.main.upstream_rq_total"] == 8, shown
    assert envoy == legatus, shown
