"""``envoy.filters.network.echo``: writes back what it reads (half-close included)."""

from __future__ import annotations

from legatus.network.filter import FilterFactory, FilterStatus, ReadFilter
from legatus.registry import Registry, network_filter

NAME = "envoy.filters.network.echo"
CONFIG_TYPE = "envoy.extensions.filters.network.echo.v3.Echo"


class EchoFilter(ReadFilter):
    __slots__ = ("read_callbacks",)

    def on_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        self.read_callbacks.connection.write(data, end_stream)
        return FilterStatus.STOP_ITERATION


def _factory(proto, context, path) -> FilterFactory:
    return FilterFactory(EchoFilter, terminal=True)


def register(registry: Registry) -> None:
    registry.register(network_filter(NAME, CONFIG_TYPE, _factory))
