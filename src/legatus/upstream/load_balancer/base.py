"""What ROUND_ROBIN, LEAST_REQUEST and RANDOM share: choosing where a pick draws from.

Envoy's ZoneAwareLoadBalancerBase without zone-aware routing. A pick draws a 64-bit random
number; it chooses the priority level (its healthy or its degraded hosts, by the levels'
loads); a level in panic gives all its hosts (and counts ``lb_healthy_panic``); with
locality-weighted balancing an EDF schedule over the level's localities (weight times
availability) chooses the locality. That "source" has its own picker, made by the policy
on first use: a round robin index, an EDF schedule, two random choices...

When every pick would come from the same source (one level takes all the load, no panic,
no locality weighting), ``choose`` goes straight to that source's picker, and ``chooser`` is
that picker's own ``pick``: the common case costs one method call and an index increment.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from legatus.upstream.host import Host
from legatus.upstream.lb_config import LbConfig
from legatus.upstream.load_balancer.edf import EdfScheduler
from legatus.upstream.load_balancer.priority_set import HostSet, PrioritySet, choose_priority

# Source kinds (Envoy's HostsSource::SourceType).
ALL_HOSTS = 0
HEALTHY = 1
DEGRADED = 2
LOCALITY_HEALTHY = 3
LOCALITY_DEGRADED = 4

Source = tuple[int, int, int]  # (priority, kind, locality index)


def edf_prepicks(seed: int, entries: int) -> int:
    """How many picks a new EDF schedule makes up front (Envoy starts each one at a random
    point of its cycle; a few rounds of the entries spread workers just as well)."""
    return seed % (4 * entries) if entries else 0


class EdfFamilyBalancer:
    """Base of the per-source balancers. Subclasses implement ``_new_picker``."""

    __slots__ = ("_config", "_fixed", "_locality", "_pickers", "_previous", "_rng", "_seed",
                 "_set", "_stats")  # fmt: skip

    hashing = False

    def __init__(
        self,
        priority_set: PrioritySet,
        config: LbConfig,
        rng: random.Random,
        stats,
        previous: EdfFamilyBalancer | None = None,
    ) -> None:
        self._set = priority_set
        self._config = config
        self._rng = rng
        self._stats = stats
        # Envoy keeps one random seed per balancer: the round robin start and EDF pre-picks.
        self._seed = previous._seed if previous is not None else rng.getrandbits(32)
        self._previous = previous._pickers if previous is not None else {}
        self._pickers: dict[Source, object] = {}
        self._locality = (
            [_locality_schedulers(hs, config.overprovisioning_factor, self._seed)
             for hs in priority_set.host_sets]
            if config.locality_weighted
            else None
        )  # fmt: skip
        self._fixed = None
        loads = priority_set.healthy_load
        if (
            not config.locality_weighted
            and loads.count(100) == 1
            and not any(priority_set.degraded_load)
        ):
            p = loads.index(100)
            if not priority_set.panic[p]:
                self._fixed = self._picker((p, HEALTHY, 0))

    @property
    def chooser(self) -> Callable[[], Host | None]:
        """``choose()`` as one call: the fixed source's picker when there is one."""
        fixed = self._fixed
        return self.choose if fixed is None else fixed.pick

    def choose(self, context=None, attempt: int = 0, priority_load=None) -> Host | None:
        """A host, or None when the source chosen has none (Envoy's chooseHost).

        ``priority_load``: a retry priority (``router/retry_priority.py``), called with the
        priority set; the (healthy, degraded) loads it returns replace the set's own for
        this pick (Envoy's LoadBalancerContext::determinePriorityLoad)."""
        fixed = self._fixed
        loads = None if priority_load is None else priority_load(self._set)
        if fixed is not None and loads is None:
            return fixed.pick()
        r = self._rng.getrandbits(64)
        source = self._source(r, loads)
        picker = self._pickers.get(source)
        if picker is None:
            picker = self._picker(source)
        return picker.pick(r)

    def _source(self, r: int, loads=None) -> Source:
        ps = self._set
        p, degraded = ps.choose_priority(r) if loads is None else choose_priority(*loads, r)
        if ps.panic[p]:
            self._stats.lb_healthy_panic.inc()
            return (p, ALL_HOSTS, 0)
        if self._locality is not None:
            scheduler = self._locality[p][1 if degraded else 0]
            if scheduler is not None:
                return (p, LOCALITY_DEGRADED if degraded else LOCALITY_HEALTHY, scheduler.pick())
        return (p, DEGRADED if degraded else HEALTHY, 0)

    def _picker(self, source: Source):
        p, kind, locality = source
        hs = self._set.host_sets[p]
        if kind == ALL_HOSTS:
            hosts = hs.hosts
        elif kind == HEALTHY:
            hosts = hs.healthy
        elif kind == DEGRADED:
            hosts = hs.degraded
        elif kind == LOCALITY_HEALTHY:
            hosts = hs.healthy_per_locality[locality]
        else:
            hosts = hs.degraded_per_locality[locality]
        picker = self._pickers[source] = self._new_picker(hosts, self._previous.get(source))
        return picker

    def _new_picker(self, hosts: Sequence[Host], previous):  # pragma: no cover - abstract
        raise NotImplementedError


def weights_equal(hosts: Sequence[Host]) -> bool:
    if len(hosts) <= 1:
        return True
    first = hosts[0].config.weight
    return all(h.config.weight == first for h in hosts)


class _Locality:
    __slots__ = ("effective_weight", "index")

    def __init__(self, index: int, effective_weight: float) -> None:
        self.index = index
        self.effective_weight = effective_weight


class _LocalityScheduler:
    __slots__ = ("_edf",)

    def __init__(self, entries: list[_Locality], seed: int) -> None:
        self._edf = EdfScheduler(
            entries, lambda e: e.effective_weight, edf_prepicks(seed, len(entries))
        )

    def pick(self) -> int:
        return self._edf.pick().index


def _locality_schedulers(hs: HostSet, overprovisioning: int, seed: int):
    """(healthy, degraded) locality schedulers of one level; None where no locality has an
    effective weight (Envoy's LocalityWrr)."""
    return (
        _locality_scheduler(hs, hs.healthy, hs.healthy_per_locality, overprovisioning, seed),
        _locality_scheduler(hs, hs.degraded, hs.degraded_per_locality, overprovisioning, seed),
    )


def _locality_scheduler(hs: HostSet, eligible, eligible_per_locality, overprovisioning, seed):
    if not eligible or not hs.locality_weights:
        return None
    entries = []
    for i, all_hosts in enumerate(hs.hosts_per_locality):
        count = len(all_hosts) - len(hs.excluded_per_locality[i])
        if count <= 0:
            continue
        ratio = len(eligible_per_locality[i]) / count
        weight = hs.locality_weights[i] * min(1.0, overprovisioning / 100.0 * ratio)
        if weight > 0:
            entries.append(_Locality(i, weight))
    return _LocalityScheduler(entries, seed) if entries else None
