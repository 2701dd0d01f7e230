"""``/clusters``: cluster and per-host status, as text lines or ``envoy.admin.v3.Clusters``.

Text, as Envoy 1.40 prints it for each cluster (checked against the binary)::

    backend::observability_name::backend
    backend::default_priority::max_connections::1024
    ... (max_pending_requests, max_requests, max_retries; then high_priority)
    backend::added_via_api::false
    (with outlier_detection, four ``backend::outlier::...`` lines follow observability_name)
    backend::127.0.0.1:9::cx_active::0          <- host stats, sorted by name
    backend::127.0.0.1:9::hostname::
    backend::127.0.0.1:9::health_flags::healthy
    backend::127.0.0.1:9::weight::1
    ... (region, zone, sub_zone, canary, priority, success_rate, local_origin_success_rate)

Per-host stats are hidden stats under ``HostInfo.stats_prefix``; a stat nobody
created reads 0. Any ``format`` other than ``json`` prints text, like Envoy.
"""

from __future__ import annotations

import re
from typing import Any

from envoy.admin.v3 import clusters_pb2, metrics_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, health_check_pb2

from legatus.server.admin.context import ClusterInfo, HostInfo
from legatus.server.admin.response import AdminResponse, Query, json_body, proto_json, text

HOST_COUNTERS = ("cx_connect_fail", "cx_total", "rq_error", "rq_success", "rq_timeout", "rq_total")
HOST_GAUGES = ("cx_active", "rq_active", "rq_pending_active")
_HOST_STATS_SORTED = tuple(sorted(HOST_COUNTERS + HOST_GAUGES))

# Envoy's defaults when a cluster sets no circuit_breakers (max_retries is 3).
_DEFAULT_THRESHOLDS = (1024, 1024, 1024, 3)
_THRESHOLD_FIELDS = ("max_connections", "max_pending_requests", "max_requests", "max_retries")

# HostInfo.health_flags -> the HostHealthStatus field that says the same.
_FLAG_FIELDS = {
    "/failed_active_hc": "failed_active_health_check",
    "/failed_outlier_check": "failed_outlier_check",
    "/degraded_active_hc": "failed_active_degraded_check",
    "/pending_dynamic_removal": "pending_dynamic_removal",
    "/pending_active_hc": "pending_active_hc",
    "/excluded_via_immediate_hc_fail": "excluded_via_immediate_hc_fail",
    "/active_hc_timeout": "active_hc_timeout",
}


def handle_clusters(context: Any, query: Query) -> AdminResponse:
    pattern = None
    if query.get("filter"):
        try:
            pattern = re.compile(query.get("filter") or "")
        except re.error:
            return text("Invalid re2 regex", 400)
    clusters = [c for c in context.clusters() if pattern is None or pattern.search(c.name)]
    if query.get("format") == "json":
        return json_body(proto_json(clusters_proto(context, clusters)))
    return text("".join(_text_lines(context, c) for c in clusters))


def host_stat(context: Any, host: HostInfo, name: str) -> int:
    value = context.stats.value(host.stats_prefix + name)
    return int(value) if value is not None else 0


def thresholds(cluster: ClusterInfo) -> dict[int, tuple[int, int, int, int]]:
    """Circuit-breaker limits per routing priority (0 default, 1 high), with Envoy's defaults."""
    out = {0: _DEFAULT_THRESHOLDS, 1: _DEFAULT_THRESHOLDS}
    config = cluster.config
    if config is not None and config.HasField("circuit_breakers"):
        for t in config.circuit_breakers.thresholds:
            out[t.priority] = tuple(
                getattr(t, f).value if t.HasField(f) else d
                for f, d in zip(_THRESHOLD_FIELDS, _DEFAULT_THRESHOLDS, strict=True)
            )  # type: ignore[assignment]
    return out


def observability_name(cluster: ClusterInfo) -> str:
    config = cluster.config
    return (config.alt_stat_name if config is not None else "") or cluster.name


