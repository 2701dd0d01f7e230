"""``envoy.filters.http.fault``: delays and aborts injected into requests (filter.py)."""

from __future__ import annotations

from legatus.network.filter import FilterFactory
from legatus.registry import Registry, http_filter

NAME = "envoy.filters.http.fault"
CONFIG_TYPE = "envoy.extensions.filters.http.fault.v3.HTTPFault"


def _factory(proto, context, path: str) -> FilterFactory:
    from legatus.extensions.filters.http.fault.config import compile_filter_config
    from legatus.extensions.filters.http.fault.filter import FaultFilter

    config = compile_filter_config(proto, context, path)
    return FilterFactory(lambda: FaultFilter(config), terminal=False)


def _route_factory(proto, context, path: str):
    from legatus.extensions.filters.http.fault.config import compile_settings

    return compile_settings(proto, path)


def register(registry: Registry) -> None:
    registry.register(
        http_filter(
            NAME, CONFIG_TYPE, _factory, route_config_type=CONFIG_TYPE, route_factory=_route_factory
        )
    )
