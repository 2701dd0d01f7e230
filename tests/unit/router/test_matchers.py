"""RouteMatch: path specifiers, headers, query parameters, gRPC and runtime fractions."""

from __future__ import annotations

import pytest

from legatus.router.matchers import path_for_matching
from tests.unit.router.support import (
    config_error,
    direct,
    request,
    route_name,
    routes_config,
    table,
)


def one_route(match: dict, **extra):
    """A table whose route ``hit`` has ``match``; anything else falls to ``miss``."""
    return table(routes_config([direct("hit", match), direct("miss")], **extra))


def hits(match: dict, path: str = "/", random_value: int = 0, extra=None, **request_args) -> bool:
    t = one_route(match, **(extra or {}))
    return route_name(t, random_value, path=path, **request_args) == "hit"


@pytest.mark.parametrize(
    ("match", "path", "expected"),
    [
        ({"prefix": "/a"}, "/a", True),
        ({"prefix": "/a"}, "/ab/c", True),
        ({"prefix": "/a"}, "/A", False),
        ({"prefix": "/CI/", "case_sensitive": False}, "/ci/x", True),
        ({"prefix": "/CI/", "case_sensitive": False}, "/Ci/x", True),
        ({"prefix": "/CI/", "case_sensitive": False}, "/CI", False),
        ({"prefix": ""}, "/anything", True),
        ({"prefix": "/a"}, "/b?x=/a", False),  # the query string is not part of the path
        ({"path": "/exact"}, "/exact", True),
        ({"path": "/exact"}, "/exact?x=1", True),
        ({"path": "/exact"}, "/exact#frag", True),
        ({"path": "/exact"}, "/exact/", False),
        ({"path": "/exact"}, "/EXACT", False),
        ({"path": "/Path", "case_sensitive": False}, "/PATH?q", True),
        ({"safe_regex": {"regex": "/re/[0-9]+"}}, "/re/12", True),
        ({"safe_regex": {"regex": "/re/[0-9]+"}}, "/re/12?x=1", True),
        ({"safe_regex": {"regex": "/re/[0-9]+"}}, "/re/12x", False),  # full match
        ({"safe_regex": {"regex": "/re/[0-9]+"}}, "/x/re/12", False),
        ({"safe_regex": {"regex": "/rx/abc"}, "case_sensitive": False}, "/rx/ABC", False),
    ],
)
def test_path_specifiers(match, path, expected):
    assert hits(match, path) is expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/sep", True),
        ("/sep/", True),
        ("/sep/x", True),
        ("/sep?x", True),
        ("/sep#x", True),
        ("/sepx", False),
        ("/se", False),
        ("/SEP", False),
        ("/", False),
    ],
)
def test_path_separated_prefix(path, expected):
    assert hits({"path_separated_prefix": "/sep"}, path) is expected


def test_path_separated_prefix_case_insensitive():
    assert hits({"path_separated_prefix": "/Sep", "case_sensitive": False}, "/sEP/x")
    assert not hits({"path_separated_prefix": "/Sep", "case_sensitive": False}, "/sEPx")


def test_path_separated_prefix_pgv_rule():
    error = config_error(routes_config([direct("r", {"path_separated_prefix": "/sep/"})]))
    assert error.path == "route_config.virtual_hosts[0].routes[0].match.path_separated_prefix"


def test_ignore_path_parameters_in_path_matching():
    extra = {"ignore_path_parameters_in_path_matching": True}
    assert hits({"path": "/a"}, "/a;jsessionid=1?x", extra=extra)
    assert hits({"path_separated_prefix": "/a"}, "/a;p", extra=extra)
    assert not hits({"path": "/a"}, "/a;p")


def test_path_for_matching():
    assert path_for_matching("/a?b#c") == "/a"
    assert path_for_matching("/a#c?b") == "/a"
    assert path_for_matching("/a;p?b") == "/a;p"
    assert path_for_matching("/a;p?b", ignore_path_parameters=True) == "/a"


