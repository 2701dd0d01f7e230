"""The RBAC filters' ``matcher`` engine and the unified matcher API under it (legatus.matcher),
compiled from protos and decided for requests; what Envoy 1.40 does is checked end to end in
tests/differential/test_http_rbac_matcher.py."""

from __future__ import annotations

import pytest
from xds.type.matcher.v3 import matcher_pb2

from legatus.config.errors import ConfigError
from legatus.config.proto_json import parse
from legatus.rbac.matcher_engine import compile_matcher_engine
from legatus.stats.store import Store
from tests.unit.rbac.test_engine import request

ACTION = "type.googleapis.com/envoy.config.rbac.v3.Action"
HEADER = "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput"
NETWORK = "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3."
STRUCT = "type.googleapis.com/google.protobuf.Struct"
IP = "type.googleapis.com/envoy.extensions.matching.input_matchers.ip.v3.Ip"


def engine(matcher: dict, *, http: bool = True, store=None):
    proto = parse(matcher, matcher_pb2.Matcher)
    return compile_matcher_engine(proto, "matcher", http=http, store=store)


def action(name: str, verdict: str = "ALLOW") -> dict:
    return {"action": {"name": "a", "typed_config": {"@type": ACTION, "name": name,
                                                     "action": verdict}}}  # fmt: skip


def header(name: str) -> dict:
    return {"name": "h", "typed_config": {"@type": HEADER, "header_name": name}}


def network(kind: str) -> dict:
    return {"name": "n", "typed_config": {"@type": NETWORK + kind}}


def single(input: dict, **value_match) -> dict:
    return {"single_predicate": {"input": input, "value_match": value_match}}


def listed(*matchers, on_no_match=None) -> dict:
    out: dict = {"matcher_list": {"matchers": [
        {"predicate": p, "on_match": m} for p, m in matchers]}}  # fmt: skip
    if on_no_match is not None:
        out["on_no_match"] = on_no_match
    return out


def test_the_first_matching_field_matcher_decides_and_nothing_matched_denies():
    e = engine(listed((single(header("x-role"), exact="admin"), action("admins")),
                      (single(header("x-role"), prefix="ad"), action("ads", "DENY"))))  # fmt: skip
    assert e.decide(request(headers=[("x-role", "admin")])) == (True, "admins", None)
    assert e.decide(request(headers=[("x-role", "adder")])) == (False, "ads", None)
    assert e.decide(request(headers=[("x-role", "user")])) == (False, "", None)
    assert e.decide(request()) == (False, "", None)


def test_an_absent_input_is_false_and_its_negation_true():
    e = engine(listed(({"not_matcher": single(header("x-key"), exact="k")}, action("no-key")),
                      on_no_match=action("keyed", "DENY")))  # fmt: skip
    assert e.decide(request()) == (True, "no-key", None)
    assert e.decide(request(headers=[("x-key", "other")])) == (True, "no-key", None)
    assert e.decide(request(headers=[("x-key", "k")])) == (False, "keyed", None)


def test_a_header_seen_twice_is_matched_as_its_values_joined():
    e = engine(listed((single(header("x-tag"), exact="a,b"), action("both"))))
    assert e.decide(request(headers=[("x-tag", "a"), ("x-tag", "b")]))[0] is True
    assert e.decide(request(headers=[("x-tag", "a")]))[0] is False


def test_and_or_predicates():
    both = {"and_matcher": {"predicate": [single(header("a"), exact="1"),
                                          single(header("b"), exact="2")]}}  # fmt: skip
    either = {"or_matcher": {"predicate": [single(header("a"), exact="x"),
                                           single(header("b"), exact="y")]}}  # fmt: skip
    e = engine(listed((both, action("both")), (either, action("either"))))
    assert e.decide(request(headers=[("a", "1"), ("b", "2")]))[1] == "both"
    assert e.decide(request(headers=[("a", "1"), ("b", "y")]))[1] == "either"
    assert e.decide(request(headers=[("a", "1")]))[1] == ""


def test_a_nested_matcher_that_finds_nothing_lets_the_list_go_on():
    nested = {"matcher": listed((single(header("x-team"), exact="core"), action("core")))}
    get = single(header(":method"), exact="GET")
    e = engine(listed((get, nested), (get, action("any-get", "DENY"))))
    assert e.decide(request(headers=[("x-team", "core")])) == (True, "core", None)
    assert e.decide(request()) == (False, "any-get", None)


def test_trees_exact_and_prefix_longest_first_with_fallback():
    exact = engine({"matcher_tree": {"input": header(":method"), "exact_match_map": {"map": {
        "GET": action("reads")}}}, "on_no_match": action("writes", "DENY")})  # fmt: skip
    assert exact.decide(request()) == (True, "reads", None)
    assert exact.decide(_post()) == (False, "writes", None)
    keyed = {"matcher": listed((single(header("x-key"), prefix="k-"), action("keyed")))}
    prefix = engine({"matcher_tree": {"input": header(":path"), "prefix_match_map": {"map": {
        "/": action("root"), "/api/": keyed, "/api/admin": action("admin", "DENY")}}}})  # fmt: skip
    assert prefix.decide(request("/api/x", [("x-key", "k-1")]))[1] == "keyed"
    assert prefix.decide(request("/api/x"))[1] == "root"  # "/api/" found nothing
    assert prefix.decide(request("/api/admin/y", [("x-key", "k-1")]))[1] == "admin"


