"""EDS: an EDS cluster's hosts from its ClusterLoadAssignment (Envoy's EdsClusterImpl).

One subscription per EDS cluster, for the assignment named by ``eds_cluster_config.
service_name`` (or the cluster's name). An update carries exactly that assignment: none is
an empty update (counted, the hosts stay, and a warming cluster stops waiting), more than one
is refused (``Unexpected EDS resource length``), as in Envoy. The assignment's hosts replace
the cluster's hosts, and its policy (overprovisioning factor, weighted priority health) and
locality weights the cluster's balancing settings; a delta update that removes the
assignment leaves the cluster with none.
A fetch that fails or times out ends the cluster's warming (with the hosts it has), so that
start-up goes on, as Envoy's does.
"""

from __future__ import annotations

from legatus.config.errors import ConfigError
from legatus.config.subscription import ConfigUpdate, UpdateFailureReason
from legatus.config_subscription.decode import check_resource
from legatus.upstream.cluster import assignment_hosts
from legatus.upstream.lb_config import assignment_settings

__all__ = ["EdsCallbacks"]


class EdsCallbacks:
    def __init__(
        self, cluster_manager, cluster: str, service_name: str, stats=None, *, records=None
    ) -> None:
        self.records = records  # ResourceRecords of the EDS assignments (for /config_dump)
        self.cluster_manager = cluster_manager
        self.cluster = cluster
        self.service_name = service_name
        self.stats = stats  # the subscription's SubscriptionStats (update_empty)
        self.closed = False

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
        if not mine:
            if not update.state_of_the_world and self.service_name in update.removed:
                cm.set_assignment_hosts(self.cluster, (), {})
                return
            if self.stats is not None:
                self.stats.stats.update_empty.inc()
            cm.fail_warming(self.cluster)
            return
        assignment = mine[0].resource
        try:
            check_resource(assignment, "")
            hosts = assignment_hosts(assignment, self.service_name)
            settings = assignment_settings(assignment, self.service_name)
        except ConfigError as e:
            if self.records is not None:
                self.records.reject(self.service_name, assignment, str(e))
            raise
        cm.set_assignment_hosts(self.cluster, hosts, settings)
        if self.records is not None:
            self.records.accept(self.service_name, mine[0].resource, update.version_info)

    def on_config_update_failed(self, reason: UpdateFailureReason, error) -> None:
        if not self.closed:
            self.cluster_manager.fail_warming(self.cluster)
