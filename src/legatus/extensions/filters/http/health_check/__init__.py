"""``envoy.filters.http.health_check``: answers health checks (filter.py)."""

from __future__ import annotations

from legatus.network.filter import FilterFactory
from legatus.registry import Registry, http_filter

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
    registry.register(http_filter(NAME, CONFIG_TYPE, _factory))
