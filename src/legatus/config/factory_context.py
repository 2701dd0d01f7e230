"""What an extension factory gets when it turns its config proto into a runtime object.

One context per process and config generation. In validate mode there is no
loop and no cluster manager: factories must only check and compile there.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from legatus.registry import Registry
    from legatus.server.options import Options
    from legatus.stats.store import Store
    from legatus.upstream.thread_local_cluster import ThreadLocalClusterManager


@dataclass(frozen=True, slots=True, kw_only=True)
class FactoryContext:
    registry: Registry
    store: Store
    options: Options
    random: random.Random
    loop: asyncio.AbstractEventLoop | None = None
    cluster_manager: ThreadLocalClusterManager | None = None
    access_log_manager: Any = None  # legatus.access_log.manager.AccessLogManager
    cluster_names: frozenset[str] = frozenset()  # static clusters, for config-time checks
    runtime: Any = None  # legatus.runtime.Runtime (the bootstrap's layered_runtime); None: empty
    listener_stat_prefix: str | None = None  # the listener a network filter is built for
    http_stat_prefix: str | None = None  # the HCM an HTTP filter is built for
    server_health: Any = None  # legatus.server.server_health.ServerHealth (workers); None: ok
    http_filter_name: str = ""  # the HttpFilter ``name`` a filter is built for: the key of its
    # per-route configs (RouteMatch.most_specific_per_filter_config)
    # legatus.router.rds.RouteConfigProviderManager: the process's RDS route configurations
    route_config_providers: Any = None
    route_table: Any = None  # the HCM's inline RouteTable, so that an HTTP filter can see its
    # per-route configs at config time (None: routes that may change, e.g. RDS)
    # The process's SDS secrets (extensions/transport_sockets/tls/secret_manager.py): the
    # bootstrap's static secrets and the files TLS contexts name. None: none configured.
    secret_manager: Any = None
    node_id: str = ""  # the bootstrap's node.id (--service-node overrides it), for the
    # extensions that name this proxy by it (proxy_status_config.use_node_id)
    # The route configuration providers made for one listener (a list its owner closes once
    # the listener is gone, so that the route stats only they had go: router/route_stats.py);
    # None: nobody closes them.
    owned_route_configs: list | None = None

    @property
    def validating(self) -> bool:
        return self.loop is None
