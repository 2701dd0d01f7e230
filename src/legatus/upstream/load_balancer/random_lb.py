"""RANDOM: a uniformly random host of the source. Envoy ignores host weights here, and uses
one random number both for the priority level and for the host; so does legatus."""

from __future__ import annotations

import random
from collections.abc import Sequence

from legatus.upstream.host import Host
from legatus.upstream.load_balancer.base import EdfFamilyBalancer


class RandomPicker:
    __slots__ = ("_rng", "hosts")

    def __init__(self, hosts: Sequence[Host], rng: random.Random) -> None:
        self.hosts = hosts
        self._rng = rng

    def pick(self, r: int | None = None) -> Host | None:
        hosts = self.hosts
        if not hosts:
            return None
        if r is None:
            r = self._rng.getrandbits(64)
        return hosts[r % len(hosts)]


class Random(EdfFamilyBalancer):
    __slots__ = ()

    def _new_picker(self, hosts: Sequence[Host], previous):
        return RandomPicker(hosts, self._rng)
