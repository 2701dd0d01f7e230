"""The HTTP health check filter (Envoy's ``envoy.filters.http.health_check``).

A request matching every ``headers`` matcher (every request when there are none) is a health
check: the stream is flagged (``StreamInfo.health_check``: the ``not_health_check`` access-log
filter and the ``health_check`` code stats see it) and its response gets
``x-envoy-upstream-healthchecked-cluster`` (the local cluster, ``--service-cluster``). The
filter answers it itself, once the request has ended, unless ``pass_through_mode`` is on (then
the request goes upstream, except while the server fails health checks or a cached answer
is fresh):

- the server fails health checks (admin ``/healthcheck/fail``): 503, details
  ``health_check_failed``, flag LH;
- a cached answer (``cache_time``): the cached status (with ``x-envoy-degraded`` when the
  cached response had it), ``health_check_cached``, LH unless 2xx;
- with ``cluster_min_healthy_percentages``, each cluster in name order: missing: 503
  ``health_check_failed_no_cluster_found``; without hosts (and a minimum above 0): 503
  ``health_check_failed_cluster_empty``; fewer healthy and degraded hosts than the minimum:
  503 ``health_check_failed_cluster_unhealthy`` (all LH); all fine: 200
  ``health_check_ok_cluster_healthy``;
- otherwise 200, ``health_check_ok``.

The replies have no body. While the server fails health checks, every other response through
the filter gets ``x-envoy-immediate-health-check-fail: true`` (so an Envoy in front stops
sending here at once). With ``cache_time`` the status of a health check's response (the
upstream's, in pass-through mode) is kept and reused until the cache period that started
with the filter's config ends; each worker process has its own cache (Envoy shares one).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from legatus.common.matchers import HeaderMatcher
from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported
from legatus.http.filter import (
    FilterDataStatus,
    FilterHeadersStatus,
    FilterTrailersStatus,
    StreamFilter,
)
from legatus.server.server_health import ServerHealth
from legatus.stats.store import Counter, StatSet, counter
from legatus.stream_info import ResponseFlag
from legatus.upstream.host import CoarseHealth

_SUPPORTED = ("pass_through_mode", "cache_time", "cluster_min_healthy_percentages", "headers")


class HealthCheckStats(StatSet):
    """``http.<stat_prefix>.health_check.*``: counted for the health checks the filter answers
    (``failed`` includes the cluster and cached failures)."""

    request_total = counter()
    failed = counter()
    ok = counter()
    cached_response = counter()
    failed_cluster_not_found = counter()
    failed_cluster_empty = counter()
    failed_cluster_unhealthy = counter()
    degraded = counter()


class CacheManager:
    """Envoy's HealthCheckCacheManager without a timer: the cache empties at the end of each
    ``period`` counted from the config's creation, so an answer set in the current period
    is used (the timer's effect, computed from the loop clock when asked)."""

    __slots__ = ("clock", "degraded", "period", "start", "status", "window")

    def __init__(self, clock, period: float) -> None:
        self.clock = clock
        self.period = period
        self.start = clock()
        self.window = -1  # the period the cached answer was set in
        self.status = 200
        self.degraded = False

    def _current(self) -> int:
        return int((self.clock() - self.start) // self.period)

    def use_cached(self) -> bool:
        return self.window == self._current()

    def set(self, status: int, degraded: bool) -> None:
        self.status = status
        self.degraded = degraded
        self.window = self._current()


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthCheckConfig:
    pass_through: bool
    headers: tuple[HeaderMatcher, ...]
    cache: CacheManager | None
    min_healthy: tuple[tuple[str, int], ...]  # (cluster, percent), by cluster name
    server: Any  # ServerHealth
    cluster_manager: Any
    local_cluster: str
    stats: HealthCheckStats
    tracing_health_check: Counter  # http.<stat_prefix>.tracing.health_check


def compile_config(proto, context, path: str) -> HealthCheckConfig:
    check_supported(proto, _SUPPORTED, path, "HealthCheck")
    pass_through = proto.pass_through_mode.value
    cache_ms = 0
    if proto.HasField("cache_time"):
        cache_ms = proto.cache_time.seconds * 1000 + proto.cache_time.nanos // 1_000_000
    if not pass_through and cache_ms:
        raise ConfigError(
            join_path(path, "cache_time"),
            "cache_time_ms must not be set when path_through_mode is disabled",
        )
    prefix = context.http_stat_prefix or ""
    loop = context.loop
    clock = loop.time if loop is not None else time.monotonic
    headers_path = join_path(path, "headers")
    min_healthy: tuple[tuple[str, int], ...] = ()
    if not pass_through:
        # Envoy keeps them in an ordered map and truncates each percentage to an integer.
        min_healthy = tuple(
            (name, int(percent.value))
            for name, percent in sorted(proto.cluster_min_healthy_percentages.items())
        )
    return HealthCheckConfig(
        pass_through=pass_through,
        headers=tuple(
            HeaderMatcher(h, f"{headers_path}[{i}]") for i, h in enumerate(proto.headers)
        ),
        cache=CacheManager(clock, cache_ms / 1000.0) if cache_ms > 0 else None,
        min_healthy=min_healthy,
        server=context.server_health if context.server_health is not None else ServerHealth(),
        cluster_manager=context.cluster_manager,
        local_cluster=getattr(context.options, "service_cluster", "") or "",
        stats=HealthCheckStats(context.store.scope(f"http.{prefix}.health_check.")),
        tracing_health_check=context.store.counter(f"http.{prefix}.tracing.health_check"),
    )


class HealthCheckFilter(StreamFilter):
    def __init__(self, config: HealthCheckConfig) -> None:
        self.config = config
        self.health_check_request = False
        self.handling = False

    # Request ----------------------------------------------------------------------------

    def decode_headers(self, headers, end_stream: bool) -> FilterHeadersStatus:
        config = self.config
        for matcher in config.headers:
            if not matcher.matches(headers):
                return FilterHeadersStatus.CONTINUE
        self.health_check_request = True
        self.decoder_callbacks.stream_info.health_check = True
        config.tracing_health_check.inc()  # the connection manager's tracing decision
        cache = config.cache
        if not config.pass_through or config.server.failed or (cache and cache.use_cached()):
            self.handling = True
            if end_stream:
                self._on_complete()
            return FilterHeadersStatus.STOP_ITERATION
        return FilterHeadersStatus.CONTINUE

    def decode_data(self, data: bytes, end_stream: bool) -> FilterDataStatus:
        if not self.handling:
            return FilterDataStatus.CONTINUE
        if end_stream:
            self._on_complete()
        return FilterDataStatus.STOP_ITERATION_NO_BUFFER

    def decode_trailers(self, trailers) -> FilterTrailersStatus:
        if not self.handling:
            return FilterTrailersStatus.CONTINUE
        self._on_complete()
        return FilterTrailersStatus.STOP_ITERATION

    # Response ---------------------------------------------------------------------------

    def encode_headers(self, headers, end_stream: bool) -> FilterHeadersStatus:
        config = self.config
        if self.health_check_request:
            cache = config.cache
            if cache is not None:
                try:
                    status = int(headers.get(":status", "0"))
                except ValueError:
                    status = 0
                cache.set(status, "x-envoy-degraded" in headers)
            headers.set("x-envoy-upstream-healthchecked-cluster", config.local_cluster)
            if self.handling and config.server.failed:
                # Envoy's own 503 answer carries it too (after the cluster header).
                headers.set("x-envoy-immediate-health-check-fail", "true")
        elif config.server.failed:
            headers.set("x-envoy-immediate-health-check-fail", "true")
        return FilterHeadersStatus.CONTINUE

    # The answer -------------------------------------------------------------------------

    def _on_complete(self) -> None:
        config = self.config
        callbacks = self.decoder_callbacks
        info = callbacks.stream_info
        stats = config.stats
        stats.request_total.inc()
        status, details, degraded = 200, "health_check_ok", False
        if config.server.failed:
            info.set_flag(ResponseFlag.FAILED_LOCAL_HEALTH_CHECK)
            status, details = 503, "health_check_failed"
        else:
            if config.cache is not None:
                cache = config.cache
                status, details, degraded = cache.status, "health_check_cached", cache.degraded
                stats.cached_response.inc()
                if degraded:
                    stats.degraded.inc()
            elif config.min_healthy:
                status, details = self._cluster_health()
            if not 200 <= status < 300:
                info.set_flag(ResponseFlag.FAILED_LOCAL_HEALTH_CHECK)
        (stats.ok if 200 <= status < 300 else stats.failed).inc()

        def modify(reply_headers) -> None:
            if degraded:
                reply_headers.set("x-envoy-degraded", "")

        callbacks.send_local_reply(status, b"", details=details, modify_headers=modify)

    def _cluster_health(self) -> tuple[int, str]:
        manager = self.config.cluster_manager
        stats = self.config.stats
        details = "health_check_ok"
        for name, minimum in self.config.min_healthy:
            details = "health_check_ok_cluster_healthy"
            cluster = manager.get(name) if manager is not None else None
            if cluster is None:
                stats.failed_cluster_not_found.inc()
                return 503, "health_check_failed_no_cluster_found"
            hosts = cluster.hosts
            if not hosts:
                if minimum == 0:
                    continue
                stats.failed_cluster_empty.inc()
                return 503, "health_check_failed_cluster_empty"
            available = sum(1 for h in hosts if h.coarse_health() is not CoarseHealth.UNHEALTHY)
            if 100 * available < len(hosts) * minimum:
                stats.failed_cluster_unhealthy.inc()
                return 503, "health_check_failed_cluster_unhealthy"
        return 200, details
