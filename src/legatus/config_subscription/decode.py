"""Resources out of DiscoveryResponses: the Any unpacked, the name found.

Envoy names a resource by a field that depends on its type (``cluster_name`` for a
ClusterLoadAssignment, ``name`` for the others). A SotW response may also wrap each resource
in ``envoy.service.discovery.v3.Resource`` (name, version, aliases, the resource itself);
Envoy accepts both forms and so does legatus.

A decoded resource is also validated, as Envoy's resource decoder validates it
(``MessageUtil::validate``: no negative Duration, then the proto's constraints): a resource
that breaks them is an ``InvalidResourceError``, and the whole response is refused before
any owner sees it. That is why such a response counts one ``update_attempt`` in delta xDS
where a response the owner refuses counts two (the update, then its rejection), in Envoy as
in legatus. The error names the field first (``resources[0].lb_policy: value must be one of
the defined enum values (Cluster 'backend')``).
"""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, symbol_database

from legatus.config.subscription import DecodedResource

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "ROUTE",
    "RUNTIME",
    "SECRET",
    "DecodeError",
    "InvalidResourceError",
    "check_resource",
    "decode_resource",
    "message_class",
]

_PREFIX = "type.googleapis.com/"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
RUNTIME = _PREFIX + "envoy.service.runtime.v3.Runtime"
_RESOURCE_WRAPPER = _PREFIX + "envoy.service.discovery.v3.Resource"

# The field that names a resource, by type URL; "name" for every other type.
_NAME_FIELD = {ENDPOINT: "cluster_name"}

# Importing the modules registers the message classes in the default symbol database.
from envoy.config.cluster.v3 import cluster_pb2 as _cluster  # noqa: E402,F401
from envoy.config.endpoint.v3 import endpoint_pb2 as _endpoint  # noqa: E402,F401
from envoy.config.listener.v3 import listener_pb2 as _listener  # noqa: E402,F401
from envoy.config.route.v3 import route_pb2 as _route  # noqa: E402,F401
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2 as _secret  # noqa: E402,F401
from envoy.service.runtime.v3 import rtds_pb2 as _rtds  # noqa: E402,F401


class DecodeError(ValueError):
    """A resource that cannot be read (wrong type, bad bytes): the whole update is NACKed."""


class InvalidResourceError(DecodeError):
    """A resource that breaks its proto's constraints; its text names the field first."""


def message_class(type_url: str):
    """The message class of a type URL, or DecodeError."""
    full_name = type_url.rpartition("/")[2]
    try:
        return symbol_database.Default().GetSymbol(full_name)
    except KeyError:
        raise DecodeError(f"unknown resource type {type_url!r}") from None


def decode_resource(any_resource: any_pb2.Any, type_url: str, path: str = "") -> DecodedResource:
    """One resource of a SotW response (bare or wrapped in a discovery Resource); ``path``
    is where it sits in the response (``resources[3]``), for the error naming its field."""
    if any_resource.type_url == _RESOURCE_WRAPPER:
        wrapper = discovery_pb2.Resource()
        if not any_resource.Unpack(wrapper):
            raise DecodeError("cannot unpack envoy.service.discovery.v3.Resource")
        return decode_wrapped(wrapper, type_url, path)
    return _decode(any_resource, type_url, "", "", (), path)


def decode_wrapped(
    wrapper: discovery_pb2.Resource, type_url: str, path: str = ""
) -> DecodedResource:
    """One resource of a delta response (or a wrapped SotW one)."""
    if not wrapper.HasField("resource"):
        raise DecodeError(f"resource {wrapper.name!r} has no body")
    return _decode(wrapper.resource, type_url, wrapper.name, wrapper.version,
                   tuple(wrapper.aliases), path)  # fmt: skip


def _decode(any_resource, type_url, name, version, aliases, path) -> DecodedResource:
    if any_resource.type_url != type_url:
        raise DecodeError(
            f"type URL {any_resource.type_url} embedded in an individual Any does not match "
            f"the message-wide type URL {type_url} in DiscoveryResponse"
        )
    message = message_class(type_url)()
    try:
        message.ParseFromString(any_resource.value)
    except Exception as e:  # protobuf's DecodeError and friends
        raise DecodeError(f"cannot parse a {type_url} resource: {e}") from None
    own = getattr(message, _NAME_FIELD.get(type_url, "name"), "")
    _validate(message, path, name or own)
    return DecodedResource(name=name or own, resource=message, version=version, aliases=aliases)


def _validate(message, path: str, name: str) -> None:
    from legatus.config.validate import validate_message

    errors = validate_message(message, path)
    if errors:
        kind = message.DESCRIPTOR.name
        raise InvalidResourceError(f"{errors[0]} ({kind} {name!r})")


def check_resource(message, path: str) -> None:
    """Envoy's proto constraint validation (PGV) of a resource, as the bootstrap gets: the
    first violation as a ConfigError naming the field."""
    from legatus.config.validate import validate_message

    errors = validate_message(message, path)
    if errors:
        raise errors[0]
