"""The headers the HCM and the router add, strip and rewrite, Envoy against legatus.

Requests carry the headers a case is about; the upstream records every header line it
receives in order, and the client every response header line. Both proxies must agree on
those (and on the access log and stats, as every http_scenario comparison does):
x-forwarded-for/-proto under use_remote_address and xff_num_trusted_hops, x-envoy-* from
external and internal clients, x-request-id generation and preservation,
x-envoy-expected-rq-timeout-ms, x-envoy-upstream-service-time, path and host rewrites with
x-envoy-original-path, the server and via headers, suppress_envoy_headers, hop-by-hop headers
both ways, and header mutations at route, virtual host and route configuration level.
"""

from __future__ import annotations

from tests.differential.http_scenario import (  # noqa: F401 (fixtures)
    Cluster,
    Listener,
    Reply,
    http_pair_fixture,
    http_pair_processes_fixture,
    route,
    scenario,
)

SCRIPTS = {
    "/server": Reply(headers=(("server", "upstream-server"), ("content-type", "text/plain"))),
    "/hop": Reply(headers=(
        ("connection", "keep-alive, x-nominated"), ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"), ("upgrade", "h2c"), ("x-nominated", "1"),
        ("te", "trailers"), ("trailer", "x-t"), ("x-kept", "yes"),
    )),
    "/mutate": Reply(headers=(
        ("x-upstream", "u"), ("x-remove-me", "r"), ("x-route-resp", "from-upstream"),
        ("content-type", "text/plain"),
    )),
}  # fmt: skip
INTERNAL = {"cidr_ranges": [{"address_prefix": "127.0.0.0", "prefix_len": 8}]}
XFF = Cluster(name="xff")
# A UUID that is not a version 4 one (so not normalized); Envoy packs the trace reason into
# its version digit when it takes over an external ID.
NOT_V4_ID = "2ed1e8a8-49ad-9c47-cd3e-3e66d7b5b7e6"
ENVOY_HEADERS = [
    ("x-envoy-internal", "true"), ("x-envoy-original-path", "/forged"),
    ("x-envoy-expected-rq-timeout-ms", "1"), ("x-envoy-upstream-rq-timeout-ms", "3000"),
    ("x-envoy-max-retries", "2"), ("x-envoy-retry-on", "5xx"), ("x-envoy-foo", "bar"),
    ("x-envoy-decorator-operation", "op"), ("x-envoy-downstream-service-cluster", "c"),
]  # fmt: skip
CLIENT_CASES = {
    "plain": [],
    "xff": [("x-forwarded-for", "1.2.3.4")],
    "xff_list": [("x-forwarded-for", "1.2.3.4, 10.0.0.2")],
    "xfp_https": [("x-forwarded-proto", "https")],
    "envoy_headers": ENVOY_HEADERS,
    "request_id": [("x-request-id", NOT_V4_ID)],
}


def _to(listener: str, cluster: str, **hcm) -> Listener:
    return Listener(name=listener, hcm=hcm,
                    routes=[route("/", {"route": {"cluster": cluster}})])  # fmt: skip


def _cases(side, listener: str, cases: dict) -> dict:
    """Each case on a new connection, to /<listener>/<case>."""
    return {name: side.request(listener, "GET", f"/{listener}/{name}", headers).view()
            for name, headers in cases.items()}  # fmt: skip


def _seen(out, which: int | str) -> list[str]:
    """The header lines Envoy's upstream got: by index, or by the request's path."""
    if isinstance(which, int):
        return out.envoy.upstream[which]["headers"]
    line = f"GET {which} HTTP/1.1"
    return next(u["headers"] for u in out.envoy.upstream if u["request"] == line)


