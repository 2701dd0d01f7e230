"""The clusters as one worker sees them: host snapshots, load balancers, pools, stats.

The main process sends each worker the cluster configs and, whenever they
change, the host sets; the worker swaps in a new host tuple and balancer
(connections already open keep their Host object). The balancer is rebuilt from the
cluster's LbConfig on every host or health change (``update_hosts``, ``refresh_health``);
``choose_host`` is what the router and the TCP proxy call per request. HTTP connection
pools are made per host on first use; a host that leaves the cluster has its pool drained and
deleted once idle, as Envoy does.
"""

from __future__ import annotations

import random
from dataclasses import replace

from legatus.http.codes import ResponseCodeStats
from legatus.stats.store import Store
from legatus.upstream.cluster import ClusterConfig, HostConfig
from legatus.upstream.host import Host, host_stats_prefix
from legatus.upstream.load_balancer import (
    EDS_HEALTH_FLAGS,
    LbStats,
    build_balancer,
    eds_health_flags,
    table_stats,
)
from legatus.upstream.stats import ClusterTrafficStats


class ThreadLocalCluster:
    __slots__ = ("_lb_stats", "_locality_weights", "_loop", "_pool_context", "_pools", "_rng",
                 "_store", "_table_stats", "code_stats", "config", "hashing", "hosts", "lb",
                 "lb_config", "resource_managers", "retry_code_stats", "scope",
                 "stats")  # fmt: skip

    def __init__(
        self,
        config: ClusterConfig,
        store: Store,
        rng: random.Random,
        loop=None,
        *,
        counters=None,
        lb_table_stats: bool = True,
    ) -> None:
        """``lb_table_stats``: whether this worker keeps the ring_hash_lb / maglev_lb gauges
        (one worker does: every worker builds the same tables)."""
        self.config = config
        self._store = store
        self._rng = rng
        self._loop = loop
        self.scope = store.scope(f"cluster.{config.stat_name}.")
        self.stats = ClusterTrafficStats(self.scope)
        self.code_stats = ResponseCodeStats(self.scope)
        # responses a retry replaced: cluster.<name>.retry.upstream_rq_<code>...
        self.retry_code_stats = ResponseCodeStats(self.scope.scope("retry."), categories=False)
        self.hosts: tuple[Host, ...] = ()
        lb = self.lb_config = config.lb
        # Whether the balancer hashes requests: the router then passes a HashContext.
        self.hashing = lb.hashing
        self._lb_stats = LbStats(self.scope)
        self._table_stats = table_stats(lb, self.scope) if lb_table_stats else None
        self._locality_weights = dict(lb.locality_weights)
        self.lb = self._build_lb(())
        self._pools: dict = {}
        self._pool_context = None
        from legatus.upstream.resource_manager import ResourceManager, ResourcePriority

        breakers = (
            config.proto.circuit_breakers if config.proto.HasField("circuit_breakers") else None
        )
        # counters: the cluster's slots in the instance-wide table (None: count in this process)
        self.resource_managers = tuple(
            ResourceManager.from_circuit_breakers(breakers, self.scope, priority, counters=counters)
            for priority in ResourcePriority
        )

    def http_conn_pool(self, host: Host):
        """The HTTP/1.1 pool to ``host`` on this worker (made on first use)."""
        pool = self._pools.get(host)
        if pool is None:
            from legatus.conn_pool.http1 import Http1ConnPool

            pool = self._pools[host] = Http1ConnPool(host, self._context())
            # Envoy counts each pool against max_connection_pools and deletes it once idle.
            self.resource_managers[0].connection_pools.inc()
            pool.add_idle_callback(lambda: self._on_pool_idle(host, pool))
        return pool

    def _on_pool_idle(self, host: Host, pool) -> None:
        if self._pools.get(host) is pool:  # (idle callbacks may repeat)
            del self._pools[host]
            self.resource_managers[0].connection_pools.dec()

    def _context(self):
        context = self._pool_context
        if context is None:
            from legatus.conn_pool import PoolContext
            from legatus.http.conn_manager_stats import Http1CodecStats

            config = self.config
            Http1CodecStats(self.scope.scope("http1."))  # Envoy: with the first HTTP/1 pool
            context = self._pool_context = PoolContext.for_cluster(
                self,
                self.scope,
                self._loop,
                resource_manager=self.resource_managers[0],
                max_requests_per_connection=config.max_requests_per_connection,
                idle_timeout=config.upstream_idle_timeout,
            )
        return context

    def drain_pools(self) -> None:
        """Close every pool's idle connections and let busy ones finish (cluster removed)."""
        from legatus.conn_pool import DrainBehavior

        for pool in list(self._pools.values()):  # (an idle pool leaves the dict as it drains)
            pool.drain(DrainBehavior.DRAIN_EXISTING_CONNECTIONS)

    def update_hosts(self, hosts: tuple[HostConfig, ...]) -> None:
        old = {h.config: h for h in self.hosts}
        new = tuple(
            old.get(h) or Host(h, self._store.scope(host_stats_prefix(self.config.stat_name, h)))
            for h in hosts
        )
        for host in new:
            if host.config.health_status and host.config not in old:
                host.health_flags |= eds_health_flags(host.config.health_status)
        gone = set(self.hosts) - set(new)
        self.hosts = new
        self.lb = self._build_lb(new, self.lb)
        for host in gone:
            pool = self._pools.pop(host, None)
            if pool is not None:
                from legatus.conn_pool import DrainBehavior

                self.resource_managers[0].connection_pools.dec()
                pool.drain(DrainBehavior.DRAIN_AND_DELETE)

    def set_lb_settings(self, settings: dict) -> None:
        """An EDS assignment's balancing settings (overprovisioning factor, weighted priority
        health, locality weights) over the cluster's own; the next host update applies them."""
        self.lb_config = replace(self.config.lb, **settings)
        self._locality_weights = dict(self.lb_config.locality_weights)

    def _build_lb(self, hosts: tuple[Host, ...], previous=None):
        return build_balancer(
            hosts,
            self.lb_config,
            self._rng,
            self._lb_stats,
            table_stats=self._table_stats,
            locality_weights=self._locality_weights,
            previous=previous,
        )

    def choose_host(self, context=None, attempt: int = 0) -> Host | None:
        """The host for a request, or None (no healthy upstream).

        ``context``: a ``legatus.router.hash_policy.HashContext`` for hashing balancers (see
        ``hashing``); ignored by the others. ``attempt``: 0 for a first pick, n for the n-th
        pick of the same request after a host was rejected (RING_HASH / MAGLEV then move off
        the host the hash points at, as Envoy does)."""
        return self.lb.choose(context, attempt)

    def refresh_health(self) -> None:
        """Rebuild the balancing after the hosts' ``health_flags`` changed.

        Call it after setting the flags (active health checking, outlier detection): the
        priority levels, panic and the balancer are recomputed. The EDS-style flags that come
        from the endpoints' ``health_status`` are kept whatever the caller wrote."""
        for host in self.hosts:
            status = host.config.health_status
            if status:
                host.health_flags = (host.health_flags & ~EDS_HEALTH_FLAGS) | eds_health_flags(
                    status
                )
        self.lb = self._build_lb(self.hosts, self.lb)


