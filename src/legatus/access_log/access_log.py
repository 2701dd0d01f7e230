"""Access logs: ``envoy.config.accesslog.v3.AccessLog`` lists compiled into AccessLog objects.

An AccessLog pairs an optional filter (``AccessLogFilter``, compiled here into a tree of
small predicate objects) with the logger extension named by its ``typed_config`` (file,
stdout, stderr...), resolved through the registry. ``log(info, ...)`` is called once per
connection (TCP) or stream (HTTP) when it ends.

Runtime: legatus has no runtime layer yet, so every runtime key reads as absent: a
ComparisonFilter compares with ``value.default_value`` and a RuntimeFilter samples at
``percent_sampled`` (0% when unset, as in Envoy). The RuntimeFilter always draws its own
random number (Envoy derives it from ``x-request-id`` unless ``use_independent_randomness``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from legatus.common.matchers import HeaderMatcher
from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported
from legatus.registry import Category
from legatus.stream_info import FLAG_BY_SHORT_NAME

log = logging.getLogger("legatus.access_log")

Headers = Any  # Mapping[str, str] | None


class AccessLogFilter:
    """A compiled ``AccessLogFilter``: ``evaluate`` says whether to write the entry."""

    __slots__ = ()

    def evaluate(self, info, request_headers, response_headers, response_trailers) -> bool:
        raise NotImplementedError


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessLog:
    """One configured access log: its filter and its logger (an extension instance)."""

    name: str
    filter: AccessLogFilter | None
    instance: Any  # has log(info, request_headers, response_headers, response_trailers)

    def log(
        self,
        info,
        request_headers: Headers = None,
        response_headers: Headers = None,
        response_trailers: Headers = None,
    ) -> None:
        try:
            if self.filter is not None and not self.filter.evaluate(
                info, request_headers, response_headers, response_trailers
            ):
                return
            self.instance.log(info, request_headers, response_headers, response_trailers)
        except Exception:  # a log entry must never take the connection down
            log.exception("access log %s failed", self.name)


def create_access_logs(protos, context, path: str) -> tuple[AccessLog, ...]:
    """Compile a repeated ``AccessLog`` field (``path`` is the field's path)."""
    from legatus.config.validate import validate_message

    logs = []
    for i, proto in enumerate(protos):
        item_path = f"{path}[{i}]"
        check_supported(proto, ("name", "filter", "typed_config"), item_path, "AccessLog")
        filter_ = (
            compile_filter(proto.filter, join_path(item_path, "filter"), context)
            if proto.HasField("filter")
            else None
        )
        extension, config = context.registry.resolve(
            Category.ACCESS_LOGGER,
            name=proto.name,
            typed_config=proto.typed_config if proto.HasField("typed_config") else None,
            path=item_path,
        )
        config_path = join_path(item_path, "typed_config")
        errors = validate_message(config, config_path)
        if errors:
            raise errors[0]
        instance = extension.factory(config, context, config_path)
        logs.append(AccessLog(name=proto.name or extension.name, filter=filter_, instance=instance))
    return tuple(logs)


# Filters ------------------------------------------------------------------------------

_EQ, _GE, _LE, _NE = 0, 1, 2, 3


class _Comparison(AccessLogFilter):
    __slots__ = ("op", "value")

    def __init__(self, proto, path: str) -> None:
        check_supported(proto, ("op", "value"), path, "ComparisonFilter")
        # value.runtime_key names a runtime override; with no runtime, the default applies.
        self.op = proto.op
        self.value = proto.value.default_value

    def compare(self, lhs: int) -> bool:
        op, value = self.op, self.value
        if op == _GE:
            return lhs >= value
        if op == _LE:
            return lhs <= value
        if op == _NE:
            return lhs != value
        return lhs == value


class StatusCodeFilter(_Comparison):
    __slots__ = ()

    def evaluate(self, info, request_headers, response_headers, response_trailers) -> bool:
        return self.compare(info.response_code or 0)


class DurationFilter(_Comparison):
    __slots__ = ()

    def evaluate(self, info, request_headers, response_headers, response_trailers) -> bool:
        duration = info.duration_ms()
        return duration is not None and self.compare(duration)


class NotHealthCheckFilter(AccessLogFilter):
    __slots__ = ()

    def evaluate(self, info, request_headers, response_headers, response_trailers) -> bool:
        return not info.health_check


class TraceableFilter(AccessLogFilter):
    """True for requests traced because the service forced it; legatus traces nothing yet."""

    __slots__ = ()

    def evaluate(self, info, request_headers, response_headers, response_trailers) -> bool:
        return False


_DENOMINATORS = {0: 100, 1: 10_000, 2: 1_000_000}


class RuntimeFilter(AccessLogFilter):
    __slots__ = ("denominator", "numerator", "random")

    def __init__(self, proto, path: str, context) -> None:
        check_supported(
            proto,
            ("runtime_key", "percent_sampled", "use_independent_randomness"),
            path,
            "RuntimeFilter",
        )
        self.numerator = proto.percent_sampled.numerator
        self.denominator = _DENOMINATORS[proto.percent_sampled.denominator]
        self.random = context.random

    def evaluate(self, info, request_headers, response_headers, response_trailers) -> bool:
        return self.random.getrandbits(64) % self.denominator < self.numerator


class _Operator(AccessLogFilter):
    __slots__ = ("filters",)

    def __init__(self, proto, path: str, context) -> None:
        check_supported(proto, ("filters",), path)
        self.filters = tuple(
            compile_filter(f, f"{path}.filters[{i}]", context) for i, f in enumerate(proto.filters)
        )


class AndFilter(_Operator):
    __slots__ = ()

    def evaluate(self, info, request_headers, response_headers, response_trailers) -> bool:
        return all(
            f.evaluate(info, request_headers, response_headers, response_trailers)
            for f in self.filters
        )


class OrFilter(_Operator):
    __slots__ = ()

    def evaluate(self, info, request_headers, response_headers, response_trailers) -> bool:
        return any(
            f.evaluate(info, request_headers, response_headers, response_trailers)
            for f in self.filters
        )


class HeaderFilter(AccessLogFilter):
    __slots__ = ("matcher",)

    def __init__(self, proto, path: str) -> None:
        check_supported(proto, ("header",), path, "HeaderFilter")
        self.matcher = HeaderMatcher(proto.header, join_path(path, "header"))

    def evaluate(self, info, request_headers, response_headers, response_trailers) -> bool:
        return self.matcher.matches(request_headers or {})


class ResponseFlagFilter(AccessLogFilter):
    __slots__ = ("mask",)

    def __init__(self, proto, path: str) -> None:
        check_supported(proto, ("flags",), path, "ResponseFlagFilter")
        mask = 0
        for i, name in enumerate(proto.flags):
            flag = FLAG_BY_SHORT_NAME.get(name)
            if flag is None:
                raise ConfigError(f"{path}.flags[{i}]", f"unknown response flag '{name}'")
            mask |= flag
        self.mask = mask

    def evaluate(self, info, request_headers, response_headers, response_trailers) -> bool:
        if self.mask:
            return bool(info.response_flags & self.mask)
        return bool(info.response_flags)


_GRPC_MAX_KNOWN = 16
_GRPC_INVALID = -1
_HTTP_TO_GRPC = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}