@scenario(
    _to("xff_edge", "xff", use_remote_address=True),
    _to("xff_edge_internal", "xff", use_remote_address=True, internal_address_config=INTERNAL),
    _to("xff_inner", "xff"),
    _to("xff_hops", "xff", use_remote_address=True, xff_num_trusted_hops=1),
    _to("xff_skip", "xff", use_remote_address=True, skip_xff_append=True),
    XFF,
)
def test_forwarded_headers_and_envoy_headers_by_trust(http_pair):
    listeners = ("xff_edge", "xff_edge_internal", "xff_inner", "xff_hops", "xff_skip")

    def traffic(side):
        return {listener: _cases(side, listener, CLIENT_CASES) for listener in listeners}

    out = http_pair.run(traffic)
    # Edge: with no internal_address_config no client is internal (Envoy 1.40). A client on
    # loopback makes Envoy append its own address to x-forwarded-for, and the client's address
    # goes in x-envoy-external-address.
    assert _seen(out, "/xff_edge/plain") == [
        "host: example.com", "x-forwarded-for: <host address>", "x-forwarded-proto: http",
        "x-envoy-external-address: 127.0.0.1", "x-request-id: <uuid4>",
        "x-envoy-expected-rq-timeout-ms: 15000",
    ]  # fmt: skip
    # External: Envoy's own x-envoy-* request headers go (x-envoy-foo is not one of them);
    # x-forwarded-proto is overwritten (it moves to Envoy's place).
    assert _seen(out, "/xff_edge/envoy_headers") == [
        "host: example.com", "x-envoy-foo: bar", "x-forwarded-for: <host address>",
        "x-forwarded-proto: http", "x-envoy-external-address: 127.0.0.1", "x-request-id: <uuid4>",
        "x-envoy-expected-rq-timeout-ms: 15000",
    ]  # fmt: skip
    # Internal: x-envoy-internal is set anew, the client's other x-envoy-* stay, except what
    # the router consumes (retry headers, the timeout it turns into the expected timeout).
    assert _seen(out, "/xff_edge_internal/envoy_headers") == [
        "host: example.com", "x-envoy-original-path: /forged",
        "x-envoy-expected-rq-timeout-ms: 3000", "x-envoy-foo: bar",
        "x-envoy-decorator-operation: op", "x-envoy-downstream-service-cluster: c",
        "x-forwarded-for: <host address>", "x-forwarded-proto: http", "x-envoy-internal: true",
        "x-request-id: <uuid4>",
    ]  # fmt: skip
    # Not an edge proxy: the client's x-forwarded-* pass as they are.
    assert _seen(out, "/xff_inner/xff_list") == [
        "host: example.com", "x-forwarded-for: 1.2.3.4, 10.0.0.2", "x-forwarded-proto: http",
        "x-request-id: <uuid4>", "x-envoy-expected-rq-timeout-ms: 15000",
    ]  # fmt: skip
    # One trusted hop: the client is the entry left of the last one.
    assert "x-envoy-external-address: 10.0.0.2" in _seen(out, "/xff_hops/xff_list")
    # skip_xff_append: no x-forwarded-for at all.
    assert _seen(out, "/xff_skip/plain") == [
        "host: example.com", "x-forwarded-proto: http", "x-envoy-external-address: 127.0.0.1",
        "x-request-id: <uuid4>", "x-envoy-expected-rq-timeout-ms: 15000",
    ]  # fmt: skip
    out.assert_same()


