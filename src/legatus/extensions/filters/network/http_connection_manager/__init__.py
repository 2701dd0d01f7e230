"""``envoy.filters.network.http_connection_manager`` (legatus.http.conn_manager)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from legatus.network.filter import FilterFactory
from legatus.registry import Registry, network_filter

NAME = "envoy.filters.network.http_connection_manager"
CONFIG_TYPE = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def listener_hcms(listener) -> Iterator:
    """The HttpConnectionManager protos of a Listener proto's filter chains (the default chain
    last), unpacked: what the main process and the admin read of a listener's routes."""
    from envoy.extensions.filters.network.http_connection_manager.v3 import (
        http_connection_manager_pb2,
    )

    chains = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    for chain in chains:
        for f in chain.filters:
            if f.typed_config.type_url.rpartition("/")[2] == CONFIG_TYPE:
                hcm = http_connection_manager_pb2.HttpConnectionManager()
                f.typed_config.Unpack(hcm)
                yield hcm


def _factory(proto, context, path):
    from legatus.extensions.filters.network.http_connection_manager.config import compile_config
    from legatus.http.conn_manager import CODEC_HTTP2, ConnectionManager

    context = dataclasses.replace(context, http_stat_prefix=proto.stat_prefix)
    config = compile_config(proto, context, path)
    if config.codec_type == CODEC_HTTP2:
        from legatus.http.conn_manager_http2 import Http2ConnectionManager

        return FilterFactory(lambda: Http2ConnectionManager(config, context), terminal=True)
    return FilterFactory(lambda: ConnectionManager(config, context), terminal=True)


def register(registry: Registry) -> None:
    registry.register(network_filter(NAME, CONFIG_TYPE, _factory))
