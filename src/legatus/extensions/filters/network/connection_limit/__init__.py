"""``envoy.filters.network.connection_limit``: at most ``max_connections`` at once.

A new connection past the limit counts ``connection_limit.<stat_prefix>.limited_connections``
and is closed (no flush): at once, or after ``delay`` (its bytes are dropped meanwhile, as
Envoy does, so a client that retries at once is slowed down). The others count in the
``active_connections`` gauge until they close. ``runtime_enabled`` (a runtime feature flag,
default on) turns the filter off.

The count is per worker process: Envoy's is shared by its worker threads, so with several
workers legatus admits up to ``max_connections`` per worker (see docs/network-filters.md).
The gauge, summed over the workers, is the listener's total. Unlike Envoy 1.40, a connection
closed by an earlier filter before this one saw it is not subtracted (Envoy's gauge then
drops below zero).
"""

from __future__ import annotations

from legatus.common.runtime_fraction import FeatureFlag
from legatus.config.supported import check_supported
from legatus.network.filter import (
    CloseType,
    ConnectionEvent,
    FilterFactory,
    FilterStatus,
    ReadFilter,
)
from legatus.registry import Registry, network_filter
from legatus.stats.store import StatSet, counter, gauge
from legatus.upstream.cluster import duration

NAME = "envoy.filters.network.connection_limit"
CONFIG_TYPE = "envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit"
_SUPPORTED = ("stat_prefix", "max_connections", "delay", "runtime_enabled")


class ConnectionLimitStats(StatSet):
    """``connection_limit.<stat_prefix>.*``."""

    limited_connections = counter()
    active_connections = gauge()


class ConnectionLimitConfig:
    """The limit, the count of this process's connections, the stats."""

    __slots__ = ("active", "delay", "enabled", "loop", "max_connections", "stats")

    def __init__(self, *, max_connections: int, delay: float, enabled, stats, loop) -> None:
        self.max_connections = max_connections
        self.delay = delay
        self.enabled = enabled
        self.stats = stats
        self.loop = loop
        self.active = 0


class ConnectionLimitFilter(ReadFilter):
    __slots__ = ("config", "counted", "read_callbacks", "rejected", "timer")

    def __init__(self, config: ConnectionLimitConfig) -> None:
        self.config = config
        self.counted = False
        self.rejected = False
        self.timer = None

    def on_new_connection(self) -> FilterStatus:
        config = self.config
        if not config.enabled.enabled():
            return FilterStatus.CONTINUE
        connection = self.read_callbacks.connection
        connection.add_connection_callbacks(self)
        if config.active >= config.max_connections:
            self.rejected = True
            config.stats.limited_connections.inc()
            if config.delay > 0:
                self.timer = config.loop.call_later(config.delay, self._close)
            else:
                connection.close(CloseType.NO_FLUSH)
            return FilterStatus.STOP_ITERATION
        self.counted = True
        config.active += 1
        config.stats.active_connections.inc()
        return FilterStatus.CONTINUE

    def on_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        return FilterStatus.STOP_ITERATION if self.rejected else FilterStatus.CONTINUE

    def _close(self) -> None:
        self.timer = None
        self.read_callbacks.connection.close(CloseType.NO_FLUSH)

    # Connection callbacks
    def on_event(self, event: ConnectionEvent) -> None:
        if event is ConnectionEvent.CONNECTED:
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.counted:
            self.counted = False
            self.config.active -= 1
            self.config.stats.active_connections.dec()

    def on_above_write_buffer_high_watermark(self) -> None:
        pass

    def on_below_write_buffer_low_watermark(self) -> None:
        pass


def _factory(proto, context, path: str) -> FilterFactory:
    check_supported(proto, _SUPPORTED, path, "ConnectionLimit")
    config = ConnectionLimitConfig(
        max_connections=proto.max_connections.value,
        delay=duration(proto.delay) if proto.HasField("delay") else 0.0,
        enabled=FeatureFlag(
            proto.runtime_enabled if proto.HasField("runtime_enabled") else None,
            runtime=context.runtime,
            unset=True,
        ),
        stats=ConnectionLimitStats(context.store.scope(f"connection_limit.{proto.stat_prefix}.")),
        loop=context.loop,
    )
    return FilterFactory(lambda: ConnectionLimitFilter(config), terminal=False)


def register(registry: Registry) -> None:
    registry.register(network_filter(NAME, CONFIG_TYPE, _factory))
