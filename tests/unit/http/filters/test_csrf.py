"""The CSRF filter driven without sockets: source and target origins, the decision and its
stats, per-route policies over the filter's own, shadow mode and config refusals."""

from __future__ import annotations

import random

import pytest

from legatus.config.errors import ConfigError
from legatus.config.factory_context import FactoryContext
from legatus.config.proto_json import message_class, parse
from legatus.extensions.filters.http.csrf.filter import (
    CsrfFilter,
    compile_config,
    compile_policy,
    host_and_port,
)
from legatus.extensions.registry import default_registry
from legatus.http.filter import FilterHeadersStatus
from legatus.http.headers import HeaderMap
from legatus.stats.store import Store

POLICY = "envoy.extensions.filters.http.csrf.v3.CsrfPolicy"


def percent(numerator: int) -> dict:
    return {"default_value": {"numerator": numerator, "denominator": "HUNDRED"}}


def _context(store: Store) -> FactoryContext:
    return FactoryContext(
        registry=default_registry(), store=store, options=None,  # type: ignore[arg-type]
        random=random.Random(1), http_stat_prefix="ing", http_filter_name="csrf",
    )  # fmt: skip


def _proto(**fields):
    return parse(fields, message_class(POLICY), path="")


class Route:
    def __init__(self, policy) -> None:
        self.policy = policy

    def most_specific_per_filter_config(self, name: str):
        assert name == "csrf"
        return self.policy


class Callbacks:
    def __init__(self, route) -> None:
        self.route = route
        self.replies: list[tuple[int, bytes, str]] = []

    def send_local_reply(self, status, body=b"", *, details, headers=None, flags=0):
        self.replies.append((status, body, details))


def decide(store: Store, headers, *, route_policy=None, **fields):
    config = compile_config(_proto(**({"filter_enabled": percent(100)} | fields)),
                            _context(store), "f")  # fmt: skip
    f = CsrfFilter(config)
    callbacks = Callbacks(Route(route_policy) if route_policy is not None else None)
    f.set_decoder_filter_callbacks(callbacks)
    request = HeaderMap([(":method", "POST"), (":authority", "example.com"), (":scheme", "http")])
    for name, value in headers:
        request.add(name, value)
    status = f.decode_headers(request, False)
    assert (status is FilterHeadersStatus.STOP_ITERATION) == bool(callbacks.replies)
    stats = {s.name.rsplit(".", 1)[1]: s.value for s in store if s.value}
    return callbacks.replies, stats


@pytest.mark.parametrize(("url", "expected"), [
    ("http://example.com", "example.com"), ("https://example.com:8443/a?b", "example.com:8443"),
    ("http://user@example.com", "example.com"), ("http://[::1]:80", "[::1]:80"),
    ("example.com", "example.com"), ("null", "null"), ("garbage value", "garbage value"),
    ("", ""), (None, ""),
])  # fmt: skip
def test_host_and_port(url, expected):
    assert host_and_port(url) == expected


REFUSED = [(403, b"Invalid origin", "csrf_origin_mismatch")]


@pytest.mark.parametrize(("headers", "replies", "stats"), [
    ([("origin", "http://example.com")], [], {"request_valid": 1}),
    ([("origin", "http://evil.com")], REFUSED, {"request_invalid": 1}),
    ([], REFUSED, {"missing_source_origin": 1}),
    ([("origin", "null"), ("referer", "http://example.com/")], REFUSED,
     {"missing_source_origin": 1}),
    ([("referer", "http://example.com/x")], [], {"request_valid": 1}),
    ([("origin", "http://example.com:80")], REFUSED, {"request_invalid": 1}),
])  # fmt: skip
def test_decision_and_stats(headers, replies, stats):
    assert decide(Store(), headers) == (replies, stats)


def test_safe_methods_are_not_checked():
    store = Store()
    config = compile_config(_proto(filter_enabled=percent(100)), _context(store), "f")
    for method in ("GET", "HEAD", "OPTIONS", "post"):
        f = CsrfFilter(config)
        f.set_decoder_filter_callbacks(Callbacks(None))
        request = HeaderMap([(":method", method), (":authority", "example.com")])
        assert f.decode_headers(request, True) is FilterHeadersStatus.CONTINUE
    assert not any(s.value for s in store)


def test_additional_origins_but_not_for_a_missing_origin():
    origins = [{"suffix": ".trusted.com"}, {"exact": "null"}]
    assert decide(Store(), [("origin", "https://a.trusted.com")],
                  additional_origins=origins) == ([], {"request_valid": 1})  # fmt: skip
    assert decide(Store(), [("origin", "null")], additional_origins=origins) == (
        REFUSED, {"missing_source_origin": 1})  # fmt: skip


def test_shadow_mode_counts_without_refusing():
    assert decide(Store(), [("origin", "http://evil.com")], filter_enabled=percent(0),
                  shadow_enabled=percent(100)) == ([], {"request_invalid": 1})  # fmt: skip
    assert decide(Store(), [("origin", "http://evil.com")], filter_enabled=percent(0)) == ([], {})


def test_the_most_specific_route_policy_replaces_the_filters():
    route_policy = compile_policy(_proto(filter_enabled=percent(0)), _context(Store()), "r")
    assert decide(Store(), [("origin", "http://evil.com")], route_policy=route_policy) == ([], {})


def test_config_refusals():
    from legatus.config.validate import validate_message

    errors = validate_message(_proto(), "f")
    assert [e.path for e in errors] == ["f.filter_enabled"]
    with pytest.raises(ConfigError) as e:
        compile_policy(_proto(filter_enabled=percent(1), additional_origins=[{}]),
                       _context(Store()), "f")  # fmt: skip
    assert e.value.path.startswith("f.additional_origins[0]")
