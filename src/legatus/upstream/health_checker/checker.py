"""Active health checking of one cluster, in the main process (Envoy's HealthCheckerImplBase).

One asyncio task per host runs its checks: a check starts (``attempt``), a probe (HTTP or
TCP) runs bounded by ``timeout`` (a timeout closes the probe's connection), the host's
``HostSession`` applies the outcome, and the task sleeps ``next_interval``. The first check of
every host runs at once (after ``initial_jitter``); ``first_round`` completes when every host
present at start-up has had its first result, which is what cluster initialization waits for,
as in Envoy.

Whether the cluster has carried traffic (for ``no_traffic_interval``) is the main process's
view of ``cluster.<name>.upstream_cx_total``: the workers' flushes, so up to a stats flush
(1 s) behind the workers. Envoy reads the same counter across its threads.

Changes of a host's flags are reported with ``on_change()``; a check that passed is reported
with ``on_check_passed(address)`` (outlier detection un-ejects on it).
"""

from __future__ import annotations

import asyncio
import logging
import random as _random
from collections.abc import Callable

from legatus.stats.store import Scope
from legatus.upstream.cluster import HostConfig
from legatus.upstream.health_checker.config import HealthCheckConfig
from legatus.upstream.health_checker.grpc import GrpcProbe
from legatus.upstream.health_checker.http import HttpProbe
from legatus.upstream.health_checker.session import (
    HealthCheckerStats,
    HostSession,
    Outcome,
    Transition,
    next_interval,
)
from legatus.upstream.health_checker.tcp import TcpProbe
from legatus.upstream.host import HealthFlag

log = logging.getLogger("legatus.hc")


class _Host:
    __slots__ = ("first_done", "probe", "session", "task")

    def __init__(self, probe) -> None:
        self.session = HostSession()
        self.probe = probe
        self.task: asyncio.Task | None = None
        self.first_done = False


