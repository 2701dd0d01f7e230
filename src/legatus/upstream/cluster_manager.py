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
from collections.abc import Awaitable, Callable
from typing import Any

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


def drop_cluster_stats(store: Store, stat_name: str, others) -> None:
    """A removed cluster's ``cluster.<stat_name>.*`` stats go, as Envoy drops its scope (not
    those of another cluster whose stat name extends this one: ``a`` and ``a.b``)."""
    prefix = f"cluster.{stat_name}."
    longer = tuple(
        f"cluster.{c.stat_name}." for c in others if c.stat_name.startswith(stat_name + ".")
    )
    store.remove_prefix(prefix, keep=lambda n: n.startswith(longer) if longer else False)


def _is_dns(config: ClusterConfig) -> bool:
    return config.type in (DiscoveryType.STRICT_DNS, DiscoveryType.LOGICAL_DNS)


def compile_static_clusters(bootstrap, secrets: Any = None) -> list[ClusterConfig]:
    configs = []
    for i, proto in enumerate(bootstrap.static_resources.clusters):
        configs.append(compile_cluster(proto, f"static_resources.clusters[{i}]", secrets))
    return configs


class ClusterManager:
    """Static clusters are given at construction and initialized by ``initialize()``;
    clusters from CDS come and go through ``add_or_update_cluster`` / ``remove_cluster``.

    A cluster from CDS warms first (Envoy's cluster warming): a DNS cluster until its first
    resolution, an EDS cluster until its first assignment (``set_assignment_hosts``) or
    ``fail_warming`` (the initial fetch timed out), then the first health-check round.
    ``on_cluster(config, hosts)`` announces it once warm (the server then sends it to the
    workers) and ``on_cluster_removed(name)`` its end."""

    def __init__(
        self,
        configs: list[ClusterConfig],
        *,
        store: Store,
        loop: asyncio.AbstractEventLoop,
        rng: random.Random,
        on_hosts: Callable[[str, tuple[HostConfig, ...]], None],
        on_health: Callable[[str, dict[str, int]], None] = lambda cluster, flags: None,
        on_cluster: Callable[[ClusterConfig, tuple[HostConfig, ...]], None] = lambda c, h: None,
        on_cluster_removed: Callable[[str], None] = lambda name: None,
        on_cluster_warming: Callable[[ClusterConfig], None] = lambda config: None,
        on_warming_count: Callable[[int], None] = lambda count: None,
    ) -> None:
        self.configs: dict[str, ClusterConfig] = {}
        # Awaited before a CDS cluster's hosts: its TLS context's SDS secrets (set by the
        # main process's DynamicConfig; None: nothing to wait for).
        self.secrets_ready: Callable[[ClusterConfig], Awaitable[None]] | None = None
        self.store = store
        self.loop = loop
        self.rng = rng
        self.on_hosts = on_hosts
        self.on_health = on_health
        self.on_cluster = on_cluster
        self.on_cluster_removed = on_cluster_removed
        self.on_cluster_warming = on_cluster_warming
        self.on_warming_count = on_warming_count  # how many clusters warm, at each change
        self.eds_flags: dict[str, dict[str, int]] = {}  # cluster -> address -> HealthFlag
        self.hosts: dict[str, tuple[HostConfig, ...]] = {}
        # EDS clusters: the balancing settings of their last assignment (LbConfig fields).
        self.lb_settings: dict[str, dict] = {}
        # cluster -> host address ("ip:port") -> HealthFlag bits, as last sent to the workers.
        self.health: dict[str, dict[str, int]] = {}
        self.stats = ClusterManagerStats(store.scope("cluster_manager."))
        self.membership: dict[str, ClusterMembershipStats] = {}
        self.health_checkers: dict = {}
        self.detectors: dict = {}
        self.static_names: frozenset[str] = frozenset(c.name for c in configs)
        self.warming: dict[str, ClusterConfig] = {}  # CDS clusters not yet initialized
        self._resolvers: dict[str, object] = {}
        self._dns = None  # one DnsResolver for every DNS cluster, made when first needed
        self._tasks: dict[str, asyncio.Task] = {}
        self._warm_tasks: dict[str, asyncio.Task] = {}
        self._eds_first: dict[str, asyncio.Future] = {}
        for c in configs:
            self._adopt(c)
        self.stats.cluster_added.add(len(configs))
        self.stats.active_clusters.set(len(configs))

    def _adopt(self, c: ClusterConfig) -> None:
        """Take ``c`` in: its config, membership stats and health checking (not started)."""
        self.configs[c.name] = c
        self.membership[c.name] = ClusterMembershipStats(
            self.store.scope(f"cluster.{c.stat_name}.")
        )
        self.store.scope(f"cluster.{c.stat_name}.default.").counter("total_match_count").inc()
        self._make_health(c)

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
        cluster initialization does, the first health check of every host. (EDS clusters
        among the static ones are initialized by their EDS subscription.)"""
        configs = list(self.configs.values())
        eds = [c.name for c in configs if c.type is DiscoveryType.EDS]
        for name in eds:
            self._eds_first.setdefault(name, self.loop.create_future())
        for config in configs:
            if config.type is DiscoveryType.STATIC:
                self._set_hosts(config.name, _static_hosts(config))
        resolvers = [self._make_resolver(c) for c in configs if _is_dns(c)]
        await asyncio.gather(*(r.initialize() for r in resolvers))
        for r in resolvers:
            r.start()
        # EDS clusters: their first assignment (or the end of its initial fetch).
        assignments = await asyncio.gather(*(self._eds_first[n] for n in eds))
        for name, hosts in zip(eds, assignments, strict=True):
            del self._eds_first[name]
            self._set_hosts(name, hosts)
        for config in configs:
            self._start_checks(config.name)
        await asyncio.gather(*(c.first_round() for c in self.health_checkers.values()))

    def _make_resolver(self, config: ClusterConfig):
        """The cluster's resolver, kept and feeding its hosts."""
        r = self._new_resolver(config, lambda hosts, name=config.name: self._set_hosts(name, hosts))
        self._resolvers[config.name] = r
        return r

    def _new_resolver(self, config: ClusterConfig, on_hosts):
        from legatus.upstream.dns import DnsResolver
        from legatus.upstream.dns_cluster import DnsClusterResolver

        if self._dns is None:
            self._dns = DnsResolver(self.loop)
        return DnsClusterResolver(
            config,
            resolver=self._dns,
            loop=self.loop,
            scope=self.store.scope(f"cluster.{config.stat_name}."),
            on_hosts=on_hosts,
            random=self.rng,
        )

    def _start_checks(self, name: str) -> None:
        checker = self.health_checkers.get(name)
        if checker is not None:
            checker.start()
        detector = self.detectors.get(name)
        if detector is not None:
            self._tasks[name] = self.loop.create_task(
                self._outlier_timer(detector), name=f"outlier:{name}"
            )

    def stop(self) -> None:
        for name in list(self.configs):
            self._stop_cluster(name)
        for task in self._warm_tasks.values():
            task.cancel()
        self._warm_tasks = {}

    def _stop_cluster(self, name: str) -> None:
        r = self._resolvers.pop(name, None)
        if r is not None:
            r.stop()
        checker = self.health_checkers.pop(name, None)
        if checker is not None:
            checker.stop()
        self.detectors.pop(name, None)
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()

    # CDS ---------------------------------------------------------------------------------

    def add_or_update_cluster(self, config: ClusterConfig) -> bool:
        """A cluster from CDS, new or changed (False: the very same config, or a static
        cluster's name: nothing to do).
        It warms (see the class doc); a changed cluster keeps serving its previous version
        until the new one is warm, as Envoy's does."""
        if self.cluster_update_blocked(config.name, config.proto):
            return False
        self.count_cluster_update(config.name)
        self.warm_cluster(config)
        return True

    def cluster_update_blocked(self, name: str, proto) -> bool:
        """Whether a CDS update of cluster ``name`` to ``proto`` changes nothing: a static
        cluster's name (Envoy's blockUpdate), or the config already warming, or else the one
        in place."""
        if name in self.static_names:
            return True
        current = self.warming.get(name) or self.configs.get(name)
        return current is not None and current.proto == proto

    def count_cluster_update(self, name: str) -> None:
        """``cluster_added`` or ``cluster_modified``: Envoy counts a CDS cluster that is not
        blocked before it builds it, so also one that then fails to build (and is NACKed)."""
        modified = name in self.configs or name in self.warming
        (self.stats.cluster_modified if modified else self.stats.cluster_added).inc()

    def warm_cluster(self, config: ClusterConfig) -> None:
        """Start warming a built CDS cluster (counted by ``count_cluster_update``)."""
        name = config.name
        if name not in self.configs and name not in self.warming:
            # A new cluster's stats exist from now on (membership_total 0 while it warms).
            ClusterMembershipStats(self.store.scope(f"cluster.{config.stat_name}."))
        self._cancel_warming(name)
        self.warming[name] = config
        self.store.gauge(f"cluster.{config.stat_name}.warming_state").set(1)
        self._warming_changed()
        self._warm_tasks[name] = self.loop.create_task(self._warm(config), name=f"warm:{name}")
        self.on_cluster_warming(config)  # (an EDS cluster subscribes to its endpoints)

    async def wait_warm(self) -> None:
        """Until no cluster is warming (those added meanwhile included)."""
        while True:
            pending = [t for t in self._warm_tasks.values() if not t.done()]
            if not pending:
                return
            await asyncio.wait(pending)

    def remove_cluster(self, name: str) -> bool:
        """A CDS cluster went away, active or warming or both (False: unknown, or static,
        which CDS cannot remove). ``cluster_removed`` counts it once, as Envoy does."""
        if name in self.static_names:
            return False
        warming = self.warming.get(name)
        self._cancel_warming(name)
        active = self.configs.get(name)
        if active is not None:
            self._stop_cluster(name)
            self._forget(name)
            self.lb_settings.pop(name, None)
            self.stats.active_clusters.set(len(self.configs))
        if active is None and warming is None:
            return False
        for stat_name in {c.stat_name for c in (active, warming) if c is not None}:
            drop_cluster_stats(self.store, stat_name, self.configs.values())
        self.stats.cluster_removed.inc()
        if active is not None:
            self.on_cluster_removed(name)
        return True

    def dynamic_clusters(self) -> list[ClusterConfig]:
        """The active clusters that came from CDS."""
        return [c for n, c in self.configs.items() if n not in self.static_names]

    def _cancel_warming(self, name: str) -> bool:
        task = self._warm_tasks.pop(name, None)
        if task is not None:
            task.cancel()
        first = self._eds_first.pop(name, None)
        if first is not None and not first.done():
            first.cancel()
        found = self.warming.pop(name, None) is not None
        self._warming_changed()
        return found

    async def _warm(self, config: ClusterConfig) -> None:
        """Initialize a CDS cluster off to the side, then swap it in."""
        try:
            await self._warm_steps(config)
        except Exception:  # a bug: the cluster is dropped, the server keeps going
            log.exception("cluster '%s' failed to initialize", config.name)
            if self._warm_tasks.get(config.name) is asyncio.current_task():
                self._cancel_warming(config.name)

    async def _warm_steps(self, config: ClusterConfig) -> None:
        name = config.name
        try:
            if self.secrets_ready is not None:
                await self.secrets_ready(config)  # Envoy's cluster init: its SDS secrets
            if config.type is DiscoveryType.STATIC:
                hosts = _static_hosts(config)
            elif config.type is DiscoveryType.EDS:
                first = self._eds_first[name] = self.loop.create_future()
                hosts = await first
            else:
                probe = self._new_resolver(config, lambda hosts: None)  # the first answer
                await probe.initialize()
                hosts = probe.hosts
        except asyncio.CancelledError:
            return
        self._eds_first.pop(name, None)
        modified = name in self.configs
        if modified:
            self._stop_cluster(name)
            self._forget(name)
        self._adopt(config)
        self._set_hosts(name, hosts)
        self.membership[name].warming_state.set(0)  # Envoy: once initialized (before HC)
        if _is_dns(config):
            self._make_resolver(config).start()  # resolves again from now on
        self._start_checks(name)
        checker = self.health_checkers.get(name)
        if checker is not None:
            try:
                await checker.first_round()  # still warming, as in Envoy
            except asyncio.CancelledError:
                return
        self._warm_tasks.pop(name, None)
        self.warming.pop(name, None)
        self._warming_changed()
        self.stats.active_clusters.set(len(self.configs))
        self.on_cluster(config, self.hosts[name])
        self._refresh_health(name, force=True)

    def _warming_changed(self) -> None:
        count = len(self.warming)
        self.stats.warming_clusters.set(count)
        self.on_warming_count(count)

    def _forget(self, name: str) -> None:
        for table in (self.configs, self.hosts, self.health, self.eds_flags, self.membership):
            table.pop(name, None)

    # EDS -----------------------------------------------------------------------------------

    def set_assignment_hosts(
        self, name: str, hosts: tuple[HostConfig, ...], lb_settings: dict | None = None
    ) -> None:
        """An EDS update for cluster ``name``: its first one ends the cluster's warming.
        ``lb_settings``: the assignment's balancing settings (LbConfig fields; see
        ``lb_config.assignment_settings``), kept in ``lb_settings[name]`` for the workers."""
        self.lb_settings[name] = dict(lb_settings or {})
        first = self._eds_first.get(name)
        if first is not None and not first.done():
            first.set_result(hosts)
            return
        if name in self.configs:
            self._set_hosts(name, hosts)

    def fail_warming(self, name: str) -> None:
        """The EDS initial fetch timed out or failed: a warming cluster becomes active with
        no hosts; an active one keeps its hosts."""
        first = self._eds_first.get(name)
        if first is not None and not first.done():
            first.set_result(())

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
