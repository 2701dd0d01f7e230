"""The sans-I/O parts of gRPC xDS: per-type protocol states, back-off, services, settings."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import config_source_pb2
from envoy.service.cluster.v3 import cds_pb2
from envoy.service.discovery.v3 import ads_pb2
from envoy.service.endpoint.v3 import eds_pb2
from envoy.service.listener.v3 import lds_pb2
from envoy.service.route.v3 import rds_pb2
from envoy.service.runtime.v3 import rtds_pb2
from envoy.service.secret.v3 import sds_pb2

from legatus.config.errors import ConfigError
from legatus.config_subscription import decode
from legatus.config_subscription.grpc import (
    BackOffSettings,
    DeltaState,
    JitteredBackOff,
    RateLimitSettings,
    SotwState,
    backoff_settings,
    method_path,
    rate_limit_settings,
)
from legatus.config_subscription.grpc.pausable_ack_queue import (
    InterestChange,
    PausableAckQueue,
    UpdateAck,
)
from legatus.config_subscription.grpc.protocol import error_detail
from tests.support.xds_server import SERVICES

EDS = decode.ENDPOINT


# SotW ------------------------------------------------------------------------------


def test_sotw_wildcard_is_legacy_until_names_are_sent():
    state = SotwState(decode.CLUSTER)
    state.set_interest((), wildcard=True)
    assert state.next_request().resource_names == []
    state.set_interest({"b", "a"}, wildcard=True)
    assert state.next_request().resource_names == ["*", "a", "b"]
    state.set_interest((), wildcard=True)
    assert state.next_request().resource_names == ["*"]  # [] would now mean "nothing"
    state.stream_started()
    assert state.next_request().resource_names == []  # a new stream: legacy again


def test_sotw_ack_nack_and_new_stream():
    state = SotwState(EDS)
    state.set_interest({"a"}, wildcard=False)
    state.accepted("v1", "n1")
    ack = state.next_request()
    assert (ack.version_info, ack.response_nonce) == ("v1", "n1")
    assert not ack.HasField("error_detail")
    state.rejected("n2", "bad")
    nack = state.next_request()
    assert (nack.version_info, nack.response_nonce) == ("v1", "n2")
    assert (nack.error_detail.code, nack.error_detail.message) == (13, "bad")
    assert not state.next_request().HasField("error_detail")  # said once
    state.rejected("n3", "worse")
    state.stream_started()
    fresh = state.next_request()
    assert (fresh.version_info, fresh.response_nonce) == ("v1", "")
    assert not fresh.HasField("error_detail")


def test_error_detail_is_truncated_like_envoy():
    detail = error_detail("x" * 5000)
    assert detail.message == "x" * 4096 + "...(truncated)"
    assert error_detail("short").message == "short"


# Delta -----------------------------------------------------------------------------


def test_delta_differences_and_first_request():
    state = DeltaState(EDS)
    assert not state.wants_request()
    state.set_interest({"a", "b"}, wildcard=False)
    first = state.next_request()
    assert list(first.resource_names_subscribe) == ["a", "b"] and not first.response_nonce
    assert not state.wants_request()

    state.accepted([("a", "1"), ("b", "1"), ("stranger", "1")], [])
    assert state.versions == {"a": "1", "b": "1"}  # not asked for: not held
    assert not state.wants_request()  # an answer alone is the mux's (its ACK queue)
    state.set_interest({"a", "c"}, wildcard=False)
    request = state.next_request(UpdateAck(EDS, "n1"))
    assert list(request.resource_names_subscribe) == ["c"]
    assert list(request.resource_names_unsubscribe) == ["b"]
    assert request.response_nonce == "n1"  # the ACK carries the change of interest
    assert state.versions == {"a": "1"}

    # Dropped and taken again before a request: subscribed again.
    state.set_interest({"c"}, wildcard=False)
    state.set_interest({"a", "c"}, wildcard=False)
    request = state.next_request()
    assert list(request.resource_names_subscribe) == ["a"]
    assert list(request.resource_names_unsubscribe) == []
    assert request.response_nonce == ""  # a spontaneous request

    state.accepted([], ["a"])
    state.stream_started()
    fresh = state.next_request()
    assert list(fresh.resource_names_subscribe) == ["a", "c"]
    assert dict(fresh.initial_resource_versions) == {}
    assert fresh.response_nonce == ""


def test_delta_wildcard_and_nack():
    state = DeltaState(decode.CLUSTER)
    state.set_interest((), wildcard=True)
    assert list(state.next_request().resource_names_subscribe) == []  # legacy wildcard
    state.accepted([("a", "1"), ("b", "2")], [])
    nack = state.next_request(UpdateAck(decode.CLUSTER, "n2", error_detail("no")))
    assert nack.response_nonce == "n2" and nack.error_detail.message == "no"
    assert nack.error_detail.code == 13
    assert state.is_heartbeat("a", "1") and not state.is_heartbeat("a", "2")
    state.set_interest({"x"}, wildcard=True)
    assert list(state.next_request().resource_names_subscribe) == ["x"]
    state.stream_started()
    fresh = state.next_request()
    assert list(fresh.resource_names_subscribe) == ["*", "x"]
    assert dict(fresh.initial_resource_versions) == {"a": "1", "b": "2"}
    # Losing the wildcard forgets what only it brought.
    state.set_interest({"x"}, wildcard=False)
    assert list(state.next_request().resource_names_unsubscribe) == ["*"]
    assert state.versions == {}
    with pytest.raises(RuntimeError, match=r"no .* request is due"):
        state.next_request()


def test_pausable_ack_queue_skips_paused_types_in_order():
    paused: set[str] = set()
    queue = PausableAckQueue(lambda type_url: type_url in paused)
    assert queue.front() is None and len(queue) == 0
    cds1, eds1, cds2 = UpdateAck("cds", "1"), UpdateAck("eds", "2"), UpdateAck("cds", "3")
    for ack in (cds1, eds1, cds2):
        queue.push(ack)
    paused.add("cds")
    assert queue.front() is eds1  # a paused type's answers do not block the others
    queue.pop(eds1)
    assert queue.front() is None and len(queue) == 2  # both still owed
    paused.clear()
    assert queue.front() is cds1  # one answer per response, in order
    queue.pop(cds1)
    assert queue.front() is cds2
    # A change of interest keeps its place among the answers, but is no answer owed.
    change = InterestChange("eds")
    queue.push(change)
    assert len(queue) == 1
    queue.pop(cds2)
    assert queue.front() is change
    queue.clear()
    assert len(queue) == 0 and queue.front() is None


# Back-off, services, settings -------------------------------------------------------


def test_jittered_backoff_doubles_to_the_cap_and_resets():
    backoff = JitteredBackOff(BackOffSettings(base_interval=0.5, max_interval=3.0), lambda: 0.5)
    delays = [backoff.next_delay() for _ in range(5)]
    assert delays == [0.25, 0.5, 1.0, 1.5, 1.5]
    backoff.reset()
    assert backoff.next_delay() == 0.25
    assert BackOffSettings() == BackOffSettings(base_interval=0.5, max_interval=30.0)
    with pytest.raises(ValueError):
        BackOffSettings(base_interval=2, max_interval=1)


def test_method_paths_exist():
    modules = (ads_pb2, cds_pb2, eds_pb2, lds_pb2, rds_pb2, rtds_pb2, sds_pb2)
    services = {s.full_name: s for m in modules for s in m.DESCRIPTOR.services_by_name.values()}
    for type_url in (decode.CLUSTER, decode.LISTENER, decode.ENDPOINT, decode.ROUTE,
                     decode.RUNTIME, decode.SECRET):  # fmt: skip
        for delta in (False, True):
            path = method_path(type_url, ads=False, delta=delta)
            service, _, method = path[1:].rpartition("/")
            assert services[service].methods_by_name[method].client_streaming
            assert method in SERVICES[service]
    for service, methods in SERVICES.items():  # what the test control plane serves
        assert all(services[service].methods_by_name[m].client_streaming for m in methods)
    assert method_path(None, ads=True, delta=False).endswith("/StreamAggregatedResources")
    assert method_path(None, ads=True, delta=True).endswith("/DeltaAggregatedResources")
    with pytest.raises(ValueError, match="no xDS gRPC service"):
        method_path("type.googleapis.com/envoy.config.route.v3.VirtualHost", ads=False,
                    delta=True)  # fmt: skip


def _api_config_source(yaml_like: dict) -> config_source_pb2.ApiConfigSource:
    from google.protobuf import json_format

    return json_format.ParseDict(yaml_like, config_source_pb2.ApiConfigSource())


def test_backoff_and_rate_limit_from_api_config_source():
    plain = _api_config_source({"api_type": "GRPC"})
    assert backoff_settings(plain) == BackOffSettings()
    assert rate_limit_settings(plain) is None

    source = _api_config_source(
        {
            "api_type": "GRPC",
            "grpc_services": [
                {
                    "envoy_grpc": {
                        "cluster_name": "xds",
                        "retry_policy": {"retry_back_off": {"base_interval": "0.1s"}},
                    }
                }
            ],
            "rate_limit_settings": {"max_tokens": 5},
        }
    )
    assert backoff_settings(source) == BackOffSettings(base_interval=0.1, max_interval=1.0)
    assert rate_limit_settings(source) == RateLimitSettings(max_tokens=5, fill_rate=10.0)

    bad = _api_config_source(
        {
            "grpc_services": [
                {
                    "envoy_grpc": {
                        "cluster_name": "xds",
                        "retry_policy": {
                            "retry_back_off": {"base_interval": "2s", "max_interval": "1s"}
                        },
                    }
                }
            ]
        }
    )
    with pytest.raises(ConfigError) as raised:
        backoff_settings(bad, "dynamic_resources.ads_config")
    assert raised.value.path == (
        "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.retry_policy.retry_back_off"
        ".max_interval"
    )
