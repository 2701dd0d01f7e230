"""An EDS cluster's assignments: what Envoy's EdsClusterImpl counts (update_empty,
update_no_rebuild) and when a cluster version is initialized."""

from __future__ import annotations

import asyncio
import random

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from legatus.config.subscription import ConfigUpdate, DecodedResource, UpdateFailureReason
from legatus.stats.store import Store
from legatus.upstream.cluster import compile_cluster
from legatus.upstream.cluster_manager import ClusterManager
from legatus.upstream.eds import EdsCallbacks


def assignment(*ports: int, overprovisioning: int | None = None):
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name="e")
    locality = cla.endpoints.add()
    for port in ports:
        address = locality.lb_endpoints.add().endpoint.address.socket_address
        address.address, address.port_value = "127.0.0.1", port
    if overprovisioning is not None:
        cla.policy.overprovisioning_factor.value = overprovisioning
    return cla


def update(*assignments, removed: tuple[str, ...] = (), delta: bool = False) -> ConfigUpdate:
    added = tuple(DecodedResource(name="e", resource=a) for a in assignments)
    return ConfigUpdate(type_url="", added=added, removed=removed, version_info="1",
                        state_of_the_world=not delta)  # fmt: skip


@pytest.fixture(name="cm")
async def cm_fixture():
    cm = ClusterManager([], store=Store(), loop=asyncio.get_running_loop(),
                        rng=random.Random(1), on_hosts=lambda name, hosts: None)  # fmt: skip
    proto = cluster_pb2.Cluster(name="e", type=cluster_pb2.Cluster.EDS)
    proto.eds_cluster_config.eds_config.ads.SetInParent()
    proto.connect_timeout.seconds = 1
    cm.add_or_update_cluster(compile_cluster(proto, "cluster"))
    yield cm
    cm.stop()


def callbacks(cm: ClusterManager, initialized: list) -> EdsCallbacks:
    scope = cm.store.scope("cluster.e.")
    return EdsCallbacks(cm, "e", "e", scope, on_initialized=lambda: initialized.append(1))


async def test_an_assignment_that_changes_nothing_is_no_rebuild(cm):
    initialized: list = []
    eds = callbacks(cm, initialized)
    eds.on_config_update(update(assignment(1, 2)))
    await cm.wait_warm()
    assert initialized == [1] and cm.store.value("cluster.e.membership_total") == 2
    eds.on_config_update(update(assignment(1, 2)))
    eds.on_config_update(update(assignment(1, 2, overprovisioning=140)))  # the default, spelt
    assert cm.store.value("cluster.e.update_no_rebuild") == 2
    eds.on_config_update(update(assignment(1)))
    eds.on_config_update(update(assignment(1, overprovisioning=200)))
    assert cm.store.value("cluster.e.update_no_rebuild") == 2
    assert initialized == [1]  # once


async def test_a_removed_assignment_is_an_empty_update_and_the_hosts_stay(cm):
    eds = callbacks(cm, [])
    eds.on_config_update(update(assignment(1, 2), delta=True))
    await cm.wait_warm()
    eds.on_config_update(update(removed=("e",), delta=True))
    assert cm.store.value("cluster.e.update_empty") == 1
    assert [h.address.port for h in cm.hosts["e"]] == [1, 2]


async def test_a_rejected_first_update_ends_warming_without_hosts(cm):
    initialized: list = []
    eds = callbacks(cm, initialized)
    eds.on_config_update_failed(UpdateFailureReason.UPDATE_REJECTED, ValueError("bad"))
    await cm.wait_warm()
    assert initialized == [1]
    assert cm.store.value("cluster_manager.warming_clusters") == 0
    assert cm.hosts["e"] == ()
