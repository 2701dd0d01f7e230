"""A host of a cluster inside a worker: its address and per-host stats.

The per-host counters are hidden stats (``cluster.<name>.host.<addr>.*``): they
feed /clusters, as Envoy's host stats do, and stay out of /stats.
"""

from __future__ import annotations

import enum

from legatus.stats.store import Scope, StatSet, counter, gauge
from legatus.upstream.cluster import HostConfig
from legatus.upstream.outlier_reporter import NULL_HEALTH_CHECKER, NULL_OUTLIER


class HostStats(StatSet):
    cx_total = counter()
    cx_active = gauge()
    cx_connect_fail = counter()
    rq_total = counter()
    rq_active = gauge()
    rq_error = counter()
    rq_success = counter()
    rq_timeout = counter()


class HealthFlag(enum.IntFlag):
    """Why a host is not healthy (Envoy's Host::HealthFlag, same bits); 0 is healthy.

    Set by the main process (active health checks, outlier detection, EDS) and pushed to
    the workers, which read them through ``Host.health_flags``.
    """

    FAILED_ACTIVE_HC = 0x01
    FAILED_OUTLIER_CHECK = 0x02
    FAILED_EDS_HEALTH = 0x04
    DEGRADED_ACTIVE_HC = 0x08
    DEGRADED_EDS_HEALTH = 0x10
    PENDING_DYNAMIC_REMOVAL = 0x20
    PENDING_ACTIVE_HC = 0x40
    EXCLUDED_VIA_IMMEDIATE_HC_FAIL = 0x80
    ACTIVE_HC_TIMEOUT = 0x100
    EDS_STATUS_DRAINING = 0x200


_UNHEALTHY = (
    HealthFlag.FAILED_ACTIVE_HC
    | HealthFlag.FAILED_OUTLIER_CHECK
    | HealthFlag.FAILED_EDS_HEALTH
    | HealthFlag.EDS_STATUS_DRAINING
)
_DEGRADED = HealthFlag.DEGRADED_ACTIVE_HC | HealthFlag.DEGRADED_EDS_HEALTH


class CoarseHealth(enum.IntEnum):
    """What load balancing sees of a host (Envoy's Host::Health)."""

    UNHEALTHY = 0
    DEGRADED = 1
    HEALTHY = 2


def host_stats_prefix(cluster_stat_name: str, host: HostConfig) -> str:
    return f"cluster.{cluster_stat_name}.host.{host.address}."


class Host:
    __slots__ = ("address", "address_text", "config", "health_checker", "health_flags",
                 "outlier", "stats")  # fmt: skip

    def __init__(self, config: HostConfig, scope: Scope) -> None:
        self.config = config
        self.health_flags = 0  # HealthFlag bits; 0: healthy
        self.address = config.address.as_tuple()
        self.address_text = str(config.address)  # "ip:port", for %UPSTREAM_HOST%
        self.stats = HostStats(scope, hidden=True)
        # Passive health reporters (upstream/outlier_reporter.py), set by the worker for
        # clusters with outlier detection / health checking; no-ops otherwise.
        self.outlier = NULL_OUTLIER
        self.health_checker = NULL_HEALTH_CHECKER

    def coarse_health(self) -> CoarseHealth:
        flags = self.health_flags
        if flags & _UNHEALTHY:
            return CoarseHealth.UNHEALTHY
        if flags & _DEGRADED:
            return CoarseHealth.DEGRADED
        return CoarseHealth.HEALTHY
