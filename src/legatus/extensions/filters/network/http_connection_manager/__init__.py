"""``envoy.filters.network.http_connection_manager`` (legatus.http.conn_manager)."""

from __future__ import annotations

import dataclasses

from legatus.network.filter import FilterFactory
from legatus.registry import Registry, network_filter

NAME = "envoy.filters.network.http_connection_manager"
CONFIG_TYPE = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def _factory(proto, context, path):
    from legatus.extensions.filters.network.http_connection_manager.config import compile_config
    from legatus.http.conn_manager import ConnectionManager

    context = dataclasses.replace(context, http_stat_prefix=proto.stat_prefix)
    config = compile_config(proto, context, path)
    return FilterFactory(lambda: ConnectionManager(config, context), terminal=True)


def register(registry: Registry) -> None:
    registry.register(network_filter(NAME, CONFIG_TYPE, _factory))
