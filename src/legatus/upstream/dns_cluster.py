"""Membership of STRICT_DNS and LOGICAL_DNS clusters, kept by the main process.

Theory of operation. Every endpoint of the cluster is a resolve target with
its own refresh timer, as in Envoy's ``DnsClusterImpl::ResolveTarget``
(source/extensions/clusters/dns/dns_cluster.cc). After each resolution the
cluster's host set is the concatenation of the targets' hosts; when that tuple
differs from the last one published, ``on_hosts`` receives it (the main process
turns it into a snapshot for the workers).

STRICT_DNS: every distinct address of a target's answer is a host. A failed
resolution keeps the target's previous hosts; a successful one with no
addresses (NXDOMAIN/NODATA, which Envoy's c-ares resolver reports as success)
empties the target. A reordered answer with the same addresses changes nothing.

LOGICAL_DNS: one host, the first address of the answer, at priority 0. An
empty answer is a failure and keeps the host.

Refresh: after a success, ``dns_refresh_rate``, or with ``respect_dns_ttl`` the
answer's TTL (the minimum over a STRICT_DNS answer, the first record's for
LOGICAL_DNS) unless it is 0. After a failure, ``dns_failure_refresh_rate`` as a
jittered exponential backoff if set, else ``dns_refresh_rate``; the backoff is
shared by the cluster's targets and reset by any success (Envoy's
``prepareDnsRefreshStrategy``).

Stats are Envoy's config-update stats, counted per target resolution:
update_attempt, update_success, update_failure, and update_no_rebuild for a
success that left the target's hosts unchanged. update_empty is declared (so
it shows at zero, as in Envoy) but only EDS counts it.
"""

from __future__ import annotations

import asyncio
import logging
import random as _random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from legatus.network.address import SocketAddress
from legatus.stats.store import Scope, StatSet, counter
from legatus.upstream.cluster import (
    ClusterConfig,
    DiscoveryType,
    EndpointConfig,
    HostConfig,
    LookupFamily,
    duration,
)
from legatus.upstream.dns import Answer, DnsError, DnsNoRecords

log = logging.getLogger("legatus.upstream")


class Resolver(Protocol):
    async def resolve(self, name: str, family: LookupFamily) -> Answer: ...


class DnsClusterStats(StatSet):
    update_attempt = counter()
    update_success = counter()
    update_failure = counter()
    update_empty = counter()
    update_no_rebuild = counter()


class FailureBackoff:
    """The delay before retrying a failed resolution, in seconds.

    With ``dns_failure_refresh_rate``: Envoy's JitteredExponentialBackOffStrategy
    in milliseconds: a uniform draw in [0, interval), the interval starting at
    base_interval and doubling up to max_interval (default 10 x base). Without
    it: ``dns_refresh_rate``, fixed.
    """

    def __init__(self, config: ClusterConfig, random: _random.Random) -> None:
        self._random = random
        self._fixed = config.dns_refresh_rate
        self._base_ms = self._max_ms = self._next_ms = 0
        if config.dns_failure_refresh_rate is not None:
            self._base_ms = max(1, round(config.dns_failure_refresh_rate * 1000))
            rate = config.proto.dns_failure_refresh_rate
            if rate.HasField("max_interval"):
                self._max_ms = max(self._base_ms, round(duration(rate.max_interval) * 1000))
            else:
                self._max_ms = self._base_ms * 10
            self._next_ms = self._base_ms

    def next_delay(self) -> float:
        if not self._base_ms:
            return self._fixed
        interval = self._next_ms
        self._next_ms = interval * 2 if interval < self._max_ms // 2 else self._max_ms
        return self._random.randrange(interval) / 1000

    def reset(self) -> None:
        self._next_ms = self._base_ms


@dataclass(slots=True)
class _Target:
    """One endpoint to resolve, and what its last successful resolution gave."""

    endpoint: EndpointConfig
    hosts: tuple[HostConfig, ...] = ()
    delay: float | None = None  # before the next resolution; None: resolve now


