"""Hosts grouped the way Envoy's load balancers see them: priorities, health, localities.

``build_priority_set`` turns the worker's Host objects into one ``HostSet`` per priority
(0 up to the highest priority present, empty levels included) and computes, once per
host or health change, what every pick then only reads:

- each level's health and degraded availability: healthy (resp. degraded) hosts over
  non-excluded hosts, times the overprovisioning factor (140% by default), capped at 100
  (with ``weighted_priority_health``, host weights instead of host counts);
- the share of traffic of each level (``healthy_load`` / ``degraded_load``, summing to
  100): levels fill in priority order and the rest spills over to the next ones;
- panic: a level whose healthy + degraded share of hosts is below
  ``healthy_panic_threshold`` balances over all its hosts, unless the levels together are
  100% available; when every level panics, the load follows host counts instead.

Within a level, hosts are healthy / degraded by ``Host.coarse_health()``; excluded hosts
(PENDING_ACTIVE_HC, EXCLUDED_VIA_IMMEDIATE_HC_FAIL, EDS_STATUS_DRAINING) count for
nothing. Localities are keyed by (region, zone, sub_zone) and ordered as Envoy orders them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from legatus.upstream.host import CoarseHealth, HealthFlag, Host

_EXCLUDED = (
    HealthFlag.PENDING_ACTIVE_HC
    | HealthFlag.EXCLUDED_VIA_IMMEDIATE_HC_FAIL
    | HealthFlag.EDS_STATUS_DRAINING
)

# core.v3.HealthStatus of an lb_endpoint -> the EDS health flag Envoy sets on the host.
_EDS_FLAGS = {
    2: HealthFlag.FAILED_EDS_HEALTH,  # UNHEALTHY
    3: HealthFlag.EDS_STATUS_DRAINING,  # DRAINING
    4: HealthFlag.FAILED_EDS_HEALTH,  # TIMEOUT
    5: HealthFlag.DEGRADED_EDS_HEALTH,  # DEGRADED
}
EDS_HEALTH_FLAGS = (
    HealthFlag.FAILED_EDS_HEALTH | HealthFlag.DEGRADED_EDS_HEALTH | HealthFlag.EDS_STATUS_DRAINING
)


def eds_health_flags(health_status: int) -> int:
    """The HealthFlag bits for an endpoint's ``health_status`` (0 for UNKNOWN and HEALTHY)."""
    return int(_EDS_FLAGS.get(health_status, 0))


LocalityKey = tuple[str, str, str]


class HostSet:
    """One priority level's hosts, partitioned by health and by locality."""

    __slots__ = ("degraded", "degraded_per_locality", "excluded", "excluded_per_locality",
                 "healthy", "healthy_per_locality", "hosts", "hosts_per_locality",
                 "locality_weights", "priority")  # fmt: skip

    def __init__(
        self, priority: int, hosts: Sequence[Host], locality_weights: Mapping[LocalityKey, int]
    ) -> None:
        self.priority = priority
        self.hosts = tuple(hosts)
        self.healthy, self.degraded, self.excluded = _partition(self.hosts)
        groups: dict[LocalityKey, list[Host]] = {}
        for h in self.hosts:
            c = h.config
            groups.setdefault((c.region, c.zone, c.sub_zone), []).append(h)
        keys = sorted(groups)  # Envoy's LocalityLess: region, then zone, then sub_zone
        self.hosts_per_locality = tuple(tuple(groups[k]) for k in keys)
        parts = [_partition(group) for group in self.hosts_per_locality]
        self.healthy_per_locality = tuple(p[0] for p in parts)
        self.degraded_per_locality = tuple(p[1] for p in parts)
        self.excluded_per_locality = tuple(p[2] for p in parts)
        self.locality_weights = tuple(locality_weights.get(k, 0) for k in keys)


def _partition(hosts: Iterable[Host]) -> tuple[tuple[Host, ...], ...]:
    healthy, degraded, excluded = [], [], []
    for h in hosts:
        health = h.coarse_health()
        if health is CoarseHealth.HEALTHY:
            healthy.append(h)
        elif health is CoarseHealth.DEGRADED:
            degraded.append(h)
        if h.health_flags & _EXCLUDED:
            excluded.append(h)
    return tuple(healthy), tuple(degraded), tuple(excluded)


