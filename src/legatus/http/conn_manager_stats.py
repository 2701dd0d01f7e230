"""The HTTP connection manager's stats, declared exactly as Envoy 1.40 shows them.

Names and kinds come from the real Envoy's /stats after an HCM listener served HTTP/1.1 and
HTTP/2 requests (tests/differential/test_local_replies_envoy.py keeps them checked):

- ``http.<stat_prefix>.``: the HCM's own stats (``ConnectionManagerStats``), its tracing
  counters under ``tracing.`` (``ConnectionManagerTracingStats``) and the router filter's
  stats, which Envoy declares under the same prefix (``RouterFilterStats``).
- ``listener.<address>.http.<stat_prefix>.``: the per-listener response classes
  (``ConnectionManagerListenerStats``).
- ``http1.`` and ``http2.`` at the root: the downstream codecs' stats, shared by every
  HCM of the process; Envoy declares them when the first connection of that protocol
  is made (``Http1CodecStats``, ``Http2CodecStats``).

Not declared here: ``http.<prefix>.user_agent.<ios|android>.*`` (Envoy's user agent stats,
only for those clients) and ``http.<prefix>.rds.<name>.*`` (the RDS subscription's).
Response codes are charged through ``legatus.http.codes.DownstreamCodeStats``.
"""

from __future__ import annotations

from dataclasses import dataclass

from legatus.http.http2.stats import Http2CodecStats
from legatus.stats.store import Scope, StatSet, counter, gauge, histogram

__all__ = [
    "ConnManagerStatSets",
    "ConnectionManagerListenerStats",
    "ConnectionManagerStats",
    "ConnectionManagerTracingStats",
    "Http1CodecStats",
    "Http2CodecStats",
    "RouterFilterStats",
    "declare_conn_manager_stats",
]


class ConnectionManagerStats(StatSet):
    """``http.<stat_prefix>.*``: Envoy's ALL_HTTP_CONN_MAN_STATS."""

    downstream_cx_active = gauge()
    downstream_cx_delayed_close_timeout = counter()
    downstream_cx_destroy = counter()
    downstream_cx_destroy_active_rq = counter()
    downstream_cx_destroy_local = counter()
    downstream_cx_destroy_local_active_rq = counter()
    downstream_cx_destroy_remote = counter()
    downstream_cx_destroy_remote_active_rq = counter()
    downstream_cx_drain_close = counter()
    downstream_cx_http1_active = gauge()
    downstream_cx_http1_soft_drain = gauge()
    downstream_cx_http1_total = counter()
    downstream_cx_http2_active = gauge()
    downstream_cx_http2_total = counter()
    downstream_cx_http3_active = gauge()
    downstream_cx_http3_total = counter()
    downstream_cx_idle_timeout = counter()
    downstream_cx_max_duration_reached = counter()
    downstream_cx_max_requests_reached = counter()
    downstream_cx_overload_disable_keepalive = counter()
    downstream_cx_protocol_error = counter()
    downstream_cx_rx_bytes_buffered = gauge()
    downstream_cx_rx_bytes_total = counter()
    downstream_cx_ssl_active = gauge()
    downstream_cx_ssl_total = counter()
    downstream_cx_total = counter()
    downstream_cx_tx_bytes_buffered = gauge()
    downstream_cx_tx_bytes_total = counter()
    downstream_cx_upgrades_active = gauge()
    downstream_cx_upgrades_total = counter()
    downstream_flow_control_paused_reading_total = counter()
    downstream_flow_control_resumed_reading_total = counter()
    downstream_rq_1xx = counter()
    downstream_rq_2xx = counter()
    downstream_rq_3xx = counter()
    downstream_rq_4xx = counter()
    downstream_rq_5xx = counter()
    downstream_rq_active = gauge()
    downstream_rq_completed = counter()
    downstream_rq_failed_path_normalization = counter()
    downstream_rq_header_timeout = counter()
    downstream_rq_http1_total = counter()
    downstream_rq_http2_total = counter()
    downstream_rq_http3_total = counter()
    downstream_rq_idle_timeout = counter()
    downstream_rq_max_duration_reached = counter()
    downstream_rq_non_relative_path = counter()
    downstream_rq_overload_close = counter()
    downstream_rq_redirected_with_normalized_path = counter()
    downstream_rq_rejected_via_ip_detection = counter()
    downstream_rq_response_before_rq_complete = counter()
    downstream_rq_rx_reset = counter()
    downstream_rq_timeout = counter()
    downstream_rq_too_large = counter()
    downstream_rq_too_many_premature_resets = counter()
    downstream_rq_total = counter()
    downstream_rq_tx_reset = counter()
    downstream_rq_ws_on_non_ws_route = counter()
    rs_too_large = counter()
    downstream_cx_length_ms = histogram()
    downstream_rq_time = histogram()


class ConnectionManagerTracingStats(StatSet):
    """``http.<stat_prefix>.tracing.*``."""

    client_enabled = counter()
    health_check = counter()
    not_traceable = counter()
    random_sampling = counter()
    service_forced = counter()


class RouterFilterStats(StatSet):
    """The router filter's ``http.<stat_prefix>.*`` stats (Envoy's RouterStats)."""

    no_cluster = counter()
    no_route = counter()
    passthrough_internal_redirect_bad_location = counter()
    passthrough_internal_redirect_no_route = counter()
    passthrough_internal_redirect_predicate = counter()
    passthrough_internal_redirect_too_many_redirects = counter()
    passthrough_internal_redirect_unsafe_scheme = counter()
    rq_direct_response = counter()
    rq_overload_local_reply = counter()
    rq_redirect = counter()
    rq_reset_after_downstream_response_started = counter()
    rq_total = counter()


class ConnectionManagerListenerStats(StatSet):
    """``listener.<address>.http.<stat_prefix>.*``: responses per listener."""

    downstream_rq_1xx = counter()
    downstream_rq_2xx = counter()
    downstream_rq_3xx = counter()
    downstream_rq_4xx = counter()
    downstream_rq_5xx = counter()
    downstream_rq_completed = counter()


class Http1CodecStats(StatSet):
    """``http1.*``: the downstream HTTP/1 codec's stats (root scope)."""

    dropped_headers_with_underscores = counter()
    metadata_not_supported_error = counter()
    requests_rejected_with_underscores_in_headers = counter()
    response_flood = counter()


@dataclass(frozen=True, slots=True)
class ConnManagerStatSets:
    """Every stat set one HCM config declares."""

    named: ConnectionManagerStats
    tracing: ConnectionManagerTracingStats
    router: RouterFilterStats
    listener: ConnectionManagerListenerStats | None


def declare_conn_manager_stats(
    root: Scope, stat_prefix: str, *, listener_prefix: str | None = None
) -> ConnManagerStatSets:
    """Declare an HCM's stats once, at config time.

    ``root`` is the store's root scope; ``listener_prefix`` the listener's stat prefix
    (``listener.127.0.0.1_10000.``), or None for an HCM outside a listener.
    """
    http = root.scope(f"http.{stat_prefix}.")
    listener = None
    if listener_prefix is not None:
        listener = ConnectionManagerListenerStats(
            root.scope(f"{listener_prefix.rstrip('.')}.http.{stat_prefix}.")
        )
    return ConnManagerStatSets(
        named=ConnectionManagerStats(http),
        tracing=ConnectionManagerTracingStats(http.scope("tracing.")),
        router=RouterFilterStats(http),
        listener=listener,
    )
