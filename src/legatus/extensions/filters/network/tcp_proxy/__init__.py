"""``envoy.filters.network.tcp_proxy``."""

from __future__ import annotations

from legatus.network.filter import FilterFactory
from legatus.registry import Registry, network_filter

NAME = "envoy.filters.network.tcp_proxy"
CONFIG_TYPE = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def _factory(proto, context, path):
    from legatus.extensions.filters.network.tcp_proxy.config import compile_config
    from legatus.extensions.filters.network.tcp_proxy.filter import TcpProxyFilter

    config = compile_config(proto, context, path)
    return FilterFactory(lambda: TcpProxyFilter(config, context), terminal=True)


def register(registry: Registry) -> None:
    registry.register(network_filter(NAME, CONFIG_TYPE, _factory))