class PrioritySet:
    """The host sets and the per-level loads and panic flags computed from them."""

    __slots__ = ("degraded_availability", "degraded_load", "health_availability",
                 "healthy_load", "host_sets", "panic")  # fmt: skip

    def __init__(
        self,
        host_sets: tuple[HostSet, ...],
        *,
        panic_threshold: int,
        overprovisioning_factor: int,
        weighted_priority_health: bool,
    ) -> None:
        self.host_sets = host_sets
        n = len(host_sets)
        health = [0] * n
        degraded = [0] * n
        for i, hs in enumerate(host_sets):
            count = len(hs.hosts) - len(hs.excluded)
            if count <= 0:
                continue
            if weighted_priority_health:
                total = sum(h.config.weight for h in hs.hosts) - sum(
                    h.config.weight for h in hs.excluded
                )
                healthy_w = sum(h.config.weight for h in hs.healthy)
                degraded_w = sum(h.config.weight for h in hs.degraded)
            else:
                total, healthy_w, degraded_w = count, len(hs.healthy), len(hs.degraded)
            if total <= 0:
                continue
            health[i] = min(100, overprovisioning_factor * healthy_w // total)
            degraded[i] = min(100, overprovisioning_factor * degraded_w // total)
        # Each level's availability (0-100), kept for retry priorities (retry_priority.py).
        self.health_availability = tuple(health)
        self.degraded_availability = tuple(degraded)
        self.healthy_load = [0] * n
        self.degraded_load = [0] * n
        available = min(100, sum(health) + sum(degraded))
        if available:
            self._distribute(health, degraded, available)
        self.panic = [False] * n
        threshold = min(100, panic_threshold)
        if threshold == 0 and available == 0:
            # Nothing to route to and no panic: P0 takes the (impossible) load.
            self.healthy_load[0] = 100
            return
        for i, hs in enumerate(host_sets):
            self.panic[i] = available != 100 and _in_panic(hs, threshold)
        if all(self.panic):
            self._load_in_total_panic()

    def _distribute(self, health: list[int], degraded: list[int], available: int) -> None:
        first_healthy, remaining = _distribute(self.healthy_load, health, 100, available)
        first_degraded, remaining = _distribute(self.degraded_load, degraded, remaining, available)
        if remaining:
            # Rounding left-overs go to the first level that has any availability.
            if first_healthy >= 0:
                self.healthy_load[first_healthy] += remaining
            else:
                self.degraded_load[first_degraded] += remaining

    def _load_in_total_panic(self) -> None:
        """Every level panics: each gets a share by its host count, whatever their health."""
        counts = [len(hs.hosts) for hs in self.host_sets]
        total = sum(counts)
        n = len(counts)
        self.degraded_load = [0] * n
        if total == 0:
            self.healthy_load = [100] + [0] * (n - 1)
            return
        loads = [100 * c // total for c in counts]
        first = next(i for i, c in enumerate(counts) if c)
        loads[first] += 100 - sum(loads)
        self.healthy_load = loads

    def choose_priority(self, h: int) -> tuple[int, bool]:
        """The level for the 64-bit ``h`` and whether it is to use its degraded hosts."""
        return choose_priority(self.healthy_load, self.degraded_load, h)


def choose_priority(healthy_load, degraded_load, h: int) -> tuple[int, bool]:
    """The level the loads give the 64-bit ``h``, and whether it is a degraded share."""
    h = h % 100 + 1
    acc = 0
    for i, load in enumerate(healthy_load):
        acc += load
        if h <= acc:
            return i, False
    for i, load in enumerate(degraded_load):
        acc += load
        if h <= acc:
            return i, True
    return 0, False  # loads always add up to 100


def _distribute(
    loads: list[int], availability: list[int], total: int, normalized: int
) -> tuple[int, int]:
    first = -1
    for i, a in enumerate(availability):
        if first < 0 and a > 0:
            first = i
        loads[i] = min(total, a * 100 // normalized)
        total -= loads[i]
    return first, total


def _in_panic(host_set: HostSet, threshold: int) -> bool:
    count = len(host_set.hosts) - len(host_set.excluded)
    if count <= 0:
        return threshold > 0.0
    healthy = 100.0 * len(host_set.healthy) / count
    degraded = 100.0 * len(host_set.degraded) / count
    return healthy + degraded < threshold


def build_priority_set(
    hosts: Sequence[Host],
    *,
    locality_weights: Mapping[tuple[int, str, str, str], int],
    panic_threshold: int,
    overprovisioning_factor: int,
    weighted_priority_health: bool,
) -> PrioritySet:
    top = max((h.config.priority for h in hosts), default=0)
    levels: list[list[Host]] = [[] for _ in range(top + 1)]
    for h in hosts:
        levels[h.config.priority].append(h)
    weights_by_level: list[dict[LocalityKey, int]] = [{} for _ in levels]
    for (priority, region, zone, sub_zone), weight in locality_weights.items():
        if priority <= top:
            weights_by_level[priority][(region, zone, sub_zone)] = weight
    host_sets = tuple(HostSet(p, level, weights_by_level[p]) for p, level in enumerate(levels))
    return PrioritySet(
        host_sets,
        panic_threshold=panic_threshold,
        overprovisioning_factor=overprovisioning_factor,
        weighted_priority_health=weighted_priority_health,
    )
