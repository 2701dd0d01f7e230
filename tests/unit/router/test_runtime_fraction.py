"""``runtime_fraction`` routes read the runtime per request, as Envoy's RouteEntryImplBase."""

from __future__ import annotations

import dataclasses

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2

from legatus.config.proto_json import parse
from legatus.router.config import compile_route_config
from legatus.router.matchers import compile_route_match
from legatus.runtime import compile_runtime
from tests.unit.router.support import context, direct, route_name, routes_config


def runtime_with(**static_values):
    document = {
        "layered_runtime": {
            "layers": [
                {"name": "base", "static_layer": static_values},
                {"name": "admin", "admin_layer": {}},
            ]
        }
    }
    return compile_runtime(parse(document, bootstrap_pb2.Bootstrap))


def fraction_route(key: str = "rt.key", numerator: int = 0, denominator: str = "HUNDRED"):
    match = {
        "prefix": "/",
        "runtime_fraction": {
            "default_value": {"numerator": numerator, "denominator": denominator},
            "runtime_key": key,
        },
    }
    return routes_config([direct("hit", match), direct("miss")])


def table_with(runtime, document):
    proto = parse(document, route_pb2.RouteConfiguration)
    return compile_route_config(proto, dataclasses.replace(context(), runtime=runtime), "rc")


def hit_count(table, draws=range(100)) -> int:
    return sum(route_name(table, random_value=r) == "hit" for r in draws)


def test_a_static_value_replaces_the_default():
    assert hit_count(table_with(runtime_with(**{"rt.key": 40}), fraction_route())) == 40
    fraction = {"numerator": 2500, "denominator": "TEN_THOUSAND"}
    table = table_with(runtime_with(rt={"key": fraction}), fraction_route(numerator=100))
    assert hit_count(table, range(10_000)) == 2500
    assert hit_count(table_with(runtime_with(**{"rt.key": 101}), fraction_route())) == 100


def test_an_admin_change_applies_to_compiled_routes_at_once():
    runtime = runtime_with()
    table = table_with(runtime, fraction_route(numerator=10))
    assert hit_count(table) == 10
    runtime.merge_values({"rt.key": "100"})
    assert hit_count(table) == 100
    runtime.merge_values({"rt.key": "{numerator: 0}"})
    assert hit_count(table) == 0
    runtime.merge_values({"rt.key": ""})
    assert hit_count(table) == 10


def test_a_value_that_is_not_a_percentage_leaves_the_default():
    runtime = runtime_with(**{"rt.key": "abc"})
    assert hit_count(table_with(runtime, fraction_route(numerator=30))) == 30


def test_without_a_runtime_or_a_key_the_default_decides():
    assert hit_count(table_with(None, fraction_route(numerator=30))) == 30
    runtime = runtime_with(**{"": 100})
    assert hit_count(table_with(runtime, fraction_route(key="", numerator=30))) == 30


def test_a_context_without_a_runtime_attribute_is_fine():
    class Context:
        cluster_names = frozenset()

    proto = parse(fraction_route(numerator=30), route_pb2.RouteConfiguration)
    assert hit_count(compile_route_config(proto, Context(), "rc")) == 30


def test_the_matcher_keeps_the_key_and_the_default():
    proto = parse(
        {
            "prefix": "/",
            "runtime_fraction": {
                "default_value": {"numerator": 5, "denominator": "MILLION"},
                "runtime_key": "k",
            },
        },
        route_components_pb2.RouteMatch,
    )
    matcher = compile_route_match(proto, "match", runtime_with())
    assert (matcher.runtime_fraction, matcher.runtime_key) == ((5, 1_000_000), "k")
    plain = compile_route_match(parse({"prefix": "/"}, route_components_pb2.RouteMatch), "match")
    assert (plain.runtime_fraction, plain.runtime_key) == (None, "")
