"""The clusters as one worker sees them: host snapshots, load balancers, stats.

The main process sends each worker the cluster configs and, whenever they
change, the host sets; the worker swaps in a new host tuple and balancer
(connections already open keep their Host object).
"""

from __future__ import annotations

import random

from legatus.stats.store import Store
from legatus.upstream.cluster import ClusterConfig, HostConfig
from legatus.upstream.host import Host, host_stats_prefix
from legatus.upstream.load_balancer import RoundRobin
from legatus.upstream.stats import ClusterTrafficStats


class ThreadLocalCluster:
    __slots__ = ("_rng", "_store", "config", "hosts", "lb", "stats")

    def __init__(self, config: ClusterConfig, store: Store, rng: random.Random) -> None:
        self.config = config
        self._store = store
        self._rng = rng
        self.stats = ClusterTrafficStats(store.scope(f"cluster.{config.stat_name}."))
        self.hosts: tuple[Host, ...] = ()
        self.lb: RoundRobin[Host] = RoundRobin((), (), rng)

    def update_hosts(self, hosts: tuple[HostConfig, ...]) -> None:
        old = {h.config: h for h in self.hosts}
        new = tuple(
            old.get(h) or Host(h, self._store.scope(host_stats_prefix(self.config.stat_name, h)))
            for h in hosts
        )
        self.hosts = new
        self.lb = RoundRobin(new, [h.config.weight for h in new], self._rng)

    def choose_host(self) -> Host | None:
        return self.lb.choose()


class ThreadLocalClusterManager:
    def __init__(self, store: Store, rng: random.Random) -> None:
        self._store = store
        self._rng = rng
        self.clusters: dict[str, ThreadLocalCluster] = {}

    def get(self, name: str) -> ThreadLocalCluster | None:
        return self.clusters.get(name)

    def add_or_update(self, config: ClusterConfig, hosts: tuple[HostConfig, ...]) -> None:
        cluster = ThreadLocalCluster(config, self._store, self._rng)
        cluster.update_hosts(hosts)
        self.clusters[config.name] = cluster

    def update_hosts(self, name: str, hosts: tuple[HostConfig, ...]) -> None:
        cluster = self.clusters.get(name)
        if cluster is not None:
            cluster.update_hosts(hosts)
