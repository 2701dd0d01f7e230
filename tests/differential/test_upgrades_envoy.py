"""WebSocket upgrades and CONNECT over HTTP/1.1, Envoy 1.40 against legatus.

Each test drives the same connections through both proxies (tunnel_scenario.py) and compares
the bytes the client reads, the request heads the upstream sees, the access log (code, flags,
details, bytes, upstream) and the stats of its listeners and clusters
(``downstream_cx_upgrades_*``, ``downstream_rq_ws_on_non_ws_route``, ``upstream_cx_*``,
``upstream_rq_*``...). The Envoy side is also checked literally where the behaviour is the
point of the test, so that the harness cannot compare two wrong answers.
"""

from __future__ import annotations

import json
import re
import socket
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.differential.http_scenario import HCM, ROUTER, Listener
from tests.differential.test_validate_verdicts import envoy_validate, legatus_validate
from tests.differential.tunnel_scenario import (  # noqa: F401 (fixture)
    cluster,
    ending,
    read_exactly,
    read_head,
    timed,
    tunnel_pair_fixture,
)

WEBSOCKET = [{"upgrade_type": "websocket"}]
FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"


def _route(prefix: str, cluster: str, **action) -> dict:
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster, **action}}


def _connect_route(cluster: str, header: str | None = None, **action) -> dict:
    match: dict = {"connect_matcher": {}}
    if header:
        match["headers"] = [{"name": "x-target", "string_match": {"exact": header}}]
    return {"match": match, "route": {"cluster": cluster, **action}}


TERMINATE = [{"upgrade_type": "CONNECT", "connect_config": {}}]
LISTENERS = [
    Listener(name="ws", hcm={"upgrade_configs": WEBSOCKET}, routes=[
        _route("/t", "ws_up", timeout="0.5s"),
        _route("/idle", "ws_up", idle_timeout="0.5s"),
        _route("/off", "ws_up", upgrade_configs=[{"upgrade_type": "WebSocket", "enabled": False}]),
        _route("/", "ws_up"),
    ]),
    Listener(name="wsreal", hcm={"upgrade_configs": WEBSOCKET},
             routes=[_route("/", "ws_real")]),
    Listener(name="noup", routes=[
        _route("/on", "noup_up", upgrade_configs=WEBSOCKET),
        _route("/", "noup_up"),
    ]),
    Listener(name="filters", hcm={"upgrade_configs": [
        {"upgrade_type": "websocket", "filters": [
            {"name": "envoy.filters.http.fault", "typed_config": {
                "@type": FAULT, "abort": {"http_status": 418, "percentage": {"numerator": 100}}}},
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]}]},
        routes=[_route("/", "filt_up")]),
    Listener(name="connect", hcm={"upgrade_configs": [{"upgrade_type": "CONNECT"}]}, routes=[
        _connect_route("c_proxy", "proxy"),
        _connect_route("c_refused", "refused", upgrade_configs=TERMINATE),
        _connect_route("c_echo", upgrade_configs=TERMINATE),
        _route("/post", "c_echo", upgrade_configs=[
            {"upgrade_type": "CONNECT", "connect_config": {"allow_post": True}}]),
    ]),
]  # fmt: skip
CLUSTERS = {
    "ws_up": "tunnel",
    "ws_real": "websocket",
    "noup_up": "tunnel",
    "filt_up": "tunnel",
    "c_proxy": "tunnel",
    "c_refused": "refused",
    "c_echo": "echo",
}


def _upgrade(path: str, kind: str = "websocket", extra: str = "") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nhost: example.com\r\nconnection: Upgrade\r\nupgrade: {kind}\r\n"
        f"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n"
        f"{extra}\r\n"
    ).encode()


def _connect_request(authority: str = "example.com:443", target: str | None = None) -> bytes:
    extra = f"x-target: {target}\r\n" if target else ""
    return f"CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n{extra}\r\n".encode()


def _reply(side, listener: str, request: bytes) -> list:
    """A refusal or a plain answer: its head, its body (content-length), how it ends."""
    with side.connect(listener) as s:
        s.sendall(request)
        head = read_head(s)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        return [head, read_exactly(s, length), ending(s)]


# WebSocket ---------------------------------------------------------------------------------


