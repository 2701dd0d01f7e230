"""Retries on gRPC statuses (``retry_on`` ``cancelled``, ``deadline-exceeded``, ``internal``,
``resource-exhausted``, ``unavailable``, and ``x-envoy-retry-grpc-on``), Envoy against
legatus: the upstream answers trailers-only gRPC responses (``grpc-status`` in the response
headers, the only place Envoy looks), and clients, upstream and retry stats are compared."""

from __future__ import annotations

from tests.differential.http_scenario import (  # noqa: F401 (fixtures)
    INTERNAL_LOOPBACK,
    Cluster,
    Listener,
    Reply,
    http_pair_fixture,
    http_pair_processes_fixture,
    route,
    scenario,
)


def _grpc(status: int, **kw) -> Reply:
    return Reply(headers=(("content-type", "application/grpc"), ("grpc-status", str(status)),
                          ("grpc-message", f"status {status}")), body=b"", **kw)  # fmt: skip


OK = _grpc(0)
SCRIPTS = {
    "/unavailable-once": _grpc(14, then=OK),
    "/cancelled-once": _grpc(1, then=OK),
    "/internal-once": _grpc(13, then=OK),
    "/exhausted-once": _grpc(8, then=OK),
    "/exhausted-once-h": _grpc(8, then=OK),
    "/always-unavailable": _grpc(14),
    "/bad-status-once": Reply(headers=(("grpc-status", "x14"),), body=b"", then=OK),
}
BACK_OFF = {"base_interval": "0.001s", "max_interval": "0.002s"}


def _statuses(out) -> list[str]:
    return [next(h for h in r["headers"] if h.startswith("grpc-status")) for r in out.envoy.result]


@scenario(Listener(name="rgrpc", routes=[route("/", {"route": {
    "cluster": "rgrpc", "timeout": "0s", "retry_policy": {
        "retry_on": "unavailable,cancelled,5xx", "num_retries": 2,
        "retry_back_off": BACK_OFF}}})]), Cluster(name="rgrpc"))  # fmt: skip
def test_grpc_statuses_the_policy_names_are_retried(http_pair):
    def traffic(side):
        return [side.request("rgrpc", "POST", path, body=b"\0\0\0\0\0").view() for path in (
            "/unavailable-once", "/cancelled-once", "/internal-once", "/always-unavailable",
            "/bad-status-once")]  # fmt: skip

    out = http_pair.run(traffic, full_stats=True)
    assert _statuses(out) == ["grpc-status: 0", "grpc-status: 0", "grpc-status: 13",
                              "grpc-status: 14", "grpc-status: x14"]  # fmt: skip
    assert out.envoy.stats["cluster.rgrpc.upstream_rq_retry"] == 4
    assert out.envoy.stats["cluster.rgrpc.upstream_rq_retry_limit_exceeded"] == 1
    out.assert_same()


@scenario(Listener(name="rgrpch", hcm=INTERNAL_LOOPBACK,
    routes=[route("/", {"route": {"cluster": "rgrpch", "timeout": "0s"}})]),
    Cluster(name="rgrpch"))  # fmt: skip
def test_an_internal_client_asks_for_grpc_retries_with_a_header(http_pair):
    def traffic(side):
        return [
            side.request("rgrpch", "POST", "/exhausted-once-h", body=b"\0\0\0\0\0",
                         headers=(("x-envoy-retry-grpc-on", "resource-exhausted"),)).view(),
            # gRPC names in x-envoy-retry-on are not taken
            side.request("rgrpch", "POST", "/exhausted-once", body=b"\0\0\0\0\0",
                         headers=(("x-envoy-retry-on", "resource-exhausted"),)).view(),
        ]  # fmt: skip

    out = http_pair.run(traffic, full_stats=True)
    assert _statuses(out) == ["grpc-status: 0", "grpc-status: 8"]
    for request in out.envoy.upstream:
        assert not [h for h in request["headers"] if h.startswith("x-envoy-retry")]
    out.assert_same()