def _post():
    r = request()
    r.headers.set(":method", "POST")
    return r


def test_connection_and_stream_addresses():
    def e(kind, value):
        return engine(listed((single(network(kind), exact=value), action(kind))))

    r = request(local="10.0.0.1:8443", source="127.0.0.9:4000", direct="127.0.0.9:4000",
                remote="192.0.2.7:0")  # fmt: skip
    assert e("DestinationIPInput", "10.0.0.1").decide(r)[0]
    assert e("DestinationPortInput", "8443").decide(r)[0]
    assert e("DirectSourceIPInput", "127.0.0.9").decide(r)[0]
    assert e("SourceIPInput", "192.0.2.7").decide(r)[0]  # the stream's (x-forwarded-for)
    assert not e("SourceIPInput", "127.0.0.9").decide(r)[0]
    assert not e("ServerNameInput", "").decide(r)[0]  # no SNI: no value at all


def test_log_actions_give_the_access_log_hint():
    e = engine(listed((single(header(":method"), exact="POST"), action("posts", "LOG")),
                      (single(header(":method"), exact="GET"), action("gets"))))  # fmt: skip
    assert e.decide(_post()) == (True, "posts", True)
    assert e.decide(request()) == (True, "gets", False)
    assert e.decide(_put()) == (False, "", None)


def _put():
    r = request()
    r.headers.set(":method", "PUT")
    return r


@pytest.mark.parametrize(
    ("matcher", "http", "where", "says"),
    [
        (listed((single(network("SourceTypeInput"), exact="local"), action("x"))), True,
         "matcher.matcher_list.matchers[0].predicate.single_predicate.input.typed_config",
         "RBAC HTTP filter cannot match on"),
        (listed((single(header("x"), exact="1"), action("x"))), False,
         "matcher.matcher_list.matchers[0].predicate.single_predicate.input.typed_config",
         "RBAC network filter cannot match on"),
        (listed((single(header("x"), exact="1"), {**action("x"), "keep_matching": True})), True,
         "matcher.matcher_list.matchers[0].on_match.keep_matching", "not supported in this"),
        (listed((single(header("x"), exact="1"), {"action": {"name": "a", "typed_config": {
            "@type": HEADER}}})), True,
         "matcher.matcher_list.matchers[0].on_match.action.typed_config", "cannot take"),
        (listed(({"single_predicate": {"input": header("x"), "custom_match": {
            "name": "c", "typed_config": {"@type": STRUCT}}}}, action("x"))), True,
         "matcher.matcher_list.matchers[0].predicate.single_predicate.custom_match.typed_config",
         "input matcher 'type.googleapis.com/google.protobuf.Struct' is not supported by legatus"),
        ({"matcher_tree": {"input": header("x"), "custom_match": {"name": "c"}}}, True,
         "matcher.matcher_tree.custom_match", "not supported by legatus"),
    ],
)  # fmt: skip
def test_refusals_name_the_field(matcher, http, where, says):
    with pytest.raises(ConfigError) as e:
        engine(matcher, http=http)
    assert e.value.path == where
    assert says in str(e.value)


def test_the_ip_range_input_matcher_counts_what_it_cannot_parse():
    store = Store()
    ranges = [{"address_prefix": "10.0.0.0", "prefix_len": 8},
              {"address_prefix": "2001:db8::", "prefix_len": 32}]  # fmt: skip
    ip = {"name": "ip", "typed_config": {"@type": IP, "stat_prefix": "ips",
                                         "cidr_ranges": ranges}}  # fmt: skip
    e = engine(listed(({"single_predicate": {"input": header("x-ip"), "custom_match": ip}},
                       action("tens"))), store=store)  # fmt: skip
    for value, allowed in (("10.9.9.9", True), ("11.0.0.1", False), ("2001:db8::1", True),
                           ("nope", False)):  # fmt: skip
        assert e.decide(request(headers=[("x-ip", value)]))[0] is allowed, value
    assert e.decide(request())[0] is False  # no header: nothing to parse, nothing counted
    assert store.counter("ips.ip_parsing_failed").value == 1
    with pytest.raises(ConfigError) as err:
        engine(listed(({"single_predicate": {"input": header("x-ip"), "custom_match": {
            "name": "ip", "typed_config": {"@type": IP, "stat_prefix": "ips"}}}},
            action("x"))), store=store)  # fmt: skip
    assert err.value.path.endswith("custom_match.typed_config.cidr_ranges")