@scenario(
    _to("rid_default", "rid"),
    _to("rid_edge", "rid", use_remote_address=True),
    _to("rid_preserve", "rid", use_remote_address=True, preserve_external_request_id=True),
    _to("rid_off", "rid", generate_request_id=False),
    _to("rid_in_response", "rid", always_set_request_id_in_response=True),
    Cluster(name="rid"),
)
def test_request_id(http_pair):
    listeners = ("rid_default", "rid_edge", "rid_preserve", "rid_off", "rid_in_response")
    cases = {"none": [], "given": [("x-request-id", NOT_V4_ID)], "odd": [("x-request-id", "abc")]}

    def traffic(side):
        return {listener: _cases(side, listener, cases) for listener in listeners}

    out = http_pair.run(traffic)
    ids = [next((h for h in u["headers"] if h.startswith("x-request-id")), None)
           for u in out.envoy.upstream]  # fmt: skip
    given, odd = f"x-request-id: {NOT_V4_ID}", "x-request-id: abc"
    packed = "x-request-id: 2ed1e8a8-49ad-4c47-cd3e-3e66d7b5b7e6"
    assert ids == [
        "x-request-id: <uuid4>", given, odd,  # default: kept (not an edge proxy)
        "x-request-id: <uuid4>", "x-request-id: <uuid4>", "x-request-id: <uuid4>",  # edge
        "x-request-id: <uuid4>", packed, odd,  # preserve_external_request_id
        None, given, odd,  # generate_request_id false
        "x-request-id: <uuid4>", given, odd,
    ]  # fmt: skip
    in_response = out.envoy.result["rid_in_response"]
    assert "x-request-id: <uuid4>" in in_response["none"]["headers"]
    assert "x-request-id: abc" in in_response["odd"]["headers"]
    assert not any("x-request-id" in h for h in out.envoy.result["rid_default"]["none"]["headers"])
    out.assert_same()


@scenario(
    Listener(name="timeouts", routes=[
        route("/half", {"route": {"cluster": "timeouts", "timeout": "0.5s"}}),
        route("/none", {"route": {"cluster": "timeouts", "timeout": "0s"}}),
        route("/idle", {"route": {"cluster": "timeouts", "idle_timeout": "0.25s"}}),
        route("/", {"route": {"cluster": "timeouts"}}),
    ], hcm={"use_remote_address": True, "internal_address_config": INTERNAL}),
    Cluster(name="timeouts"),
)  # fmt: skip
def test_expected_rq_timeout_header(http_pair):
    cases = {
        "/default": [],
        "/half": [],
        "/none": [],
        "/idle": [],
        "/default/asked": [("x-envoy-upstream-rq-timeout-ms", "250")],
        "/half/asked": [("x-envoy-upstream-rq-timeout-ms", "2000")],
        "/default/per-try": [("x-envoy-upstream-rq-per-try-timeout-ms", "100")],
        "/default/bad": [("x-envoy-upstream-rq-timeout-ms", "abc")],
        "/default/expected": [("x-envoy-expected-rq-timeout-ms", "42")],
    }

    def traffic(side):
        return {path: side.request("timeouts", "GET", path, headers).view()
                for path, headers in cases.items()}  # fmt: skip

    out = http_pair.run(traffic)
    expected = {u["request"].split(" ")[1]: next((h for h in u["headers"] if "timeout" in h), None)
                for u in out.envoy.upstream}  # fmt: skip
    # The route's timeout (none: no header), or the internal client's own; a per-try
    # timeout below it; an invalid or forged value changes nothing.
    assert expected == {
        "/default": "x-envoy-expected-rq-timeout-ms: 15000",
        "/half": "x-envoy-expected-rq-timeout-ms: 500",
        "/none": None,
        "/idle": "x-envoy-expected-rq-timeout-ms: 15000",
        "/default/asked": "x-envoy-expected-rq-timeout-ms: 250",
        "/half/asked": "x-envoy-expected-rq-timeout-ms: 2000",
        "/default/per-try": "x-envoy-expected-rq-timeout-ms: 100",
        "/default/bad": "x-envoy-expected-rq-timeout-ms: 15000",
        "/default/expected": "x-envoy-expected-rq-timeout-ms: 15000",
    }
    out.assert_same()


@scenario(
    _to("envoy_headers_on", "suppress"),
    Listener(name="envoy_headers_off", router={"suppress_envoy_headers": True},
             routes=[route("/", {"route": {"cluster": "suppress", "timeout": "3s"}})]),
    Cluster(name="suppress"),
)  # fmt: skip
def test_upstream_service_time_and_suppress_envoy_headers(http_pair):
    def traffic(side):
        return [side.request(listener, "GET", "/", [("x-envoy-upstream-rq-timeout-ms", "100")])
                .view() for listener in ("envoy_headers_on", "envoy_headers_off")]  # fmt: skip

    out = http_pair.run(traffic)
    on, off = out.envoy.result
    assert "x-envoy-upstream-service-time: <ms>" in on["headers"]
    assert not any(h.startswith("x-envoy") for h in off["headers"])
    assert not any(h.startswith("x-envoy") for h in out.envoy.upstream[1]["headers"])
    out.assert_same()


