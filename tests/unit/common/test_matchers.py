"""StringMatcher and HeaderMatcher, shared by routes and access-log filters."""

from __future__ import annotations

import pytest
from envoy.config.route.v3 import route_components_pb2
from envoy.type.matcher.v3 import string_pb2

from legatus.common.matchers import HeaderMatcher, StringMatcher, ascii_lower, simple_atoi
from legatus.config.errors import ConfigError
from legatus.config.proto_json import parse
from legatus.http.headers import HeaderMap


def string_matcher(document: dict) -> StringMatcher:
    return StringMatcher(parse(document, string_pb2.StringMatcher), "m")


def header_matcher(document: dict) -> HeaderMatcher:
    return HeaderMatcher(parse(document, route_components_pb2.HeaderMatcher), "h")


@pytest.mark.parametrize(
    ("document", "value", "expected"),
    [
        ({"exact": "abc"}, "abc", True),
        ({"exact": "abc"}, "ABC", False),
        ({"exact": "abc", "ignore_case": True}, "ABC", True),
        ({"prefix": "ab"}, "abc", True),
        ({"prefix": "AB", "ignore_case": True}, "abc", True),
        ({"suffix": "bc"}, "abc", True),
        ({"suffix": "BC", "ignore_case": True}, "abc", True),
        ({"contains": "b"}, "abc", True),
        ({"contains": "B", "ignore_case": True}, "abc", True),
        ({"contains": "z"}, "abc", False),
        ({"safe_regex": {"regex": "a.c"}}, "abc", True),
        ({"safe_regex": {"regex": "a"}}, "abc", False),  # whole value
        ({"safe_regex": {"regex": "A.C"}, "ignore_case": True}, "abc", False),  # not for regex
        ({"exact": "É", "ignore_case": True}, "é", False),  # ASCII folding only, as Envoy
    ],
)
def test_string_matcher(document, value, expected):
    assert string_matcher(document).matches(value) is expected


def test_string_matcher_custom_is_refused():
    with pytest.raises(ConfigError) as e:
        string_matcher(
            {
                "custom": {
                    "name": "x",
                    "typed_config": {"@type": "type.googleapis.com/google.protobuf.Struct"},
                }
            }
        )
    assert e.value.path == "m.custom"


def test_ascii_lower_leaves_other_letters():
    assert ascii_lower("AbC") == "abc"
    assert ascii_lower("ÉA") == "Éa"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5", 5),
        ("+5", 5),
        ("-5", -5),
        (" 7 ", 7),
        ("05", 5),
        ("5.0", None),
        ("", None),
        ("-", None),
        ("9223372036854775807", 2**63 - 1),
        ("9223372036854775808", None),
        ("٣", None),
    ],
)
def test_simple_atoi(text, expected):
    assert simple_atoi(text) == expected


def test_any_value_of_a_repeated_header_matches():
    headers = HeaderMap([("x-m", "a"), ("x-m", "b")])
    assert header_matcher({"name": "x-m", "exact_match": "b"}).matches(headers)
    assert not header_matcher({"name": "x-m", "exact_match": "a,b"}).matches(headers)
    assert not header_matcher({"name": "x-m", "exact_match": "a", "invert_match": True}).matches(
        headers
    )
    assert header_matcher(
        {"name": "x-m", "range_match": {"start": 0, "end": 1}, "invert_match": True}
    ).matches(headers)


def test_host_is_the_authority():
    matcher = header_matcher({"name": "Host", "exact_match": "example.com"})
    assert matcher.matches(HeaderMap([(":authority", "example.com")]))
    assert matcher.matches({"host": "example.com"})  # a plain mapping may say host
    assert header_matcher({"name": ":authority", "exact_match": "a"}).matches({"host": "a"})


def test_names_are_lower_cased():
    assert header_matcher({"name": "X-Up", "exact_match": "v"}).matches({"x-up": "v"})


def test_bad_regex_points_at_the_regex():
    with pytest.raises(ConfigError) as e:
        header_matcher({"name": "x", "safe_regex_match": {"regex": "("}})
    assert e.value.path == "h.safe_regex_match.regex"
    assert e.value.message == "missing ): ("
