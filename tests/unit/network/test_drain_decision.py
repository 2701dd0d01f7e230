"""The drain decision of a listener's connections (Envoy 1.40's drainClose), driven with a
fake clock and seeded randomness."""

from __future__ import annotations

import random

import pytest
from envoy.config.listener.v3 import listener_pb2

from legatus.network.drain_decision import (
    DrainDirection,
    DrainEvent,
    DrainStrategy,
    ListenerDrainDecision,
    listener_scope,
    should_drain_close,
)
from legatus.server.server_health import ServerHealth

GRADUAL, IMMEDIATE = DrainStrategy.GRADUAL, DrainStrategy.IMMEDIATE


def share(event: DrainEvent, at: float, draws: int = 4000) -> float:
    rng = random.Random(7)
    return sum(should_drain_close(event, at, rng) for _ in range(draws)) / draws


def test_immediate_always_closes():
    event = DrainEvent(start=100.0, drain_time=600, strategy=IMMEDIATE)
    assert should_drain_close(event, 100.0, random.Random(1))


@pytest.mark.parametrize(
    ("drain_time", "elapsed", "expected"),
    [
        (10, 0.0, 0.0),  # the first second: never
        (10, 0.99, 0.0),
        (10, 1.0, 0.2),  # ramp over ceil(10 / 2) = 5 s, in whole seconds
        (10, 1.99, 0.2),
        (10, 4.5, 0.8),
        (10, 5.0, 1.0),  # from half the drain time on: always
        (10, 9.0, 1.0),
        (5, 1.5, 1 / 3),  # ceil(5 / 2) = 3
        (5, 2.5, 2 / 3),
        (1, 0.5, 0.0),  # ceil(1 / 2) = 1
        (0, 0.0, 1.0),  # no drain time: at once
    ],
)
def test_gradual_ramps_over_half_the_drain_time(drain_time, elapsed, expected):
    event = DrainEvent(start=100.0, drain_time=drain_time, strategy=GRADUAL)
    assert share(event, 100.0 + elapsed) == pytest.approx(expected, abs=0.03)


def test_a_clock_behind_the_start_counts_as_no_time():
    event = DrainEvent(start=100.0, drain_time=10, strategy=GRADUAL)
    assert share(event, 99.0) == 0.0


def test_a_negative_drain_time_is_refused():
    with pytest.raises(ValueError):
        DrainEvent(start=0.0, drain_time=-1, strategy=GRADUAL)


def _decision(health=None, **fields) -> tuple[ListenerDrainDecision, list[float]]:
    now = [100.0]
    proto = listener_pb2.Listener(**fields)
    decision = ListenerDrainDecision.for_listener(
        proto, health=health, rng=random.Random(3), clock=lambda: now[0]
    )
    return decision, now


def test_no_drain_no_close_and_the_first_drain_is_kept():
    decision, now = _decision()
    assert not decision.draining and not decision.drain_close()
    first = DrainEvent(start=100.0, drain_time=10, strategy=GRADUAL)
    assert decision.notify(first)
    assert not decision.notify(DrainEvent(start=50.0, drain_time=10, strategy=IMMEDIATE))
    assert decision.event is first
    assert not decision.drain_close()  # the first second of the first drain
    now[0] = 106.0
    assert decision.drain_close()


def test_failed_health_checks_close_default_listeners_only():
    health = ServerHealth()
    default, _ = _decision(health)
    modify_only, _ = _decision(health, drain_type=listener_pb2.Listener.MODIFY_ONLY)
    health.failed = True
    assert default.drain_close() and not modify_only.drain_close()
    health.failed = False  # /healthcheck/ok takes it back
    assert not default.drain_close()


def test_server_drain_directions_reach_listeners_by_traffic_direction():
    inbound, _ = _decision(traffic_direction=1)  # INBOUND
    outbound, _ = _decision(traffic_direction=2)  # OUTBOUND
    unspecified, _ = _decision()
    assert inbound.scope is DrainDirection.INBOUND_ONLY
    assert listener_scope(listener_pb2.Listener()) is DrainDirection.ALL
    assert [d.reaches(DrainDirection.INBOUND_ONLY) for d in (inbound, outbound, unspecified)] == [
        True,
        False,
        False,
    ]
    assert all(d.reaches(DrainDirection.ALL) for d in (inbound, outbound, unspecified))
    assert not inbound.reaches(DrainDirection.NONE)
