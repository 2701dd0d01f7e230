"""``envoy.filters.network.direct_response``: send fixed bytes, then close.

As in Envoy, the response is written when the connection is accepted, the
connection is closed after the write is flushed, and anything the client sends
is ignored.
"""

from __future__ import annotations

from legatus.config.datasource import read_data_source
from legatus.network.filter import CloseType, FilterFactory, FilterStatus, ReadFilter
from legatus.registry import Registry, network_filter

NAME = "envoy.filters.network.direct_response"
CONFIG_TYPE = "envoy.extensions.filters.network.direct_response.v3.Config"


class DirectResponseFilter(ReadFilter):
    __slots__ = ("read_callbacks", "response")

    def __init__(self, response: bytes) -> None:
        self.response = response

    def on_new_connection(self) -> FilterStatus:
        connection = self.read_callbacks.connection
        if self.response:
            connection.write(self.response)
        connection.close(CloseType.FLUSH_WRITE)
        return FilterStatus.STOP_ITERATION

    def on_data(self, data: bytes, end_stream: bool) -> FilterStatus:
        return FilterStatus.STOP_ITERATION


def _factory(proto, context, path) -> FilterFactory:
    response = b""
    if proto.HasField("response"):
        response = read_data_source(proto.response, f"{path}.response")
    return FilterFactory(lambda: DirectResponseFilter(response), terminal=True)


def register(registry: Registry) -> None:
    registry.register(network_filter(NAME, CONFIG_TYPE, _factory))
