"""``envoy.filters.http.cors``: Cross-Origin Resource Sharing from per-route policies
(filter.py). The filter's own config (``Cors``) has no field; the policies are ``CorsPolicy``
entries in the routes' and virtual hosts' ``typed_per_filter_config``."""

from __future__ import annotations

from legatus.network.filter import FilterFactory
from legatus.registry import Registry, http_filter

NAME = "envoy.filters.http.cors"
CONFIG_TYPE = "envoy.extensions.filters.http.cors.v3.Cors"
POLICY_TYPE = "envoy.extensions.filters.http.cors.v3.CorsPolicy"


def _factory(proto, context, path: str) -> FilterFactory:
    from legatus.extensions.filters.http.cors.filter import CorsFilter, compile_config

    config = compile_config(proto, context, path)
    return FilterFactory(lambda: CorsFilter(config), terminal=False)


def _route_factory(proto, context, path: str):
    from legatus.extensions.filters.http.cors.filter import compile_policy

    return compile_policy(proto, context, path)


def register(registry: Registry) -> None:
    registry.register(
        http_filter(
            NAME, CONFIG_TYPE, _factory, route_config_type=POLICY_TYPE, route_factory=_route_factory
        )
    )
