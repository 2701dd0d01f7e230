"""CDS: clusters from a control plane into the cluster manager (Envoy's CdsApiImpl).

Each update is applied cluster by cluster, as Envoy does: the valid clusters are added or
updated even when another cluster of the same update is refused, and the update is then
NACKed with every refusal in the error detail (``Error adding/updating cluster(s) a: ...``).
A state-of-the-world update removes the CDS clusters it no longer names; a delta update
removes the ones it lists. Static clusters are never touched: an update naming one is
skipped, as Envoy skips it.

The resources arrive validated (proto constraints: see ``config_subscription.decode``); a
cluster that is not skipped is counted (``cluster_added`` / ``cluster_modified``) before it
is built, as Envoy counts it, so a cluster that then fails to build is counted too. An
update accepted whole that added or changed a cluster counts ``config_reload`` and stamps
``config_reload_time_ms`` (``cluster_manager.cds.``); one that only removed does not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from legatus.config.errors import ConfigError
from legatus.config.subscription import ConfigUpdate, UpdateFailureReason
from legatus.config_subscription.records import ResourceRecords
from legatus.stats.store import Scope, StatSet, counter, gauge
from legatus.upstream.cluster import ClusterConfig, compile_cluster

__all__ = ["CdsApi", "CdsStats"]

log = logging.getLogger("legatus.upstream")


class CdsStats(StatSet):
    """Envoy's ALL_CDS_STATS, beside the subscription's own under ``cluster_manager.cds.``."""

    config_reload = counter()
    config_reload_time_ms = gauge()  # ms since the epoch


class CdsApi:
    """The CDS subscription's callbacks. ``check(config, path)`` is the owner's own check of
    a built cluster (its EDS config source); ``on_removed(name)`` tells the owner a cluster
    went, active or still warming."""

    def __init__(
        self,
        cluster_manager,
        *,
        scope: Scope,
        check: Callable[[ClusterConfig, str], None] = lambda config, path: None,
        on_initialized: Callable[[], None] = lambda: None,
        on_removed: Callable[[str], None] = lambda name: None,
        secrets: Any = None,
    ) -> None:
        self.cluster_manager = cluster_manager
        self.secrets = secrets  # the SDS secrets (a SecretManager) clusters' TLS may name
        self.stats = CdsStats(scope)
        self.check = check
        self.on_initialized = on_initialized
        self.on_removed = on_removed
        self.records = ResourceRecords()  # for /config_dump
        self.initialized = False

    def on_config_update(self, update: ConfigUpdate) -> None:
        cm = self.cluster_manager
        errors: list[str] = []
        seen: set[str] = set()
        added_or_updated = 0
        applied = False  # Envoy takes the update's version only if it changed something
        for i, resource in enumerate(update.added):
            name = resource.name
            if name in seen:
                errors.append(f"duplicate cluster {name} found")
                continue
            seen.add(name)
            if cm.cluster_update_blocked(name, resource.resource):
                log.debug("cds: add/update cluster '%s' skipped", name)
                continue
            cm.count_cluster_update(name)
            try:
                config = compile_cluster(resource.resource, f"resources[{i}]", self.secrets)
                self.check(config, f"resources[{i}]")
            except (ConfigError, ValueError) as e:
                errors.append(f"{name}: {e}")
                self.records.reject(name, resource.resource, str(e), update.version_info)
                continue
            cm.warm_cluster(config)
            log.info("cds: add/update cluster '%s'", name)
            # delta: the resource's own version, as Envoy shows it; SotW: the update's
            self.records.accept(name, resource.resource, resource.version or update.version_info)
            added_or_updated += 1
            applied = True
        if update.state_of_the_world:
            removed = [c.name for c in cm.dynamic_clusters() if c.name not in seen]
            removed += [n for n in list(cm.warming) if n not in seen]
        else:
            removed = list(update.removed)
        for name in removed:
            if cm.remove_cluster(name):
                log.info("cds: remove cluster '%s'", name)
                self.on_removed(name)
                applied = True
            self.records.remove(name)
        if applied:
            self.records.version_info = update.version_info
        self._initialized()
        if errors:
            raise ConfigError("", "Error adding/updating cluster(s) " + ", ".join(errors))
        if added_or_updated:
            self.stats.config_reload.inc()
            self.stats.config_reload_time_ms.set(int(time.time() * 1000))

    def on_config_update_failed(self, reason: UpdateFailureReason, error) -> None:
        # Envoy: the first fetch failing (or timing out) lets the server start without CDS.
        self._initialized()

    def _initialized(self) -> None:
        if not self.initialized:
            self.initialized = True
            self.on_initialized()