def header_hit(matcher: dict, headers) -> bool:
    return hits({"prefix": "/", "headers": [matcher]}, headers=headers)


@pytest.mark.parametrize(
    ("matcher", "headers", "expected"),
    [
        ({"name": "x-n", "range_match": {"start": 1, "end": 10}}, [("x-n", "5")], True),
        ({"name": "x-n", "range_match": {"start": 1, "end": 10}}, [("x-n", "10")], False),
        ({"name": "x-n", "range_match": {"start": 1, "end": 10}}, [("x-n", "+5")], True),
        ({"name": "x-n", "range_match": {"start": 1, "end": 10}}, [("x-n", "5.0")], False),
        ({"name": "x-n", "range_match": {"start": -5, "end": 0}}, [("x-n", "-3")], True),
        ({"name": "x-z", "present_match": True}, [("x-z", "")], True),
        ({"name": "x-z", "present_match": True}, [], False),
        ({"name": "x-z", "present_match": False}, [], True),
        ({"name": "x-z", "present_match": False}, [("x-z", "1")], False),
        ({"name": "x-z", "present_match": False, "invert_match": True}, [], False),
        ({"name": "x-z", "present_match": True, "invert_match": True}, [], True),
        ({"name": "x-z", "exact_match": "a", "invert_match": True}, [], False),
        ({"name": "x-z", "exact_match": "a", "invert_match": True}, [("x-z", "b")], True),
        ({"name": "x-z"}, [("x-z", "")], True),
        ({"name": "x-z", "invert_match": True}, [], True),
        (
            {"name": "x-z", "string_match": {"exact": ""}, "treat_missing_header_as_empty": True},
            [],
            True,
        ),
        (
            {
                "name": "x-z",
                "range_match": {"start": 0, "end": 6},
                "treat_missing_header_as_empty": True,
            },
            [],
            False,
        ),
        ({"name": "x-m", "exact_match": "b"}, [("x-m", "a"), ("x-m", "b")], True),
        ({"name": "x-m", "exact_match": "a,b"}, [("x-m", "a"), ("x-m", "b")], False),
        ({"name": "x-r", "safe_regex_match": {"regex": "v[0-9]"}}, [("x-r", "v12")], False),
        ({"name": "x-p", "prefix_match": "pre"}, [("x-p", "prefix")], True),
        ({"name": "x-p", "suffix_match": "fix"}, [("x-p", "prefix")], True),
        ({"name": "x-p", "contains_match": "mid"}, [("x-p", "amidst")], True),
        (
            {"name": "x-i", "string_match": {"prefix": "AB", "ignore_case": True}},
            [("x-i", "abc")],
            True,
        ),
        ({"name": "host", "exact_match": "example.com"}, [], True),
        ({"name": ":method", "exact_match": "GET"}, [], True),
    ],
)
def test_header_matchers(matcher, headers, expected):
    assert header_hit(matcher, headers) is expected


def test_all_header_matchers_must_match():
    match = {"prefix": "/", "headers": [{"name": "a"}, {"name": "b"}]}
    assert hits(match, headers=[("a", "1"), ("b", "2")])
    assert not hits(match, headers=[("a", "1")])