def _grpc_status_from(headers) -> int | None:
    value = headers.get("grpc-status") if headers else None
    if not value:
        return None
    if not value.isdigit() or int(value) > _GRPC_MAX_KNOWN:
        return _GRPC_INVALID
    return int(value)


class GrpcStatusFilter(AccessLogFilter):
    """gRPC status from the trailers, else the headers, else mapped from the HTTP status."""

    __slots__ = ("exclude", "statuses")

    def __init__(self, proto, path: str) -> None:
        check_supported(proto, ("statuses", "exclude"), path, "GrpcStatusFilter")
        self.statuses = frozenset(proto.statuses)
        self.exclude = proto.exclude

    def evaluate(self, info, request_headers, response_headers, response_trailers) -> bool:
        status = _grpc_status_from(response_trailers)
        if status is None:
            status = _grpc_status_from(response_headers)
        if status is None:
            status = 2 if not info.response_code else _HTTP_TO_GRPC.get(info.response_code, 2)
        found = status in self.statuses
        return not found if self.exclude else found


_UNSUPPORTED_FILTERS = ("metadata_filter", "extension_filter", "log_type_filter")


def compile_filter(proto, path: str, context) -> AccessLogFilter:
    """Compile one ``AccessLogFilter`` (``path`` is where it sits)."""
    which = proto.WhichOneof("filter_specifier")
    sub = getattr(proto, which) if which else None
    sub_path = join_path(path, which or "filter_specifier")
    if which == "status_code_filter":
        return StatusCodeFilter(sub.comparison, join_path(sub_path, "comparison"))
    if which == "duration_filter":
        return DurationFilter(sub.comparison, join_path(sub_path, "comparison"))
    if which == "not_health_check_filter":
        return NotHealthCheckFilter()
    if which == "traceable_filter":
        return TraceableFilter()
    if which == "runtime_filter":
        return RuntimeFilter(sub, sub_path, context)
    if which == "and_filter":
        return AndFilter(sub, sub_path, context)
    if which == "or_filter":
        return OrFilter(sub, sub_path, context)
    if which == "header_filter":
        return HeaderFilter(sub, sub_path)
    if which == "response_flag_filter":
        return ResponseFlagFilter(sub, sub_path)
    if which == "grpc_status_filter":
        return GrpcStatusFilter(sub, sub_path)
    if which in _UNSUPPORTED_FILTERS:
        raise ConfigError(sub_path, f"access log filter '{which}' is not supported by legatus yet")
    raise ConfigError(sub_path, "an access log filter must set one filter_specifier")
