"""Route hash policies: Envoy's hash values, combination rule and generated cookies."""

from __future__ import annotations

import pytest
import xxhash
from envoy.config.route.v3 import route_components_pb2

from legatus.config.errors import ConfigError
from legatus.http.headers import HeaderMap
from legatus.router.hash_policy import (
    HashContext,
    compile_hash_policy,
    cookie_value,
    set_cookie_value,
    xxhash64,
)
from tests.unit.router.support import forward, routes_config, table

MASK = (1 << 64) - 1


def policy(*specs: dict):
    protos = []
    for spec in specs:
        p = route_components_pb2.RouteAction.HashPolicy()
        from google.protobuf import json_format

        json_format.ParseDict(spec, p)
        protos.append(p)
    return compile_hash_policy(protos, "hash_policy")


def context(headers=(), *, remote="10.0.0.1:5555", local="127.0.0.1:10000", filter_state=None):
    items = [(":method", "GET"), (":path", "/"), *headers]
    return HashContext(
        None,
        HeaderMap(items),
        remote_address=remote,
        local_address=local,
        filter_state=filter_state,
    )


def hash_of(p, headers=(), **kwargs):
    return p.generate_hash(context(headers, **kwargs))


def rotl(h: int) -> int:
    return ((h << 1) | (h >> 63)) & MASK


def test_empty_list_compiles_to_none():
    assert compile_hash_policy([], "hash_policy") is None


def test_header_is_xxhash64_of_the_value():
    p = policy({"header": {"header_name": "X-User"}})
    assert hash_of(p, [("x-user", "alice")]) == xxhash.xxh64_intdigest(b"alice")
    assert hash_of(p, [("x-other", "alice")]) is None


def test_several_header_values_are_sorted_and_chained():
    p = policy({"header": {"header_name": "x-user"}})
    chained = xxhash.xxh64_intdigest(b"b", xxhash.xxh64_intdigest(b"a"))
    assert hash_of(p, [("x-user", "b"), ("x-user", "a")]) == chained
    assert hash_of(p, [("x-user", "a"), ("x-user", "b")]) == chained


def test_header_regex_rewrite_applies_before_hashing():
    p = policy(
        {"header": {"header_name": "x-path", "regex_rewrite": {
            "pattern": {"regex": "^/v[0-9]+/"}, "substitution": "/"}}}
    )  # fmt: skip
    assert hash_of(p, [("x-path", "/v1/users")]) == xxhash64("/users")


def test_cookie_value_quotes_and_first_match():
    headers = HeaderMap([("cookie", 'a=1; sess="abc"'), ("cookie", "sess=zzz")])
    assert cookie_value(headers, "sess") == "abc"
    assert cookie_value(HeaderMap([("cookie", "junk; x=2")]), "x") == "2"
    assert cookie_value(HeaderMap([("cookie", "xx=2")]), "x") == ""
    p = policy({"cookie": {"name": "sess"}})
    assert hash_of(p, [("cookie", "sess=abc")]) == xxhash64("abc")
    assert hash_of(p) is None  # no ttl: no cookie generated


def test_cookie_with_ttl_is_generated_as_envoy_does():
    p = policy(
        {"cookie": {"name": "sess", "ttl": "60s", "path": "/p", "attributes": [
            {"name": "SameSite", "value": "Lax"}, {"name": "Secure"}]}}
    )  # fmt: skip
    ctx = context(remote="127.0.0.1:48698", local="127.0.0.1:10000")
    value = f"{xxhash64('127.0.0.1:48698127.0.0.1:10000'):016x}"
    assert p.generate_hash(ctx) == xxhash64(value)
    assert ctx.set_cookies == [
        f'sess="{value}"; Max-Age=60; Path=/p; SameSite=Lax; Secure; HttpOnly'
    ]
    # With the cookie present, nothing is generated.
    ctx = context([("cookie", f"sess={value}")])
    assert p.generate_hash(ctx) == xxhash64(value)
    assert ctx.set_cookies == []