@pytest.mark.parametrize(
    ("matcher", "path", "expected"),
    [
        ({"name": "a", "present_match": False}, "/", True),
        ({"name": "a", "present_match": False}, "/?a", False),
        ({"name": "a", "present_match": False}, "/?b=1", True),
        ({"name": "b"}, "/", False),
        ({"name": "b"}, "/?b", True),
        ({"name": "b", "present_match": True}, "/?x=1&&b", True),
        ({"name": "d", "string_match": {"exact": "x%20y"}}, "/?d=x%20y", True),  # not decoded
        ({"name": "d", "string_match": {"exact": "x%20y"}}, "/?d=x+y", False),
        ({"name": "d", "string_match": {"exact": "x%20y"}}, "/?D=x%20y", False),  # names: case
        ({"name": "d", "string_match": {"exact": "x"}}, "/?d=1&d=x", False),  # first value only
        ({"name": "d", "string_match": {"exact": "x"}}, "/?d=x&d=1", True),
        ({"name": "e", "string_match": {"exact": ""}}, "/?e", True),
        ({"name": "e", "string_match": {"exact": ""}}, "/?e=", True),
        ({"name": "e", "string_match": {"exact": ""}}, "/", False),
        ({"name": "f", "string_match": {"prefix": "a=b"}}, "/?f=a=b=c", True),
    ],
)
def test_query_parameters(matcher, path, expected):
    assert hits({"prefix": "/", "query_parameters": [matcher]}, path) is expected


@pytest.mark.parametrize(
    ("content_type", "method", "expected"),
    [
        ("application/grpc", "POST", True),
        ("application/grpc+proto", "POST", True),
        ("application/grpc-web", "POST", False),
        ("Application/grpc", "POST", False),
        ("application/grpc", "GET", True),  # the method does not matter
        (None, "POST", False),
    ],
)
def test_grpc(content_type, method, expected):
    headers = [] if content_type is None else [("content-type", content_type)]
    assert hits({"prefix": "/", "grpc": {}}, headers=headers, method=method) is expected


def test_runtime_fraction_uses_the_default_value_and_the_random_value():
    match = {
        "prefix": "/",
        "runtime_fraction": {"default_value": {"numerator": 30}, "runtime_key": "some.key"},
    }
    t = one_route(match)
    picked = [route_name(t, random_value=v) for v in range(200)]
    assert picked == ["hit" if v % 100 < 30 else "miss" for v in range(200)]
    per_million = {
        "prefix": "/",
        "runtime_fraction": {"default_value": {"numerator": 5, "denominator": "MILLION"}},
    }
    assert hits(per_million, random_value=1_000_004)
    assert not hits(per_million, random_value=1_000_005)
    assert not hits({"prefix": "/", "runtime_fraction": {"default_value": {}}}, random_value=0)


def test_routes_are_tried_in_order():
    t = table(
        routes_config(
            [direct("first", {"prefix": "/a"}), direct("second", {"path": "/a"}), direct("last")]
        )
    )
    assert route_name(t, path="/a") == "first"
    assert route_name(t, path="/b") == "last"


def test_no_route_without_x_forwarded_proto_or_path():
    t = one_route({"prefix": "/"})
    assert route_name(t, forwarded_proto=None) is None  # Envoy: no scheme, no route
    headers = request()
    headers.remove(":path")
    assert t.route(headers, 0) is None


def test_bad_path_regex_points_at_the_field():
    error = config_error(routes_config([direct("r", {"safe_regex": {"regex": "(a)\\1"}})]))
    assert error.path == "route_config.virtual_hosts[0].routes[0].match.safe_regex.regex"
    assert error.message == "invalid escape sequence: \\1"


@pytest.mark.parametrize(
    "match",
    [
        {"prefix": "/", "tls_context": {}},
        {
            "prefix": "/",
            "dynamic_metadata": [
                {"filter": "f", "path": [{"key": "k"}], "value": {"present_match": True}}
            ],
        },
        {"prefix": "/", "filter_state": [{"key": "k", "string_match": {"exact": "v"}}]},
        {
            "path_match_policy": {
                "name": "x",
                "typed_config": {"@type": "type.googleapis.com/google.protobuf.Struct"},
            }
        },
    ],
)
def test_unimplemented_match_fields_are_refused_by_name(match):
    error = config_error(routes_config([direct("r", match)]))
    field = next(k for k in match if k != "prefix")
    assert error.path == f"route_config.virtual_hosts[0].routes[0].match.{field}"
    assert "not supported by legatus yet" in error.message
