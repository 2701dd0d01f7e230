"""HTTP/1.1 proxying basics, Envoy against legatus: methods and body framings, large bodies,
keep-alive and pipelining, request-target forms, HTTP/1.0, 100-continue, client-side
``connection: close``, header limits, an HTTP/2 preface and request-smuggling shapes.

Each test sends the same bytes through both proxies (http_scenario.py) and compares the
responses, what the upstream received (framing and connection reuse included), the access
log and the test's stats. Where the exact Envoy output is known it is also asserted for
Envoy alone, so that a change of Envoy's behaviour shows as such.
"""

from __future__ import annotations

import socket

import httpx

from tests.differential.http_scenario import (  # noqa: F401 (fixtures)
    IO_TIMEOUT,
    Cluster,
    Listener,
    Reply,
    body_view,
    header_line_view,
    http_pair_fixture,
    http_pair_processes_fixture,
    http_request,
    scenario,
    timed,
)

MIB = bytes(i % 251 for i in range(1 << 20))
SCRIPTS = {
    "/echo": Reply(echo=True),
    "/chunked": Reply(chunks=(b"hello ", b"chunked ", b"world")),
    "/large": Reply(body=MIB),
    "/until-close": Reply(body=b"read me to the end", until_close=True),
    "/continue": Reply(echo=True, continue_100=True),
    "/interim": Reply(interim_100=True, body=b"after a 100"),
    "/closing": Reply(body=b"last on this connection", close=True),
}


def _listener(name: str, **hcm) -> tuple[Listener, Cluster]:
    """A listener proxying everything to its own cluster. Its connections close 0.1 s after a
    local reply that closes them (Envoy's delayed close; 1 s by default: see
    test_missing_host_is_400_then_a_delayed_close)."""
    hcm.setdefault("delayed_close_timeout", "0.1s")
    return Listener(name=name, hcm=hcm), Cluster(name=name)


def views(responses) -> list[dict]:
    return [r.view() for r in responses]


@scenario(*_listener("methods"))
def test_methods_with_content_length(http_pair):
    def traffic(side):
        return views([
            side.request("methods", "GET", "/get"),
            side.request("methods", "POST", "/echo", [("content-type", "text/plain")], b"posted"),
            side.request("methods", "PUT", "/echo", body=b"x" * 1000),
            side.request("methods", "HEAD", "/get"),
            side.request("methods", "DELETE", "/thing"),
            side.request("methods", "POST", "/echo", body=b""),
            side.request("methods", "OPTIONS", "/"),
        ])  # fmt: skip

    out = http_pair.run(traffic)
    get = out.envoy.result[0]
    assert get["status"] == "HTTP/1.1 200 OK"
    assert get["headers"] == [
        "content-type: text/plain",
        "content-length: 2",
        "x-envoy-upstream-service-time: <ms>",
        "date: <date>",
        "server: envoy",
    ]
    assert out.envoy.upstream[0]["headers"] == [
        "host: example.com",
        "x-forwarded-proto: http",
        "x-request-id: <uuid4>",
        "x-envoy-expected-rq-timeout-ms: 15000",
    ]
    assert [u["request"] for u in out.envoy.upstream] == [
        "GET /get HTTP/1.1", "POST /echo HTTP/1.1", "PUT /echo HTTP/1.1", "HEAD /get HTTP/1.1",
        "DELETE /thing HTTP/1.1", "POST /echo HTTP/1.1", "OPTIONS / HTTP/1.1",
    ]  # fmt: skip
    out.assert_same()


@scenario(*_listener("chunked"))
def test_chunked_bodies_both_ways(http_pair):
    def traffic(side):
        with side.connect("chunked") as c:
            c.send(b"POST /echo HTTP/1.1\r\nhost: example.com\r\ntransfer-encoding: chunked\r\n\r\n"
                   b"5\r\nhello\r\n7;ext=1\r\n chunks\r\n0\r\n\r\n")  # fmt: skip
            echoed = c.response(method="POST")
            chunked = c.request("GET", "/chunked")
            empty = c.request("POST", "/echo", body=b"", chunked=True)
            until_close = c.request("GET", "/until-close")
        return views([echoed, chunked, empty, until_close])

    out = http_pair.run(traffic)
    assert [u["framing"] for u in out.envoy.upstream] == ["chunked", "none", "chunked", "none"]
    assert [r["framing"] for r in out.envoy.result] == [
        "content-length", "chunked", "content-length", "chunked"]  # fmt: skip
    # A body delimited by the upstream's close reaches the client chunked.
    assert out.envoy.result[3]["body"] == "read me to the end"
    assert out.envoy.result[1]["body"] == "hello chunked world"
    # Envoy writes the framing header after the headers it adds, both ways.
    assert out.envoy.upstream[0]["headers"] == [
        "host: example.com", "x-forwarded-proto: http", "x-request-id: <uuid4>",
        "x-envoy-expected-rq-timeout-ms: 15000", "transfer-encoding: chunked",
    ]  # fmt: skip
    assert out.envoy.result[1]["headers"] == [
        "content-type: text/plain", "x-envoy-upstream-service-time: <ms>", "date: <date>",
        "server: envoy", "transfer-encoding: chunked",
    ]  # fmt: skip
    out.assert_same()


