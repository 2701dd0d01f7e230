"""Circuit breakers: Envoy's ``ResourceManagerImpl``, one per cluster and routing priority.

A cluster has one ``ResourceManager`` per priority (``default``, ``high``); every connection
pool of that cluster and priority counts against it: open connections, queued (pending)
requests, active requests, active retries, connection pools. A limit is "open" (tripped) when
its count reaches its max; the pools then fail the stream with ``OVERFLOW`` and count
``upstream_rq_pending_overflow`` / ``upstream_cx_overflow`` (see ``conn_pool/base.py``).
A ``retry_budget`` replaces ``max_retries`` with a share of the active and pending requests.

Counting across workers. Envoy's worker threads share one atomic count per resource; here a
count is one row of a ``CounterTable`` (``upstream/shared_counters.py``) the main process
maps before it forks the workers: each worker writes only its own slot, a check sums the
row. So a limit holds for the whole instance, and exactly for one worker; with several, at
most (workers - 1) more can be admitted at the instant they decide together (each worker has
at most one decision between its read and its write). docs/circuit-breakers.md has the
details. Without a table (``counters=None``: tests, tools) the manager counts in this process.

Stats, under the cluster's scope (Envoy's names): ``circuit_breakers.<priority>.cx_open``,
``cx_pool_open``, ``rq_pending_open``, ``rq_open``, ``rq_retry_open`` (0 or 1), and with
``track_remaining`` the ``remaining_cx``, ``remaining_pending``, ``remaining_rq``,
``remaining_retries``, ``remaining_cx_pools`` gauges. With a shared table they belong to the
main process, which computes them from the instance-wide counts when stats are read
(``CircuitBreakerGauges``), so they read as one Envoy process's; a worker sets none. Without
one, the manager sets them on every change, as Envoy does.
"""

from __future__ import annotations

import array
import enum
import os
from dataclasses import dataclass

from envoy.config.cluster.v3 import circuit_breaker_pb2

from legatus.config.errors import ConfigError
from legatus.stats.store import Gauge, Scope, StatSet, gauge
from legatus.upstream.shared_counters import CounterTable

UNLIMITED = (1 << 64) - 1  # Envoy's max_connection_pools default (uint64 max)
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_MAX_PENDING_REQUESTS = 1024
DEFAULT_MAX_REQUESTS = 1024
DEFAULT_MAX_RETRIES = 3
DEFAULT_BUDGET_PERCENT = 20.0
DEFAULT_MIN_RETRY_CONCURRENCY = 3

ThresholdsProto = circuit_breaker_pb2.CircuitBreakers.Thresholds


class ResourcePriority(enum.IntEnum):
    """Envoy's ``RoutingPriority`` (a route's ``priority``), naming the stat scope."""

    DEFAULT = 0
    HIGH = 1

    @property
    def stat_name(self) -> str:
        return "default" if self is ResourcePriority.DEFAULT else "high"


class Resource(enum.IntEnum):
    """What a circuit breaker counts; a row of the shared table per resource and priority."""

    CONNECTIONS = 0
    PENDING_REQUESTS = 1
    REQUESTS = 2
    RETRIES = 3
    CONNECTION_POOLS = 4


# Per priority: the five counts, then five "ever incremented" flags (for a max of 0: Envoy's
# open gauge is only set by a change, so it reads 0 until the first one), then "the retry
# budget was consulted" (Envoy then shows remaining_retries as 0).
_TOUCHED = len(Resource)
_BUDGET_USED = 2 * len(Resource)
ROWS_PER_PRIORITY = 2 * len(Resource) + 1
ROWS = ROWS_PER_PRIORITY * len(ResourcePriority)


def row_of(priority: ResourcePriority, resource: Resource) -> int:
    return priority * ROWS_PER_PRIORITY + resource


@dataclass(frozen=True, slots=True)
class SharedSlots:
    """Where a worker counts: the cluster's table and the worker's index in it."""

    table: CounterTable
    worker: int


class CircuitBreakerStats(StatSet):
    cx_open = gauge()
    cx_pool_open = gauge()
    rq_pending_open = gauge()
    rq_open = gauge()
    rq_retry_open = gauge()


