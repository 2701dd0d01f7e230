"""Envoy's ``server.*`` stats, and the memory figures behind them."""

from __future__ import annotations

import os

from legatus.stats.store import StatSet, counter, gauge, histogram

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class ServerStats(StatSet):
    uptime = gauge()
    concurrency = gauge()
    memory_allocated = gauge()
    memory_heap_size = gauge()
    memory_physical_size = gauge()
    live = gauge()
    state = gauge()
    parent_connections = gauge()
    total_connections = gauge()
    version = gauge()
    days_until_first_cert_expiring = gauge()
    seconds_until_first_ocsp_response_expiring = gauge()
    hot_restart_epoch = gauge()
    hot_restart_generation = gauge()
    stats_recent_lookups = gauge()
    initialization_time_ms = histogram()
    debug_assertion_failures = counter()
    envoy_bug_failures = counter()
    envoy_notifications = counter()
    static_unknown_fields = counter()
    dynamic_unknown_fields = counter()
    wip_protos = counter()
    dropped_stat_flushes = counter()
    # legatus only: worker processes that exited and were replaced.
    worker_restarts = counter()


def process_memory(pids: list[int]) -> tuple[int, int]:
    """(resident bytes, private bytes) summed over processes, from /proc.

    Python has no tcmalloc heap to ask, so Envoy's memory_allocated and
    memory_heap_size both report the private (non-shared) resident memory.
    """
    resident = private = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                fields = f.read().split()
        except OSError:
            continue
        rss, shared = int(fields[1]), int(fields[2])
        resident += rss * _PAGE
        private += (rss - shared) * _PAGE
    return resident, private
