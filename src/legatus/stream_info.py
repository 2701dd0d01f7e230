"""What happened on one connection (TCP) or stream (HTTP): the access log's input.

Envoy's ``StreamInfo``: timings, byte counts, addresses, the upstream picked,
and the response flags that explain a failure. Filled in by the filters as the
connection or stream progresses; read by access loggers when it ends.
"""

from __future__ import annotations

import enum
import functools
import time
from typing import Any


class ResponseFlag(enum.IntFlag):
    """Envoy's response flags, in Envoy's order (the order of ``%RESPONSE_FLAGS%``)."""

    FAILED_LOCAL_HEALTH_CHECK = 1 << 0  # LH
    NO_HEALTHY_UPSTREAM = 1 << 1  # UH
    UPSTREAM_REQUEST_TIMEOUT = 1 << 2  # UT
    LOCAL_RESET = 1 << 3  # LR
    UPSTREAM_REMOTE_RESET = 1 << 4  # UR
    UPSTREAM_CONNECTION_FAILURE = 1 << 5  # UF
    UPSTREAM_CONNECTION_TERMINATION = 1 << 6  # UC
    UPSTREAM_OVERFLOW = 1 << 7  # UO
    NO_ROUTE_FOUND = 1 << 8  # NR
    DELAY_INJECTED = 1 << 9  # DI
    FAULT_INJECTED = 1 << 10  # FI
    RATE_LIMITED = 1 << 11  # RL
    UNAUTHORIZED_EXTERNAL_SERVICE = 1 << 12  # UAEX
    RATE_LIMIT_SERVICE_ERROR = 1 << 13  # RLSE
    DOWNSTREAM_CONNECTION_TERMINATION = 1 << 14  # DC
    UPSTREAM_RETRY_LIMIT_EXCEEDED = 1 << 15  # URX
    STREAM_IDLE_TIMEOUT = 1 << 16  # SI
    INVALID_ENVOY_REQUEST_HEADERS = 1 << 17  # IH
    DOWNSTREAM_PROTOCOL_ERROR = 1 << 18  # DPE
    UPSTREAM_MAX_STREAM_DURATION_REACHED = 1 << 19  # UMSDR
    RESPONSE_FROM_CACHE_FILTER = 1 << 20  # RFCF
    NO_FILTER_CONFIG_FOUND = 1 << 21  # NFCF
    DURATION_TIMEOUT = 1 << 22  # DT
    UPSTREAM_PROTOCOL_ERROR = 1 << 23  # UPE
    NO_CLUSTER_FOUND = 1 << 24  # NC
    OVERLOAD_MANAGER = 1 << 25  # OM
    DNS_RESOLUTION_FAILURE = 1 << 26  # DF
    DROP_OVERLOAD = 1 << 27  # DO
    DOWNSTREAM_REMOTE_RESET = 1 << 28  # DR
    UNCONDITIONAL_DROP_OVERLOAD = 1 << 29  # UDO


