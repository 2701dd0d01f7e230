"""WebSocket over HTTP/2 (extended CONNECT, RFC 8441) and CONNECT over HTTP/2, Envoy 1.40
against legatus.

An HTTP/2 client (the ``h2`` package over a socket, prior knowledge) opens tunnels through
each proxy (tunnel_scenario.py): extended CONNECT (``:protocol websocket``) to an HTTP/1.1
WebSocket upstream, plain CONNECT to a TCP echo. Compared: per stream the response head,
the tunnel's bytes, how the stream ends (END_STREAM, RST_STREAM and its code) and whether
the connection closes; the request heads the upstream saw; the access log; the listeners'
and clusters' stats (``downstream_cx_upgrades_*``, ``downstream_rq_ws_on_non_ws_route``,
``upstream_cx_*``...). The Envoy side is also checked literally where the behaviour is the
point of the test.
"""

from __future__ import annotations

import contextlib
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from tests.differential.http_scenario import Listener
from tests.differential.tunnel_scenario import tunnel_pair_fixture  # noqa: F401 (fixture)

WEBSOCKET = [{"upgrade_type": "websocket"}]
TERMINATE = [{"upgrade_type": "CONNECT", "connect_config": {}}]
ALLOW_CONNECT = {"http2_protocol_options": {"allow_connect": True}}


def _route(prefix: str, cluster: str, **action) -> dict:
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster, **action}}


def _connect_route(cluster: str, header: str | None = None, **action) -> dict:
    match: dict = {"connect_matcher": {}}
    if header:
        match["headers"] = [{"name": "x-target", "string_match": {"exact": header}}]
    return {"match": match, "route": {"cluster": cluster, **action}}


LISTENERS = [
    Listener(name="h2ws", hcm={"upgrade_configs": WEBSOCKET, **ALLOW_CONNECT}, routes=[
        _route("/off", "h2ws_up",
               upgrade_configs=[{"upgrade_type": "websocket", "enabled": False}]),
        _route("/", "h2ws_up"),
    ]),
    Listener(name="h2noallow", hcm={"upgrade_configs": WEBSOCKET},
             routes=[_route("/", "h2ws_up")]),
    Listener(name="h2connect", hcm={
        "upgrade_configs": [{"upgrade_type": "CONNECT"}],
        "http2_protocol_options": {"allow_connect": True, "initial_stream_window_size": 65535},
    }, routes=[
        _connect_route("h2c_refused", "refused", upgrade_configs=TERMINATE),
        _connect_route("h2c_echo", upgrade_configs=TERMINATE),
    ]),
    Listener(name="h2noconnect", routes=[_route("/", "h2c_echo")]),
]  # fmt: skip
CLUSTERS = {"h2ws_up": "tunnel", "h2c_refused": "refused", "h2c_echo": "echo"}


def _extended_connect(path: str, protocol: str = "websocket") -> list[tuple[str, str]]:
    return [
        (":method", "CONNECT"), (":protocol", protocol), (":scheme", "http"), (":path", path),
        (":authority", "example.com"), ("sec-websocket-version", "13"),
    ]  # fmt: skip


def _connect(authority: str = "example.com:443", target: str | None = None) -> list:
    fields = [(":method", "CONNECT"), (":authority", authority)]
    if target:
        fields.append(("x-target", target))
    return fields


