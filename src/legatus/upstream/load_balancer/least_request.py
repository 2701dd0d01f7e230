"""LEAST_REQUEST: the power of two choices, or an EDF schedule of load-scaled weights.

With equal weights a pick samples ``choice_count`` hosts at random (with replacement) and
keeps the first one with the fewest active requests (``FULL_SCAN``: all hosts, ties broken
uniformly at random). With unequal weights hosts go through an EDF schedule where a
host's weight is
``load_balancing_weight / (active_requests + 1) ** active_request_bias``, computed again each
time the host is put back after a pick (Envoy's rule: the weight lags by one pick). Envoy
1.40 keeps the random choices when weights are equal even with ``active_request_bias`` set
(checked against it); later Envoys switch to the schedule then.

Active requests are the host's ``rq_active`` in this worker: Envoy counts them over all its
threads, legatus per worker process (see docs/load-balancing.md).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from legatus.upstream.host import Host
from legatus.upstream.load_balancer.base import EdfFamilyBalancer, edf_prepicks, weights_equal
from legatus.upstream.load_balancer.edf import EdfScheduler


class ChoicePicker:
    __slots__ = ("_choices", "_rng", "hosts")

    def __init__(self, hosts: Sequence[Host], choices: int, rng: random.Random) -> None:
        self.hosts = hosts
        self._choices = choices
        self._rng = rng

    def pick(self, r: int = 0) -> Host | None:
        hosts = self.hosts
        n = len(hosts)
        if not n:
            return None
        bits = self._rng.getrandbits
        best = hosts[bits(64) % n]
        best_active = best.stats.rq_active.value
        for _ in range(self._choices - 1):
            host = hosts[bits(64) % n]
            active = host.stats.rq_active.value
            if active < best_active:
                best, best_active = host, active
        return best


class FullScanPicker:
    __slots__ = ("_rng", "hosts")

    def __init__(self, hosts: Sequence[Host], rng: random.Random) -> None:
        self.hosts = hosts
        self._rng = rng

    def pick(self, r: int = 0) -> Host | None:
        best = None
        best_active = 0
        tied = 0
        for host in self.hosts:
            active = host.stats.rq_active.value
            if best is None or active < best_active:
                best, best_active, tied = host, active, 1
            elif active == best_active:
                tied += 1  # reservoir sampling: each tied host ends up with odds 1/tied
                if self._rng.getrandbits(64) % tied == 0:
                    best = host
        return best


class LoadWeightedPicker:
    __slots__ = ("_edf",)

    def __init__(self, hosts: Sequence[Host], bias: float, seed: int) -> None:
        if bias == 1.0:

            def weight(host: Host) -> float:
                return host.config.weight / (host.stats.rq_active.value + 1)

        elif bias == 0.0:

            def weight(host: Host) -> float:
                return host.config.weight

        else:

            def weight(host: Host) -> float:
                return host.config.weight / (host.stats.rq_active.value + 1) ** bias

        self._edf = EdfScheduler(hosts, weight, edf_prepicks(seed, len(hosts)))

    def pick(self, r: int = 0) -> Host | None:
        return self._edf.pick()


class LeastRequest(EdfFamilyBalancer):
    __slots__ = ()

    def _new_picker(self, hosts: Sequence[Host], previous):
        config = self._config
        bias = config.active_request_bias
        if len(hosts) > 1 and not weights_equal(hosts):
            return LoadWeightedPicker(hosts, 1.0 if bias is None else bias, self._seed)
        if config.full_scan:
            return FullScanPicker(hosts, self._rng)
        return ChoicePicker(hosts, config.choice_count, self._rng)
