"""State-of-the-world xDS over gRPC against the test control plane: ACK/NACK, names, ADS and
per-type streams, pause/resume, node, initial fetch timeout, stats."""

from __future__ import annotations

import asyncio

import pytest
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from legatus.config.subscription import UpdateFailureReason
from legatus.config_subscription.decode import CLUSTER, ENDPOINT, LISTENER
from legatus.config_subscription.grpc import RateLimitSettings
from legatus.router.hash_policy import xxhash64
from tests.unit.config_subscription import (  # noqa: F401 (fixtures)
    cluster,
    endpoints,
    listener,
    mux_factory_fixture,
    server_fixture,
    store_fixture,
    subscribe,
)

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


def acks_of(server, type_url, nonce):
    return lambda r: r.type_url == type_url and r.response_nonce == nonce


async def test_ack_and_nack_sequence(server, mux_factory, store):
    server.set_resources(CLUSTER, [cluster("a")])
    mux = mux_factory()
    sub, owner = subscribe(mux, store, CLUSTER, "cds.")
    sub.start([])
    mux.start()

    first = await server.wait_for()
    assert first.method == ADS
    assert (first.type_url, first.version_info, first.response_nonce) == (CLUSTER, "", "")
    assert first.resource_names == [] and first.node.id == "node-1" and not first.is_nack

    update = await owner.wait()
    assert update.state_of_the_world and update.version_info == "1"
    assert [r.name for r in update.added] == ["a"] and update.added[0].resource == cluster("a")
    ack = await server.wait_for(acks_of(server, CLUSTER, server.responses[0].nonce))
    assert ack.version_info == "1" and not ack.is_nack

    # Rejected: the NACK keeps the accepted version and carries the owner's text.
    owner.reject = "cluster b: bad connect_timeout"
    server.set_resources(CLUSTER, [cluster("a"), cluster("b")])
    nack = await server.wait_for(acks_of(server, CLUSTER, server.responses[1].nonce))
    assert nack.version_info == "1" and nack.is_nack
    assert nack.error_detail.code == 13  # INTERNAL, as Envoy
    assert nack.error_detail.message == "cluster b: bad connect_timeout"
    assert [u.version_info for u in owner.rejected] == ["2"]
    assert store.value("cds.version_text") == "1"  # the previous config stays
    assert len(server.responses) == 2  # nothing resent after the NACK

    # A later version is accepted; the NACK's error_detail is gone.
    owner.reject = None
    server.set_resources(CLUSTER, [cluster("a"), cluster("c")])
    await owner.wait(2)
    ack = await server.wait_for(acks_of(server, CLUSTER, server.responses[2].nonce))
    assert ack.version_info == "3" and not ack.is_nack
    assert [u.version_info for u in owner.updates] == ["1", "3"]
    assert owner.names == ["a", "c"]

    # Envoy's counting: start, two updates, one rejection.
    assert store.value("cds.update_attempt") == 4
    assert store.value("cds.update_success") == 2
    assert store.value("cds.update_rejected") == 1
    assert store.value("cds.update_failure") == 0
    assert store.value("cds.version") == xxhash64("3")
    assert store.value("cds.version_text") == "3"
    assert store.value("cds.update_duration") == 2
    assert store.value("cds.update_time") > 0
    assert store.value("control_plane.connected_state") == 1
    # The owner is told of the rejection too, as Envoy's onConfigUpdateFailed tells it.
    [(reason, error)] = owner.failures
    assert reason is UpdateFailureReason.UPDATE_REJECTED
    assert str(error) == "cluster b: bad connect_timeout"


async def test_undecodable_response_is_nacked_without_calling_the_owner(server, mux_factory, store):
    server.set_resources(CLUSTER, [cluster("a")])
    mux = mux_factory()
    sub, owner = subscribe(mux, store, CLUSTER, "cds.")
    sub.start([])
    mux.start()
    await owner.wait()

    wrong_type = any_pb2.Any()
    wrong_type.Pack(listener("l"))
    (sent,) = server.send(
        discovery_pb2.DiscoveryResponse(type_url=CLUSTER, version_info="9", resources=[wrong_type])
    )
    nack = await server.wait_for(acks_of(server, CLUSTER, sent.nonce))
    assert nack.is_nack and nack.version_info == "1"
    assert "does not match the message-wide type URL" in nack.error_detail.message

    garbage = any_pb2.Any(type_url=CLUSTER, value=b"\xff\xff\xff")
    (sent,) = server.send(
        discovery_pb2.DiscoveryResponse(type_url=CLUSTER, version_info="10", resources=[garbage])
    )
    nack = await server.wait_for(acks_of(server, CLUSTER, sent.nonce))
    assert nack.is_nack and nack.version_info == "1"
    assert "cannot parse" in nack.error_detail.message

    assert len(owner.updates) == 1 and owner.rejected == []
    assert store.value("cds.update_rejected") == 2
    assert store.value("cds.version_text") == "1"


