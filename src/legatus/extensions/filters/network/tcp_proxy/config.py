"""``envoy.filters.network.tcp_proxy``: its config, compiled once per listener."""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass

from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from legatus.config.errors import ConfigError
from legatus.config.factory_context import FactoryContext
from legatus.config.supported import check_supported
from legatus.stats.store import StatSet, counter, gauge
from legatus.upstream.cluster import duration

TcpProxy = tcp_proxy_pb2.TcpProxy
DEFAULT_IDLE_TIMEOUT = 3600.0  # Envoy: 1 hour unless set; 0s disables

_SUPPORTED = frozenset(
    {
        "stat_prefix",
        "cluster",
        "weighted_clusters",
        "idle_timeout",
        "max_connect_attempts",
        "access_log",
        "max_downstream_connection_duration",
    }
)
_SUPPORTED_WEIGHTED = frozenset({"name", "weight"})


class TcpProxyStats(StatSet):
    """``tcp.<stat_prefix>.*``, as Envoy declares them."""

    downstream_cx_total = counter()
    downstream_cx_no_route = counter()
    downstream_cx_tx_bytes_total = counter()
    downstream_cx_rx_bytes_total = counter()
    downstream_cx_rx_bytes_buffered = gauge()
    downstream_cx_tx_bytes_buffered = gauge()
    downstream_flow_control_paused_reading_total = counter()
    downstream_flow_control_resumed_reading_total = counter()
    idle_timeout = counter()
    max_downstream_connection_duration = counter()
    downstream_cx_drain_close = counter()  # no drain yet: stays 0
    downstream_cx_overload_close = counter()  # no overload manager yet: stays 0
    early_data_received_count_total = counter()  # no early data (upstream_connect_mode)
    route_delayed_total = counter()
    upstream_flush_total = counter()
    upstream_flush_active = gauge()


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpProxyConfig:
    stat_prefix: str
    cluster: str | None
    weighted: tuple[tuple[str, ...], tuple[int, ...], int] | None  # names, cumulative, total
    idle_timeout: float | None
    max_connect_attempts: int
    max_downstream_connection_duration: float | None
    access_logs: tuple
    stats: TcpProxyStats

    def pick_cluster(self, rng) -> str:
        if self.cluster is not None:
            return self.cluster
        names, cumulative, total = self.weighted  # type: ignore[misc]
        return names[bisect.bisect_right(cumulative, rng.randrange(total))]


def compile_config(proto: TcpProxy, context: FactoryContext, path: str) -> TcpProxyConfig:
    check_supported(proto, _SUPPORTED, path, "TcpProxy")
    weighted = None
    cluster = None
    if proto.WhichOneof("cluster_specifier") == "weighted_clusters":
        entries = proto.weighted_clusters.clusters
        for i, c in enumerate(entries):
            check_supported(
                c,
                _SUPPORTED_WEIGHTED,
                f"{path}.weighted_clusters.clusters[{i}]",
                "TcpProxy.WeightedCluster.ClusterWeight",
            )
        weights = [c.weight for c in entries]
        if sum(weights) == 0:
            raise ConfigError(f"{path}.weighted_clusters", "the sum of the weights must be > 0")
        weighted = (
            tuple(c.name for c in entries),
            tuple(itertools.accumulate(weights)),
            sum(weights),
        )
    else:
        cluster = proto.cluster
    idle: float | None = DEFAULT_IDLE_TIMEOUT
    if proto.HasField("idle_timeout"):
        idle = duration(proto.idle_timeout) or None
    max_duration = None
    if proto.HasField("max_downstream_connection_duration"):
        max_duration = duration(proto.max_downstream_connection_duration) or None
    from legatus.access_log.access_log import create_access_logs
    from legatus.access_log.log_type import TCP_CONNECTION_END

    access_logs = create_access_logs(
        proto.access_log, context, f"{path}.access_log", log_type=TCP_CONNECTION_END
    )
    return TcpProxyConfig(
        stat_prefix=proto.stat_prefix,
        cluster=cluster,
        weighted=weighted,
        idle_timeout=idle,
        max_connect_attempts=proto.max_connect_attempts.value
        if proto.HasField("max_connect_attempts")
        else 1,
        max_downstream_connection_duration=max_duration,
        access_logs=tuple(access_logs),
        stats=TcpProxyStats(context.store.scope(f"tcp.{proto.stat_prefix}.")),
    )