@scenario(*_listener("large"))
def test_large_bodies_both_ways(http_pair):
    def traffic(side):
        return views([
            side.request("large", "POST", "/echo", body=MIB),
            side.request("large", "POST", "/echo", body=MIB, chunked=True),
            side.request("large", "GET", "/large"),
        ])  # fmt: skip

    # How often reading paused, and the chunk sizes of the re-chunked upload (so the bytes
    # sent upstream), follow the timing of the reads.
    out = http_pair.run(traffic, varying=("_flow_control_", "upstream_cx_tx_bytes_total"))
    assert all(r["status"] == "HTTP/1.1 200 OK" for r in out.envoy.result)
    assert {r["body"] for r in out.envoy.result} == {body_view(MIB)}
    out.assert_same()


@scenario(*_listener("keepalive"))
def test_keep_alive_reuses_the_upstream_connection(http_pair):
    def traffic(side):
        with side.connect("keepalive") as c:
            first = [c.request("GET", f"/{i}") for i in range(3)]
            open_after = c.ending(wait=0.2)
        second = side.request("keepalive", "GET", "/again")
        return [*views(first), open_after, second.view()]

    out = http_pair.run(traffic)
    assert [u["connection"] for u in out.envoy.upstream] == [0, 0, 0, 0]
    assert out.envoy.result[3] == "open"
    assert out.envoy.stats["cluster.keepalive.upstream_cx_total"] == 1
    assert out.envoy.stats["cluster.keepalive.upstream_rq_total"] == 4
    assert out.envoy.stats["http.keepalive.downstream_cx_total"] == 2
    out.assert_same()


@scenario(*_listener("upstream_close"))
def test_upstream_connection_close_is_not_reused(http_pair):
    def traffic(side):
        with side.connect("upstream_close") as c:
            responses = [c.request("GET", path) for path in ("/closing", "/", "/closing", "/")]
            return [*views(responses), c.ending(wait=0.3)]

    out = http_pair.run(traffic)
    # The upstream's `connection: close` is not passed on; the client's connection stays.
    assert "connection: close" not in out.envoy.result[0]["headers"]
    assert out.envoy.result[4] == "open"
    assert [u["connection"] for u in out.envoy.upstream] == [0, 1, 1, 2]
    # Envoy closes those upstream connections itself once the response is in.
    assert out.envoy.stats["cluster.upstream_close.upstream_cx_close_notify"] == 2
    assert out.envoy.stats["cluster.upstream_close.upstream_cx_destroy_local"] == 2
    out.assert_same()


@scenario(*_listener("httpx"))
def test_keep_alive_with_httpx(http_pair):
    def traffic(side):
        url = f"http://127.0.0.1:{side.ports['httpx']}"
        with httpx.Client(timeout=IO_TIMEOUT) as client:
            responses = [client.get(f"{url}/a"), client.post(f"{url}/echo", content=b"x" * 100),
                         client.get(f"{url}/chunked")]  # fmt: skip
        # httpx does not tell how many bytes the heads took: compared by presence.
        return [[r.status_code, r.http_version,
                 [header_line_view(f"{n}: {v}") for n, v in r.headers.items()], r.text]
                for r in responses]  # fmt: skip

    out = http_pair.run(traffic, varying=("downstream_cx_tx_bytes_total",))
    assert [u["connection"] for u in out.envoy.upstream] == [0, 0, 0]
    assert out.envoy.stats["http.httpx.downstream_cx_total"] == 1
    out.assert_same()


