"""Circuit-breaker thresholds and limits in one process (no shared table)."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import circuit_breaker_pb2

from legatus.config.errors import ConfigError
from legatus.stats.store import Store
from legatus.upstream.resource_manager import (
    UNLIMITED,
    ResourceManager,
    ResourcePriority,
    RetryBudget,
    Thresholds,
)

CB = "cluster.backend.circuit_breakers."


def breakers(**fields) -> circuit_breaker_pb2.CircuitBreakers:
    cb = circuit_breaker_pb2.CircuitBreakers()
    for threshold in fields.pop("thresholds", ()):
        t = cb.thresholds.add()
        for name, value in threshold.items():
            if name == "retry_budget":
                t.retry_budget.SetInParent()
                for key, v in value.items():
                    getattr(t.retry_budget, key).value = v
            elif name in ("priority", "track_remaining"):
                setattr(t, name, value)
            else:
                getattr(t, name).value = value
    return cb


# Thresholds --------------------------------------------------------------------------------


def test_defaults_are_envoys():
    t = Thresholds.from_circuit_breakers(None, ResourcePriority.DEFAULT)
    assert (t.max_connections, t.max_pending_requests, t.max_requests, t.max_retries) == (
        1024,
        1024,
        1024,
        3,
    )
    assert t.max_connection_pools == UNLIMITED and t.retry_budget is None
    assert not t.track_remaining


def test_the_first_threshold_of_the_priority_wins():
    cb = breakers(thresholds=[{"priority": 1, "max_requests": 5}, {"priority": 1,
                  "max_requests": 9}, {"max_connections": 2}])  # fmt: skip
    high = Thresholds.from_circuit_breakers(cb, ResourcePriority.HIGH)
    default = Thresholds.from_circuit_breakers(cb, ResourcePriority.DEFAULT)
    assert (high.max_requests, high.max_connections) == (5, 1024)
    assert (default.max_requests, default.max_connections) == (1024, 2)


def test_retry_budget_needs_one_of_its_fields_the_other_takes_its_default():
    empty = breakers(thresholds=[{"retry_budget": {}}])
    assert Thresholds.from_circuit_breakers(empty, ResourcePriority.DEFAULT).retry_budget is None
    percent = breakers(thresholds=[{"retry_budget": {"budget_percent": 50.0}}])
    assert Thresholds.from_circuit_breakers(percent, ResourcePriority.DEFAULT).retry_budget == (
        RetryBudget(budget_percent=50.0, min_retry_concurrency=3)
    )
    minimum = breakers(thresholds=[{"retry_budget": {"min_retry_concurrency": 7}}])
    assert Thresholds.from_circuit_breakers(minimum, ResourcePriority.DEFAULT).retry_budget == (
        RetryBudget(budget_percent=20.0, min_retry_concurrency=7)
    )


def test_per_host_thresholds_are_refused_by_path():
    cb = breakers()
    cb.per_host_thresholds.add().max_connections.value = 1
    with pytest.raises(ConfigError, match=r"clusters\[0\]\.circuit_breakers\.per_host"):
        Thresholds.from_circuit_breakers(
            cb, ResourcePriority.DEFAULT, "clusters[0].circuit_breakers"
        )


def test_retry_budget_limit_is_a_share_of_active_and_pending_requests():
    budget = RetryBudget(budget_percent=25.0, min_retry_concurrency=3)
    assert budget.max_retries(0) == 3
    assert budget.max_retries(15) == 3  # 3.75 truncated, and never below the minimum
    assert budget.max_retries(100) == 25
    assert budget.max_retries(101) == 25


# One process: limits and the gauges they set ----------------------------------------------


def test_limits_and_gauges_follow_every_change():
    store = Store()
    rm = ResourceManager(store.scope("cluster.backend."), max_requests=2, track_remaining=True)
    assert store.value(CB + "default.remaining_rq") == 2
    assert store.value(CB + "default.rq_open") == 0
    rm.requests.inc()
    assert rm.can_send_request() and rm.requests.count == 1
    rm.requests.inc()
    assert not rm.can_send_request()
    assert store.value(CB + "default.rq_open") == 1
    assert store.value(CB + "default.remaining_rq") == 0
    rm.requests.dec()
    assert rm.can_send_request()
    assert store.value(CB + "default.rq_open") == 0
    assert store.value(CB + "default.remaining_rq") == 1


def test_try_inc_counts_only_within_the_limit_and_sets_the_gauges():
    store = Store()
    rm = ResourceManager(store.scope("cluster.backend."), max_requests=1, track_remaining=True)
    assert rm.requests.try_inc() and rm.requests.count == 1
    assert store.value(CB + "default.rq_open") == 1
    assert store.value(CB + "default.remaining_rq") == 0
    assert not rm.requests.try_inc() and rm.requests.count == 1
    rm.requests.dec()
    assert rm.requests.try_inc() and rm.requests.count == 1


def test_without_track_remaining_there_are_no_remaining_gauges():
    store = Store()
    ResourceManager(store.scope("cluster.backend."), ResourcePriority.HIGH)
    assert store.get(CB + "high.rq_open") is not None
    assert store.get(CB + "high.remaining_rq") is None


def test_retry_budget_in_one_process():
    store = Store()
    rm = ResourceManager(
        store.scope("cluster.backend."),
        max_retries=1,
        track_remaining=True,
        retry_budget=RetryBudget(budget_percent=50.0, min_retry_concurrency=1),
    )
    assert store.value(CB + "default.remaining_retries") == 1  # until the budget is used
    for _ in range(4):
        rm.requests.inc()
    for _ in range(2):
        rm.pending_requests.inc()
    assert rm.retries.max == 3  # 50% of 6
    assert store.value(CB + "default.remaining_retries") == 0  # Envoy: not tracked
    rm.retries.inc()
    # The open gauge still follows max_retries (1), as Envoy's: the budget is not a gauge.
    assert store.value(CB + "default.rq_retry_open") == 1
    assert rm.can_retry()
    rm.retries.inc()
    rm.retries.inc()
    assert not rm.can_retry()
    for _ in range(4):
        rm.requests.dec()
    assert rm.retries.max == 1  # the minimum
    assert store.value(CB + "default.remaining_retries") == 0
