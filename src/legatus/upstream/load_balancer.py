"""Load balancers over a host snapshot. Sans-I/O: hosts in, a host out.

ROUND_ROBIN with equal weights rotates; with unequal weights it is the smooth
weighted round robin (each pick adds every host's weight to its credit and takes
the host with the most credit, which then pays the total), giving the same
proportions as Envoy's EDF scheduler with picks spread evenly.
"""

from __future__ import annotations

import random as _random
from collections.abc import Sequence
from typing import Generic, TypeVar

H = TypeVar("H")


class RoundRobin(Generic[H]):
    __slots__ = ("_credit", "_hosts", "_index", "_total", "_weighted", "_weights")

    def __init__(self, hosts: Sequence[H], weights: Sequence[int], rng: _random.Random) -> None:
        self._hosts = tuple(hosts)
        self._weights = tuple(weights)
        self._weighted = len(set(self._weights)) > 1
        self._credit = [0] * len(self._hosts)
        self._total = sum(self._weights)
        # Start at a random host so that workers do not all hit host 0 first.
        self._index = rng.randrange(len(self._hosts)) if self._hosts else 0

    def choose(self) -> H | None:
        hosts = self._hosts
        if not hosts:
            return None
        if not self._weighted:
            i = self._index % len(hosts)
            self._index = i + 1
            return hosts[i]
        credit = self._credit
        best = 0
        for i, w in enumerate(self._weights):
            credit[i] += w
            if credit[i] > credit[best]:
                best = i
        credit[best] -= self._total
        return hosts[best]
