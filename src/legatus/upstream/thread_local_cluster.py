"""The clusters as one worker sees them: host snapshots, load balancers, pools, stats.

The main process sends each worker the cluster configs and, whenever they
change, the host sets; the worker swaps in a new host tuple and balancer
(connections already open keep their Host object). HTTP connection pools are made
per host on first use; a host that leaves the cluster has its pool drained and
deleted once idle, as Envoy does.
"""

from __future__ import annotations

import random

from legatus.http.codes import ResponseCodeStats
from legatus.stats.store import Store
from legatus.upstream.cluster import ClusterConfig, HostConfig
from legatus.upstream.host import Host, host_stats_prefix
from legatus.upstream.load_balancer import RoundRobin
from legatus.upstream.stats import ClusterTrafficStats


class ThreadLocalCluster:
    __slots__ = ("_loop", "_pool_context", "_pools", "_rng", "_store", "code_stats", "config",
                 "hosts", "lb", "resource_managers", "retry_code_stats", "scope",
                 "stats")  # fmt: skip

    def __init__(
        self, config: ClusterConfig, store: Store, rng: random.Random, loop=None, *, counters=None
    ) -> None:
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
        self.lb: RoundRobin[Host] = RoundRobin((), (), rng)
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

        for pool in self._pools.values():
            pool.drain(DrainBehavior.DRAIN_EXISTING_CONNECTIONS)

    def update_hosts(self, hosts: tuple[HostConfig, ...]) -> None:
        old = {h.config: h for h in self.hosts}
        new = tuple(
            old.get(h) or Host(h, self._store.scope(host_stats_prefix(self.config.stat_name, h)))
            for h in hosts
        )
        gone = set(self.hosts) - set(new)
        self.hosts = new
        self.lb = RoundRobin(new, [h.config.weight for h in new], self._rng)
        for host in gone:
            pool = self._pools.pop(host, None)
            if pool is not None:
                from legatus.conn_pool import DrainBehavior

                self.resource_managers[0].connection_pools.dec()
                pool.drain(DrainBehavior.DRAIN_AND_DELETE)

    def choose_host(self) -> Host | None:
        return self.lb.choose()

    def refresh_health(self) -> None:
        """The hosts' health flags changed (the worker applied an UpdateHealth).

        A minimal stand-in until the priority- and panic-aware balancers land: balance over the
        hosts that are not unhealthy (degraded ones included), or over every host when none is
        (Envoy's panic routing)."""
        from legatus.upstream.host import CoarseHealth

        usable = tuple(h for h in self.hosts if h.coarse_health() is not CoarseHealth.UNHEALTHY)
        hosts = usable or self.hosts
        self.lb = RoundRobin(hosts, [h.config.weight for h in hosts], self._rng)


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

    def add_or_update(self, config: ClusterConfig, hosts: tuple[HostConfig, ...]) -> None:
        old = self.clusters.get(config.name)
        if old is not None:
            old.drain_pools()
        breakers = self._circuit_breakers
        counters = breakers.slots(config.name, self._worker) if breakers is not None else None
        cluster = ThreadLocalCluster(config, self._store, self._rng, self._loop, counters=counters)
        cluster.update_hosts(hosts)
        self.clusters[config.name] = cluster

    def update_hosts(self, name: str, hosts: tuple[HostConfig, ...]) -> None:
        cluster = self.clusters.get(name)
        if cluster is not None:
            cluster.update_hosts(hosts)
