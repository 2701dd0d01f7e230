"""The HTTP local rate limit filter (Envoy's ``envoy.filters.http.local_ratelimit``).

Per request, in ``decode_headers``, with the route's ``LocalRateLimit`` (the most specific
``typed_per_filter_config`` entry under this filter's name) or else the filter's own:

1. ``filter_enabled`` (runtime fractional percent; unset: off) decides whether the request
   is looked at at all; if so ``<stat_prefix>.http_local_rate_limit.enabled`` counts it;
2. a token is taken from the config's bucket (``local_rate_limit_per_downstream_connection``:
   from the connection's own bucket for this config): ``ok`` if there was one, else
   ``rate_limited``;
3. a limited request that ``filter_enforced`` (unset: off) does not enforce goes on with
   ``request_headers_to_add_when_not_enforced``; an enforced one counts ``enforced`` and is
   answered with ``status`` (default, and for codes below 400: 429), the body
   ``local_rate_limited``, ``response_headers_to_add``, response flag ``RL`` and details
   ``local_rate_limited``;
4. with ``enable_x_ratelimit_headers: DRAFT_VERSION_03`` the response (a limited one too)
   gets ``x-ratelimit-limit``, ``x-ratelimit-remaining`` and ``x-ratelimit-reset`` at its
   end, from the bucket the request was checked against.

Each compiled config, the filter's or a route's, has its own bucket and its own stats (under
its own ``stat_prefix``), as in Envoy. Buckets are per worker process (Envoy shares them
across worker threads): see docs/http-filters.md.
"""

from __future__ import annotations

import collections
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from legatus.common.runtime_fraction import FractionalPercentFlag
from legatus.common.token_bucket import TokenBucket
from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported
from legatus.http.filter import FilterHeadersStatus, StreamDecoderFilter, StreamFilter
from legatus.router.header_mutations import HeaderMutations, compile_header_mutations
from legatus.stats.store import StatSet, counter
from legatus.stream_info import ResponseFlag
from legatus.upstream.cluster import duration

_SUPPORTED = (
    "stat_prefix", "status", "token_bucket", "filter_enabled", "filter_enforced",
    "request_headers_to_add_when_not_enforced", "response_headers_to_add",
    "local_rate_limit_per_downstream_connection", "enable_x_ratelimit_headers",
    "always_consume_default_token_bucket", "descriptors", "stage", "vh_rate_limits",
    "max_dynamic_descriptors",
)  # fmt: skip
_VH_OVERRIDE, _VH_INCLUDE = 0, 1
_BODY = b"local_rate_limited"
_DETAILS = "local_rate_limited"
_MIN_FILL_INTERVAL = 0.05
_DRAFT_VERSION_03 = 1
_CONTINUE = FilterHeadersStatus.CONTINUE


class LocalRateLimitStats(StatSet):
    """``<stat_prefix>.http_local_rate_limit.*``, as Envoy declares them."""

    enabled = counter()
    enforced = counter()
    rate_limited = counter()
    ok = counter()
    shadow_mode = counter()  # Envoy's, for a shadow mode legatus does not have: stays 0


