"""The server's drain sequences, in the main process: Envoy's ``DrainManagerImpl``.

Admin ``/drain_listeners`` starts a drain sequence in a direction (``ALL``, or
``INBOUND_ONLY`` with ``?inboundonly``). A sequence lasts ``--drain-time-s``; its
``DrainEvent`` goes to every worker, whose listeners in that direction hand it to their
connections' drain decisions (``legatus.network.drain_decision``), and the callbacks given when
it began run when it ends (``?graceful`` stops the listeners then).

As in Envoy 1.40, measured against the real binary:

- a sequence already covering a direction (``ALL`` covers ``INBOUND_ONLY``) is not started
  again: the callback waits for it to end, or runs at once when the sequence of that very
  direction has already ended (or never ran: ``INBOUND_ONLY`` while ``ALL`` drains);
- an ``ALL`` sequence started while an ``INBOUND_ONLY`` one runs is a new sequence (a new
  start for the listeners it newly reaches);
- the end callbacks wait in one queue, run by whichever sequence ends first: after
  ``?graceful&inboundonly`` then ``?graceful``, every listener stops when the inbound
  sequence ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from legatus.network.drain_decision import DrainDirection, DrainEvent, DrainStrategy

__all__ = ["DrainManager"]


class DrainManager:
    def __init__(
        self,
        *,
        drain_time: float,
        strategy: DrainStrategy,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.drain_time = drain_time
        self.strategy = strategy
        self._loop = loop
        self._clock = clock
        self._direction = DrainDirection.NONE  # the widest sequence started
        self.events: dict[DrainDirection, DrainEvent] = {}  # every sequence started
        self._timers: dict[DrainDirection, asyncio.TimerHandle] = {}  # those still running
        self._on_complete: list[Callable[[], None]] = []

    def draining(self, direction: DrainDirection = DrainDirection.NONE) -> bool:
        """Whether a sequence covering ``direction`` has started (NONE: any sequence)."""
        return self._direction is not DrainDirection.NONE and direction <= self._direction

    def start_drain_sequence(
        self, direction: DrainDirection, on_complete: Callable[[], None]
    ) -> DrainEvent | None:
        """Start draining ``direction``; ``on_complete`` runs at the end. Returns the new
        sequence's event for the workers, or None when one already covers ``direction``."""
        if direction is DrainDirection.NONE:
            raise ValueError("a drain sequence needs a direction")
        if self.draining(direction):
            if direction in self._timers:
                self._on_complete.append(on_complete)
            else:
                on_complete()
            return None
        event = DrainEvent(start=self._clock(), drain_time=self.drain_time, strategy=self.strategy)
        self.events[direction] = event
        self._direction = direction
        self._timers[direction] = self._loop.call_later(self.drain_time, self._end, direction)
        self._on_complete.append(on_complete)
        return event

    def _end(self, direction: DrainDirection) -> None:
        del self._timers[direction]
        callbacks, self._on_complete = self._on_complete, []
        for callback in callbacks:
            callback()

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._on_complete.clear()
