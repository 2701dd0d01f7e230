"""The connection manager's ``access_log_options`` and ``%ACCESS_LOG_TYPE%``, Envoy 1.40
against legatus: which entries each stream writes (``DownstreamStart`` once its headers are
evaluated, ``DownstreamPeriodic`` every interval, ``DownstreamTunnelSuccessfullyEstablished``
on a 101 or a CONNECT's 200, then ``DownstreamEnd``), what they show at that point (no
response code yet, the route but no upstream host at the start...), ``log_type_filter``,
the type other places log (tcp_proxy, a listener, the admin) and the configuration errors.
Each access log here also writes ``%ACCESS_LOG_TYPE%`` (``TypedLogListener``)."""

from __future__ import annotations

import json
import re
import socket
import time
from dataclasses import dataclass

import pytest

from tests.differential.http_scenario import (  # noqa: F401 (fixtures)
    FILE_LOG,
    HCM,
    ROUTER,
    Cluster,
    Listener,
    Reply,
    hcm_bootstrap,
    http_pair_fixture,
    http_pair_processes_fixture,
    http_request,
    route,
    scenario,
)
from tests.differential.test_http2_envoy import GET, H2Client
from tests.differential.test_validate_verdicts import envoy_validate, legatus_validate
from tests.differential.tunnel_scenario import (  # noqa: F401 (fixture)
    ending,
    read_exactly,
    read_head,
    tunnel_pair_fixture,
)
from tests.support.process import envoy_command, legatus_command, start_proxy
from tests.support.upstreams import EchoServer


@dataclass(frozen=True, kw_only=True)
class TypedLogListener(Listener):
    """A Listener whose access log also writes ``%ACCESS_LOG_TYPE%`` (and, with
    ``log_filter``, has that filter)."""

    log_filter: dict | None = None

    def typed_config(self, log_path):
        config = super().typed_config(log_path)
        access_log = config["access_log"][0]
        log_format = access_log["typed_config"]["log_format"]
        log_format["json_format"] = {**log_format["json_format"], "type": "%ACCESS_LOG_TYPE%"}
        if self.log_filter is not None:
            access_log["filter"] = self.log_filter
        return config


SCRIPTS = {"/slow": Reply(delay=0.4)}


def _types(log: list[dict]) -> list[tuple]:
    return [(e["type"], e["path"], e["code"]) for e in log]


# DownstreamStart ---------------------------------------------------------------------------

START_ROUTES = [
    route("/ok", {"route": {"cluster": "alo_start"}}, name="ok"),
    route("/direct", {"direct_response": {"status": 200, "body": {"inline_string": "d"}}}),
]
START = TypedLogListener(
    name="alo_start",
    routes=START_ROUTES,
    hcm={"access_log_options": {"flush_access_log_on_new_request": True}},
)


@scenario(START, Cluster(name="alo_start"))
def test_an_entry_when_the_request_headers_are_evaluated(http_pair):
    def traffic(side):
        out = []
        with side.connect("alo_start") as client:
            out.append(client.request("GET", "/ok").view())
            out.append(client.request("POST", "/ok", body=b"payload").view())
            out.append(client.request("GET", "/direct").view())
            out.append(client.request("GET", "/nowhere").view())  # 404, no route
        out.append(side.request("alo_start", "GET", "/ok", host=None).view())  # no host: 400
        upgrade = [("connection", "upgrade"), ("upgrade", "websocket")]
        out.append(side.request("alo_start", "GET", "/ok", upgrade).view())  # refused: 403
        return out

    out = http_pair.run(traffic)
    assert _types(out.envoy.log) == [
        ("DownstreamStart", "/ok", 0), ("DownstreamEnd", "/ok", 200),
        ("DownstreamStart", "/ok", 0), ("DownstreamEnd", "/ok", 200),
        ("DownstreamStart", "/direct", 0), ("DownstreamEnd", "/direct", 200),
        ("DownstreamStart", "/nowhere", 0), ("DownstreamEnd", "/nowhere", 404),
        ("DownstreamEnd", "/ok", 400),  # answered before the headers were evaluated
        ("DownstreamStart", "/ok", 0), ("DownstreamEnd", "/ok", 403),
    ]  # fmt: skip
    first = out.envoy.log[0]
    assert (first["route"], first["cluster"], first["upstream"]) == ("ok", "alo_start", None)
    out.assert_same()


