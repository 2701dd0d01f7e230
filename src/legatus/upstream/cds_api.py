"""CDS: clusters from a control plane into the cluster manager (Envoy's CdsApiImpl).

Each update is applied cluster by cluster, as Envoy does: the valid clusters are added or
updated even when another cluster of the same update is refused, and the update is then
NACKed with every refusal in the error detail (``Error adding/updating cluster(s) a: ...``).
A state-of-the-world update removes the CDS clusters it no longer names; a delta update
removes the ones it lists. Static clusters are never touched: an update naming one is
skipped, as Envoy skips it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from legatus.config.errors import ConfigError
from legatus.config.subscription import ConfigUpdate, UpdateFailureReason
from legatus.config_subscription.decode import check_resource
from legatus.config_subscription.records import ResourceRecords
from legatus.upstream.cluster import ClusterConfig, compile_cluster

__all__ = ["CdsApi"]

log = logging.getLogger("legatus.upstream")


class CdsApi:
    """The CDS subscription's callbacks. ``on_cluster_added(config)`` lets the owner start
    what a new cluster needs beyond the cluster manager (its EDS subscription)."""

    def __init__(
        self,
        cluster_manager,
        *,
        check: Callable[[ClusterConfig, str], None] = lambda config, path: None,
        on_initialized: Callable[[], None] = lambda: None,
    ) -> None:
        self.cluster_manager = cluster_manager
        self.check = check  # extra checks of the owner (e.g. the EDS config source)
        self.on_initialized = on_initialized
        self.records = ResourceRecords()  # for /config_dump
        self.initialized = False

    def on_config_update(self, update: ConfigUpdate) -> None:
        cm = self.cluster_manager
        errors: list[str] = []
        seen: set[str] = set()
        applied = False  # Envoy takes the update's version only if it changed something
        for i, resource in enumerate(update.added):
            name = resource.name
            if name in seen:
                errors.append(f"duplicate cluster {name} found")
                continue
            seen.add(name)
            try:
                check_resource(resource.resource, f"resources[{i}]")
                config = compile_cluster(resource.resource, f"resources[{i}]")
                self.check(config, f"resources[{i}]")
                if cm.add_or_update_cluster(config):
                    log.info("cds: add/update cluster '%s'", name)
                    # delta: the resource's own version, as Envoy shows it; SotW: the update's
                    version = resource.version or update.version_info
                    self.records.accept(name, resource.resource, version)
                    applied = True
                else:
                    log.debug("cds: add/update cluster '%s' skipped", name)
            except (ConfigError, ValueError) as e:
                errors.append(f"{name}: {e}")
                self.records.reject(name, resource.resource, str(e), update.version_info)
        if update.state_of_the_world:
            removed = [c.name for c in cm.dynamic_clusters() if c.name not in seen]
            removed += [n for n in list(cm.warming) if n not in seen]
        else:
            removed = list(update.removed)
        for name in removed:
            if cm.remove_cluster(name):
                log.info("cds: remove cluster '%s'", name)
                applied = True
            self.records.remove(name)
        if applied:
            self.records.version_info = update.version_info
        self._initialized()
        if errors:
            raise ConfigError("", "Error adding/updating cluster(s) " + ", ".join(errors))

    def on_config_update_failed(self, reason: UpdateFailureReason, error) -> None:
        # Envoy: the first fetch failing (or timing out) lets the server start without CDS.
        self._initialized()

    def _initialized(self) -> None:
        if not self.initialized:
            self.initialized = True
            self.on_initialized()
