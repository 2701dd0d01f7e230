"""Circuit breakers: Envoy's ``ResourceManagerImpl``, one per cluster and routing priority.

A cluster has one ``ResourceManager`` per priority (``default``, ``high``); every connection
pool of that cluster and priority counts against it: open connections, queued (pending)
requests, active requests, active retries, connection pools. A limit is "open" (tripped) when
its count reaches its max; the pools then fail the stream with ``OVERFLOW`` and count
``upstream_rq_pending_overflow`` / ``upstream_cx_overflow`` (see ``conn_pool/base.py``).

Stats, under the cluster's scope (Envoy's names): ``circuit_breakers.<priority>.cx_open``,
``cx_pool_open``, ``rq_pending_open``, ``rq_open``, ``rq_retry_open`` (0 or 1), and with
``track_remaining`` the ``remaining_cx``, ``remaining_pending``, ``remaining_rq``,
``remaining_retries``, ``remaining_cx_pools`` gauges.

Cross-worker semantics (not settled yet, a later issue): Envoy's thresholds are shared by all
worker threads of the process. Here each worker process has its own ``ResourceManager``, so a
threshold is enforced per worker: with N workers the cluster can hold up to N times
``max_connections`` connections. The gauges are per worker too, and the main process sums the
workers' gauges (Accumulate), so ``cx_open`` reads as the number of workers whose breaker is
open, not 0/1. Splitting the thresholds between workers, or counting in shared memory, must be
decided and written down in docs/ before the router relies on exact cluster-wide limits.
"""

from __future__ import annotations

import enum

from envoy.config.cluster.v3 import circuit_breaker_pb2

from legatus.config.errors import ConfigError
from legatus.stats.store import Gauge, Scope, StatSet, gauge

UNLIMITED = (1 << 64) - 1  # Envoy's max_connection_pools default (uint64 max)
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_MAX_PENDING_REQUESTS = 1024
DEFAULT_MAX_REQUESTS = 1024
DEFAULT_MAX_RETRIES = 3

Thresholds = circuit_breaker_pb2.CircuitBreakers.Thresholds


class ResourcePriority(enum.IntEnum):
    """Envoy's ``RoutingPriority`` (a route's ``priority``), naming the stat scope."""

    DEFAULT = 0
    HIGH = 1

    @property
    def stat_name(self) -> str:
        return "default" if self is ResourcePriority.DEFAULT else "high"


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


class ResourceLimit:
    """One counted resource and its max (Envoy's ``ManagedResourceImpl``)."""

    __slots__ = ("_open", "_remaining", "count", "max")

    def __init__(self, max_: int, open_gauge: Gauge, remaining: Gauge | None) -> None:
        self.max = max_
        self.count = 0
        self._open = open_gauge
        self._remaining = remaining
        if remaining is not None:
            remaining.set(max_)

    def can_create(self) -> bool:
        return self.count < self.max

    def inc(self) -> None:
        self.count += 1
        self._update()

    def dec(self) -> None:
        self.count -= 1
        self._update()

    def _update(self) -> None:
        count, max_ = self.count, self.max
        self._open.set(0 if count < max_ else 1)
        if self._remaining is not None:
            self._remaining.set(max_ - count if max_ > count else 0)


class ResourceManager:
    """The circuit breakers of one cluster at one priority, in this worker (see module doc)."""

    __slots__ = ("connection_pools", "connections", "pending_requests", "priority", "requests",
                 "retries")  # fmt: skip

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
    ) -> None:
        prefix = scope.scope(f"circuit_breakers.{priority.stat_name}.")
        cb = CircuitBreakerStats(prefix)
        rem = RemainingStats(prefix) if track_remaining else None
        self.priority = priority
        self.connections = ResourceLimit(
            max_connections, cb.cx_open, rem.remaining_cx if rem else None
        )
        self.pending_requests = ResourceLimit(
            max_pending_requests, cb.rq_pending_open, rem.remaining_pending if rem else None
        )
        self.requests = ResourceLimit(max_requests, cb.rq_open, rem.remaining_rq if rem else None)
        self.retries = ResourceLimit(
            max_retries, cb.rq_retry_open, rem.remaining_retries if rem else None
        )
        self.connection_pools = ResourceLimit(
            max_connection_pools, cb.cx_pool_open, rem.remaining_cx_pools if rem else None
        )

    def can_create_connection(self) -> bool:
        return self.connections.count < self.connections.max

    def can_queue(self) -> bool:
        """Whether one more stream may wait for a connection (max_pending_requests)."""
        return self.pending_requests.count < self.pending_requests.max

    def can_send_request(self) -> bool:
        return self.requests.count < self.requests.max

    def can_retry(self) -> bool:
        return self.retries.count < self.retries.max

    @classmethod
    def from_circuit_breakers(
        cls,
        circuit_breakers: circuit_breaker_pb2.CircuitBreakers | None,
        scope: Scope,
        priority: ResourcePriority,
        path: str = "circuit_breakers",
    ) -> ResourceManager:
        """From a cluster's ``circuit_breakers``: the first threshold of ``priority`` (as Envoy's
        ``find_if``), Envoy's defaults for what it leaves out."""
        if circuit_breakers is None:
            return cls(scope, priority)
        if circuit_breakers.per_host_thresholds:
            raise ConfigError(
                f"{path}.per_host_thresholds", "per-host thresholds are not supported yet"
            )
        found = [
            (i, t) for i, t in enumerate(circuit_breakers.thresholds) if t.priority == priority
        ]
        if not found:
            return cls(scope, priority)
        index, threshold = found[0]
        if threshold.HasField("retry_budget"):
            raise ConfigError(
                f"{path}.thresholds[{index}].retry_budget", "retry budgets are not supported yet"
            )

        def value(name: str, default: int) -> int:
            return getattr(threshold, name).value if threshold.HasField(name) else default

        return cls(
            scope,
            priority,
            max_connections=value("max_connections", DEFAULT_MAX_CONNECTIONS),
            max_pending_requests=value("max_pending_requests", DEFAULT_MAX_PENDING_REQUESTS),
            max_requests=value("max_requests", DEFAULT_MAX_REQUESTS),
            max_retries=value("max_retries", DEFAULT_MAX_RETRIES),
            max_connection_pools=value("max_connection_pools", UNLIMITED),
            track_remaining=threshold.track_remaining,
        )
