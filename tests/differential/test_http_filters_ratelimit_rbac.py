"""The local rate limit and RBAC filters, Envoy against legatus.

HTTP (http_scenario.py): the same requests through both proxies, comparing responses, what
the upstream saw, access logs and the listener's stats (``http.<listener>.rbac.*`` among
them), plus the local rate limit's own stats (``<stat_prefix>.http_local_rate_limit.*``,
outside the listener's scope, compared here with ``filter_stats``).

TCP (at the end of the module): network RBAC, network local rate limit and connection limit
in front of a tcp_proxy to an echo server, driven by raw TCP clients (some from 127.0.0.2);
what each client saw and the filters' stats are compared.

Both proxies run with ``--concurrency 1``: token buckets and connection counts are per
worker in legatus (per process in Envoy), so one worker makes them comparable.
"""

from __future__ import annotations

import json
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.differential.http_scenario import (  # noqa: F401 (fixtures)
    Cluster,
    Listener,
    http_pair_fixture,
    http_pair_processes_fixture,
    scenario,
)
from tests.support.process import envoy_command, legatus_command, start_proxy
from tests.support.upstreams import EchoServer, static_cluster

LRL = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
RBAC_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
ON = {"default_value": {"numerator": 100}}


def _lrl(stat_prefix: str, max_tokens: int, fill: str = "60s", **extra) -> dict:
    return {"@type": LRL, "stat_prefix": stat_prefix,
            "token_bucket": {"max_tokens": max_tokens, "tokens_per_fill": 1,
                             "fill_interval": fill},
            "filter_enabled": ON, "filter_enforced": ON, **extra}  # fmt: skip


def _filter(name: str, typed_config: dict) -> dict:
    return {"name": name, "typed_config": typed_config}


def _listener(name: str, filters: list, **kw) -> tuple[Listener, Cluster]:
    kw.setdefault("hcm", {"delayed_close_timeout": "0.1s"})
    return Listener(name=name, filters=filters, **kw), Cluster(name=name)


def views(responses) -> list[dict]:
    return [r.view() for r in responses]


def filter_stats(http_pair, pattern: str) -> dict[str, dict]:
    """Stats matching ``pattern`` on each side (after ``run``: both have settled)."""
    regex = re.compile(pattern)
    out = {}
    for name, side in http_pair.pair.sides.items():
        status, body = side.proxy.admin("/stats?format=json")
        assert status == 200, body
        out[name] = {
            e["name"]: e["value"]
            for e in json.loads(body)["stats"]
            if "name" in e and regex.match(e["name"])
        }
    return out


def assert_same_filter_stats(http_pair, pattern: str) -> dict:
    stats = filter_stats(http_pair, pattern)
    assert stats["envoy"], f"Envoy has no stats matching {pattern}"
    assert "legatus" in stats, f"legatus did not run: {http_pair.pair.error}"
    assert stats["legatus"] == stats["envoy"]
    return stats["envoy"]


# Local rate limit ---------------------------------------------------------------------------


@scenario(*_listener("lrl_burst", [_filter("lrl", _lrl("lrl_burst", 3, response_headers_to_add=[
    {"header": {"key": "x-limited", "value": "yes"}}]))]))  # fmt: skip
def test_burst_then_429(http_pair):
    def traffic(side):
        return views([side.request("lrl_burst", "GET", f"/r{i}") for i in range(5)])

    out = http_pair.run(traffic)
    assert [r["status"] for r in out.envoy.result] == ["HTTP/1.1 200 OK"] * 3 + [
        "HTTP/1.1 429 Too Many Requests"] * 2  # fmt: skip
    assert out.envoy.result[3]["body"] == "local_rate_limited"
    assert out.envoy.result[3]["headers"][0] == "x-limited: yes"
    assert [e["flags"] for e in out.envoy.log] == ["-"] * 3 + ["RL"] * 2
    assert out.envoy.log[4]["details"] == "local_rate_limited"
    out.assert_same()
    stats = assert_same_filter_stats(http_pair, r"^lrl_burst\.http_local_rate_limit\.")
    assert stats["lrl_burst.http_local_rate_limit.rate_limited"] == 2


