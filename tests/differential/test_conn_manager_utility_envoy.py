"""The HCM's header rules against the real Envoy 1.40.

One Envoy runs one HTTP listener per HCM configuration (use_remote_address on and off,
xff_num_trusted_hops 0/1/2, internal_address_config set or not, request ID options...), all
routing to a recording upstream that answers with the request headers it saw, as JSON.
Every request case goes through every listener; the headers the upstream saw must equal,
in order, what ``mutate_request_headers`` makes of the same request (the router's own
headers aside). Responses go the other way: the upstream sends the headers a case asks
for, and what reaches the client must equal ``mutate_response_headers`` of them.
"""

from __future__ import annotations

import json
import random
import re
import socket
import socketserver
import threading
import time

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.extensions.request_id.uuid.v3 import uuid_pb2  # noqa: F401 (for the Any below)
from google.protobuf import json_format

from legatus.http.codes import ResponseCodeStats
from legatus.http.conn_manager_utility import (
    compile_request_policy,
    mutate_request_headers,
    mutate_response_headers,
    update_authority,
)
from legatus.http.headers import HeaderMap
from legatus.stats.store import Store
from tests.support.process import envoy_command, start_proxy

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
IMF_DATE = re.compile(r"^[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT$")


# A recording upstream -------------------------------------------------------------------


def read_request(rfile) -> tuple[str, list[tuple[str, str]]] | None:
    line = rfile.readline()
    if not line:
        return None
    target = line.decode("latin-1").split(" ")[1]
    headers = []
    while (line := rfile.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip().lower(), value.strip()))
    length = int(dict(headers).get("content-length") or 0)
    if length:
        rfile.read(length)
    return target, headers


