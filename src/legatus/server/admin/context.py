"""What the admin endpoints may see and do in the main process.

The admin handlers depend on this narrow interface, not on the Server class, so
they can be tested against a fake and the server can change underneath them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from legatus.server.logging import LogSink
    from legatus.server.options import Options
    from legatus.stats.store import Store


class ServerState(enum.IntEnum):
    """``server.state``: Envoy's values."""

    LIVE = 0
    DRAINING = 1
    PRE_INITIALIZING = 2
    INITIALIZING = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerInfo:
    name: str
    address: str  # "127.0.0.1:10000" (port 0 resolved), or "[::1]:10000"
    config: Any  # envoy.config.listener.v3.Listener, port resolved


@dataclass(frozen=True, slots=True, kw_only=True)
class HostInfo:
    address: str  # "127.0.0.1:8080"
    hostname: str
    weight: int
    priority: int
    region: str = ""
    zone: str = ""
    sub_zone: str = ""
    health_flags: tuple[str, ...] = ()  # e.g. ("/failed_active_hc",); () means healthy
    stats_prefix: str = ""  # hidden per-host stats live under this prefix in the store
    success_rate: float = -1.0  # outlier detection's last success rate; -1: none
    local_origin_success_rate: float = -1.0
    health_check: Any = None  # legatus.upstream.cluster.HealthCheckTarget, if configured


@dataclass(frozen=True, slots=True, kw_only=True)
class OutlierInfo:
    """A cluster's outlier detection summary (-1: not computed in the last interval)."""

    success_rate_average: float = -1.0
    success_rate_ejection_threshold: float = -1.0
    local_origin_success_rate_average: float = -1.0
    local_origin_success_rate_ejection_threshold: float = -1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterInfo:
    name: str
    config: Any  # envoy.config.cluster.v3.Cluster
    added_via_api: bool = False
    hosts: tuple[HostInfo, ...] = field(default_factory=tuple)
    outlier: OutlierInfo | None = None  # with outlier_detection only


class AdminContext(Protocol):
    """The main process as the admin endpoints see it."""

    options: Options
    stats: Store
    log_sink: LogSink
    bootstrap: Any  # envoy.config.bootstrap.v3.Bootstrap as loaded
    start_time: float  # time.time() at start-up
    state: ServerState
    healthcheck_failed: bool
    hot_restart_version: str
    # What xDS brought, for /config_dump (absent or None in a process without them): the
    # DynamicConfig (its CDS and LDS owners and RDS records) and the ClusterManager (the
    # clusters warming).
    dynamic: Any
    cluster_manager: Any

    async def refresh_stats(self) -> None:
        """Pull fresh stats from every worker into ``stats`` (bounded wait)."""

    def listeners(self) -> list[ListenerInfo]: ...

    def clusters(self) -> list[ClusterInfo]: ...

    def shutdown(self) -> None:
        """POST /quitquitquit: exit as on SIGTERM."""

    def set_healthcheck_failed(self, failed: bool) -> None: ...

    def drain_listeners(self, *, graceful: bool, inbound_only: bool, skip_exit: bool) -> None:
        """POST /drain_listeners (see admin/drain_listeners.py)."""

    def reopen_logs(self) -> None: ...

    def set_log_levels(self, levels: dict[str, str]) -> None:
        """After POST /logging: every worker takes the main process's levels."""