async def test_wildcard_and_named_subscriptions_of_one_type(server, mux_factory, store):
    server.set_resources(CLUSTER, [cluster("a"), cluster("b"), cluster("c")])
    mux = mux_factory()
    everything, all_owner = subscribe(mux, store, CLUSTER, "all.")
    only_b, b_owner = subscribe(mux, store, CLUSTER, "b.")
    everything.start([])
    only_b.start(["b"])
    mux.start()

    first = await server.wait_for()
    # A wildcard beside names travels as an explicit "*".
    assert first.resource_names == ["*", "b"]
    await all_owner.wait()
    await b_owner.wait()
    assert all_owner.names == ["a", "b", "c"]
    assert b_owner.names == ["b"]

    # The named subscription goes away: the wildcard stays explicit on this stream.
    count = len(server.requests)
    only_b.close()
    request = await server.wait_for(lambda r: r.type_url == CLUSTER, since=count)
    assert request.resource_names == ["*"]


async def test_named_subscriptions_get_their_own_resources(server, mux_factory, store):
    server.set_resources(ENDPOINT, [endpoints("a"), endpoints("b"), endpoints("c")])
    mux = mux_factory()
    sub_a, owner_a = subscribe(mux, store, ENDPOINT, "cluster.a.")
    sub_b, owner_b = subscribe(mux, store, ENDPOINT, "cluster.b.")
    sub_a.start(["a"])
    sub_b.start(["b"])
    mux.start()
    await owner_a.wait()
    await owner_b.wait()
    assert owner_a.names == ["a"] and owner_b.names == ["b"]
    assert server.requests[0].resource_names == ["a", "b"]

    # More interest: the union is asked for with the version already accepted.
    count = len(server.requests)
    sub_a.update_resource_interest(["a", "c"])
    request = await server.wait_for(lambda r: r.type_url == ENDPOINT, since=count)
    assert request.resource_names == ["a", "b", "c"] and request.version_info == "1"
    await owner_a.wait(2)
    assert owner_a.names == ["a", "c"]
    assert store.value("cluster.a.update_attempt") == 4  # start, update, interest, update

    # A response without b does not reach b's owner.
    heard = len(owner_b.updates)
    server.set_resources(ENDPOINT, [endpoints("a", 81), endpoints("c")])
    await owner_a.wait(3)
    assert len(owner_b.updates) == heard


async def test_ads_carries_several_types_on_one_stream(server, mux_factory, store):
    server.set_resources(CLUSTER, [cluster("a")])
    server.set_resources(ENDPOINT, [endpoints("a")])
    mux = mux_factory()
    cds, cds_owner = subscribe(mux, store, CLUSTER, "cds.")
    eds, eds_owner = subscribe(mux, store, ENDPOINT, "cluster.a.")
    cds.start([])
    eds.start(["a"])
    mux.start()
    await cds_owner.wait()
    await eds_owner.wait()
    assert cds_owner.updates[0].type_url == CLUSTER and eds_owner.names == ["a"]
    # Subscription order, one stream, the ADS method.
    assert [r.type_url for r in server.requests[:2]] == [CLUSTER, ENDPOINT]
    assert server.streams_opened == 1
    assert {r.method for r in server.requests} == {ADS}
    # Versions and nonces are per type.
    server.set_resources(ENDPOINT, [endpoints("a", 99)])
    await eds_owner.wait(2)
    eds_ack = await server.wait_for(acks_of(server, ENDPOINT, server.responses[-1].nonce))
    assert eds_ack.version_info == "2"
    cds_acks = [r for r in server.requests_of(CLUSTER) if r.response_nonce]
    assert [r.version_info for r in cds_acks] == ["1"]


