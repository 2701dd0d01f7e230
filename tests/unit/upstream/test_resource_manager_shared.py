"""Circuit breakers counted for the whole instance: the shared table, the managers of several
workers on it, and the gauges the main process computes from it."""

from __future__ import annotations

import os
import uuid

import pytest
from envoy.config.cluster.v3 import circuit_breaker_pb2

from legatus.stats.store import Store
from legatus.upstream.resource_manager import (
    ROWS,
    CircuitBreakerTables,
    ResourceManager,
    ResourcePriority,
    RetryBudget,
    SharedSlots,
)
from legatus.upstream.shared_counters import SHM_DIR, CounterTable

SCOPE = "cluster.backend."
CB = SCOPE + "circuit_breakers."


@pytest.fixture
def shm_name():
    name = f"legatus-test-{uuid.uuid4().hex[:12]}"
    yield name
    assert not os.path.exists(os.path.join(SHM_DIR, name)), "a test left its table in /dev/shm"


# The table ---------------------------------------------------------------------------------


def test_rows_sum_the_workers_slots_and_a_worker_writes_only_its_own():
    table = CounterTable.anonymous(rows=3, workers=4)
    for worker in range(4):
        table.slot(1, worker)[0] += worker + 1
    assert table.total(1) == 10 and table.total(0) == table.total(2) == 0
    assert list(table.row(1)) == [1, 2, 3, 4]
    table.zero_worker(2)
    assert table.total(1) == 7


def test_zero_worker_can_keep_some_rows():
    table = CounterTable.anonymous(rows=2, workers=2)
    table.slot(0, 1)[0] = 5
    table.slot(1, 1)[0] = 1
    table.zero_worker(1, [0])
    assert (table.total(0), table.total(1)) == (0, 1)


def test_slots_out_of_range_are_refused():
    table = CounterTable.anonymous(rows=2, workers=2)
    with pytest.raises(IndexError):
        table.slot(2, 0)
    with pytest.raises(IndexError):
        table.slot(0, 2)
    with pytest.raises(ValueError):
        CounterTable.anonymous(rows=0, workers=1)


def test_an_anonymous_table_is_shared_with_a_forked_process():
    table = CounterTable.anonymous(rows=1, workers=2)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        table.slot(0, 1)[0] += 3
        os._exit(0)
    os.waitpid(pid, 0)
    table.slot(0, 0)[0] += 1
    assert table.total(0) == 4


def test_a_named_table_is_attached_by_name_and_unlinked(shm_name):
    made = CounterTable.create(shm_name, rows=ROWS, workers=3)
    try:
        attached = CounterTable.attach(shm_name)
        assert (attached.rows, attached.workers) == (ROWS, 3)
        attached.slot(5, 2)[0] += 2
        made.slot(5, 0)[0] += 1
        assert made.total(5) == attached.total(5) == 3
        with pytest.raises(FileExistsError):
            CounterTable.create(shm_name, rows=1, workers=1)
    finally:
        made.unlink()
    made.unlink()  # twice is harmless
    assert made.total(5) == 3  # the mapping outlives the name


def test_attaching_what_is_not_a_table_is_refused(shm_name):
    path = os.path.join(SHM_DIR, shm_name)
    with open(path, "wb") as f:
        f.write(b"\0" * 4096)
    try:
        with pytest.raises(ValueError, match="not a counter table"):
            CounterTable.attach(shm_name)
    finally:
        os.unlink(path)


# Managers of several workers on one table --------------------------------------------------


def workers(n: int, **limits) -> tuple[CounterTable, list[ResourceManager], Store]:
    table = CounterTable.anonymous(rows=ROWS, workers=n)
    store = Store()
    managers = [
        ResourceManager(store.scope(SCOPE), counters=SharedSlots(table, i), **limits)
        for i in range(n)
    ]
    return table, managers, store


def test_a_limit_holds_across_workers():
    _, (a, b), _ = workers(2, max_requests=3)
    a.requests.inc()
    a.requests.inc()
    assert b.can_send_request() and b.requests.count == 2
    b.requests.inc()
    assert not a.can_send_request() and not b.can_send_request()
    assert a.requests.count >= a.requests.max  # what the pool reads when it attaches
    a.requests.dec()
    assert b.can_send_request()


def test_try_inc_holds_the_limit_across_workers():
    _, (a, b), _ = workers(2, max_requests=2)
    assert a.requests.try_inc() and b.requests.try_inc()
    assert not a.requests.try_inc() and not b.requests.try_inc()
    assert a.requests.count == 2  # a refused try counts nothing
    b.requests.dec()
    assert a.requests.try_inc() and a.requests.count == 2


def test_try_inc_of_a_zero_limit_counts_nothing_and_flags_nothing():
    main, tables, (a,) = main_and_workers(1, max_requests=0)
    assert not a.requests.try_inc() and a.requests.count == 0
    tables.refresh_gauges()
    assert main.value(CB + "default.rq_open") == 0  # never incremented: not open yet