@scenario(*_listener("lrl_headers", [_filter("lrl", _lrl(
    "lrl_headers", 2, fill="10s", enable_x_ratelimit_headers="DRAFT_VERSION_03"))]))  # fmt: skip
def test_x_ratelimit_headers(http_pair):
    def traffic(side):
        with side.connect("lrl_headers") as c:
            return views([c.request("GET", "/a"), c.request("GET", "/b"), c.request("GET", "/c")])

    out = http_pair.run(traffic)
    assert "x-ratelimit-remaining: 1" in out.envoy.result[0]["headers"]
    assert "x-ratelimit-reset: 10" in out.envoy.result[1]["headers"]
    assert out.envoy.result[2]["status"] == "HTTP/1.1 429 Too Many Requests"
    out.assert_same()
    assert_same_filter_stats(http_pair, r"^lrl_headers\.http_local_rate_limit\.")


@scenario(*_listener("lrl_shadow", [_filter("lrl", {
    "@type": LRL, "stat_prefix": "lrl_shadow", "filter_enabled": ON,
    "token_bucket": {"max_tokens": 1, "fill_interval": "60s"},
    "request_headers_to_add_when_not_enforced": [{"header": {"key": "x-would-limit",
                                                             "value": "1"}}]})]))  # fmt: skip
def test_not_enforced_passes_with_request_headers(http_pair):
    def traffic(side):
        return views([side.request("lrl_shadow", "GET", "/x") for _ in range(3)])

    out = http_pair.run(traffic)
    assert [r["status"] for r in out.envoy.result] == ["HTTP/1.1 200 OK"] * 3
    assert "x-would-limit: 1" in out.envoy.upstream[2]["headers"]
    out.assert_same()
    stats = assert_same_filter_stats(http_pair, r"^lrl_shadow\.http_local_rate_limit\.")
    assert stats["lrl_shadow.http_local_rate_limit.enforced"] == 0


@scenario(*_listener("lrl_route", [_filter("lrl", _lrl("lrl_route", 100))], routes=[
    {"match": {"prefix": "/tight"}, "route": {"cluster": "lrl_route"},
     "typed_per_filter_config": {"lrl": _lrl("lrl_route_tight", 1, status={"code": 503})}},
    {"match": {"prefix": "/other"}, "route": {"cluster": "lrl_route"},
     "typed_per_filter_config": {"lrl": _lrl("lrl_route_other", 1)}},
    {"match": {"prefix": "/"}, "route": {"cluster": "lrl_route"}},
]))  # fmt: skip
def test_per_route_buckets(http_pair):
    def traffic(side):
        paths = ["/tight", "/tight", "/other", "/other", "/", "/", "/"]
        return views([side.request("lrl_route", "GET", p) for p in paths])

    out = http_pair.run(traffic)
    assert [r["status"].split(" ")[1] for r in out.envoy.result] == [
        "200", "503", "200", "429", "200", "200", "200"]  # fmt: skip
    out.assert_same()
    assert_same_filter_stats(http_pair, r"^lrl_route(_tight|_other)?\.http_local_rate_limit\.")


def _bucket(max_tokens: int) -> dict:
    return {"max_tokens": max_tokens, "tokens_per_fill": 1, "fill_interval": "60s"}


