"""What a request is counted under beyond its cluster: its virtual cluster and its route.

Envoy charges a routed request's stats to its cluster and also, when they exist, to its
virtual host's virtual cluster (``vhost.<vh>.vcluster.<vc>.``, virtual_cluster.py) and to its
route's ``stat_prefix`` (``vhost.<vh>.route.<stat_prefix>.``, Envoy's RouteStatsContext). Both
have the same stats: the six counters of ``VirtualClusterStats``, made with the configuration,
and the response code stats charged with the cluster's.

Everything is decided when the route is compiled: a route with neither has no
``RouteAction.request_stats`` and its requests pay nothing (the router's plain path). For one
with either, ``RouteRequestStats`` holds a prebuilt ``RequestStats`` per virtual cluster (with
the route's stats folded in), so a request only runs the virtual cluster matchers.

The six counters live as long as a route configuration in use has them (Envoy's scopes go
with the configuration that made them): ``RouteStatOwners`` counts, per store, the route
configurations served that have each ``vhost.*`` scope, and drops the scope's six counters
when the last goes (an RDS update without it; a listener removed or replaced by LDS, once
it has drained). The response code stats and histograms stay, as in Envoy. A worker reports
the scopes it dropped with its stats flush, and the main process drops them too.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from dataclasses import dataclass

from legatus.router.upstream_request import UpstreamRequest
from legatus.router.virtual_cluster import OTHER, VirtualClusters, VirtualClusterStats
from legatus.stats.store import Store

__all__ = [
    "NO_REQUEST_STATS",
    "CountedUpstreamRequest",
    "RequestStats",
    "RouteRequestStats",
    "RouteStatOwners",
    "RouteStats",
    "compile_request_stats",
    "drop_route_stats",
    "route_stat_prefixes",
]


class RouteStats(VirtualClusterStats):
    """``vhost.<vh>.route.<stat_prefix>.*``: Envoy's ALL_ROUTE_STATS, the same six counters as a
    virtual cluster's."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestStats:
    """One request's stats beyond its cluster's (Envoy's ResponseStatInfo names them).

    ``scopes``: where its response code stats also go (``ResponseCodeStats.charge``);
    ``stats``: whose upstream_rq_total / _timeout / _retry* counters it moves;
    ``virtual_cluster_name``: its %VIRTUAL_CLUSTER_NAME% (None: not shown).
    """

    virtual_cluster_name: str | None = None
    scopes: tuple[str, ...] = ()
    stats: tuple[VirtualClusterStats, ...] = ()


NO_REQUEST_STATS = RequestStats()


class RouteStatOwners:
    """How many route configurations in use have each ``vhost.*`` stat scope, per store.

    The route configuration providers (router/rds.py) ``hold`` the scopes of the
    configuration they serve and ``release`` them when they serve another or their listener
    is gone; the last release of a scope removes its VirtualClusterStats counters from the
    store and lists the scope in ``removed`` (a worker's report: ``take_removed``).
    """

    __slots__ = ("_counts", "_store", "removed")

    def __init__(self, store: Store) -> None:
        self._store = store
        self._counts: dict[str, int] = {}
        self.removed: list[str] = []

    @staticmethod
    def of(store: Store) -> RouteStatOwners:
        """The store's owners (one per store)."""
        owners = _OWNERS.get(store)
        if owners is None:
            owners = _OWNERS[store] = RouteStatOwners(store)
        return owners

    def hold(self, prefixes: Iterable[str]) -> None:
        counts = self._counts
        for prefix in prefixes:
            counts[prefix] = counts.get(prefix, 0) + 1

    def release(self, prefixes: Iterable[str]) -> None:
        counts = self._counts
        for prefix in prefixes:
            left = counts[prefix] - 1
            if left:
                counts[prefix] = left
                continue
            del counts[prefix]
            _remove_counters(self._store, prefix)
            self.removed.append(prefix)

    def holds(self, prefix: str) -> bool:
        return prefix in self._counts

    def take_removed(self) -> tuple[str, ...]:
        """The scopes removed since the last call."""
        removed = tuple(self.removed)
        self.removed.clear()
        return removed


