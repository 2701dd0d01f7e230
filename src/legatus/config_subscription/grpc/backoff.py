"""When to try the control plane again: Envoy's jittered exponential back-off.

After a stream fails, the next attempt waits a random time in ``[0, interval)``; the
interval starts at ``base_interval`` and doubles after each failure, never above
``max_interval``. A response on the stream resets it (Envoy's
``JitteredExponentialBackOffStrategy``, reset in ``GrpcStream::onReceiveMessage``). xDS
streams use a 500 ms base and a 30 s cap unless the gRPC service's ``retry_policy`` says
otherwise (see ``api_config``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["BackOffSettings", "JitteredBackOff"]


@dataclass(frozen=True, slots=True, kw_only=True)
class BackOffSettings:
    """Seconds; Envoy's defaults for xDS (``SubscriptionFactory::RetryInitialDelayMs`` and
    ``RetryMaxDelayMs``)."""

    base_interval: float = 0.5
    max_interval: float = 30.0

    def __post_init__(self) -> None:
        if self.base_interval <= 0:
            raise ValueError("base_interval must be positive")
        if self.max_interval < self.base_interval:
            raise ValueError("max_interval must be greater than or equal to the base_interval")


class JitteredBackOff:
    """The delays between attempts; ``random()`` returns a float in [0, 1)."""

    __slots__ = ("_interval", "_random", "settings")

    def __init__(self, settings: BackOffSettings, random: Callable[[], float]) -> None:
        self.settings = settings
        self._random = random
        self._interval = settings.base_interval

    def next_delay(self) -> float:
        interval = self._interval
        self._interval = min(interval * 2, self.settings.max_interval)
        return min(self._random() * interval, self.settings.max_interval)

    def reset(self) -> None:
        self._interval = self.settings.base_interval
