"""``envoy.filters.http.router``: the terminal HTTP filter (legatus.router.router)."""

from __future__ import annotations

import functools

from legatus.config.supported import check_supported
from legatus.network.filter import FilterFactory
from legatus.registry import Registry, http_filter

NAME = "envoy.filters.http.router"
CONFIG_TYPE = "envoy.extensions.filters.http.router.v3.Router"
_SUPPORTED = ("dynamic_stats", "suppress_envoy_headers", "respect_expected_rq_timeout")


def compile_router_config(proto, context, path: str):
    from legatus.http.conn_manager_stats import RouterFilterStats
    from legatus.router.router import RouterConfig

    if proto is not None:
        check_supported(proto, _SUPPORTED, path, "Router")
    prefix = context.http_stat_prefix or ""
    return RouterConfig(
        stats=RouterFilterStats(context.store.scope(f"http.{prefix}.")),
        cluster_manager=context.cluster_manager,
        loop=context.loop,
        suppress_envoy_headers=bool(proto and proto.suppress_envoy_headers),
        respect_expected_rq_timeout=bool(proto and proto.respect_expected_rq_timeout),
        dynamic_stats=not (proto and proto.HasField("dynamic_stats")) or proto.dynamic_stats.value,
        random=context.random,
        runtime=context.runtime,
    )


def _factory(proto, context, path: str) -> FilterFactory:
    from legatus.router.router import Router

    config = compile_router_config(proto, context, path)
    return FilterFactory(functools.partial(Router, config), terminal=True)


def default_router_factory(context):
    """The router an HCM without http_filters gets (as Envoy adds it)."""
    from legatus.extensions.filters.network.http_connection_manager.config import (
        HttpFilterFactory,
    )
    from legatus.router.router import Router

    config = compile_router_config(None, context, "")
    return HttpFilterFactory(name=NAME, create=functools.partial(Router, config), terminal=True)


def register(registry: Registry) -> None:
    registry.register(http_filter(NAME, CONFIG_TYPE, _factory))
