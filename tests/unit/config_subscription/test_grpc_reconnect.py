"""A control plane that goes away and comes back: failure stats, back-off, the state resent."""

from __future__ import annotations

import grpc

from legatus.config.subscription import UpdateFailureReason
from legatus.config_subscription.decode import CLUSTER, ENDPOINT
from tests.unit.config_subscription import (  # noqa: F401 (fixtures)
    cluster,
    endpoints,
    mux_factory_fixture,
    server_fixture,
    store_fixture,
    subscribe,
)


async def test_sotw_reconnects_to_a_restarted_control_plane(server, mux_factory, store):
    server.set_resources(CLUSTER, [cluster("a")])
    server.set_resources(ENDPOINT, [endpoints("a")])
    mux = mux_factory(set_node_on_first_message_only=True)
    cds, cds_owner = subscribe(mux, store, CLUSTER, "cds.")
    eds, eds_owner = subscribe(mux, store, ENDPOINT, "eds.")
    cds.start([])
    eds.start(["a"])
    mux.start()
    await cds_owner.wait()
    await eds_owner.wait()
    await server.until(lambda: len(server.requests) == 4)  # two requests, two ACKs
    assert store.value("control_plane.connected_state") == 1

    await server.stop()
    await server.until(lambda: store.value("cds.update_failure") >= 2)
    assert store.value("control_plane.connected_state") == 0
    assert store.value("eds.update_failure") >= 2
    # Owners are not told (Envoy): their config stays; nothing else reached them.
    assert cds_owner.failures == [] and eds_owner.failures == []
    assert len(cds_owner.updates) == 1 and len(eds_owner.updates) == 1
    failures = store.value("cds.update_failure")
    assert store.value("cds.update_attempt") == 2 + failures  # start, update, failures

    mark = len(server.requests)
    await server.start()  # the same port
    first = await server.wait_for(lambda r: r.type_url == CLUSTER, since=mark)
    again = await server.wait_for(lambda r: r.type_url == ENDPOINT, since=mark)
    assert first.stream == again.stream == server.streams_opened
    # The last accepted versions, the names, no nonce (nonces die with their stream).
    assert (first.version_info, first.response_nonce, first.resource_names) == ("1", "", [])
    assert (again.version_info, again.response_nonce, again.resource_names) == ("1", "", ["a"])
    # The node goes on the first request of each stream.
    assert first.has_node and not again.has_node
    await cds_owner.wait(2)
    await eds_owner.wait(2)
    assert store.value("control_plane.connected_state") == 1


async def test_a_stream_closed_by_the_server_is_reopened(server, mux_factory, store):
    server.set_resources(CLUSTER, [cluster("a")])
    mux = mux_factory()
    cds, owner = subscribe(mux, store, CLUSTER, "cds.")
    cds.start([])
    mux.start()
    await owner.wait()
    await server.wait_for(lambda r: r.response_nonce)

    server.close_streams(grpc.StatusCode.OK)  # a clean end still means "reconnect"
    await server.until(lambda: server.streams_opened == 2)
    await owner.wait(2)
    server.close_streams(grpc.StatusCode.INTERNAL)
    await server.until(lambda: server.streams_opened == 3)
    await owner.wait(3)
    assert store.value("cds.update_failure") == 2
    reopened = [r for r in server.requests if r.stream == 3]
    assert reopened[0].version_info == "1" and reopened[0].response_nonce == ""


async def test_no_control_plane_yet(server, mux_factory, store):
    await server.stop()  # the port is known, nobody listens
    mux = mux_factory()
    cds, owner = subscribe(mux, store, CLUSTER, "cds.", initial_fetch_timeout=0.05)
    cds.start([])
    mux.start()
    await server.until(lambda: owner.failures != [] and store.value("cds.update_failure") >= 3)
    assert owner.failures == [(UpdateFailureReason.FETCH_TIMEDOUT, None)]
    assert owner.updates == []

    server.set_resources(CLUSTER, [cluster("a")], push=False)
    await server.start()
    await owner.wait()
    assert owner.names == ["a"]
    assert server.requests[0].version_info == ""


async def test_sotw_nack_is_not_repeated_on_a_new_stream(server, mux_factory, store):
    server.set_resources(CLUSTER, [cluster("a")])
    mux = mux_factory()
    cds, owner = subscribe(mux, store, CLUSTER, "cds.")
    cds.start([])
    mux.start()
    await owner.wait()
    owner.reject = "no"
    server.set_resources(CLUSTER, [cluster("b")])
    await server.wait_for(lambda r: r.is_nack)
    owner.reject = None

    server.close_streams()
    await server.until(lambda: server.streams_opened == 2)
    first = await server.wait_for(lambda r: r.stream == 2)
    # A new stream starts from the accepted version, without the old NACK.
    assert first.version_info == "1" and not first.is_nack and first.response_nonce == ""
    await owner.wait(2)
    assert owner.names == ["b"]