@scenario(
    Listener(name="rewrites", routes=[
        route("/prefix/", {"route": {"cluster": "rewrites", "prefix_rewrite": "/rewritten/"}}),
        route("/strip", {"route": {"cluster": "rewrites", "prefix_rewrite": "/"}}),
        {"match": {"safe_regex": {"regex": "^/regex/([a-z]+)/(\\d+)$"}},
         "route": {"cluster": "rewrites", "regex_rewrite": {
             "pattern": {"regex": "^/regex/([a-z]+)/(\\d+)$"}, "substitution": "/r/\\2/\\1"}}},
        route("/literal", {"route": {"cluster": "rewrites", "host_rewrite_literal":
                                     "literal.example", "append_x_forwarded_host": True}}),
        route("/from-header", {"route": {"cluster": "rewrites",
                                         "host_rewrite_header": "x-target-host"}}),
        route("/auto-unnamed", {"route": {"cluster": "rewrites", "auto_host_rewrite": True}}),
        route("/auto", {"route": {"cluster": "rewrites_named", "auto_host_rewrite": True}}),
        route("/", {"route": {"cluster": "rewrites"}}),
    ]),
    Cluster(name="rewrites"),
    Cluster(name="rewrites_named", hostname="named.upstream.example"),
)  # fmt: skip
def test_path_and_host_rewrites(http_pair):
    requests = [
        ("/prefix/a/b?q=1", []),
        ("/strip/x", []),
        ("/strip", []),
        ("/regex/abc/42", []),
        ("/literal", [("x-forwarded-host", "earlier.example")]),
        ("/from-header", [("x-target-host", "target.example")]),
        ("/from-header", []),
        ("/auto", []),
        ("/auto-unnamed", []),
        ("/prefix/orig", [("x-envoy-original-path", "/forged")]),
    ]

    def traffic(side):
        return [side.request("rewrites", "GET", path, headers).view() for path, headers in requests]

    out = http_pair.run(traffic)
    lines = [u["request"] for u in out.envoy.upstream]
    assert lines == [
        "GET /rewritten/a/b?q=1 HTTP/1.1", "GET //x HTTP/1.1", "GET / HTTP/1.1",
        "GET /r/42/abc HTTP/1.1", "GET /literal HTTP/1.1", "GET /from-header HTTP/1.1",
        "GET /from-header HTTP/1.1", "GET /auto HTTP/1.1", "GET /auto-unnamed HTTP/1.1",
        "GET /rewritten/orig HTTP/1.1",
    ]  # fmt: skip
    assert _seen(out, 0) == [
        "host: example.com", "x-forwarded-proto: http", "x-request-id: <uuid4>",
        "x-envoy-expected-rq-timeout-ms: 15000", "x-envoy-original-path: /prefix/a/b?q=1",
    ]  # fmt: skip
    assert _seen(out, 4) == [
        "host: literal.example", "x-forwarded-host: earlier.example,example.com",
        "x-forwarded-proto: http", "x-request-id: <uuid4>",
        "x-envoy-expected-rq-timeout-ms: 15000", "x-envoy-original-host: example.com",
    ]  # fmt: skip
    hosts = [u["headers"][0] for u in out.envoy.upstream]
    assert hosts[5:9] == [
        "host: target.example", "host: example.com", "host: named.upstream.example",
        "host: example.com",
    ]  # fmt: skip
    # A client's x-envoy-original-path is overwritten where it stands.
    assert _seen(out, 9)[1] == "x-envoy-original-path: /prefix/orig"
    out.assert_same()