class TunnelClient:
    """One HTTP/2 connection through which the tests open tunnels; what comes back is
    recorded per stream: ``headers``, ``data``, ``end``, ``reset`` (its code)."""

    def __init__(self, side, listener: str, *, acknowledge: bool = True) -> None:
        self.sock = side.connect(listener)
        config = h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8", validate_outbound_headers=False,
            normalize_outbound_headers=False, validate_inbound_headers=False,
        )  # fmt: skip
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        self.acknowledge = acknowledge
        self.streams: dict[int, dict] = {}
        self.settings: dict[int, int] = {}
        self.goaways: list = []
        self.closed = False
        self.buffer = b""
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            with contextlib.suppress(OSError):
                self.sock.sendall(data)

    def open(self, fields, *, end_stream: bool = False) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.streams[sid] = {"data": b""}
        self.conn.send_headers(sid, fields, end_stream=end_stream)
        self.flush()
        return sid

    def send(self, sid: int, data: bytes, *, end_stream: bool = False) -> None:
        self.conn.send_data(sid, data, end_stream=end_stream)
        self.flush()

    def reset(self, sid: int) -> None:
        self.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        self.flush()

    def window_update(self, sid: int, size: int) -> None:
        self.conn.increment_flow_control_window(size, sid)
        self.conn.increment_flow_control_window(size)
        self.flush()

    def wait(self, until, timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.closed and not until():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return
            except ConnectionResetError:
                data = b""
            if not data:
                self.closed = True
                return
            self._handle(data)

    def wait_data(self, sid: int, n: int, timeout: float = 3.0) -> bytes:
        self.wait(lambda: len(self.streams[sid]["data"]) >= n or self.done(sid), timeout)
        return self.streams[sid]["data"]

    def done(self, sid: int) -> bool:
        s = self.streams[sid]
        return "end" in s or "reset" in s

    def finish(self, sid: int, timeout: float = 3.0) -> dict:
        self.wait(lambda: self.done(sid), timeout)
        return self.streams[sid]

    def _handle(self, data: bytes) -> None:
        # Fed frame by frame: the h2 package closes its connection on a GOAWAY, even the
        # graceful one of a drain, after which the proxy still answers the open streams.
        self.buffer += data
        while len(self.buffer) >= 9:
            end = 9 + int.from_bytes(self.buffer[:3], "big")
            if len(self.buffer) < end:
                return
            frame, self.buffer = self.buffer[:end], self.buffer[end:]
            try:
                events = self.conn.receive_data(frame)
            except h2.exceptions.ProtocolError as e:
                self.goaways.append(("client error", type(e).__name__, str(e)))
                return
            self._events(events)
            if frame[3] == 7:  # GOAWAY
                self.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN

    def _events(self, events) -> None:
        for e in events:
            s = self.streams.setdefault(getattr(e, "stream_id", 0) or 0, {"data": b""})
            if isinstance(e, h2.events.ResponseReceived):
                s["headers"] = [(n, "<date>" if n == "date" else v) for n, v in e.headers]
            elif isinstance(e, h2.events.DataReceived):
                s["data"] += e.data
                if self.acknowledge:
                    self.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            elif isinstance(e, h2.events.StreamEnded):
                s["end"] = True
            elif isinstance(e, h2.events.StreamReset):
                s["reset"] = int(e.error_code)
            elif isinstance(e, h2.events.RemoteSettingsChanged):
                self.settings.update({int(k): v.new_value for k, v in e.changed_settings.items()})
            elif isinstance(e, h2.events.ConnectionTerminated):
                self.goaways.append((e.last_stream_id, int(e.error_code)))
        self.flush()

    def ending(self, wait: float = 1.0) -> str:
        self.wait(lambda: False, wait)
        return "closed" if self.closed else "open"

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> TunnelClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _same(out) -> None:
    """``out.assert_same()`` but for the bytes written to HTTP/2 clients, which differ by
    design (legatus's HPACK encoder does not Huffman-code: docs/http2.md)."""
    for observation in (out.envoy, out.legatus):
        for name in list(observation.stats):
            if name.endswith("downstream_cx_tx_bytes_total"):
                del observation.stats[name]
    out.assert_same()


def _view(s: dict) -> dict:
    out = dict(s)
    out["data"] = out["data"].decode("latin-1")
    return out


# WebSocket over HTTP/2 ---------------------------------------------------------------------


def test_settings_advertise_extended_connect(tunnel_pair):
    def traffic(side):
        out = {}
        for listener in ("h2ws", "h2noallow"):
            with TunnelClient(side, listener) as c:
                c.wait(lambda c=c: h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL in c.settings)
                out[listener] = c.settings.get(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL)
        return out

    out = tunnel_pair.run(traffic, ["h2ws", "h2noallow"], [])
    assert out.envoy.result == {"h2ws": 1, "h2noallow": 0}
    _same(out)


def test_websocket_over_http2_both_ways_and_client_end_stream(tunnel_pair):
    def traffic(side):
        with TunnelClient(side, "h2ws") as c:
            sid = c.open(_extended_connect("/ws"))
            c.wait(lambda: "headers" in c.streams[sid] or c.done(sid))
            c.send(sid, b"hello")
            c.wait_data(sid, 5)
            c.send(sid, b"world")
            c.wait_data(sid, 10)
            c.send(sid, b"", end_stream=True)  # the client's END_STREAM
            stream = _view(c.finish(sid))
            return [stream, c.ending()]

    out = tunnel_pair.run(traffic, ["h2ws"], ["h2ws_up"])
    stream = out.envoy.result[0]
    assert stream["headers"][0] == [":status", "200"], stream
    assert stream["data"] == "helloworld"
    _same(out)


def test_websocket_over_http2_upstream_close(tunnel_pair):
    def traffic(side):
        with TunnelClient(side, "h2ws") as c:
            sid = c.open(_extended_connect("/ws/close"))
            c.wait(lambda: "headers" in c.streams[sid] or c.done(sid))
            c.send(sid, b"bye")
            stream = _view(c.finish(sid))
            return [stream, c.ending()]

    out = tunnel_pair.run(traffic, ["h2ws"], ["h2ws_up"])
    _same(out)


def test_websocket_over_http2_client_reset(tunnel_pair):
    def traffic(side):
        with TunnelClient(side, "h2ws") as c:
            sid = c.open(_extended_connect("/ws"))
            c.wait(lambda: "headers" in c.streams[sid] or c.done(sid))
            c.send(sid, b"ping")
            c.wait_data(sid, 4)
            c.reset(sid)
            second = c.open(_extended_connect("/ws"))  # the connection lives on
            c.wait(lambda: "headers" in c.streams[second] or c.done(second))
            c.send(second, b"again", end_stream=True)
            return [_view(c.streams[sid]), _view(c.finish(second)), c.ending()]

    out = tunnel_pair.run(traffic, ["h2ws"], ["h2ws_up"])
    _same(out)


def test_websocket_over_http2_refusals(tunnel_pair):
    def traffic(side):
        out = []
        for listener, fields in (
            ("h2ws", _extended_connect("/off")),  # the route disables WebSocket
            ("h2ws", _extended_connect("/x", "other")),  # a type not enabled
            ("h2noallow", _extended_connect("/ws")),  # no allow_connect: :protocol refused
        ):
            with TunnelClient(side, listener) as c:
                sid = c.open(fields)
                out.append([_view(c.finish(sid)), c.goaways, c.ending(0.5)])
        return out

    out = tunnel_pair.run(traffic, ["h2ws", "h2noallow"], ["h2ws_up"])
    assert out.envoy.result[0][0]["headers"][0] == [":status", "403"], out.envoy.result
    _same(out)


# CONNECT over HTTP/2 -----------------------------------------------------------------------


def test_connect_over_http2_to_a_tcp_upstream(tunnel_pair):
    def traffic(side):
        with TunnelClient(side, "h2connect") as c:
            sid = c.open(_connect())
            c.wait(lambda: "headers" in c.streams[sid] or c.done(sid))
            c.send(sid, b"hello")
            c.wait_data(sid, 5)
            c.send(sid, b" tcp", end_stream=True)  # a FIN upstream: the echo closes too
            stream = _view(c.finish(sid))
            return [stream, c.ending()]

    out = tunnel_pair.run(traffic, ["h2connect"], ["h2c_echo"])
    stream = out.envoy.result[0]
    assert stream["headers"][0] == [":status", "200"], stream
    assert stream["data"] == "hello tcp" and stream.get("end"), stream
    _same(out)


def test_connect_over_http2_refusals(tunnel_pair):
    def traffic(side):
        out = []
        with TunnelClient(side, "h2connect") as c:
            sid = c.open(_connect(target="refused"))  # nothing listens: 503 UF
            out.append(_view(c.finish(sid)))
            out.append(c.ending(0.3))
        with TunnelClient(side, "h2noconnect") as c:  # no connect_matcher route: 404
            sid = c.open(_connect())
            out.append(_view(c.finish(sid)))
            out.append(c.ending(0.3))
        return out

    out = tunnel_pair.run(traffic, ["h2connect", "h2noconnect"], ["h2c_refused", "h2c_echo"])
    _same(out)


def test_connect_over_http2_client_reset(tunnel_pair):
    def traffic(side):
        with TunnelClient(side, "h2connect") as c:
            sid = c.open(_connect())
            c.wait(lambda: "headers" in c.streams[sid] or c.done(sid))
            c.send(sid, b"abc")
            c.wait_data(sid, 3)
            c.reset(sid)
            return [_view(c.streams[sid]), c.ending()]

    out = tunnel_pair.run(traffic, ["h2connect"], ["h2c_echo"])
    _same(out)


def test_the_client_window_bounds_the_tunnel(tunnel_pair):
    """The client does not give back its window: the proxy sends it no more than the
    window (65535 bytes) and holds the rest, then sends it once the window opens."""
    payload = bytes(range(256)) * 512  # 128 KiB

    def traffic(side):
        with TunnelClient(side, "h2connect", acknowledge=False) as c:
            sid = c.open(_connect())
            c.wait(lambda: "headers" in c.streams[sid] or c.done(sid))
            sent = 0
            while sent < len(payload):
                chunk = min(16384, c.conn.local_flow_control_window(sid), len(payload) - sent)
                if chunk <= 0:
                    c.wait(lambda: False, 0.3)
                    if c.conn.local_flow_control_window(sid) <= 0:
                        break
                    continue
                c.send(sid, payload[sent : sent + chunk])
                sent += chunk
            c.wait(lambda: False, 0.5)
            before = len(c.streams[sid]["data"])
            c.window_update(sid, len(payload))
            got = c.wait_data(sid, len(payload))
            c.reset(sid)
            return [sent, before, len(got), got == payload, c.ending(0.3)]

    out = tunnel_pair.run(traffic, ["h2connect"], ["h2c_echo"])
    assert out.envoy.result[:4] == [len(payload), 65535, len(payload), True], out.envoy.result
    _same(out)