def test_priorities_and_resources_count_apart():
    table = CounterTable.anonymous(rows=ROWS, workers=1)
    store = Store()
    scope = store.scope(SCOPE)
    default = ResourceManager(scope, counters=SharedSlots(table, 0), max_connections=1)
    high = ResourceManager(
        scope, ResourcePriority.HIGH, counters=SharedSlots(table, 0), max_connections=1
    )
    default.connections.inc()
    assert not default.can_create_connection()
    assert high.can_create_connection() and default.can_queue() and default.can_retry()


def test_shared_managers_set_no_gauges_in_the_worker():
    _, (a,), store = workers(1, max_requests=1, track_remaining=True)
    a.requests.inc()
    assert store.get(CB + "default.rq_open") is None
    assert store.flush().gauges == {}


def test_retry_budget_counts_the_whole_instance():
    budget = RetryBudget(budget_percent=20.0, min_retry_concurrency=2)
    _, (a, b), _ = workers(2, retry_budget=budget)
    for _ in range(10):
        a.requests.inc()
        b.pending_requests.inc()
    assert a.retries.max == b.retries.max == 4  # 20% of 20 active + pending
    for _ in range(3):
        a.retries.inc()
    assert b.can_retry()
    b.retries.inc()
    assert not a.can_retry() and not b.can_retry()


# The main process: gauges and exited workers -----------------------------------------------


def cluster_breakers(**threshold) -> circuit_breaker_pb2.CircuitBreakers:
    cb = circuit_breaker_pb2.CircuitBreakers()
    t = cb.thresholds.add()
    for name, value in threshold.items():
        if name == "track_remaining":
            t.track_remaining = value
        elif name == "retry_budget":
            t.retry_budget.min_retry_concurrency.value = value
        else:
            getattr(t, name).value = value
    return cb


def main_and_workers(n: int, **threshold):
    main = Store()
    tables = CircuitBreakerTables(n)
    tables.add_cluster("backend", cluster_breakers(**threshold), main.scope(SCOPE))
    managers = [
        ResourceManager.from_circuit_breakers(
            cluster_breakers(**threshold),
            Store().scope(SCOPE),
            ResourcePriority.DEFAULT,
            counters=tables.slots("backend", i),
        )
        for i in range(n)
    ]
    return main, tables, managers


def test_open_and_remaining_gauges_read_as_one_envoy_process():
    main, tables, (a, b) = main_and_workers(2, max_requests=2, track_remaining=True)
    assert main.value(CB + "default.remaining_rq") == 2
    assert main.value(CB + "default.remaining_cx") == 1024
    a.requests.inc()
    b.requests.inc()
    tables.refresh_gauges()
    # Envoy shows 0/1, not the number of workers whose breaker is open.
    assert main.value(CB + "default.rq_open") == 1
    assert main.value(CB + "default.remaining_rq") == 0
    assert main.value(CB + "high.rq_open") == 0
    assert main.value(CB + "high.remaining_rq") is None  # track_remaining is per threshold
    b.requests.dec()
    tables.refresh_gauges()
    assert main.value(CB + "default.rq_open") == 0
    assert main.value(CB + "default.remaining_rq") == 1


def test_a_limit_of_zero_reads_open_only_once_something_was_counted():
    # Envoy sets the open gauge on a change only: max_retries 0 never retries, never opens.
    main, tables, (a,) = main_and_workers(1, max_retries=0, max_connections=0)
    tables.refresh_gauges()
    assert main.value(CB + "default.rq_retry_open") == 0
    assert main.value(CB + "default.cx_open") == 0
    a.connections.inc()  # a pool without connections opens one at the limit
    a.connections.dec()
    tables.refresh_gauges()
    assert main.value(CB + "default.cx_open") == 1
    assert main.value(CB + "default.rq_retry_open") == 0


def test_remaining_retries_reads_zero_once_the_budget_was_used():
    main, tables, (a,) = main_and_workers(1, track_remaining=True, retry_budget=5)
    assert main.value(CB + "default.remaining_retries") == 3  # max_retries, until then
    assert a.can_retry()
    tables.refresh_gauges()
    assert main.value(CB + "default.remaining_retries") == 0


def test_an_exited_workers_counts_are_forgotten():
    main, tables, (a, b) = main_and_workers(2, max_connections=3, track_remaining=True)
    a.connections.inc()
    b.connections.inc()
    b.connections.inc()
    tables.refresh_gauges()
    assert main.value(CB + "default.cx_open") == 1
    tables.forget_worker(1)
    assert main.value(CB + "default.cx_open") == 0
    assert main.value(CB + "default.remaining_cx") == 2
    assert a.connections.count == 1


def test_an_unknown_cluster_has_no_slots():
    assert CircuitBreakerTables(1).slots("other", 0) is None
