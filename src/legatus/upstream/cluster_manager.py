"""The main process's cluster manager: configs, membership and DNS.

It owns what Envoy's main thread owns for clusters: the compiled configs, the
current host set of each cluster (static, or kept fresh by DNS), and the
membership stats. Host-set changes are handed to ``on_hosts`` (the server
broadcasts them to the workers).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from legatus.stats.store import Store
from legatus.upstream.cluster import ClusterConfig, DiscoveryType, HostConfig, compile_cluster
from legatus.upstream.cluster import static_hosts as _static_hosts
from legatus.upstream.stats import ClusterManagerStats, ClusterMembershipStats


def compile_static_clusters(bootstrap) -> list[ClusterConfig]:
    configs = []
    for i, proto in enumerate(bootstrap.static_resources.clusters):
        configs.append(compile_cluster(proto, f"static_resources.clusters[{i}]"))
    return configs


class ClusterManager:
    def __init__(
        self,
        configs: list[ClusterConfig],
        *,
        store: Store,
        loop: asyncio.AbstractEventLoop,
        rng: random.Random,
        on_hosts: Callable[[str, tuple[HostConfig, ...]], None],
    ) -> None:
        self.configs = {c.name: c for c in configs}
        self.store = store
        self.loop = loop
        self.rng = rng
        self.on_hosts = on_hosts
        self.hosts: dict[str, tuple[HostConfig, ...]] = {}
        self.stats = ClusterManagerStats(store.scope("cluster_manager."))
        self.membership = {
            c.name: ClusterMembershipStats(store.scope(f"cluster.{c.stat_name}.")) for c in configs
        }
        self._resolvers: list = []
        for c in configs:
            store.scope(f"cluster.{c.stat_name}.default.").counter("total_match_count").inc()
        self.stats.cluster_added.add(len(configs))
        self.stats.active_clusters.set(len(configs))

    async def initialize(self) -> None:
        """Static hosts at once; DNS clusters after their first resolution (Envoy's init)."""
        dns_clusters = []
        for config in self.configs.values():
            if config.type is DiscoveryType.STATIC:
                self._set_hosts(config.name, _static_hosts(config))
            else:
                dns_clusters.append(config)
        if not dns_clusters:
            return
        from legatus.upstream.dns import DnsResolver
        from legatus.upstream.dns_cluster import DnsClusterResolver

        resolver = DnsResolver(self.loop)
        for config in dns_clusters:
            r = DnsClusterResolver(
                config,
                resolver=resolver,
                loop=self.loop,
                scope=self.store.scope(f"cluster.{config.stat_name}."),
                on_hosts=lambda hosts, name=config.name: self._set_hosts(name, hosts),
                random=self.rng,
            )
            self._resolvers.append(r)
        await asyncio.gather(*(r.initialize() for r in self._resolvers))
        for r in self._resolvers:
            r.start()

    def stop(self) -> None:
        for r in self._resolvers:
            r.stop()

    def _set_hosts(self, name: str, hosts: tuple[HostConfig, ...]) -> None:
        previous = self.hosts.get(name)
        self.hosts[name] = hosts
        m = self.membership[name]
        m.membership_total.set(len(hosts))
        m.membership_healthy.set(len(hosts))
        m.membership_degraded.set(0)
        m.membership_excluded.set(0)
        if self.configs[name].type is not DiscoveryType.STATIC:
            # Envoy sets it only when a dynamic host list is (re)built.
            m.max_host_weight.set(max((h.weight for h in hosts), default=0))
        if previous is not None and previous != hosts:
            m.membership_change.inc()
            self.stats.cluster_updated.inc()
        elif previous is None and hosts:
            m.membership_change.inc()
        self.on_hosts(name, hosts)