def test_websocket_upgrade_both_ways(tunnel_pair):
    def traffic(side):
        out = []
        with side.connect("ws") as s:
            s.sendall(_upgrade("/ws/peek") + b"early")  # before the 101: held until it comes
            out.append(read_head(s))
            out.append(read_exactly(s, 5))
            s.sendall(b"hello")
            out.append(read_exactly(s, 5))
        with side.connect("ws") as s:  # the client's FIN ends the tunnel (no half-close)
            s.sendall(_upgrade("/ws"))
            out.append(read_head(s))
            s.sendall(b"ping")
            out.append(read_exactly(s, 4))
            s.shutdown(socket.SHUT_WR)
            out.append(ending(s))
        return out

    out = tunnel_pair.run(traffic, ["ws"], ["ws_up"])
    head = out.envoy.result[0].split("\r\n")
    assert head[:6] == [
        "HTTP/1.1 101 Switching Protocols", "connection: Upgrade", "upgrade: websocket",
        "sec-websocket-accept: <key>", "x-upstream: yes", "date: <date>",
    ]  # fmt: skip
    assert out.envoy.result[1:3] == ["early", "hello"]
    assert out.envoy.result[-1] == "closed"
    # The upstream sees the upgrade headers; no x-envoy-upstream-service-time comes back.
    assert "connection: Upgrade" in out.envoy.upstream[0]
    assert "upgrade: websocket" in out.envoy.upstream[0]
    assert out.envoy.upstream[0][-1] == "<before the answer: b''>"  # the payload waited
    assert out.envoy.stats["http.ws.downstream_cx_upgrades_total"] == 2
    assert [(e["code"], e["flags"], e["rx"], e["tx"]) for e in out.envoy.log] == [
        (101, "DC", 10, 10), (101, "DC", 4, 4)
    ]  # fmt: skip
    out.assert_same()


def test_websockets_client_messages_and_close(tunnel_pair):
    def traffic(side):
        url = f"ws://127.0.0.1:{side.ports['wsreal']}/echo"
        got = []
        with connect(url, compression=None, close_timeout=5) as client:
            client.send("text message")
            got.append(client.recv(timeout=5))
            client.send(b"\x00binary\xff" * 10000)
            got.append(len(client.recv(timeout=5)))
            client.close(1000, "bye")
            got.append(client.close_code)
        url = f"ws://127.0.0.1:{side.ports['wsreal']}/close"
        with connect(url, compression=None, close_timeout=5) as client:
            client.send("last")
            got.append(client.recv(timeout=5))
            try:
                client.recv(timeout=5)
            except ConnectionClosed as e:
                got.append((e.rcvd.code, e.rcvd.reason))
        return got

    out = tunnel_pair.run(traffic, ["wsreal"], ["ws_real"])
    assert out.envoy.result == ["text message", 80000, 1000, "last", [4000, "bye"]]
    out.assert_same()


def test_refused_upgrades(tunnel_pair):
    def traffic(side):
        return [
            _reply(side, "noup", _upgrade("/")),  # not enabled: 403
            _reply(side, "noup", _connect_request()),  # no CONNECT route: 404
            _reply(side, "noup", _upgrade("/on", "foo")),  # the route enables websocket only
            _reply(side, "ws", _upgrade("/off")),  # the route disables what the HCM enables
        ]

    out = tunnel_pair.run(traffic, ["noup", "ws"], ["noup_up", "ws_up"])
    assert [r[0].split("\r\n")[0] for r in out.envoy.result] == [
        "HTTP/1.1 403 Forbidden", "HTTP/1.1 404 Not Found", "HTTP/1.1 403 Forbidden",
        "HTTP/1.1 403 Forbidden",
    ]  # fmt: skip
    assert out.envoy.stats["http.noup.downstream_rq_ws_on_non_ws_route"] == 2
    assert out.envoy.stats["http.ws.downstream_rq_ws_on_non_ws_route"] == 1
    assert out.envoy.upstream == []
    out.assert_same()


def test_a_route_enables_an_upgrade_the_connection_manager_does_not(tunnel_pair):
    def traffic(side):
        with side.connect("noup") as s:
            s.sendall(_upgrade("/on"))
            head = read_head(s)
            s.sendall(b"tunnel")
            return [head, read_exactly(s, 6)]

    out = tunnel_pair.run(traffic, ["noup"], ["noup_up"])
    assert out.envoy.result[0].startswith("HTTP/1.1 101 ")
    assert out.envoy.stats["http.noup.downstream_cx_upgrades_total"] == 1
    out.assert_same()


def test_answers_other_than_101(tunnel_pair):
    def traffic(side):
        return [_reply(side, "ws", _upgrade(f"/ws/status/{code}")) for code in (200, 302, 404, 503)]

    out = tunnel_pair.run(traffic, ["ws"], ["ws_up"])
    # A 2xx or 3xx fails the handshake: its status and headers, no body; 4xx/5xx pass.
    assert out.envoy.result[0][0].split("\r\n")[:3] == [
        "HTTP/1.1 200 OK", "x-upstream: yes", "date: <date>"
    ]  # fmt: skip
    assert out.envoy.result[0][1] == ""
    assert out.envoy.result[2][1] == "body"
    assert [e["details"] for e in out.envoy.log] == [
        "websocket_handshake_unsuccessful", "websocket_handshake_unsuccessful", "via_upstream",
        "via_upstream",
    ]  # fmt: skip
    out.assert_same()


