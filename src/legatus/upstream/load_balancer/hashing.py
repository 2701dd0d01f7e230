"""What RING_HASH and MAGLEV share (Envoy's ThreadAwareLoadBalancerBase).

Each priority level gets a table built from its healthy hosts (all hosts when the level
panics), each host weighted ``weight / sum(weights)``, or, with locality-weighted
balancing, ``locality_weight / sum(locality weights) * weight / sum(weights in the
locality)`` (localities of weight 0 are left out). Degraded hosts are in no table: like
Envoy, these balancers do not route to degraded hosts outside panic.

A pick takes the request's hash (the cluster policy's ``hash_policy``, else the route's,
through the HashContext), or a random number when there is none; the hash also chooses the
priority level; a level in panic counts ``lb_healthy_panic``; the level's table turns the
hash into a host. ``attempt`` (a retry that rejected the previous host) moves to another
entry, as Envoy does.

Tables depend only on (key, weight) pairs, so a few recent ones are cached per process:
health flapping between two states does not rebuild a 65537-entry Maglev table each time.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Sequence

from legatus.upstream.host import Host
from legatus.upstream.lb_config import LbConfig
from legatus.upstream.load_balancer.priority_set import HostSet, PrioritySet, choose_priority

Normalized = list[tuple[Host, float]]


def hash_key(host: Host, use_hostname: bool) -> str:
    """The string a host is hashed by: its ``envoy.lb`` ``hash_key`` metadata, else its
    hostname (``use_hostname_for_hashing``) or its address (``127.0.0.1:80``)."""
    config = host.config
    if config.hash_key:
        return config.hash_key
    return config.hostname if use_hostname else host.address_text


def normalize(
    hs: HostSet, in_panic: bool, locality_weighted: bool
) -> tuple[Normalized, float, float]:
    out: Normalized = []
    bounds = [1.0, 0.0]  # min, max normalized weight
    if not locality_weighted or not hs.locality_weights:
        _normalize_hosts(hs.hosts if in_panic else hs.healthy, 1.0, out, bounds)
    else:
        per_locality = hs.hosts_per_locality if in_panic else hs.healthy_per_locality
        total = sum(hs.locality_weights)
        if total:
            for hosts, weight in zip(per_locality, hs.locality_weights, strict=True):
                if weight:
                    _normalize_hosts(hosts, weight / total, out, bounds)
    return out, bounds[0], bounds[1]


def _normalize_hosts(hosts: Sequence[Host], locality: float, out: Normalized, bounds) -> None:
    total = sum(h.config.weight for h in hosts)
    for h in hosts:
        w = h.config.weight * locality / total
        out.append((h, w))
        bounds[0] = min(bounds[0], w)
        bounds[1] = max(bounds[1], w)


class HashingBalancer:
    __slots__ = ("_levels", "_panic", "_policy", "_rng", "_set", "_stats")

    hashing = True

    def __init__(
        self,
        priority_set: PrioritySet,
        config: LbConfig,
        rng: random.Random,
        stats,
        build: Callable[[Normalized, float, float], object],
    ) -> None:
        self._set = priority_set
        self._rng = rng
        self._stats = stats
        self._policy = config.hash_policy
        self._panic = priority_set.panic
        self._levels = tuple(
            build(*normalize(hs, priority_set.panic[p], config.locality_weighted))
            for p, hs in enumerate(priority_set.host_sets)
        )

    @property
    def chooser(self) -> Callable[[], Host | None]:
        """``choose()`` as one call (a pick without a request to hash: a random point)."""
        return self.choose

    def choose(self, context=None, attempt: int = 0, priority_load=None) -> Host | None:
        """``priority_load``: as for the other balancers (base.py)."""
        h = context.compute_hash_key(self._policy) if context is not None else None
        if h is None:
            h = self._rng.getrandbits(64)
        levels = self._levels
        loads = None if priority_load is None else priority_load(self._set)
        if loads is not None:
            p = choose_priority(*loads, h)[0]
        else:
            p = 0 if len(levels) == 1 else self._set.choose_priority(h)[0]
        if self._panic[p]:
            self._stats.lb_healthy_panic.inc()
        return levels[p].choose(h, attempt)


class TableCache:
    """The last few tables built in this process, by their inputs."""

    __slots__ = ("_entries", "_size")

    def __init__(self, size: int = 8) -> None:
        self._entries: OrderedDict = OrderedDict()
        self._size = size

    def get(self, key, build: Callable[[], object]):
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = build()
            if len(self._entries) > self._size:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        return entry
