"""The fault filter's compiled configuration: ``HTTPFault`` as immutable settings.

``FaultSettings`` is what one ``HTTPFault`` says (the filter's, or a route's
``typed_per_filter_config`` entry, which replaces it for that route); ``FaultFilterConfig``
adds what only the filter-level config has: the stats (``http.<stat_prefix>.fault.*``, shared
by the routes' settings, as in Envoy), the runtime, the loop and the randomness.

Each fault (abort, delay; ``response_rate_limit`` is refused for now) has a fixed value or
takes it from a request header, and a percentage of requests it applies to (for a
header-controlled fault, a ``...-percentage`` header may lower it). The runtime keys that
override each value are kept by name; a request carrying
``x-envoy-downstream-service-cluster`` consults the cluster-specific keys
(``fault.http.<cluster>.abort.abort_percent``...) instead.
"""

from __future__ import annotations

import random as _random
from dataclasses import dataclass
from typing import Any

from legatus.common.matchers import HeaderMatcher
from legatus.config.errors import join_path
from legatus.config.supported import check_supported
from legatus.runtime import Runtime
from legatus.stats.store import Scope, StatSet, counter, gauge

_SUPPORTED = (
    "delay", "abort", "upstream_cluster", "headers", "downstream_nodes", "max_active_faults",
    "delay_percent_runtime", "abort_percent_runtime",
    "delay_duration_runtime", "abort_http_status_runtime", "max_active_faults_runtime",
    "response_rate_limit_percent_runtime", "abort_grpc_status_runtime",
    "disable_downstream_cluster_stats",
)  # fmt: skip
_DENOMINATORS = {0: 100, 1: 10_000, 2: 1_000_000}

# Envoy's default runtime keys (overridable per config with the *_runtime fields).
DELAY_PERCENT_KEY = "fault.http.delay.fixed_delay_percent"
ABORT_PERCENT_KEY = "fault.http.abort.abort_percent"
DELAY_DURATION_KEY = "fault.http.delay.fixed_duration_ms"
ABORT_HTTP_STATUS_KEY = "fault.http.abort.http_status"
ABORT_GRPC_STATUS_KEY = "fault.http.abort.grpc_status"
MAX_ACTIVE_FAULTS_KEY = "fault.http.max_active_faults"
RESPONSE_RATE_LIMIT_PERCENT_KEY = "fault.http.rate_limit.response_percent"


class FaultStats(StatSet):
    """``http.<stat_prefix>.fault.*``, as Envoy declares them."""

    delays_injected = counter()
    aborts_injected = counter()
    response_rl_injected = counter()
    faults_overflow = counter()
    active_faults = gauge()


@dataclass(frozen=True, slots=True, kw_only=True)
class Percentage:
    """A FractionalPercent; with ``header``, a request header may lower the numerator."""

    numerator: int
    denominator: int
    header: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AbortSpec:
    http_status: int | None = None  # fixed
    grpc_status: int | None = None  # fixed
    from_headers: bool = False  # header_abort
    percentage: Percentage


@dataclass(frozen=True, slots=True, kw_only=True)
class DelaySpec:
    fixed_ms: int | None = None  # None: header_delay
    percentage: Percentage


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitSpec:
    fixed_kbps: int | None = None  # None: header_limit
    percentage: Percentage


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultSettings:
    abort: AbortSpec | None
    delay: DelaySpec | None
    rate_limit: RateLimitSpec | None
    headers: tuple[HeaderMatcher, ...]
    upstream_cluster: str
    downstream_nodes: frozenset[str]
    max_active_faults: int | None
    delay_percent_key: str
    abort_percent_key: str
    delay_duration_key: str
    abort_http_status_key: str
    abort_grpc_status_key: str
    max_active_faults_key: str
    response_rate_limit_percent_key: str
    disable_downstream_cluster_stats: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultFilterConfig:
    settings: FaultSettings
    stats: FaultStats
    scope: Scope  # http.<stat_prefix>.fault. (per downstream cluster counters)
    runtime: Runtime
    random: _random.Random
    loop: Any
    name: str  # the HttpFilter name: the key of the routes' settings