@dataclass(frozen=True, slots=True, kw_only=True)
class BucketSpec:
    max_tokens: int
    tokens_per_fill: int
    fill_interval: float

    def create(self, clock) -> TokenBucket:
        return TokenBucket(
            max_tokens=self.max_tokens,
            tokens_per_fill=self.tokens_per_fill,
            fill_interval=self.fill_interval,
            clock=clock,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalRateLimitConfig:
    stats: LocalRateLimitStats
    status: int
    spec: BucketSpec | None  # None: no token_bucket, every request passes
    bucket: TokenBucket | None  # the shared one (None per connection or without a spec)
    per_connection: bool
    clock: Any
    filter_enabled: FractionalPercentFlag
    filter_enforced: FractionalPercentFlag
    response_headers: HeaderMutations
    request_headers_when_not_enforced: HeaderMutations
    x_ratelimit_headers: bool
    # local_rate_limit_per_downstream_connection: connection -> its bucket for this config
    connection_buckets: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)
    descriptors: Descriptors | None = None  # ``descriptors``: buckets per request descriptor
    stage: int = 0
    vh_rate_limits: int = _VH_OVERRIDE
    always_consume_default: bool = True  # always_consume_default_token_bucket
    local_cluster: str = ""  # --service-cluster: the source_cluster descriptor action's value
    # Decided once for the request path: filter_enabled is always on (no runtime key, 100 %);
    # ``plain``: the shared bucket (or none) decides alone (no per-connection buckets, no
    # descriptors, no x-ratelimit headers to remember it for).
    always_enabled: bool = False
    plain: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "always_enabled", self.filter_enabled.constant is True)
        plain = not (self.per_connection or self.x_ratelimit_headers)
        plain = plain and self.descriptors is None
        object.__setattr__(self, "plain", plain)

    def bucket_for(self, connection) -> TokenBucket | None:
        if not self.per_connection or self.spec is None:
            return self.bucket
        bucket = self.connection_buckets.get(connection)
        if bucket is None:
            bucket = self.connection_buckets[connection] = self.spec.create(self.clock)
        return bucket


class Descriptors:
    """The ``descriptors`` of a config and their buckets (Envoy's LocalRateLimiterImpl).

    A request's descriptors come from its route's (and virtual host's) ``rate_limits`` of the
    filter's ``stage``. Each one that equals a configured descriptor (keys and values in
    order; an empty configured value matches any value, each distinct value then getting its
    own bucket, at most ``max_dynamic_descriptors`` of them, least recently used out) takes a
    token from that descriptor's bucket, the slowest-filling first; the first empty one
    limits the request. When none matched, or with ``always_consume_default_token_bucket``
    (the default), the filter's own bucket must also give a token.
    """

    def __init__(self, entries, clock, max_dynamic: int) -> None:
        self.exact: dict[tuple, TokenBucket] = {}
        self.wildcards: list[tuple[tuple, BucketSpec]] = []
        self.dynamic: collections.OrderedDict[tuple, TokenBucket] = collections.OrderedDict()
        self.max_dynamic = max_dynamic
        self.clock = clock
        for key, spec in entries:
            if any(value == "" for _, value in key):
                self.wildcards.append((key, spec))
            else:
                self.exact[key] = spec.create(clock)

    def buckets_for(self, request_descriptors) -> list[TokenBucket]:
        found = []
        for descriptor in request_descriptors:
            key = descriptor.entries
            bucket = self.exact.get(key)
            if bucket is None and self.wildcards:
                bucket = self._dynamic(key)
            if bucket is not None:
                found.append(bucket)
        found.sort(key=lambda b: b.fill_rate)
        return found

    def _dynamic(self, key: tuple) -> TokenBucket | None:
        bucket = self.dynamic.get(key)
        if bucket is not None:
            self.dynamic.move_to_end(key)
            return bucket
        for pattern, spec in self.wildcards:
            if len(pattern) == len(key) and all(
                pk == k and (pv == "" or pv == v)
                for (pk, pv), (k, v) in zip(pattern, key, strict=True)
            ):
                bucket = self.dynamic[key] = spec.create(self.clock)
                if len(self.dynamic) > self.max_dynamic:
                    self.dynamic.popitem(last=False)
                return bucket
        return None


def _bucket_spec(tb, path: str) -> BucketSpec:
    check_supported(tb, ("max_tokens", "tokens_per_fill", "fill_interval"), path, "TokenBucket")
    interval = duration(tb.fill_interval)
    if interval < _MIN_FILL_INTERVAL:
        raise ConfigError(
            join_path(path, "fill_interval"),
            "local rate limit token bucket fill timer must be >= 50ms",
        )
    return BucketSpec(
        max_tokens=tb.max_tokens,
        tokens_per_fill=tb.tokens_per_fill.value if tb.HasField("tokens_per_fill") else 1,
        fill_interval=interval,
    )