# (flag, short name, long name), in Envoy's order: ``CORE_RESPONSE_FLAGS`` in
# source/common/stream_info/utility.h (and the ``in`` list of ResponseFlagFilter.flags in
# accesslog.proto, which has the same order). Checked against Envoy 1.40.
RESPONSE_FLAG_NAMES: tuple[tuple[ResponseFlag, str, str], ...] = (
    (ResponseFlag.FAILED_LOCAL_HEALTH_CHECK, "LH", "FailedLocalHealthCheck"),
    (ResponseFlag.NO_HEALTHY_UPSTREAM, "UH", "NoHealthyUpstream"),
    (ResponseFlag.UPSTREAM_REQUEST_TIMEOUT, "UT", "UpstreamRequestTimeout"),
    (ResponseFlag.LOCAL_RESET, "LR", "LocalReset"),
    (ResponseFlag.UPSTREAM_REMOTE_RESET, "UR", "UpstreamRemoteReset"),
    (ResponseFlag.UPSTREAM_CONNECTION_FAILURE, "UF", "UpstreamConnectionFailure"),
    (ResponseFlag.UPSTREAM_CONNECTION_TERMINATION, "UC", "UpstreamConnectionTermination"),
    (ResponseFlag.UPSTREAM_OVERFLOW, "UO", "UpstreamOverflow"),
    (ResponseFlag.NO_ROUTE_FOUND, "NR", "NoRouteFound"),
    (ResponseFlag.DELAY_INJECTED, "DI", "DelayInjected"),
    (ResponseFlag.FAULT_INJECTED, "FI", "FaultInjected"),
    (ResponseFlag.RATE_LIMITED, "RL", "RateLimited"),
    (ResponseFlag.UNAUTHORIZED_EXTERNAL_SERVICE, "UAEX", "UnauthorizedExternalService"),
    (ResponseFlag.RATE_LIMIT_SERVICE_ERROR, "RLSE", "RateLimitServiceError"),
    (ResponseFlag.DOWNSTREAM_CONNECTION_TERMINATION, "DC", "DownstreamConnectionTermination"),
    (ResponseFlag.UPSTREAM_RETRY_LIMIT_EXCEEDED, "URX", "UpstreamRetryLimitExceeded"),
    (ResponseFlag.STREAM_IDLE_TIMEOUT, "SI", "StreamIdleTimeout"),
    (ResponseFlag.INVALID_ENVOY_REQUEST_HEADERS, "IH", "InvalidEnvoyRequestHeaders"),
    (ResponseFlag.DOWNSTREAM_PROTOCOL_ERROR, "DPE", "DownstreamProtocolError"),
    (
        ResponseFlag.UPSTREAM_MAX_STREAM_DURATION_REACHED,
        "UMSDR",
        "UpstreamMaxStreamDurationReached",
    ),
    (ResponseFlag.RESPONSE_FROM_CACHE_FILTER, "RFCF", "ResponseFromCacheFilter"),
    (ResponseFlag.NO_FILTER_CONFIG_FOUND, "NFCF", "NoFilterConfigFound"),
    (ResponseFlag.DURATION_TIMEOUT, "DT", "DurationTimeout"),
    (ResponseFlag.UPSTREAM_PROTOCOL_ERROR, "UPE", "UpstreamProtocolError"),
    (ResponseFlag.NO_CLUSTER_FOUND, "NC", "NoClusterFound"),
    (ResponseFlag.OVERLOAD_MANAGER, "OM", "OverloadManagerTerminated"),
    (ResponseFlag.DNS_RESOLUTION_FAILURE, "DF", "DnsResolutionFailed"),
    (ResponseFlag.DROP_OVERLOAD, "DO", "DropOverload"),
    (ResponseFlag.DOWNSTREAM_REMOTE_RESET, "DR", "DownstreamRemoteReset"),
    (ResponseFlag.UNCONDITIONAL_DROP_OVERLOAD, "UDO", "UnconditionalDropOverload"),
)

FLAG_BY_SHORT_NAME: dict[str, ResponseFlag] = {short: f for f, short, _ in RESPONSE_FLAG_NAMES}


_NAMES: dict[ResponseFlag, tuple[str, str]] = {f: (s, n) for f, s, n in RESPONSE_FLAG_NAMES}


@functools.lru_cache(maxsize=256)
def response_flags_string(order: tuple[ResponseFlag, ...] | int, long: bool = False) -> str:
    """``%RESPONSE_FLAGS%`` (``UF,URX``) or, with ``long``, ``%RESPONSE_FLAGS_LONG%``; ``-``.

    Envoy 1.40 lists the flags in the order they were set (its router sets URX
    before UF, its tcp_proxy UF before URX), so StreamInfo keeps that order.
    """
    if isinstance(order, int):  # a bit set: Envoy's declaration order
        order = tuple(f for f, _, _ in RESPONSE_FLAG_NAMES if order & f)
    index = 1 if long else 0
    return ",".join(_NAMES[f][index] for f in order) if order else "-"


