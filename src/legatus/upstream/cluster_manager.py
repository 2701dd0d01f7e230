"""The main process's cluster manager: configs, membership, DNS, health.

It owns what Envoy's main thread owns for clusters: the compiled configs, the current host
set of each cluster (static, or kept fresh by DNS), active health checking, outlier
detection, and the membership stats. Host-set changes are handed to ``on_hosts``, health
changes (every host's HealthFlag bits) to ``on_health``; the server broadcasts both to the
workers.

A host's flags are its health checker's (FAILED_ACTIVE_HC, DEGRADED_ACTIVE_HC,
ACTIVE_HC_TIMEOUT, EXCLUDED_VIA_IMMEDIATE_HC_FAIL) plus FAILED_OUTLIER_CHECK while outlier
detection ejects it. ``membership_healthy`` / ``membership_degraded`` /
``membership_excluded`` count them as Envoy does.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from legatus.stats.store import Store
from legatus.upstream.cluster import ClusterConfig, DiscoveryType, HostConfig, compile_cluster
from legatus.upstream.cluster import static_hosts as _static_hosts
from legatus.upstream.host import HealthFlag
from legatus.upstream.load_balancer.priority_set import eds_health_flags
from legatus.upstream.stats import ClusterManagerStats, ClusterMembershipStats

log = logging.getLogger("legatus.upstream")

_UNHEALTHY = (
    HealthFlag.FAILED_ACTIVE_HC
    | HealthFlag.FAILED_OUTLIER_CHECK
    | HealthFlag.FAILED_EDS_HEALTH
    | HealthFlag.EDS_STATUS_DRAINING
)
_DEGRADED = HealthFlag.DEGRADED_ACTIVE_HC | HealthFlag.DEGRADED_EDS_HEALTH
_EXCLUDED = (
    HealthFlag.PENDING_DYNAMIC_REMOVAL
    | HealthFlag.PENDING_ACTIVE_HC
    | HealthFlag.EXCLUDED_VIA_IMMEDIATE_HC_FAIL
)


def health_flag_names(flags: int) -> tuple[str, ...]:
    """``/failed_active_hc`` ... in Envoy's order (the bit order), as /clusters prints them."""
    return tuple(f"/{flag.name.lower()}" for flag in HealthFlag if flags & flag)


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
        on_health: Callable[[str, dict[str, int]], None] = lambda cluster, flags: None,
    ) -> None:
        self.configs = {c.name: c for c in configs}
        self.store = store
        self.loop = loop
        self.rng = rng
        self.on_hosts = on_hosts
        self.on_health = on_health
        self.eds_flags: dict[str, dict[str, int]] = {}  # cluster -> address -> HealthFlag
        self.hosts: dict[str, tuple[HostConfig, ...]] = {}
        # cluster -> host address ("ip:port") -> HealthFlag bits, as last sent to the workers.
        self.health: dict[str, dict[str, int]] = {}
        self.stats = ClusterManagerStats(store.scope("cluster_manager."))
        self.membership = {
            c.name: ClusterMembershipStats(store.scope(f"cluster.{c.stat_name}.")) for c in configs
        }
        self.health_checkers: dict = {}
        self.detectors: dict = {}
        self._resolvers: list = []
        self._tasks: list[asyncio.Task] = []
        for c in configs:
            store.scope(f"cluster.{c.stat_name}.default.").counter("total_match_count").inc()
            self._make_health(c)
        self.stats.cluster_added.add(len(configs))
        self.stats.active_clusters.set(len(configs))

    def _make_health(self, config: ClusterConfig) -> None:
        scope = self.store.scope(f"cluster.{config.stat_name}.")
        name = config.name
        if config.health_check is not None:
            from legatus.upstream.health_checker.checker import HealthChecker

            traffic = self.store.counter(f"cluster.{config.stat_name}.upstream_cx_total")
            self.health_checkers[name] = HealthChecker(
                config.health_check,
                cluster=name,
                scope=scope,
                loop=self.loop,
                rng=self.rng,
                has_traffic=lambda: traffic.value > 0 or traffic.used,
                on_change=lambda: self._refresh_health(name),
                on_check_passed=lambda address: self._on_check_passed(name, address),
            )
        if config.outlier is not None:
            from legatus.upstream.outlier_detection import Detector

            self.detectors[name] = Detector(
                config.outlier,
                scope=scope,
                clock=self.loop.time,
                rng=self.rng,
                on_change=lambda: self._refresh_health(name),
            )

    async def initialize(self) -> None:
        """Static hosts at once; DNS clusters after their first resolution; then, as Envoy's
        cluster initialization does, the first health check of every host."""
        dns_clusters = []
        for config in self.configs.values():
            if config.type is DiscoveryType.STATIC:
                self._set_hosts(config.name, _static_hosts(config))
            else:
                dns_clusters.append(config)
        if dns_clusters:
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
        for checker in self.health_checkers.values():
            checker.start()
        for name, detector in self.detectors.items():
            self._tasks.append(
                self.loop.create_task(self._outlier_timer(detector), name=f"outlier:{name}")
            )
        await asyncio.gather(*(c.first_round() for c in self.health_checkers.values()))

    def stop(self) -> None:
        for r in self._resolvers:
            r.stop()
        for checker in self.health_checkers.values():
            checker.stop()
        for task in self._tasks:
            task.cancel()
        self._tasks = []

    def _set_hosts(self, name: str, hosts: tuple[HostConfig, ...]) -> None:
        previous = self.hosts.get(name)
        self.hosts[name] = hosts
        # An endpoint's own health_status (UNHEALTHY, DRAINING, DEGRADED...) counts too.
        self.eds_flags[name] = {
            str(h.address): eds_health_flags(h.health_status) for h in hosts if h.health_status
        }
        m = self.membership[name]
        m.membership_total.set(len(hosts))
        if self.configs[name].type is not DiscoveryType.STATIC:
            # Envoy sets it only when a dynamic host list is (re)built.
            m.max_host_weight.set(max((h.weight for h in hosts), default=0))
        if previous is not None and previous != hosts:
            m.membership_change.inc()
            self.stats.cluster_updated.inc()
        elif previous is None and hosts:
            m.membership_change.inc()
        checker = self.health_checkers.get(name)
        if checker is not None:
            checker.set_hosts(hosts)
        detector = self.detectors.get(name)
        if detector is not None:
            detector.set_hosts([str(h.address) for h in hosts])
        self.on_hosts(name, hosts)
        self._refresh_health(name, force=True)

    # Health ------------------------------------------------------------------------------

    def host_flags(self, name: str, address: str) -> int:
        checker = self.health_checkers.get(name)
        flags = checker.flags(address) if checker is not None else 0
        eds = self.eds_flags.get(name)
        if eds:
            flags |= eds.get(address, 0)
        detector = self.detectors.get(name)
        if detector is not None and detector.ejected(address):
            flags |= HealthFlag.FAILED_OUTLIER_CHECK
        return flags

    def _refresh_health(self, name: str, *, force: bool = False) -> None:
        """Recompute the cluster's flags and membership gauges; push them if they changed."""
        flags = {
            str(h.address): self.host_flags(name, str(h.address)) for h in self.hosts.get(name, ())
        }
        m = self.membership[name]
        healthy = degraded = excluded = 0
        for value in flags.values():
            if value & _EXCLUDED:
                excluded += 1
            elif not value & _UNHEALTHY:
                if value & _DEGRADED:
                    degraded += 1
                else:
                    healthy += 1
        m.membership_healthy.set(healthy)
        m.membership_degraded.set(degraded)
        m.membership_excluded.set(excluded)
        if name not in self.health_checkers and name not in self.detectors:
            return  # nothing checks this cluster: every host stays healthy in the workers
        if not force and flags == self.health.get(name):
            return
        self.health[name] = flags
        self.on_health(name, flags)

    def _on_check_passed(self, name: str, address: str) -> None:
        detector = self.detectors.get(name)
        if detector is not None:
            hc_healthy = not self.health_checkers[name].flags(address) & HealthFlag.FAILED_ACTIVE_HC
            detector.on_health_check_passed(address, hc_healthy)

    async def _outlier_timer(self, detector) -> None:
        while True:
            await asyncio.sleep(detector.config.interval)
            try:
                detector.on_interval()
            except Exception:  # a detector bug must not stop the timer
                log.exception("outlier detection interval failed")

    # Reports from the workers -------------------------------------------------------------

    def on_outcomes(self, outcomes: dict[str, dict[str, list[int]]]) -> None:
        for name, hosts in outcomes.items():
            detector = self.detectors.get(name)
            if detector is None:
                continue
            for address, runs in hosts.items():
                detector.on_outcomes(address, runs)

    def on_immediate_health_check_fail(self, name: str, address: str) -> None:
        checker = self.health_checkers.get(name)
        if checker is not None:
            checker.set_unhealthy_passive(address)