@scenario(*_listener("lrl_desc", [_filter("lrl", _lrl("lrl_desc", 100, descriptors=[
    {"entries": [{"key": "client", "value": "alice"}], "token_bucket": _bucket(1)},
    {"entries": [{"key": "client", "value": ""}], "token_bucket": _bucket(2)},
]))], routes=[
    {"match": {"prefix": "/"}, "route": {"cluster": "lrl_desc", "rate_limits": [
        {"actions": [{"request_headers": {"header_name": "x-client",
                                          "descriptor_key": "client"}}]}]}},
]))  # fmt: skip
def test_descriptors_from_route_rate_limits(http_pair):
    def traffic(side):
        clients = ["alice", "alice", "bob", "bob", "bob", "carol", None, None]
        return [
            side.request("lrl_desc", "GET", "/", headers=(("x-client", c),) if c else ()).status
            for c in clients
        ]

    out = http_pair.run(traffic)
    # alice: her own bucket of 1; bob and carol: one bucket each of 2 from the wildcard;
    # no header: no descriptor, the filter's own bucket (100)
    assert out.envoy.result == [200, 429, 200, 200, 429, 200, 200, 200]
    out.assert_same()
    assert_same_filter_stats(http_pair, r"^lrl_desc\.http_local_rate_limit\.")


@scenario(*_listener("lrl_desc_default", [_filter("lrl", _lrl(
    "lrl_desc_default", 2, always_consume_default_token_bucket=False, descriptors=[
        {"entries": [{"key": "client", "value": "alice"}], "token_bucket": _bucket(5)},
    ]))], routes=[
    {"match": {"prefix": "/"}, "route": {"cluster": "lrl_desc_default", "rate_limits": [
        {"actions": [{"request_headers": {"header_name": "x-client",
                                          "descriptor_key": "client"}}]}]}},
]))  # fmt: skip
def test_a_matched_descriptor_spares_the_default_bucket_when_asked(http_pair):
    def traffic(side):
        clients = ["alice"] * 4 + [None] * 3
        return [
            side.request(
                "lrl_desc_default", "GET", "/", headers=(("x-client", c),) if c else ()
            ).status
            for c in clients
        ]

    out = http_pair.run(traffic)
    assert out.envoy.result == [200, 200, 200, 200, 200, 200, 429]
    out.assert_same()


@scenario(*_listener("lrl_conn", [_filter("lrl", _lrl(
    "lrl_conn", 1, local_rate_limit_per_downstream_connection=True))]))  # fmt: skip
def test_bucket_per_downstream_connection(http_pair):
    def traffic(side):
        with side.connect("lrl_conn") as c:
            first = [c.request("GET", "/1"), c.request("GET", "/2")]
        with side.connect("lrl_conn") as c:
            second = [c.request("GET", "/3")]
        return views(first + second)

    out = http_pair.run(traffic)
    assert [r["status"].split(" ")[1] for r in out.envoy.result] == ["200", "429", "200"]
    out.assert_same()
    assert_same_filter_stats(http_pair, r"^lrl_conn\.http_local_rate_limit\.")


# RBAC -------------------------------------------------------------------------------------


def _policy(permissions: list, principals: list) -> dict:
    return {"permissions": permissions, "principals": principals}


ANY = [{"any": True}]


@scenario(*_listener("rbac_header", [_filter("rbac", {"@type": RBAC, "rules": {
    "action": "ALLOW", "policies": {
        "admins": _policy(ANY, [{"header": {"name": "x-role",
                                            "string_match": {"exact": "admin"}}}]),
        "public": _policy([{"url_path": {"path": {"prefix": "/public/"}}}], ANY),
    }}})]))  # fmt: skip
def test_rbac_allow_by_header_and_path(http_pair):
    def traffic(side):
        return views([
            side.request("rbac_header", "GET", "/private", [("x-role", "admin")]),
            side.request("rbac_header", "GET", "/private", [("x-role", "user")]),
            side.request("rbac_header", "GET", "/private"),
            side.request("rbac_header", "GET", "/public/page?x=1"),
            side.request("rbac_header", "GET", "/publicity"),
        ])  # fmt: skip

    out = http_pair.run(traffic)
    assert [r["status"].split(" ")[1] for r in out.envoy.result] == [
        "200", "403", "403", "200", "403"]  # fmt: skip
    assert out.envoy.result[1]["body"] == "RBAC: access denied"
    assert out.envoy.log[1]["details"] == "rbac_access_denied_matched_policy[none]"
    out.assert_same()