class ThreadLocalClusterManager:
    def __init__(
        self, store: Store, rng: random.Random, loop=None, *, circuit_breakers=None, worker: int = 0
    ) -> None:
        self._store = store
        self._rng = rng
        self._loop = loop
        # The main process's CircuitBreakerTables (inherited with the fork) and this worker's
        # slot in them: the circuit breakers count for the whole instance.
        self._circuit_breakers = circuit_breakers
        self._worker = worker
        self.clusters: dict[str, ThreadLocalCluster] = {}

    def get(self, name: str) -> ThreadLocalCluster | None:
        return self.clusters.get(name)

    def add_or_update(
        self, config: ClusterConfig, hosts: tuple[HostConfig, ...], lb_settings=None
    ) -> None:
        old = self.clusters.get(config.name)
        if old is not None:
            old.drain_pools()
        breakers = self._circuit_breakers
        counters = breakers.slots(config.name, self._worker) if breakers is not None else None
        cluster = ThreadLocalCluster(
            config,
            self._store,
            self._rng,
            self._loop,
            counters=counters,
            lb_table_stats=self._worker == 0,
        )
        if lb_settings:
            cluster.set_lb_settings(lb_settings)
        cluster.update_hosts(hosts)
        self.clusters[config.name] = cluster

    def remove(self, name: str) -> None:
        """A cluster removed by CDS: its pools drain (busy connections finish their
        requests), and new requests no longer find it."""
        cluster = self.clusters.pop(name, None)
        if cluster is not None:
            cluster.drain_pools()
            from legatus.upstream.cluster_manager import drop_cluster_stats

            others = [c.config for c in self.clusters.values()]
            drop_cluster_stats(self._store, cluster.config.stat_name, others)

    def attach_circuit_breakers(self, name: str, table_name: str) -> None:
        """Map the shared counts the main process made for a cluster added after this
        worker started (before ``add_or_update`` of that cluster)."""
        if self._circuit_breakers is not None:
            self._circuit_breakers.attach(name, table_name)

    def update_hosts(self, name: str, hosts: tuple[HostConfig, ...], lb_settings=None) -> None:
        cluster = self.clusters.get(name)
        if cluster is not None:
            if lb_settings is not None:
                cluster.set_lb_settings(lb_settings)
            cluster.update_hosts(hosts)
