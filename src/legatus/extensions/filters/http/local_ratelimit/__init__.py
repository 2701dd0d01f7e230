"""``envoy.filters.http.local_ratelimit``: a token bucket on requests (filter.py)."""

from __future__ import annotations

import functools

from legatus.network.filter import FilterFactory
from legatus.registry import Registry, http_filter

NAME = "envoy.filters.http.local_ratelimit"
CONFIG_TYPE = "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"


def _factory(proto, context, path: str) -> FilterFactory:
    from legatus.extensions.filters.http.local_ratelimit.filter import (
        LocalRateLimitFilter,
        LocalRateLimitHeadersFilter,
        compile_config,
    )

    config = compile_config(proto, context, path)
    name = context.http_filter_name
    # Only x-ratelimit headers need the response: without them (here or in any per-route
    # config) the filter stays out of the encoder chain, which costs every stream.
    table = context.route_table
    headers = (
        config.x_ratelimit_headers
        or table is None
        or any(c.x_ratelimit_headers for c in table.per_filter_configs(name))
    )
    # Without any per-route config for this filter in a static table, no route is looked at.
    per_route = table is None or bool(table.per_filter_configs(name))
    cls = LocalRateLimitHeadersFilter if headers else LocalRateLimitFilter
    return FilterFactory(functools.partial(cls, config, name, per_route), terminal=False)


def _route_factory(proto, context, path: str):
    from legatus.extensions.filters.http.local_ratelimit.filter import compile_config

    return compile_config(proto, context, path)


def register(registry: Registry) -> None:
    registry.register(
        http_filter(
            NAME, CONFIG_TYPE, _factory, route_config_type=CONFIG_TYPE, route_factory=_route_factory
        )
    )