# DownstreamPeriodic ------------------------------------------------------------------------

PERIODIC = TypedLogListener(
    name="alo_periodic", hcm={"access_log_options": {"access_log_flush_interval": "0.15s"}}
)
DEPRECATED = TypedLogListener(
    name="alo_deprecated",
    hcm={"flush_access_log_on_new_request": True, "access_log_flush_interval": "0.15s"},
)


@scenario(PERIODIC, Cluster(name="alo_periodic"))
def test_periodic_entries_while_a_stream_lasts(http_pair):
    def traffic(side):
        with side.connect("alo_periodic") as client:
            return [client.request("GET", "/slow").view(), client.request("GET", "/").view()]

    out = http_pair.run(traffic)
    assert _types(out.envoy.log) == [
        ("DownstreamPeriodic", "/slow", 0), ("DownstreamPeriodic", "/slow", 0),
        ("DownstreamEnd", "/slow", 200), ("DownstreamEnd", "/", 200),
    ]  # fmt: skip
    out.assert_same()


@scenario(DEPRECATED, Cluster(name="alo_deprecated"))
def test_the_deprecated_fields_of_the_connection_manager(http_pair):
    out = http_pair.run(lambda side: [side.request("alo_deprecated", "GET", "/slow").view()])
    assert [e["type"] for e in out.envoy.log] == [
        "DownstreamStart", "DownstreamPeriodic", "DownstreamPeriodic", "DownstreamEnd",
    ]  # fmt: skip
    out.assert_same()


H2 = TypedLogListener(
    name="alo_h2",
    hcm={"codec_type": "HTTP2", "access_log_options": {
        "flush_access_log_on_new_request": True, "access_log_flush_interval": "0.15s"}},
)  # fmt: skip


@scenario(H2, Cluster(name="alo_h2"))
def test_over_http2(http_pair):
    def traffic(side):
        with H2Client(side, "alo_h2") as client:
            client.request([*GET, (":path", "/slow")])
            client.request([*GET, (":path", "/")])
            client.wait()
            return client.view()

    out = http_pair.run(traffic)
    assert sorted(_types(out.envoy.log)) == sorted([
        ("DownstreamStart", "/slow", 0), ("DownstreamStart", "/", 0), ("DownstreamEnd", "/", 200),
        ("DownstreamPeriodic", "/slow", 0), ("DownstreamPeriodic", "/slow", 0),
        ("DownstreamEnd", "/slow", 200),
    ])  # fmt: skip
    # The two streams reach the upstream in either order, over one connection or two.
    out.assert_same("result", "log", "stats", "histograms")
    assert _requests(out.envoy) == _requests(out.legatus)


def _requests(observation) -> list[tuple]:
    return sorted((r["request"], tuple(r["headers"]), r["body"]) for r in observation.upstream)


# log_type_filter, and the type outside an access log ---------------------------------------

FILTERED = TypedLogListener(
    name="alo_filtered",
    hcm={
        "access_log_options": {"flush_access_log_on_new_request": True},
        "local_reply_config": {"body_format": {"text_format": "[%ACCESS_LOG_TYPE%]"}},
    },
    routes=[route("/ok", {"route": {"cluster": "alo_filtered"}})],
    log_filter={"log_type_filter": {"types": ["DownstreamEnd"], "exclude": True}},
)


