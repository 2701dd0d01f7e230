"""The stats store: counters, gauges and histograms under Envoy's names.

Theory of operation. Each process (the main process and every worker) owns
one ``Store``. Components declare their stats once, at config time, through a
``StatSet`` subclass bound to a scope prefix (``cluster.backend.``); the hot
path then does ``stats.upstream_cx_total.inc()``: one attribute load and one
method call, no string building and no dictionary lookup.

Workers never serve stats themselves. They send ``Store.flush()`` deltas to the
main process (counters as increments, gauges as absolute values, histograms as
new bucket counts), which merges them with ``Store.merge_worker()``; see
docs/cross-worker-stats.md for the semantics the admin endpoints expose.
"""

from __future__ import annotations

import enum
import math
from bisect import bisect_left as _bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

# Envoy's default histogram buckets (ms), from stats_config.histogram_bucket_settings.
DEFAULT_BUCKETS: tuple[float, ...] = (
    0.5,
    1,
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1000,
    2500,
    5000,
    10000,
    30000,
    60000,
    300000,
    600000,
    1800000,
    3600000,
)


class Kind(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"
    TEXT_READOUT = "text_readout"


class Counter:
    """A monotonically increasing count.

    A counter is its ``value``: what a flush has not sent yet is ``value - flushed``, and it
    counts as used once it moved. So ``counter.value += 1`` is the whole of ``inc()``, and the
    request path spells it that way where a call would cost more than the increment.
    """

    __slots__ = ("_used", "flushed", "hidden", "name", "value")
    kind = Kind.COUNTER

    def __init__(self, name: str) -> None:
        self.hidden = False
        self.name = name
        self.value = 0
        self.flushed = 0
        self._used = False

    @property
    def used(self) -> bool:
        return self._used or self.value != 0

    @used.setter
    def used(self, used: bool) -> None:
        self._used = used

    def inc(self) -> None:
        self.value += 1

    def add(self, amount: int) -> None:
        self.value += amount
        self._used = True  # an add of 0 marks it used too, as Envoy's

    def take_pending(self) -> int:
        """What changed since the previous call (a worker's flush)."""
        pending = self.value - self.flushed
        self.flushed = self.value
        return pending

    def reset(self) -> None:
        if self.value:
            self._used = True
        self.value = 0
        self.flushed = 0


class Gauge:
    """A value that goes up and down.

    ``worker_values`` holds what each worker last reported for this gauge; the
    value shown is the local one plus their sum (Envoy's Accumulate import mode).
    """

    __slots__ = ("dirty", "hidden", "name", "used", "value", "worker_values")
    kind = Kind.GAUGE

    def __init__(self, name: str) -> None:
        self.hidden = False
        self.name = name
        self.value = 0
        self.used = False
        self.dirty = False
        self.worker_values: dict[int, int] | None = None

    def inc(self) -> None:
        self.value += 1
        self.used = self.dirty = True

    def dec(self) -> None:
        self.value -= 1
        self.used = self.dirty = True

    def add(self, amount: int) -> None:
        self.value += amount
        self.used = self.dirty = True

    def sub(self, amount: int) -> None:
        self.value -= amount
        self.used = self.dirty = True

    def set(self, value: int) -> None:
        self.value = value
        self.used = self.dirty = True

    def total(self) -> int:
        if not self.worker_values:
            return self.value
        return self.value + sum(self.worker_values.values())


class Histogram:
    """Recorded values in Envoy's default buckets, with a running sum and count.

    Buckets hold disjoint counts (a value v lands in the first bucket whose
    upper bound is >= v; past the last bound it only counts in ``count``).
    """

    __slots__ = (
        "_used",
        "bounds",
        "counts",
        "flushed_count",
        "flushed_counts",
        "flushed_sum",
        "hidden",
        "max",
        "min",
        "name",
        "sample_count",
        "sample_sum",
        "unit",
    )
    kind = Kind.HISTOGRAM

    def __init__(self, name: str, unit: str = "ms", bounds: tuple[float, ...] = DEFAULT_BUCKETS):
        self.hidden = False
        self.name = name
        self.unit = unit
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sample_count = 0
        self.sample_sum = 0.0
        self.min = math.inf
        self.max = -math.inf
        # What the previous flush had sent (see take_pending); a flush sends the difference.
        self.flushed_counts: list[int] | None = None
        self.flushed_count = 0
        self.flushed_sum = 0.0
        self._used = False

    @property
    def used(self) -> bool:
        return self._used or self.sample_count != 0

    @used.setter
    def used(self, used: bool) -> None:
        self._used = used

    def record(self, value: float) -> None:
        self.counts[_bisect_left(self.bounds, value)] += 1
        self.sample_count += 1
        self.sample_sum += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    def take_pending(self) -> FlushedHistogram | None:
        """The samples recorded since the previous call (a worker's flush), or None."""
        if self.sample_count == self.flushed_count:
            return None
        counts = self.counts
        before = self.flushed_counts
        pending = FlushedHistogram(
            counts=list(counts)
            if before is None
            else [a - b for a, b in zip(counts, before, strict=True)],
            count=self.sample_count - self.flushed_count,
            sum=self.sample_sum - self.flushed_sum,
            min=self.min,
            max=self.max,
        )
        self.flushed_counts = list(self.counts)
        self.flushed_count = self.sample_count
        self.flushed_sum = self.sample_sum
        return pending

    def merge(
        self,
        counts: list[int],
        count: int,
        total: float,
        low: float = math.inf,
        high: float = -math.inf,
    ) -> None:
        for i, c in enumerate(counts):
            self.counts[i] += c
        self.sample_count += count
        self.sample_sum += total
        self.min = min(self.min, low)
        self.max = max(self.max, high)
        self.used = True

    def reset(self) -> None:
        if self.sample_count:
            self._used = True
        self.counts = [0] * (len(self.bounds) + 1)
        self.flushed_counts = None
        self.flushed_count = 0
        self.flushed_sum = 0.0
        self.sample_count = 0
        self.sample_sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    def cumulative(self) -> list[int]:
        """Cumulative counts per bound (Prometheus ``le`` buckets), without +Inf."""
        out, running = [], 0
        for c in self.counts[:-1]:
            running += c
            out.append(running)
        return out

    def quantile(self, q: float) -> float:
        """An estimate of quantile ``q``; nan if empty.

        Linear interpolation inside the bucket that holds the rank, with each
        bucket narrowed to the exact range of recorded values (so P0 and P100
        are the true minimum and maximum, and one sample reads as itself).
        """
        if self.sample_count == 0:
            return math.nan
        rank = q * self.sample_count
        running = 0
        lower = 0.0
        for i, c in enumerate(self.counts):
            upper = self.bounds[i] if i < len(self.bounds) else max(self.max, lower)
            if c and running + c >= rank:
                lo, hi = max(lower, self.min), min(upper, self.max)
                if hi < lo:
                    lo = hi
                return lo + (hi - lo) * ((rank - running) / c)
            running += c
            lower = upper
        return self.max


class TextReadout:
    __slots__ = ("dirty", "hidden", "name", "used", "value")
    kind = Kind.TEXT_READOUT

    def __init__(self, name: str) -> None:
        self.hidden = False
        self.name = name
        self.value = ""
        self.used = False
        self.dirty = False

    def set(self, value: str) -> None:
        self.value = value
        self.used = self.dirty = True


Stat = Counter | Gauge | Histogram | TextReadout
_FACTORIES = {
    Kind.COUNTER: Counter,
    Kind.GAUGE: Gauge,
    Kind.HISTOGRAM: Histogram,
    Kind.TEXT_READOUT: TextReadout,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class FlushedHistogram:
    counts: list[int]
    count: int
    sum: float
    min: float
    max: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Flush:
    """What a worker sends the main process: changes since its previous flush.

    ``declared`` lists (name, kind, hidden) for stats created since the previous
    flush, so the main process shows declared stats at zero as Envoy does.
    """

    declared: list[tuple[str, str, bool]]
    counters: dict[str, int]
    gauges: dict[str, int]
    histograms: dict[str, FlushedHistogram]
    text_readouts: dict[str, str]
    used: list[str]


class Store:
    """All stats of one process, by full name."""

    def __init__(self) -> None:
        self._stats: dict[str, Stat] = {}
        self._undeclared: list[Stat] = []
        self._unflushed_used: set[str] = set()

    # Declaration --------------------------------------------------------------

    def _get(self, name: str, kind: Kind, hidden: bool = False) -> Stat:
        stat = self._stats.get(name)
        if stat is None:
            stat = _FACTORIES[kind](name)
            stat.hidden = hidden
            self._stats[name] = stat
            self._undeclared.append(stat)
        elif stat.kind is not kind:
            raise ValueError(f"stat {name} is a {stat.kind.value}, not a {kind.value}")
        return stat

    def counter(self, name: str, *, hidden: bool = False) -> Counter:
        """A counter; ``hidden`` ones (per-host stats for /clusters) stay out of /stats."""
        return self._get(name, Kind.COUNTER, hidden)  # type: ignore[return-value]

    def gauge(self, name: str, *, hidden: bool = False) -> Gauge:
        return self._get(name, Kind.GAUGE, hidden)  # type: ignore[return-value]

    def histogram(self, name: str) -> Histogram:
        return self._get(name, Kind.HISTOGRAM)  # type: ignore[return-value]

    def text_readout(self, name: str) -> TextReadout:
        return self._get(name, Kind.TEXT_READOUT)  # type: ignore[return-value]

    def scope(self, prefix: str) -> Scope:
        return Scope(self, prefix)

    # Reading -------------------------------------------------------------------

    def get(self, name: str) -> Stat | None:
        return self._stats.get(name)

    def __iter__(self) -> Iterator[Stat]:
        return iter(self._stats.values())

    def __len__(self) -> int:
        return len(self._stats)

    def value(self, name: str) -> int | float | str | None:
        """The value an operator sees for ``name`` (gauges include the workers' share)."""
        stat = self._stats.get(name)
        if stat is None:
            return None
        if isinstance(stat, Gauge):
            return stat.total()
        if isinstance(stat, Histogram):
            return stat.sample_count
        return stat.value

    def reset_counters(self) -> None:
        """Admin /reset_counters: counters (and histograms) to zero; gauges keep their value."""
        for stat in self._stats.values():
            if isinstance(stat, Counter | Histogram):
                stat.reset()

    # Worker -> main ------------------------------------------------------------

    def flush(self) -> Flush:
        """Changes since the previous flush; clears what it reports."""
        declared = [(s.name, s.kind.value, s.hidden) for s in self._undeclared]
        self._undeclared = []
        counters: dict[str, int] = {}
        gauges: dict[str, int] = {}
        histograms: dict[str, FlushedHistogram] = {}
        texts: dict[str, str] = {}
        used: list[str] = []
        for stat in self._stats.values():
            if isinstance(stat, Counter):
                if stat.value != stat.flushed:
                    counters[stat.name] = stat.take_pending()
            elif isinstance(stat, Gauge):
                if stat.dirty:
                    gauges[stat.name] = stat.value
                    stat.dirty = False
            elif isinstance(stat, Histogram):
                if stat.sample_count != stat.flushed_count:
                    histograms[stat.name] = stat.take_pending()
            elif stat.dirty:
                texts[stat.name] = stat.value
                stat.dirty = False
            if stat.used and stat.name not in self._unflushed_used:
                self._unflushed_used.add(stat.name)
                used.append(stat.name)
        return Flush(
            declared=declared,
            counters=counters,
            gauges=gauges,
            histograms=histograms,
            text_readouts=texts,
            used=used,
        )

    def merge_worker(self, worker: int, flush: Flush) -> None:
        """Fold one worker's flush into this (the main process's) store. A stat removed
        here meanwhile (its cluster went away) is not brought back by a late flush."""
        for name, kind, hidden in flush.declared:
            self._get(name, Kind(kind), hidden)
        stats = self._stats
        for name, delta in flush.counters.items():
            counter = stats.get(name)
            if counter is not None:
                counter.value += delta  # type: ignore[union-attr]
        for name, value in flush.gauges.items():
            gauge = stats.get(name)
            if gauge is None:
                continue
            if gauge.worker_values is None:  # type: ignore[union-attr]
                gauge.worker_values = {}  # type: ignore[union-attr]
            gauge.worker_values[worker] = value  # type: ignore[union-attr]
        for name, h in flush.histograms.items():
            histogram = stats.get(name)
            if histogram is not None:
                histogram.merge(h.counts, h.count, h.sum, h.min, h.max)  # type: ignore[union-attr]
        for name, text in flush.text_readouts.items():
            readout = stats.get(name)
            if readout is not None:
                readout.value = text  # type: ignore[union-attr]
        for name in flush.used:
            stat = stats.get(name)
            if stat is not None:
                stat.used = True

    def remove_prefix(self, prefix: str, keep: Callable[[str], bool] = lambda name: False) -> int:
        """Drop every stat whose name starts with ``prefix`` (unless ``keep(name)``), as Envoy
        drops a removed cluster's scope. Objects still held keep counting, unseen."""
        gone = [n for n in self._stats if n.startswith(prefix) and not keep(n)]
        for name in gone:
            del self._stats[name]
            self._unflushed_used.discard(name)
        if gone:
            dropped = set(gone)
            self._undeclared = [s for s in self._undeclared if s.name not in dropped]
        return len(gone)

    def forget_worker(self, worker: int) -> None:
        """A worker is gone: its gauges (connections it held) no longer count."""
        for stat in self._stats.values():
            if isinstance(stat, Gauge) and stat.worker_values:
                stat.worker_values.pop(worker, None)


class Scope:
    """A name prefix in a store: ``store.scope("cluster.a.").counter("upstream_cx_total")``."""

    __slots__ = ("prefix", "store")

    def __init__(self, store: Store, prefix: str) -> None:
        if prefix and not prefix.endswith("."):
            prefix += "."
        self.store = store
        self.prefix = prefix

    def counter(self, name: str) -> Counter:
        return self.store.counter(self.prefix + name)

    def gauge(self, name: str) -> Gauge:
        return self.store.gauge(self.prefix + name)

    def histogram(self, name: str) -> Histogram:
        return self.store.histogram(self.prefix + name)

    def text_readout(self, name: str) -> TextReadout:
        return self.store.text_readout(self.prefix + name)

    def scope(self, prefix: str) -> Scope:
        return Scope(self.store, self.prefix + prefix)


class _Declared:
    __slots__ = ("kind", "name")

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name


def counter() -> Counter:
    """Declare a counter in a StatSet body."""
    return _Declared(Kind.COUNTER)  # type: ignore[return-value]


def gauge() -> Gauge:
    """Declare a gauge in a StatSet body."""
    return _Declared(Kind.GAUGE)  # type: ignore[return-value]


def histogram() -> Histogram:
    """Declare a histogram in a StatSet body."""
    return _Declared(Kind.HISTOGRAM)  # type: ignore[return-value]


class StatSet:
    """A component's stats, declared as class attributes and created in one scope.

    class TcpProxyStats(StatSet):
        downstream_cx_total = counter()
        upstream_flush_active = gauge()

    stats = TcpProxyStats(store.scope("tcp.ingress."))
    stats.downstream_cx_total.inc()
    """

    _declared: tuple[_Declared, ...] = ()

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        declared = [v for v in vars(cls).values() if isinstance(v, _Declared)]
        cls._declared = tuple(getattr(cls, "_declared", ())) + tuple(declared)

    def __init__(self, scope: Scope, *, hidden: bool = False) -> None:
        for d in self._declared:
            stat = scope.store._get(scope.prefix + d.name, d.kind, hidden)
            object.__setattr__(self, d.name, stat)

    @classmethod
    def names(cls) -> Iterable[str]:
        return (d.name for d in cls._declared)
