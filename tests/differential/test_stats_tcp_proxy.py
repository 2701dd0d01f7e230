"""`/stats` after the same tcp_proxy traffic through Envoy and legatus (scenario.py).

For the scopes legatus implements, every stat legatus reports must exist in Envoy with the same
value (counters and gauges that do not depend on timing or on the build), and every stat Envoy
reports there that legatus lacks must be listed in KNOWN_GAPS. Both lists are exact, so the
tests fail when either proxy changes: shrink KNOWN_GAPS as legatus catches up.

Names are normalized (scenario.Run.normalize): listener ports become `<listener name>`. In the
gap lists, cluster names, tcp_proxy stat prefixes and listener placeholders are collapsed to
`<cluster>`, `<prefix>` and `<listener>`.
"""

from __future__ import annotations

import re

from tests.differential.scenario import CLUSTERS, ZERO_BOUND

# The scopes compared: what legatus implements today, at the granularity Envoy declares it.
IN_SCOPE = re.compile(
    r"""^(
        tcp\.[^.]+\.
      | cluster\.[^.]+\.(upstream_cx_|membership_|max_host_weight$|upstream_flow_control_)
      | cluster_manager\.
      | listener\.127\.0\.0\.1_<[a-z]+>\.
      | listener\.admin\.
      | listener_manager\.
      | server\.
    )""",
    re.X,
)

# Compared by name only: they depend on time, on the process or on the build.
NAME_ONLY = frozenset(
    {
        "server.uptime",
        "server.memory_allocated",
        "server.memory_heap_size",
        "server.memory_physical_size",
        "server.stats_recent_lookups",  # Envoy counts symbol-table lookups
        "server.total_connections",  # Envoy refreshes it on each stats flush (5 s)
        "server.version",  # Envoy: the first 6 hex digits of its git SHA
    }
)

# Stats legatus adds on purpose (each documented where it is declared).
LEGATUS_ONLY = [
    "server.worker_restarts",  # src/legatus/server/server_stats.py: replaced worker processes
]

# Envoy stats in IN_SCOPE that legatus does not report. Every entry is a gap to close.
KNOWN_GAPS = [
    "server.main_thread.watchdog_mega_miss",
    "server.main_thread.watchdog_miss",
    "server.worker_0.watchdog_mega_miss",
    "server.worker_0.watchdog_miss",
]

# Envoy histograms in IN_SCOPE that legatus does not report (histograms: names only).
KNOWN_HISTOGRAM_GAPS = []


def _collapse(name: str) -> str:
    name = re.sub(rf"^cluster\.({'|'.join(CLUSTERS)})\.", "cluster.<cluster>.", name)
    name = re.sub(r"^tcp\.[^.]+\.", "tcp.<prefix>.", name)
    return re.sub(r"^listener\.127\.0\.0\.1_<[a-z]+>\.", "listener.127.0.0.1_<listener>.", name)


def _in_scope(names) -> set[str]:
    # The port-0 listener is left to test_listener_on_port_0_is_named_by_configured_address.
    return {n for n in names if IN_SCOPE.match(n) and f"_{ZERO_BOUND}." not in n}


def test_every_legatus_stat_exists_in_envoy(pair):
    legatus = _in_scope(pair.legatus_stats) - set(LEGATUS_ONLY)
    extra = sorted(legatus - set(pair.envoy_stats))
    assert extra == [], "legatus reports stats Envoy does not have"


def test_stat_values_match(pair):
    envoy, legatus = pair.envoy_stats, pair.legatus_stats
    common = _in_scope(legatus) & set(envoy)
    differ = {
        name: {"envoy": envoy[name], "legatus": legatus[name]}
        for name in sorted(common - NAME_ONLY)
        # The admin listener counts the harness's own polling (/ready until LIVE, /stats
        # until settled), which differs between the two runs.
        if not name.startswith("listener.admin.") and envoy[name] != legatus[name]
    }
    assert differ == {}


def test_missing_envoy_stats_are_the_known_gaps(pair):
    missing = _in_scope(pair.envoy_stats) - set(pair.legatus_stats)
    missing -= {n for n in missing if n.startswith("listener.127.0.0.1_0.")}  # port-0 test
    assert sorted({_collapse(n) for n in missing}) == KNOWN_GAPS


