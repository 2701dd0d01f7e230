"""The previous_priorities retry priority, Envoy against legatus: a cluster with one endpoint
per priority, where P0 refuses connections; which try reaches the upstream, the client's
answer and the retry and connection stats are compared."""

from __future__ import annotations

from tests.differential.http_scenario import (  # noqa: F401 (fixtures)
    Cluster,
    Listener,
    http_pair_fixture,
    http_pair_processes_fixture,
    scenario,
)

PRIORITY_TYPE = (
    "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3."
    "PreviousPrioritiesConfig"
)


def _listener(name: str, num_retries: int, frequency: int | None,
              priorities=("refused", "up")) -> tuple[Listener, Cluster]:  # fmt: skip
    policy: dict = {"retry_on": "connect-failure", "num_retries": num_retries}
    if frequency is not None:
        policy["retry_priority"] = {
            "name": "envoy.retry_priorities.previous_priorities",
            "typed_config": {"@type": PRIORITY_TYPE, "update_frequency": frequency},
        }
    # No route timeout: x-envoy-expected-rq-timeout-ms would carry the time left after the
    # jittered back-off.
    routes = [{"match": {"prefix": "/"},
               "route": {"cluster": name, "timeout": "0s", "retry_policy": policy}}]  # fmt: skip
    return (
        Listener(name=name, routes=routes, hcm={"delayed_close_timeout": "0.1s"}),
        Cluster(name=name, priorities=priorities),
    )


def _statuses(out) -> list[int]:
    return [int(r["status"].split(" ")[1]) for r in out.envoy.result]


@scenario(*_listener("rp_each", 1, 1))
def test_each_retry_moves_to_a_priority_not_yet_tried(http_pair):
    out = http_pair.run(lambda side: [side.request("rp_each", "GET", "/").view()])
    assert _statuses(out) == [200]
    assert out.envoy.stats["cluster.rp_each.upstream_rq_retry"] == 1
    out.assert_same()


@scenario(*_listener("rp_none", 1, None))
def test_without_a_retry_priority_the_retry_stays_on_p0(http_pair):
    out = http_pair.run(lambda side: [side.request("rp_none", "GET", "/").view()])
    assert _statuses(out) == [503]
    out.assert_same()


@scenario(*_listener("rp_every_other", 2, 2))
def test_an_update_frequency_of_two_moves_after_two_tries(http_pair):
    out = http_pair.run(lambda side: [side.request("rp_every_other", "GET", "/").view()])
    assert _statuses(out) == [200]
    assert out.envoy.stats["cluster.rp_every_other.upstream_rq_retry"] == 2
    assert out.envoy.stats["cluster.rp_every_other.upstream_cx_connect_fail"] == 2
    out.assert_same()


@scenario(*_listener("rp_exhausted", 3, 1, ("refused", "refused")))
def test_when_every_priority_was_tried_they_are_all_tried_again(http_pair):
    out = http_pair.run(lambda side: [side.request("rp_exhausted", "GET", "/").view()])
    assert _statuses(out) == [503]
    assert out.envoy.stats["cluster.rp_exhausted.upstream_cx_connect_fail"] == 4
    out.assert_same()
