"""Envoy's ``cluster.<name>.*`` and ``cluster_manager.*`` stats that legatus maintains.

Worker-owned stats (connections) are summed across workers by the main process;
main-owned ones (membership, DNS updates) are set only by the main process.
"""

from __future__ import annotations

from legatus.stats.store import StatSet, counter, gauge, histogram


class ClusterTrafficStats(StatSet):
    """Kept by each worker for the connections and requests it sends upstream.

    Envoy declares every one of these when the cluster is created, whether or not the feature
    behind it is used; so does legatus. The retry, per-try, 0-RTT, maintenance-mode and
    preconnect counters stay 0 because their features do not exist yet (their config is
    refused); the pools and the router count the rest.
    """

    upstream_cx_close_notify = counter()
    upstream_cx_connect_with_0_rtt = counter()
    upstream_cx_idle_timeout = counter()
    upstream_cx_max_duration_reached = counter()
    upstream_cx_max_requests = counter()
    upstream_cx_overflow = counter()
    upstream_cx_pool_overflow = counter()
    upstream_cx_preconnect_skipped = counter()
    upstream_cx_protocol_error = counter()
    upstream_rq_0rtt = counter()
    upstream_rq_active_overflow = counter()
    upstream_rq_cancelled = counter()
    upstream_rq_completed = counter()
    upstream_rq_maintenance_mode = counter()
    upstream_rq_max_duration_reached = counter()
    upstream_rq_pending_overflow = counter()
    upstream_rq_per_try_idle_timeout = counter()
    upstream_rq_per_try_timeout = counter()
    upstream_rq_retry = counter()
    upstream_rq_retry_backoff_exponential = counter()
    upstream_rq_retry_backoff_ratelimited = counter()
    upstream_rq_retry_limit_exceeded = counter()
    upstream_rq_retry_overflow = counter()
    upstream_rq_retry_success = counter()
    upstream_rq_rx_reset = counter()
    upstream_rq_rx_reset_no_error = counter()
    upstream_rq_tx_reset = counter()
    upstream_rq_per_cx = histogram()
    upstream_cx_rx_bytes_buffered = gauge()  # see Connection.set_buffer_gauges
    upstream_cx_tx_bytes_buffered = gauge()
    upstream_internal_redirect_failed_total = counter()
    upstream_internal_redirect_succeeded_total = counter()

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
    """Kept by the main process, which owns membership, updates and load balancing state.

    As with the traffic stats, Envoy declares all of these with the cluster; the load
    balancer subset/zone and EDS assignment counters stay 0 until their
    features exist (their config is refused). ``default.total_match_count`` counts the
    transport socket matches (only the default one exists: one per cluster)."""

    assignment_stale = counter()
    assignment_timeout_received = counter()
    assignment_use_cached = counter()
    bind_errors = counter()
    lb_healthy_panic = counter()
    lb_local_cluster_not_ok = counter()
    lb_recalculate_zone_structures = counter()
    lb_subsets_active = gauge()
    lb_subsets_created = counter()
    lb_subsets_fallback = counter()
    lb_subsets_fallback_panic = counter()
    lb_subsets_removed = counter()
    lb_subsets_selected = counter()
    lb_zone_cluster_too_small = counter()
    lb_zone_no_capacity_left = counter()
    lb_zone_routing_all_directly = counter()
    lb_zone_routing_cross_zone = counter()
    lb_zone_routing_sampled = counter()
    original_dst_host_invalid = counter()
    retry_or_shadow_abandoned = counter()
    update_attempt = counter()
    update_empty = counter()
    update_failure = counter()
    update_no_rebuild = counter()
    update_success = counter()
    upstream_http3_broken = counter()
    upstream_queue_overloaded = gauge()
    version = gauge()
    warming_state = gauge()

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