async def test_per_type_streams_use_each_type_service(server, mux_factory, store):
    server.set_resources(CLUSTER, [cluster("a")])
    server.set_resources(LISTENER, [listener("l")])
    cds_mux = mux_factory(ads=False)
    lds_mux = mux_factory(ads=False)
    cds, cds_owner = subscribe(cds_mux, store, CLUSTER, "cds.")
    lds, lds_owner = subscribe(lds_mux, store, LISTENER, "lds.")
    cds.start([])  # a per-type stream starts with its first subscription
    lds.start([])
    await cds_owner.wait()
    await lds_owner.wait()
    methods = {r.type_url: r.method for r in server.requests}
    assert methods == {
        CLUSTER: "/envoy.service.cluster.v3.ClusterDiscoveryService/StreamClusters",
        LISTENER: "/envoy.service.listener.v3.ListenerDiscoveryService/StreamListeners",
    }
    assert server.streams_opened == 2
    with pytest.raises(ValueError, match="carries one type"):
        cds_mux.subscribe(LISTENER, lds_owner, None)


async def test_pause_holds_requests_and_resume_sends_one(server, mux_factory, store):
    server.set_resources(CLUSTER, [cluster("a")])
    server.set_resources(ENDPOINT, [endpoints("a")])
    mux = mux_factory()
    cds, cds_owner = subscribe(mux, store, CLUSTER, "cds.")
    eds, eds_owner = subscribe(mux, store, ENDPOINT, "eds.")
    cds.start([])
    eds.start(["a"])
    mux.start()
    await cds_owner.wait()
    await eds_owner.wait()
    await server.wait_for(acks_of(server, ENDPOINT, server.responses[1].nonce))

    mark = len(server.requests)
    mux.pause(ENDPOINT)
    eds.update_resource_interest(["a", "b"])
    eds.update_resource_interest(["a", "b", "c"])
    server.set_resources(ENDPOINT, [endpoints("a", 81)])  # a response while paused: applied
    await eds_owner.wait(2)
    # A CDS exchange goes through meanwhile; EDS stays silent.
    server.set_resources(CLUSTER, [cluster("a"), cluster("b")])
    await server.wait_for(acks_of(server, CLUSTER, server.responses[-1].nonce), since=mark)
    assert [r for r in server.requests[mark:] if r.type_url == ENDPOINT] == []

    mux.resume(ENDPOINT)
    held = await server.wait_for(lambda r: r.type_url == ENDPOINT, since=mark)
    assert held.resource_names == ["a", "b", "c"]
    assert held.version_info == "2"
    eds_responses = [s for s in server.responses if s.type_url == ENDPOINT]
    assert held.response_nonce == eds_responses[1].nonce
    # One request said it all; the server answers it (the names changed), and the ACK of
    # that answer is the only other EDS request.
    await eds_owner.wait(3)
    await server.wait_for(acks_of(server, ENDPOINT, server.responses[-1].nonce), since=mark)
    eds_requests = [r for r in server.requests[mark:] if r.type_url == ENDPOINT]
    assert len(eds_requests) == 2 and eds_requests[0] is held
    with pytest.raises(RuntimeError, match="not paused"):
        mux.resume(ENDPOINT)


async def test_a_flood_of_responses_is_applied_in_order_and_acked_once(server, mux_factory, store):
    server.auto_respond = False
    mux = mux_factory()
    cds, owner = subscribe(mux, store, CLUSTER, "cds.")
    cds.start([])
    mux.start()
    await server.wait_for()
    mux.pause(CLUSTER)
    for version in range(1, 31):
        server.set_resources(CLUSTER, [cluster(f"c{version}")], push=True)
    await owner.wait(30)
    assert [u.version_info for u in owner.updates] == [str(v) for v in range(1, 31)]
    await asyncio.sleep(0.05)  # time for a request that should not be there
    mark = len(server.requests)
    assert mark == 1
    mux.resume(CLUSTER)
    ack = await server.wait_for(lambda r: r.type_url == CLUSTER, since=mark)
    assert ack.version_info == "30" and ack.response_nonce == server.responses[-1].nonce
    # One more round trip: no other request was owed.
    server.set_resources(CLUSTER, [cluster("last")])
    await server.wait_for(acks_of(server, CLUSTER, server.responses[-1].nonce))
    assert len(server.requests) == mark + 2


async def test_node_on_first_message_only(server, mux_factory, store):
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
    await server.until(lambda: len(server.requests) >= 4)
    assert [r.has_node for r in server.requests] == [True] + [False] * (len(server.requests) - 1)
    assert server.requests[0].node.id == "node-1"