class DnsClusterResolver:
    """Resolves one DNS cluster's endpoints, now and periodically, and reports its hosts."""

    def __init__(
        self,
        config: ClusterConfig,
        *,
        resolver: Resolver,
        loop: asyncio.AbstractEventLoop,
        scope: Scope,
        on_hosts: Callable[[tuple[HostConfig, ...]], None],
        random: _random.Random,
    ) -> None:
        if config.type not in (DiscoveryType.STRICT_DNS, DiscoveryType.LOGICAL_DNS):
            raise ValueError(f"cluster {config.name} is {config.type.name}, not a DNS cluster")
        self._config = config
        self._logical = config.type is DiscoveryType.LOGICAL_DNS
        self._resolver = resolver
        self._loop = loop
        self._on_hosts = on_hosts
        self._backoff = FailureBackoff(config, random)
        self._targets = [_Target(e) for e in config.endpoints]
        self._hosts: tuple[HostConfig, ...] = ()
        self._tasks: list[asyncio.Task] = []
        self.stats = DnsClusterStats(scope)

    @property
    def hosts(self) -> tuple[HostConfig, ...]:
        """The host set last reported to ``on_hosts``."""
        return self._hosts

    async def initialize(self) -> None:
        """Resolve every endpoint once, then report the hosts (possibly none).

        Envoy's cluster initialization waits for a first resolution; a failure
        leaves the cluster with no hosts and the refresh keeps trying. Unlike
        Envoy, which is satisfied by the first target to answer, this waits for
        all of them (each is bounded by the resolver's timeout).
        """
        await asyncio.gather(*(self._resolve(t) for t in self._targets))
        self._hosts = self._collect()
        self._notify()

    def start(self) -> None:
        """Start the periodic refresh, one timer per endpoint."""
        if self._tasks:
            return
        for i, target in enumerate(self._targets):
            name = f"dns-refresh:{self._config.name}:{i}"
            self._tasks.append(self._loop.create_task(self._refresh(target), name=name))

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []

    # Refresh -------------------------------------------------------------------

    async def _refresh(self, target: _Target) -> None:
        while True:
            if target.delay is not None:
                await asyncio.sleep(target.delay)
            await self._resolve(target)
            hosts = self._collect()
            if hosts != self._hosts:
                self._hosts = hosts
                self._notify()

    async def _resolve(self, target: _Target) -> None:
        """One resolution of one target: update its hosts, stats and next delay. Never raises."""
        config = self._config
        name = target.endpoint.address.host
        self.stats.update_attempt.inc()
        try:
            answer = await self._resolver.resolve(name, config.dns_lookup_family)
        except DnsNoRecords as e:
            log.debug("dns: %s (cluster %s): no records: %s", name, config.name, e.reason)
            answer = []
        except DnsError as e:
            self._failed(target, e.reason)
            return
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a resolver bug must not stop the refresh
            log.exception("dns: %s (cluster %s): resolver raised", name, config.name)
            self._failed(target, repr(e))
            return
        if self._logical and not answer:
            # Logical DNS does not accept an empty answer: the host keeps its address.
            self._failed(target, "no addresses")
            return
        self.stats.update_success.inc()
        pick = self._logical_hosts if self._logical else self._strict_hosts
        hosts = pick(target, answer)
        if hosts == target.hosts:
            self.stats.update_no_rebuild.inc()
        else:
            target.hosts = hosts
        self._backoff.reset()
        delay = config.dns_refresh_rate
        if config.respect_dns_ttl and answer:
            ttl = answer[0][1] if self._logical else min(ttl for _, ttl in answer)
            if ttl > 0:
                delay = float(ttl)
        target.delay = delay
        log.debug(
            "dns: %s (cluster %s) resolved to %s; refresh in %gs",
            name,
            config.name,
            [ip for ip, _ in answer],
            delay,
        )

    def _failed(self, target: _Target, reason: str) -> None:
        self.stats.update_failure.inc()
        target.delay = self._backoff.next_delay()
        log.debug(
            "dns: %s (cluster %s) failed: %s; keeping %d host(s), retry in %gs",
            target.endpoint.address.host,
            self._config.name,
            reason,
            len(target.hosts),
            target.delay,
        )

    # Hosts ---------------------------------------------------------------------

    def _strict_hosts(self, target: _Target, answer: Answer) -> tuple[HostConfig, ...]:
        ips = list(dict.fromkeys(ip for ip, _ in answer))  # de-duplicated, in answer order
        if {h.address.host for h in target.hosts} == set(ips):
            return target.hosts  # same addresses, maybe reordered: keep the current order
        e = target.endpoint
        return tuple(_host(e, ip, e.priority) for ip in ips)

    def _logical_hosts(self, target: _Target, answer: Answer) -> tuple[HostConfig, ...]:
        first = answer[0][0]
        if target.hosts and target.hosts[0].address.host == first:
            return target.hosts
        return (_host(target.endpoint, first, 0),)  # Envoy rewrites the priority to 0

    def _collect(self) -> tuple[HostConfig, ...]:
        return tuple(h for t in self._targets for h in t.hosts)

    def _notify(self) -> None:
        try:
            self._on_hosts(self._hosts)
        except Exception:
            log.exception("dns: cluster %s: on_hosts raised", self._config.name)


def _host(e: EndpointConfig, ip: str, priority: int) -> HostConfig:
    return HostConfig(
        address=SocketAddress(ip, e.address.port),
        hostname=e.hostname or e.address.host,  # Envoy: the DNS name unless a hostname is set
        weight=e.weight,
        priority=priority,
        region=e.region,
        zone=e.zone,
        sub_zone=e.sub_zone,
        health_status=e.health_status,
        hash_key=e.hash_key,
        health_check=e.health_check,
        metadata=e.metadata,
    )