def _descriptors(proto, clock, path: str) -> Descriptors | None:
    if not proto.descriptors:
        return None
    if proto.local_rate_limit_per_downstream_connection:
        raise ConfigError(
            join_path(path, "descriptors"),
            "descriptors with local_rate_limit_per_downstream_connection are not supported "
            "by legatus yet",
        )
    entries = []
    for i, d in enumerate(proto.descriptors):
        dpath = f"{join_path(path, 'descriptors')}[{i}]"
        key = tuple((e.key, e.value) for e in d.entries)
        entries.append((key, _bucket_spec(d.token_bucket, join_path(dpath, "token_bucket"))))
    maximum = (
        proto.max_dynamic_descriptors.value if proto.HasField("max_dynamic_descriptors") else 20
    )
    return Descriptors(entries, clock, maximum)


def compile_config(proto, context, path: str) -> LocalRateLimitConfig:
    check_supported(proto, _SUPPORTED, path, "LocalRateLimit")
    spec = None
    if proto.HasField("token_bucket"):
        spec = _bucket_spec(proto.token_bucket, join_path(path, "token_bucket"))
    loop = context.loop
    clock = loop.time if loop is not None else time.monotonic
    per_connection = proto.local_rate_limit_per_downstream_connection
    status = proto.status.code if proto.HasField("status") else 429
    runtime = context.runtime
    return LocalRateLimitConfig(
        stats=LocalRateLimitStats(
            context.store.scope(f"{proto.stat_prefix}.http_local_rate_limit.")
        ),
        status=status if status >= 400 else 429,
        spec=spec,
        bucket=spec.create(clock) if spec is not None and not per_connection else None,
        per_connection=per_connection,
        clock=clock,
        filter_enabled=FractionalPercentFlag(
            proto.filter_enabled if proto.HasField("filter_enabled") else None,
            runtime=runtime,
            rng=context.random,
            unset=False,
        ),
        filter_enforced=FractionalPercentFlag(
            proto.filter_enforced if proto.HasField("filter_enforced") else None,
            runtime=runtime,
            rng=context.random,
            unset=False,
        ),
        response_headers=compile_header_mutations(
            proto.response_headers_to_add, (), path, prefix="response"
        ),
        request_headers_when_not_enforced=_request_headers(proto, path),
        x_ratelimit_headers=proto.enable_x_ratelimit_headers == _DRAFT_VERSION_03,
        descriptors=_descriptors(proto, clock, path),
        stage=proto.stage,
        local_cluster=getattr(context.options, "service_cluster", "") or "",
        vh_rate_limits=proto.vh_rate_limits,
        always_consume_default=proto.always_consume_default_token_bucket.value
        if proto.HasField("always_consume_default_token_bucket")
        else True,
    )


def _request_headers(proto, path: str) -> HeaderMutations:
    try:
        return compile_header_mutations(
            proto.request_headers_to_add_when_not_enforced, (), path, prefix="request"
        )
    except ConfigError as e:
        fixed = e.path.replace(
            "request_headers_to_add", "request_headers_to_add_when_not_enforced", 1
        )
        raise ConfigError(fixed, e.message) from None