class RemainingStats(StatSet):
    """Only with ``track_remaining`` (Envoy uses null gauges otherwise)."""

    remaining_cx = gauge()
    remaining_pending = gauge()
    remaining_rq = gauge()
    remaining_retries = gauge()
    remaining_cx_pools = gauge()


_OPEN_GAUGES = ("cx_open", "rq_pending_open", "rq_open", "rq_retry_open", "cx_pool_open")
_REMAINING_GAUGES = (
    "remaining_cx",
    "remaining_pending",
    "remaining_rq",
    "remaining_retries",
    "remaining_cx_pools",
)


# Configuration ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryBudget:
    """``Thresholds.retry_budget``: concurrent retries as a share of the active requests."""

    budget_percent: float = DEFAULT_BUDGET_PERCENT
    min_retry_concurrency: int = DEFAULT_MIN_RETRY_CONCURRENCY

    def max_retries(self, active: int) -> int:
        """The retry limit for ``active`` requests (active + pending), truncated as Envoy's."""
        return max(int(self.budget_percent / 100.0 * active), self.min_retry_concurrency)


@dataclass(frozen=True, slots=True, kw_only=True)
class Thresholds:
    """One priority's limits, compiled from ``CircuitBreakers.Thresholds``."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_pending_requests: int = DEFAULT_MAX_PENDING_REQUESTS
    max_requests: int = DEFAULT_MAX_REQUESTS
    max_retries: int = DEFAULT_MAX_RETRIES
    max_connection_pools: int = UNLIMITED
    track_remaining: bool = False
    retry_budget: RetryBudget | None = None

    def max_of(self, resource: Resource) -> int:
        return (
            self.max_connections,
            self.max_pending_requests,
            self.max_requests,
            self.max_retries,
            self.max_connection_pools,
        )[resource]

    @classmethod
    def from_circuit_breakers(
        cls,
        circuit_breakers: circuit_breaker_pb2.CircuitBreakers | None,
        priority: ResourcePriority,
        path: str = "circuit_breakers",
    ) -> Thresholds:
        """The first threshold of ``priority`` (as Envoy's ``find_if``), Envoy's defaults for
        what it leaves out."""
        if circuit_breakers is None:
            return cls()
        if circuit_breakers.per_host_thresholds:
            raise ConfigError(
                f"{path}.per_host_thresholds", "per-host thresholds are not supported yet"
            )
        found = [
            (i, t) for i, t in enumerate(circuit_breakers.thresholds) if t.priority == priority
        ]
        if not found:
            return cls()
        index, threshold = found[0]
        if threshold.HasField("max_connection_pools"):
            # Counted (cx_pool_open, remaining_cx_pools), but a request finding no room for
            # a pool is not refused yet.
            raise ConfigError(
                f"{path}.thresholds[{index}].max_connection_pools",
                "max_connection_pools is not supported yet",
            )

        def value(name: str, default: int) -> int:
            return getattr(threshold, name).value if threshold.HasField(name) else default

        return cls(
            max_connections=value("max_connections", DEFAULT_MAX_CONNECTIONS),
            max_pending_requests=value("max_pending_requests", DEFAULT_MAX_PENDING_REQUESTS),
            max_requests=value("max_requests", DEFAULT_MAX_REQUESTS),
            max_retries=value("max_retries", DEFAULT_MAX_RETRIES),
            max_connection_pools=value("max_connection_pools", UNLIMITED),
            track_remaining=threshold.track_remaining,
            retry_budget=_retry_budget(threshold),
        )


def _retry_budget(threshold: ThresholdsProto) -> RetryBudget | None:
    """Envoy uses the budget only when one of its two fields is set (an empty
    ``retry_budget`` leaves ``max_retries`` in charge); the other takes its default."""
    if not threshold.HasField("retry_budget"):
        return None
    budget = threshold.retry_budget
    has_percent = budget.HasField("budget_percent")
    has_min = budget.HasField("min_retry_concurrency")
    if not has_percent and not has_min:
        return None
    return RetryBudget(
        budget_percent=budget.budget_percent.value if has_percent else DEFAULT_BUDGET_PERCENT,
        min_retry_concurrency=(
            budget.min_retry_concurrency.value if has_min else DEFAULT_MIN_RETRY_CONCURRENCY
        ),
    )


# Limits: the hot path ---------------------------------------------------------------------


class ResourceLimit:
    """One counted resource and its max (Envoy's ``ManagedResourceImpl``).

    ``_row`` holds every worker's count of the resource, ``_own`` is this worker's slot in it
    (a one-slot view): a check sums the row, a change writes the own slot. No gauge here: the
    main process computes them (``CircuitBreakerGauges``)."""

    __slots__ = ("_own", "_row", "max")

    def __init__(self, max_: int, row, own) -> None:
        self.max = max_
        self._row = row
        self._own = own

    @property
    def count(self) -> int:
        return sum(self._row)

    def can_create(self) -> bool:
        return sum(self._row) < self.max

    def inc(self) -> None:
        self._own[0] += 1

    def dec(self) -> None:
        self._own[0] -= 1

    def try_inc(self) -> bool:
        """``inc()`` if ``can_create()`` (True), in one call: what a pool does per stream."""
        if sum(self._row) >= self.max:
            return False
        self._own[0] += 1
        return True


class _FlaggedLimit(ResourceLimit):
    """A limit of 0 also records that it was ever incremented (see ``_TOUCHED``)."""

    __slots__ = ("_touched",)

    def __init__(self, max_: int, row, own, touched) -> None:
        super().__init__(max_, row, own)
        self._touched = touched

    def inc(self) -> None:
        self._own[0] += 1
        self._touched[0] = 1

    def try_inc(self) -> bool:
        if sum(self._row) >= self.max:
            return False
        self.inc()
        return True


class LocalResourceLimit(ResourceLimit):
    """A limit counted in this process only, setting its gauges on every change as Envoy's
    ``ManagedResourceImpl`` does."""

    __slots__ = ("_open", "_remaining")

    def __init__(self, max_: int, open_gauge: Gauge, remaining: Gauge | None) -> None:
        slot = array.array("q", [0])
        super().__init__(max_, slot, slot)
        self._open = open_gauge
        self._remaining = remaining
        if remaining is not None:
            remaining.set(max_)

    def inc(self) -> None:
        self._own[0] += 1
        self._update()

    def dec(self) -> None:
        self._own[0] -= 1
        self._update()

    def try_inc(self) -> bool:
        if sum(self._row) >= self.max:
            return False
        self.inc()
        return True

    def _update(self) -> None:
        count, max_ = self._own[0], self.max
        self._open.set(0 if count < max_ else 1)
        if self._remaining is not None:
            self._remaining.set(max_ - count if max_ > count else 0)


class RetryBudgetLimit:
    """The retry limit under a ``retry_budget`` (Envoy's ``RetryBudgetImpl``): at most
    ``budget_percent`` of the active plus pending requests, never below
    ``min_retry_concurrency``. The retries still count against ``max_retries`` for the
    ``rq_retry_open`` gauge, and ``remaining_retries`` reads 0 once the budget was used, as in
    Envoy."""

    __slots__ = ("_budget", "_inner", "_pending", "_requests", "_used")

    def __init__(
        self,
        budget: RetryBudget,
        inner: ResourceLimit,
        requests: ResourceLimit,
        pending: ResourceLimit,
        used,
    ) -> None:
        self._budget = budget
        self._inner = inner  # counts the retries (and sets the gauges of max_retries)
        self._requests = requests
        self._pending = pending
        self._used = used  # a one-slot flag, or a callable for a local manager

    @property
    def count(self) -> int:
        return self._inner.count

    @property
    def max(self) -> int:
        self._mark_used()
        return self._budget.max_retries(self._requests.count + self._pending.count)

    def can_create(self) -> bool:
        return self._inner.count < self.max

    def inc(self) -> None:
        self._inner.inc()
        self._mark_used()

    def dec(self) -> None:
        self._inner.dec()
        self._mark_used()

    def _mark_used(self) -> None:
        used = self._used
        if callable(used):
            used()
        else:
            used[0] = 1


class ResourceManager:
    """The circuit breakers of one cluster at one priority (see module doc)."""

    __slots__ = ("connection_pools", "connections", "pending_requests", "priority", "requests",
                 "retries", "thresholds")  # fmt: skip

    def __init__(
        self,
        scope: Scope,
        priority: ResourcePriority = ResourcePriority.DEFAULT,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_pending_requests: int = DEFAULT_MAX_PENDING_REQUESTS,
        max_requests: int = DEFAULT_MAX_REQUESTS,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_connection_pools: int = UNLIMITED,
        track_remaining: bool = False,
        retry_budget: RetryBudget | None = None,
        counters: SharedSlots | None = None,
    ) -> None:
        self.priority = priority
        self.thresholds = Thresholds(
            max_connections=max_connections,
            max_pending_requests=max_pending_requests,
            max_requests=max_requests,
            max_retries=max_retries,
            max_connection_pools=max_connection_pools,
            track_remaining=track_remaining,
            retry_budget=retry_budget,
        )
        if counters is None:
            limits, used = self._local_limits(scope)
        else:
            limits, used = self._shared_limits(counters)
        (self.connections, self.pending_requests, self.requests, retries,
         self.connection_pools) = limits  # fmt: skip
        if retry_budget is None:
            self.retries = retries
        else:
            self.retries = RetryBudgetLimit(
                retry_budget, retries, self.requests, self.pending_requests, used
            )

    def _local_limits(self, scope: Scope):
        thresholds = self.thresholds
        prefix = scope.scope(f"circuit_breakers.{self.priority.stat_name}.")
        cb = CircuitBreakerStats(prefix)
        rem = RemainingStats(prefix) if thresholds.track_remaining else None
        limits = tuple(
            LocalResourceLimit(
                thresholds.max_of(resource),
                getattr(cb, _OPEN_GAUGES[resource]),
                getattr(rem, _REMAINING_GAUGES[resource]) if rem is not None else None,
            )
            for resource in Resource
        )
        remaining_retries = rem.remaining_retries if rem is not None else None

        def used() -> None:  # Envoy's clearRemainingGauge
            if remaining_retries is not None:
                remaining_retries.set(0)

        return limits, used

    def _shared_limits(self, counters: SharedSlots):
        table, worker = counters.table, counters.worker
        base = self.priority * ROWS_PER_PRIORITY
        limits = []
        for resource in Resource:
            row = base + resource
            max_ = self.thresholds.max_of(resource)
            view, own = table.row(row), table.slot(row, worker)
            flags_budget = resource is Resource.RETRIES and self.thresholds.retry_budget
            if max_ == 0 or flags_budget:
                touched = table.slot(base + _TOUCHED + resource, worker)
                limits.append(_FlaggedLimit(max_, view, own, touched))
            else:
                limits.append(ResourceLimit(max_, view, own))
        used = table.slot(base + _BUDGET_USED, worker)
        return tuple(limits), used

    def can_create_connection(self) -> bool:
        return self.connections.can_create()

    def can_queue(self) -> bool:
        """Whether one more stream may wait for a connection (max_pending_requests)."""
        return self.pending_requests.can_create()

    def can_send_request(self) -> bool:
        return self.requests.can_create()

    def can_retry(self) -> bool:
        return self.retries.can_create()

    @classmethod
    def from_circuit_breakers(
        cls,
        circuit_breakers: circuit_breaker_pb2.CircuitBreakers | None,
        scope: Scope,
        priority: ResourcePriority,
        path: str = "circuit_breakers",
        *,
        counters: SharedSlots | None = None,
    ) -> ResourceManager:
        """From a cluster's ``circuit_breakers`` (see ``Thresholds.from_circuit_breakers``)."""
        t = Thresholds.from_circuit_breakers(circuit_breakers, priority, path)
        return cls(
            scope,
            priority,
            max_connections=t.max_connections,
            max_pending_requests=t.max_pending_requests,
            max_requests=t.max_requests,
            max_retries=t.max_retries,
            max_connection_pools=t.max_connection_pools,
            track_remaining=t.track_remaining,
            retry_budget=t.retry_budget,
            counters=counters,
        )


# The main process: tables and gauges --------------------------------------------------------


class CircuitBreakerGauges:
    """One cluster's ``circuit_breakers.*`` gauges in the main process, computed from the
    instance-wide counts of its table (what one Envoy process would show)."""

    __slots__ = ("_priorities", "table")

    def __init__(
        self,
        scope: Scope,
        table: CounterTable,
        thresholds: dict[ResourcePriority, Thresholds],
    ) -> None:
        self.table = table
        self._priorities = []
        for priority, t in thresholds.items():
            prefix = scope.scope(f"circuit_breakers.{priority.stat_name}.")
            cb = CircuitBreakerStats(prefix)
            rem = RemainingStats(prefix) if t.track_remaining else None
            self._priorities.append((priority, t, cb, rem))
        self.refresh()

    def refresh(self) -> None:
        table = self.table
        for priority, t, cb, rem in self._priorities:
            base = priority * ROWS_PER_PRIORITY
            budget_used = t.retry_budget is not None and table.total(base + _BUDGET_USED) > 0
            for resource in Resource:
                count = table.total(base + resource)
                max_ = t.max_of(resource)
                touched = count > 0 or table.total(base + _TOUCHED + resource) > 0
                getattr(cb, _OPEN_GAUGES[resource]).set(1 if count >= max_ and touched else 0)
                if rem is not None:
                    remaining = max_ - count if max_ > count else 0
                    if resource is Resource.RETRIES and budget_used:
                        remaining = 0
                    getattr(rem, _REMAINING_GAUGES[resource]).set(remaining)


class CircuitBreakerTables:
    """Every cluster's shared counts, made by the main process before it forks the workers.

    The main process keeps it: ``slots(cluster, worker)`` is what a worker counts in (the
    worker inherits the mappings with the fork), ``refresh_gauges()`` runs before stats are
    shown, ``forget_worker()`` zeroes an exited worker's slots before its replacement starts.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._clusters: dict[str, CircuitBreakerGauges] = {}
        self._attached: dict[str, CounterTable] = {}  # a worker's tables made after its fork
        self._named = 0

    def add_cluster(self, name: str, circuit_breakers, scope: Scope, *, named: bool = False):
        """Make ``name``'s table and gauges; ``scope`` is its ``cluster.<stat_name>.`` scope.
        ``named``: the workers already run (a cluster from CDS), so the table is made under
        a name they attach to (``attach``); returns that name (None for an anonymous one).
        A cluster that is made again (changed by CDS) gets a new table, as Envoy's new
        cluster gets new resource managers; its old table is unlinked."""
        thresholds = {
            p: Thresholds.from_circuit_breakers(circuit_breakers, p) for p in ResourcePriority
        }
        if named:
            self._named += 1
            table = CounterTable.create(
                f"legatus.{os.getpid()}.cb.{self._named}", rows=ROWS, workers=self.workers
            )
        else:
            table = CounterTable.anonymous(rows=ROWS, workers=self.workers)
        old = self._clusters.get(name)
        if old is not None:
            old.table.unlink()
        self._clusters[name] = CircuitBreakerGauges(scope, table, thresholds)
        return table.name

    def remove_cluster(self, name: str) -> None:
        gauges = self._clusters.pop(name, None)
        if gauges is not None:
            gauges.table.unlink()

    def attach(self, name: str, table_name: str) -> None:
        """In a worker: map the table the main process made for ``name`` after the fork."""
        self._attached[name] = CounterTable.attach(table_name)

    def slots(self, cluster: str, worker: int) -> SharedSlots | None:
        table = self._attached.get(cluster)
        if table is None:
            gauges = self._clusters.get(cluster)
            if gauges is None:
                return None
            table = gauges.table
        return SharedSlots(table, worker)

    def refresh_gauges(self) -> None:
        for gauges in self._clusters.values():
            gauges.refresh()

    def forget_worker(self, worker: int) -> None:
        """An exited worker's counts no longer hold anything (its connections and requests
        died with it); its flags stay, as Envoy's gauges keep what a change set them to."""
        counts = [p * ROWS_PER_PRIORITY + r for p in ResourcePriority for r in Resource]
        for gauges in self._clusters.values():
            gauges.table.zero_worker(worker, counts)
        self.refresh_gauges()

    def close(self) -> None:
        """Unlink any named table (anonymous ones vanish with the last process mapping them)."""
        for gauges in self._clusters.values():
            gauges.table.unlink()
