"""A DiscoveryResponse as the REST and file subscriptions take it: parsed, decoded, filtered.

Both read a JSON-like document (a REST body, a YAML or JSON file) rather than a protobuf
stream, so both follow Envoy's rules for dynamic configuration read from JSON: a field the
protos do not define is, by default, logged, counted (``server.dynamic_unknown_fields``) and
ignored, so that a control plane built against newer protos keeps working;
``--reject-unknown-dynamic-fields`` turns it into a rejection (``UnknownFieldPolicy``).

Resources are decoded against the subscription's type URL, whatever the response's own
``type_url`` says (Envoy's REST and file subscriptions ignore it too); a resource of another
type rejects the whole response, naming its index and type.

``UpdateFailureState`` is what a subscription remembers of its last failed or rejected
update, for ``/config_dump``'s ``error_state`` (Envoy's ``envoy.admin.v3.UpdateFailureState``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

from legatus.config.errors import ConfigError
from legatus.config.proto_json import parse
from legatus.config.subscription import DecodedResource
from legatus.config_subscription.decode import (
    DecodeError,
    InvalidResourceError,
    decode_resource,
    decode_wrapped,
)
from legatus.stats.store import Counter

__all__ = [
    "WARN_UNKNOWN_FIELDS",
    "UnknownFieldError",
    "UnknownFieldPolicy",
    "UpdateFailureState",
    "decode_resources",
    "parse_response",
    "select_named",
]

log = logging.getLogger("legatus.config")
DiscoveryResponse = discovery_pb2.DiscoveryResponse
_RESOURCE_WRAPPER = "type.googleapis.com/envoy.service.discovery.v3.Resource"


@dataclass(frozen=True, slots=True, kw_only=True)
class UnknownFieldPolicy:
    """What to do with fields the protos do not define (Envoy's dynamic validation visitor).

    ``reject``: ``--reject-unknown-dynamic-fields``. ``counter``: the server's
    ``dynamic_unknown_fields``, counted once per document that had any.
    """

    reject: bool = False
    counter: Counter | None = None


WARN_UNKNOWN_FIELDS = UnknownFieldPolicy()  # Envoy's default: log and ignore, count nowhere


class UnknownFieldError(ConfigError):
    """A field the protos do not define, refused by ``UnknownFieldPolicy.reject``: Envoy
    counts it as a rejected update, not a failed one."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateFailureState:
    """The last update that failed or was rejected; cleared by the next accepted one.

    ``last_update_attempt`` is in seconds since the epoch; ``version_info`` is the failed
    response's, when it could be read.
    """

    details: str
    last_update_attempt: float
    version_info: str = ""


def parse_response(document: Any, policy: UnknownFieldPolicy) -> discovery_pb2.DiscoveryResponse:
    """A JSON-like document as a DiscoveryResponse, or ConfigError naming the field."""
    if not isinstance(document, dict):
        kind = "a list" if isinstance(document, list) else type(document).__name__
        raise ConfigError("", f"a DiscoveryResponse must be an object, got {kind}")
    try:
        return parse(document, DiscoveryResponse)
    except ConfigError as strict:
        if "unknown field" not in strict.message:
            raise
        if policy.reject:
            raise UnknownFieldError(strict.path, strict.message) from None
        unknown = strict
    response = parse(document, DiscoveryResponse, ignore_unknown_fields=True)
    log.warning("Unknown field ignored in a DiscoveryResponse: %s", unknown)
    if policy.counter is not None:
        policy.counter.inc()
    return response


def decode_resources(
    response: discovery_pb2.DiscoveryResponse, type_url: str
) -> tuple[DecodedResource, ...]:
    """The response's resources, each of which must be of ``type_url``.

    Raises DecodeError (naming the resource's index) for a resource that cannot be decoded
    or breaks its proto's constraints: a response is taken whole or not at all.
    """
    decoded = []
    for index, any_resource in enumerate(response.resources):
        path = f"resources[{index}]"
        try:
            decoded.append(_decode(any_resource, type_url, path))
        except InvalidResourceError:
            raise  # its text names the field, from the index on
        except DecodeError as e:
            raise DecodeError(f"{path}: {e}") from None
    return tuple(decoded)


def select_named(
    resources: tuple[DecodedResource, ...], names: Collection[str]
) -> tuple[DecodedResource, ...]:
    """The resources named (or aliased) in ``names``; all of them for the wildcard (none)."""
    if not names:
        return resources
    return tuple(r for r in resources if r.name in names or any(a in names for a in r.aliases))


def _decode(any_resource, type_url: str, path: str) -> DecodedResource:
    if any_resource.type_url != _RESOURCE_WRAPPER:
        return decode_resource(any_resource, type_url, path)
    wrapper = discovery_pb2.Resource()
    if not any_resource.Unpack(wrapper):
        raise DecodeError("cannot unpack envoy.service.discovery.v3.Resource")
    if wrapper.HasField("ttl"):
        # Resource TTLs belong to the streamed protocols; legatus implements them nowhere.
        raise DecodeError(
            f"resource {wrapper.name!r}: field 'ttl' of Resource is not supported by legatus"
        )
    return decode_wrapped(wrapper, type_url, path)
