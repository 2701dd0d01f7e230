"""Retries, Envoy against legatus: the router's retry policy as the client, the upstream, the
access log and the stats see it.

Each scenario scripts its upstream path to fail a number of times, then answer (``Reply(then=
...)``): a 503 retried on ``5xx``, a reset retried on ``reset``, a refused connection on
``connect-failure`` with the retry limit reached (URX), status codes from
``retriable_status_codes``, retries asked by an internal client's ``x-envoy-retry-on``,
``x-envoy-attempt-count`` both ways, a per-try timeout retried, and the cluster's
``max_retries`` circuit breaker (overflow). Every stat of the scenario's listener and
cluster is compared, ``retry.upstream_rq_*`` and ``upstream_rq_retry*`` included.
"""

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

FAIL_503 = Reply(status=503, body=b"try again")
OK = Reply(body=b"finally")
SCRIPTS = {
    "/once503": Reply(status=503, body=b"try again", then=OK),
    "/once503-h": Reply(status=503, body=b"try again", then=OK),
    "/once503-c": Reply(status=503, body=b"try again", then=OK),
    "/once503-l": Reply(status=503, body=b"try again", then=OK),
    "/always503": FAIL_503,
    "/twice-reset": Reply(abort="reset", times=2, then=OK),
    "/once418": Reply(status=418, body=b"teapot", then=OK),
    "/slow-once": Reply(delay=0.6, body=b"late", then=OK),
    "/once409": Reply(status=409, body=b"conflict", then=OK),
    "/idle": Reply(delay=0.6, body=b"late"),
    "/hedge-fast": Reply(delay=0.6, body=b"late", then=OK),
    "/hedge-first": Reply(delay=0.5, body=b"first", then=Reply(delay=0.9, body=b"second")),
    "/idle-once": Reply(delay=0.6, body=b"late", then=OK),
}
BACK_OFF = {"base_interval": "0.001s", "max_interval": "0.002s"}


def _retrying(
    name: str, policy: dict, cluster: dict | None = None, **vhost
) -> tuple[Listener, Cluster]:
    # No route timeout: x-envoy-expected-rq-timeout-ms would carry the time each retry has
    # left, which depends on timing (test_the_route_timeout_left_goes_to_each_retry).
    routes = [route("/", {"route": {"cluster": name, "timeout": "0s", "retry_policy": {
        "retry_back_off": BACK_OFF, **policy}}})]  # fmt: skip
    vhosts = [{"name": name, "domains": ["*"], "routes": routes, **vhost}]
    return Listener(name=name, virtual_hosts=vhosts), Cluster(name=name, extra=cluster or {})


def _log(out) -> list[tuple]:
    return [(e["code"], e["flags"], e["details"]) for e in out.envoy.log]


@scenario(*_retrying("r5xx", {"retry_on": "5xx", "num_retries": 2}))
def test_a_503_is_retried_and_the_retry_answers(http_pair):
    def traffic(side):
        return [side.request("r5xx", "GET", "/once503").view()]

    out = http_pair.run(traffic, full_stats=True)
    assert out.envoy.result[0]["status"] == "HTTP/1.1 200 OK"
    assert out.envoy.result[0]["body"] == "finally"
    assert _log(out) == [(200, "-", "via_upstream")]
    stats = out.envoy.stats
    assert stats["cluster.r5xx.upstream_rq_retry"] == 1
    assert stats["cluster.r5xx.upstream_rq_retry_success"] == 1
    assert stats["cluster.r5xx.retry.upstream_rq_503"] == 1
    assert stats["cluster.r5xx.upstream_rq_200"] == 1
    out.assert_same()


@scenario(*_retrying("rlimit", {"retry_on": "5xx", "num_retries": 2}))
def test_retries_run_out_and_the_last_503_goes_to_the_client_with_urx(http_pair):
    def traffic(side):
        return [side.request("rlimit", "GET", "/always503").view()]

    out = http_pair.run(traffic, full_stats=True)
    assert out.envoy.result[0]["status"] == "HTTP/1.1 503 Service Unavailable"
    assert out.envoy.result[0]["body"] == "try again"
    assert _log(out) == [(503, "URX", "via_upstream")]
    stats = out.envoy.stats
    assert stats["cluster.rlimit.upstream_rq_retry"] == 2
    assert stats["cluster.rlimit.upstream_rq_retry_limit_exceeded"] == 1
    out.assert_same()