def test_the_route_timeout_runs_until_the_101(tunnel_pair):
    def traffic(side):
        slow = _reply(side, "ws", _upgrade("/t/delay/1"))
        with side.connect("ws") as s:
            s.sendall(_upgrade("/t"))
            head = read_head(s)
            time.sleep(0.8)  # past the route timeout: the tunnel stays
            s.sendall(b"later")
            return [slow, head, read_exactly(s, 5)]

    out = tunnel_pair.run(traffic, ["ws"], ["ws_up"])
    assert out.envoy.result[0][0].startswith("HTTP/1.1 504 Gateway Timeout")
    assert out.envoy.result[2] == "later"
    assert [(e["code"], e["flags"]) for e in out.envoy.log] == [(504, "UT"), (101, "DC")]
    out.assert_same()


def test_idle_timeouts_end_a_tunnel(tunnel_pair):
    def traffic(side):
        with side.connect("ws") as s:
            s.sendall(_upgrade("/idle"))
            head = read_head(s)
            # The stream ends at the idle timeout; the connection after the delayed close.
            return [head, *timed(lambda: ending(s), 1.2, 2.5)]

    out = tunnel_pair.run(traffic, ["ws"], ["ws_up"], durations=True)
    assert out.envoy.result[1:] == ["closed", "in bounds"]
    (entry,) = out.envoy.log
    assert (entry["code"], entry["flags"], entry["details"]) == (101, "SI", "stream_idle_timeout")
    assert 450 <= entry["duration"] <= 900
    for observed in (out.envoy, out.legatus):
        (entry,) = observed.log
        entry["duration"] = "<ms>" if 450 <= entry["duration"] <= 900 else entry["duration"]
    out.assert_same()


def test_the_upstream_closing_a_tunnel_resets_it(tunnel_pair):
    def traffic(side):
        with side.connect("ws") as s:
            s.sendall(_upgrade("/ws/close"))
            head = read_head(s)
            s.sendall(b"x")
            echoed = read_exactly(s, 1)
            return [head, echoed, *timed(lambda: ending(s), 0.8, 2.0)]

    out = tunnel_pair.run(traffic, ["ws"], ["ws_up"])
    assert out.envoy.result[1:] == ["x", "closed", "in bounds"]
    assert [(e["code"], e["flags"]) for e in out.envoy.log] == [(101, "UC")]
    out.assert_same()


def test_an_upgrade_runs_its_own_filter_chain(tunnel_pair):
    def traffic(side):
        return [_reply(side, "filters", _upgrade("/"))]

    out = tunnel_pair.run(traffic, ["filters"], ["filt_up"])
    assert out.envoy.result[0][0].startswith("HTTP/1.1 418 ")
    assert [(e["code"], e["flags"]) for e in out.envoy.log] == [(418, "FI")]
    out.assert_same()


# CONNECT ------------------------------------------------------------------------------------


def test_connect_terminated_at_the_proxy(tunnel_pair):
    def traffic(side):
        out = []
        with side.connect("connect") as s:
            s.sendall(_connect_request() + b"early")
            out.append(read_head(s))
            out.append(read_exactly(s, 5))
            s.sendall(b"ping")
            out.append(read_exactly(s, 4))
        return out

    out = tunnel_pair.run(traffic, ["connect"], ["c_echo"])
    assert out.envoy.result == [
        "HTTP/1.1 200 OK\r\ndate: <date>\r\nserver: envoy\r\n\r\n", "early", "ping"
    ]  # fmt: skip
    assert out.envoy.stats["cluster.c_echo.upstream_rq_200"] == 1
    assert [(e["code"], e["upstream"]) for e in out.envoy.log] == [(200, "127.0.0.1:<echo>")]
    out.assert_same()


def test_connect_to_a_refusing_host(tunnel_pair):
    def traffic(side):
        return [_reply(side, "connect", _connect_request(target="refused"))]

    out = tunnel_pair.run(traffic, ["connect"], ["c_refused"])
    assert out.envoy.result[0][0].startswith("HTTP/1.1 503 Service Unavailable")
    assert [(e["code"], e["flags"]) for e in out.envoy.log] == [(503, "UF")]
    out.assert_same()


