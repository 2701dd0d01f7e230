"""The HTTP RBAC filter's ``matcher`` and ``shadow_matcher`` (the unified matcher API), Envoy
against legatus: the same requests through both, comparing what clients and the upstream
saw, the access-log lines (response code details name the matched action) and the
``http.<listener>.rbac.*`` stats."""

from __future__ import annotations

import socket

import pytest

from tests.differential.http_scenario import (  # noqa: F401 (fixtures)
    Cluster,
    Listener,
    http_pair_fixture,
    http_pair_processes_fixture,
    scenario,
)
from tests.differential.test_http_filters_ratelimit_rbac import (
    _exchange,
    _tcp_listener,
    filter_stats,
)
from tests.support.process import envoy_command, legatus_command, start_proxy
from tests.support.upstreams import EchoServer, static_cluster

RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
ACTION = "type.googleapis.com/envoy.config.rbac.v3.Action"
HEADER_INPUT = "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput"
NETWORK = "type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3."


def _listener(name: str, rbac: dict, **hcm) -> tuple[Listener, Cluster]:
    return (
        Listener(name=name, filters=[{"name": "rbac", "typed_config": {"@type": RBAC, **rbac}}],
                 hcm={"delayed_close_timeout": "0.1s", **hcm}),
        Cluster(name=name),
    )  # fmt: skip


def action(name: str, verdict: str) -> dict:
    typed_config = {"@type": ACTION, "name": name, "action": verdict}
    return {"action": {"name": "action", "typed_config": typed_config}}


def header(name: str) -> dict:
    return {"name": "envoy.matching.inputs.request_headers",
            "typed_config": {"@type": HEADER_INPUT, "header_name": name}}  # fmt: skip


def network(kind: str) -> dict:
    return {"name": "input", "typed_config": {"@type": NETWORK + kind}}


def single(input: dict, **value_match) -> dict:
    return {"single_predicate": {"input": input, "value_match": value_match}}


def statuses(out) -> list[str]:
    return [r["status"].split(" ")[1] for r in out.envoy.result]


# Envoy's own example (examples/rbac): deny a referer outside the docs, allow the rest.
REFERER = {"matcher": {
    "matcher_list": {"matchers": [{
        "predicate": {"not_matcher": single(header("referer"), safe_regex={
            "google_re2": {}, "regex": "https?://(www.)?envoyproxy.io/docs/envoy.*"})},
        "on_match": action("illegal-referer", "DENY")}]},
    "on_no_match": action("all-pass", "ALLOW")}}  # fmt: skip


@scenario(*_listener("rbacm_referer", REFERER))
def test_the_envoy_example_matcher(http_pair):
    def traffic(side):
        return [r.view() for r in (
            side.request("rbacm_referer", "GET", "/", [
                ("referer", "https://www.envoyproxy.io/docs/envoy/latest")]),
            side.request("rbacm_referer", "GET", "/", [("referer", "https://example.com/")]),
            side.request("rbacm_referer", "GET", "/"),
        )]  # fmt: skip

    out = http_pair.run(traffic)
    assert statuses(out) == ["200", "403", "403"]
    assert out.envoy.log[1]["details"] == "rbac_access_denied_matched_policy[illegal-referer]"
    out.assert_same()


# A tree on the method; POST goes on to a nested list; nothing matched and no on_no_match.
TREE = {"rules_stat_prefix": "tree_", "matcher": {"matcher_tree": {
    "input": header(":method"),
    "exact_match_map": {"map": {
        "GET": action("reads", "ALLOW"),
        "POST": {"matcher": {"matcher_list": {"matchers": [
            {"predicate": {"and_matcher": {"predicate": [
                single(header("x-role"), exact="admin"),
                single(header("x-team"), prefix="core", ignore_case=True)]}},
             "on_match": action("admin-posts", "ALLOW")},
            {"predicate": {"or_matcher": {"predicate": [
                single(header("x-role"), suffix="-bot"),
                single(header("x-role"), contains="robot")]}},
             "on_match": action("no bots", "DENY")},
        ]}}},
    }}}}}  # fmt: skip