def _text_lines(context: Any, cluster: ClusterInfo) -> str:
    name = cluster.name
    out = [f"{name}::observability_name::{observability_name(cluster)}\n"]
    outlier = cluster.outlier
    if outlier is not None:
        out.append(f"{name}::outlier::success_rate_average::{outlier.success_rate_average:g}\n")
        out.append(
            f"{name}::outlier::success_rate_ejection_threshold::"
            f"{outlier.success_rate_ejection_threshold:g}\n"
        )
        out.append(
            f"{name}::outlier::local_origin_success_rate_average::"
            f"{outlier.local_origin_success_rate_average:g}\n"
        )
        out.append(
            f"{name}::outlier::local_origin_success_rate_ejection_threshold::"
            f"{outlier.local_origin_success_rate_ejection_threshold:g}\n"
        )
    limits = thresholds(cluster)
    for priority, label in ((0, "default_priority"), (1, "high_priority")):
        for field, value in zip(_THRESHOLD_FIELDS, limits[priority], strict=True):
            out.append(f"{name}::{label}::{field}::{value}\n")
    out.append(f"{name}::added_via_api::{'true' if cluster.added_via_api else 'false'}\n")
    for host in cluster.hosts:
        p = f"{name}::{host.address}::"
        out.extend(f"{p}{s}::{host_stat(context, host, s)}\n" for s in _HOST_STATS_SORTED)
        out.append(f"{p}hostname::{host.hostname}\n")
        out.append(f"{p}health_flags::{''.join(host.health_flags) or 'healthy'}\n")
        out.append(f"{p}weight::{host.weight}\n")
        out.append(f"{p}region::{host.region}\n")
        out.append(f"{p}zone::{host.zone}\n")
        out.append(f"{p}sub_zone::{host.sub_zone}\n")
        out.append(f"{p}canary::false\n")
        out.append(f"{p}priority::{host.priority}\n")
        out.append(f"{p}success_rate::{host.success_rate:g}\n")
        out.append(f"{p}local_origin_success_rate::{host.local_origin_success_rate:g}\n")
    return "".join(out)


def socket_address(address: str) -> address_pb2.Address:
    """``127.0.0.1:80`` / ``[::1]:80`` as a proto Address (a path is a pipe)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return address_pb2.Address(pipe=address_pb2.Pipe(path=address))
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=host, port_value=int(port))
    )


def health_status(host: HostInfo) -> clusters_pb2.HostHealthStatus:
    status = clusters_pb2.HostHealthStatus(eds_health_status=health_check_pb2.HEALTHY)
    for flag in host.health_flags:
        if flag == "/failed_eds_health":
            status.eds_health_status = health_check_pb2.UNHEALTHY
        elif flag == "/degraded_eds_health":
            status.eds_health_status = health_check_pb2.DEGRADED
        elif flag in _FLAG_FIELDS:
            setattr(status, _FLAG_FIELDS[flag], True)
    return status


def clusters_proto(context: Any, clusters: list[ClusterInfo]) -> clusters_pb2.Clusters:
    out = clusters_pb2.Clusters()
    for cluster in clusters:
        status = out.cluster_statuses.add(
            name=cluster.name,
            added_via_api=cluster.added_via_api,
            observability_name=observability_name(cluster),
        )
        if cluster.config is not None and cluster.config.HasField("eds_cluster_config"):
            status.eds_service_name = cluster.config.eds_cluster_config.service_name
        limits = thresholds(cluster)
        for priority in (0, 1):
            t = status.circuit_breakers.thresholds.add(priority=priority)
            for field, value in zip(_THRESHOLD_FIELDS, limits[priority], strict=True):
                getattr(t, field).value = value
        outlier = cluster.outlier
        if outlier is not None:
            if outlier.success_rate_ejection_threshold >= 0:
                status.success_rate_ejection_threshold.value = (
                    outlier.success_rate_ejection_threshold
                )
            if outlier.local_origin_success_rate_ejection_threshold >= 0:
                status.local_origin_success_rate_ejection_threshold.value = (
                    outlier.local_origin_success_rate_ejection_threshold
                )
        for host in cluster.hosts:
            _host_status(context, host, status.host_statuses.add())
    return out


def _host_status(context: Any, host: HostInfo, status: clusters_pb2.HostStatus) -> None:
    status.address.CopyFrom(socket_address(host.address))
    for kind, names in (
        (metrics_pb2.SimpleMetric.COUNTER, HOST_COUNTERS),
        (metrics_pb2.SimpleMetric.GAUGE, HOST_GAUGES),
    ):
        for name in names:
            status.stats.add(type=kind, value=host_stat(context, host, name), name=name)
    status.health_status.CopyFrom(health_status(host))
    if host.success_rate >= 0:
        status.success_rate.value = host.success_rate
    if host.local_origin_success_rate >= 0:
        status.local_origin_success_rate.value = host.local_origin_success_rate
    status.weight = host.weight
    status.hostname = host.hostname
    status.priority = host.priority
    status.locality.CopyFrom(
        base_pb2.Locality(region=host.region, zone=host.zone, sub_zone=host.sub_zone)
    )
