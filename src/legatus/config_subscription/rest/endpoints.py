"""Where a REST subscription POSTs: the ``google.api.http`` option of the discovery services.

Each v3 discovery service names its resource type (the ``envoy.annotations.resource``
option) and gives its unary ``Fetch<X>`` method an HTTP rule (``post: "/v3/discovery:<x>"``,
``body: "*"``). The paths are read from those descriptors, as Envoy builds its
type-to-endpoint table, rather than copied here. A type whose service has no Fetch method
(virtual hosts, LEDS: incremental only) cannot be polled over REST.
"""

from __future__ import annotations

import functools
import importlib

from envoy.annotations import resource_pb2
from google.api import annotations_pb2

from legatus.config.errors import ConfigError

__all__ = ["rest_path"]

_TYPE_URL_PREFIX = "type.googleapis.com/"

# The modules that define the discovery services with a REST (Fetch) method.
_SERVICE_MODULES = (
    "envoy.service.cluster.v3.cds_pb2",
    "envoy.service.listener.v3.lds_pb2",
    "envoy.service.endpoint.v3.eds_pb2",
    "envoy.service.route.v3.rds_pb2",
    "envoy.service.route.v3.srds_pb2",
    "envoy.service.secret.v3.sds_pb2",
    "envoy.service.runtime.v3.rtds_pb2",
    "envoy.service.extension.v3.config_discovery_pb2",
)


@functools.cache
def _paths() -> dict[str, str]:
    paths: dict[str, str] = {}
    for module_name in _SERVICE_MODULES:
        module = importlib.import_module(module_name)
        for service in module.DESCRIPTOR.services_by_name.values():
            resource_type = service.GetOptions().Extensions[resource_pb2.resource].type
            for method in service.methods:
                rule = method.GetOptions().Extensions[annotations_pb2.http]
                if resource_type and rule.post and rule.body == "*":
                    paths[_TYPE_URL_PREFIX + resource_type] = rule.post
    return paths


def rest_path(type_url: str) -> str:
    """The path a DiscoveryRequest for ``type_url`` is POSTed to, e.g.
    ``/v3/discovery:clusters``; ConfigError for a type no REST endpoint serves."""
    try:
        return _paths()[type_url]
    except KeyError:
        raise ConfigError(
            "api_config_source.api_type",
            f"resource type {type_url} cannot be fetched over REST: no discovery service "
            "defines a Fetch method for it",
        ) from None
