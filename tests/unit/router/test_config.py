"""compile_route_config: what is refused by name, PGV rules, per-filter configs, the result."""

from __future__ import annotations

import pytest

from legatus.router.action import DirectResponseAction, RouteAction
from legatus.router.redirect import RedirectAction
from tests.unit.router.support import (
    config_error,
    direct,
    forward,
    request,
    routes_config,
    table,
    vhost,
)

STRUCT = "type.googleapis.com/google.protobuf.Struct"


def any_struct(**fields) -> dict:
    return {"@type": STRUCT, "value": fields}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("vhds", {"config_source": {"ads": {}}}),
        ("cluster_specifier_plugins", [{"extension": {"name": "p", "typed_config": any_struct()}}]),
        ("metadata", {"filter_metadata": {"a": {}}}),
    ],
)
def test_route_configuration_fields_refused_by_name(field, value):
    error = config_error({"name": "rc", "virtual_hosts": [], field: value})
    assert error.path == f"route_config.{field}"
    assert error.message == (
        f"field '{field}' of RouteConfiguration is not supported by legatus yet"
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cors", {}),
        ("per_request_buffer_limit_bytes", 10),
        (
            "matcher",
            {
                "matcher_tree": {
                    "input": {"name": "i", "typed_config": any_struct()},
                    "exact_match_map": {
                        "map": {"a": {"action": {"name": "a", "typed_config": any_struct()}}}
                    },
                }
            },
        ),
    ],
)
def test_virtual_host_fields_refused_by_name(field, value):
    error = config_error({"name": "rc", "virtual_hosts": [vhost([], **{field: value})]})
    assert error.path == f"route_config.virtual_hosts[0].{field}"
    assert error.message == f"field '{field}' of VirtualHost is not supported by legatus yet"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("decorator", {"operation": "op"}),
        ("tracing", {}),
        ("per_request_buffer_limit_bytes", 10),
    ],
)
def test_route_fields_refused_by_name(field, value):
    error = config_error(routes_config([direct("r", **{field: value})]))
    assert error.path == f"route_config.virtual_hosts[0].routes[0].{field}"
    assert error.message == f"field '{field}' of Route is not supported by legatus yet"


def test_non_forwarding_and_filter_actions_are_refused():
    route = {"name": "r", "match": {"prefix": "/"}, "non_forwarding_action": {}}
    error = config_error(routes_config([route]))
    assert error.path == "route_config.virtual_hosts[0].routes[0].non_forwarding_action"


def test_direct_response_body_format_extensions_are_refused():
    route = {
        "name": "r",
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body_format": {
            "text_format": "x",
            "formatters": [{"name": "f", "typed_config": any_struct()}],
        }},
    }  # fmt: skip
    error = config_error(routes_config([route]))
    assert error.path == (
        "route_config.virtual_hosts[0].routes[0].direct_response.body_format.formatters[0]"
    )


def test_pgv_rules_are_checked_first():
    error = config_error(routes_config([{"name": "r", "match": {"prefix": "/"}}]))
    assert error.path == "route_config.virtual_hosts[0].routes[0]"
    assert "action" in error.message
    error = config_error(
        routes_config([{"name": "r", "match": {}, "direct_response": {"status": 200}}])
    )
    assert error.path == "route_config.virtual_hosts[0].routes[0].match"


def _struct_filter_registry():
    """A registry with one HTTP filter whose per-route config is a Struct (as a dict)."""
    from google.protobuf import json_format

    from legatus.registry import Category, Extension, Registry

    registry = Registry()
    registry.register(
        Extension(
            category=Category.HTTP_FILTER,
            name="test.struct_filter",
            config_types=("test.StructFilter",),
            factory=lambda proto, context, path: None,
            route_config_types=("google.protobuf.Struct",),
            route_factory=lambda proto, context, path: {
                **json_format.MessageToDict(proto),
                "path": path,
            },
        )
    )
    return registry


