"""``envoy.filters.http.health_check``: answers health checks (filter.py)."""

from __future__ import annotations

from legatus.network.filter import FilterFactory
from legatus.registry import Category, Extension, Registry

NAME = "envoy.filters.http.health_check"
CONFIG_TYPE = "envoy.extensions.filters.http.health_check.v3.HealthCheck"


def _factory(proto, context, path: str) -> FilterFactory:
    from legatus.extensions.filters.http.health_check.filter import (
        HealthCheckFilter,
        compile_config,
    )

    config = compile_config(proto, context, path)
    return FilterFactory(lambda: HealthCheckFilter(config), terminal=False)


def register(registry: Registry) -> None:
    registry.register(
        Extension(
            category=Category.HTTP_FILTER,
            name=NAME,
            config_types=(CONFIG_TYPE,),
            factory=_factory,
        )
    )