@scenario(*_retrying("rreset", {"retry_on": "reset", "num_retries": 3}))
def test_resets_are_retried_on_reset(http_pair):
    def traffic(side):
        return [side.request("rreset", "POST", "/twice-reset", body=b"payload").view()]

    out = http_pair.run(traffic, full_stats=True)
    assert out.envoy.result[0]["body"] == "finally"
    # every try carried the whole request body
    assert [r["body"] for r in out.envoy.upstream] == ["payload"] * 3
    assert out.envoy.stats["cluster.rreset.upstream_rq_retry"] == 2
    out.assert_same()


@scenario(Listener(name="rrefused", routes=[route("/", {"route": {
    "cluster": "rrefused", "retry_policy": {"retry_on": "connect-failure", "num_retries": 1,
                                            "retry_back_off": BACK_OFF}}})]),
    Cluster(name="rrefused", endpoint="refused"))  # fmt: skip
def test_connect_failures_run_out_as_503_uf_urx(http_pair):
    def traffic(side):
        return [side.request("rrefused", "GET", "/").view()]

    out = http_pair.run(traffic, full_stats=True)
    assert out.envoy.result[0]["body"] == (
        "upstream connect error or disconnect/reset before headers. retried and the latest "
        "reset reason: remote connection failure"
    )
    assert _log(out)[0][1] == "URX,UF"
    out.assert_same()


@scenario(*_retrying("rcodes", {"retry_on": "retriable-status-codes,retriable-4xx",
                                "retriable_status_codes": [418]}))  # fmt: skip
def test_retriable_status_codes_and_409(http_pair):
    def traffic(side):
        return [
            side.request("rcodes", "GET", "/once418").view(),
            side.request("rcodes", "GET", "/once409").view(),
        ]

    out = http_pair.run(traffic, full_stats=True)
    assert [r["body"] for r in out.envoy.result] == ["finally", "finally"]
    assert out.envoy.stats["cluster.rcodes.retry.upstream_rq_4xx"] == 2
    out.assert_same()


@scenario(Listener(name="rheader", hcm=INTERNAL_LOOPBACK,
    routes=[route("/", {"route": {"cluster": "rheader", "timeout": "0s"}})]),
    Cluster(name="rheader"))  # fmt: skip
def test_an_internal_client_asks_for_retries_with_headers(http_pair):
    headers = (("x-envoy-retry-on", "5xx"), ("x-envoy-max-retries", "1"))

    def traffic(side):
        return [side.request("rheader", "GET", "/once503-h", headers=headers).view()]

    out = http_pair.run(traffic, full_stats=True)
    assert out.envoy.result[0]["body"] == "finally"
    # the retry headers are consumed, not forwarded
    for request in out.envoy.upstream:
        assert not [h for h in request["headers"] if h.startswith("x-envoy-retry-on")]
    out.assert_same()


@scenario(*_retrying("rcount", {"retry_on": "5xx"}, include_request_attempt_count=True,
                     include_attempt_count_in_response=True))  # fmt: skip
def test_attempt_count_headers(http_pair):
    def traffic(side):
        return [side.request("rcount", "GET", "/once503-c").view()]

    out = http_pair.run(traffic, full_stats=True)
    counts = [
        [h for h in r["headers"] if h.startswith("x-envoy-attempt-count")]
        for r in out.envoy.upstream
    ]
    assert counts == [["x-envoy-attempt-count: 1"], ["x-envoy-attempt-count: 2"]]
    assert "x-envoy-attempt-count: 2" in out.envoy.result[0]["headers"]
    out.assert_same()


@scenario(Listener(name="rpertry", routes=[route("/", {"route": {
    "cluster": "rpertry", "timeout": "5s", "retry_policy": {
        "retry_on": "5xx", "per_try_timeout": "0.2s", "retry_back_off": BACK_OFF}}})]),
    Cluster(name="rpertry"))  # fmt: skip
def test_a_try_that_times_out_is_retried(http_pair):
    def traffic(side):
        return [side.request("rpertry", "GET", "/slow-once").view()]

    out = http_pair.run(traffic, full_stats=True)
    assert out.envoy.result[0]["body"] == "finally"
    assert out.envoy.stats["cluster.rpertry.upstream_rq_per_try_timeout"] == 1
    for side in (out.envoy, out.legatus):  # each try is told its per-try timeout
        expected = [
            [h for h in r["headers"] if h.startswith("x-envoy-expected-rq-timeout-ms")]
            for r in side.upstream
        ]
        assert expected == [["x-envoy-expected-rq-timeout-ms: 200"]] * 2
    out.assert_same()


