"""Every row of ENVOY_LOCAL_REPLIES, replayed through the real Envoy 1.40.

Each scenario provokes one local reply (no route, no healthy upstream, refused connection,
circuit breaker, timeouts, codec errors...) on a listener set up for it. What the client
gets (status line, headers in order, body, ``connection: close``) must equal what
``render_local_reply`` + ``mutate_response_headers`` + the HTTP/1 codec's additions make of
the table row, and the access log's response flags and details must equal the row's. The
same Envoy then checks ``local_reply_config`` (mappers, text and JSON body formats, gRPC)
and the names of the HCM's stats (conn_manager_stats).
"""

from __future__ import annotations

import json
import re
import socket
import time

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from google.protobuf import json_format

from legatus.http.conn_manager_stats import (
    Http1CodecStats,
    Http2CodecStats,
    declare_conn_manager_stats,
)
from legatus.http.conn_manager_utility import compile_request_policy, mutate_response_headers
from legatus.http.headers import HeaderMap
from legatus.http.local_reply import (
    ENVOY_LOCAL_REPLIES,
    compile_local_reply_config,
    render_local_reply,
)
from legatus.stats.store import Store
from legatus.stream_info import StreamInfo, response_flags_string
from tests.differential.test_conn_manager_utility_envoy import (
    IMF_DATE,
    RecordingUpstream,
    cluster,
    hcm_listener,
)
from tests.support.process import envoy_command, start_proxy, wait_for
from tests.support.upstreams import free_port

HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
LOG_FORMAT = "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n"
INTERNAL = {"cidr_ranges": [{"address_prefix": "127.0.0.0", "prefix_len": 8}]}


def route(prefix: str, action: dict) -> dict:
    return {"match": {"prefix": prefix}, **action}


def to(cluster_name: str, **extra) -> dict:
    return {"route": {"cluster": cluster_name, **extra}}