def test_connect_proxied_to_an_http_upstream(tunnel_pair):
    def traffic(side):
        with side.connect("connect") as s:
            s.sendall(_connect_request(target="proxy") + b"held")
            head = read_head(s)
            echoed = read_exactly(s, 4)
        refused = _reply(side, "connect", _connect_request("s407.example:443", target="proxy"))
        return [head, echoed, refused]

    out = tunnel_pair.run(traffic, ["connect"], ["c_proxy"])
    assert out.envoy.result[0].startswith("HTTP/1.1 200 OK\r\nx-upstream: yes\r\n")
    assert out.envoy.upstream[0][0] == "CONNECT example.com:443 HTTP/1.1"
    assert out.envoy.result[2][0].startswith("HTTP/1.1 407 ")
    out.assert_same()


def test_post_sent_over_tcp_with_allow_post(tunnel_pair):
    def traffic(side):
        with side.connect("connect") as s:
            s.sendall(b"POST /post HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello")
            head = read_head(s)
            body = read_exactly(s, len(b"5\r\nhello\r\n0\r\n\r\n"))
            return [head, body]

    out = tunnel_pair.run(traffic, ["connect"], ["c_echo"])
    assert "transfer-encoding: chunked" in out.envoy.result[0]
    assert out.envoy.result[1] == "5\r\nhello\r\n0\r\n\r\n"
    out.assert_same()


# Configuration ------------------------------------------------------------------------------


def _bootstrap(hcm: dict, route: dict) -> dict:
    typed = {"@type": HCM, "stat_prefix": "v", "http_filters": [
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
        "route_config": {"virtual_hosts": [{"name": "a", "domains": ["*"], "routes": [route]}]},
        **hcm}  # fmt: skip
    manager = {"name": "envoy.filters.network.http_connection_manager", "typed_config": typed}
    address = {"socket_address": {"address": "127.0.0.1", "port_value": 1}}
    listener = {"name": "l", "address": address, "filter_chains": [{"filters": [manager]}]}
    return {"static_resources": {"listeners": [listener], "clusters": [cluster("up", 1)]}}


_FAULT = {"name": "envoy.filters.http.fault", "typed_config": {"@type": FAULT}}
_ROUTER = {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}
_TO_UP = {"match": {"prefix": "/"}, "route": {"cluster": "up"}}
CONFIGS = {
    "hcm_repeated_type": ({"upgrade_configs": [
        {"upgrade_type": "websocket"}, {"upgrade_type": "WebSocket"}]}, _TO_UP),
    "route_repeated_type": ({}, {"match": {"prefix": "/"}, "route": {
        "cluster": "up", "upgrade_configs": [
            {"upgrade_type": "websocket"}, {"upgrade_type": "WEBSOCKET"}]}}),
    "connect_config_not_connect": ({}, {"match": {"prefix": "/"}, "route": {
        "cluster": "up", "upgrade_configs": [
            {"upgrade_type": "websocket", "connect_config": {}}]}}),
    "upgrade_chain_router_not_last": (
        {"upgrade_configs": [{"upgrade_type": "websocket", "filters": [_ROUTER, _FAULT]}]}, _TO_UP),
    "upgrade_chain_without_router": (
        {"upgrade_configs": [{"upgrade_type": "websocket", "filters": [_FAULT]}]}, _TO_UP),
    "route_empty_type": ({}, {"match": {"prefix": "/"}, "route": {
        "cluster": "up", "upgrade_configs": [{"upgrade_type": ""}]}}),
    "accepted": ({"upgrade_configs": [{"upgrade_type": "websocket"},
                                      {"upgrade_type": "CONNECT", "enabled": False}]},
                 {"match": {"connect_matcher": {}}, "route": {"cluster": "up", "upgrade_configs": [
                     {"upgrade_type": "connect", "connect_config": {"allow_post": True}}]}}),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CONFIGS))
def test_configuration_verdicts_and_messages(name, tmp_path):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(_bootstrap(*CONFIGS[name])))
    envoy, legatus = envoy_validate(path), legatus_validate(path)
    assert legatus.code == envoy.code, (envoy.output[-2000:], legatus.output[-2000:])
    if envoy.code:
        # Envoy's message, word for word (legatus adds the field's path before it).
        message = re.search(r"error initializing configuration '[^']*': (.*)", envoy.output)
        assert message is not None, envoy.output
        text = message.group(1)
        if "Proto constraint validation failed" in envoy.output:  # PGV: its last cause
            text = re.search(r"UpgradeConfigValidationError\.\w+: ([^)]*)\)", envoy.output)[1]
        assert text in legatus.output, (text, legatus.output[-2000:])