@scenario(*_listener("rbac_deny", [_filter("rbac", {"@type": RBAC, "rules": {
    "action": "DENY", "policies": {
        "no admin path": _policy([{"and_rules": {"rules": [
            {"url_path": {"path": {"prefix": "/admin"}}},
            {"not_rule": {"header": {"name": "x-debug", "present_match": True}}},
        ]}}], ANY),
        "bad port": _policy([{"destination_port_range": {"start": 1, "end": 1024}}], ANY),
    }}})]))  # fmt: skip
def test_rbac_deny_by_path_with_a_policy_name_that_has_spaces(http_pair):
    def traffic(side):
        return views([
            side.request("rbac_deny", "GET", "/admin/users"),
            side.request("rbac_deny", "GET", "/admin/users", [("x-debug", "1")]),
            side.request("rbac_deny", "GET", "/users"),
        ])  # fmt: skip

    out = http_pair.run(traffic)
    assert [r["status"].split(" ")[1] for r in out.envoy.result] == ["403", "200", "200"]
    assert out.envoy.log[0]["details"] == "rbac_access_denied_matched_policy[no_admin_path]"
    out.assert_same()


@scenario(*_listener("rbac_ip", [_filter("rbac", {"@type": RBAC, "rules": {
    "action": "ALLOW", "policies": {
        "loopback-peers": _policy(ANY, [{"and_ids": {"ids": [
            {"direct_remote_ip": {"address_prefix": "127.0.0.0", "prefix_len": 8}},
            {"source_ip": {"address_prefix": "127.0.0.1", "prefix_len": 32}},
            {"remote_ip": {"address_prefix": "10.0.0.0", "prefix_len": 8}},
        ]}}]),
        "v6": _policy(ANY, [{"remote_ip": {"address_prefix": "::", "prefix_len": 0}}]),
    }}})]))  # fmt: skip
def test_rbac_source_ip_direct_and_forwarded(http_pair):
    def traffic(side):
        return views([
            side.request("rbac_ip", "GET", "/", [("x-forwarded-for", "10.1.2.3")]),
            side.request("rbac_ip", "GET", "/", [("x-forwarded-for", "192.168.1.1")]),
            side.request("rbac_ip", "GET", "/"),
            side.request("rbac_ip", "GET", "/", [("x-forwarded-for", "2001:db8::1")]),
        ])  # fmt: skip

    out = http_pair.run(traffic)
    assert [r["status"].split(" ")[1] for r in out.envoy.result] == ["200", "403", "403", "200"]
    out.assert_same()


@scenario(*_listener("rbac_shadow", [_filter("rbac", {
    "@type": RBAC, "shadow_rules_stat_prefix": "audit_", "rules_stat_prefix": "main_",
    "rules": {"action": "DENY", "policies": {
        "blocked": _policy([{"header": {"name": "x-blocked", "present_match": True}}], ANY)}},
    "shadow_rules": {"action": "ALLOW", "policies": {
        "only-get": _policy([{"header": {"name": ":method",
                                         "string_match": {"exact": "GET"}}}], ANY)}},
})]))  # fmt: skip
def test_rbac_shadow_rules_and_their_stats(http_pair):
    def traffic(side):
        return views([
            side.request("rbac_shadow", "GET", "/"),
            side.request("rbac_shadow", "POST", "/", body=b"x"),
            side.request("rbac_shadow", "GET", "/", [("x-blocked", "1")]),
        ])  # fmt: skip

    out = http_pair.run(traffic)
    assert [r["status"].split(" ")[1] for r in out.envoy.result] == ["200", "200", "403"]
    assert out.envoy.log[2]["details"] == "rbac_access_denied_matched_policy[blocked]"
    assert out.envoy.stats["http.rbac_shadow.rbac.audit_.shadow_allowed"] == 2
    assert out.envoy.stats["http.rbac_shadow.rbac.main_.denied"] == 1
    out.assert_same()