def test_typed_per_filter_config_is_compiled_at_every_level():
    weighted = {
        "weighted_clusters": {
            "clusters": [
                {
                    "name": "c1",
                    "weight": 1,
                    "typed_per_filter_config": {"f": any_struct(level="cluster")},
                }
            ]
        }
    }
    route = forward(
        "r", weighted, typed_per_filter_config={"f": any_struct(level="route"), "g": any_struct()}
    )
    t = table(
        {
            "name": "rc",
            "typed_per_filter_config": {"f": any_struct(level="table")},
            "virtual_hosts": [
                vhost([route], typed_per_filter_config={"f": any_struct(level="vhost")})
            ],
        },
        registry=_struct_filter_registry(),
    )
    assert t.typed_per_filter_config["f"]["level"] == "table"
    match = t.route(request(), 0)
    configs = match.per_filter_configs("f")
    assert [c["level"] for c in configs] == ["table", "vhost", "route", "cluster"]
    assert configs[-1]["path"] == (
        "route_config.virtual_hosts[0].routes[0].route.weighted_clusters.clusters[0]"
        ".typed_per_filter_config['f']"
    )
    assert match.most_specific_per_filter_config("f")["level"] == "cluster"
    assert match.most_specific_per_filter_config("g") == {
        "path": match.per_filter_configs("g")[0]["path"]
    }
    assert match.per_filter_configs("absent") == []
    assert match.most_specific_per_filter_config("absent") is None


def test_typed_per_filter_config_of_an_unknown_type_is_refused_unless_optional():
    unknown = {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}
    routes = [forward("r", {"cluster": "c1"}, typed_per_filter_config={"fault": unknown})]
    error = config_error(routes_config(routes), registry=_struct_filter_registry())
    assert error.path == (
        "route_config.virtual_hosts[0].routes[0].typed_per_filter_config['fault']"
    )
    assert "envoy.extensions.filters.http.fault.v3.HTTPFault" in error.message
    optional = {
        "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
        "config": unknown,
        "is_optional": True,
    }
    routes = [forward("r", {"cluster": "c1"}, typed_per_filter_config={"fault": optional})]
    match = table(routes_config(routes), registry=_struct_filter_registry()).route(request(), 0)
    assert match.most_specific_per_filter_config("fault") is None


def test_route_match_result():
    t = table(
        {
            "name": "rc",
            "virtual_hosts": [
                vhost(
                    [
                        forward("fwd", {"cluster": "c1"}, {"prefix": "/f"}),
                        {
                            "name": "redir",
                            "match": {"prefix": "/r"},
                            "redirect": {"host_redirect": "x"},
                        },
                        direct("direct"),
                    ],
                    name="main",
                )
            ],
        }
    )
    forwarded = t.route(request(path="/f"), 0)
    assert forwarded.name == "fwd" and forwarded.virtual_host.name == "main"
    assert isinstance(forwarded.action, RouteAction) and forwarded.cluster_name == "c1"
    redirected = t.route(request(path="/r"), 0)
    assert isinstance(redirected.action, RedirectAction) and redirected.cluster_name is None
    answered = t.route(request(path="/d"), 0)
    assert isinstance(answered.action, DirectResponseAction) and answered.action.body == b"direct"


def test_rewrite_path_of_a_match():
    t = table(
        routes_config(
            [
                forward("fwd", {"cluster": "c1", "prefix_rewrite": "/up/"}, {"prefix": "/f/"}),
                {
                    "name": "redir",
                    "match": {"prefix": "/r/"},
                    "redirect": {"prefix_rewrite": "/n/"},
                },
                direct("direct"),
            ]
        )
    )
    assert t.route(request(path="/f/x?q"), 0).rewrite_path("/f/x?q") == "/up/x?q"
    assert t.route(request(path="/r/x"), 0).rewrite_path("/r/x") == "/n/x"
    assert t.route(request(path="/d"), 0).rewrite_path("/d") is None


def test_empty_table_routes_nothing():
    t = table({"name": "rc"})
    assert t.route(request(), 0) is None
