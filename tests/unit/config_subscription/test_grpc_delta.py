"""Incremental (delta) xDS over gRPC against the test control plane."""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from legatus.config_subscription.decode import CLUSTER, ENDPOINT
from tests.unit.config_subscription import (  # noqa: F401 (fixtures)
    cluster,
    endpoints,
    mux_factory_fixture,
    server_fixture,
    store_fixture,
    subscribe,
)

DELTA_ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"


def answering(nonce):
    return lambda r: r.response_nonce == nonce


async def test_delta_wildcard_add_change_remove(server, mux_factory, store):
    server.set_resources(CLUSTER, [cluster("a"), cluster("b")])
    mux = mux_factory(delta=True)
    cds, owner = subscribe(mux, store, CLUSTER, "cds.")
    cds.start([])
    mux.start()

    first = await server.wait_for()
    assert first.method == DELTA_ADS and first.type_url == CLUSTER
    # The legacy wildcard: nothing subscribed, nothing held, the node.
    assert first.subscribe == [] and first.unsubscribe == []
    assert first.initial_resource_versions == {} and first.response_nonce == ""
    assert first.node.id == "node-1"

    update = await owner.wait()
    assert not update.state_of_the_world
    assert sorted(r.name for r in update.added) == ["a", "b"] and update.removed == ()
    assert update.version_info == "1"  # system_version_info
    assert {r.version for r in update.added} == {
        r.version for r in server.responses[0].message.resources
    }
    ack = await server.wait_for(answering(server.responses[0].nonce))
    assert not ack.is_nack and ack.subscribe == [] and ack.unsubscribe == []

    server.set_resources(CLUSTER, [cluster("a"), cluster("b", 2)])  # b changes
    update = await owner.wait(2)
    assert [r.name for r in update.added] == ["b"] and update.removed == ()
    server.set_resources(CLUSTER, [cluster("b", 2)])  # a goes
    update = await owner.wait(3)
    assert update.added == () and update.removed == ("a",)
    await server.wait_for(answering(server.responses[-1].nonce))
    assert store.value("cds.update_success") == 3
    assert store.value("cds.update_attempt") == 4  # start and three updates
    assert store.value("cds.version_text") == "3"


async def test_delta_named_subscribe_and_unsubscribe(server, mux_factory, store):
    server.set_resources(ENDPOINT, [endpoints("a"), endpoints("b"), endpoints("c")])
    mux = mux_factory(delta=True)
    eds, owner = subscribe(mux, store, ENDPOINT, "eds.")
    eds.start(["a"])
    mux.start()
    first = await server.wait_for()
    assert first.subscribe == ["a"]
    await owner.wait()
    assert owner.names == ["a"]
    await server.wait_for(answering(server.responses[-1].nonce))

    mark = len(server.requests)
    eds.update_resource_interest(["a", "b"])
    more = await server.wait_for(since=mark)
    # A spontaneous request: the difference only, no nonce.
    assert more.subscribe == ["b"] and more.unsubscribe == [] and more.response_nonce == ""
    await owner.wait(2)
    assert owner.names == ["b"]

    mark = len(server.requests)
    eds.update_resource_interest(["b"])
    less = await server.wait_for(since=mark)
    assert less.subscribe == [] and less.unsubscribe == ["a"]

    # A change to an unsubscribed resource is not sent; b's removal reaches the owner.
    server.set_resources(ENDPOINT, [endpoints("a", 81), endpoints("c")])
    update = await owner.wait(3)
    assert update.added == () and update.removed == ("b",)


async def test_delta_wildcard_beside_names(server, mux_factory, store):
    server.set_resources(CLUSTER, [cluster("a"), cluster("b")])
    mux = mux_factory(delta=True)
    everything, all_owner = subscribe(mux, store, CLUSTER, "all.")
    only_b, b_owner = subscribe(mux, store, CLUSTER, "b.")
    everything.start([])
    only_b.start(["b"])
    mux.start()
    first = await server.wait_for()
    assert first.subscribe == ["*", "b"]
    await all_owner.wait()
    await b_owner.wait()
    assert sorted(all_owner.names) == ["a", "b"] and b_owner.names == ["b"]

    # A change to a reaches the wildcard only.
    server.set_resources(CLUSTER, [cluster("a", 2), cluster("b")])
    await all_owner.wait(2)
    assert all_owner.names == ["a"] and len(b_owner.updates) == 1