MAIN_ROUTES = [
    route("/direct-empty", {"direct_response": {"status": 503}}),
    route("/direct", {"direct_response": {"status": 200, "body": {"inline_string": "hello"}}}),
    route("/redirect", {"redirect": {"host_redirect": "example.org"}}),
    route("/uh", to("empty")),
    route("/uf", to("dead")),
    route("/urx", to("dead", retry_policy={"retry_on": "connect-failure", "num_retries": 1})),
    route("/uo", to("overflow")),
    route("/ut", to("up", timeout="0.1s")),
    route("/nc", to("missing")),
    route("/umsdr", to("msd")),
    route("/msd", to("up", max_stream_duration={"max_stream_duration": "0.1s"})),
    route("/up", to("up")),
]
MAPPED_ROUTES = [
    route("/uh", to("empty")),
    route("/ut", to("up", timeout="0.1s")),
    route("/direct", {"direct_response": {"status": 200, "body": {"inline_string": "hello"}}}),
    route("/d403", {"direct_response": {"status": 403, "body": {"inline_string": "nope"}}}),
]
LOCAL_REPLY_CONFIG = {
    "mappers": [
        {
            "filter": {"status_code_filter": {"comparison": {
                "op": "EQ", "value": {"default_value": 503, "runtime_key": "k"}}}},
            "status_code": 502,
            "body": {"inline_string": "custom body"},
            "headers_to_add": [
                {"header": {"key": "x-mapped", "value": "%RESPONSE_CODE% %REQ(x-foo)%"},
                 "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
                {"header": {"key": "content-type", "value": "text/custom-hdr"}},
            ],
        },
        {
            "filter": {"header_filter": {"header": {"name": "x-json", "present_match": True}}},
            "body_format_override": {"json_format": {
                "code": "%RESPONSE_CODE%", "msg": "%LOCAL_REPLY_BODY%",
                "mixed": "b=%LOCAL_REPLY_BODY%!", "path": "%REQ(:PATH)%"}},
        },
        {
            "filter": {"header_filter": {"header": {"name": "x-teapot", "present_match": True}}},
            "status_code": 418,
        },
    ],
    "body_format": {
        "text_format": "[%LOCAL_REPLY_BODY%] %RESPONSE_CODE% %RESPONSE_FLAGS% "
        "%RESPONSE_CODE_DETAILS%\n",
        "content_type": "text/x-custom",
    },
}  # fmt: skip
LISTENERS = {
    # Requests from 127.0.0.1 are internal here, so x-envoy-* request headers count.
    "main": ({"use_remote_address": True, "internal_address_config": INTERNAL,
              "max_request_headers_kb": 2}, MAIN_ROUTES),
    "idle": ({"stream_idle_timeout": "0.3s"}, [route("/", to("up"))]),
    "rqtimeout": ({"request_timeout": "0.3s"}, [route("/", to("up"))]),
    "hdrtimeout": ({"request_headers_timeout": "0.3s"}, [route("/", to("up"))]),
    "mapped": ({"local_reply_config": LOCAL_REPLY_CONFIG}, MAPPED_ROUTES),
    "buffered": ({}, [route("/", to("up"))]),  # + a buffer filter of 16 bytes
    "passthrough": ({"server_header_transformation": "PASS_THROUGH", "via": "vv"},
                    [route("/", {"direct_response": {"status": 503}})]),
}  # fmt: skip


def get(path: str, headers: tuple = (), method: str = "GET", version: str = "HTTP/1.1") -> bytes:
    lines = "".join(f"{n}: {v}\r\n" for n, v in (("host", "x"), *headers))
    return f"{method} {path} {version}\r\n{lines}\r\n".encode()


UPGRADE = (("connection", "upgrade"), ("upgrade", "websocket"))
TIMEOUT_ALT = (
    ("x-envoy-upstream-rq-timeout-ms", "100"),
    ("x-envoy-upstream-rq-timeout-alt-response", "1"),
)
# scenario -> (listener, raw request); the scenario names are ENVOY_LOCAL_REPLIES' keys.
SCENARIOS: dict[str, tuple[str, bytes]] = {
    "route_not_found": ("main", get("/nomatch")),
    "cluster_not_found": ("main", get("/nc")),
    "direct_response": ("main", get("/direct")),
    "direct_response_no_body": ("main", get("/direct-empty")),
    "redirect": ("main", get("/redirect")),
    "upgrade_failed": ("main", get("/up/ws", UPGRADE)),
    "connect_not_routed": ("main", b"CONNECT example.com:443 HTTP/1.1\r\n"
                                   b"host: example.com:443\r\n\r\n"),
    "strict_check_failed": ("main", get("/up/x", (("x-envoy-max-retries", "abc"),))),
    "no_healthy_upstream": ("main", get("/uh")),
    "upstream_connection_failure": ("main", get("/uf")),
    "upstream_retry_limit_exceeded": ("main", get("/urx")),
    "upstream_overflow": ("main", get("/uo")),
    "upstream_connection_termination": ("main", get("/up/close")),
    "upstream_protocol_error": ("main", get("/up/garbage")),
    "upstream_request_timeout": ("main", get("/ut?sleep=0.5")),
    "upstream_request_timeout_alt": ("main", get("/up/?sleep=0.5", TIMEOUT_ALT)),
    "upstream_max_stream_duration": ("main", get("/umsdr?sleep=0.5")),
    "max_duration_timeout": ("main", get("/msd?sleep=0.5")),
    "stream_idle_timeout": ("idle", get("/?sleep=1")),
    "stream_idle_timeout_request_incomplete": ("idle", get("/", (("content-length", "10"),),
                                                           "POST")),
    "request_timeout": ("rqtimeout", get("/", (("content-length", "10"),), "POST")),
    "request_header_timeout": ("hdrtimeout", b"GET / HTTP/1.1\r\nhost: x\r\n"),
    "codec_error": ("main", b"GET / HTTP/1.1\r\nhost: x\r\nbad header\r\n\r\n"),
    "content_length_and_chunked": ("main", get("/up", (
        ("content-length", "3"), ("transfer-encoding", "chunked")), "POST") + b"0\r\n\r\n"),
    "headers_too_large": ("main", get("/up", (("x-big", "a" * 3000),))),
    "low_version": ("main", get("/up", version="HTTP/1.0")),
    "missing_host_header": ("main", b"GET /up HTTP/1.1\r\n\r\n"),
    "path_normalization_failed": ("main", get("/up#fragment")),
    "request_payload_too_large": ("buffered", get("/", (("content-length", "100"),), "POST")
                                  + b"a" * 100),
}  # fmt: skip


@pytest.fixture(scope="module")
def envoy(tmp_path_factory):
    upstream = RecordingUpstream()
    workdir = tmp_path_factory.mktemp("local_replies")
    log_path = workdir / "access.log"
    access_log = [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": FILE_LOG, "path": str(log_path),
        "log_format": {"text_format_source": {"inline_string": LOG_FORMAT}}}}]  # fmt: skip
    listeners = [
        hcm_listener(name, {**fields, "access_log": access_log}, routes,
                     router={"strict_check_headers": ["x-envoy-max-retries"]})
        for name, (fields, routes) in LISTENERS.items()
    ]  # fmt: skip
    buffer = {"name": "envoy.filters.http.buffer", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
        "max_request_bytes": 16}}  # fmt: skip
    listeners[list(LISTENERS).index("buffered")]["filter_chains"][0]["filters"][0][
        "typed_config"]["http_filters"].insert(0, buffer)  # fmt: skip
    msd = cluster("msd", upstream.port)
    msd["typed_extension_protocol_options"] = {HPO: {
        "@type": "type.googleapis.com/" + HPO,
        "common_http_protocol_options": {"max_stream_duration": "0.1s"},
        "explicit_http_config": {"http_protocol_options": {}}}}  # fmt: skip
    overflow = cluster("overflow", upstream.port)
    overflow["circuit_breakers"] = {"thresholds": [
        {"max_requests": 0, "max_pending_requests": 0, "max_connections": 0}]}  # fmt: skip
    config = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": listeners, "clusters": [
            cluster("up", upstream.port), cluster("dead", free_port()), msd, overflow,
            {"name": "empty", "connect_timeout": "1s",
             "load_assignment": {"cluster_name": "empty"}},
        ]},
    }  # fmt: skip
    args = ["--file-flush-interval-msec", "20"]
    proxy = start_proxy(config, workdir, command=envoy_command(), args=args)
    ports = {name: proxy.listener_port(name) for name in LISTENERS}
    yield proxy, ports, log_path
    proxy.stop()
    upstream.close()


