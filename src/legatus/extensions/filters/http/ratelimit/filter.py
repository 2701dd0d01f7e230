"""The HTTP global rate limit filter (Envoy's ``envoy.filters.http.ratelimit``).

In ``decode_headers``, for a request of the configured ``request_type`` whose route forwards
to a known cluster:

1. descriptors come from the route's ``rate_limits`` of the filter's ``stage`` and, per the
   route's ``include_vh_rate_limits`` or the route's ``RateLimitPerRoute.vh_rate_limits``
   (OVERRIDE by default: the virtual host's only when the route has none; INCLUDE; IGNORE),
   from the virtual host's (router/rate_limit_policy.py);
2. none: the request goes on untouched. Otherwise one ``ShouldRateLimit`` call (domain: the
   per-route ``domain`` or the filter's) with ``timeout`` (20 ms by default); the stream
   waits (STOP_ALL_ITERATION_AND_WATERMARK);
3. the answer counts in ``cluster.<route's cluster>.ratelimit.[<stat_prefix>.]*``:
   ``ok``; ``over_limit`` (and the cluster's ``upstream_rq_<status>``): the request is answered
   with ``rate_limited_status`` (429), ``x-envoy-ratelimited: true`` (unless disabled), the
   service's ``response_headers_to_add`` and the filter's, flag RL, details
   ``request_rate_limited``; ``error`` (no cluster or host, a gRPC error, the timeout):
   with ``failure_mode_deny`` ``status_on_error`` (500), flag RLSE, details
   ``rate_limiter_error``; otherwise ``failure_mode_allowed`` and the request goes on;
4. an allowed request gets the service's ``request_headers_to_add``; its response the
   service's ``response_headers_to_add`` and, with ``enable_x_ratelimit_headers``,
   ``x-ratelimit-limit/remaining/reset`` from the descriptor with the least remaining.

Descriptors of entries with ``apply_on_stream_done`` are sent when the stream ends, and
their answer is not waited for.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as common_pb2
from envoy.service.ratelimit.v3 import rls_pb2

from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported
from legatus.grpc.client import GrpcCallError, UnaryClient, compile_grpc_service
from legatus.http.filter import FilterHeadersStatus, StreamFilter
from legatus.router.action import RouteAction
from legatus.router.header_mutations import HeaderMutations, compile_header_mutations
from legatus.router.rate_limit_policy import Descriptor, DescriptorRequest
from legatus.stream_info import ResponseFlag

log = logging.getLogger("legatus.ratelimit")

METHOD = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
_SUPPORTED = (
    "domain", "stage", "request_type", "timeout", "failure_mode_deny", "rate_limit_service",
    "enable_x_ratelimit_headers", "disable_x_envoy_ratelimited_header", "rate_limited_status",
    "response_headers_to_add", "status_on_error", "stat_prefix",
)  # fmt: skip
_PER_ROUTE_SUPPORTED = ("vh_rate_limits", "domain")
_V3 = 2  # ApiVersion.V3
_DRAFT_VERSION_03 = 1
_VH_OVERRIDE, _VH_INCLUDE, _VH_IGNORE = 0, 1, 2
_DEFAULT_TIMEOUT = 0.020
_DETAILS_LIMITED = "request_rate_limited"
_DETAILS_ERROR = "rate_limiter_error"
_OVER_LIMIT = rls_pb2.RateLimitResponse.OVER_LIMIT
_UNIT_SECONDS = {0: 0, 1: 1, 2: 60, 3: 3600, 4: 86400, 5: 2592000, 6: 31536000, 7: 604800}


class RateLimitClusterStats:
    """``cluster.<route's cluster>.ratelimit.[<stat_prefix>.]*``. Envoy makes each counter
    when it first counts, so these are made on first use too (a dump shows the same set)."""

    __slots__ = ("_counters", "_scope")

    def __init__(self, scope) -> None:
        self._scope = scope
        self._counters: dict[str, Any] = {}

    def inc(self, name: str) -> None:
        c = self._counters.get(name)
        if c is None:
            c = self._counters[name] = self._scope.counter(name)
        c.inc()


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitPerRouteConfig:
    vh_rate_limits: int
    domain: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitFilterConfig:
    domain: str
    stage: int
    request_type: str  # "both", "internal", "external"
    timeout: float
    failure_mode_deny: bool
    client: UnaryClient
    x_ratelimit_headers: bool
    x_envoy_ratelimited: bool
    rate_limited_status: int
    status_on_error: int
    response_headers: HeaderMutations
    stat_prefix: str
    local_cluster: str
    runtime: Any
    loop: Any
    stats: dict  # route cluster name -> (its ThreadLocalCluster, RateLimitClusterStats)

    def stats_for(self, cluster) -> RateLimitClusterStats:
        found = self.stats.get(cluster.config.name)
        if found is not None and found[0] is cluster:
            return found[1]
        prefix = f"ratelimit.{self.stat_prefix}." if self.stat_prefix else "ratelimit."
        stats = RateLimitClusterStats(cluster.scope.scope(prefix))
        self.stats[cluster.config.name] = (cluster, stats)
        return stats


def compile_config(proto, context, path: str) -> RateLimitFilterConfig:
    check_supported(proto, _SUPPORTED, path, "RateLimit")
    if not proto.domain:
        raise ConfigError(join_path(path, "domain"), "value length must be at least 1 characters")
    if proto.stage > 10:
        raise ConfigError(join_path(path, "stage"), "value must be less than or equal to 10")
    request_type = proto.request_type or "both"
    if request_type not in ("internal", "external", "both"):
        raise ConfigError(
            join_path(path, "request_type"),
            'value must be in list ["internal", "external", "both", ""]',
        )
    service = rate_limit_service(proto, context, path)
    timeout = _DEFAULT_TIMEOUT
    if proto.HasField("timeout"):
        timeout = proto.timeout.seconds + proto.timeout.nanos / 1e9
    return RateLimitFilterConfig(
        domain=proto.domain,
        stage=proto.stage,
        request_type=request_type,
        timeout=timeout,
        failure_mode_deny=proto.failure_mode_deny,
        client=UnaryClient(
            service, METHOD, rls_pb2.RateLimitResponse, getattr(context, "cluster_manager", None)
        ),
        x_ratelimit_headers=proto.enable_x_ratelimit_headers == _DRAFT_VERSION_03,
        x_envoy_ratelimited=not proto.disable_x_envoy_ratelimited_header,
        rate_limited_status=_status(proto, "rate_limited_status", 429),
        status_on_error=_status(proto, "status_on_error", 500),
        response_headers=compile_header_mutations(
            proto.response_headers_to_add, (), path, prefix="response"
        ),
        stat_prefix=proto.stat_prefix,
        local_cluster=getattr(context.options, "service_cluster", "") or "",
        runtime=context.runtime,
        loop=context.loop,
        stats={},
    )


def _status(proto, name: str, default: int) -> int:
    if not proto.HasField(name):
        return default
    code = getattr(proto, name).code
    return code if code >= 400 else default


def rate_limit_service(proto, context, path: str):
    spath = join_path(path, "rate_limit_service")
    if not proto.HasField("rate_limit_service"):
        raise ConfigError(spath, "value is required")
    rls = proto.rate_limit_service
    check_supported(rls, ("grpc_service", "transport_api_version"), spath, "RateLimitServiceConfig")
    if rls.transport_api_version != _V3:
        raise ConfigError(
            join_path(spath, "transport_api_version"),
            "API versions other than V3 are not supported (set transport_api_version: V3)",
        )
    if not rls.HasField("grpc_service"):
        raise ConfigError(join_path(spath, "grpc_service"), "value is required")
    return compile_grpc_service(rls.grpc_service, context, join_path(spath, "grpc_service"))


def compile_per_route(proto, path: str) -> RateLimitPerRouteConfig:
    check_supported(proto, _PER_ROUTE_SUPPORTED, path, "RateLimitPerRoute")
    return RateLimitPerRouteConfig(vh_rate_limits=proto.vh_rate_limits, domain=proto.domain)


async def should_rate_limit(client: UnaryClient, request, timeout: float | None):
    """One ``ShouldRateLimit`` call (shared by the HTTP and network filters): the response, or
    None when the service failed (a service error for the filter's failure mode)."""
    try:
        return await client.call(request, timeout)
    except GrpcCallError as e:
        log.debug("rate limit service call failed: %s", e)
    except asyncio.CancelledError:
        raise
    except Exception:  # a bug, never traffic: count a service error
        log.exception("rate limit service call failed")
    return None


def build_request(domain: str, descriptors: list[Descriptor]) -> rls_pb2.RateLimitRequest:
    request = rls_pb2.RateLimitRequest(domain=domain)
    for descriptor in descriptors:
        d = request.descriptors.add()
        for key, value in descriptor.entries:
            d.entries.append(common_pb2.RateLimitDescriptor.Entry(key=key, value=value))
        if descriptor.hits_addend is not None:
            d.hits_addend.value = descriptor.hits_addend
    return request


def x_ratelimit_headers(statuses) -> tuple[tuple[str, str], ...]:
    """Envoy's XRateLimitHeaderUtils (draft 03): the descriptor with the least remaining
    gives the values; every limited descriptor adds its quota policy to the limit."""
    best = None
    policy = []
    for status in statuses:
        if not status.HasField("current_limit"):
            continue
        if best is None or status.limit_remaining < best.limit_remaining:
            best = status
        limit = status.current_limit
        window = _UNIT_SECONDS.get(limit.unit, 0)
        if window:
            policy.append(f", {limit.requests_per_unit};w={window}")
            if limit.name:
                policy.append(f';name="{limit.name}"')
    if best is None:
        return ()
    return (
        ("x-ratelimit-limit", f"{best.current_limit.requests_per_unit}{''.join(policy)}"),
        ("x-ratelimit-remaining", str(best.limit_remaining)),
        ("x-ratelimit-reset", str(best.duration_until_reset.seconds)),
    )


_background: set[asyncio.Task] = set()  # stream-done calls, kept until they finish


class RateLimitFilter(StreamFilter):
    """One per stream (see module doc)."""

    def __init__(self, config: RateLimitFilterConfig, name: str) -> None:
        self.config = config
        self.name = name
        self.task: asyncio.Task | None = None
        self.response_headers: tuple = ()  # from the service, and x-ratelimit-*
        self.done_request: rls_pb2.RateLimitRequest | None = None

    def decode_headers(self, headers, end_stream: bool) -> FilterHeadersStatus:
        config = self.config
        callbacks = self.decoder_callbacks
        if config.request_type != "both":
            internal = callbacks.stream.internal
            if internal != (config.request_type == "internal"):
                return FilterHeadersStatus.CONTINUE
        route = callbacks.route
        if route is None or not isinstance(route.action, RouteAction):
            return FilterHeadersStatus.CONTINUE
        cm = config.client._cluster_manager
        cluster = cm.get(route.cluster_name) if cm is not None and route.cluster_name else None
        if cluster is None:
            return FilterHeadersStatus.CONTINUE
        per_route = route.most_specific_per_filter_config(self.name)
        descriptors: list[Descriptor] = []
        done: list[Descriptor] = []
        self._populate(route, per_route, headers, descriptors, done)
        domain = per_route.domain if per_route is not None and per_route.domain else config.domain
        if done:
            self.done_request = build_request(domain, done)
        if not descriptors:
            return FilterHeadersStatus.CONTINUE
        self.cluster = cluster
        self.request_headers = headers
        request = build_request(domain, descriptors)
        self.task = config.loop.create_task(self._check(request))
        return FilterHeadersStatus.STOP_ALL_ITERATION_AND_WATERMARK

    def _populate(self, route, per_route, headers, out: list, done: list) -> None:
        config = self.config
        stage = config.stage
        action = route.action
        route_policy = action.rate_limit_policy
        vh_policy = route.virtual_host.rate_limit_policy
        if action.include_vh_rate_limits:
            vh_option = _VH_INCLUDE
        else:
            vh_option = per_route.vh_rate_limits if per_route is not None else _VH_OVERRIDE
        policies = [route_policy]
        if vh_option == _VH_INCLUDE or (
            vh_option == _VH_OVERRIDE and not route_policy.entries(stage)
        ):
            policies.append(vh_policy)
        if not any(p.entries(stage) for p in policies):
            return
        info = self.decoder_callbacks.stream_info
        request = DescriptorRequest(
            headers,
            route_cluster=route.cluster_name or "",
            local_cluster=config.local_cluster,
            remote_address=info.downstream_remote_address,
        )
        random_value = self.decoder_callbacks.stream.random_value
        for policy in policies:
            policy.populate(stage, request, out, runtime=config.runtime, random_value=random_value)
            policy.populate(
                stage,
                request,
                done,
                runtime=config.runtime,
                random_value=random_value,
                on_stream_done=True,
            )

    async def _check(self, request) -> None:
        config = self.config
        response = await should_rate_limit(config.client, request, config.timeout)
        self.task = None
        self._on_complete(response)

    def _on_complete(self, response) -> None:
        config = self.config
        callbacks = self.decoder_callbacks
        stats = config.stats_for(self.cluster)
        if response is None:
            stats.inc("error")
            if config.failure_mode_deny:
                callbacks.send_local_reply(
                    config.status_on_error,
                    b"",
                    details=_DETAILS_ERROR,
                    flags=ResponseFlag.RATE_LIMIT_SERVICE_ERROR,
                )
                return
            stats.inc("failure_mode_allowed")
            callbacks.continue_decoding()
            return
        extra = [(h.key.lower(), h.value) for h in response.response_headers_to_add]
        limited = response.overall_code == _OVER_LIMIT
        if limited and config.x_envoy_ratelimited:
            extra.append(("x-envoy-ratelimited", "true"))
        if config.x_ratelimit_headers:
            extra.extend(x_ratelimit_headers(response.statuses))
        if limited:
            stats.inc("over_limit")
            # Envoy charges the limited status to the route's cluster, always as internal.
            self.cluster.code_stats.charge(config.rate_limited_status, internal=True)
            self._send_limited(extra, response)
            return
        stats.inc("ok")
        self.response_headers = tuple(extra)
        if response.request_headers_to_add:
            headers = self.request_headers
            for h in response.request_headers_to_add:
                headers.set(h.key.lower(), h.value)
        callbacks.continue_decoding()

    def _send_limited(self, extra: list, response) -> None:
        config = self.config
        callbacks = self.decoder_callbacks
        info = callbacks.stream_info
        request_headers = self.request_headers
        mutations = config.response_headers

        def modify(reply_headers) -> None:
            for key, value in extra:
                reply_headers.set(key, value)
            if mutations:
                mutations.apply(reply_headers, info, request_headers, reply_headers)

        callbacks.send_local_reply(
            config.rate_limited_status,
            response.raw_body,
            details=_DETAILS_LIMITED,
            flags=ResponseFlag.RATE_LIMITED,
            modify_headers=modify,
        )

    def encode_headers(self, headers, end_stream: bool) -> FilterHeadersStatus:
        for key, value in self.response_headers:
            headers.set(key, value)
        return FilterHeadersStatus.CONTINUE

    def on_destroy(self) -> None:
        task = self.task
        if task is not None:
            self.task = None
            task.cancel()
        request = self.done_request
        if request is not None:
            self.done_request = None
            background = self.config.loop.create_task(self._fire(request))
            _background.add(background)
            background.add_done_callback(_background.discard)

    async def _fire(self, request) -> None:
        config = self.config
        try:
            await config.client.call(request, config.timeout)
        except GrpcCallError as e:
            log.debug("rate limit service call (stream done) failed: %s", e)
