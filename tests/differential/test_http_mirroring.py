"""Request mirroring (``request_mirror_policies``), Envoy against legatus.

The main and the mirror cluster lead to the same scripted upstream, so it sees both copies:
what the shadow carries (``-shadow`` host, headers, body) is compared, sorted by host since
the two leave at the same time. A slow or failing mirror must neither delay nor change the
main response; the mirror cluster's stats count the shadows.
"""

from __future__ import annotations

import time

from tests.differential.http_scenario import (  # noqa: F401 (fixtures)
    Cluster,
    Listener,
    Reply,
    http_pair_fixture,
    http_pair_processes_fixture,
    route,
    scenario,
)

SCRIPTS: dict[str, Reply] = {}


def _mirrored(name: str, mirrors: list, *, timeout: str = "15s") -> Listener:
    return Listener(name=name, routes=[route("/", {"route": {
        "cluster": name, "timeout": timeout, "request_mirror_policies": mirrors}})])  # fmt: skip


def _sorted_upstream(observation) -> list:
    """The requests the upstream saw, by host (connection numbers follow arrival order)."""
    requests = [{k: v for k, v in r.items() if k != "connection"} for r in observation.upstream]
    return sorted(requests, key=lambda r: r["headers"][0])


@scenario(_mirrored("mir", [{"cluster": "mir_shadow"}]), Cluster(name="mir"),
          Cluster(name="mir_shadow"))  # fmt: skip
def test_a_mirrored_request_reaches_both_clusters(http_pair):
    def traffic(side):
        out = [side.request("mir", "POST", "/posted", body=b"the body").view()]
        time.sleep(0.2)  # the shadow's response, counted
        return out

    out = http_pair.run(traffic, full_stats=True)
    assert out.envoy.result[0]["status"] == "HTTP/1.1 200 OK"
    hosts = sorted(r["headers"][0] for r in out.envoy.upstream)
    assert hosts == ["host: example.com", "host: example.com-shadow"]
    assert [r["body"] for r in out.envoy.upstream] == ["the body", "the body"]
    assert out.envoy.stats["cluster.mir_shadow.upstream_rq_200"] == 1
    assert _sorted_upstream(out.envoy) == _sorted_upstream(out.legatus)
    out.assert_same("result", "log", "stats")


@scenario(_mirrored("mirport", [{"cluster": "mirport_shadow"}]), Cluster(name="mirport"),
          Cluster(name="mirport_shadow"))  # fmt: skip
def test_the_shadow_suffix_goes_before_the_port(http_pair):
    def traffic(side):
        out = [side.request("mirport", "GET", "/x", host="example.com:8080").view()]
        time.sleep(0.2)
        return out

    out = http_pair.run(traffic, full_stats=True)
    hosts = sorted(r["headers"][0] for r in out.envoy.upstream)
    assert hosts == ["host: example.com-shadow:8080", "host: example.com:8080"]
    assert _sorted_upstream(out.envoy) == _sorted_upstream(out.legatus)
    out.assert_same("result", "log", "stats")


@scenario(_mirrored("mirdead", [{"cluster": "mirdead_shadow"}]), Cluster(name="mirdead"),
          Cluster(name="mirdead_shadow", endpoint="refused"))  # fmt: skip
def test_a_dead_mirror_does_not_fail_the_request(http_pair):
    def traffic(side):
        out = [side.request("mirdead", "GET", "/x").view()]
        time.sleep(0.3)
        return out

    out = http_pair.run(traffic, full_stats=True)
    assert out.envoy.result[0]["status"] == "HTTP/1.1 200 OK"
    assert out.envoy.stats["cluster.mirdead_shadow.upstream_cx_connect_fail"] == 1
    out.assert_same()


@scenario(_mirrored("mirnone", [{"cluster": "mirnone_shadow", "runtime_fraction": {
    "default_value": {"numerator": 0}}}]), Cluster(name="mirnone"),
    Cluster(name="mirnone_shadow"))  # fmt: skip
def test_a_zero_fraction_mirrors_nothing(http_pair):
    def traffic(side):
        return [side.request("mirnone", "GET", "/x").view() for _ in range(3)]

    out = http_pair.run(traffic, full_stats=True)
    assert len(out.envoy.upstream) == 3
    out.assert_same()
