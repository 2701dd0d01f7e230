"""Gray release, Envoy against legatus: weighted clusters whose weights come from runtime keys
(moved with ``/runtime_modify`` while traffic flows), per-cluster header mutations, and a
header-matched canary route in front of the stable one.

``header_name`` makes each request's pick deterministic (the header's value modulo the total
weight), so both proxies must send the same request to the same cluster; the upstream sees
the cluster in a header each weighted cluster adds.
"""

from __future__ import annotations

from tests.differential.http_scenario import (  # noqa: F401 (fixtures)
    Cluster,
    Listener,
    http_pair_fixture,
    http_pair_processes_fixture,
    route,
    scenario,
)

SCRIPTS: dict = {}
BOOTSTRAP = {"layered_runtime": {"layers": [{"name": "admin", "admin_layer": {}}]}}


def _tagged(name: str, weight: int) -> dict:
    return {"name": name, "weight": weight, "request_headers_to_add": [
        {"header": {"key": "x-cluster", "value": name}}]}  # fmt: skip


GRAY = Listener(name="gray", routes=[
    route("/", {"route": {"weighted_clusters": {
        "runtime_key_prefix": "gray.weights", "header_name": "x-pick",
        "clusters": [_tagged("gray_stable", 90), _tagged("gray_canary", 10)]}}}),
])  # fmt: skip
CANARY = Listener(name="canary", routes=[
    route("/", {"route": {"cluster": "canary_new"}},
          match={"prefix": "/", "headers": [{"name": "x-canary", "string_match": {
              "exact": "1"}}]}),
    route("/", {"route": {"cluster": "canary_old"}}),
])  # fmt: skip


def _clusters_seen(observation) -> list[str]:
    return [
        next((h.split(": ", 1)[1] for h in r["headers"] if h.startswith("x-cluster")), "-")
        for r in observation.upstream
    ]


@scenario(GRAY, Cluster(name="gray_stable"), Cluster(name="gray_canary"))
def test_runtime_keys_move_the_canary_share(http_pair):
    def traffic(side):
        def picks():
            return [
                side.request("gray", "GET", "/", headers=(("x-pick", str(v)),)).status
                for v in (0, 50, 89, 90, 99)
            ]

        before = picks()
        status, _ = side.proxy.admin(
            "/runtime_modify?gray.weights.gray_stable=50&gray.weights.gray_canary=50", "POST"
        )
        after = picks()
        side.proxy.admin(
            "/runtime_modify?gray.weights.gray_stable=&gray.weights.gray_canary=", "POST"
        )
        return [before, status, after]

    out = http_pair.run(traffic, full_stats=True)
    assert out.envoy.result[1] == 200
    assert _clusters_seen(out.envoy) == [
        "gray_stable", "gray_stable", "gray_stable", "gray_canary", "gray_canary",
        "gray_stable", "gray_canary", "gray_canary", "gray_canary", "gray_canary",
    ]  # fmt: skip
    out.assert_same()


@scenario(CANARY, Cluster(name="canary_new"), Cluster(name="canary_old"))
def test_a_header_sends_a_request_to_the_canary(http_pair):
    def traffic(side):
        return [
            side.request("canary", "GET", "/", headers=(("x-canary", "1"),)).view(),
            side.request("canary", "GET", "/").view(),
        ]

    out = http_pair.run(traffic, full_stats=True)
    assert out.envoy.stats["cluster.canary_new.upstream_rq_200"] == 1
    assert out.envoy.stats["cluster.canary_old.upstream_rq_200"] == 1
    out.assert_same()