async def test_node_on_every_message_by_default(server, mux_factory, store):
    server.set_resources(CLUSTER, [cluster("a")])
    mux = mux_factory()
    cds, owner = subscribe(mux, store, CLUSTER, "cds.")
    cds.start([])
    mux.start()
    await owner.wait()
    await server.until(lambda: len(server.requests) >= 2)
    assert all(r.node.id == "node-1" for r in server.requests)


async def test_initial_fetch_timeout(server, mux_factory, store):
    mux = mux_factory()
    cds, owner = subscribe(mux, store, CLUSTER, "cds.", initial_fetch_timeout=0.05)
    cds.start([])
    mux.start()
    await server.wait_for()
    await asyncio.sleep(0.2)
    assert owner.failures == [(UpdateFailureReason.FETCH_TIMEDOUT, None)]
    assert store.value("cds.init_fetch_timeout") == 1
    assert store.value("cds.update_attempt") == 2
    # The subscription carries on.
    server.set_resources(CLUSTER, [cluster("late")])
    await owner.wait()
    assert owner.names == ["late"] and len(owner.failures) == 1


async def test_initial_fetch_timeout_disarmed_by_an_update(server, mux_factory, store):
    server.set_resources(CLUSTER, [cluster("a")])
    mux = mux_factory()
    # The timeout leaves the first response time to come on a loaded machine (a gRPC server
    # thread answering): what is checked is that the update disarms it, not how fast it comes.
    cds, owner = subscribe(mux, store, CLUSTER, "cds.", initial_fetch_timeout=0.5)
    cds.start([])
    mux.start()
    await owner.wait()
    await asyncio.sleep(0.6)
    assert owner.failures == [] and store.value("cds.init_fetch_timeout") == 0


async def test_control_plane_identifier_and_unsubscribed_types(server, mux_factory, store):
    mux = mux_factory()
    cds, owner = subscribe(mux, store, CLUSTER, "cds.")
    cds.start([])
    mux.start()
    await server.wait_for()
    response = discovery_pb2.DiscoveryResponse(type_url=CLUSTER, version_info="7")
    response.control_plane.identifier = "cp-1"
    server.send(response)
    await owner.wait()
    assert store.value("control_plane.identifier") == "cp-1"
    assert owner.updates[0].added == ()  # an empty SotW: the wildcard owner hears it

    # A type nobody subscribed to is ignored, without an answer.
    server.send(discovery_pb2.DiscoveryResponse(type_url=LISTENER, version_info="1"), unasked=True)
    server.set_resources(CLUSTER, [cluster("a")])
    await owner.wait(2)
    await server.wait_for(acks_of(server, CLUSTER, server.responses[-1].nonce))
    assert {r.type_url for r in server.requests} == {CLUSTER}


async def test_closed_subscription_is_not_called(server, mux_factory, store):
    server.set_resources(ENDPOINT, [endpoints("a")])
    mux = mux_factory()
    sub_a, owner_a = subscribe(mux, store, ENDPOINT, "a.")
    sub_b, owner_b = subscribe(mux, store, ENDPOINT, "b.")
    sub_a.start(["a"])
    sub_b.start(["a"])
    mux.start()
    await owner_a.wait()
    await owner_b.wait()
    # The newest watch is called first (Envoy's order); it closes the older one while it is
    # being called: the older one must not be called for that update.
    owner_b.on_update = lambda update: sub_a.close()
    server.set_resources(ENDPOINT, [endpoints("a", 81)])
    await owner_b.wait(2)
    ack = await server.wait_for(acks_of(server, ENDPOINT, server.responses[-1].nonce))
    assert ack.version_info == "2" and ack.resource_names == ["a"]
    assert len(owner_a.updates) == 1


async def test_rate_limited_requests(server, mux_factory, store):
    mux = mux_factory(rate_limit=RateLimitSettings(max_tokens=1, fill_rate=40.0))
    subs = []
    for type_url, prefix in ((CLUSTER, "cds."), (LISTENER, "lds."), (ENDPOINT, "eds.")):
        sub, _ = subscribe(mux, store, type_url, prefix)
        sub.start([] if type_url != ENDPOINT else ["a"])
        subs.append(sub)
    mux.start()
    await server.until(lambda: len(server.requests) == 3)
    assert [r.type_url for r in server.requests] == [CLUSTER, LISTENER, ENDPOINT]
    assert store.value("control_plane.rate_limit_enforced") >= 2
    await asyncio.sleep(0.05)  # the writer records the drained queue after its last write
    assert store.value("control_plane.pending_requests") == 0


