"""``envoy.filters.network.ratelimit``: global rate limiting of connections.

When the first bytes of a connection arrive, one ``ShouldRateLimit`` call (``domain``, the
configured ``descriptors``, ``timeout`` 200 ms by default) decides for the connection; bytes
are held by the filter meanwhile. OK (or a service error without ``failure_mode_deny``):
the held bytes go on to the next filters and the filter steps aside. OVER_LIMIT (or an
error with ``failure_mode_deny``): the connection is closed at once and ``cx_closed``
counts it. Stats ``ratelimit.<stat_prefix>.{total,ok,over_limit,error,
failure_mode_allowed,cx_closed}`` and the gauge ``active`` (calls in flight), as Envoy's.

Descriptor values are literals: a value with a ``%`` (Envoy reads those as substitution
formatters) and the per-descriptor ``limit`` override are refused by field path.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from envoy.service.ratelimit.v3 import rls_pb2

from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported
from legatus.network.filter import (
    CloseType,
    ConnectionEvent,
    FilterFactory,
    FilterStatus,
    ReadFilter,
)
from legatus.registry import Registry, network_filter
from legatus.router.rate_limit_policy import Descriptor
from legatus.stats.store import StatSet, counter, gauge

if TYPE_CHECKING:  # (grpc is imported when a configuration has this filter)
    from legatus.grpc.client import UnaryClient

NAME = "envoy.filters.network.ratelimit"
CONFIG_TYPE = "envoy.extensions.filters.network.ratelimit.v3.RateLimit"
_SUPPORTED = ("stat_prefix", "domain", "descriptors", "timeout", "failure_mode_deny",
              "rate_limit_service")  # fmt: skip
_DEFAULT_TIMEOUT = 0.200
_OVER_LIMIT = rls_pb2.RateLimitResponse.OVER_LIMIT


class NetworkRateLimitStats(StatSet):
    total = counter()
    error = counter()
    over_limit = counter()
    ok = counter()
    cx_closed = counter()
    active = gauge()
    failure_mode_allowed = counter()


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkRateLimitConfig:
    request: rls_pb2.RateLimitRequest
    timeout: float
    failure_mode_deny: bool
    client: UnaryClient
    stats: NetworkRateLimitStats
    loop: object


class _State:
    NOT_STARTED, CALLING, DONE = range(3)


class NetworkRateLimitFilter(ReadFilter):
    __slots__ = ("config", "held", "held_end", "read_callbacks", "state", "task")

    def __init__(self, config: NetworkRateLimitConfig) -> None:
        self.config = config
        self.state = _State.NOT_STARTED
        self.held: list[bytes] = []
        self.held_end = False
        self.task: asyncio.Task | None = None

    def on_new_connection(self) -> FilterStatus:
        self.read_callbacks.connection.add_connection_callbacks(self)
        return FilterStatus.CONTINUE

    def on_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        state = self.state
        if state == _State.DONE:
            return FilterStatus.CONTINUE
        self.held.append(data)
        self.held_end = self.held_end or end_stream
        if state == _State.NOT_STARTED:
            self.state = _State.CALLING
            stats = self.config.stats
            stats.total.inc()
            stats.active.inc()
            self.task = self.config.loop.create_task(self._check())
        return FilterStatus.STOP_ITERATION

    async def _check(self) -> None:
        from legatus.extensions.filters.http.ratelimit.filter import should_rate_limit

        config = self.config
        response = await should_rate_limit(config.client, config.request, config.timeout)
        self.task = None
        self._on_complete(response)

    def _on_complete(self, response) -> None:
        config = self.config
        stats = config.stats
        stats.active.dec()
        self.state = _State.DONE
        connection = self.read_callbacks.connection
        close = False
        if response is None:
            stats.error.inc()
            if config.failure_mode_deny:
                close = True
            else:
                stats.failure_mode_allowed.inc()
        elif response.overall_code == _OVER_LIMIT:
            stats.over_limit.inc()
            close = True
        else:
            stats.ok.inc()
        if close:
            stats.cx_closed.inc()
            self.held = []
            connection.close(CloseType.NO_FLUSH)
            return
        held, self.held = self.held, []
        data = b"".join(held)
        if data or self.held_end:
            self.read_callbacks.inject_read_data_to_filter_chain(data, self.held_end)

    # Connection callbacks: a connection that goes away cancels the call.
    def on_event(self, event: ConnectionEvent) -> None:
        if event is ConnectionEvent.CONNECTED:
            return
        task = self.task
        if task is not None:
            self.task = None
            task.cancel()
            self.config.stats.active.dec()
            self.state = _State.DONE

    def on_above_write_buffer_high_watermark(self) -> None:
        pass

    def on_below_write_buffer_low_watermark(self) -> None:
        pass


def _descriptors(proto, path: str) -> list[Descriptor]:
    dpath = join_path(path, "descriptors")
    if not proto.descriptors:
        raise ConfigError(dpath, "value must contain at least 1 item(s)")
    out = []
    for i, d in enumerate(proto.descriptors):
        ipath = f"{dpath}[{i}]"
        check_supported(d, ("entries", "hits_addend"), ipath, "RateLimitDescriptor")
        if not d.entries:
            raise ConfigError(join_path(ipath, "entries"), "value must contain at least 1 item(s)")
        entries = []
        for j, e in enumerate(d.entries):
            epath = f"{join_path(ipath, 'entries')}[{j}]"
            if not e.key:
                raise ConfigError(
                    join_path(epath, "key"), "value length must be at least 1 characters"
                )
            if not e.value:
                raise ConfigError(
                    join_path(epath, "value"), "value length must be at least 1 characters"
                )
            if "%" in e.value:
                raise ConfigError(
                    join_path(epath, "value"),
                    "substitution formatters in descriptor values are not supported by legatus yet",
                )
            entries.append((e.key, e.value))
        hits = d.hits_addend.value if d.HasField("hits_addend") else None
        out.append(Descriptor(tuple(entries), hits))
    return out


def _factory(proto, context, path: str) -> FilterFactory:
    from legatus.extensions.filters.http.ratelimit.filter import (
        METHOD,
        build_request,
        rate_limit_service,
    )

    check_supported(proto, _SUPPORTED, path, "RateLimit")
    if not proto.stat_prefix:
        raise ConfigError(
            join_path(path, "stat_prefix"), "value length must be at least 1 characters"
        )
    if not proto.domain:
        raise ConfigError(join_path(path, "domain"), "value length must be at least 1 characters")
    descriptors = _descriptors(proto, path)
    service = rate_limit_service(proto, context, path)
    timeout = _DEFAULT_TIMEOUT
    if proto.HasField("timeout"):
        timeout = proto.timeout.seconds + proto.timeout.nanos / 1e9
    from legatus.grpc.client import UnaryClient

    config = NetworkRateLimitConfig(
        request=build_request(proto.domain, descriptors),
        timeout=timeout,
        failure_mode_deny=proto.failure_mode_deny,
        client=UnaryClient(
            service, METHOD, rls_pb2.RateLimitResponse, getattr(context, "cluster_manager", None)
        ),
        stats=NetworkRateLimitStats(context.store.scope(f"ratelimit.{proto.stat_prefix}.")),
        loop=context.loop,
    )
    return FilterFactory(lambda: NetworkRateLimitFilter(config), terminal=False)


def register(registry: Registry) -> None:
    registry.register(network_filter(NAME, CONFIG_TYPE, _factory))