@scenario(FILTERED, Cluster(name="alo_filtered"))
def test_log_type_filter_and_the_type_of_a_local_reply_body(http_pair):
    def traffic(side):
        return [side.request("alo_filtered", "GET", p).view() for p in ("/ok", "/nowhere")]

    out = http_pair.run(traffic)
    assert [e["type"] for e in out.envoy.log] == ["DownstreamStart", "DownstreamStart"]
    assert out.envoy.result[1]["body"] == "[NotSet]"
    out.assert_same()


# DownstreamTunnelSuccessfullyEstablished (the tunnel harness) ------------------------------

TUNNEL_ROUTES = [
    {"match": {"connect_matcher": {}}, "route": {
        "cluster": "alo_echo", "upgrade_configs": [
            {"upgrade_type": "CONNECT", "connect_config": {}}]}},
    route("/", {"route": {"cluster": "alo_tunnel"}}),
]  # fmt: skip
LISTENERS = [
    TypedLogListener(name="alo_ws", routes=TUNNEL_ROUTES, hcm={
        "upgrade_configs": [{"upgrade_type": "websocket"}, {"upgrade_type": "CONNECT"}],
        "access_log_options": {"flush_log_on_tunnel_successfully_established": True}}),
]  # fmt: skip
CLUSTERS = {"alo_tunnel": "tunnel", "alo_echo": "echo"}
_UPGRADE = (
    b"GET /ws HTTP/1.1\r\nhost: example.com\r\nconnection: Upgrade\r\nupgrade: websocket\r\n"
    b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
)


def test_an_entry_when_a_tunnel_is_established(tunnel_pair):
    def traffic(side):
        out = []
        with side.connect("alo_ws") as s:
            s.sendall(_UPGRADE)
            out.append(read_head(s))
            s.sendall(b"ping")
            out.append(read_exactly(s, 4))
        time.sleep(0.2)
        with side.connect("alo_ws") as s:
            s.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n")
            out.append(read_head(s))
            s.sendall(b"ping")
            out.append(read_exactly(s, 4))
        time.sleep(0.2)
        with side.connect("alo_ws") as s:  # the upstream refuses: no tunnel
            s.sendall(_UPGRADE.replace(b"/ws", b"/status/404"))
            out.append(read_head(s))
            out.append(read_exactly(s, 4))
            out.append(ending(s))
        return out

    out = tunnel_pair.run(traffic, ["alo_ws"], ["alo_tunnel", "alo_echo"])
    assert [(e["type"], e["code"], e["details"]) for e in out.envoy.log] == [
        ("DownstreamTunnelSuccessfullyEstablished", 101, "via_upstream"),
        ("DownstreamEnd", 101, "downstream_remote_disconnect"),
        ("DownstreamTunnelSuccessfullyEstablished", 200, "via_upstream"),
        ("DownstreamEnd", 200, "downstream_remote_disconnect"),
        ("DownstreamEnd", 404, "via_upstream"),
    ]  # fmt: skip
    out.assert_same()


# The type of the other places that log ----------------------------------------------------

_TYPE_LOG = {"text_format_source": {"inline_string": "%ACCESS_LOG_TYPE% %RESPONSE_FLAGS%\n"}}


def _typed_log(path) -> list[dict]:
    return [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": FILE_LOG, "path": str(path), "log_format": _TYPE_LOG}}]  # fmt: skip


def _places_bootstrap(log_dir, echo_port: int) -> dict:
    tcp = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
    endpoint = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": echo_port}}}
    http = {"@type": HCM, "stat_prefix": "places", "access_log": _typed_log(log_dir / "hcm.log"),
            "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
            "http_filters": [{"name": "envoy.filters.http.router",
                              "typed_config": {"@type": ROUTER}}]}  # fmt: skip
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                  "access_log": _typed_log(log_dir / "admin.log")},
        "static_resources": {
            "listeners": [
                {"name": "tcp", "access_log": _typed_log(log_dir / "listener.log"),
                 "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                 "filter_chains": [{"filters": [{
                     "name": "envoy.filters.network.tcp_proxy", "typed_config": {
                         "@type": tcp, "stat_prefix": "tcp", "cluster": "echo",
                         "access_log": _typed_log(log_dir / "tcp.log")}}]}]},
                {"name": "http", "address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": 0}},
                 "filter_chains": [{"filters": [{
                     "name": "envoy.filters.network.http_connection_manager",
                     "typed_config": http}]}]},
            ],
            "clusters": [{"name": "echo", "connect_timeout": "1s", "load_assignment": {
                "cluster_name": "echo", "endpoints": [{"lb_endpoints": [{
                    "endpoint": endpoint}]}]}}],
        },
    }  # fmt: skip


