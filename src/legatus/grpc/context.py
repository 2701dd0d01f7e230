"""Per-cluster gRPC stats under Envoy's names (Envoy's ``Grpc::ContextImpl``).

The grpc_stats and grpc_web filters count each gRPC call in the scope of the cluster its route
picked::

    cluster.<cluster>.<protocol>.<service>.<method>.<suffix>
    cluster.<cluster>.<protocol>.<suffix>          (calls counted without their method)

``protocol`` is ``grpc`` or ``grpc-web``; ``suffix`` is ``success``, ``failure`` and ``total``
(charged once per call, from its ``grpc-status``), the ``grpc-status`` value itself (``0``,
``14``..., whatever the upstream sent), ``request_message_count``, ``response_message_count``,
and the ``upstream_rq_time`` histogram.

These names are dynamic: they depend on the request's ``:path``. A stat is made in the store the
first time it is charged (as Envoy makes it), then found again through a small per-method
cache, so a call costs a dict lookup and no string building once its method was seen. The
cache is keyed by the cluster's scope object (a cluster that is removed and added again gets a
new one, so stats dropped with the old cluster are not charged) and is emptied when it grows
past ``_CACHE_LIMIT`` methods.
"""

from __future__ import annotations

from legatus.stats.store import Counter, Histogram, Scope

GRPC = "grpc"
GRPC_WEB = "grpc-web"
_CACHE_LIMIT = 4096


class MethodStats:
    """The stats of one (cluster, protocol, service, method), each made when first charged."""

    __slots__ = ("_counters", "_histogram", "_scope")

    def __init__(self, scope: Scope) -> None:
        self._scope = scope
        self._counters: dict[str, Counter] = {}
        self._histogram: Histogram | None = None

    def counter(self, suffix: str) -> Counter:
        counter = self._counters.get(suffix)
        if counter is None:
            counter = self._counters[suffix] = self._scope.counter(suffix)
        return counter

    def charge_status(self, status: str | None) -> None:
        """Envoy's chargeStat(grpc-status header): nothing without one."""
        if status is None:
            return
        self.counter(status).inc()
        self.charge_success(status == "0")

    def charge_success(self, success: bool) -> None:
        self.counter("success" if success else "failure").inc()
        self.counter("total").inc()

    def charge_upstream_time(self, ms: float) -> None:
        histogram = self._histogram
        if histogram is None:
            histogram = self._histogram = self._scope.histogram("upstream_rq_time")
        histogram.record(ms)


class GrpcStatsContext:
    """Finds (and makes) the ``MethodStats`` of a call."""

    __slots__ = ("_methods",)

    def __init__(self) -> None:
        self._methods: dict[tuple, MethodStats] = {}

    def method_stats(
        self, cluster_scope: Scope, protocol: str, names: tuple[str, str] | None
    ) -> MethodStats:
        """``names``: (service, method), or None for the stats without them."""
        key = (cluster_scope, protocol, names)
        stats = self._methods.get(key)
        if stats is None:
            if len(self._methods) >= _CACHE_LIMIT:
                self._methods.clear()
            prefix = protocol if names is None else f"{protocol}.{names[0]}.{names[1]}"
            stats = self._methods[key] = MethodStats(cluster_scope.scope(prefix))
        return stats
