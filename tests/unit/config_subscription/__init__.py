"""Fixtures for the xDS subscription tests: a test control plane and muxes talking to it.

Import the fixtures into a test module (``mux_factory_fixture``, ``server_fixture``,
``store_fixture``: fixtures ``mux_factory``, ``server``, ``store``); ``subscribe`` makes a
subscription with a ``RecordingOwner`` and its stats under ``<prefix>``.
"""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2

from legatus.config_subscription.grpc import BackOffSettings, GrpcMux, channel_factory
from legatus.config_subscription.stats import SubscriptionStats
from legatus.stats.store import Store
from tests.support.xds_server import RecordingOwner, XdsServer

NODE = base_pb2.Node(id="node-1", cluster="test-cluster")
FAST = BackOffSettings(base_interval=0.01, max_interval=0.05)


@pytest.fixture(name="store")
def store_fixture() -> Store:
    return Store()


@pytest.fixture(name="server")
async def server_fixture():
    control_plane = XdsServer()
    await control_plane.start()
    yield control_plane
    await control_plane.stop()


@pytest.fixture(name="mux_factory")
async def mux_factory_fixture(server, store):
    muxes: list[GrpcMux] = []

    def make(*, ads: bool = True, delta: bool = False, **kwargs) -> GrpcMux:
        kwargs.setdefault("backoff", FAST)
        mux = GrpcMux(channel_factory(server.address), NODE, ads=ads, delta=delta,
                      scope=store.scope(""), **kwargs)  # fmt: skip
        muxes.append(mux)
        return mux

    yield make
    for mux in muxes:
        await mux.close()


def subscribe(mux: GrpcMux, store: Store, type_url: str, prefix: str, *,
              initial_fetch_timeout: float | None = None):  # fmt: skip
    """(subscription, owner): not started yet."""
    owner = RecordingOwner()
    stats = SubscriptionStats(store.scope(prefix))
    return mux.subscribe(type_url, owner, stats, initial_fetch_timeout), owner


def cluster(name: str, timeout_s: int = 1) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(name=name)
    c.connect_timeout.seconds = timeout_s
    return c


def endpoints(name: str, port: int = 80) -> endpoint_pb2.ClusterLoadAssignment:
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    lb = cla.endpoints.add().lb_endpoints.add()
    lb.endpoint.address.socket_address.address = "127.0.0.1"
    lb.endpoint.address.socket_address.port_value = port
    return cla


def listener(name: str) -> listener_pb2.Listener:
    return listener_pb2.Listener(name=name)