@scenario(*_listener("pipelined"))
def test_pipelined_requests(http_pair):
    def traffic(side):
        with side.connect("pipelined") as c:
            c.send(b"".join(http_request("GET", f"/p{i}") for i in range(3))
                   + http_request("POST", "/echo", body=b"last"))  # fmt: skip
            responses = [c.response(method=m) for m in ("GET", "GET", "GET", "POST")]
        return views(responses)

    out = http_pair.run(traffic)
    assert [r["status"] for r in out.envoy.result] == ["HTTP/1.1 200 OK"] * 4
    assert [u["request"] for u in out.envoy.upstream] == [
        "GET /p0 HTTP/1.1",
        "GET /p1 HTTP/1.1",
        "GET /p2 HTTP/1.1",
        "POST /echo HTTP/1.1",
    ]
    out.assert_same()


@scenario(*_listener("absolute"))
def test_absolute_form_targets(http_pair):
    def traffic(side):
        return views([
            side.request("absolute", "GET", "http://other.example:8080/abs?x=1"),
            side.request("absolute", "GET", "http://no-host.example/p", host=None),
            side.request("absolute", "GET", "https://secure.example/s"),
        ])  # fmt: skip

    out = http_pair.run(traffic)
    assert [u["request"] for u in out.envoy.upstream] == [
        "GET /abs?x=1 HTTP/1.1", "GET /p HTTP/1.1", "GET /s HTTP/1.1"]  # fmt: skip
    assert [u["headers"][0] for u in out.envoy.upstream] == [
        "host: other.example:8080", "host: no-host.example", "host: secure.example"]  # fmt: skip
    out.assert_same()


@scenario(Listener(name="nohost"), Cluster(name="nohost"))
def test_missing_host_is_400_then_a_delayed_close(http_pair):
    """The HCM's 400 closes the connection, after Envoy's default delayed close (1 s) unless
    the client closes first."""

    def traffic(side):
        with side.connect("nohost") as c:
            response = c.request("GET", "/", host=None)
            ending, when = timed(lambda: c.ending(wait=3), (0.8, 1.8))
            return [response.view(), ending, when]

    out = http_pair.run(traffic)
    assert out.envoy.result == [
        {
            "status": "HTTP/1.1 400 Bad Request",
            "headers": ["date: <date>", "server: envoy", "connection: close", "content-length: 0"],
            "body": "",
            "framing": "content-length",
        },
        "closed",
        "in bounds",
    ]
    assert out.envoy.upstream == []
    assert (out.envoy.log[0]["details"], out.envoy.log[0]["flags"]) == ("missing_host_header", "-")
    out.assert_same()


@scenario(Listener(name="nohost_fin"), Cluster(name="nohost_fin"))
def test_a_delayed_close_ends_at_the_clients_fin(http_pair):
    """A delayed close waits for the client: its FIN (a half-close, the request side done)
    ends the connection at once, not at the end of the 1 s wait, whether or not the request
    asked for the close. Stats tell which it was."""

    def traffic(side):
        out = []
        for headers in ((), [("connection", "close")]):
            with side.connect("nohost_fin") as c:
                response = c.request("GET", "/", headers, host=None)
                c.sock.shutdown(socket.SHUT_WR)
                ending, when = timed(lambda c=c: c.ending(wait=3), (0.0, 0.5))
                out.append([response.view()["status"], ending, when])
        return out

    out = http_pair.run(traffic)
    assert out.envoy.result == [["HTTP/1.1 400 Bad Request", "closed", "in bounds"]] * 2
    out.assert_same()


@scenario(*_listener("http10"))
def test_http10_is_426_by_default(http_pair):
    def traffic(side):
        with side.connect("http10") as c:
            response = c.request("GET", "/", version="HTTP/1.0")
            return [response.view(), c.ending()]

    out = http_pair.run(traffic)
    assert out.envoy.result == [
        {
            "status": "HTTP/1.1 426 Upgrade Required",
            "headers": ["content-length: 16", "content-type: text/plain", "date: <date>",
                        "server: envoy", "connection: close"],
            "body": "Upgrade Required",
            "framing": "content-length",
        },
        "closed",
    ]  # fmt: skip
    assert [(e["code"], e["flags"], e["details"]) for e in out.envoy.log] == [
        (426, "DPE", "low_version")
    ]
    out.assert_same()


