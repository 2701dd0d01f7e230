"""ROUND_ROBIN: rotation over equal weights, Envoy's EDF schedule over unequal ones.

Each host source keeps its own rotation index, carried over when the hosts or their health
change (Envoy keeps its per-source index across rebuilds too); a new index starts at the
balancer's random seed so that workers do not all send their first request to one host.
"""

from __future__ import annotations

from collections.abc import Sequence

from legatus.upstream.host import Host
from legatus.upstream.load_balancer.base import EdfFamilyBalancer, edf_prepicks, weights_equal
from legatus.upstream.load_balancer.edf import EdfScheduler


class RoundRobinPicker:
    __slots__ = ("hosts", "index")

    def __init__(self, hosts: Sequence[Host], index: int) -> None:
        self.hosts = hosts
        self.index = index

    def pick(self, r: int = 0) -> Host | None:
        hosts = self.hosts
        if not hosts:
            return None
        i = self.index
        self.index = i + 1
        return hosts[i % len(hosts)]


class WeightedPicker:
    """An EDF schedule of the hosts by ``load_balancing_weight``."""

    __slots__ = ("_edf", "index")

    def __init__(self, hosts: Sequence[Host], seed: int, index: int) -> None:
        self._edf = EdfScheduler(hosts, _weight, edf_prepicks(seed, len(hosts)))
        self.index = index  # kept for the day the weights become equal again

    def pick(self, r: int = 0) -> Host | None:
        return self._edf.pick()


def _weight(host: Host) -> float:
    return host.config.weight


class RoundRobin(EdfFamilyBalancer):
    __slots__ = ()

    def _new_picker(self, hosts: Sequence[Host], previous):
        index = previous.index if previous is not None else self._seed
        if weights_equal(hosts):
            return RoundRobinPicker(hosts, index)
        return WeightedPicker(hosts, self._seed, index)