def test_histogram_names(pair):
    envoy = {n for n in _in_scope(pair.envoy_histograms) if "127.0.0.1_0." not in n}
    legatus = _in_scope(pair.legatus_histograms)
    assert sorted(legatus - envoy) == []
    assert sorted({_collapse(n) for n in envoy - legatus}) == KNOWN_HISTOGRAM_GAPS


def test_traffic_is_counted_as_envoy_counts_it(pair):
    """The headline numbers of the scenario, spelled out (also covered by the value test)."""
    want = {
        "tcp.tcp.downstream_cx_total": 3,
        "tcp.tcp.downstream_cx_rx_bytes_total": 3000,
        "tcp.tcp.downstream_cx_tx_bytes_total": 3000,
        "cluster.backend.upstream_cx_total": 3,
        "cluster.backend.upstream_cx_rx_bytes_total": 3000,
        "cluster.backend.upstream_cx_tx_bytes_total": 3000,
        "cluster.dead.upstream_cx_connect_fail": 1,
        "tcp.noroute.downstream_cx_no_route": 1,
        "listener.127.0.0.1_<tcp>.downstream_cx_total": 3,
        "listener.127.0.0.1_<echo>.downstream_cx_total": 1,
        "listener.127.0.0.1_<direct>.downstream_cx_total": 1,
    }
    for proxy, stats in pair.both_stats():
        assert {k: stats.get(k) for k in want} == want, proxy


def test_listener_on_port_0_is_named_by_configured_address(pair):
    """Envoy names listener stats by the configured address (`listener.127.0.0.1_0.`), not by
    the port the kernel picked; listeners that share a configured address share the stats."""
    assert pair.envoy_stats["listener.127.0.0.1_0.downstream_cx_total"] == 1
    legatus_bound = sorted(n for n in pair.legatus_stats if f"_{ZERO_BOUND}." in n)
    assert legatus_bound == []
    assert pair.legatus_stats.get("listener.127.0.0.1_0.downstream_cx_total") == 1


# The differences above, one behaviour per test, so each names what Envoy does.


def test_upstream_fin_after_downstream_half_close_is_a_remote_destroy(pair):
    """Client FIN -> tcp_proxy half-closes the upstream -> the echo server FINs back: Envoy
    sees the upstream close from the remote side (destroy_remote, *_with_active_rq)."""
    for proxy, stats in pair.both_stats():
        got = {
            k: stats[f"cluster.backend.upstream_cx_{k}"]
            for k in ("destroy_remote", "destroy_local")
        }
        assert got == {"destroy_remote": 3, "destroy_local": 0}, proxy


def test_refused_connect_is_a_remote_destroy_and_exhausts_attempts(pair):
    """With the default max_connect_attempts (1), one refused connect counts
    upstream_cx_connect_attempts_exceeded, and the failed connection is destroy_remote."""
    for proxy, stats in pair.both_stats():
        got = {
            k: stats[f"cluster.dead.upstream_cx_{k}"]
            for k in (
                "connect_fail",
                "connect_attempts_exceeded",
                "destroy",
                "destroy_remote",
                "destroy_local",
            )
        }
        want = {
            "connect_fail": 1,
            "connect_attempts_exceeded": 1,
            "destroy": 1,
            "destroy_remote": 1,
            "destroy_local": 0,
        }
        assert got == want, proxy


def test_static_cluster_max_host_weight_stays_zero(pair):
    """Envoy sets max_host_weight only when a dynamic host list is updated (EDS, DNS)."""
    for proxy, stats in pair.both_stats():
        assert [stats[f"cluster.{c}.max_host_weight"] for c in ("backend", "dead")] == [0, 0], proxy


def test_days_until_first_cert_expiring_without_certificates(pair):
    """No certificate configured: Envoy reports UINT32_MAX."""
    for proxy, stats in pair.both_stats():
        assert stats["server.days_until_first_cert_expiring"] == 2**32 - 1, proxy


def test_tcp_proxy_on_demand_stats_only_with_on_demand_config(pair):
    """Envoy declares tcp.<prefix>.on_demand_cluster_* only when `on_demand` is configured."""
    for proxy, stats in pair.both_stats():
        assert sorted(n for n in stats if ".on_demand_cluster_" in n) == [], proxy
