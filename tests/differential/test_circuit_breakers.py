"""Circuit-breaker gauges, Envoy against legatus (--concurrency 1, where the load is
deterministic): the circuit_breakers.<priority>.* names and values before, during and after a
load that trips max_connections, max_pending_requests and max_requests at once."""

from __future__ import annotations

from tests.differential.http_scenario import (  # noqa: F401 (fixtures)
    Cluster,
    Listener,
    Reply,
    http_pair_fixture,
    http_pair_processes_fixture,
    http_request,
    scenario,
)
from tests.support.process import wait_for

SCRIPTS = {"/hold": Reply(hold=True)}

THRESHOLDS = [
    {"max_connections": 2, "max_pending_requests": 1, "max_requests": 2, "max_retries": 0,
     "track_remaining": True},
    {"priority": "HIGH", "max_requests": 7, "track_remaining": True,
     "retry_budget": {"budget_percent": {"value": 50.0}}},
]  # fmt: skip


def _breakers(side, cluster: str) -> dict:
    prefix = f"cluster.{cluster}.circuit_breakers."
    return {k[len(prefix) :]: v for k, v in side.proxy.stats().items() if k.startswith(prefix)}


def _stat(side, name: str) -> int:
    return side.proxy.stats()[name]


@scenario(Listener(name="cb"), Cluster(name="cb", extra={"circuit_breakers": {
    "thresholds": THRESHOLDS}}))  # fmt: skip
def test_gauges_before_during_and_after_a_tripping_load(http_pair):
    def traffic(side):
        before = _breakers(side, "cb")
        held = side.upstream.held
        clients = [side.connect("cb") for _ in range(4)]
        try:
            for n, client in enumerate(clients[:2], 1):
                client.send(http_request("GET", "/hold"))
                wait_for(lambda n=n: side.upstream.held == held + n, timeout=3, what="held")
            clients[2].send(http_request("GET", "/hold"))  # no connection left: it waits
            wait_for(lambda: _stat(side, "cluster.cb.upstream_rq_pending_active") == 1,
                     timeout=3, what="a pending request")  # fmt: skip
            overflow = clients[3].request("GET", "/hold")  # the queue is full: 503 UO
            during = _breakers(side, "cb")
            side.upstream.release()
            answers = [c.response().view() for c in clients[:3]]
            wait_for(lambda: _stat(side, "cluster.cb.upstream_rq_active") == 0,
                     timeout=3, what="no active request")  # fmt: skip
            after = _breakers(side, "cb")
        finally:
            for client in clients:
                client.close()
        return {"before": before, "during": during, "overflow": overflow.view(),
                "answers": answers, "after": after}  # fmt: skip

    out = http_pair.run(traffic)
    during = out.envoy.result["during"]
    assert during["default.cx_open"] == 1 and during["default.remaining_cx"] == 0
    assert during["default.rq_open"] == 1 and during["default.remaining_rq"] == 0
    assert during["default.rq_pending_open"] == 1 and during["default.remaining_pending"] == 0
    assert during["default.rq_retry_open"] == 0  # max_retries 0: never counted, never opened
    assert during["high.remaining_rq"] == 7 and during["high.remaining_retries"] == 3
    assert "x-envoy-overloaded: true" in out.envoy.result["overflow"]["headers"]
    after = out.envoy.result["after"]
    assert after["default.rq_open"] == 0 and after["default.rq_pending_open"] == 0
    assert after["default.cx_open"] == 1  # the two connections stay open (keep-alive)
    assert after["default.remaining_cx_pools"] == (1 << 64) - 2  # one pool, counted
    # Not "upstream": which freed connection the queued request reuses is a matter of which
    # held response the upstream's threads write first.
    out.assert_same("result", "log", "stats", "histograms")
