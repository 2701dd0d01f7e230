"""EDS: an EDS cluster's hosts from its ClusterLoadAssignment (Envoy's EdsClusterImpl).

One subscription per EDS cluster, for the assignment named by ``eds_cluster_config.
service_name`` (or the cluster's name). An update carries exactly that assignment: none is
an empty update (``update_empty``: the hosts stay, and a warming cluster stops waiting),
more than one is refused (``Unexpected EDS resource length``), as in Envoy. A delta update
that removes the assignment is an empty update too: Envoy keeps the hosts it has. The
assignment's hosts replace the cluster's hosts, and its policy (overprovisioning factor,
weighted priority health) and locality weights the cluster's balancing settings; an
assignment that changes none of the hosts, the overprovisioning factor or the locality
weights counts ``update_no_rebuild``.

A changed cluster gets a subscription of its own while the previous version keeps its
(both watch the same name, so nothing is asked of the control plane): each callbacks object
compares an assignment with what *its* cluster version last took, as Envoy's cluster
objects do, and says when its version is initialized (``on_initialized``: its first
assignment, empty update or failure; Envoy's onPreInitComplete). A fetch that fails, times
out or is rejected ends the cluster's warming (with the hosts it has), so that start-up goes
on, as Envoy's does.
"""

from __future__ import annotations

from collections.abc import Callable

from legatus.config.errors import ConfigError
from legatus.config.subscription import ConfigUpdate, UpdateFailureReason
from legatus.stats.store import Scope, StatSet, counter
from legatus.upstream.cluster import assignment_hosts
from legatus.upstream.lb_config import assignment_settings

__all__ = ["EdsCallbacks", "EdsStats"]

_DEFAULT_OVERPROVISIONING_FACTOR = 140
# What a cluster version holds before its first assignment: no hosts, default settings.
_NOTHING = ((), _DEFAULT_OVERPROVISIONING_FACTOR, ())


class EdsStats(StatSet):
    """The cluster's own update stats (Envoy's config update stats), beside the
    subscription's, under ``cluster.<name>.``."""

    update_empty = counter()
    update_no_rebuild = counter()


class EdsCallbacks:
    def __init__(
        self,
        cluster_manager,
        cluster: str,
        service_name: str,
        scope: Scope,
        *,
        records=None,
        on_initialized: Callable[[], None] = lambda: None,
    ) -> None:
        self.records = records  # ResourceRecords of the EDS assignments (for /config_dump)
        self.cluster_manager = cluster_manager
        self.cluster = cluster
        self.service_name = service_name
        self.stats = EdsStats(scope)
        self.on_initialized = on_initialized
        self.closed = False
        self._initialized = False
        self._applied: tuple = _NOTHING  # (hosts, overprovisioning, locality weights)

    def on_config_update(self, update: ConfigUpdate) -> None:
        if self.closed:
            return
        mine = [r for r in update.added if r.name == self.service_name]
        if len(update.added) > 1 or len(mine) != len(update.added):
            if len(update.added) > 1:
                raise ConfigError("", f"Unexpected EDS resource length: {len(update.added)}")
            raise ConfigError(
                "",
                f"Unexpected EDS cluster (expecting {self.service_name}): {update.added[0].name}",
            )
        cm = self.cluster_manager
        if not mine:  # nothing, or (delta) the assignment removed: the hosts stay
            self.stats.update_empty.inc()
            cm.fail_warming(self.cluster)
            self._pre_init_complete()
            return
        assignment = mine[0].resource
        try:
            hosts = assignment_hosts(assignment, self.service_name)
            settings = assignment_settings(assignment, self.service_name)
        except ConfigError as e:
            if self.records is not None:
                self.records.reject(self.service_name, assignment, str(e))
            raise
        applied = (
            hosts,
            settings.get("overprovisioning_factor", _DEFAULT_OVERPROVISIONING_FACTOR),
            settings.get("locality_weights", ()),
        )
        if applied == self._applied:
            self.stats.update_no_rebuild.inc()
        self._applied = applied
        cm.set_assignment_hosts(self.cluster, hosts, settings)
        if self.records is not None:
            self.records.accept(self.service_name, assignment, update.version_info)
        self._pre_init_complete()

    def on_config_update_failed(self, reason: UpdateFailureReason, error) -> None:
        if not self.closed:
            self.cluster_manager.fail_warming(self.cluster)
            self._pre_init_complete()

    def _pre_init_complete(self) -> None:
        if not self._initialized:
            self._initialized = True
            self.on_initialized()
