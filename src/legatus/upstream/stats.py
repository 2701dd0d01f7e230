"""Envoy's ``cluster.<name>.*`` and ``cluster_manager.*`` stats that legatus maintains.

Worker-owned stats (connections) are summed across workers by the main process;
main-owned ones (membership, DNS updates) are set only by the main process.
"""

from __future__ import annotations

from legatus.stats.store import StatSet, counter, gauge, histogram


class ClusterTrafficStats(StatSet):
    """Kept by each worker for the connections it opens."""

    upstream_cx_total = counter()
    upstream_cx_active = gauge()
    upstream_cx_connect_fail = counter()
    upstream_cx_connect_timeout = counter()
    upstream_cx_connect_attempts_exceeded = counter()
    upstream_cx_none_healthy = counter()
    upstream_cx_destroy = counter()
    upstream_cx_destroy_local = counter()
    upstream_cx_destroy_remote = counter()
    upstream_cx_destroy_with_active_rq = counter()
    upstream_cx_destroy_local_with_active_rq = counter()
    upstream_cx_destroy_remote_with_active_rq = counter()
    upstream_cx_http1_total = counter()
    upstream_cx_http2_total = counter()
    upstream_cx_http3_total = counter()
    upstream_cx_rx_bytes_total = counter()
    upstream_cx_tx_bytes_total = counter()
    upstream_cx_connect_ms = histogram()
    upstream_cx_length_ms = histogram()
    upstream_rq_total = counter()
    upstream_rq_active = gauge()
    upstream_rq_pending_total = counter()
    upstream_rq_pending_active = gauge()
    upstream_rq_pending_failure_eject = counter()
    upstream_rq_timeout = counter()
    upstream_flow_control_paused_reading_total = counter()
    upstream_flow_control_resumed_reading_total = counter()
    upstream_flow_control_backed_up_total = counter()
    upstream_flow_control_drained_total = counter()


class ClusterMembershipStats(StatSet):
    """Kept by the main process, which owns membership."""

    membership_total = gauge()
    membership_healthy = gauge()
    membership_degraded = gauge()
    membership_excluded = gauge()
    membership_change = counter()
    max_host_weight = gauge()


class ListenerManagerStats(StatSet):
    """``listener_manager.*``, kept by the main process."""

    listener_added = counter()
    listener_modified = counter()
    listener_removed = counter()
    listener_stopped = counter()
    listener_create_success = counter()
    listener_create_failure = counter()
    listener_in_place_updated = counter()
    total_filter_chains_draining = gauge()
    total_listeners_warming = gauge()
    total_listeners_active = gauge()
    total_listeners_draining = gauge()
    workers_started = gauge()
    workers_pinned = gauge()


class ClusterManagerStats(StatSet):
    cluster_added = counter()
    cluster_modified = counter()
    cluster_removed = counter()
    cluster_updated = counter()
    cluster_updated_via_merge = counter()
    update_merge_cancelled = counter()
    update_out_of_merge_window = counter()
    active_clusters = gauge()
    warming_clusters = gauge()