@scenario(
    _to("server_default", "server"),
    _to("server_named", "server", server_name="custom-server"),
    _to("server_passthrough", "server", server_header_transformation="PASS_THROUGH"),
    _to("server_append", "server", server_header_transformation="APPEND_IF_ABSENT",
        server_name="fallback-server"),
    _to("via", "server", via="proxy-via"),
    Cluster(name="server"),
)  # fmt: skip
def test_server_and_via_headers(http_pair):
    listeners = ("server_default", "server_named", "server_passthrough", "server_append", "via")

    def traffic(side):
        return {listener: [side.request(listener, "GET", path, headers).view()
                           for path, headers in (("/", []), ("/server", [("via", "1.0 a")]))]
                for listener in listeners}  # fmt: skip

    out = http_pair.run(traffic)
    servers = {
        listener: [next((h for h in r["headers"] if h.startswith("server:")), None) for r in rs]
        for listener, rs in out.envoy.result.items()
    }
    assert servers == {
        "server_default": ["server: envoy", "server: envoy"],
        "server_named": ["server: custom-server", "server: custom-server"],
        "server_passthrough": [None, "server: upstream-server"],
        "server_append": ["server: fallback-server", "server: upstream-server"],
        "via": ["server: envoy", "server: envoy"],
    }
    # via: appended to the request's (after a comma), set on the response.
    assert _seen(out, "/server") == [
        "host: example.com", "via: 1.0 a", "x-forwarded-proto: http", "x-request-id: <uuid4>",
        "x-envoy-expected-rq-timeout-ms: 15000",
    ]  # fmt: skip
    assert _seen(out, -1)[1] == "via: 1.0 a, proxy-via"
    assert _seen(out, -2)[2] == "via: proxy-via"
    assert out.envoy.result["via"][1]["headers"][-1] == "via: proxy-via"
    out.assert_same()


HOP_BY_HOP = [
    ("connection", "keep-alive, x-nominated"), ("keep-alive", "timeout=5"),
    ("proxy-connection", "keep-alive"), ("te", "trailers"), ("x-nominated", "1"),
    ("upgrade", "foo"), ("trailer", "x-t"), ("x-kept", "yes"),
]  # fmt: skip


@scenario(_to("hop", "hop"), Cluster(name="hop"))
def test_hop_by_hop_headers_both_ways(http_pair):
    def traffic(side):
        return [
            side.request("hop", "GET", "/hop", HOP_BY_HOP).view(),
            side.request("hop", "GET", "/", [("te", "gzip, trailers")]).view(),
            side.request("hop", "GET", "/", [("te", "gzip")]).view(),
            side.request("hop", "GET", "/", [("connection", "upgrade"), ("upgrade", "foo")]).view(),
        ]

    out = http_pair.run(traffic)
    # Towards the upstream: connection, the headers it nominates, keep-alive,
    # proxy-connection and upgrade go; te keeps only "trailers".
    assert _seen(out, 0) == [
        "host: example.com", "te: trailers", "trailer: x-t", "x-kept: yes",
        "x-forwarded-proto: http", "x-request-id: <uuid4>",
        "x-envoy-expected-rq-timeout-ms: 15000",
    ]  # fmt: skip
    assert "te: trailers" in _seen(out, 1)
    assert not any(h.startswith("te:") for h in _seen(out, 2))
    # Towards the client: the same headers go, but not those connection nominates.
    assert out.envoy.result[0]["headers"] == [
        "x-nominated: 1", "te: trailers", "trailer: x-t", "x-kept: yes", "content-length: 2",
        "x-envoy-upstream-service-time: <ms>", "date: <date>", "server: envoy",
    ]  # fmt: skip
    # An upgrade the route does not allow.
    assert out.envoy.result[3]["status"] == "HTTP/1.1 403 Forbidden"
    out.assert_same()


def _add(key: str, value: str, action: str | None = None) -> dict:
    return {"header": {"key": key, "value": value}, **({"append_action": action} if action else {})}


