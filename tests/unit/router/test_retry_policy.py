"""Retry policies: ``envoy.retry_priorities.previous_priorities`` (the loads it gives the
balancer after each number of tries, and its configuration) and the gRPC ``retry_on``
names (Envoy 1.40 is compared end to end in tests/differential/test_http_retry_priority.py
and test_http_grpc_retries.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from envoy.config.route.v3 import route_components_pb2

from legatus.config.errors import ConfigError
from legatus.config.proto_json import parse
from legatus.router.retry_policy import compile_retry_policy
from legatus.router.retry_priority import PreviousPriorities

PRIORITY_TYPE = (
    "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3."
    "PreviousPrioritiesConfig"
)


def priority_set(health, degraded=None):
    return SimpleNamespace(health_availability=tuple(health),
                           degraded_availability=tuple(degraded or [0] * len(health)))  # fmt: skip


def host(priority: int):
    return SimpleNamespace(config=SimpleNamespace(priority=priority))


def loads(frequency: int, tries: list[int], ps) -> tuple | None:
    """The load after each prefix of ``tries`` (hosts of those priorities), as the router
    asks for it before each retry."""
    state = PreviousPriorities(frequency)
    out = []
    for n in range(1, len(tries) + 1):
        out.append(state.for_attempts(tuple(host(p) for p in tries[:n]))(ps))
    return out


def test_each_try_excludes_its_priority():
    ps = priority_set([100, 100, 100])
    assert loads(1, [0, 1, 2], ps) == [
        ([0, 100, 0], [0, 0, 0]),
        ([0, 0, 100], [0, 0, 0]),
        # every priority tried: a fresh start from all of them
        ([100, 0, 0], [0, 0, 0]),
    ]


def test_update_frequency_two_holds_the_load_between_updates():
    ps = priority_set([100, 100, 100])
    assert loads(2, [0, 0, 1, 1], ps) == [
        None,  # fewer tries than the frequency: the set's own loads
        ([0, 100, 0], [0, 0, 0]),
        ([0, 100, 0], [0, 0, 0]),  # not a multiple: the last update's loads
        ([0, 0, 100], [0, 0, 0]),
    ]


def test_the_rest_is_spread_over_what_is_left_with_degraded_shares():
    # P0 tried; P1 70 % healthy, P2 20 % degraded: 70 * 100 / 90 and 20 * 100 / 90, then the
    # rounding left-over to the first level.
    ps = priority_set([100, 70, 0], [0, 0, 20])
    assert loads(1, [0], ps) == [([0, 78, 0], [0, 0, 22])]


def test_no_availability_anywhere_keeps_the_sets_own_loads():
    assert loads(1, [0], priority_set([0, 0])) == [None]


def policy(retry_priority: dict):
    proto = parse({"retry_on": "5xx", "retry_priority": retry_priority},
                  route_components_pb2.RetryPolicy)  # fmt: skip
    return compile_retry_policy(proto, "retry_policy")


def test_the_policy_takes_previous_priorities_and_refuses_the_rest():
    assert policy({"name": "envoy.retry_priorities.previous_priorities", "typed_config": {
        "@type": PRIORITY_TYPE, "update_frequency": 3}}).previous_priorities == 3  # fmt: skip
    with pytest.raises(ConfigError) as e:
        policy({"name": "other", "typed_config": {
            "@type": "type.googleapis.com/google.protobuf.Struct", "value": {}}})  # fmt: skip
    assert e.value.path == "retry_policy.retry_priority"
    assert "not supported by legatus" in str(e.value)
    with pytest.raises(ConfigError) as e:
        policy({"name": "p", "typed_config": {"@type": PRIORITY_TYPE}})
    assert e.value.path == "retry_policy.retry_priority.typed_config.update_frequency"


def test_retry_on_takes_grpc_conditions_and_refuses_unknown_names():
    from legatus.router.retry_policy import GRPC_ANY, parse_retry_grpc_on, parse_retry_on

    proto = parse({"retry_on": "5xx,unavailable,deadline-exceeded"},
                  route_components_pb2.RetryPolicy)  # fmt: skip
    flags = compile_retry_policy(proto, "retry_policy").retry_on
    assert flags & GRPC_ANY and flags & 1
    assert parse_retry_on("unavailable")[0] == 0  # x-envoy-retry-on: HTTP names only
    assert parse_retry_grpc_on("unavailable, nope") != 0
    with pytest.raises(ConfigError) as e:
        compile_retry_policy(parse({"retry_on": "5xx,sometimes"},
                                   route_components_pb2.RetryPolicy), "retry_policy")  # fmt: skip
    assert e.value.path == "retry_policy.retry_on"
    assert "invalid retry policy: sometimes" in str(e.value)