class _Handler(socketserver.StreamRequestHandler):
    """HTTP/1.1 keep-alive; the path's query picks the behaviour: ``sleep=S`` answers late,
    ``close`` closes without answering, ``garbage`` answers with a broken status line; the
    ``x-respond`` request header (a JSON list of pairs) adds response headers."""

    def handle(self) -> None:
        while (request := read_request(self.rfile)) is not None:
            target, headers = request
            if "sleep=" in target:
                time.sleep(float(target.rsplit("sleep=", 1)[1].split("&")[0]))
            if "close" in target:
                return
            if "garbage" in target:
                self.wfile.write(b"garbage\r\n\r\n")
                return
            body = json.dumps(headers).encode()
            extra = json.loads(dict(headers).get("x-respond", "[]"))
            head = [("content-type", "application/json"), ("content-length", str(len(body)))]
            lines = [f"{n}: {v}\r\n" for n, v in head + [tuple(p) for p in extra]]
            self.wfile.write(f"HTTP/1.1 200 OK\r\n{''.join(lines)}\r\n".encode() + body)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class RecordingUpstream:
    """Answers every request with the request headers it saw (a JSON list of pairs)."""

    def __init__(self) -> None:
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def send(port: int, raw: bytes, timeout: float = 5.0) -> tuple[int, list, bytes, int]:
    """One request on a new connection: (status, headers, body, the client's port)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        client_port = s.getsockname()[1]
        s.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = [
            (n.lower(), v.lstrip(" \t")) for n, _, v in (x.partition(":") for x in lines[1:])
        ]
        length = int(dict(headers).get("content-length", 0))
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(lines[0].split(" ")[1]), headers, body, client_port


def cluster(name: str, port: int) -> dict:
    endpoint = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}
    return {
        "name": name,
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": endpoint}]}]},
    }  # fmt: skip


def hcm_listener(name: str, hcm_fields: dict, routes: list, *, router: dict | None = None):
    hcm = {
        "@type": HCM + ".HttpConnectionManager",
        "stat_prefix": name,
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": ROUTER, **(router or {})},
            }
        ],
        "route_config": {
            "validate_clusters": False,
            "virtual_hosts": [{"name": "vh", "domains": ["*"], "routes": routes}],
        },
        **hcm_fields,
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager",
                          "typed_config": hcm}]}
        ],
    }  # fmt: skip


# The configurations and the requests ----------------------------------------------------

IAC = {"cidr_ranges": [
    {"address_prefix": "127.0.0.0", "prefix_len": 8},
    {"address_prefix": "10.0.0.0", "prefix_len": 8},
]}  # fmt: skip
UNPACKED = {"typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig",
    "pack_trace_reason": False,
}}  # fmt: skip
CONFIGS: dict[str, dict] = {
    "edge": {"use_remote_address": True, "internal_address_config": IAC},
    "edge_hops1": {"use_remote_address": True, "internal_address_config": IAC,
                   "xff_num_trusted_hops": 1, "append_x_forwarded_port": True},
    "edge_hops2": {"use_remote_address": True, "internal_address_config": IAC,
                   "xff_num_trusted_hops": 2},
    "edge_no_iac": {"use_remote_address": True},  # Envoy 1.40: no address is internal
    "edge_skip_append": {"use_remote_address": True, "skip_xff_append": True,
                         "internal_address_config": IAC},
    "inner": {"internal_address_config": IAC},
    "inner_hops1": {"internal_address_config": IAC, "xff_num_trusted_hops": 1,
                    "append_x_forwarded_port": True},
    "inner_no_iac": {},
    "preserve": {"use_remote_address": True, "preserve_external_request_id": True,
                 "via": "legatus-test", "append_x_forwarded_port": True, "add_user_agent": True,
                 "server_name": "custom-server"},
    "preserve_unpacked": {"use_remote_address": True, "preserve_external_request_id": True,
                          "request_id_extension": UNPACKED,
                          "server_header_transformation": "APPEND_IF_ABSENT",
                          "always_set_request_id_in_response": True},
    "no_request_id": {"generate_request_id": False, "server_header_transformation": "PASS_THROUGH",
                      "scheme_header_transformation": {"scheme_to_overwrite": "https"}},
}  # fmt: skip

STRIPPABLE = (
    "x-envoy-decorator-operation", "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node", "x-envoy-original-path", "x-envoy-original-host",
    "x-envoy-force-trace", "x-envoy-ip-tags", "x-envoy-original-url", "x-envoy-internal",
    "x-envoy-external-address", "x-envoy-attempt-count", "x-envoy-foo",
    "x-envoy-is-timeout-retry", "x-envoy-upstream-canary", "x-forwarded-client-cert",
    "x-forwarded-host", "keep-alive", "proxy-connection",
)  # fmt: skip
REFERERS = (
    "http://a/b#frag", "/relative", "http://user@a/", "a:b", "/x:y", "foo", "/a#b",
    "https://example.com/path?q=1", "/a%20b", "/a|b", "http://a:8080/p", "ftp://a/p", "//a/p",
    "http:/a", "mailto:x@y", "http://[::1]/p", "/a{b}", "?q", "http://a/|b", "http://a/b c",
    "HTTP://A/B", "http://a?x#", "http://", "h://a", "http://a b/", "http://a/%zz",
    "http://a/b#", "http://a/b#c", "http://a:b@c/", "http://a/\tb",
)  # fmt: skip
REQUESTS: dict[str, list[tuple[str, str]]] = {
    "plain": [],
    "xff_internal": [("x-forwarded-for", "10.0.0.1")],
    "xff_external": [("x-forwarded-for", "1.2.3.4")],
    "xff_two": [("x-forwarded-for", "1.2.3.4, 10.0.0.2")],
    "xff_three": [("x-forwarded-for", "1.2.3.4,10.0.0.2,10.0.0.3")],
    "xff_garbage": [("x-forwarded-for", "garbage")],
    "xff_trailing_comma": [("x-forwarded-for", "10.0.0.1,")],
    "xff_repeated": [("x-forwarded-for", "10.0.0.1"), ("x-forwarded-for", "1.2.3.4")],
    "xff_ipv6": [("x-forwarded-for", "::1")],
    "xff_v4_mapped": [("x-forwarded-for", "::ffff:10.0.0.1")],
    "xfp_https": [("x-forwarded-proto", "https")],
    "xfp_other": [("x-forwarded-proto", "ftp"), ("x-forwarded-for", "10.0.0.1")],
    "envoy_headers": [(name, "1") for name in STRIPPABLE],
    "envoy_headers_internal_xff": [("x-forwarded-for", "10.0.0.5"),
                                   *((n, "1") for n in STRIPPABLE)],
    "request_id": [("x-request-id", "abc")],
    "request_id_traced": [("x-request-id", "2ed1e8a8-49ad-9c47-9d3e-3e66d7b5b7e6")],
    "user_agent": [("user-agent", "curl/8")],
    "user_agent_empty": [("user-agent", "")],
    "te_trailers": [("te", "trailers, deflate")],
    "te_weighted": [("te", "deflate;q=0.5, trailers;q=0.2")],
    "te_upper": [("te", "TRAILERS")],
    "te_empty": [("te", "")],
    "hop_by_hop": [("connection", "close"), ("keep-alive", "timeout=5"), ("upgrade", "foo")],
    "via": [("via", "1.0 a")],
    "x_forwarded_port": [("x-forwarded-port", "9999")],
    "referer_repeated": [("referer", "/a"), ("referer", "/b")],
    **{f"referer_{i}": [("referer", value)] for i, value in enumerate(REFERERS)},
}  # fmt: skip
# Cases whose effect shows in the status, not in the headers: the upstream answers after
# 300 ms, so a timeout header left on the request turns into a 504.
SLOW_REQUESTS: dict[str, list[tuple[str, str]]] = {
    "rq_timeout": [("x-envoy-upstream-rq-timeout-ms", "1")],
    "rq_timeout_xff_internal": [("x-forwarded-for", "10.0.0.1"),
                                ("x-envoy-upstream-rq-timeout-ms", "1")],
    "stream_duration": [("x-envoy-upstream-stream-duration-ms", "1")],
}  # fmt: skip
# What the router consumes or sets: never compared.
ROUTER_HEADERS = frozenset({"x-envoy-expected-rq-timeout-ms", "x-envoy-upstream-rq-timeout-ms",
                            "x-envoy-upstream-stream-duration-ms", "x-respond"})  # fmt: skip
# Request headers of a response case (x-envoy-force-trace: echo x-request-id if internal).
RESPONSE_REQUESTS = {"force_trace": [("x-envoy-force-trace", "true")]}
RESPONSES: dict[str, list[tuple[str, str]]] = {
    "force_trace": [],
    "bare": [],
    "hop_by_hop": [("server", "upstream-srv"), ("connection", "keep-alive"),
                   ("keep-alive", "timeout=5"), ("proxy-connection", "x"), ("upgrade", "h2c"),
                   ("via", "1.1 up"), ("x-foo", "bar"), ("date", "Mon, 01 Jan 2024 00:00:00 GMT")],
}  # fmt: skip

SERVICE = ["--service-cluster", "c1", "--service-node", "n1"]


@pytest.fixture(scope="module")
def envoy(tmp_path_factory):
    upstream = RecordingUpstream()
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}]
    rewrite = [
        {
            "match": {"prefix": "/"},
            "route": {
                "cluster": "up",
                "host_rewrite_literal": "backend",
                "append_x_forwarded_host": True,
            },
        }
    ]
    config = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [hcm_listener(n, f, routes) for n, f in CONFIGS.items()]
            + [hcm_listener("host_rewrite", {}, rewrite)],
            "clusters": [cluster("up", upstream.port)],
        },
    }
    workdir = tmp_path_factory.mktemp("xff")
    proxy = start_proxy(config, workdir, command=envoy_command(), args=SERVICE)
    ports = {name: proxy.listener_port(name) for name in (*CONFIGS, "host_rewrite")}
    yield proxy, ports
    proxy.stop()
    upstream.close()


def policy_for(name: str):
    hcm = json_format.ParseDict(
        {"stat_prefix": name, **CONFIGS.get(name, {})},
        http_connection_manager_pb2.HttpConnectionManager(),
    )
    return compile_request_policy(hcm, "hcm", service_cluster="c1", service_node="n1")


def request_bytes(path: str, headers: list[tuple[str, str]]) -> bytes:
    lines = "".join(f"{n}: {v}\r\n" for n, v in headers)
    return f"GET {path} HTTP/1.1\r\nhost: example.com\r\n{lines}\r\n".encode()


def expected_view(name: str, path: str, headers, *, client_port: int, port: int):
    """What the upstream should see, by mutate_request_headers; and the mutate result."""
    request = HeaderMap([(":method", "GET"), (":path", path), (":authority", "example.com")])
    for n, v in headers:
        request.add(n, v.strip())  # the codec trims values
    result = mutate_request_headers(
        policy_for(name),
        request,
        remote_address=f"127.0.0.1:{client_port}",
        local_address=f"127.0.0.1:{port}",
        random=random.Random(0),
    )
    view = [("host", request.get(":authority"))]
    view += [(n, v) for n, v in request.items() if not n.startswith(":")]
    return view, request, result


def normalize(view, incoming: dict[str, str]) -> list[tuple[str, str]]:
    """Drop the router's headers; a newly generated x-request-id becomes <uuid4>."""
    out = []
    for n, v in view:
        if n in ROUTER_HEADERS:
            continue
        if n == "x-request-id" and v != incoming.get("x-request-id"):
            assert UUID4.match(v), v
            v = "<uuid4>"
        out.append((n, v))
    return out


