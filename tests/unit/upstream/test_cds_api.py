"""CDS into the cluster manager: what Envoy's CdsApiImpl counts and when."""

from __future__ import annotations

import asyncio
import random

import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import json_format

from legatus.config.errors import ConfigError
from legatus.config.subscription import ConfigUpdate, DecodedResource
from legatus.stats.store import Store
from legatus.upstream.cds_api import CdsApi
from legatus.upstream.cluster_manager import ClusterManager

STATIC = """
name: {name}
type: STATIC
load_assignment:
  cluster_name: {name}
  endpoints:
  - lb_endpoints:
    - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"""


def cluster(name: str, port: int = 1, **extra) -> cluster_pb2.Cluster:
    proto = json_format.ParseDict(
        yaml.safe_load(STATIC.format(name=name, port=port)), cluster_pb2.Cluster()
    )
    for key, value in extra.items():
        setattr(proto, key, value)
    return proto


def sotw(*clusters: cluster_pb2.Cluster, version: str = "1") -> ConfigUpdate:
    added = tuple(DecodedResource(name=c.name, resource=c) for c in clusters)
    return ConfigUpdate(type_url="", added=added, removed=(), version_info=version,
                        state_of_the_world=True)  # fmt: skip


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.fixture(name="setup")
async def setup_fixture():
    store = Store()
    removed: list[str] = []
    cm = ClusterManager([], store=store, loop=asyncio.get_running_loop(),
                        rng=random.Random(1), on_hosts=lambda name, hosts: None)  # fmt: skip
    cds = CdsApi(cm, scope=store.scope("cluster_manager.cds."), on_removed=removed.append)
    yield store, cm, cds, removed
    cm.stop()


async def test_a_cluster_is_counted_before_it_is_built(setup):
    store, cm, cds, _ = setup
    cds.on_config_update(sotw(cluster("a")))
    await settle()
    assert store.value("cluster_manager.cluster_added") == 1
    broken = cluster("a", 2)
    broken.eds_cluster_config.service_name = "x"  # on a STATIC cluster: refused when built
    with pytest.raises(ConfigError, match=r"^Error adding/updating cluster\(s\) a: "):
        cds.on_config_update(sotw(broken, version="2"))
    assert store.value("cluster_manager.cluster_modified") == 1  # counted all the same
    assert cm.configs["a"].proto == cluster("a") and not cm.warming
    cds.on_config_update(sotw(cluster("a"), version="3"))  # the one in place: skipped
    assert store.value("cluster_manager.cluster_modified") == 1


async def test_config_reload_counts_updates_that_add_or_change(setup):
    store, cm, cds, removed = setup
    reload = "cluster_manager.cds.config_reload"
    cds.on_config_update(sotw(cluster("a"), cluster("b")))
    assert store.value(reload) == 1
    assert store.value("cluster_manager.cds.config_reload_time_ms") > 0
    cds.on_config_update(sotw(cluster("a"), cluster("b"), version="2"))  # nothing new
    assert store.value(reload) == 1
    cds.on_config_update(sotw(cluster("a"), version="3"))  # a removal only
    assert store.value(reload) == 1 and removed == ["b"]
    broken = cluster("c")
    broken.eds_cluster_config.service_name = "x"
    with pytest.raises(ConfigError):
        cds.on_config_update(sotw(cluster("a", 5), broken, version="4"))
    assert store.value(reload) == 1  # refused in part: not a reload, a's change applied
    assert cm.warming["a"].proto == cluster("a", 5)


async def test_a_warming_cluster_removed_is_counted_and_its_stats_go(setup):
    store, _, cds, removed = setup
    eds = cluster_pb2.Cluster(name="e", type=cluster_pb2.Cluster.EDS)
    eds.eds_cluster_config.eds_config.ads.SetInParent()
    eds.connect_timeout.seconds = 1
    cds.on_config_update(sotw(eds))
    await settle()
    assert store.value("cluster.e.warming_state") == 1
    assert store.value("cluster_manager.warming_clusters") == 1
    cds.on_config_update(sotw(version="2"))
    assert removed == ["e"]
    assert store.value("cluster_manager.cluster_removed") == 1
    assert store.value("cluster_manager.warming_clusters") == 0
    assert not [s.name for s in store if s.name.startswith("cluster.e.")]
