"""``envoy.filters.http.rbac``: role-based access control on requests (filter.py)."""

from __future__ import annotations

from legatus.network.filter import FilterFactory
from legatus.registry import Registry, http_filter

NAME = "envoy.filters.http.rbac"
CONFIG_TYPE = "envoy.extensions.filters.http.rbac.v3.RBAC"
PER_ROUTE_TYPE = "envoy.extensions.filters.http.rbac.v3.RBACPerRoute"


def _factory(proto, context, path: str) -> FilterFactory:
    from legatus.extensions.filters.http.rbac.filter import RbacFilter, compile_config

    config = compile_config(proto, context, path)
    name = context.http_filter_name
    return FilterFactory(lambda: RbacFilter(config, name), terminal=False)


def _route_factory(proto, context, path: str):
    from legatus.extensions.filters.http.rbac.filter import compile_per_route

    return compile_per_route(proto, path, context.store)


def register(registry: Registry) -> None:
    registry.register(
        http_filter(
            NAME,
            CONFIG_TYPE,
            _factory,
            route_config_type=PER_ROUTE_TYPE,
            route_factory=_route_factory,
        )
    )
