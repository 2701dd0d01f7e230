"""The resources of a gRPC response: SotW (bare or in discovery Resource wrappers) or delta,
decoded and validated (``config_subscription.decode``), or a DecodeError that NACKs it whole.

Delta also checks what Envoy's delta mux checks before any owner sees the response: no name
twice among the added and removed resources, each body of the response's type; a bodiless
resource at the version held is a heartbeat and is skipped. Not supported (NACKed, naming the
field): resource TTLs and ``removed_resource_names`` with dynamic parameters.
"""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2

from legatus.config.subscription import DecodedResource
from legatus.config_subscription import decode
from legatus.config_subscription.grpc.delta_state import DeltaState

__all__ = ["decode_delta", "decode_sotw"]

_RESOURCE_WRAPPER = "type.googleapis.com/envoy.service.discovery.v3.Resource"


def decode_sotw(any_resource, type_url: str, path: str) -> DecodedResource:
    if any_resource.type_url == _RESOURCE_WRAPPER:
        wrapper = discovery_pb2.Resource()
        if not any_resource.Unpack(wrapper):
            raise decode.DecodeError("cannot unpack envoy.service.discovery.v3.Resource")
        if wrapper.HasField("ttl"):
            raise decode.DecodeError(
                f"resource {wrapper.name!r}: field 'ttl' of Resource is not supported by legatus"
            )
        return decode.decode_wrapped(wrapper, type_url, path)
    return decode.decode_resource(any_resource, type_url, path)


def decode_delta(
    response: discovery_pb2.DeltaDiscoveryResponse, state: DeltaState
) -> tuple[list[DecodedResource], list[str]]:
    type_url = response.type_url
    names: set[str] = set()
    added: list[DecodedResource] = []
    for index, wrapper in enumerate(response.resources):
        name = wrapper.name
        if name in names:
            raise decode.DecodeError(f"duplicate name {name} found among added/updated resources")
        names.add(name)
        if wrapper.HasField("ttl"):
            raise decode.DecodeError(
                f"resource {name!r}: field 'ttl' of Resource is not supported by legatus"
            )
        if not wrapper.HasField("resource") and (
            state.is_heartbeat(name, wrapper.version) or wrapper.aliases
        ):
            continue  # nothing new, or an alias the server could not resolve
        if wrapper.HasField("resource") and wrapper.resource.type_url != type_url:
            raise decode.DecodeError(
                f"type URL {wrapper.resource.type_url} embedded in an individual Any does not "
                f"match the message-wide type URL {type_url} in DeltaDiscoveryResponse"
            )
        added.append(decode.decode_wrapped(wrapper, type_url, f"resources[{index}]"))
    removed = list(response.removed_resources)
    for resource_name in response.removed_resource_names:
        if resource_name.HasField("dynamic_parameter_constraints"):
            raise decode.DecodeError(
                "field 'dynamic_parameter_constraints' of removed_resource_names is not "
                "supported by legatus"
            )
        removed.append(resource_name.name)
    for name in removed:
        if name in names:
            raise decode.DecodeError(
                f"duplicate name {name} found in the union of added+removed resources"
            )
        names.add(name)
    return added, removed
