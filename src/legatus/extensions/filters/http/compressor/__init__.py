"""``envoy.filters.http.compressor``: response (and request) compression with a compression
library extension (``envoy.compression.{gzip,brotli,zstd}.compressor``); see filter.py."""

from __future__ import annotations

from legatus.network.filter import FilterFactory
from legatus.registry import Registry, http_filter

NAME = "envoy.filters.http.compressor"
CONFIG_TYPE = "envoy.extensions.filters.http.compressor.v3.Compressor"
PER_ROUTE_TYPE = "envoy.extensions.filters.http.compressor.v3.CompressorPerRoute"


def _factory(proto, context, path: str) -> FilterFactory:
    from legatus.extensions.filters.http.compressor.config import compile_config
    from legatus.extensions.filters.http.compressor.filter import CompressorFilter

    config = compile_config(proto, context, path)
    name = context.http_filter_name
    loop = context.loop
    return FilterFactory(lambda: CompressorFilter(config, name, loop), terminal=False)


def _route_factory(proto, context, path: str):
    from legatus.extensions.filters.http.compressor.config import compile_per_route

    return compile_per_route(proto, context, path)


def register(registry: Registry) -> None:
    registry.register(
        http_filter(
            NAME,
            CONFIG_TYPE,
            _factory,
            route_config_type=PER_ROUTE_TYPE,
            route_factory=_route_factory,
        )
    )
