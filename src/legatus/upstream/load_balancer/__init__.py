"""Load balancers with Envoy's semantics. Sans-I/O: hosts in, a host out.

``build_balancer`` is called by the worker's ThreadLocalCluster whenever its hosts or their
health change; it groups the hosts into priority levels (priority_set.py) and returns the
balancer of the cluster's policy, whose ``choose(context=None, attempt=0)`` the router and
the TCP proxy call per request:

- ROUND_ROBIN (round_robin.py), LEAST_REQUEST (least_request.py), RANDOM (random_lb.py)
  choose a source of hosts per pick (base.py), then a host in it;
- RING_HASH (ring_hash.py) and MAGLEV (maglev.py) hash the request (hashing.py).

Stats: ``lb_healthy_panic`` is counted by every worker; the table gauges
(``ring_hash_lb.*``, ``maglev_lb.*``) by one worker only, since Envoy builds those tables
once per instance and every worker builds the same ones.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from legatus.stats.store import Scope, StatSet, counter, gauge
from legatus.upstream.host import Host
from legatus.upstream.lb_config import LbConfig, LbPolicy
from legatus.upstream.load_balancer.hashing import HashingBalancer
from legatus.upstream.load_balancer.least_request import LeastRequest
from legatus.upstream.load_balancer.maglev import maglev_builder
from legatus.upstream.load_balancer.priority_set import (
    EDS_HEALTH_FLAGS,
    PrioritySet,
    build_priority_set,
    eds_health_flags,
)
from legatus.upstream.load_balancer.random_lb import Random
from legatus.upstream.load_balancer.ring_hash import ring_builder
from legatus.upstream.load_balancer.round_robin import RoundRobin

__all__ = [
    "EDS_HEALTH_FLAGS",
    "LbStats",
    "LeastRequest",
    "PrioritySet",
    "Random",
    "RoundRobin",
    "build_balancer",
    "build_priority_set",
    "eds_health_flags",
]


class LbStats(StatSet):
    """The load-balancing counter a worker increments (Envoy's ClusterLbStats; the
    zone-routing and subset ones stay 0 and are declared by the main process)."""

    lb_healthy_panic = counter()


class RingHashStats(StatSet):
    max_hashes_per_host = gauge()
    min_hashes_per_host = gauge()
    size = gauge()


class MaglevStats(StatSet):
    max_entries_per_host = gauge()
    min_entries_per_host = gauge()


def table_stats(config: LbConfig, scope: Scope):
    """The ``ring_hash_lb.`` / ``maglev_lb.`` gauges of a hashing cluster (None otherwise)."""
    if config.policy is LbPolicy.RING_HASH:
        return RingHashStats(scope.scope("ring_hash_lb."))
    if config.policy is LbPolicy.MAGLEV:
        return MaglevStats(scope.scope("maglev_lb."))
    return None


def build_balancer(
    hosts: Sequence[Host],
    config: LbConfig,
    rng: random.Random,
    stats: LbStats,
    *,
    table_stats=None,
    locality_weights=None,
    previous=None,
):
    """The balancer for ``hosts`` (a new one per host or health change). ``previous``: the
    balancer it replaces (round robin carries its rotation over)."""
    priority_set = build_priority_set(
        hosts,
        locality_weights=locality_weights
        if locality_weights is not None
        else dict(config.locality_weights),
        panic_threshold=config.healthy_panic_threshold,
        overprovisioning_factor=config.overprovisioning_factor,
        weighted_priority_health=config.weighted_priority_health,
    )
    policy = config.policy
    if policy is LbPolicy.RING_HASH:
        return HashingBalancer(priority_set, config, rng, stats, ring_builder(config, table_stats))
    if policy is LbPolicy.MAGLEV:
        return HashingBalancer(
            priority_set, config, rng, stats, maglev_builder(config, table_stats)
        )
    cls = {LbPolicy.LEAST_REQUEST: LeastRequest, LbPolicy.RANDOM: Random}.get(policy, RoundRobin)
    if previous is not None and type(previous) is not cls:
        previous = None
    return cls(priority_set, config, rng, stats, previous)
