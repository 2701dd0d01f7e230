"""``envoy.filters.http.grpc_stats``: per-method gRPC call and message stats (filter.py)."""

from __future__ import annotations

from legatus.network.filter import FilterFactory
from legatus.registry import Registry, http_filter

NAME = "envoy.filters.http.grpc_stats"
CONFIG_TYPE = "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"


def _factory(proto, context, path: str) -> FilterFactory:
    from legatus.extensions.filters.http.grpc_stats.filter import GrpcStatsFilter, compile_config

    config = compile_config(proto, context, path)
    return FilterFactory(lambda: GrpcStatsFilter(config), terminal=False)


def register(registry: Registry) -> None:
    registry.register(http_filter(NAME, CONFIG_TYPE, _factory))