def exchange(port: int, raw: bytes, timeout: float = 5.0):
    """(status, headers, body, client port): reads to the end of the first response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        client_port = s.getsockname()[1]
        s.sendall(raw)
        data = b""
        while True:
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                lines = head.decode("latin-1").split("\r\n")
                headers = [
                    (n.lower(), v.lstrip(" \t"))
                    for n, _, v in (x.partition(":") for x in lines[1:])
                ]
                length = int(dict(headers).get("content-length", 0))
                if len(body) >= length or b"HEAD" in raw[:5]:
                    status = int(lines[0].split(" ")[1])
                    return status, headers, body[:length], client_port
            chunk = s.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed after {data!r}")
            data += chunk  # fmt: skip


def logged(log_path, client_port: int) -> tuple[str, str]:
    """(response flags, details) of the access-log line of the client's connection."""

    def find():
        text = log_path.read_text() if log_path.exists() else ""
        for line in text.splitlines():
            address, flags, details = line.split(" ", 2)
            if address == f"127.0.0.1:{client_port}":
                return flags, details
        return None

    return wait_for(find, timeout=5, what=f"the access log line of port {client_port}")


def request_map(raw: bytes) -> HeaderMap:
    """What the codec makes of a raw request: pseudo-headers first, then the headers."""
    lines = raw.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ")
    headers = HeaderMap([(":method", method), (":path", target)])
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers.add(name.lower(), value.strip())
    return headers


def policy_for(listener: str):
    fields = LISTENERS[listener][0]
    hcm = http_connection_manager_pb2.HttpConnectionManager()
    header_fields = {k: v for k, v in fields.items() if k != "local_reply_config"}
    json_format.ParseDict({"stat_prefix": listener, **header_fields}, hcm)
    return compile_request_policy(hcm, "hcm")


def wire_headers(reply, request: HeaderMap, listener: str, *, config=None, info=None):
    """The headers the client gets: render + the HCM's response mutation + the codec's."""
    headers, body = render_local_reply(reply, request_headers=request, info=info, config=config)
    mutate_response_headers(policy_for(listener), headers, request, date="<date>")
    out = [(n, v) for n, v in headers.items() if not n.startswith(":")]
    if reply.close_connection or reply.status == 400:  # (Envoy closes after any 400)
        out.append(("connection", "close"))
    status = int(headers.get(":status"))
    if "content-length" not in headers and status not in (204, 304):
        out.append(("content-length", "0"))
    return status, out, body


def normalized_date(headers):
    out = []
    for n, v in headers:
        if n == "date":
            assert IMF_DATE.match(v), v
            v = "<date>"
        out.append((n, v))
    return out