@scenario(*_listener("rbacm_tree", TREE))
def test_an_exact_tree_with_a_nested_list(http_pair):
    def traffic(side):
        def post(*headers):
            return side.request("rbacm_tree", "POST", "/", list(headers), body=b"x")

        return [r.view() for r in (
            side.request("rbacm_tree", "GET", "/"),
            post(("x-role", "admin"), ("x-team", "CORE-net")),
            post(("x-role", "admin")),
            post(("x-role", "build-bot")),
            post(("x-role", "a robot here")),
            post(),
            side.request("rbacm_tree", "PUT", "/", body=b"x"),
        )]  # fmt: skip

    out = http_pair.run(traffic)
    assert statuses(out) == ["200", "200", "403", "403", "403", "403", "403"]
    assert out.envoy.log[3]["details"] == "rbac_access_denied_matched_policy[no_bots]"
    assert out.envoy.log[5]["details"] == "rbac_access_denied_matched_policy[none]"
    assert out.envoy.stats["http.rbacm_tree.rbac.tree_.allowed"] == 2
    out.assert_same()


KEY = {"google_re2": {}, "regex": "k-[0-9]+"}

# Prefixes of the path, longest first; a longer prefix whose nested matcher finds nothing.
PREFIX = {"matcher": {"matcher_tree": {
    "input": header(":path"),
    "prefix_match_map": {"map": {
        "/": action("root", "ALLOW"),
        "/api/": {"matcher": {"matcher_list": {"matchers": [
            {"predicate": single(header("x-key"), safe_regex=KEY),
             "on_match": action("keyed", "ALLOW")}]}}},
        "/api/admin": action("admin", "DENY"),
    }}}}}  # fmt: skip


@scenario(*_listener("rbacm_prefix", PREFIX))
def test_a_prefix_tree(http_pair):
    def traffic(side):
        return [r.view() for r in (
            side.request("rbacm_prefix", "GET", "/api/things", [("x-key", "k-12")]),
            side.request("rbacm_prefix", "GET", "/api/things", [("x-key", "k-x")]),
            side.request("rbacm_prefix", "GET", "/api/admin/users", [("x-key", "k-1")]),
            side.request("rbacm_prefix", "GET", "/apix"),
        )]  # fmt: skip

    out = http_pair.run(traffic)
    # A key that does not match falls back from "/api/" to "/", which allows.
    assert statuses(out) == ["200", "200", "403", "200"]
    assert out.envoy.log[2]["details"] == "rbac_access_denied_matched_policy[admin]"
    out.assert_same()


# Connection and stream addresses, and a shadow matcher with its own stats.
CONNECTION = {
    "shadow_rules_stat_prefix": "audit_",
    "shadow_matcher": {"matcher_list": {"matchers": [
        {"predicate": single(network("SourceIPInput"), exact="127.0.0.1"),
         "on_match": action("loopback", "ALLOW")}]}},
    "matcher": {"matcher_list": {"matchers": [
        {"predicate": single(network("DirectSourceIPInput"), exact="127.0.0.1"),
         "on_match": {"matcher": {"matcher_list": {"matchers": [
             {"predicate": single(header("x-forwarded-for"), prefix="10."),
              "on_match": action("forwarded", "DENY")},
             {"predicate": single(network("DestinationIPInput"), exact="127.0.0.1"),
              "on_match": action("local", "ALLOW")}]}}}},
    ]}},
}  # fmt: skip


@scenario(*_listener("rbacm_conn", CONNECTION))
def test_connection_inputs_and_a_shadow_matcher(http_pair):
    def traffic(side):
        return [r.view() for r in (
            side.request("rbacm_conn", "GET", "/"),
            side.request("rbacm_conn", "GET", "/", [("x-forwarded-for", "10.1.2.3")]),
            side.request("rbacm_conn", "GET", "/", [("x-forwarded-for", "192.168.1.1")]),
        )]  # fmt: skip

    out = http_pair.run(traffic)
    assert statuses(out) == ["200", "403", "200"]
    # source_ip is the stream's remote address: x-forwarded-for's, not the peer's.
    assert out.envoy.stats["http.rbacm_conn.rbac.audit_.shadow_allowed"] == 1
    out.assert_same()


