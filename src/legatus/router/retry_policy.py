"""Retry policies (``envoy.config.route.v3.RetryPolicy``), compiled once with the route table.

A route's ``retry_policy`` replaces its virtual host's (Envoy does not merge them). What
the policy says can be widened per request by the ``x-envoy-retry-on``, ``x-envoy-max-
retries``, ``x-envoy-retriable-status-codes``, ``x-envoy-retriable-header-names`` and
``x-envoy-upstream-rq-per-try-timeout-ms`` headers; the connection manager removes them
from external requests, so only internal (trusted) clients can ask for retries this way.
The per-request state lives in retry_state.py.

``retry_on`` conditions (Envoy's names; unknown names are an error in the config and
ignored in the header, as in Envoy):

- ``5xx``: a 5xx response, or no response at all (reset, connect failure, timeout of a
  try); ``gateway-error``: the same with 502/503/504 only;
- ``reset``: no response (reset, disconnect, connect failure, per-try timeout);
- ``connect-failure``: the upstream connection could not be made;
- ``retriable-4xx``: a 409; ``retriable-status-codes``: the policy's or the header's codes;
- ``retriable-headers``: a response matching one of ``retriable_headers``;
- ``envoy-ratelimited``: a response carrying ``x-envoy-ratelimited`` (never retried otherwise);
- ``refused-stream``: an HTTP/2 upstream refused the stream (RST_STREAM REFUSED_STREAM,
  or a GOAWAY that left it out: never processed, so safe to retry).

The gRPC conditions, in a policy's ``retry_on`` or an internal request's
``x-envoy-retry-grpc-on`` (not in ``x-envoy-retry-on``): ``cancelled``, ``deadline-exceeded``,
``internal``, ``resource-exhausted`` and ``unavailable`` retry a response whose headers carry
that ``grpc-status`` (a trailers-only answer; the status of trailers comes too late, as in
Envoy). ``retry_priority``: ``envoy.retry_priorities.previous_priorities``
(retry_priority.py), the one Envoy has. Not supported yet, and refused by name:
``retry_options_predicates``, ``rate_limited_retry_back_off``, retry host predicates other
than ``envoy.retry_host_predicates.previous_hosts``.

``per_try_idle_timeout`` bounds the time a try may go without progress from the upstream
(its response head or body): it starts once the request is complete and the try has its
upstream stream, keeps running while the response streams, and when it fires the try ends
as a per-try timeout does (retried the same way), counted as ``upstream_rq_per_try_idle_timeout``
with the details ``upstream_per_try_idle_timeout``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from legatus.common.matchers import HeaderMatcher
from legatus.config.errors import ConfigError, join_path
from legatus.config.proto_json import message_class, type_name
from legatus.config.supported import check_supported


class RetryOn(enum.IntFlag):
    FIVE_XX = 0x1
    GATEWAY_ERROR = 0x2
    CONNECT_FAILURE = 0x4
    RETRIABLE_4XX = 0x8
    REFUSED_STREAM = 0x10
    RETRIABLE_STATUS_CODES = 0x20
    RETRIABLE_HEADERS = 0x40
    RESET = 0x80
    ENVOY_RATE_LIMITED = 0x100
    # gRPC statuses of a trailers-only response (grpc-status in the response headers)
    GRPC_CANCELLED = 0x200
    GRPC_DEADLINE_EXCEEDED = 0x400
    GRPC_RESOURCE_EXHAUSTED = 0x800
    GRPC_UNAVAILABLE = 0x1000
    GRPC_INTERNAL = 0x2000


_NAMES = {
    "5xx": RetryOn.FIVE_XX,
    "gateway-error": RetryOn.GATEWAY_ERROR,
    "connect-failure": RetryOn.CONNECT_FAILURE,
    "retriable-4xx": RetryOn.RETRIABLE_4XX,
    "refused-stream": RetryOn.REFUSED_STREAM,
    "retriable-status-codes": RetryOn.RETRIABLE_STATUS_CODES,
    "retriable-headers": RetryOn.RETRIABLE_HEADERS,
    "reset": RetryOn.RESET,
    "envoy-ratelimited": RetryOn.ENVOY_RATE_LIMITED,
}
_GRPC_NAMES = {
    "cancelled": RetryOn.GRPC_CANCELLED,
    "deadline-exceeded": RetryOn.GRPC_DEADLINE_EXCEEDED,
    "internal": RetryOn.GRPC_INTERNAL,
    "resource-exhausted": RetryOn.GRPC_RESOURCE_EXHAUSTED,
    "unavailable": RetryOn.GRPC_UNAVAILABLE,
}
# grpc-status code -> the condition that retries it
GRPC_STATUS_FLAGS = {
    1: int(RetryOn.GRPC_CANCELLED),
    4: int(RetryOn.GRPC_DEADLINE_EXCEEDED),
    8: int(RetryOn.GRPC_RESOURCE_EXHAUSTED),
    13: int(RetryOn.GRPC_INTERNAL),
    14: int(RetryOn.GRPC_UNAVAILABLE),
}
GRPC_ANY = sum(GRPC_STATUS_FLAGS.values())
_ALL_NAMES = {**_NAMES, **_GRPC_NAMES}  # a policy's retry_on takes both kinds
_FIELDS = (
    "retry_on", "num_retries", "per_try_timeout", "per_try_idle_timeout",
    "retry_host_predicate", "host_selection_retry_max_attempts", "retriable_status_codes",
    "retry_back_off", "retriable_headers", "retriable_request_headers", "retry_priority",
)  # fmt: skip
PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
PREVIOUS_PRIORITIES = "envoy.retry_priorities.previous_priorities"
_PREVIOUS_PRIORITIES_TYPE = (
    "envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig"
)
_PREVIOUS_HOSTS_TYPE = "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
DEFAULT_BASE_INTERVAL = 0.025  # seconds (runtime upstream.base_retry_backoff_ms)


def parse_retry_on(text: str, names=_NAMES) -> tuple[int, list[str]]:
    """The flags a comma-separated ``retry_on`` names, and the names it does not know
    (``names``: the HTTP conditions, as ``x-envoy-retry-on`` takes them; ``_GRPC_NAMES`` for
    ``x-envoy-retry-grpc-on``)."""
    flags = 0
    unknown = []
    for token in text.split(","):
        token = token.strip(" \t")
        if not token:
            continue
        flag = names.get(token)
        if flag is None:
            unknown.append(token)
        else:
            flags |= int(flag)
    return flags, unknown


def parse_retry_grpc_on(text: str) -> int:
    """The gRPC conditions ``x-envoy-retry-grpc-on`` names (unknown names are ignored)."""
    return parse_retry_on(text, _GRPC_NAMES)[0]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    retry_on: int = 0
    num_retries: int = 1
    per_try_timeout: float = 0.0  # seconds; 0: none
    per_try_idle_timeout: float = 0.0  # seconds without upstream progress in a try; 0: none
    retriable_status_codes: frozenset[int] = frozenset()
    retriable_headers: tuple[HeaderMatcher, ...] = ()
    retriable_request_headers: tuple[HeaderMatcher, ...] = ()
    base_interval: float = DEFAULT_BASE_INTERVAL
    max_interval: float = 10 * DEFAULT_BASE_INTERVAL
    previous_hosts: bool = False  # the previous_hosts retry host predicate
    host_selection_max_attempts: int = 1
    # The previous_priorities retry priority's update_frequency; 0: no retry priority.
    previous_priorities: int = 0


EMPTY_POLICY = RetryPolicy(retry_on=0)


def compile_hedge_policy(proto, path: str) -> bool:
    """``hedge_on_per_try_timeout``. Envoy implements nothing else of HedgePolicy for HTTP
    (``initial_requests`` and ``additional_request_chance`` are documented as not
    implemented): they are refused rather than silently ignored."""
    check_supported(proto, ("hedge_on_per_try_timeout", "initial_requests"), path, "HedgePolicy")
    if proto.HasField("initial_requests") and proto.initial_requests.value != 1:
        raise ConfigError(
            join_path(path, "initial_requests"),
            "initial_requests other than 1 is not supported (Envoy does not implement it)",
        )
    return proto.hedge_on_per_try_timeout


def _seconds(d) -> float:
    return d.seconds + d.nanos / 1e9


def compile_retry_policy(proto, path: str) -> RetryPolicy:
    check_supported(proto, _FIELDS, path, "RetryPolicy")
    flags, unknown = parse_retry_on(proto.retry_on, _ALL_NAMES)
    for name in unknown:
        raise ConfigError(join_path(path, "retry_on"), f"invalid retry policy: {name}")
    previous_hosts = False
    for i, predicate in enumerate(proto.retry_host_predicate):
        ppath = f"{join_path(path, 'retry_host_predicate')}[{i}]"
        predicate_type = type_name(predicate.typed_config.type_url)
        if predicate.name != PREVIOUS_HOSTS and predicate_type != _PREVIOUS_HOSTS_TYPE:
            raise ConfigError(
                ppath,
                f"retry host predicate '{predicate.name}' is not supported by legatus "
                f"(only {PREVIOUS_HOSTS})",
            )
        previous_hosts = True
    previous_priorities = (
        _previous_priorities(proto.retry_priority, join_path(path, "retry_priority"))
        if proto.HasField("retry_priority")
        else 0
    )
    base = DEFAULT_BASE_INTERVAL
    maximum = None
    if proto.HasField("retry_back_off"):
        back_off = proto.retry_back_off
        bpath = join_path(path, "retry_back_off")
        base = _seconds(back_off.base_interval)
        if base <= 0:
            raise ConfigError(join_path(bpath, "base_interval"), "must be greater than 0")
        if back_off.HasField("max_interval"):
            maximum = _seconds(back_off.max_interval)
            if maximum < base:
                raise ConfigError(
                    join_path(bpath, "max_interval"),
                    "max_interval must be greater than or equal to the base_interval",
                )
    return RetryPolicy(
        retry_on=int(flags),
        num_retries=proto.num_retries.value if proto.HasField("num_retries") else 1,
        per_try_timeout=_seconds(proto.per_try_timeout),
        per_try_idle_timeout=_seconds(proto.per_try_idle_timeout),
        retriable_status_codes=frozenset(proto.retriable_status_codes),
        retriable_headers=tuple(
            HeaderMatcher(m, f"{join_path(path, 'retriable_headers')}[{i}]")
            for i, m in enumerate(proto.retriable_headers)
        ),
        retriable_request_headers=tuple(
            HeaderMatcher(m, f"{join_path(path, 'retriable_request_headers')}[{i}]")
            for i, m in enumerate(proto.retriable_request_headers)
        ),
        base_interval=base,
        max_interval=maximum if maximum is not None else 10 * base,
        previous_hosts=previous_hosts,
        host_selection_max_attempts=max(1, proto.host_selection_retry_max_attempts or 1),
        previous_priorities=previous_priorities,
    )


def _previous_priorities(proto, path: str) -> int:
    """The ``update_frequency`` of an ``envoy.retry_priorities.previous_priorities`` (the one
    retry priority Envoy has; router/retry_priority.py)."""
    name = type_name(proto.typed_config.type_url) if proto.HasField("typed_config") else ""
    if name != _PREVIOUS_PRIORITIES_TYPE:
        raise ConfigError(
            path,
            f"retry priority '{proto.name}' is not supported by legatus (only "
            f"{PREVIOUS_PRIORITIES} with {_PREVIOUS_PRIORITIES_TYPE})",
        )
    config = message_class(name)()
    proto.typed_config.Unpack(config)
    where = join_path(path, "typed_config")
    check_supported(config, ("update_frequency",), where, "PreviousPrioritiesConfig")
    if config.update_frequency <= 0:
        raise ConfigError(join_path(where, "update_frequency"), "must be greater than 0")
    return config.update_frequency
