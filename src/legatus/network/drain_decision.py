"""Whether a connection should close now because of a drain: Envoy's ``Network::DrainDecision``.

A drain reaches a listener as a ``DrainEvent``: when its drain sequence began, how long it lasts
(``--drain-time-s``) and how it sheds connections (``--drain-strategy``). A listener is reached
by its own drain (removed or replaced by LDS, or some of its filter chains by an in-place
update) and by the server's (admin ``/drain_listeners``). Every connection of the listener
shares its ``ListenerDrainDecision``, and a filter that can close gracefully asks it when it
could: the HTTP connection manager once per response (``connection: close``, then the close).
Nothing is pushed to idle connections: what is still open when the drain time is over is
closed by whoever started the drain.

The answer, as Envoy 1.40 gives it (measured against the real binary):

- the server fails health checks (admin ``/healthcheck/fail``) and the listener's
  ``drain_type`` is ``DEFAULT``: always (polled, so ``/healthcheck/ok`` takes it back);
- no drain has reached the listener: never;
- ``immediate``: always;
- ``gradual``: with probability ``floor(elapsed) / ceil(drain_time / 2)`` (whole seconds since
  the drain began), then always once that reaches 1: the ramp runs over the first half of the
  drain time, so with ``--drain-time-s 10`` no response closes in the first second, one in
  five in the second, all of them after five seconds.

The first drain to reach a listener is the one it follows (a later one, e.g. the server's
drain while the listener was already draining for LDS, does not restart the ramp). Times are
``time.monotonic()``: one clock for every process of the host, so a drain begun in the main
process ramps the same in every worker.
"""

from __future__ import annotations

import enum
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_pb2

__all__ = [
    "DrainDirection",
    "DrainEvent",
    "DrainStrategy",
    "ListenerDrainDecision",
    "listener_scope",
    "should_drain_close",
]

# The share of the drain time over which Envoy's HTTP connection manager ramps (see above).
HTTP_RAMP_FACTOR = 0.5


class DrainStrategy(enum.Enum):
    """``--drain-strategy``."""

    GRADUAL = "gradual"  # the chance to drain-close grows with the time drained
    IMMEDIATE = "immediate"  # every connection drain-closes at its next chance


class DrainDirection(enum.IntEnum):
    """Which listeners a server drain reaches (Envoy's ``Network::DrainDirection``): a drain of
    direction D reaches a listener whose scope is D or lower."""

    NONE = 0
    INBOUND_ONLY = 1  # /drain_listeners?inboundonly: listeners of traffic_direction INBOUND
    ALL = 2


def listener_scope(proto: listener_pb2.Listener) -> DrainDirection:
    """The lowest server drain direction that reaches a listener."""
    if proto.traffic_direction == base_pb2.INBOUND:
        return DrainDirection.INBOUND_ONLY
    return DrainDirection.ALL


@dataclass(frozen=True, slots=True, kw_only=True)
class DrainEvent:
    """One drain sequence, as every connection it reaches sees it."""

    start: float  # time.monotonic() when the sequence began
    drain_time: float  # seconds (--drain-time-s)
    strategy: DrainStrategy

    def __post_init__(self) -> None:
        if self.drain_time < 0:
            raise ValueError(f"drain_time must be >= 0, got {self.drain_time}")

    @property
    def deadline(self) -> float:
        return self.start + self.drain_time


def should_drain_close(event: DrainEvent, now: float, rng: random.Random) -> bool:
    """Envoy 1.40's answer for a connection a drain has reached (see the module doc)."""
    if event.strategy is DrainStrategy.IMMEDIATE:
        return True
    elapsed = int(now - event.start) if now > event.start else 0
    ramp = math.ceil(event.drain_time * HTTP_RAMP_FACTOR)
    if elapsed >= ramp:  # also a drain time of 0
        return True
    return elapsed > rng.randrange(ramp)


class _NeverFailed:
    """The health of a listener that failing health checks do not drain."""

    __slots__ = ()
    failed = False


_NEVER_FAILED = _NeverFailed()


class ListenerDrainDecision:
    """The drain decision the connections of one listener (in one worker) share.

    ``health``: the worker's ServerHealth, or None when health-check failure does not drain
    this listener (``drain_type: MODIFY_ONLY``, or no worker)."""

    __slots__ = ("_clock", "_health", "_rng", "event", "scope")

    def __init__(
        self,
        *,
        scope: DrainDirection,
        health: Any,
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.scope = scope
        self.event: DrainEvent | None = None
        self._health = _NEVER_FAILED if health is None else health
        self._rng = rng
        self._clock = clock

    @classmethod
    def for_listener(
        cls,
        proto: listener_pb2.Listener,
        *,
        health: Any,
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
    ) -> ListenerDrainDecision:
        modify_only = proto.drain_type == listener_pb2.Listener.MODIFY_ONLY
        return cls(
            scope=listener_scope(proto),
            health=None if modify_only else health,
            rng=rng,
            clock=clock,
        )

    @property
    def draining(self) -> bool:
        return self.event is not None

    def notify(self, event: DrainEvent) -> bool:
        """A drain reached the listener; the first one is kept. Whether it was taken."""
        if self.event is not None:
            return False
        self.event = event
        return True

    def reaches(self, direction: DrainDirection) -> bool:
        """Whether a server drain of ``direction`` reaches this listener."""
        return direction is not DrainDirection.NONE and self.scope <= direction

    def drain_close(self) -> bool:
        """Whether the connection asking should close now (Envoy's ``drainClose()``). Asked
        once per HTTP response: the common answer (no drain) comes first."""
        event = self.event
        if event is None:
            return self._health.failed
        return self._health.failed or should_drain_close(event, self._clock(), self._rng)