def _log_types_of_the_places(command, log_dir, echo_port: int) -> dict[str, list[str]]:
    args = ["--concurrency", "1", "--file-flush-interval-msec", "10"]
    if command == legatus_command():
        args.append("--use-dynamic-base-id")
    proxy = start_proxy(_places_bootstrap(log_dir, echo_port), log_dir, command=command, args=args)
    try:
        with socket.create_connection(("127.0.0.1", proxy.listener_port("tcp"))) as s:
            s.sendall(b"hi")
            s.recv(16)
        with socket.create_connection(("127.0.0.1", proxy.listener_port("http"))) as s:
            s.sendall(http_request("GET", "/", headers=[("connection", "close")]))
            while s.recv(4096):
                pass
        proxy.admin("/ready")
        time.sleep(0.5)
    finally:
        proxy.stop()
    names = ("tcp.log", "listener.log", "hcm.log", "admin.log")  # (admin: every request)
    return {n: sorted(set((log_dir / n).read_text().splitlines())) for n in names}


def test_the_type_each_place_logs(tmp_path):
    echo = EchoServer()
    try:
        envoy = _log_types_of_the_places(envoy_command(), tmp_path / "envoy", echo.port)
        legatus = _log_types_of_the_places(legatus_command(), tmp_path / "legatus", echo.port)
    finally:
        echo.close()
    assert envoy == {
        "tcp.log": ["TcpConnectionEnd -"], "listener.log": ["NotSet -"],
        "hcm.log": ["DownstreamEnd -"], "admin.log": ["DownstreamEnd -"],
    }  # fmt: skip
    assert legatus == envoy


# Configuration -----------------------------------------------------------------------------

_CONFIGS = {
    "interval_and_options": {"access_log_flush_interval": "1s", "access_log_options": {}},
    "start_and_options": {
        "flush_access_log_on_new_request": True,
        "access_log_options": {"access_log_flush_interval": "1s"},
    },
    "interval_under_1ms": {"access_log_options": {"access_log_flush_interval": "0.0005s"}},
    "deprecated_interval_under_1ms": {"access_log_flush_interval": "0.0001s"},
    "type_takes_no_length": {"access_log": [{"name": "envoy.access_loggers.stdout",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.stream"
                         ".v3.StdoutAccessLog", "log_format": {
                             "text_format_source": {"inline_string": "%ACCESS_LOG_TYPE:3%"}}}}]},
}  # fmt: skip


@pytest.mark.parametrize("name", list(_CONFIGS))
def test_configuration_errors(name, tmp_path):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(hcm_bootstrap(_CONFIGS[name])))
    envoy, legatus = envoy_validate(path), legatus_validate(path)
    assert envoy.code == 1, envoy.output[-2000:]
    assert legatus.code == envoy.code, legatus.output[-2000:]
    message = re.search(r"error initializing configuration '[^']*': (.*)", envoy.output)
    assert message is not None, envoy.output[-2000:]
    text = message.group(1).strip()
    if "Proto constraint validation failed" in envoy.output:  # PGV: its last cause
        text = re.findall(r"ValidationError\.\w+: ([^)|\n]*)", envoy.output)[-1].strip()
    assert text in legatus.output, (text, legatus.output[-2000:])
