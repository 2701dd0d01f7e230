"""HTTP/2 downstream (h2c, prior knowledge) to an HTTP/1.1 upstream, Envoy against legatus.

An HTTP/2 client (the ``h2`` package over a socket, or raw frames for what it refuses to
send) talks to each proxy; what is compared, besides the harness's usual parts (what the
upstream saw, the access log, the listener's and cluster's stats):

- per stream: the response head (names and values in order, volatile values normalized),
  body, trailers, RST_STREAM code;
- per connection: the GOAWAY frames (last stream id, code), PING acknowledgements, whether
  the proxy closed the connection;
- the ``http2.*`` codec stats the traffic moved (deltas: they are process-wide).

Frame boundaries are not compared (Envoy may end a body with an empty DATA frame, legatus
may not); the frames' meaning is. Known differences are listed in docs/http2.md.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack

from tests.differential.http_scenario import (  # noqa: F401 (fixtures)
    IO_TIMEOUT,
    Cluster,
    Listener,
    Reply,
    body_view,
    http_pair_fixture,
    http_pair_processes_fixture,
    route,
    scenario,
)

SCRIPTS = {
    "/echo": Reply(echo=True),
    "/chunked": Reply(chunks=(b"abc", b"defg")),
    "/hold": Reply(hold=True),
    "/hop": Reply(
        headers=(
            ("content-type", "text/plain"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "x"),
            ("x-kept", "1"),
        )
    ),
    "/created": Reply(status=201, body=b""),
}
GET = [(":method", "GET"), (":scheme", "http"), (":authority", "example.com")]


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes((kind, flags))
        + struct.pack(">L", stream_id)
        + payload
    )


def raw_headers(stream_id: int, fields, *, end_stream: bool = True, encoder=None) -> bytes:
    block = (encoder or hpack.Encoder()).encode(
        [(n.encode("latin-1"), v.encode("latin-1")) for n, v in fields], huffman=False
    )
    return frame(1, 0x4 | (0x1 if end_stream else 0), stream_id, block)


class H2Client:
    """One HTTP/2 connection to a listener of one side, recording what comes back."""

    def __init__(self, side, listener: str, *, validate: bool = True, defer: bool = False):
        self.side = side
        self.listener = listener
        self.sock = socket.create_connection(("127.0.0.1", side.ports[listener]), IO_TIMEOUT)
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding="utf-8",
            validate_outbound_headers=validate,
            normalize_outbound_headers=validate,
            validate_inbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        self.received = 0
        self.streams: dict[int, dict] = {}
        self.goaways: list[tuple[int, int]] = []
        self.pings = 0
        self.closed = False
        self.raw = False  # only raw frames were sent: h2's state is not ours
        # ``defer``: the preface goes with the first bytes sent (one read for the proxy).
        self.initial = self.conn.data_to_send() if defer else b""
        self.flush()

    # Sending ---------------------------------------------------------------------------

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.send_bytes(data)

    def send_bytes(self, data: bytes) -> None:
        data, self.initial = self.initial + data, b""
        with contextlib.suppress(OSError):  # the proxy closed: what it sent tells
            self.sock.sendall(data)

    def request(self, fields, body: bytes | None = None, *, trailers=None) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.streams[sid] = {}
        self.conn.send_headers(sid, fields, end_stream=body is None and trailers is None)
        if body is not None:
            view = memoryview(body)
            while len(view) > 16384:
                self.conn.send_data(sid, bytes(view[:16384]))
                view = view[16384:]
            self.conn.send_data(sid, bytes(view), end_stream=trailers is None)
        if trailers is not None:
            self.conn.send_headers(sid, trailers, end_stream=True)
        self.flush()
        return sid

    def reset(self, sid: int) -> None:
        self.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        self.flush()

    # Receiving -------------------------------------------------------------------------

    def done(self, sid: int) -> bool:
        s = self.streams.get(sid, {})
        return "end" in s or "reset" in s

    def wait(self, until=None, timeout: float = IO_TIMEOUT) -> None:
        """Read until ``until()`` (default: every stream done), the close, or ``timeout``."""
        until = until or (lambda: all(self.done(s) for s in self.streams))
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
            self.received += len(data)
            self.handle(data)

    def handle(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self.goaways.append(("client error", type(e).__name__))
            return
        for e in events:
            s = self.streams.setdefault(getattr(e, "stream_id", 0), {})
            if isinstance(e, h2.events.ResponseReceived):
                s["headers"] = [self._header(n, v) for n, v in e.headers]
            elif isinstance(e, h2.events.InformationalResponseReceived):
                s.setdefault("informational", []).append(e.headers)
            elif isinstance(e, h2.events.DataReceived):
                s["body"] = s.get("body", b"") + e.data
                self.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            elif isinstance(e, h2.events.TrailersReceived):
                s["trailers"] = e.headers
            elif isinstance(e, h2.events.StreamEnded):
                s["end"] = True
            elif isinstance(e, h2.events.StreamReset):
                s["reset"] = int(e.error_code)
            elif isinstance(e, h2.events.ConnectionTerminated):
                self.goaways.append((e.last_stream_id, int(e.error_code)))
            elif isinstance(e, h2.events.PingAckReceived):
                self.pings += 1
        self.flush()

    @staticmethod
    def _header(name: str, value: str) -> tuple[str, str]:
        if name == "x-envoy-upstream-service-time" and value.isdigit():
            value = "<ms>"
        return (name, value)

    def ending(self, wait: float = 1.5) -> str:
        """ "closed" if the proxy closes the connection within ``wait``, else "open"."""
        self.wait(lambda: False, wait)
        return "closed" if self.closed else "open"

    def view(self) -> dict:
        streams = {}
        for sid, s in sorted(self.streams.items()):
            if sid == 0:
                continue
            out = dict(s)
            if "body" in out:
                out["body"] = body_view(out["body"])
            streams[sid] = out
        return {"streams": streams, "goaways": self.goaways, "pings": self.pings}

    def close(self) -> None:
        received = self.side.received
        received[self.listener] = received.get(self.listener, 0) + self.received
        self.sock.close()

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def http2_stats(side) -> dict[str, int]:
    return {
        k: v for k, v in side.proxy.stats().items() if k.startswith("http2.") and isinstance(v, int)
    }


def moved(side, before: dict[str, int]) -> dict[str, int]:
    """The http2.* stats the traffic moved, once its connections are gone."""
    time.sleep(0.3)
    after = http2_stats(side)
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v != before.get(k, 0)}


def _h2(name: str, **hcm) -> tuple[Listener, Cluster]:
    return Listener(name=name, hcm=hcm), Cluster(name=name)


# Requests and responses ------------------------------------------------------------------


@scenario(*_h2("basic"))
def test_requests_and_responses_over_one_connection(http_pair):
    def traffic(side):
        before = http2_stats(side)
        with H2Client(side, "basic") as c:
            c.request([*GET, (":path", "/"), ("user-agent", "h2-test")])
            c.wait()
            c.request(
                [(":method", "POST"), *GET[1:], (":path", "/echo/cl"), ("content-length", "5")],
                b"hello",
            )
            c.wait()
            c.request([(":method", "POST"), *GET[1:], (":path", "/echo/chunked")], b"a" * 70000)
            c.wait()
            c.request([(":method", "HEAD"), *GET[1:], (":path", "/")])
            c.wait()
            c.request([*GET, (":path", "/chunked")])
            c.wait()
            c.request([*GET, (":path", "/created")])
            c.wait()
            c.request([*GET[:2], (":path", "/"), ("host", "from-host.example")])
            c.wait()
            result = c.view()
        return [result, moved(side, before)]

    out = http_pair.run(traffic)
    streams = out.envoy.result[0]["streams"]
    assert streams[1]["headers"][0] == [":status", "200"] and streams[1]["body"] == "ok"
    assert streams[3]["body"] == "hello" and streams[5]["body"].startswith("<70000 bytes")
    assert "body" not in streams[7]
    assert streams[9]["body"] == "abcdefg"
    assert out.envoy.result[1]["http2.nghttp2_downstream_connections"] == 1
    out.assert_same()


@scenario(*_h2("shaping"))
def test_request_headers_as_the_upstream_sees_them(http_pair):
    """Cookie crumbs joined, te: trailers kept (other te values refused or dropped), host
    beside :authority dropped, whitespace around values kept, x-forwarded-proto."""

    def traffic(side):
        with H2Client(side, "shaping", validate=False) as c:
            c.request(
                [
                    *GET,
                    (":path", "/echo"),
                    ("cookie", "a=1"),
                    ("x-a", " spaced\t"),
                    ("cookie", "b=2"),
                    ("te", "trailers"),
                    ("host", "other.example"),
                    ("x_under", "1"),
                    ("accept-encoding", "gzip"),
                ]
            )
            c.wait()
            c.request([*GET, (":path", "/echo"), ("te", "Trailers")])
            c.wait()
            return c.view()

    out = http_pair.run(traffic)
    upstream = out.envoy.upstream[0]["headers"]
    assert upstream[0] == "host: example.com" and "cookie: a=1; b=2" in upstream
    assert "te: trailers" in upstream and "x-a:  spaced\t" in upstream
    assert not any(h.startswith("te:") for h in out.envoy.upstream[1]["headers"])
    out.assert_same()


@scenario(*_h2("trailers"))
def test_request_trailers_and_a_body_without_length(http_pair):
    def traffic(side):
        before = http2_stats(side)
        with H2Client(side, "trailers") as c:
            c.request(
                [(":method", "POST"), *GET[1:], (":path", "/echo")],
                b"body",
                trailers=[("x-checksum", "abc")],
            )
            c.wait()
            result = c.view()
        return [result, moved(side, before)]

    out = http_pair.run(traffic)
    assert out.envoy.result[1]["http2.trailers"] == 1
    out.assert_same()


@scenario(*_h2("hop"))
def test_response_hop_by_hop_headers_are_removed(http_pair):
    def traffic(side):
        with H2Client(side, "hop") as c:
            c.request([*GET, (":path", "/hop")])
            c.wait()
            return c.view()

    out = http_pair.run(traffic)
    names = [n for n, _ in out.envoy.result["streams"][1]["headers"]]
    assert "keep-alive" not in names and "proxy-connection" not in names and "x-kept" in names
    out.assert_same()


@scenario(*_h2("expect"))
def test_expect_100_continue_is_answered_by_the_proxy(http_pair):
    def traffic(side):
        with H2Client(side, "expect") as c:
            c.request(
                [(":method", "POST"), *GET[1:], (":path", "/echo"), ("expect", "100-continue")],
                b"later",
            )
            c.wait()
            return c.view()

    out = http_pair.run(traffic)
    assert out.envoy.result["streams"][1]["informational"] == [[[":status", "100"]]]
    out.assert_same()


@scenario(*_h2("many"))
def test_many_concurrent_streams_on_one_connection(http_pair):
    def traffic(side):
        with H2Client(side, "many") as c:
            for i in range(30):
                c.request([*GET, (":path", f"/echo/{i}")])
            c.wait(timeout=5)
            return c.view()

    # How many upstream connections it takes depends on how fast the first answers come.
    out = http_pair.run(traffic, varying=("upstream_cx_", "upstream_rq_pending_total"))
    streams = out.envoy.result["streams"]
    assert len(streams) == 30 and all(s.get("end") for s in streams.values())
    # Which upstream connection took which request, and the order the streams ended in,
    # vary with timing: the requests and log entries are compared as sets.
    out.assert_same("result", "stats")
    assert unordered(out.envoy.upstream, "request") == unordered(out.legatus.upstream, "request")
    assert unordered(out.envoy.log, "path") == unordered(out.legatus.log, "path")


def unordered(entries: list[dict], key: str) -> list[dict]:
    drop = ("connection", "upstream_local")
    return sorted(
        ({k: v for k, v in e.items() if k not in drop} for e in entries), key=lambda e: e[key]
    )


# Local replies ------------------------------------------------------------------------------


@scenario(
    Listener(
        name="replies",
        routes=[
            route("/only", {"route": {"cluster": "replies"}}),
            route("/refused", {"route": {"cluster": "replies_refused"}}),
            route("/hold", {"route": {"cluster": "replies", "timeout": "0.5s"}}),
            route("/direct", {"direct_response": {"status": 202, "body": {"inline_string": "hi"}}}),
        ],
    ),
    Cluster(name="replies"),
    Cluster(name="replies_refused", endpoint="refused"),
)
def test_local_replies_over_http2(http_pair):
    def traffic(side):
        with H2Client(side, "replies") as c:
            c.request([*GET, (":path", "/nowhere")])
            c.request([*GET, (":path", "/refused")])
            c.request([*GET, (":path", "/direct")])
            c.request([*GET, (":path", "/hold")])
            c.request([(":method", "OPTIONS"), *GET[1:], (":path", "*")])
            c.wait(timeout=4)
            return c.view()

    out = http_pair.run(traffic)
    streams = out.envoy.result["streams"]
    assert streams[1]["headers"] == [[":status", "404"], ["date", "<date>"], ["server", "envoy"]]
    assert streams[3]["headers"][0] == [":status", "503"]
    assert streams[5]["body"] == "hi"
    assert streams[7]["headers"][0] == [":status", "504"]
    assert streams[9]["headers"][0] == [":status", "404"]
    assert sorted((e["flags"], e["details"]) for e in out.envoy.log) == [
        ("-", "absolute_path_rejected"),
        ("-", "direct_response"),
        ("NR", "route_not_found"),
        (
            "UF",
            "upstream_reset_before_response_started{remote_connection_failure|"
            "delayed_connect_error:_Connection_refused}",
        ),
        ("UT", "response_timeout"),
    ]
    out.assert_same("result", "stats", "upstream")
    assert unordered(out.envoy.log, "path") == unordered(out.legatus.log, "path")


# Resets and errors ------------------------------------------------------------------------


@scenario(*_h2("reset"))
def test_client_reset_ends_only_that_stream(http_pair):
    def traffic(side):
        before = http2_stats(side)
        held_before = side.upstream.held
        with H2Client(side, "reset") as c:
            held = c.request([*GET, (":path", "/hold")])
            c.wait(lambda: side.upstream.held > held_before, timeout=2)
            other = c.request([*GET, (":path", "/")])
            c.wait(lambda: c.done(other))
            c.reset(held)
            c.request([*GET, (":path", "/after")])
            c.wait(lambda: all(c.done(s) for s in c.streams if s != held))
            result = c.view()
        return [result, moved(side, before)]

    out = http_pair.run(traffic)
    assert [e["flags"] for e in out.envoy.log if e["path"] == "/hold"] == ["DR"]
    assert out.envoy.result[1]["http2.rx_reset"] == 1
    out.assert_same()


MALFORMED = {
    "upper_case_name": [*GET, (":path", "/"), ("X-Upper", "1")],
    "connection_header": [*GET, (":path", "/"), ("connection", "close")],
    "te_gzip": [*GET, (":path", "/"), ("te", "gzip")],
    "missing_path": GET,
    "no_authority": [(":method", "GET"), (":scheme", "http"), (":path", "/")],
    "absolute_path": [*GET, (":path", "http://example.com/")],
    "pseudo_after_regular": [
        (":method", "GET"),
        ("x-a", "1"),
        (":scheme", "http"),
        (":authority", "a"),
        (":path", "/"),
    ],
    "protocol": [
        (":method", "CONNECT"),
        (":protocol", "websocket"),
        (":scheme", "http"),
        (":authority", "a"),
        (":path", "/"),
    ],
    "control_character": [*GET, (":path", "/"), ("x-a", "a\x01b")],
    "path_space": [*GET, (":path", "/a b")],
    "path_tab": [*GET, (":path", "/a\tb")],
    "path_del": [*GET, (":path", "/a\x7fb")],
    "bad_content_length": [*GET, (":path", "/"), ("content-length", "x")],
}


@scenario(*_h2("malformed"))
def test_malformed_requests_end_the_connection(http_pair):
    """Envoy's default (no stream_error_on_invalid_http_messaging): the connection closes,
    nothing sent back for the request, rx_messaging_error and a protocol error counted."""

    def traffic(side):
        before = http2_stats(side)
        out = {}
        for name, fields in MALFORMED.items():
            with H2Client(side, "malformed", defer=True) as c:
                c.send_bytes(raw_headers(1, fields))
                out[name] = c.ending()
        return [out, moved(side, before)]

    out = http_pair.run(traffic)
    assert set(out.envoy.result[0].values()) == {"closed"}
    assert out.envoy.result[1]["http2.rx_messaging_error"] == len(MALFORMED)
    out.assert_same()


@scenario(
    *_h2(
        "stream_errors",
        http2_protocol_options={"override_stream_error_on_invalid_http_message": True},
    )
)
def test_malformed_requests_reset_only_their_stream_when_configured(http_pair):
    def traffic(side):
        with H2Client(side, "stream_errors") as c:
            c.send_bytes(raw_headers(1, [*GET, (":path", "/"), ("X-Upper", "1")]))
            c.send_bytes(raw_headers(3, [*GET, (":path", "/")]))
            c.raw = True
            frames = read_frames(c)
            return [frames, c.ending(0.5)]

    out = http_pair.run(traffic)
    out.assert_same()


@scenario(*_h2("limits"))
def test_header_limits_reset_the_stream(http_pair):
    def traffic(side):
        before = http2_stats(side)
        with H2Client(side, "limits") as c:
            many = [*GET, (":path", "/")] + [(f"x-h{i}", "v") for i in range(101)]
            c.request(many)
            large = [*GET, (":path", "/"), ("x-big", "v" * 61391)]
            c.request(large)
            c.request([*GET, (":path", "/fine")])
            c.wait()
            result = c.view()
        return [result, moved(side, before)]

    out = http_pair.run(traffic)
    streams = out.envoy.result[0]["streams"]
    assert streams[1]["reset"] == 2 and streams[3]["reset"] == 2 and streams[5]["end"]
    out.assert_same()


def read_frames(c: H2Client, wait: float = 1.0) -> list[str]:
    """The frames that arrive within ``wait`` (until the close), one line each: type, flags,
    stream, and the code (and last stream id) of RST_STREAM and GOAWAY. Body frames show
    as one line for the frame that ends the stream (where a body is cut varies)."""
    names = {
        0: "DATA",
        1: "HEADERS",
        3: "RST_STREAM",
        4: "SETTINGS",
        6: "PING",
        7: "GOAWAY",
        8: "WINDOW_UPDATE",
    }
    data = b""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        c.sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = c.sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            c.closed = True
            break
        c.received += len(chunk)
        data += chunk
    out = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        kind, flags = data[3], data[4]
        sid = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
        payload, data = data[9 : 9 + length], data[9 + length :]
        if kind == 0:
            if flags & 0x1:
                out.append(f"DATA end stream={sid}")
            continue
        text = f"{names.get(kind, kind)} flags={flags} stream={sid}"
        if kind == 3:
            text += f" code={int.from_bytes(payload[:4], 'big')}"
        if kind == 7:
            text += f" last={int.from_bytes(payload[:4], 'big')}"
            text += f" code={int.from_bytes(payload[4:8], 'big')}"
        out.append(text)
    return out


@scenario(*_h2("floods"))
def test_inbound_floods_close_the_connection(http_pair):
    def traffic(side):
        before = http2_stats(side)
        out = {}
        post = [(":method", "POST"), *GET[1:], (":path", "/")]
        cases = {
            "empty_data": raw_headers(1, post, end_stream=False) + frame(0, 0, 1) * 3,
            "priority": frame(2, 0, 3, b"\x00\x00\x00\x00\x10") * 150,
            "window_update": frame(8, 0, 0, b"\x00\x00\x00\x01") * 10,
            "continuation": frame(1, 0, 1, b"\x83") + frame(9, 0, 1, b"") * 5,
        }
        for name, data in cases.items():
            with H2Client(side, "floods", defer=True) as c:
                c.send_bytes(data)
                out[name] = c.ending()
        return [out, moved(side, before)]

    out = http_pair.run(traffic)
    assert out.envoy.result[1]["http2.inbound_empty_frames_flood"] >= 1
    out.assert_same()


# Connection life --------------------------------------------------------------------------


@scenario(
    *_h2(
        "drain",
        drain_timeout="0.5s",
        common_http_protocol_options={"max_requests_per_connection": 2},
    )
)
def test_max_requests_drains_with_goaway(http_pair):
    """The second request reaches max_requests_per_connection: a GOAWAY with the last
    stream id 2^31-1 at once, the real one drain_timeout later, then the close."""

    def traffic(side):
        with H2Client(side, "drain", defer=True) as c:
            encoder = hpack.Encoder()
            c.send_bytes(raw_headers(1, [*GET, (":path", "/1")], encoder=encoder))
            first = read_frames(c, 0.5)
            c.send_bytes(raw_headers(3, [*GET, (":path", "/2")], encoder=encoder))
            second = read_frames(c, 2.0)
            return [first, second, "closed" if c.closed else "open"]

    out = http_pair.run(traffic)
    assert out.envoy.result[1:] == [
        [
            "GOAWAY flags=0 stream=0 last=2147483647 code=0",
            "HEADERS flags=4 stream=3",
            "DATA end stream=3",
            "GOAWAY flags=0 stream=0 last=3 code=0",
        ],
        "closed",
    ]
    out.assert_same()


@scenario(*_h2("ping"))
def test_ping_is_acknowledged_and_goaway_from_the_client_is_ignored(http_pair):
    def traffic(side):
        with H2Client(side, "ping") as c:
            c.conn.ping(b"12345678")
            c.flush()
            c.wait(lambda: c.pings == 1)
            c.send_bytes(frame(7, 0, 0, struct.pack(">LL", 0, 0)))
            ending = c.ending(0.5)
            return [c.view(), ending]

    out = http_pair.run(traffic)
    assert out.envoy.result == [{"streams": {}, "goaways": [], "pings": 1}, "open"]
    out.assert_same()


@scenario(*_h2("full_stats"))
def test_stats_of_http2_connections(http_pair):
    """Every stat of the listener and cluster, and the http2.* stats Envoy declares (their
    names and kinds: values are process-wide, moved by the other tests too)."""

    def traffic(side):
        with H2Client(side, "full_stats") as c:
            c.request([*GET, (":path", "/")])
            c.wait()
        with H2Client(side, "full_stats") as c:
            c.request([*GET, (":path", "/")])
            c.wait()
            c.ending(0.3)
        status, body = side.proxy.admin("/stats")
        assert status == 200
        return sorted(
            line.split(":")[0] + (": histogram" if "No recorded values" in line else "")
            for line in body.splitlines()
            if line.startswith("http2.")
        )

    out = http_pair.run(traffic, full_stats=True)
    assert "http2.outbound_control_flood" in out.envoy.result
    assert "http2.header_count: histogram" in out.envoy.result
    assert out.envoy.stats["http.full_stats.downstream_cx_http2_total"] == 2
    assert out.envoy.stats["http.full_stats.downstream_rq_http2_total"] == 2
    out.assert_same()