@scenario(*_listener("rbac_route", [_filter("authz", {"@type": RBAC, "rules": {
    "action": "ALLOW", "policies": {}}})], routes=[
    {"match": {"prefix": "/open"}, "route": {"cluster": "rbac_route"},
     "typed_per_filter_config": {"authz": {"@type": RBAC_PER_ROUTE}}},
    {"match": {"prefix": "/token"}, "route": {"cluster": "rbac_route"},
     "typed_per_filter_config": {"authz": {"@type": RBAC_PER_ROUTE, "rbac": {"rules": {
         "action": "ALLOW", "policies": {"token": _policy(ANY, [{"header": {
             "name": "authorization", "string_match": {"prefix": "Bearer "}}}])}}}}}},
    {"match": {"prefix": "/"}, "route": {"cluster": "rbac_route"}},
]))  # fmt: skip
def test_rbac_per_route(http_pair):
    def traffic(side):
        return views([
            side.request("rbac_route", "GET", "/open"),
            side.request("rbac_route", "GET", "/token", [("authorization", "Bearer x")]),
            side.request("rbac_route", "GET", "/token"),
            side.request("rbac_route", "GET", "/closed"),
        ])  # fmt: skip

    out = http_pair.run(traffic)
    assert [r["status"].split(" ")[1] for r in out.envoy.result] == ["200", "200", "403", "403"]
    out.assert_same()


POSTS = [{"header": {"name": ":method", "string_match": {"exact": "POST"}}}]


@scenario(*_listener("rbac_log", [_filter("rbac", {"@type": RBAC, "rules": {
    "action": "LOG", "policies": {"log-posts": _policy(POSTS, ANY)}}})]))  # fmt: skip
def test_rbac_log_action_allows(http_pair):
    def traffic(side):
        return views([side.request("rbac_log", "GET", "/"),
                      side.request("rbac_log", "POST", "/", body=b"x")])  # fmt: skip

    out = http_pair.run(traffic)
    assert [r["status"].split(" ")[1] for r in out.envoy.result] == ["200", "200"]
    out.assert_same()


# Network filters --------------------------------------------------------------------------

NRBAC = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
NLRL = "type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit"
CLIMIT = "type.googleapis.com/envoy.extensions.filters.network.connection_limit.v3.ConnectionLimit"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
TCP_LISTENERS = ("nrbac", "nlrl", "climit")


def _tcp_listener(name: str, port: int, filters: list) -> dict:
    config = {"@type": TCP_PROXY, "stat_prefix": name, "cluster": "echo"}
    proxy = {"name": "envoy.filters.network.tcp_proxy", "typed_config": config}
    return {"name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [*filters, proxy]}]}  # fmt: skip


def _tcp_bootstrap(ports: dict[str, int], echo_port: int) -> dict:
    nrbac = {"@type": NRBAC, "stat_prefix": "nrbac", "shadow_rules_stat_prefix": "audit_",
             "rules": {"action": "ALLOW", "policies": {"from-two": _policy(
                 [{"destination_port": ports["nrbac"]}],
                 [{"remote_ip": {"address_prefix": "127.0.0.2", "prefix_len": 32}}])}},
             "shadow_rules": {"action": "DENY", "policies": {"no-sni": _policy(
                 [{"requested_server_name": {"exact": ""}}], ANY)}}}  # fmt: skip
    nlrl = {"@type": NLRL, "stat_prefix": "nlrl",
            "token_bucket": {"max_tokens": 2, "fill_interval": "60s"}}  # fmt: skip
    climit = {"@type": CLIMIT, "stat_prefix": "climit", "max_connections": 1, "delay": "0.2s"}
    listeners = [
        _tcp_listener("nrbac", ports["nrbac"], [{"name": "rbac", "typed_config": nrbac}]),
        _tcp_listener("nlrl", ports["nlrl"], [{"name": "nlrl", "typed_config": nlrl}]),
        _tcp_listener("climit", ports["climit"], [{"name": "cl", "typed_config": climit}]),
    ]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": listeners,
                             "clusters": [static_cluster("echo", echo_port)]},
    }  # fmt: skip


