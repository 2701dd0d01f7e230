"""Envoy's earliest-deadline-first scheduler: weighted round robin with float weights.

Each entry is due at ``now + 1 / weight``; a pick takes the entry due first (ties: the one
added first), moves the clock to its deadline and puts it back with a fresh deadline, its
weight asked again at that moment (least request makes the weight depend on the host's
active requests). Over any window the picks follow the weights, spread out evenly.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class EdfScheduler(Generic[T]):
    __slots__ = ("_order", "_queue", "_weight")

    def __init__(self, entries: Sequence[T], weight: Callable[[T], float], picks: int = 0) -> None:
        """``picks``: how many picks to make at once, so that schedulers built on different
        workers from the same hosts do not all start with the same host (Envoy's
        ``createWithPicks``)."""
        self._weight = weight
        self._queue = [(1.0 / weight(e), i, e) for i, e in enumerate(entries)]
        heapq.heapify(self._queue)
        self._order = len(self._queue)
        for _ in range(picks if self._queue else 0):
            self.pick()

    def pick(self) -> T | None:
        queue = self._queue
        if not queue:
            return None
        deadline, _, entry = queue[0]
        order = self._order
        self._order = order + 1
        heapq.heapreplace(queue, (deadline + 1.0 / self._weight(entry), order, entry))
        return entry