class LocalRateLimitFilter(StreamDecoderFilter):
    """The filter without x-ratelimit headers: requests only."""

    bucket: TokenBucket | None = None  # set when x-ratelimit headers are due

    def __init__(self, config: LocalRateLimitConfig, name: str, per_route: bool = True) -> None:
        """``per_route``: whether a route may carry a config for this filter (if none can,
        the route is not looked at)."""
        self.config = config
        self.name = name
        self.per_route = per_route

    def decode_headers(self, headers, end_stream: bool) -> FilterHeadersStatus:
        config = self.config
        if self.per_route:
            route = self.decoder_callbacks.route
            if route is not None:
                config = route.most_specific_per_filter_config(self.name) or config
        if not (config.always_enabled or config.filter_enabled.enabled()):
            return _CONTINUE
        stats = config.stats
        stats.enabled.value += 1  # (Counter.inc without the call: every request)
        if config.plain:
            bucket = config.bucket
            allowed = bucket is None or bucket.consume()
        else:
            allowed = self._allowed(config, headers)
        if allowed:
            stats.ok.value += 1
            return _CONTINUE
        callbacks = self.decoder_callbacks
        stats.rate_limited.inc()
        if not config.filter_enforced.enabled():
            mutations = config.request_headers_when_not_enforced
            if mutations:
                mutations.apply(headers, callbacks.stream_info, headers)
            return FilterHeadersStatus.CONTINUE
        stats.enforced.inc()
        response_headers = config.response_headers
        info = callbacks.stream_info

        def modify(reply_headers) -> None:
            if response_headers:
                response_headers.apply(reply_headers, info, headers, reply_headers)

        callbacks.send_local_reply(
            config.status,
            _BODY,
            details=_DETAILS,
            flags=ResponseFlag.RATE_LIMITED,
            modify_headers=modify,
        )
        return FilterHeadersStatus.STOP_ITERATION

    def _allowed(self, config, headers) -> bool:
        """Whether the request gets a token, from the bucket(s) a config that is not
        ``plain`` names; the bucket that decided is kept for x-ratelimit headers."""
        callbacks = self.decoder_callbacks
        route = callbacks.route
        bucket = config.bucket_for(callbacks.stream.connection)
        if config.descriptors is not None and route is not None:
            allowed, bucket = self._with_descriptors(config, route, headers, bucket)
        else:
            allowed = bucket is None or bucket.consume()
        if bucket is not None and config.x_ratelimit_headers:
            self.bucket = bucket
        return allowed

    def _with_descriptors(self, config, route, headers, default):
        """(allowed, the bucket that decided) with ``descriptors``."""
        descriptors = self._request_descriptors(config, route, headers)
        buckets = config.descriptors.buckets_for(descriptors) if descriptors else []
        for bucket in buckets:
            if not bucket.consume():
                return False, bucket
        if buckets and not config.always_consume_default:
            return True, buckets[0]
        if default is None:
            return True, buckets[0] if buckets else None
        return default.consume(), default

    def _request_descriptors(self, config, route, headers) -> list:
        from legatus.router.rate_limit_policy import DescriptorRequest

        action = route.action
        route_policy = getattr(action, "rate_limit_policy", None)
        vh_policy = route.virtual_host.rate_limit_policy
        stage = config.stage
        policies = []
        if route_policy is not None:
            policies.append(route_policy)
        if config.vh_rate_limits == _VH_INCLUDE or (
            config.vh_rate_limits == _VH_OVERRIDE
            and (route_policy is None or not route_policy.entries(stage))
        ):
            policies.append(vh_policy)
        if not any(p.entries(stage) for p in policies):
            return []
        callbacks = self.decoder_callbacks
        request = DescriptorRequest(
            headers,
            route_cluster=route.cluster_name or "",
            local_cluster=config.local_cluster,
            remote_address=callbacks.stream_info.downstream_remote_address,
        )
        out: list = []
        for policy in policies:
            policy.populate(stage, request, out, random_value=callbacks.stream.random_value)
        return out


class LocalRateLimitHeadersFilter(LocalRateLimitFilter, StreamFilter):
    """The filter when x-ratelimit headers may be due: it also sees the response."""

    def encode_headers(self, headers, end_stream: bool) -> FilterHeadersStatus:
        bucket = self.bucket
        if bucket is not None:
            headers.add("x-ratelimit-limit", str(bucket.max_tokens))
            headers.add("x-ratelimit-remaining", str(bucket.remaining_tokens()))
            headers.add("x-ratelimit-reset", str(bucket.reset_seconds()))
        return FilterHeadersStatus.CONTINUE
