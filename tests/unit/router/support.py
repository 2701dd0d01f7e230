"""Building route tables and requests for the router unit tests."""

from __future__ import annotations

import random

import pytest
from envoy.config.route.v3 import route_pb2

from legatus.config.errors import ConfigError
from legatus.config.factory_context import FactoryContext
from legatus.config.proto_json import parse
from legatus.http.headers import HeaderMap
from legatus.router.config import RouteTable, compile_route_config


def context(clusters=(), registry=None, runtime=None) -> FactoryContext:
    return FactoryContext(
        runtime=runtime,
        registry=registry,  # type: ignore[arg-type]
        store=None,  # type: ignore[arg-type]
        options=None,  # type: ignore[arg-type]
        random=random.Random(1),
        cluster_names=frozenset(clusters),
    )


def table(
    document: dict, *, clusters=("c1", "c2", "c3"), registry=None, runtime=None, **kwargs
) -> RouteTable:
    proto = parse(document, route_pb2.RouteConfiguration)
    ctx = context(clusters, registry, runtime)
    return compile_route_config(proto, ctx, "route_config", **kwargs)


def config_error(document: dict, **kwargs) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        table(document, **kwargs)
    return e.value


def request(
    path: str = "/",
    host: str | None = "example.com",
    headers=(),
    method: str = "GET",
    forwarded_proto: str | None = "http",
) -> HeaderMap:
    """Request headers as the connection manager hands them to the router."""
    items = [(":method", method), (":path", path), (":scheme", "http")]
    if host is not None:
        items.append((":authority", host))
    if forwarded_proto is not None:
        items.append(("x-forwarded-proto", forwarded_proto))
    items += [(name.lower(), value) for name, value in headers]
    return HeaderMap(items)


def direct(name: str, match: dict | None = None, status: int = 200, **extra) -> dict:
    return {
        "name": name,
        "match": match or {"prefix": "/"},
        "direct_response": {"status": status, "body": {"inline_string": name}},
        **extra,
    }


def forward(name: str, action: dict, match: dict | None = None, **extra) -> dict:
    return {"name": name, "match": match or {"prefix": "/"}, "route": action, **extra}


def vhost(routes: list[dict], domains=("*",), name: str = "vh", **extra) -> dict:
    return {"name": name, "domains": list(domains), "routes": routes, **extra}


def routes_config(routes: list[dict], **extra) -> dict:
    """A table with one ``*`` virtual host holding ``routes``."""
    return {"name": "rc", "virtual_hosts": [vhost(routes)], **extra}


def route_name(route_table: RouteTable, random_value: int = 0, **request_args) -> str | None:
    match = route_table.route(request(**request_args), random_value)
    return None if match is None else match.name
