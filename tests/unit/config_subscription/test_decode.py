"""Resources out of responses: unpacked, named, and validated as Envoy's resource decoder
validates them (the same for gRPC, REST and files)."""

from __future__ import annotations

import pytest
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from legatus.config_subscription import decode
from legatus.config_subscription.rest.response import decode_resources
from tests.unit.config_subscription import cluster, endpoints


def packed(message) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(message)
    return out


def test_a_valid_resource_is_decoded_and_named():
    resource = decode.decode_resource(packed(endpoints("a")), decode.ENDPOINT, "resources[0]")
    assert resource.name == "a" and resource.resource == endpoints("a")


def test_constraints_are_checked_naming_the_field_first():
    bad = cluster("a")
    bad.lb_policy = 99
    with pytest.raises(decode.InvalidResourceError) as e:
        decode.decode_resource(packed(bad), decode.CLUSTER, "resources[2]")
    assert str(e.value) == (
        "resources[2].lb_policy: value must be one of the defined enum values (Cluster 'a')"
    )


def test_negative_durations_are_refused_before_the_constraints():
    bad = cluster("b", timeout_s=-1)
    wrapper = discovery_pb2.Resource(name="b", version="7", resource=packed(bad))
    with pytest.raises(decode.InvalidResourceError, match=r"^resources\[0\]\.connect_timeout: "
                       r"Invalid duration: Expected positive duration"):  # fmt: skip
        decode.decode_wrapped(wrapper, decode.CLUSTER, "resources[0]")


def test_rest_and_files_name_the_resource_once():
    bad = endpoints("a", port=70000)
    response = discovery_pb2.DiscoveryResponse(resources=[packed(endpoints("ok")), packed(bad)])
    with pytest.raises(decode.InvalidResourceError) as e:
        decode_resources(response, decode.ENDPOINT)
    assert str(e.value).startswith(
        "resources[1].endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value:"
        " value must be less than or equal to 65535"
    )
    other = discovery_pb2.DiscoveryResponse(resources=[packed(cluster("c"))])
    with pytest.raises(decode.DecodeError, match=r"^resources\[0\]: type URL "):
        decode_resources(other, decode.ENDPOINT)