async def test_delta_nack_keeps_versions(server, mux_factory, store):
    server.set_resources(CLUSTER, [cluster("a")])
    mux = mux_factory(delta=True)
    cds, owner = subscribe(mux, store, CLUSTER, "cds.")
    cds.start([])
    mux.start()
    await owner.wait()
    held = {r.name: r.version for r in server.responses[0].message.resources}

    owner.reject = "cluster a: bad"
    server.set_resources(CLUSTER, [cluster("a", 5)])
    nack = await server.wait_for(answering(server.responses[-1].nonce))
    assert nack.is_nack and nack.error_detail.code == 13
    assert nack.error_detail.message == "cluster a: bad"
    # Envoy counts a rejected delta update as two attempts.
    assert store.value("cds.update_attempt") == 4
    assert store.value("cds.update_rejected") == 1

    # Duplicate names are NACKed before any owner is called.
    owner.reject = None
    packed = any_pb2.Any()
    packed.Pack(cluster("d"))
    resource = discovery_pb2.Resource(name="d", version="1", resource=packed)
    (sent,) = server.send(
        discovery_pb2.DeltaDiscoveryResponse(type_url=CLUSTER, resources=[resource, resource])
    )
    nack = await server.wait_for(answering(sent.nonce))
    assert nack.error_detail.message == "duplicate name d found among added/updated resources"
    assert len(owner.updates) == 1 and len(owner.rejected) == 1

    # After a reconnect, the client still holds the version it accepted, not the rejected one.
    server.close_streams()
    first = await server.wait_for(lambda r: r.stream == 2)
    assert first.initial_resource_versions == held
    await owner.wait(2)  # the server resends the version the client lacks
    assert owner.names == ["a"] and owner.updates[-1].added[0].resource == cluster("a", 5)


async def test_delta_reconnect_sends_initial_resource_versions(server, mux_factory, store):
    server.set_resources(CLUSTER, [cluster("a"), cluster("b")])
    server.set_resources(ENDPOINT, [endpoints("a")])
    mux = mux_factory(delta=True)
    cds, cds_owner = subscribe(mux, store, CLUSTER, "cds.")
    eds, eds_owner = subscribe(mux, store, ENDPOINT, "eds.")
    cds.start([])
    eds.start(["a", "missing"])
    mux.start()
    await cds_owner.wait()
    await eds_owner.wait()
    await server.until(lambda: len(server.requests) == 4)
    versions = {
        sent.type_url: {r.name: r.version for r in sent.message.resources}
        for sent in server.responses
    }

    await server.stop()
    await server.until(lambda: store.value("cds.update_failure") >= 1)
    mark = len(server.requests)
    await server.start()
    cds_first = await server.wait_for(lambda r: r.type_url == CLUSTER, since=mark)
    eds_first = await server.wait_for(lambda r: r.type_url == ENDPOINT, since=mark)
    assert cds_first.subscribe == [] and cds_first.initial_resource_versions == versions[CLUSTER]
    # Every name of interest again, and the versions of what is held.
    assert eds_first.subscribe == ["a", "missing"]
    assert eds_first.initial_resource_versions == versions[ENDPOINT]
    assert cds_first.response_nonce == eds_first.response_nonce == ""

    # The server knows the client is up to date: nothing is resent, nobody is called.
    server.set_resources(CLUSTER, [cluster("a"), cluster("b"), cluster("c")])
    update = await cds_owner.wait(2)
    assert [r.name for r in update.added] == ["c"]
    assert len(eds_owner.updates) == 1


async def test_delta_per_type_stream(server, mux_factory, store):
    server.set_resources(CLUSTER, [cluster("a")])
    mux = mux_factory(ads=False, delta=True)
    cds, owner = subscribe(mux, store, CLUSTER, "cds.")
    cds.start([])
    await owner.wait()
    assert server.requests[0].method == (
        "/envoy.service.cluster.v3.ClusterDiscoveryService/DeltaClusters"
    )