MUTATIONS_ROUTE = {
    "match": {"prefix": "/"},
    "route": {"cluster": "mutations"},
    "request_headers_to_add": [_add("x-level", "route"), _add("x-route-only", "r"),
                               _add("x-client", "route", "OVERWRITE_IF_EXISTS_OR_ADD"),
                               _add("x-protocol",
                                    "%PROTOCOL% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%")],
    "request_headers_to_remove": ["x-drop-route"],
    "response_headers_to_add": [_add("x-level", "route"),
                                _add("x-route-resp", "route", "ADD_IF_ABSENT"),
                                _add("x-upstream", "route", "OVERWRITE_IF_EXISTS")],
    "response_headers_to_remove": ["x-remove-me"],
}  # fmt: skip
MUTATIONS_VHOST = {
    "request_headers_to_add": [_add("x-level", "vhost"), _add("x-vhost-only", "v")],
    "request_headers_to_remove": ["x-drop-vhost"],
    "response_headers_to_add": [_add("x-level", "vhost"),
                                _add("x-resp-vhost", "%REQ(x-client)%")],
}  # fmt: skip
MUTATIONS_CONFIG = {
    "request_headers_to_add": [_add("x-level", "config"), _add("x-config-only", "c")],
    "request_headers_to_remove": ["x-drop-config"],
    "response_headers_to_add": [_add("x-level", "config"),
                                _add("x-status", "%RESPONSE_CODE%")],
    "response_headers_to_remove": ["x-upstream"],
}  # fmt: skip


def _mutations_listener(name: str, most_specific_wins: bool) -> Listener:
    return Listener(
        name=name,
        virtual_hosts=[{"name": name, "domains": ["*"], "routes": [MUTATIONS_ROUTE],
                        **MUTATIONS_VHOST}],
        route_config={**MUTATIONS_CONFIG,
                      "most_specific_header_mutations_wins": most_specific_wins},
    )  # fmt: skip


@scenario(
    _mutations_listener("mutations", False),
    _mutations_listener("mutations_specific", True),
    Cluster(name="mutations"),
)
def test_header_mutations_at_every_level(http_pair):
    headers = [("x-client", "client"), ("x-level", "client"), ("x-drop-route", "1"),
               ("x-drop-vhost", "1"), ("x-drop-config", "1")]  # fmt: skip

    def traffic(side):
        return [side.request(listener, "GET", "/mutate", headers).view()
                for listener in ("mutations", "mutations_specific")]  # fmt: skip

    out = http_pair.run(traffic)
    # Route, then virtual host, then route configuration (the reverse with
    # most_specific_header_mutations_wins); an overwritten header moves to the end.
    assert _seen(out, 0) == [
        "host: example.com", "x-level: client", "x-forwarded-proto: http",
        "x-request-id: <uuid4>", "x-envoy-expected-rq-timeout-ms: 15000", "x-client: route",
        "x-level: route", "x-route-only: r", "x-protocol: HTTP/1.1 127.0.0.1",
        "x-level: vhost", "x-vhost-only: v", "x-level: config", "x-config-only: c",
    ]  # fmt: skip
    assert _seen(out, 1)[5:] == [
        "x-level: config", "x-config-only: c", "x-level: vhost", "x-vhost-only: v",
        "x-client: route", "x-level: route", "x-route-only: r",
        "x-protocol: HTTP/1.1 127.0.0.1",
    ]  # fmt: skip
    # ADD_IF_ABSENT keeps the upstream's value, the route-configuration level removes what
    # the route level overwrote, and %REQ()% sees the request as mutated.
    assert out.envoy.result[0]["headers"] == [
        "x-route-resp: from-upstream", "content-type: text/plain", "content-length: 2",
        "x-envoy-upstream-service-time: <ms>", "x-level: route", "x-level: vhost",
        "x-resp-vhost: route", "x-level: config", "x-status: 200", "date: <date>",
        "server: envoy",
    ]  # fmt: skip
    out.assert_same()
