"""RING_HASH: Envoy's ketama ring.

The ring has ``ceil(scale)`` entries where ``scale = min(ceil(min_w * minimum_ring_size) /
min_w, maximum_ring_size)`` (``min_w``: the smallest normalized weight), so that the lightest
host gets a whole number of entries. Walking the hosts in order, running sums decide how
many entries each gets; entry ``i`` of a host is the xxHash64 (seed 0; or MurmurHash2 with
``MURMUR_HASH_2``) of ``"<key>_<i>"``, the key being the host's address (``10.0.0.1:80``),
its hostname, or its ``envoy.lb`` ``hash_key``. A request goes to the first entry whose hash
is >= its own, wrapping to the first entry; a retry attempt ``a`` goes ``a`` entries further.
"""

from __future__ import annotations

import math
from bisect import bisect_left

import xxhash

from legatus.upstream.host import Host
from legatus.upstream.lb_config import HashFunction, LbConfig
from legatus.upstream.load_balancer.hashing import Normalized, TableCache, hash_key
from legatus.upstream.load_balancer.murmur import murmur_hash2_64

_CACHE = TableCache()


class Ring:
    __slots__ = ("_hashes", "_hosts", "_owners")

    def __init__(self, hashes: list[int], owners: list[int], hosts: tuple[Host, ...]) -> None:
        self._hashes = hashes
        self._owners = owners  # ring entry -> index in hosts
        self._hosts = hosts

    def choose(self, h: int, attempt: int = 0) -> Host | None:
        hashes = self._hashes
        n = len(hashes)
        if not n:
            return None
        i = bisect_left(hashes, h)
        if i == n:
            i = 0
        if attempt:
            i = (i + attempt) % n
        return self._hosts[self._owners[i]]


def build_ring_data(
    keys: tuple[str, ...],
    weights: tuple[float, ...],
    min_weight: float,
    min_size: int,
    max_size: int,
    murmur: bool,
):
    """(sorted hashes, owner index per entry, size, min and max entries per host)."""
    scale = min(math.ceil(min_weight * min_size) / min_weight, float(max_size))
    size = math.ceil(scale)
    entries: list[tuple[int, int]] = []
    current = 0.0
    target = 0.0
    low, high = size, 0
    digest = xxhash.xxh64_intdigest
    for owner, (key, weight) in enumerate(zip(keys, weights, strict=True)):
        prefix = key + "_"
        target += scale * weight
        i = 0
        while current < target:
            data = (prefix + str(i)).encode()
            entries.append((murmur_hash2_64(data) if murmur else digest(data), owner))
            i += 1
            current += 1
        low = min(low, i)
        high = max(high, i)
    entries.sort(key=lambda e: e[0])
    return [e[0] for e in entries], [e[1] for e in entries], size, low, high


def ring_builder(config: LbConfig, stats):
    """A function (normalized weights, min, max) -> Ring for HashingBalancer."""
    murmur = config.hash_function is HashFunction.MURMUR_HASH_2
    use_hostname = config.use_hostname_for_hashing

    def build(normalized: Normalized, min_weight: float, max_weight: float) -> Ring:
        hosts = tuple(h for h, _ in normalized)
        if not normalized:
            return Ring([], [], hosts)
        keys = tuple(hash_key(h, use_hostname) for h in hosts)
        weights = tuple(w for _, w in normalized)
        args = (keys, weights, min_weight, config.min_ring_size, config.max_ring_size, murmur)
        hashes, owners, size, low, high = _CACHE.get(args, lambda: build_ring_data(*args))
        if stats is not None:
            stats.size.set(size)
            stats.min_hashes_per_host.set(low)
            stats.max_hashes_per_host.set(high)
        return Ring(hashes, owners, hosts)

    return build