def _exchange(port: int, source: str = "127.0.0.1", payload: bytes = b"ping") -> str:
    """Connect (from ``source``), send ``payload``, say what came back. A close by the proxy
    is ``closed`` whether it came as a FIN or, with bytes still unread, as a RST: which one
    follows the timing of the reads."""
    with socket.socket() as s:
        s.bind((source, 0))
        s.settimeout(3)
        s.connect(("127.0.0.1", port))
        try:
            s.sendall(payload)
            data = s.recv(100)
        except ConnectionResetError:
            return "closed"
        except TimeoutError:
            return "timeout"
        return data.decode() if data else "closed"


def _tcp_traffic(ports: dict[str, int]) -> dict:
    out: dict = {}
    out["nrbac"] = [_exchange(ports["nrbac"]), _exchange(ports["nrbac"], "127.0.0.2")]
    out["nlrl"] = [_exchange(ports["nlrl"]) for _ in range(3)]
    with socket.create_connection(("127.0.0.1", ports["climit"]), timeout=3) as held:
        held.sendall(b"held")
        assert held.recv(10) == b"held"
        started = time.monotonic()
        second = _exchange(ports["climit"])
        delayed = time.monotonic() - started >= 0.15
    time.sleep(0.2)
    out["climit"] = [second, delayed, _exchange(ports["climit"])]
    return out


_TCP_STATS = re.compile(r"^(nrbac\.rbac\.|local_rate_limit\.|connection_limit\.)")


def _tcp_stats(proxy) -> dict:
    deadline = time.monotonic() + 5
    while True:
        stats = {k: v for k, v in proxy.stats().items() if _TCP_STATS.match(k)}
        if stats.get("connection_limit.climit.active_connections") == 0 or (
            time.monotonic() > deadline
        ):
            return stats
        time.sleep(0.05)


@pytest.fixture(scope="module")
def tcp_runs(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tcp")
    echo = EchoServer()
    procs = {}
    try:
        for name, command in (("envoy", envoy_command()), ("legatus", legatus_command())):
            with socket.socket() as a, socket.socket() as b, socket.socket() as c:
                for s in (a, b, c):
                    s.bind(("127.0.0.1", 0))
                ports = dict(zip(TCP_LISTENERS, (a.getsockname()[1], b.getsockname()[1],
                                                 c.getsockname()[1]), strict=True))  # fmt: skip
            args = ["--concurrency", "1"] + ([] if name == "envoy" else ["--use-dynamic-base-id"])
            proxy = start_proxy(_tcp_bootstrap(ports, echo.port), workdir / name,
                                command=command, args=args)  # fmt: skip
            procs[name] = (proxy, ports)
        with ThreadPoolExecutor(2) as pool:
            results = dict(zip(procs, pool.map(lambda p: _tcp_traffic(p[1]), procs.values()),
                               strict=True))  # fmt: skip
        yield {name: (results[name], _tcp_stats(proxy)) for name, (proxy, _) in procs.items()}
    finally:
        for proxy, _ in procs.values():
            proxy.stop()
        echo.close()


def test_network_filters_clients_see_the_same(tcp_runs):
    envoy, _ = tcp_runs["envoy"]
    assert envoy["nrbac"] == ["closed", "ping"]
    assert envoy["nlrl"] == ["ping", "ping", "closed"]
    assert envoy["climit"] == ["closed", True, "ping"]
    assert tcp_runs["legatus"][0] == envoy


def test_network_filters_stats(tcp_runs):
    _, stats = tcp_runs["envoy"]
    assert stats["nrbac.rbac.denied"] == 1
    assert stats["nrbac.rbac.allowed"] == 1
    assert stats["nrbac.rbac.audit_.shadow_denied"] == 2
    assert stats["local_rate_limit.nlrl.rate_limited"] == 1
    assert stats["connection_limit.climit.limited_connections"] == 1
    assert tcp_runs["legatus"][1] == stats