@scenario(Listener(name="rleft", routes=[route("/", {"route": {
    "cluster": "rleft", "timeout": "15s", "retry_policy": {
        "retry_on": "5xx", "retry_back_off": {"base_interval": "0.1s"}}}})]),
    Cluster(name="rleft"))  # fmt: skip
def test_the_route_timeout_left_goes_to_each_retry(http_pair):
    def traffic(side):
        return [side.request("rleft", "GET", "/once503-l").view()]

    out = http_pair.run(traffic)
    for side in (out.envoy, out.legatus):
        values = [
            int(h.split(": ")[1])
            for r in side.upstream
            for h in r["headers"]
            if h.startswith("x-envoy-expected-rq-timeout-ms")
        ]
        assert values[0] == 15000
        assert 14800 < values[1] < 15000  # less the back-off (under 0.1 s) and the first try


@scenario(*_retrying("roverflow", {"retry_on": "5xx", "num_retries": 3},
                     {"circuit_breakers": {"thresholds": [{"max_retries": 0}]}}))  # fmt: skip
def test_the_max_retries_breaker_stops_retries(http_pair):
    def traffic(side):
        return [side.request("roverflow", "GET", "/always503").view()]

    out = http_pair.run(traffic, full_stats=True)
    assert out.envoy.result[0]["status"] == "HTTP/1.1 503 Service Unavailable"
    assert _log(out)[0][1] == "UO"
    assert out.envoy.stats["cluster.roverflow.upstream_rq_retry_overflow"] == 1
    out.assert_same()


@scenario(Listener(name="ridle", routes=[route("/", {"route": {
    "cluster": "ridle", "timeout": "5s", "retry_policy": {
        "per_try_idle_timeout": "0.2s", "retry_back_off": BACK_OFF}}})]),
    Cluster(name="ridle"))  # fmt: skip
def test_a_try_without_progress_times_out_on_its_idle_timeout(http_pair):
    def traffic(side):
        return [side.request("ridle", "GET", "/idle").view()]

    out = http_pair.run(traffic, full_stats=True)
    assert out.envoy.result[0]["status"] == "HTTP/1.1 504 Gateway Timeout"
    assert _log(out) == [(504, "UT", "upstream_per_try_idle_timeout")]
    assert out.envoy.stats["cluster.ridle.upstream_rq_per_try_idle_timeout"] == 1
    out.assert_same()


@scenario(Listener(name="ridler", routes=[route("/", {"route": {
    "cluster": "ridler", "timeout": "0s", "retry_policy": {
        "retry_on": "5xx", "per_try_idle_timeout": "0.2s", "retry_back_off": BACK_OFF}}})]),
    Cluster(name="ridler"))  # fmt: skip
def test_a_try_idle_timeout_is_retried(http_pair):
    def traffic(side):
        return [side.request("ridler", "GET", "/idle-once").view()]

    out = http_pair.run(traffic, full_stats=True)
    assert out.envoy.result[0]["body"] == "finally"
    out.assert_same()


def _hedging(name: str) -> tuple[Listener, Cluster]:
    return Listener(name=name, routes=[route("/", {"route": {
        "cluster": name, "timeout": "0s", "hedge_policy": {"hedge_on_per_try_timeout": True},
        "retry_policy": {"retry_on": "5xx", "per_try_timeout": "0.2s",
                         "retry_back_off": BACK_OFF}}})]), Cluster(name=name)  # fmt: skip


@scenario(*_hedging("rhedge"))
def test_a_slow_try_is_hedged_and_the_faster_answer_wins(http_pair):
    def traffic(side):
        return [side.request("rhedge", "GET", "/hedge-fast").view()]

    out = http_pair.run(traffic, full_stats=True)
    assert out.envoy.result[0]["body"] == "finally"
    assert len(out.envoy.upstream) == 2
    # a hedged try's per-try timeout is soft: not counted as one
    assert out.envoy.stats["cluster.rhedge.upstream_rq_per_try_timeout"] == 0
    assert out.envoy.stats["cluster.rhedge.upstream_rq_retry"] == 1
    out.assert_same()


@scenario(*_hedging("rhedge1"))
def test_the_first_try_may_still_win_a_hedge(http_pair):
    def traffic(side):
        return [side.request("rhedge1", "GET", "/hedge-first").view()]

    out = http_pair.run(traffic, full_stats=True)
    assert out.envoy.result[0]["body"] == "first"
    assert len(out.envoy.upstream) == 2
    out.assert_same()