async def test_interest_changed_by_an_owner_while_applying(server, mux_factory, store):
    server.set_resources(ENDPOINT, [endpoints("a"), endpoints("b")])
    mux = mux_factory()
    cds, cds_owner = subscribe(mux, store, CLUSTER, "cds.")
    eds, eds_owner = subscribe(mux, store, ENDPOINT, "eds.")

    def apply_clusters(update):  # as a cluster manager does: EDS waits while CDS applies
        with mux.paused(ENDPOINT):
            for cluster_name in (r.name for r in update.added):
                eds.update_resource_interest(eds.names | {cluster_name})

    cds_owner.on_update = apply_clusters
    cds.start([])
    eds.start(["a"])
    mux.start()
    await eds_owner.wait()
    await server.wait_for(acks_of(server, ENDPOINT, server.responses[-1].nonce))

    mark = len(server.requests)
    server.set_resources(CLUSTER, [cluster("a"), cluster("b"), cluster("c")])
    await eds_owner.wait(2)
    assert eds_owner.names == ["a", "b"]
    await server.wait_for(acks_of(server, ENDPOINT, server.responses[-1].nonce), since=mark)
    eds_requests = [r for r in server.requests[mark:] if r.type_url == ENDPOINT]
    # Three changes of interest (one per cluster), one request; then the ACK of the answer.
    assert [r.resource_names for r in eds_requests] == [["a", "b", "c"], ["a", "b", "c"]]
    assert eds_requests[0].version_info == "1"
    assert store.value("eds.update_attempt") == 1 + 1 + 3 + 1  # start, update, 3 changes, update


async def test_empty_answer_for_a_type_nobody_watches_is_taken_without_a_request(
    server, mux_factory, store
):
    """The last EDS watch goes (its cluster was removed): the request that drops the name
    is answered with an empty response, which Envoy takes without answering; a response
    that still holds resources is answered, without taking its version."""
    server.set_resources(ENDPOINT, [endpoints("a")])
    mux = mux_factory()
    eds, owner = subscribe(mux, store, ENDPOINT, "eds.")
    eds.start(["a"])
    mux.start()
    await owner.wait()
    await server.wait_for(acks_of(server, ENDPOINT, server.responses[-1].nonce))

    mark = len(server.requests)
    eds.close()
    dropped = await server.wait_for(lambda r: r.type_url == ENDPOINT, since=mark)
    assert dropped.resource_names == []
    empty = discovery_pb2.DiscoveryResponse(type_url=ENDPOINT, version_info="2")
    (sent,) = server.send(empty)
    stray = discovery_pb2.DiscoveryResponse(type_url=ENDPOINT, version_info="3")
    stray.resources.add().Pack(endpoints("a"))
    (answered,) = server.send(stray)
    reply = await server.wait_for(acks_of(server, ENDPOINT, answered.nonce), since=mark)
    assert reply.version_info == "2" and not reply.is_nack  # took "2", not "3"
    assert server.requests[mark:] == [dropped, reply]  # nothing answers the empty one
    assert sent.nonce not in {r.response_nonce for r in server.requests}


async def test_newest_watch_is_called_first(server, mux_factory, store):
    """Two watches of one name (a changed EDS cluster's versions): the newest first, and
    one whose interest changed becomes the newest, as in Envoy's mux."""
    server.set_resources(ENDPOINT, [endpoints("a")])
    mux = mux_factory()
    old, old_owner = subscribe(mux, store, ENDPOINT, "old.")
    new, new_owner = subscribe(mux, store, ENDPOINT, "new.")
    calls: list[str] = []
    old_owner.on_update = lambda update: calls.append("old")
    new_owner.on_update = lambda update: calls.append("new")
    old.start(["a"])
    new.start(["a"])
    mux.start()
    await old_owner.wait()
    assert calls == ["new", "old"]
    old.update_resource_interest(["a", "b"])
    server.set_resources(ENDPOINT, [endpoints("a", 81)])
    await new_owner.wait(2)
    await old_owner.wait(2)
    assert calls[-2:] == ["old", "new"]
