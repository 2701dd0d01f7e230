"""``envoy.filters.http.grpc_web``: gRPC-Web clients in front of gRPC services (filter.py).

The filter's config (``GrpcWeb``) has no field."""

from __future__ import annotations

from legatus.network.filter import FilterFactory
from legatus.registry import Registry, http_filter

NAME = "envoy.filters.http.grpc_web"
CONFIG_TYPE = "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"


def _factory(proto, context, path: str) -> FilterFactory:
    from legatus.extensions.filters.http.grpc_web.filter import GrpcWebConfig, GrpcWebFilter
    from legatus.grpc.context import GrpcStatsContext

    config = GrpcWebConfig(cluster_manager=context.cluster_manager, stats=GrpcStatsContext())
    return FilterFactory(lambda: GrpcWebFilter(config), terminal=False)


def register(registry: Registry) -> None:
    registry.register(http_filter(NAME, CONFIG_TYPE, _factory))