def test_zero_ttl_makes_a_session_cookie():
    assert set_cookie_value("s", "v", "", 0) == 's="v"; HttpOnly'


def test_source_ip_hashes_the_address_without_port():
    p = policy({"connection_properties": {"source_ip": True}})
    assert hash_of(p, remote="10.1.2.3:999") == xxhash64("10.1.2.3")
    assert hash_of(p, remote="[::1]:80") == xxhash64("::1")
    assert hash_of(p, remote=None) is None
    # source_ip false adds no method at all.
    assert policy({"connection_properties": {}}).methods == ()


def test_query_parameter_first_value_not_decoded():
    p = policy({"query_parameter": {"name": "q"}})
    path = [(":path", "/x?a=1&q=a%20b&q=2")]
    ctx = HashContext(None, HeaderMap([(":method", "GET"), *path]))
    assert p.generate_hash(ctx) == xxhash64("a%20b")
    ctx = HashContext(None, HeaderMap([(":path", "/x?q")]))
    assert p.generate_hash(ctx) == xxhash64("")
    assert p.generate_hash(HashContext(None, HeaderMap([(":path", "/x")]))) is None


class _Hashable:
    def hash(self) -> int:
        return 42


def test_filter_state_objects_with_a_hash():
    p = policy({"filter_state": {"key": "k"}})
    assert hash_of(p, filter_state={"k": _Hashable()}) == 42
    assert hash_of(p, filter_state={"k": "no hash method"}) is None
    assert hash_of(p) is None


def test_policies_combine_by_rotation_and_terminal_stops():
    a, b = xxhash64("a"), xxhash64("b")
    headers = [("x-a", "a"), ("x-b", "b")]
    both = policy({"header": {"header_name": "x-a"}}, {"header": {"header_name": "x-b"}})
    assert hash_of(both, headers) == rotl(a) ^ b
    same = policy({"header": {"header_name": "x-a"}}, {"header": {"header_name": "x-a"}})
    assert hash_of(same, headers) == rotl(a) ^ a != 0
    terminal = policy(
        {"header": {"header_name": "x-a"}, "terminal": True}, {"header": {"header_name": "x-b"}}
    )
    assert hash_of(terminal, headers) == a
    assert hash_of(terminal, [("x-b", "b")]) == b  # no hash yet: terminal does not stop


def test_context_computes_once_and_override_wins():
    p = policy({"header": {"header_name": "x-a"}})
    other = policy({"header": {"header_name": "x-b"}})
    ctx = HashContext(p, HeaderMap([("x-a", "a"), ("x-b", "b")]))
    assert ctx.compute_hash_key(other) == xxhash64("b")
    assert ctx.compute_hash_key() == xxhash64("b")  # cached for retries


def test_route_action_compiles_hash_policy():
    t = table(routes_config([forward("r", {"cluster": "c1", "hash_policy": [
        {"header": {"header_name": "X-A"}}]})]))  # fmt: skip
    action = t.virtual_hosts[0].routes[0].action
    ctx = action.hash_context(HeaderMap([("x-a", "a")]), _Info())
    assert ctx.compute_hash_key() == xxhash64("a")
    assert ctx.remote_address == "1.2.3.4:5"


class _Info:
    downstream_remote_address = "1.2.3.4:5"
    downstream_local_address = "127.0.0.1:80"
    filter_state = None


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({}, "hash_policy[0]"),
        ({"header": {}}, "hash_policy[0].header.header_name"),
        ({"cookie": {}}, "hash_policy[0].cookie.name"),
        ({"query_parameter": {}}, "hash_policy[0].query_parameter.name"),
        ({"filter_state": {}}, "hash_policy[0].filter_state.key"),
    ],
)
def test_invalid_policies_are_refused(spec, path):
    with pytest.raises(ConfigError) as e:
        policy(spec)
    assert e.value.path == path