async def test_delta_wrong_type_and_heartbeat(server, mux_factory, store):
    server.set_resources(CLUSTER, [cluster("a")])
    mux = mux_factory(delta=True)
    cds, owner = subscribe(mux, store, CLUSTER, "cds.")
    cds.start([])
    mux.start()
    await owner.wait()
    version = server.responses[0].message.resources[0].version

    # A bodiless resource at the version held is a heartbeat: ACKed, the owner not called
    # with it (the wildcard owner hears an empty update).
    heartbeat = discovery_pb2.Resource(name="a", version=version)
    (sent,) = server.send(
        discovery_pb2.DeltaDiscoveryResponse(type_url=CLUSTER, resources=[heartbeat])
    )
    ack = await server.wait_for(answering(sent.nonce))
    assert not ack.is_nack
    assert owner.updates[-1].added == () and owner.updates[-1].removed == ()

    packed = any_pb2.Any()
    packed.Pack(endpoints("x"))
    wrong = discovery_pb2.Resource(name="x", version="1", resource=packed)
    (sent,) = server.send(discovery_pb2.DeltaDiscoveryResponse(type_url=CLUSTER, resources=[wrong]))
    nack = await server.wait_for(answering(sent.nonce))
    assert "does not match the message-wide type URL" in nack.error_detail.message
    assert "DeltaDiscoveryResponse" in nack.error_detail.message


async def test_delta_answers_every_response_even_while_paused(server, mux_factory, store):
    """Each response gets its own ACK (Envoy's PausableAckQueue): two CDS responses while CDS
    is paused are two ACKs after the resume, counted in pending_requests meanwhile."""
    server.set_resources(CLUSTER, [cluster("a")])
    mux = mux_factory(delta=True)
    cds, owner = subscribe(mux, store, CLUSTER, "cds.")
    cds.start([])
    mux.start()
    await owner.wait()
    await server.wait_for(answering(server.responses[-1].nonce))

    mark = len(server.requests)
    mux.pause(CLUSTER)
    server.set_resources(CLUSTER, [cluster("a", 2)])
    await owner.wait(2)
    server.set_resources(CLUSTER, [cluster("a", 3)])
    await owner.wait(3)
    await server.until(lambda: store.value("control_plane.pending_requests") == 2)
    assert server.requests[mark:] == []
    mux.resume(CLUSTER)
    nonces = [s.nonce for s in server.responses[-2:]]
    await server.until(lambda: len(server.requests) == mark + 2)
    assert [r.response_nonce for r in server.requests[mark:]] == nonces
    await server.until(lambda: store.value("control_plane.pending_requests") == 0)


async def test_delta_change_of_interest_goes_before_the_answer(server, mux_factory, store):
    """An owner that drops a name of another type while it handles a response (CDS removing
    a cluster unsubscribes from its endpoints): that request goes first, then the ACK, as
    Envoy sends it."""
    server.set_resources(CLUSTER, [cluster("a")])
    server.set_resources(ENDPOINT, [endpoints("a")])
    mux = mux_factory(delta=True)
    cds, cds_owner = subscribe(mux, store, CLUSTER, "cds.")
    eds, eds_owner = subscribe(mux, store, ENDPOINT, "eds.")
    cds.start([])
    eds.start(["a"])
    mux.start()
    await cds_owner.wait()
    await eds_owner.wait()
    await server.until(lambda: len([r for r in server.requests if r.response_nonce]) == 2)

    def drop_endpoints(update) -> None:
        with mux.paused(ENDPOINT):
            eds.close()

    cds_owner.on_update = drop_endpoints
    mark = len(server.requests)
    server.set_resources(CLUSTER, [])
    await server.until(lambda: len(server.requests) == mark + 2)
    unsubscribe, ack = server.requests[mark:]
    assert (unsubscribe.type_url, unsubscribe.unsubscribe) == (ENDPOINT, ["a"])
    assert not unsubscribe.response_nonce
    assert (ack.type_url, ack.response_nonce) == (CLUSTER, server.responses[-1].nonce)


async def test_delta_invalid_resource_is_refused_before_the_owner(server, mux_factory, store):
    """A resource that breaks its proto's constraints is refused as it is decoded: one
    update_attempt (not two), the owner never called but told, the field named first."""
    server.set_resources(CLUSTER, [cluster("a")])
    mux = mux_factory(delta=True)
    cds, owner = subscribe(mux, store, CLUSTER, "cds.")
    cds.start([])
    mux.start()
    await owner.wait()
    attempts = store.value("cds.update_attempt")
    bad = cluster("a")
    bad.lb_policy = 99
    server.set_resources(CLUSTER, [bad])
    nack = await server.wait_for(answering(server.responses[-1].nonce))
    assert nack.error_detail.message == (
        "resources[0].lb_policy: value must be one of the defined enum values (Cluster 'a')"
    )
    assert store.value("cds.update_attempt") == attempts + 1
    assert store.value("cds.update_rejected") == 1
    assert owner.rejected == [] and len(owner.updates) == 1
    assert [reason.name for reason, _ in owner.failures] == ["UPDATE_REJECTED"]
