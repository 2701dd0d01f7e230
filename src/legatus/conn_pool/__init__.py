"""Upstream connection pools.

This package module holds what every pool and its users share: failure and reset reasons,
policies, settings, the per-cluster context and stats, and the callback contracts
(``PoolCallbacks`` for ``new_stream``, ``ResponseDecoder`` for a stream's response).
``base`` is the protocol-independent state machine (Envoy's ``ConnPoolImplBase``), ``http1``
the HTTP/1.1 client on the sans-I/O codec (``legatus.conn_pool.http1.Http1ConnPool``),
``http2`` the multiplexed HTTP/2 client (``legatus.conn_pool.http2.Http2ConnPool``)."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from typing import Any, Protocol

from legatus.http.headers import HeaderMap
from legatus.network.connection import DEFAULT_BUFFER_LIMIT
from legatus.stats.store import Scope, StatSet, counter, histogram
from legatus.upstream.host import Host
from legatus.upstream.resource_manager import ResourceManager, ResourcePriority
from legatus.upstream.stats import ClusterTrafficStats

DEFAULT_IDLE_TIMEOUT = 3600.0  # common_http_protocol_options.idle_timeout default (1 h)


class PoolFailureReason(enum.Enum):
    """Envoy's ``ConnectionPool::PoolFailureReason``."""

    OVERFLOW = "overflow"
    """A circuit breaker is open (pending queue or active requests)."""
    LOCAL_CONNECTION_FAILURE = "local connection failure"
    """The connection was closed locally before it connected."""
    REMOTE_CONNECTION_FAILURE = "remote connection failure"
    """The connect failed (refused, unreachable, reset)."""
    TIMEOUT = "connection timeout"
    """The cluster's ``connect_timeout`` passed first."""


class CancelPolicy(enum.Enum):
    DEFAULT = 0
    """Forget the stream; the connection it caused stays (a later stream will use it)."""
    CLOSE_EXCESS = 1
    """Also close a connecting connection that the queue no longer needs."""


class DrainBehavior(enum.Enum):
    DRAIN_EXISTING_CONNECTIONS = 0
    """Close idle connections, let busy ones finish their streams and close; new streams
    still open new connections."""
    DRAIN_AND_DELETE = 1
    """The pool is going away (host removed): close every connection as soon as it is idle;
    ``new_stream`` may no longer be called. Idle callbacks say when it is empty."""


class PoolStateError(RuntimeError):
    """A bug in the pool or its user (a transition the table forbids, a stream asked of a pool
    being deleted). Never caused by traffic."""


class ConnPoolStats(StatSet):
    """Envoy cluster stats only the pools count, declared under the same ``cluster.<name>.``
    scope as ``ClusterTrafficStats`` (to be folded into it when the router is wired)."""

    upstream_cx_overflow = counter()
    upstream_cx_max_requests = counter()
    upstream_cx_idle_timeout = counter()
    upstream_cx_close_notify = counter()
    upstream_cx_protocol_error = counter()
    upstream_rq_pending_overflow = counter()
    upstream_rq_cancelled = counter()
    upstream_rq_per_cx = histogram()  # streams a connection carried, when it closes


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolSettings:
    connect_timeout: float = 5.0  # the cluster's connect_timeout, seconds
    max_requests_per_connection: int = 0  # 0: unlimited
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT  # None or 0: never
    buffer_limit: int = DEFAULT_BUFFER_LIMIT  # per_connection_buffer_limit_bytes

    def __post_init__(self) -> None:
        if self.connect_timeout <= 0:
            raise ValueError("connect_timeout must be positive")
        if self.max_requests_per_connection < 0:
            raise ValueError("max_requests_per_connection must not be negative")
        if self.idle_timeout is not None and self.idle_timeout < 0:
            raise ValueError("idle_timeout must not be negative")


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolContext:
    """What the pools of one cluster and priority share on a worker."""

    loop: asyncio.AbstractEventLoop
    stats: ClusterTrafficStats
    pool_stats: ConnPoolStats
    resource_manager: ResourceManager
    settings: PoolSettings
    # The cluster's upstream transport socket factory (TLS), None for plaintext.
    transport_socket: Any = None

    @classmethod
    def for_cluster(
        cls,
        cluster: Any,
        scope: Scope,
        loop: asyncio.AbstractEventLoop,
        *,
        resource_manager: ResourceManager | None = None,
        max_requests_per_connection: int = 0,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
    ) -> PoolContext:
        """For a ``ThreadLocalCluster``; ``scope`` is its ``cluster.<stat_name>.`` scope."""
        config = cluster.config
        return cls(
            loop=loop,
            stats=cluster.stats,
            pool_stats=ConnPoolStats(scope),
            resource_manager=resource_manager or ResourceManager(scope, ResourcePriority.DEFAULT),
            settings=PoolSettings(
                connect_timeout=config.connect_timeout,
                buffer_limit=config.buffer_limit,
                max_requests_per_connection=max_requests_per_connection,
                idle_timeout=idle_timeout,
            ),
            transport_socket=getattr(cluster, "transport_socket", None),
        )


class PoolCallbacks(Protocol):
    """What ``new_stream`` reports to (Envoy's ``ConnectionPool::Callbacks``); exactly one of
    the two is called, unless the pending stream is cancelled first."""

    def on_pool_ready(self, encoder: Any, host: Host) -> None: ...

    def on_pool_failure(
        self, reason: PoolFailureReason, transport_failure_reason: str, host: Host | None
    ) -> None: ...


class StreamResetReason(enum.Enum):
    """Envoy's ``Http::StreamResetReason``; the value is its ``resetReasonToString``."""

    LOCAL_CONNECTION_FAILURE = "local connection failure"
    REMOTE_CONNECTION_FAILURE = "remote connection failure"
    CONNECTION_TIMEOUT = "connection timeout"
    CONNECTION_TERMINATION = "connection termination"
    """The upstream connection closed before the response was complete (router: UC)."""
    LOCAL_RESET = "local reset"
    OVERFLOW = "overflow"
    REMOTE_RESET = "remote reset"
    """The upstream reset the stream (HTTP/2 RST_STREAM; router: UR)."""
    REMOTE_REFUSED_STREAM_RESET = "remote refused stream reset"
    """The upstream refused the stream before processing it (HTTP/2 REFUSED_STREAM, or a
    GOAWAY that left it out): safe to retry (``retry_on: refused-stream``; router: UR)."""
    PROTOCOL_ERROR = "protocol error"
    """The upstream broke the protocol (router: 502, UPE)."""


class ResponseDecoder:
    """What a stream's response is delivered to; every hook defaults to doing nothing.

    After ``on_reset`` nothing else is called. ``end_stream`` (or ``on_trailers``) is the last
    event of a complete response."""

    def on_informational_headers(self, headers: HeaderMap) -> None:
        """A 1xx other than 101 (100 Continue...); the final response follows."""

    def on_headers(self, headers: HeaderMap, end_stream: bool) -> None: ...

    def on_data(self, data: bytes, end_stream: bool) -> None: ...

    def on_trailers(self, trailers: HeaderMap) -> None: ...

    def on_reset(self, reason: StreamResetReason, details: str) -> None:
        """The stream is gone before its response completed. ``details`` is the transport
        failure reason (empty for a connection closed after connecting, as in Envoy)."""