charged: list[tuple[int, bool]] = []  # (status, internal) of every request cluster `up` saw


@pytest.mark.parametrize("case", sorted(REQUESTS))
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_request_headers_match_envoy(envoy, name, case):
    _, ports = envoy
    headers = REQUESTS[case]
    status, _, body, client_port = send(ports[name], request_bytes("/", headers))
    want, _, result = expected_view(name, "/", headers, client_port=client_port, port=ports[name])
    charged.append((status, result.internal))
    assert status == 200, body
    seen = [tuple(p) for p in json.loads(body)]
    incoming = dict(headers)
    assert normalize(seen, incoming) == normalize(want, incoming)


@pytest.mark.parametrize("case", ["plain", "xff_internal", "x_forwarded_host"])
def test_host_rewrite_matches_envoy(envoy, case):
    """The route's host_rewrite_literal + append_x_forwarded_host, by update_authority."""
    _, ports = envoy
    headers = [("x-forwarded-host", "a")] if case == "x_forwarded_host" else REQUESTS[case]
    status, _, body, client_port = send(ports["host_rewrite"], request_bytes("/", headers))
    _, request, _ = expected_view("host_rewrite", "/", headers, client_port=client_port,
                                  port=ports["host_rewrite"])  # fmt: skip
    charged.append((status, False))
    update_authority(request, "backend", append_x_forwarded_host=True)
    want = [("host", request.get(":authority"))]
    want += [(n, v) for n, v in request.items() if not n.startswith(":")]
    seen = [tuple(p) for p in json.loads(body)]
    assert normalize(seen, dict(headers)) == normalize(want, dict(headers))


