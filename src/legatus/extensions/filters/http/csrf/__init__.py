"""``envoy.filters.http.csrf``: Cross-Site Request Forgery protection by origin verification
(filter.py). The filter's own ``CsrfPolicy`` applies unless the route, its virtual host or
the route configuration has one in ``typed_per_filter_config`` (the most specific wins)."""

from __future__ import annotations

from legatus.network.filter import FilterFactory
from legatus.registry import Registry, http_filter

NAME = "envoy.filters.http.csrf"
CONFIG_TYPE = "envoy.extensions.filters.http.csrf.v3.CsrfPolicy"


def _factory(proto, context, path: str) -> FilterFactory:
    from legatus.extensions.filters.http.csrf.filter import CsrfFilter, compile_config

    config = compile_config(proto, context, path)
    return FilterFactory(lambda: CsrfFilter(config), terminal=False)


def _route_factory(proto, context, path: str):
    from legatus.extensions.filters.http.csrf.filter import compile_policy

    return compile_policy(proto, context, path)


def register(registry: Registry) -> None:
    registry.register(
        http_filter(
            NAME, CONFIG_TYPE, _factory, route_config_type=CONFIG_TYPE, route_factory=_route_factory
        )
    )
