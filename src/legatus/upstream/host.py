"""A host of a cluster inside a worker: its address and per-host stats.

The per-host counters are hidden stats (``cluster.<name>.host.<addr>.*``): they
feed /clusters, as Envoy's host stats do, and stay out of /stats.
"""

from __future__ import annotations

from legatus.stats.store import Scope, StatSet, counter, gauge
from legatus.upstream.cluster import HostConfig


class HostStats(StatSet):
    cx_total = counter()
    cx_active = gauge()
    cx_connect_fail = counter()
    rq_total = counter()
    rq_active = gauge()
    rq_error = counter()
    rq_success = counter()
    rq_timeout = counter()


def host_stats_prefix(cluster_stat_name: str, host: HostConfig) -> str:
    return f"cluster.{cluster_stat_name}.host.{host.address}."


class Host:
    __slots__ = ("address", "address_text", "config", "stats")

    def __init__(self, config: HostConfig, scope: Scope) -> None:
        self.config = config
        self.address = config.address.as_tuple()
        self.address_text = str(config.address)  # "ip:port", for %UPSTREAM_HOST%
        self.stats = HostStats(scope, hidden=True)
