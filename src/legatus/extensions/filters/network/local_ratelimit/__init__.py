"""``envoy.filters.network.local_ratelimit``: a token bucket on new connections.

Each new connection takes a token from the filter config's bucket (Envoy's token bucket:
starts full, refills continuously at ``tokens_per_fill`` per ``fill_interval``). Without one
the connection is closed at once (no flush) and ``local_rate_limit.<stat_prefix>.rate_limited``
counts it. ``runtime_enabled`` (a runtime feature flag, default on) turns the filter off.
The bucket is per worker process (Envoy's is shared by its worker threads): see
docs/network-filters.md. ``share_key`` (one bucket shared by several listeners) is refused.
"""

from __future__ import annotations

import time

from legatus.common.runtime_fraction import FeatureFlag
from legatus.common.token_bucket import TokenBucket
from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported
from legatus.network.filter import CloseType, FilterFactory, FilterStatus, ReadFilter
from legatus.registry import Registry, network_filter
from legatus.stats.store import StatSet, counter
from legatus.upstream.cluster import duration

NAME = "envoy.filters.network.local_ratelimit"
CONFIG_TYPE = "envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit"
_SUPPORTED = ("stat_prefix", "token_bucket", "runtime_enabled")


class LocalRateLimitStats(StatSet):
    """``local_rate_limit.<stat_prefix>.*``."""

    rate_limited = counter()


class LocalRateLimitFilter(ReadFilter):
    __slots__ = ("bucket", "enabled", "read_callbacks", "stats")

    def __init__(self, bucket: TokenBucket, enabled: FeatureFlag, stats: LocalRateLimitStats):
        self.bucket = bucket
        self.enabled = enabled
        self.stats = stats

    def on_new_connection(self) -> FilterStatus:
        if not self.enabled.enabled() or self.bucket.consume():
            return FilterStatus.CONTINUE
        self.stats.rate_limited.inc()
        self.read_callbacks.connection.close(CloseType.NO_FLUSH)
        return FilterStatus.STOP_ITERATION


def _factory(proto, context, path: str) -> FilterFactory:
    check_supported(proto, _SUPPORTED, path, "LocalRateLimit")
    tb = proto.token_bucket
    check_supported(
        tb,
        ("max_tokens", "tokens_per_fill", "fill_interval"),
        join_path(path, "token_bucket"),
        "TokenBucket",
    )
    interval = duration(tb.fill_interval)
    if interval < 0.05:
        raise ConfigError(
            join_path(path, "token_bucket.fill_interval"),
            "local rate limit token bucket fill timer must be >= 50ms",
        )
    loop = context.loop
    bucket = TokenBucket(
        max_tokens=tb.max_tokens,
        tokens_per_fill=tb.tokens_per_fill.value if tb.HasField("tokens_per_fill") else 1,
        fill_interval=interval,
        clock=loop.time if loop is not None else time.monotonic,
    )
    enabled = FeatureFlag(
        proto.runtime_enabled if proto.HasField("runtime_enabled") else None,
        runtime=context.runtime,
        unset=True,
    )
    stats = LocalRateLimitStats(context.store.scope(f"local_rate_limit.{proto.stat_prefix}."))
    return FilterFactory(lambda: LocalRateLimitFilter(bucket, enabled, stats), terminal=False)


def register(registry: Registry) -> None:
    registry.register(network_filter(NAME, CONFIG_TYPE, _factory))
