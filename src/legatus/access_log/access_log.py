"""Access logs: ``envoy.config.accesslog.v3.AccessLog`` lists compiled into AccessLog objects.

An AccessLog pairs an optional filter (``AccessLogFilter``, compiled here into a tree of
small predicate objects) with the logger extension named by its ``typed_config`` (file,
stdout, stderr...), resolved through the registry. ``log(info, ...)`` is called once per
connection (TCP) or stream (HTTP) when it ends.

Runtime: filters read the process's runtime (``context.runtime``) at evaluation time, as
Envoy's do, so ``/runtime_modify`` changes them at once; without a runtime every key reads
as absent. A ComparisonFilter compares with ``runtime_key``'s integer, else
``value.default_value``. A RuntimeFilter logs when ``random % denominator`` is below
``runtime_key``'s integer (a numerator over the filter's own denominator, capped at it),
else below ``percent_sampled.numerator`` (0% when unset): Envoy's
``featureEnabled(key, numerator, random, denominator)``. Its random number is the
``x-request-id`` read as Envoy's UUID request-id extension does (the first 8 characters as
hexadecimal), so every log sampling the same request agrees; a missing or unreadable id,
or ``use_independent_randomness``, draws a fresh one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from legatus.access_log import log_type as log_types
from legatus.access_log.http_operators import grpc_status
from legatus.access_log.providers import milliseconds
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
    """One configured access log: its filter, its logger (an extension instance) and the
    type of its entries when the caller names none (log_type.py)."""

    name: str
    filter: AccessLogFilter | None
    instance: Any  # has log(info, request_headers, response_headers, response_trailers)
    log_type: str = log_types.NOT_SET

    def log(
        self,
        info,
        request_headers: Headers = None,
        response_headers: Headers = None,
        response_trailers: Headers = None,
        log_type: str | None = None,
    ) -> None:
        info.access_log_type = log_type or self.log_type
        try:
            if self.filter is not None and not self.filter.evaluate(
                info, request_headers, response_headers, response_trailers
            ):
                return
            self.instance.log(info, request_headers, response_headers, response_trailers)
        except Exception:  # a log entry must never take the connection down
            log.exception("access log %s failed", self.name)
        finally:
            info.access_log_type = log_types.NOT_SET


def create_access_logs(
    protos, context, path: str, *, log_type: str = log_types.NOT_SET
) -> tuple[AccessLog, ...]:
    """Compile a repeated ``AccessLog`` field (``path`` is the field's path); ``log_type``:
    the type of their entries unless a caller names another (Envoy's default for the place:
    ``DownstreamEnd`` for a connection manager, ``TcpConnectionEnd`` for tcp_proxy...)."""
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
        logs.append(
            AccessLog(
                name=proto.name or extension.name,
                filter=filter_,
                instance=instance,
                log_type=log_type,
            )
        )
    return tuple(logs)


# Filters ------------------------------------------------------------------------------

_EQ, _GE, _LE, _NE = 0, 1, 2, 3


class _Comparison(AccessLogFilter):
    __slots__ = ("default", "op", "runtime", "runtime_key")

    def __init__(self, proto, path: str, context) -> None:
        check_supported(proto, ("op", "value"), path, "ComparisonFilter")
        self.op = proto.op
        self.default = proto.value.default_value
        self.runtime_key = proto.value.runtime_key
        self.runtime = getattr(context, "runtime", None) if self.runtime_key else None

    def compare(self, lhs: int) -> bool:
        op, value = self.op, self.default
        if self.runtime is not None:
            value = self.runtime.get_integer(self.runtime_key, value)
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
        end = info.end_monotonic
        return end is not None and self.compare(milliseconds(info.start_monotonic, end))


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
    __slots__ = ("denominator", "independent", "key", "numerator", "random", "runtime")

    def __init__(self, proto, path: str, context) -> None:
        check_supported(
            proto,
            ("runtime_key", "percent_sampled", "use_independent_randomness"),
            path,
            "RuntimeFilter",
        )
        self.key = proto.runtime_key
        self.numerator = proto.percent_sampled.numerator
        self.denominator = _DENOMINATORS[proto.percent_sampled.denominator]
        self.independent = proto.use_independent_randomness
        self.random = context.random
        self.runtime = getattr(context, "runtime", None)

    def evaluate(self, info, request_headers, response_headers, response_trailers) -> bool:
        denominator = self.denominator
        value = None
        if not self.independent and request_headers is not None:
            value = request_id_integer(request_headers.get("x-request-id"))
        if value is None:
            value = self.random.getrandbits(64)
        numerator = self.numerator
        if self.runtime is not None:
            numerator = self.runtime.get_integer(self.key, numerator)
        return value % denominator < min(numerator, denominator)


_HEX = frozenset("0123456789abcdefABCDEF")
_SPACE = " \t\n\v\f\r"


def request_id_integer(request_id: str | None) -> int | None:
    """Envoy's UUIDRequestIDExtension::toInteger: the first 8 characters as hexadecimal.

    They are read as ``strtoull(s, &end, 16)`` reads them, all 8 consumed: leading blanks,
    a sign (a minus wraps around, as unsigned arithmetic does) and ``0x`` are allowed.
    """
    if request_id is None or len(request_id) < 8:
        return None
    text = request_id[:8].lstrip(_SPACE)
    negative = text[:1] == "-"
    if text and text[0] in "+-":
        text = text[1:]
    if text[:2] in ("0x", "0X") and len(text) > 2 and text[2] in _HEX:
        text = text[2:]
    if not text or not _HEX.issuperset(text):
        return None
    value = int(text, 16)
    return (-value) % 2**64 if negative else value


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


_GRPC_UNKNOWN = 2


class GrpcStatusFilter(AccessLogFilter):
    """gRPC status from the trailers, else the headers, else mapped from the HTTP status."""

    __slots__ = ("exclude", "statuses")

    def __init__(self, proto, path: str) -> None:
        check_supported(proto, ("statuses", "exclude"), path, "GrpcStatusFilter")
        self.statuses = frozenset(proto.statuses)
        self.exclude = proto.exclude

    def evaluate(self, info, request_headers, response_headers, response_trailers) -> bool:
        status = grpc_status(info, response_headers, response_trailers, allow_user_defined=False)
        if status is None:
            status = _GRPC_UNKNOWN
        found = status in self.statuses
        return not found if self.exclude else found


class LogTypeFilter(AccessLogFilter):
    """``log_type_filter``: the entry's type is (``exclude``: is not) one of ``types``."""

    __slots__ = ("exclude", "types")

    def __init__(self, proto, path: str) -> None:
        check_supported(proto, ("types", "exclude"), path, "LogTypeFilter")
        types = []
        for i, value in enumerate(proto.types):
            try:
                types.append(log_types.name_of(value))
            except ValueError:
                raise ConfigError(
                    f"{path}.types[{i}]", f"unknown access log type {value}"
                ) from None
        self.types = frozenset(types)
        self.exclude = proto.exclude

    def evaluate(self, info, request_headers, response_headers, response_trailers) -> bool:
        return (log_types.current(info) in self.types) != self.exclude


_UNSUPPORTED_FILTERS = ("metadata_filter", "extension_filter")


def compile_filter(proto, path: str, context) -> AccessLogFilter:
    """Compile one ``AccessLogFilter`` (``path`` is where it sits)."""
    which = proto.WhichOneof("filter_specifier")
    sub = getattr(proto, which) if which else None
    sub_path = join_path(path, which or "filter_specifier")
    if which == "status_code_filter":
        return StatusCodeFilter(sub.comparison, join_path(sub_path, "comparison"), context)
    if which == "duration_filter":
        return DurationFilter(sub.comparison, join_path(sub_path, "comparison"), context)
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
    if which == "log_type_filter":
        return LogTypeFilter(sub, sub_path)
    if which in _UNSUPPORTED_FILTERS:
        raise ConfigError(sub_path, f"access log filter '{which}' is not supported by legatus yet")
    raise ConfigError(sub_path, "an access log filter must set one filter_specifier")