# The IP range input matcher, on a header (an address the client claims).
IP_TYPE = "type.googleapis.com/envoy.extensions.matching.input_matchers.ip.v3.Ip"
IP_RANGES = {"matcher": {"matcher_list": {"matchers": [{
    "predicate": {"single_predicate": {"input": header("x-ip"), "custom_match": {
        "name": "ip", "typed_config": {"@type": IP_TYPE, "stat_prefix": "rbacm_ips",
                                       "cidr_ranges": [
                                           {"address_prefix": "10.0.0.0", "prefix_len": 8},
                                           {"address_prefix": "2001:db8::", "prefix_len": 32},
                                       ]}}}},
    "on_match": action("tens", "ALLOW")}]}}}  # fmt: skip


@scenario(*_listener("rbacm_ip", IP_RANGES))
def test_the_ip_range_input_matcher(http_pair):
    ips = ("10.1.2.3", "11.0.0.1", "bogus", "2001:db8::5", "10.0.0.1/8")

    def traffic(side):
        return [side.request("rbacm_ip", "GET", "/", [("x-ip", ip)]).view() for ip in ips]

    out = http_pair.run(traffic)
    assert statuses(out) == ["200", "403", "403", "200", "403"]
    stats = filter_stats(http_pair, r"^rbacm_ips\.")
    assert stats["envoy"] == {"rbacm_ips.ip_parsing_failed": 2}
    assert stats["legatus"] == stats["envoy"]
    out.assert_same()


# The network filter ---------------------------------------------------------------------

NRBAC = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
# Peers 127.0.0.2 are let through; the shadow matcher logs the others.
NETWORK_RBAC = {
    "@type": NRBAC, "stat_prefix": "nrbacm", "shadow_rules_stat_prefix": "audit_",
    "matcher": {"matcher_list": {"matchers": [
        {"predicate": single(network("SourceIPInput"), exact="127.0.0.2"),
         "on_match": action("second-loopback", "ALLOW")}]},
        "on_no_match": action("others", "DENY")},
    "shadow_matcher": {"matcher_tree": {
        "input": network("DirectSourceIPInput"),
        "exact_match_map": {"map": {"127.0.0.1": action("first-loopback", "LOG")}}}},
}  # fmt: skip


@pytest.fixture(scope="module")
def network_runs(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("nrbacm")
    echo = EchoServer()
    procs = {}
    try:
        for name, command in (("envoy", envoy_command()), ("legatus", legatus_command())):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            rbac = {"name": "rbac", "typed_config": NETWORK_RBAC}
            listener = _tcp_listener("nrbacm", port, [rbac])
            bootstrap = {
                "admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": 0}}},
                "static_resources": {"listeners": [listener],
                                     "clusters": [static_cluster("echo", echo.port)]},
            }  # fmt: skip
            procs[name] = (start_proxy(bootstrap, workdir / name, command=command), port)
        out = {}
        for name, (proxy, port) in procs.items():
            seen = [_exchange(port), _exchange(port, "127.0.0.2"), _exchange(port)]
            stats = {k: v for k, v in proxy.stats().items() if k.startswith("nrbacm.rbac.")}
            out[name] = (seen, stats)
        yield out
    finally:
        for proxy, _ in procs.values():
            proxy.stop()
        echo.close()


def test_the_network_filter_with_matchers(network_runs):
    seen, stats = network_runs["envoy"]
    assert seen == ["closed", "ping", "closed"]
    assert stats["nrbacm.rbac.denied"] == 2
    assert stats["nrbacm.rbac.audit_.shadow_allowed"] == 2
    assert stats["nrbacm.rbac.audit_.shadow_denied"] == 1
    assert network_runs["legatus"] == network_runs["envoy"]
