"""``envoy.filters.http.grpc_http1_bridge``: HTTP/1.1 clients that cannot read trailers in
front of gRPC services (filter.py).

The filter's config (``Config``) has two fields, both implemented: ``upgrade_protobuf_to_grpc``
and ``ignore_query_parameters``. The filter keeps no stats (Envoy 1.40's keeps none either)."""

from __future__ import annotations

from legatus.config.supported import check_supported
from legatus.network.filter import FilterFactory
from legatus.registry import Registry, http_filter

NAME = "envoy.filters.http.grpc_http1_bridge"
CONFIG_TYPE = "envoy.extensions.filters.http.grpc_http1_bridge.v3.Config"
SUPPORTED = ("upgrade_protobuf_to_grpc", "ignore_query_parameters")


def _factory(proto, context, path: str) -> FilterFactory:
    from legatus.extensions.filters.http.grpc_http1_bridge.filter import (
        Http1BridgeConfig,
        Http1BridgeFilter,
    )

    check_supported(proto, SUPPORTED, path, "Config")
    config = Http1BridgeConfig(
        upgrade_protobuf_to_grpc=proto.upgrade_protobuf_to_grpc,
        ignore_query_parameters=proto.ignore_query_parameters,
    )
    return FilterFactory(lambda: Http1BridgeFilter(config), terminal=False)


def register(registry: Registry) -> None:
    registry.register(http_filter(NAME, CONFIG_TYPE, _factory))