def test_every_table_row_has_a_scenario():
    assert set(SCENARIOS) == set(ENVOY_LOCAL_REPLIES)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_local_reply_matches_envoy(envoy, name):
    _, ports, log_path = envoy
    listener, raw = SCENARIOS[name]
    reply = ENVOY_LOCAL_REPLIES[name]
    status, headers, body, client_port = exchange(ports[listener], raw)
    want_status, want_headers, want_body = wire_headers(reply, request_map(raw), listener)
    assert (status, body.decode()) == (want_status, want_body.decode())
    assert normalized_date(headers) == want_headers
    flags, details = logged(log_path, client_port)
    # Envoy 1.40 lists flags in the order they were set (URX,UF): compare them as sets.
    want_flags = response_flags_string(reply.flags)
    assert (set(flags.split(",")), details) == (set(want_flags.split(",")), reply.details)


VARIANTS = {
    # (listener, request, table row)
    "head": ("main", get("/uh", method="HEAD"), "no_healthy_upstream"),
    "grpc": ("main", get("/uh", (("content-type", "application/grpc"), ("content-length", "0")),
                         "POST"), "no_healthy_upstream"),
    "grpc_not_found": ("main", get("/nomatch", (("content-type", "application/grpc+proto"),
                                                ("content-length", "0")), "POST"),
                       "route_not_found"),
    "passthrough_via": ("passthrough", get("/"), "direct_response_no_body"),
    "mapped_status_body_headers": ("mapped", get("/uh", (("x-foo", "bar"),)),
                                   "no_healthy_upstream"),
    "mapped_default_format": ("mapped", get("/nomatch"), "route_not_found"),
    "mapped_json": ("mapped", get("/ut?sleep=0.5", (("x-json", "1"),)), "upstream_request_timeout"),
    "mapped_grpc": ("mapped", get("/uh", (("content-type", "application/grpc"),
                                          ("content-length", "0")), "POST"), "no_healthy_upstream"),
    "mapped_grpc_json": ("mapped", get("/ut?sleep=0.5", (
        ("x-json", "1"), ("content-type", "application/grpc"), ("content-length", "0")), "POST"),
        "upstream_request_timeout"),
    "mapped_direct": ("mapped", get("/direct"), "direct_response"),
    "mapped_teapot": ("mapped", get("/d403", (("x-teapot", "1"),)), "direct_response"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(VARIANTS))
def test_local_reply_variants_match_envoy(envoy, name):
    """HEAD, gRPC, server/via options and local_reply_config on the same replies."""
    _, ports, log_path = envoy
    listener, raw, row = VARIANTS[name]
    reply = ENVOY_LOCAL_REPLIES[row]
    if name == "mapped_teapot":
        reply = type(reply)(status=403, body="nope", details=reply.details)
    config = None
    if listener == "mapped":
        proto = json_format.ParseDict(
            LOCAL_REPLY_CONFIG, http_connection_manager_pb2.LocalReplyConfig()
        )
        config = compile_local_reply_config(proto, "local_reply_config", None)
    info = StreamInfo(now_monotonic=0.0)
    info.set_flag(reply.flags)  # the router flags its replies before sending them
    status, headers, body, client_port = exchange(ports[listener], raw)
    want_status, want_headers, want_body = wire_headers(
        reply, request_map(raw), listener, config=config, info=info
    )
    assert (status, body.decode()) == (want_status, want_body.decode())
    assert normalized_date(headers) == want_headers
    logged(log_path, client_port)  # (one log line per request, as for any other)


def _all_stat_names(proxy) -> set[str]:
    status, body = proxy.admin("/stats?format=json")
    assert status == 200
    names = set()
    for entry in json.loads(body)["stats"]:
        if "name" in entry:
            names.add(entry["name"])
        for h in entry.get("histograms", {}).get("computed_quantiles", []):
            names.add(h["name"])
    return names


def test_conn_manager_stat_names_match_envoy(envoy):
    proxy, ports, _ = envoy
    # An HTTP/2 connection (prior knowledge) makes Envoy declare the http2.* codec stats.
    with socket.create_connection(("127.0.0.1", ports["idle"]), timeout=5) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        s.recv(1024)
    time.sleep(0.2)
    theirs = _all_stat_names(proxy)
    store = Store()
    root = store.scope("")
    listener = "listener.127.0.0.1_0."  # Envoy names it by the configured address
    declare_conn_manager_stats(root, "main", listener_prefix=listener)
    Http1CodecStats(root.scope("http1."))
    Http2CodecStats(root.scope("http2."))
    ours = {stat.name for stat in store}
    pattern = re.compile(rf"^(http\.main\.|{re.escape(listener)}http\.main\.|http1\.|http2\.)")
    theirs = {n for n in theirs if pattern.match(n)}
    assert theirs == ours