def _percentage(proto, header: str | None) -> Percentage:
    return Percentage(
        numerator=proto.numerator,
        denominator=_DENOMINATORS.get(proto.denominator, 100),
        header=header,
    )


def _duration_ms(d) -> int:
    return d.seconds * 1000 + d.nanos // 1_000_000


def compile_settings(proto, path: str) -> FaultSettings:
    check_supported(proto, _SUPPORTED, path, "HTTPFault")
    abort = delay = rate_limit = None
    if proto.HasField("abort"):
        a = proto.abort
        apath = join_path(path, "abort")
        check_supported(a, ("http_status", "grpc_status", "header_abort", "percentage"), apath)
        which = a.WhichOneof("error_type")
        header = "x-envoy-fault-abort-request-percentage" if which == "header_abort" else None
        abort = AbortSpec(
            http_status=a.http_status if which == "http_status" else None,
            grpc_status=a.grpc_status if which == "grpc_status" else None,
            from_headers=which == "header_abort",
            percentage=_percentage(a.percentage, header),
        )
    if proto.HasField("delay"):
        d = proto.delay
        dpath = join_path(path, "delay")
        check_supported(d, ("fixed_delay", "header_delay", "percentage"), dpath)
        which = d.WhichOneof("fault_delay_secifier")
        header = "x-envoy-fault-delay-request-percentage" if which == "header_delay" else None
        delay = DelaySpec(
            fixed_ms=_duration_ms(d.fixed_delay) if which == "fixed_delay" else None,
            percentage=_percentage(d.percentage, header),
        )
    if proto.HasField("response_rate_limit"):
        r = proto.response_rate_limit
        rpath = join_path(path, "response_rate_limit")
        check_supported(r, ("fixed_limit", "header_limit", "percentage"), rpath)
        which = r.WhichOneof("limit_type")
        header = "x-envoy-fault-throughput-response-percentage" if which == "header_limit" else None
        rate_limit = RateLimitSpec(
            fixed_kbps=r.fixed_limit.limit_kbps if which == "fixed_limit" else None,
            percentage=_percentage(r.percentage, header),
        )
    headers_path = join_path(path, "headers")
    return FaultSettings(
        abort=abort,
        delay=delay,
        rate_limit=rate_limit,
        headers=tuple(
            HeaderMatcher(h, f"{headers_path}[{i}]") for i, h in enumerate(proto.headers)
        ),
        upstream_cluster=proto.upstream_cluster,
        downstream_nodes=frozenset(proto.downstream_nodes),
        max_active_faults=(
            proto.max_active_faults.value if proto.HasField("max_active_faults") else None
        ),
        delay_percent_key=proto.delay_percent_runtime or DELAY_PERCENT_KEY,
        abort_percent_key=proto.abort_percent_runtime or ABORT_PERCENT_KEY,
        delay_duration_key=proto.delay_duration_runtime or DELAY_DURATION_KEY,
        abort_http_status_key=proto.abort_http_status_runtime or ABORT_HTTP_STATUS_KEY,
        abort_grpc_status_key=proto.abort_grpc_status_runtime or ABORT_GRPC_STATUS_KEY,
        max_active_faults_key=proto.max_active_faults_runtime or MAX_ACTIVE_FAULTS_KEY,
        response_rate_limit_percent_key=(
            proto.response_rate_limit_percent_runtime or RESPONSE_RATE_LIMIT_PERCENT_KEY
        ),
        disable_downstream_cluster_stats=proto.disable_downstream_cluster_stats,
    )


def compile_filter_config(proto, context, path: str) -> FaultFilterConfig:
    settings = compile_settings(proto, path)
    scope = context.store.scope(f"http.{context.http_stat_prefix or ''}.fault.")
    return FaultFilterConfig(
        settings=settings,
        stats=FaultStats(scope),
        scope=scope,
        runtime=context.runtime if context.runtime is not None else Runtime(),
        random=context.random,
        loop=context.loop,
        name=context.http_filter_name,
    )