class HealthChecker:
    def __init__(
        self,
        config: HealthCheckConfig,
        *,
        cluster: str,
        scope: Scope,
        loop: asyncio.AbstractEventLoop,
        rng: _random.Random,
        has_traffic: Callable[[], bool],
        on_change: Callable[[], None],
        on_check_passed: Callable[[str], None] = lambda address: None,
    ) -> None:
        self.config = config
        self.cluster = cluster
        self.stats = HealthCheckerStats(scope.scope("health_check."))
        self._loop = loop
        self._rng = rng
        self._has_traffic = has_traffic
        self._on_change = on_change
        self._on_check_passed = on_check_passed
        self._hosts: dict[str, _Host] = {}
        self._first_round: asyncio.Future | None = None
        self._started = False

    # Hosts -------------------------------------------------------------------------

    def set_hosts(self, hosts: tuple[HostConfig, ...]) -> None:
        """Start checking new hosts (FAILED_ACTIVE_HC until their first pass), stop removed."""
        # A host with disable_active_health_check is never checked (and counts as healthy).
        wanted = {
            str(h.address): h
            for h in hosts
            if h.health_check is None or not h.health_check.disabled
        }
        for address in list(self._hosts):
            if address not in wanted:
                host = self._hosts.pop(address)
                if host.task is not None:
                    host.task.cancel()
                host.probe.close()
        for address, config in wanted.items():
            if address not in self._hosts:
                host = self._hosts[address] = _Host(self._probe(config))
                if self._started:
                    host.task = self._loop.create_task(self._run(address, host))
        self._update_gauges()
        self._check_first_round()

    def _probe(self, host: HostConfig):
        config = self.config
        address = host.health_check_address()
        # Envoy's getHostname: the endpoint's health-check hostname, the check's host (or
        # authority), then the cluster's name.
        hostname = host.health_check.hostname if host.health_check is not None else ""
        if config.grpc is not None:
            return GrpcProbe(
                config.grpc,
                address=address,
                authority=hostname or config.grpc.authority or self.cluster,
                reuse=config.reuse_connection,
                timeout=config.timeout,
            )
        if config.http is not None:
            return HttpProbe(
                config.http,
                address=address,
                cluster=self.cluster,
                reuse=config.reuse_connection,
                hostname=hostname,
            )
        return TcpProbe(config.tcp, address=address, reuse=config.reuse_connection)

    def flags(self, address: str) -> int:
        """The host's health-check flags (HealthFlag bits); 0 for a host not checked."""
        host = self._hosts.get(address)
        return host.session.flags if host is not None else 0

    # Running -----------------------------------------------------------------------

    def start(self) -> None:
        self._started = True
        self._first_round = self._loop.create_future()
        for address, host in self._hosts.items():
            if host.task is None:
                host.task = self._loop.create_task(self._run(address, host))
        self._check_first_round()

    async def first_round(self) -> None:
        """Every host present at start-up has had a first result (or was removed)."""
        if self._first_round is not None:
            await asyncio.shield(self._first_round)

    def stop(self) -> None:
        for host in self._hosts.values():
            if host.task is not None:
                host.task.cancel()
            host.probe.close()

    async def _run(self, address: str, host: _Host) -> None:
        config = self.config
        if config.initial_jitter > 0:
            jitter_ms = max(1, round(config.initial_jitter * 1000))
            await asyncio.sleep(self._rng.randrange(jitter_ms) / 1000)
        while True:
            self.stats.attempt.inc()
            try:
                outcome = await asyncio.wait_for(host.probe.check(), config.timeout)
            except TimeoutError:
                host.probe.close()
                outcome = Outcome.TIMEOUT
            except asyncio.CancelledError:
                raise
            except Exception:  # a probe bug must not stop health checking
                log.exception("health check of %s in cluster %s raised", address, self.cluster)
                host.probe.close()
                outcome = Outcome.NETWORK
            change = self._apply(address, host, outcome)
            passed = outcome is Outcome.SUCCESS or outcome is Outcome.DEGRADED
            delay = next_interval(
                config,
                healthy=passed,
                change=change,
                has_traffic=self._has_traffic(),
                rng=self._rng,
            )
            await asyncio.sleep(delay)

    def _apply(self, address: str, host: _Host, outcome: Outcome) -> Transition:
        before = host.session.flags
        change = host.session.on_outcome(outcome, self.config, self.stats)
        if host.session.flags != before:
            log.debug(
                "health check of %s in cluster %s: %s, flags %#x",
                address,
                self.cluster,
                outcome.value,
                host.session.flags,
            )
            self._update_gauges()
            self._on_change()
        if not host.first_done:
            host.first_done = True
            self._check_first_round()
        if outcome is Outcome.SUCCESS or outcome is Outcome.DEGRADED:
            self._on_check_passed(address)
        return change

    def set_unhealthy_passive(self, address: str) -> None:
        """A worker saw ``x-envoy-immediate-health-check-fail`` from this host: exclude it and
        fail it at once (a passive failure)."""
        host = self._hosts.get(address)
        if host is None:
            return
        session = host.session
        original = session.flags
        session.flags |= HealthFlag.EXCLUDED_VIA_IMMEDIATE_HC_FAIL
        session.on_outcome(Outcome.PASSIVE, self.config, self.stats)
        if session.flags != original:
            self._update_gauges()
            self._on_change()

    def _update_gauges(self) -> None:
        sessions = [h.session for h in self._hosts.values()]
        self.stats.healthy.set(sum(1 for s in sessions if s.healthy))
        self.stats.degraded.set(sum(1 for s in sessions if s.flags & HealthFlag.DEGRADED_ACTIVE_HC))

    def _check_first_round(self) -> None:
        future = self._first_round
        if future is None or future.done():
            return
        if all(h.first_done for h in self._hosts.values()):
            future.set_result(None)
