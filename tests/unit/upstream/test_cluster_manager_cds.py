"""The main process's cluster manager with clusters from CDS: warming, add, modify, remove."""

from __future__ import annotations

import asyncio
import random

import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from google.protobuf import json_format

from legatus.config.errors import ConfigError
from legatus.stats.store import Store
from legatus.upstream.cluster import assignment_hosts, compile_cluster
from legatus.upstream.cluster_manager import ClusterManager


def cluster(text: str):
    proto = json_format.ParseDict(yaml.safe_load(text), cluster_pb2.Cluster())
    return compile_cluster(proto, "cluster")


STATIC_A = """
name: a
type: STATIC
load_assignment:
  cluster_name: a
  endpoints:
  - lb_endpoints:
    - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 1}}}
"""
EDS_B = """
name: b
type: EDS
eds_cluster_config: {eds_config: {ads: {}}, service_name: svc-b}
"""


class Recorder:
    def __init__(self) -> None:
        self.events: list = []

    def on_hosts(self, name, hosts):
        self.events.append(("hosts", name, tuple(str(h.address) for h in hosts)))

    def on_cluster(self, config, hosts):
        self.events.append(("cluster", config.name, tuple(str(h.address) for h in hosts)))

    def on_removed(self, name):
        self.events.append(("removed", name))


def manager(store: Store, rec: Recorder, static=()) -> ClusterManager:
    return ClusterManager(
        list(static),
        store=store,
        loop=asyncio.get_running_loop(),
        rng=random.Random(1),
        on_hosts=rec.on_hosts,
        on_cluster=rec.on_cluster,
        on_cluster_removed=rec.on_removed,
    )


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_static_cluster_from_cds_is_added_then_modified_then_removed():
    store, rec = Store(), Recorder()
    cm = manager(store, rec)
    assert cm.add_or_update_cluster(cluster(STATIC_A))
    assert store.value("cluster_manager.warming_clusters") == 1
    await settle()
    assert ("cluster", "a", ("127.0.0.1:1",)) in rec.events
    assert store.value("cluster_manager.cluster_added") == 1
    assert store.value("cluster_manager.active_clusters") == 1
    assert store.value("cluster_manager.warming_clusters") == 0
    assert store.value("cluster.a.membership_total") == 1

    assert not cm.add_or_update_cluster(cluster(STATIC_A))  # the same config: nothing to do
    changed = STATIC_A.replace("port_value: 1", "port_value: 2")
    assert cm.add_or_update_cluster(cluster(changed))
    await settle()
    assert rec.events[-1] == ("cluster", "a", ("127.0.0.1:2",))
    assert store.value("cluster_manager.cluster_modified") == 1

    assert cm.remove_cluster("a")
    assert rec.events[-1] == ("removed", "a")
    assert store.value("cluster_manager.cluster_removed") == 1
    assert store.value("cluster_manager.active_clusters") == 0
    assert not cm.remove_cluster("a")
    cm.stop()


async def test_eds_cluster_warms_until_its_first_assignment():
    store, rec = Store(), Recorder()
    cm = manager(store, rec)
    config = cluster(EDS_B)
    assert config.eds_service_name == "svc-b"
    cm.add_or_update_cluster(config)
    await settle()
    assert not [e for e in rec.events if e[0] == "cluster"]
    assert store.value("cluster_manager.warming_clusters") == 1
    cla = json_format.ParseDict(
        yaml.safe_load(
            """
cluster_name: svc-b
endpoints:
- lb_endpoints:
  - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 7}}}
  - endpoint: {address: {socket_address: {address: 127.0.0.2, port_value: 7}}}
"""
        ),
        endpoint_pb2.ClusterLoadAssignment(),
    )
    cm.set_assignment_hosts("b", assignment_hosts(cla, "resources[0]"))
    await settle()
    assert ("cluster", "b", ("127.0.0.1:7", "127.0.0.2:7")) in rec.events
    assert store.value("cluster_manager.warming_clusters") == 0
    # later assignments change the hosts
    cm.set_assignment_hosts("b", assignment_hosts(endpoint_pb2.ClusterLoadAssignment(), "r"))
    assert rec.events[-1] == ("hosts", "b", ())
    assert store.value("cluster.b.membership_change") == 2
    cm.stop()


async def test_eds_initial_fetch_timeout_activates_the_cluster_without_hosts():
    store, rec = Store(), Recorder()
    cm = manager(store, rec)
    cm.add_or_update_cluster(cluster(EDS_B))
    await settle()
    cm.fail_warming("b")
    await settle()
    assert ("cluster", "b", ()) in rec.events
    cm.stop()


async def test_removing_a_warming_cluster_cancels_it():
    store, rec = Store(), Recorder()
    cm = manager(store, rec)
    cm.add_or_update_cluster(cluster(EDS_B))
    await settle()
    assert cm.remove_cluster("b")
    await settle()
    assert rec.events == []
    assert store.value("cluster_manager.warming_clusters") == 0
    cm.stop()


async def test_static_clusters_cannot_be_changed_by_cds():
    store, rec = Store(), Recorder()
    cm = manager(store, rec, static=[cluster(STATIC_A)])
    assert not cm.add_or_update_cluster(cluster(STATIC_A.replace("port_value: 1", "port_value: 3")))
    assert not cm.remove_cluster("a")
    assert cm.configs["a"].endpoints[0].address.port == 1
    cm.stop()


def test_eds_cluster_config_rules():
    with pytest.raises(ConfigError) as e:
        cluster("name: c\ntype: EDS\n")
    assert e.value.path == "cluster.eds_cluster_config.eds_config"
    with pytest.raises(ConfigError) as e:
        cluster("name: c\ntype: STATIC\neds_cluster_config: {eds_config: {ads: {}}}\n")
    assert e.value.path == "cluster.eds_cluster_config"
    eds = cluster("name: c\ntype: EDS\neds_cluster_config: {eds_config: {ads: {}}}")
    assert eds.eds_service_name == "c"


def test_assignment_settings_and_what_is_refused_by_field():
    from legatus.upstream.lb_config import assignment_settings

    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name="x")
    cla.policy.overprovisioning_factor.value = 200
    locality = cla.endpoints.add()
    locality.locality.zone = "z1"
    locality.load_balancing_weight.value = 3
    settings = assignment_settings(cla, "resources[0]")
    assert settings["overprovisioning_factor"] == 200
    assert settings["locality_weights"] == (((0, "", "z1", ""), 3),)
    drop = cla.policy.drop_overloads.add(category="throttle")
    drop.drop_percentage.numerator = 25
    assert assignment_settings(cla, "resources[0]")["drop_overload"] == 0.25
    cla.policy.drop_overloads.add(category="other")  # Envoy supports one category
    with pytest.raises(ConfigError) as e:
        assignment_settings(cla, "resources[0]")
    assert e.value.path == "resources[0].policy.drop_overloads"