@scenario(*_listener("http10_accepted", http_protocol_options={"accept_http_10": True}))
def test_http10_accepted(http_pair):
    def traffic(side):
        out = []
        for host in ("example.com", None):
            with side.connect("http10_accepted") as c:
                response = c.request("GET", "/old", host=host, version="HTTP/1.0")
                out += [response.view(), c.ending()]
        with side.connect("http10_accepted") as c:
            response = c.request("GET", "/ka", [("connection", "keep-alive")], version="HTTP/1.0")
            out += [response.view(), c.ending(wait=0.3)]
        return out

    out = http_pair.run(traffic)
    # Answered in HTTP/1.0, closed unless the client asked for keep-alive; proxied in 1.1.
    statuses = [r["status"] for r in out.envoy.result[::2]]
    assert statuses == ["HTTP/1.0 200 OK", "HTTP/1.0 400 Bad Request", "HTTP/1.0 200 OK"]
    assert [r["headers"][-1] for r in out.envoy.result[::2]] == [
        "connection: close", "content-length: 0", "connection: keep-alive"]  # fmt: skip
    assert out.envoy.result[1::2] == ["closed", "closed", "open"]
    assert [u["request"] for u in out.envoy.upstream] == ["GET /old HTTP/1.1", "GET /ka HTTP/1.1"]
    assert out.envoy.log[1]["details"] == "missing_host_header"
    out.assert_same()


@scenario(*_listener("http10_default_host", http_protocol_options={
    "accept_http_10": True, "default_host_for_http_10": "legacy.example"}))  # fmt: skip
def test_http10_default_host(http_pair):
    def traffic(side):
        out = []
        for host in (None, "given.example"):
            with side.connect("http10_default_host") as c:
                response = c.request("POST", "/echo", body=b"ten", host=host, version="HTTP/1.0")
                out += [response.view(), c.ending()]
        return out

    out = http_pair.run(traffic)
    assert [u["headers"][0] for u in out.envoy.upstream] == [
        "host: legacy.example", "host: given.example"]  # fmt: skip
    out.assert_same()


@scenario(*_listener("continue_local"),
          *_listener("continue_proxied", proxy_100_continue=True))  # fmt: skip
def test_expect_100_continue(http_pair):
    def traffic(side):
        out = []
        for listener in ("continue_local", "continue_proxied"):
            with side.connect(listener) as c:
                c.send(http_request("POST", "/continue", [("expect", "100-continue"),
                                                         ("content-length", "4")]))  # fmt: skip
                interim = c.interim(timeout=1.0)
                c.send(b"body")
                out += [interim, c.response(method="POST").view()]
        return out

    out = http_pair.run(traffic)
    # proxy_100_continue false: Envoy answers the 100 itself and drops `expect`; true: the
    # upstream's 100 is passed on, with `expect`.
    assert out.envoy.result[0] == out.envoy.result[2] == "HTTP/1.1 100 Continue"
    assert "expect: 100-continue" not in out.envoy.upstream[0]["headers"]
    assert "expect: 100-continue" in out.envoy.upstream[1]["headers"]
    out.assert_same()


@scenario(*_listener("interim"))
def test_unsolicited_100_from_the_upstream_is_dropped(http_pair):
    def traffic(side):
        return [side.request("interim", "GET", "/interim").view()]

    out = http_pair.run(traffic)
    assert "interim" not in out.envoy.result[0]
    assert out.envoy.result[0]["body"] == "after a 100"
    out.assert_same()


@scenario(*_listener("client_close"))
def test_connection_close_from_the_client(http_pair):
    def traffic(side):
        with side.connect("client_close") as c:
            response = c.request("GET", "/", [("connection", "close")])
            return [response.view(), c.ending()]

    out = http_pair.run(traffic)
    assert "connection: close" in out.envoy.result[0]["headers"]
    assert out.envoy.result[1] == "closed"
    assert "connection: close" not in out.envoy.upstream[0]["headers"]
    out.assert_same()


@scenario(*_listener("small_headers", max_request_headers_kb=1))
def test_max_request_headers_kb(http_pair):
    def traffic(side):
        out = []
        for size in (800, 1100):
            with side.connect("small_headers") as c:
                response = c.request("GET", "/", [("x-big", "v" * size)])
                out += [response.view(), c.ending(wait=0.3)]
        return out

    out = http_pair.run(traffic)
    assert out.envoy.result[0]["status"] == "HTTP/1.1 200 OK"
    assert out.envoy.result[2:] == [
        {
            "status": "HTTP/1.1 431 Request Header Fields Too Large",
            "headers": ["content-length: 31", "content-type: text/plain", "date: <date>",
                        "server: envoy", "connection: close"],
            "body": "Request Header Fields Too Large",
            "framing": "content-length",
        },
        "closed",
    ]  # fmt: skip
    assert out.envoy.log[1]["details"] == "http1.headers_too_large"
    out.assert_same()


PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def h2_frames(data: bytes) -> list[str]:
    """HTTP/2 frames as "TYPE flags=F stream=S payload-hex"."""
    names = {0: "DATA", 1: "HEADERS", 3: "RST_STREAM", 4: "SETTINGS", 6: "PING", 7: "GOAWAY",
             8: "WINDOW_UPDATE"}  # fmt: skip
    out = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        kind, flags = data[3], data[4]
        stream = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
        payload, data = data[9 : 9 + length], data[9 + length :]
        out.append(f"{names.get(kind, kind)} flags={flags} stream={stream} {payload.hex()}")
    if data:
        out.append(f"partial: {data.hex()}")
    return out


@scenario(*_listener("h2c_http1", codec_type="HTTP1"))
def test_h2c_preface_on_an_http1_codec_is_400(http_pair):
    def traffic(side):
        with side.connect("h2c_http1") as c:
            c.send(PREFACE + EMPTY_SETTINGS)
            return [c.response().view(), c.ending()]

    out = http_pair.run(traffic)
    assert out.envoy.result == [
        {
            "status": "HTTP/1.1 400 Bad Request",
            "headers": ["content-length: 11", "content-type: text/plain", "date: <date>",
                        "server: envoy", "connection: close"],
            "body": "Bad Request",
            "framing": "content-length",
        },
        "closed",
    ]  # fmt: skip
    assert [(e["code"], e["flags"], e["details"]) for e in out.envoy.log] == [
        (400, "DPE", "http1.codec_error")
    ]
    out.assert_same()


@scenario(*_listener("h2c_auto"))
def test_h2c_preface_with_codec_auto_is_answered_in_http2(http_pair):
    """codec_type AUTO (the default) sniffs the preface and speaks HTTP/2: Envoy's SETTINGS,
    the ACK of the client's, and a connection-level WINDOW_UPDATE (the rest of HTTP/2 is
    compared in test_http2_envoy.py)."""

    def traffic(side):
        with side.connect("h2c_auto") as c:
            c.send(PREFACE + EMPTY_SETTINGS)
            data = c.read_for(0.5)
        return h2_frames(data)

    out = http_pair.run(traffic)
    assert out.envoy.result == [
        "SETTINGS flags=0 stream=0 000100001000000800000000000300000400000401000000",
        "SETTINGS flags=1 stream=0 ",
        "WINDOW_UPDATE flags=0 stream=0 017f0001",
    ]
    out.assert_same()


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n"
SMUGGLING = {
    "cl_and_te": b"POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n"
    b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    "duplicate_cl": b"POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n"
    b"content-length: 4\r\n\r\nabcd",
    "same_cl_twice": b"POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\n"
    b"content-length: 3\r\n\r\nabc",
    "bad_chunk_size": b"POST /echo HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
    b"zz\r\nabc\r\n0\r\n\r\n",
    "te_not_chunked": b"POST /echo HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip\r\n\r\nabc",
    "smuggled_in_a_get_body": b"GET / HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\n\r\n%s"
    % (len(SMUGGLED), SMUGGLED),
}


@scenario(*_listener("smuggling"))
def test_request_smuggling_shapes(http_pair):
    def traffic(side):
        out = {}
        for name, raw in SMUGGLING.items():
            with side.connect("smuggling") as c:
                c.send(raw)
                out[name] = [c.response().view(), c.ending(wait=0.3)]
        return out

    out = http_pair.run(traffic)
    got = {name: r[0]["status"] for name, r in out.envoy.result.items()}
    assert got == {
        "cl_and_te": "HTTP/1.1 400 Bad Request",
        "duplicate_cl": "HTTP/1.1 400 Bad Request",
        "same_cl_twice": "HTTP/1.1 400 Bad Request",
        "bad_chunk_size": "HTTP/1.1 400 Bad Request",
        "te_not_chunked": "HTTP/1.1 501 Not Implemented",
        "smuggled_in_a_get_body": "HTTP/1.1 200 OK",
    }
    details = [(e["code"], e["flags"], e["details"]) for e in out.envoy.log]
    assert details == [
        (400, "DPE", "http1.content_length_and_chunked_not_allowed"),
        (400, "DPE", "http1.codec_error"),
        (400, "DPE", "http1.codec_error"),
        (400, "DPE", "http1.codec_error"),
        (501, "DPE", "http1.invalid_transfer_encoding"),
        (200, "-", "via_upstream"),
    ]
    # Only the GET reaches the upstream, with what it carried as its body.
    assert [(u["request"], u["body"]) for u in out.envoy.upstream] == [
        ("GET / HTTP/1.1", SMUGGLED.decode())
    ]
    out.assert_same()