@pytest.mark.parametrize("case", sorted(SLOW_REQUESTS))
@pytest.mark.parametrize("name", ["edge", "inner", "edge_no_iac"])
def test_timeout_headers_are_stripped_like_envoy(envoy, name, case):
    _, ports = envoy
    headers = SLOW_REQUESTS[case]
    status, _, _, client_port = send(ports[name], request_bytes("/?sleep=0.3", headers))
    _, request, result = expected_view(
        name, "/", headers, client_port=client_port, port=ports[name]
    )
    kept = any(n in request for n, _ in headers if n.startswith("x-envoy-upstream"))
    if status == 200 or case != "stream_duration":  # Envoy charges no code on UMSDR
        charged.append((status, result.internal))
    assert status == (504 if kept else 200)


@pytest.mark.parametrize("case", sorted(RESPONSES))
@pytest.mark.parametrize(
    "name", ["edge", "preserve", "preserve_unpacked", "no_request_id", "inner"]
)
def test_response_headers_match_envoy(envoy, name, case):
    _, ports = envoy
    extra = RESPONSES[case]
    request_headers = [("x-respond", json.dumps(extra)), *RESPONSE_REQUESTS.get(case, ())]
    status, got, body, _ = send(ports[name], request_bytes("/", request_headers))
    assert status == 200
    seen_request = HeaderMap([tuple(p) for p in json.loads(body)])
    charged.append((status, "x-envoy-internal" in seen_request))
    upstream = HeaderMap(
        [(":status", "200"), ("content-type", "application/json"),
         ("content-length", str(len(body))), *extra]
    )  # fmt: skip
    mutate_response_headers(policy_for(name), upstream, seen_request, date="<date>")
    want = [(n, v) for n, v in upstream.items() if not n.startswith(":")]
    got = [(n, v) for n, v in got if n != "x-envoy-upstream-service-time"]
    if dict(want).get("date") == "<date>":
        assert IMF_DATE.match(dict(got)["date"])
        got = [(n, "<date>" if n == "date" else v) for n, v in got]
    assert sorted(got) == sorted(want)  # same headers...
    assert [n for n, _ in got if n != "date"] == [n for n, _ in want if n != "date"]  # ...order


def test_upstream_code_stats_match_envoy(envoy):
    """Envoy's cluster.up.*upstream_rq_* counters are the ones ResponseCodeStats makes of the
    same (status, internal) responses (run after the other tests of this module)."""
    proxy, _ = envoy
    if not charged:
        pytest.skip("needs the traffic of the other tests")
    store = Store()
    stats = ResponseCodeStats(store.scope("cluster.up."))
    for status, internal in charged:
        stats.charge(status, internal=internal)
    pattern = re.compile(r"^cluster\.up\.((in|ex)ternal\.)?upstream_rq_(\d{3}|\dxx|completed)$")
    ours = {s.name: s.value for s in store if pattern.match(s.name)}
    theirs = {n: v for n, v in proxy.stats().items() if pattern.match(n)}
    assert theirs == ours
