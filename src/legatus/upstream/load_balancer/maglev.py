"""MAGLEV: Envoy's Maglev lookup table (``table_size`` entries, a prime, 65537 by default).

Hosts are sorted by key (address, hostname or ``envoy.lb`` ``hash_key``); each has an
``offset = xxHash64(key, seed 0) % size`` and a ``skip = xxHash64(key, seed 1) % (size - 1)
+ 1``, and its n-th preferred slot is ``(offset + skip * n) % size``. Rounds over the hosts
fill the table: in round ``r`` a host takes its next free preferred slot when
``r * weight >= its target`` (the target grows by the largest weight each time it takes
one), so hosts get slots in proportion to their weights. A request goes to
``table[hash % size]``; a retry attempt ``a`` looks up ``hash ^ (2**64 - a)`` instead.
"""

from __future__ import annotations

from array import array

import xxhash

from legatus.upstream.host import Host
from legatus.upstream.lb_config import LbConfig
from legatus.upstream.load_balancer.hashing import Normalized, TableCache, hash_key

_CACHE = TableCache()
_MASK = (1 << 64) - 1


class MaglevTable:
    __slots__ = ("_hosts", "_size", "_table")

    def __init__(self, table, hosts: tuple[Host, ...], size: int) -> None:
        self._table = table  # slot -> index in hosts
        self._hosts = hosts
        self._size = size

    def choose(self, h: int, attempt: int = 0) -> Host | None:
        if not self._hosts:
            return None
        if attempt:
            h ^= (_MASK - attempt + 1) & _MASK
        return self._hosts[self._table[h % self._size]]


def build_table(keys: tuple[str, ...], weights: tuple[float, ...], max_weight: float, size: int):
    """(table of host indices, min and max slots per host); hosts indexed in ``keys`` order."""
    n = len(keys)
    digest = xxhash.xxh64_intdigest
    encoded = [k.encode() for k in keys]
    offsets = [digest(k) % size for k in encoded]
    skips = [digest(k, 1) % (size - 1) + 1 for k in encoded]
    nexts = [0] * n
    targets = [0.0] * n
    counts = [0] * n
    table = [-1] * size
    filled = 0
    iteration = 1
    while filled < size:
        for i in range(n):
            if filled >= size:
                break
            if iteration * weights[i] < targets[i]:
                continue
            targets[i] += max_weight
            offset, skip, nxt = offsets[i], skips[i], nexts[i]
            c = (offset + skip * nxt) % size
            while table[c] >= 0:
                nxt += 1
                c = (offset + skip * nxt) % size
            table[c] = i
            nexts[i] = nxt + 1
            counts[i] += 1
            filled += 1
        iteration += 1
    return array("I", table), min(counts), max(counts)


def maglev_builder(config: LbConfig, stats):
    use_hostname = config.use_hostname_for_hashing
    size = config.table_size

    def build(normalized: Normalized, min_weight: float, max_weight: float) -> MaglevTable:
        if not normalized:
            return MaglevTable(array("I"), (), size)
        # Sorted by key: the table must not depend on the order hosts arrive in.
        keyed = sorted((hash_key(h, use_hostname), i, h, w) for i, (h, w) in enumerate(normalized))
        keys = tuple(k for k, _, _, _ in keyed)
        weights = tuple(w for _, _, _, w in keyed)
        hosts = tuple(h for _, _, h, _ in keyed)
        args = (keys, weights, max_weight, size)
        table, low, high = _CACHE.get(args, lambda: build_table(*args))
        if stats is not None:
            stats.min_entries_per_host.set(low)
            stats.max_entries_per_host.set(high)
        return MaglevTable(table, hosts, size)

    return build