class StreamInfo:
    """Mutable record of one connection or stream. Times: wall clock start, monotonic spans.

    Every field has a class-level default, so making one (once per connection and once per
    HTTP request) sets only the start times; the rest is written when it happens."""

    end_monotonic: float | None = None
    upstream_connected_monotonic: float | None = None
    bytes_received = 0
    bytes_sent = 0
    response_flags = 0
    flag_order: tuple[ResponseFlag, ...] = ()
    connection_id: int | None = None
    downstream_remote_address: str | None = None  # "ip:port"
    downstream_direct_remote_address: str | None = None
    downstream_local_address: str | None = None
    upstream_host: str | None = None
    upstream_local_address: str | None = None
    upstream_cluster: str | None = None
    upstream_cluster_config: Any = None  # its ClusterConfig (%METADATA(CLUSTER:...)%)
    upstream_host_config: Any = None  # the HostConfig of the try (%METADATA(UPSTREAM_HOST...)%)
    listener_metadata: Any = None  # the listener's FrozenMetadata (%METADATA(LISTENER:...)%)
    upstream_transport_failure_reason: str | None = None
    connection_termination_details: str | None = None
    requested_server_name: str | None = None
    # TLS: the connection's SslConnectionInfo (None for plaintext), and why a transport
    # socket failed (%DOWNSTREAM_TRANSPORT_FAILURE_REASON%).
    downstream_ssl: Any = None
    upstream_ssl: Any = None
    downstream_transport_failure_reason: str | None = None
    route_name: str | None = None
    route: Any = None  # the RouteMatch the stream took (%METADATA(ROUTE|VIRTUAL_HOST:...)%)
    protocol: str | None = None  # "HTTP/1.1" for HTTP streams; None for TCP
    response_code: int | None = None
    response_code_details: str | None = None
    filter_state: dict | None = None
    upstream_connection_id: int | None = None  # %UPSTREAM_CONNECTION_ID%
    health_check = False  # set by the HTTP health_check filter; not_health_check_filter
    # Whether the request was gRPC as it arrived (local replies: http/local_reply.py); None: not
    # recorded yet.
    is_grpc_request: bool | None = None
    # HTTP stream timings (loop monotonic seconds; None until they happen), as Envoy's
    # DownstreamTiming / UpstreamTiming: %REQUEST_DURATION% and friends read them.
    last_downstream_rx_byte_received: float | None = None
    first_upstream_tx_byte_sent: float | None = None
    last_upstream_tx_byte_sent: float | None = None
    first_upstream_rx_byte_received: float | None = None
    last_upstream_rx_byte_received: float | None = None
    first_downstream_tx_byte_sent: float | None = None
    last_downstream_tx_byte_sent: float | None = None
    upstream_request_attempt_count: int | None = None  # the router's tries
    upstream_protocol: str | None = None  # "HTTP/1.1" once an upstream is chosen
    virtual_cluster_name: str | None = None
    dynamic_metadata: dict | None = None  # filter namespace -> Struct-like dict

    def __init__(self, *, now_monotonic: float, now_wall: float | None = None) -> None:
        self.start_time = time.time() if now_wall is None else now_wall
        self.start_monotonic = now_monotonic

    def set_flag(self, flag: ResponseFlag) -> None:
        if flag & (flag - 1):  # several at once
            self.set_flags(flag)
            return
        if flag and not self.response_flags & flag:
            self.response_flags |= flag
            self.flag_order += (flag,)

    def set_flags(self, flags: int) -> None:
        """Set several flags at once (Envoy's order among them)."""
        for flag, _, _ in RESPONSE_FLAG_NAMES:
            if flags & flag:
                self.set_flag(flag)

    def has_flag(self, flag: ResponseFlag) -> bool:
        return bool(self.response_flags & flag)

    def duration_ms(self) -> int | None:
        if self.end_monotonic is None:
            return None
        return int((self.end_monotonic - self.start_monotonic) * 1000)
