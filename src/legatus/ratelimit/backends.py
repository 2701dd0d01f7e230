"""Fixed-window counters for the rate limit service: in Redis, or in this process.

A counter is one key per descriptor and window (``cache_key``); a hit adds the request's
hits to it and sets it to expire with its window, as envoyproxy/ratelimit does with
``INCRBY`` + ``EXPIRE`` in one pipeline. Several service instances sharing one Redis share
every limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Increment:
    key: str
    hits: int
    expire: int  # seconds


class BackendError(Exception):
    """The counters could not be read or written (the service answers an error)."""


class MemoryBackend:
    """Counters in a dict; one process only. Expired keys go on the next access to them,
    and a sweep every ``sweep_every`` calls drops the rest."""

    def __init__(self, clock: Callable[[], float] = time.time, sweep_every: int = 10_000) -> None:
        self._clock = clock
        self._counters: dict[str, tuple[int, float]] = {}
        self._calls = 0
        self._sweep_every = sweep_every

    async def increment(self, increments: Sequence[Increment]) -> list[int]:
        now = self._clock()
        counters = self._counters
        out = []
        for inc in increments:
            value, expires = counters.get(inc.key, (0, 0.0))
            if expires <= now:
                value = 0
            value += inc.hits
            counters[inc.key] = (value, now + inc.expire)
            out.append(value)
        self._calls += 1
        if self._calls % self._sweep_every == 0:
            self._counters = {k: v for k, v in counters.items() if v[1] > now}
        return out

    async def close(self) -> None:
        self._counters.clear()


class RedisBackend:
    """Counters in Redis (``redis.asyncio``), one pipeline per request."""

    def __init__(self, url: str) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError:  # pragma: no cover - depends on the installation
            raise BackendError(
                "the redis backend needs the Python package 'redis' (pip install redis)"
            ) from None
        self._redis_errors = _redis_errors()
        self._client = aioredis.Redis.from_url(url)

    async def increment(self, increments: Sequence[Increment]) -> list[int]:
        try:
            pipe = self._client.pipeline(transaction=False)
            for inc in increments:
                pipe.incrby(inc.key, inc.hits)
                pipe.expire(inc.key, inc.expire)
            results = await pipe.execute()
        except self._redis_errors as e:
            raise BackendError(f"redis: {e}") from e
        return [int(v) for v in results[::2]]

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except self._redis_errors as e:
            raise BackendError(f"redis: {e}") from e

    async def close(self) -> None:
        await self._client.aclose()


def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis.exceptions

    return (redis.exceptions.RedisError, OSError)
