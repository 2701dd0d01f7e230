"""A cluster's ``health_checks`` compiled once into an immutable HealthCheckConfig.

Envoy's defaults: reuse_connection true, no_traffic_interval 60 s, no_traffic_healthy_interval
= no_traffic_interval, unhealthy_interval = interval, unhealthy_edge_interval =
unhealthy_interval, healthy_edge_interval = interval; HTTP expects 200 only (not 2xx) unless
``expected_statuses`` says otherwise. A field legatus does not act on is refused by its path.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2, health_check_pb2

from legatus.config.errors import ConfigError
from legatus.config.supported import check_supported

HealthCheck = health_check_pb2.HealthCheck
DEFAULT_NO_TRAFFIC_INTERVAL = 60.0
USER_AGENT = "Envoy/HC"

_SUPPORTED = frozenset(
    {
        "timeout",
        "interval",
        "initial_jitter",
        "interval_jitter",
        "interval_jitter_percent",
        "unhealthy_threshold",
        "healthy_threshold",
        "reuse_connection",
        "http_health_check",
        "tcp_health_check",
        "grpc_health_check",
        "no_traffic_interval",
        "no_traffic_healthy_interval",
        "unhealthy_interval",
        "unhealthy_edge_interval",
        "healthy_edge_interval",
        # Without an event log (event_log_path is refused) these two change nothing.
        "always_log_health_check_failures",
        "always_log_health_check_success",
    }
)
_SUPPORTED_HTTP = frozenset(
    {
        "host",
        "path",
        "request_headers_to_add",
        "request_headers_to_remove",
        "expected_statuses",
        "retriable_statuses",
        "codec_client_type",
        "method",
    }
)
_SUPPORTED_HEADER_OPTION = frozenset({"header", "append", "append_action", "keep_empty_value"})
_METHODS = {
    base_pb2.METHOD_UNSPECIFIED: "GET",
    base_pb2.GET: "GET",
    base_pb2.HEAD: "HEAD",
    base_pb2.POST: "POST",
    base_pb2.PUT: "PUT",
    base_pb2.DELETE: "DELETE",
    base_pb2.OPTIONS: "OPTIONS",
    base_pb2.TRACE: "TRACE",
    base_pb2.PATCH: "PATCH",
}


class AppendAction(enum.Enum):
    APPEND_IF_EXISTS_OR_ADD = 0
    ADD_IF_ABSENT = 1
    OVERWRITE_IF_EXISTS_OR_ADD = 2
    OVERWRITE_IF_EXISTS = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderToAdd:
    name: str  # lower case
    value: str
    action: AppendAction
    keep_empty_value: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpCheckConfig:
    path: str
    host: str  # "" -> the cluster's name
    method: str
    headers_to_add: tuple[HeaderToAdd, ...]
    headers_to_remove: frozenset[str]
    expected: tuple[tuple[int, int], ...]  # half-open ranges
    retriable: tuple[tuple[int, int], ...]

    def is_expected(self, code: int) -> bool:
        return any(lo <= code < hi for lo, hi in self.expected)

    def is_retriable(self, code: int) -> bool:
        return any(lo <= code < hi for lo, hi in self.retriable)


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpCheckConfig:
    send: bytes  # b"": connect only
    receive: tuple[bytes, ...]  # blocks to find in order, not necessarily contiguous


@dataclass(frozen=True, slots=True, kw_only=True)
class GrpcCheckConfig:
    service_name: str  # HealthCheckRequest.service ("": the server's overall health)
    authority: str  # "" -> the cluster's name
    initial_metadata: tuple[tuple[str, str], ...]  # (lower-case name, value), in order


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthCheckConfig:
    """Times in seconds."""

    timeout: float
    interval: float
    initial_jitter: float
    interval_jitter: float
    interval_jitter_percent: int
    unhealthy_threshold: int
    healthy_threshold: int
    reuse_connection: bool
    no_traffic_interval: float
    no_traffic_healthy_interval: float
    unhealthy_interval: float
    unhealthy_edge_interval: float
    healthy_edge_interval: float
    http: HttpCheckConfig | None = None
    tcp: TcpCheckConfig | None = None
    grpc: GrpcCheckConfig | None = None


def _seconds(d) -> float:
    return d.seconds + d.nanos / 1e9


def _ms(d) -> float:
    """A duration as Envoy reads it (whole milliseconds), in seconds."""
    return (d.seconds * 1000 + d.nanos // 1_000_000) / 1000


def compile_health_checks(protos, path: str) -> HealthCheckConfig | None:
    """``Cluster.health_checks``: none, or one (Envoy refuses more than one)."""
    if not protos:
        return None
    if len(protos) > 1:
        raise ConfigError(path, "Multiple health checks not supported")
    return compile_health_check(protos[0], f"{path}[0]")


def compile_health_check(proto: HealthCheck, path: str) -> HealthCheckConfig:
    which = proto.WhichOneof("health_checker")
    if which == "custom_health_check":
        raise ConfigError(
            f"{path}.custom_health_check",
            f"custom health checker '{proto.custom_health_check.name}' is not supported by "
            "legatus yet",
        )
    check_supported(proto, _SUPPORTED, path, "HealthCheck")
    interval = _ms(proto.interval)
    unhealthy_interval = (
        _ms(proto.unhealthy_interval) if proto.HasField("unhealthy_interval") else interval
    )
    no_traffic = (
        _ms(proto.no_traffic_interval)
        if proto.HasField("no_traffic_interval")
        else DEFAULT_NO_TRAFFIC_INTERVAL
    )
    http = tcp = grpc = None
    if which == "http_health_check":
        http = _http(proto.http_health_check, f"{path}.http_health_check")
    elif which == "tcp_health_check":
        tcp = _tcp(proto.tcp_health_check, f"{path}.tcp_health_check")
    elif which == "grpc_health_check":
        grpc = _grpc(proto.grpc_health_check, f"{path}.grpc_health_check")
    return HealthCheckConfig(
        timeout=_ms(proto.timeout),
        interval=interval,
        initial_jitter=_ms(proto.initial_jitter),
        interval_jitter=_ms(proto.interval_jitter),
        interval_jitter_percent=proto.interval_jitter_percent,
        unhealthy_threshold=proto.unhealthy_threshold.value,
        healthy_threshold=proto.healthy_threshold.value,
        reuse_connection=proto.reuse_connection.value
        if proto.HasField("reuse_connection")
        else True,
        no_traffic_interval=no_traffic,
        no_traffic_healthy_interval=_ms(proto.no_traffic_healthy_interval)
        if proto.HasField("no_traffic_healthy_interval")
        else no_traffic,
        unhealthy_interval=unhealthy_interval,
        unhealthy_edge_interval=_ms(proto.unhealthy_edge_interval)
        if proto.HasField("unhealthy_edge_interval")
        else unhealthy_interval,
        healthy_edge_interval=_ms(proto.healthy_edge_interval)
        if proto.HasField("healthy_edge_interval")
        else interval,
        http=http,
        tcp=tcp,
        grpc=grpc,
    )


def _ranges(ranges, path: str) -> tuple[tuple[int, int], ...]:
    out = []
    for i, r in enumerate(ranges):
        if r.start < 100:
            raise ConfigError(
                f"{path}[{i}].start",
                f"Invalid http expected status range: expecting start >= 100, but found {r.start}",
            )
        if r.end > 600:
            raise ConfigError(
                f"{path}[{i}].end",
                f"Invalid http expected status range: expecting end <= 600, but found {r.end}",
            )
        if r.start >= r.end:
            raise ConfigError(
                path + f"[{i}]",
                "Invalid http expected status range: expecting start < end, but found "
                f"start={r.start} and end={r.end}",
            )
        out.append((r.start, r.end))
    return tuple(out)


def _http(proto, path: str) -> HttpCheckConfig:
    check_supported(proto, _SUPPORTED_HTTP, path, "HttpHealthCheck")
    from envoy.type.v3 import http_pb2

    if proto.codec_client_type != http_pb2.HTTP1:
        raise ConfigError(
            f"{path}.codec_client_type",
            f"codec_client_type {http_pb2.CodecClientType.Name(proto.codec_client_type)} is not "
            "supported by legatus yet (HTTP1 is)",
        )
    if proto.method == base_pb2.CONNECT:
        raise ConfigError(f"{path}.method", "Methods CONNECT is not allowed.")
    headers = []
    for i, option in enumerate(proto.request_headers_to_add):
        hpath = f"{path}.request_headers_to_add[{i}]"
        check_supported(option, _SUPPORTED_HEADER_OPTION, hpath, "HeaderValueOption")
        if option.HasField("append"):
            raise ConfigError(f"{hpath}.append", "append is deprecated; use append_action")
        value = option.header.value or option.header.raw_value.decode("latin-1")
        if "%" in value:
            raise ConfigError(
                f"{hpath}.header.value",
                "command operators (%...%) in health check headers are not supported by "
                "legatus yet",
            )
        headers.append(
            HeaderToAdd(
                name=option.header.key.lower(),
                value=value,
                action=AppendAction(option.append_action),
                keep_empty_value=option.keep_empty_value,
            )
        )
    expected = _ranges(proto.expected_statuses, f"{path}.expected_statuses") or ((200, 201),)
    return HttpCheckConfig(
        path=proto.path,
        host=proto.host,
        method=_METHODS.get(proto.method, "GET"),
        headers_to_add=tuple(headers),
        headers_to_remove=frozenset(h.lower() for h in proto.request_headers_to_remove),
        expected=expected,
        retriable=_ranges(proto.retriable_statuses, f"{path}.retriable_statuses"),
    )


def _payload(proto, path: str) -> bytes:
    which = proto.WhichOneof("payload")
    if which == "binary":
        return proto.binary
    try:
        return bytes.fromhex(proto.text)
    except ValueError:
        raise ConfigError(f"{path}.text", f"invalid hex string '{proto.text}'") from None


def _tcp(proto, path: str) -> TcpCheckConfig:
    check_supported(proto, ("send", "receive"), path, "TcpHealthCheck")
    send = _payload(proto.send, f"{path}.send") if proto.HasField("send") else b""
    receive = tuple(_payload(p, f"{path}.receive[{i}]") for i, p in enumerate(proto.receive))
    return TcpCheckConfig(send=send, receive=receive)


def _grpc(proto, path: str) -> GrpcCheckConfig:
    check_supported(proto, ("service_name", "authority", "initial_metadata"), path,
                    "GrpcHealthCheck")  # fmt: skip
    metadata = []
    for i, option in enumerate(proto.initial_metadata):
        mpath = f"{path}.initial_metadata[{i}]"
        check_supported(option, ("header",), mpath, "HeaderValueOption")
        header = option.header
        value = header.value or header.raw_value.decode("latin-1")
        if "%" in value:
            raise ConfigError(
                f"{mpath}.header.value",
                "command operators (%...%) in health check metadata are not supported by "
                "legatus yet",
            )
        metadata.append((header.key.lower(), value))
    return GrpcCheckConfig(
        service_name=proto.service_name,
        authority=proto.authority,
        initial_metadata=tuple(metadata),
    )
