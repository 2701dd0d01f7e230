"""A token bucket, as Envoy's local rate limiters use it (``AtomicTokenBucketImpl``).

The bucket starts full (``max_tokens``) and refills continuously at
``tokens_per_fill / fill_interval`` tokens a second, never above ``max_tokens``. Nothing
runs on a timer: the level is brought up to date from the clock when a token is asked
for, so an idle bucket costs nothing. The clock is injected (the event loop's ``time``).

Envoy keeps one bucket per filter config shared by its worker threads; legatus keeps one
per worker process (see docs/http-filters.md, "Local rate limit").
"""

from __future__ import annotations

import math
from collections.abc import Callable

# Envoy's floor on the fill rate: one token a year.
_MIN_FILL_RATE = 1.0 / (365 * 24 * 60 * 60)


class TokenBucket:
    __slots__ = ("_clock", "_last", "_limit", "_tokens", "fill_rate", "max_tokens")

    def __init__(
        self,
        *,
        max_tokens: int,
        tokens_per_fill: int,
        fill_interval: float,
        clock: Callable[[], float],
    ) -> None:
        if fill_interval <= 0:
            raise ValueError("fill_interval must be positive")
        self.max_tokens = max_tokens
        self._limit = float(max_tokens)
        self.fill_rate = max(tokens_per_fill / fill_interval, _MIN_FILL_RATE)
        self._clock = clock
        self._tokens = float(max_tokens)
        self._last = clock()

    def _refill(self) -> float:
        now = self._clock()
        tokens = self._tokens
        if tokens < self.max_tokens:
            tokens = min(tokens + (now - self._last) * self.fill_rate, float(self.max_tokens))
            self._tokens = tokens
        self._last = now
        return tokens

    def consume(self, tokens: float = 1.0) -> bool:
        """Take ``tokens`` if the bucket holds that many; False (and take none) if not.
        (``_refill`` inlined: this runs for every request through a local rate limit. A
        full bucket needs no test: ``min`` keeps it at exactly ``max_tokens``.)"""
        now = self._clock()
        have = min(self._tokens + (now - self._last) * self.fill_rate, self._limit)
        self._last = now
        if have < tokens:
            self._tokens = have
            return False
        self._tokens = have - tokens
        return True

    def remaining_tokens(self) -> int:
        """Whole tokens left now (``x-ratelimit-remaining``)."""
        return int(self._refill())

    def next_token_ms(self) -> int:
        """Milliseconds until a token is available: 0 if one is, else the time one token
        takes to refill (Envoy's estimate, which ignores the fraction already there)."""
        if self._refill() >= 1:
            return 0
        return math.ceil(1000 / self.fill_rate)

    def reset_seconds(self) -> int:
        """``x-ratelimit-reset``: whole seconds until the next token (Envoy truncates)."""
        return self.next_token_ms() // 1000