def route_stat_prefixes(proto) -> frozenset[str]:
    """The ``vhost.*`` scopes a RouteConfiguration makes counters under: each virtual
    cluster's (and ``other``) of a virtual host that has some, each route ``stat_prefix``."""
    prefixes = set()
    for vh in proto.virtual_hosts:
        vhost = f"vhost.{vh.name}."
        if vh.virtual_clusters:
            prefixes.update(f"{vhost}vcluster.{vc.name}." for vc in vh.virtual_clusters)
            prefixes.add(f"{vhost}vcluster.{OTHER}.")
        prefixes.update(f"{vhost}route.{r.stat_prefix}." for r in vh.routes if r.stat_prefix)
    return frozenset(prefixes)


def drop_route_stats(store: Store, prefixes: Iterable[str]) -> None:
    """The main process's part: a worker removed these scopes' counters; so does ``store``,
    unless a route configuration of its own still has them."""
    owners = _OWNERS.get(store)
    for prefix in prefixes:
        if owners is None or not owners.holds(prefix):
            _remove_counters(store, prefix)


def _remove_counters(store: Store, prefix: str) -> None:
    for name in VirtualClusterStats.names():
        full = prefix + name
        store.remove_prefix(full, keep=full.__ne__)


_OWNERS: weakref.WeakKeyDictionary[Store, RouteStatOwners] = weakref.WeakKeyDictionary()


class RouteRequestStats:
    """A route's choice of RequestStats: by virtual cluster, else the route's alone."""

    __slots__ = ("_by_virtual_cluster", "_static", "_virtual_clusters")

    def __init__(
        self,
        virtual_clusters: VirtualClusters | None,
        route: tuple[str, RouteStats] | None,
    ) -> None:
        route_scopes = (route[0],) if route is not None else ()
        route_stats = (route[1],) if route is not None else ()
        self._virtual_clusters = virtual_clusters
        self._static = RequestStats(scopes=route_scopes, stats=route_stats)
        self._by_virtual_cluster = {
            vc: RequestStats(
                virtual_cluster_name=vc.name,
                scopes=(vc.prefix, *route_scopes),
                stats=(vc.stats, *route_stats),
            )
            for vc in virtual_clusters or ()
        }

    def select(self, headers) -> RequestStats:
        """The request's stats (Envoy's router picks its virtual cluster once the route has
        a cluster, before anything is charged)."""
        virtual_clusters = self._virtual_clusters
        if virtual_clusters is None:
            return self._static
        return self._by_virtual_cluster[virtual_clusters.match(headers)]


def compile_request_stats(
    stat_prefix: str, virtual_host: str, virtual_clusters: VirtualClusters | None, store: Store
) -> RouteRequestStats | None:
    """A route's request stats; None when it has no ``stat_prefix`` and its virtual host no
    virtual clusters. The route's stats are made here for any route with a ``stat_prefix``,
    as Envoy makes them (a direct response's stay at zero)."""
    route = None
    if stat_prefix:
        prefix = f"vhost.{virtual_host}.route.{stat_prefix}."
        route = (prefix, RouteStats(store.scope(prefix)))
    if route is None and virtual_clusters is None:
        return None
    return RouteRequestStats(virtual_clusters, route)


class CountedUpstreamRequest(UpstreamRequest):
    """A try of a request with RequestStats. It counts in their ``upstream_rq_total`` once its
    pool is ready, where Envoy's UpstreamRequest::onPoolReady counts it: a try that never got
    a connection is not counted (the cluster's own count is the pool's)."""

    def on_pool_ready(self, encoder, host) -> None:
        router = self.router
        if router.upstream is self or self in router.hedged:  # a try the router still wants
            for stats in router.request_stats.stats:
                stats.upstream_rq_total.inc()
        super().on_pool_ready(encoder, host)
