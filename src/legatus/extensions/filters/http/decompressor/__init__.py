"""``envoy.filters.http.decompressor``: request and response decompression with a
decompression library extension (``envoy.compression.gzip.decompressor``); see filter.py."""

from __future__ import annotations

from legatus.network.filter import FilterFactory
from legatus.registry import Registry, http_filter

NAME = "envoy.filters.http.decompressor"
CONFIG_TYPE = "envoy.extensions.filters.http.decompressor.v3.Decompressor"


def _factory(proto, context, path: str) -> FilterFactory:
    from legatus.extensions.filters.http.decompressor.config import compile_config
    from legatus.extensions.filters.http.decompressor.filter import DecompressorFilter

    config = compile_config(proto, context, path)
    return FilterFactory(lambda: DecompressorFilter(config), terminal=False)


def register(registry: Registry) -> None:
    registry.register(http_filter(NAME, CONFIG_TYPE, _factory))
