"""ClientCodec: requests out (bytes, as Envoy writes them upstream), responses in (events)."""

from __future__ import annotations

import pytest

from legatus.http.headers import HeaderMap
from legatus.http.http1 import (
    ClientCodec,
    InformationalHeaders,
    ProtocolError,
    ResponseData,
    ResponseHeaders,
    ResponseTrailers,
)
from tests.support.garbage import cyclic_garbage


def request(method: str = "GET", path: str = "/p", *extra: tuple[str, str]) -> HeaderMap:
    items = [(":method", method), (":path", path), (":authority", "up.example"), *extra]
    return HeaderMap(items)


def sent(method: str = "GET", end_stream: bool = True, codec: ClientCodec | None = None):
    codec = codec or ClientCodec()
    codec.encode_request_headers(request(method), end_stream)
    if not end_stream:
        codec.encode_data(b"", True)
    return codec


def feed_all(codec: ClientCodec, data: bytes, chunk: int | None = None) -> list:
    pieces = [data] if chunk is None else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    events = []
    for piece in pieces:
        events.extend(codec.feed(piece))
    return events


def coalesce(events: list) -> list:
    out: list = []
    for event in events:
        if out and isinstance(event, ResponseData) and isinstance(out[-1], ResponseData):
            out[-1] = ResponseData(data=out[-1].data + event.data, end_stream=event.end_stream)
        else:
            out.append(event)
    return out


# Request encoding ------------------------------------------------------------------------------


def test_get_request_line_host_first_no_length():
    codec = ClientCodec()
    head = codec.encode_request_headers(
        request("GET", "/a?b", ("user-agent", "u"), ("x-request-id", "1")), True
    )
    assert (
        head == b"GET /a?b HTTP/1.1\r\nhost: up.example\r\nuser-agent: u\r\nx-request-id: 1\r\n\r\n"
    )


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "OPTIONS"])
def test_bodiless_request_of_a_body_method_gets_content_length_zero(method):
    head = ClientCodec().encode_request_headers(request(method), True)
    assert head.endswith(b"content-length: 0\r\n\r\n")


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE", "TRACE"])
def test_methods_without_body_get_no_length(method):
    head = ClientCodec().encode_request_headers(request(method), True)
    assert b"content-length" not in head


def test_streaming_request_is_chunked():
    codec = ClientCodec()
    head = codec.encode_request_headers(request("POST"), False)
    assert head.endswith(b"transfer-encoding: chunked\r\n\r\n")
    assert codec.encode_data(b"abc", False) == b"3\r\nabc\r\n"
    assert codec.encode_data(b"de", True) == b"2\r\nde\r\n0\r\n\r\n"


def test_request_with_content_length_is_sent_as_is():
    codec = ClientCodec()
    head = codec.encode_request_headers(request("POST", "/", ("content-length", "3")), False)
    assert b"transfer-encoding" not in head
    assert codec.encode_data(b"abc", True) == b"abc"


def test_request_trailers_only_when_enabled():
    codec = ClientCodec(enable_trailers=True)
    codec.encode_request_headers(request("POST"), False)
    assert codec.encode_trailers(HeaderMap([("x-t", "1")])) == b"0\r\nx-t: 1\r\n\r\n"
    codec = ClientCodec()
    codec.encode_request_headers(request("POST"), False)
    assert codec.encode_trailers(HeaderMap([("x-t", "1")])) == b"0\r\n\r\n"


def test_connect_request_uses_the_authority_and_no_chunking():
    codec = ClientCodec()
    head = codec.encode_request_headers(
        HeaderMap([(":method", "CONNECT"), (":authority", "h:443")]), False
    )
    assert head == b"CONNECT h:443 HTTP/1.1\r\nhost: h:443\r\n\r\n"
    assert codec.encode_data(b"raw", False) == b"raw"


def test_upgrade_request_is_not_chunked():
    codec = ClientCodec()
    head = codec.encode_request_headers(
        request("GET", "/ws", ("connection", "Upgrade"), ("upgrade", "websocket")), False
    )
    assert b"transfer-encoding" not in head
    assert codec.encode_data(b"frame", False) == b"frame"


def test_request_head_needs_method_and_path():
    with pytest.raises(ValueError):
        ClientCodec().encode_request_headers(HeaderMap([(":method", "GET")]), True)


def test_one_request_at_a_time():
    codec = sent()
    with pytest.raises(ValueError):
        codec.encode_request_headers(request(), True)


# Response decoding -----------------------------------------------------------------------------


def test_content_length_response_in_pieces_and_reuse():
    codec = sent()
    events = codec.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: 1\r\n\r\nhel")
    assert events[0] == ResponseHeaders(
        headers=HeaderMap([(":status", "200"), ("content-length", "5"), ("x-up", "1")]),
        end_stream=False,
    )
    assert events[1] == ResponseData(data=b"hel", end_stream=False)
    assert not codec.reusable and codec.awaiting_response
    assert codec.feed(b"lo") == [ResponseData(data=b"lo", end_stream=True)]
    assert codec.reusable and not codec.awaiting_response
    sent(codec=codec)  # the connection takes the next request
    assert codec.feed(b"HTTP/1.1 204 No Content\r\n\r\n")[0].end_stream


def test_chunked_response_and_trailers():
    codec = sent(codec=ClientCodec(enable_trailers=True))
    events = codec.feed(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"
    )
    assert [type(e) for e in events] == [ResponseHeaders, ResponseData, ResponseTrailers]
    assert events[1] == ResponseData(data=b"hello", end_stream=False)
    assert list(events[2].trailers.items()) == [("x-t", "1")]
    assert codec.reusable


def test_informational_responses_precede_the_final_one():
    codec = sent()
    events = codec.feed(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    assert [type(e) for e in events] == [
        InformationalHeaders, InformationalHeaders, ResponseHeaders, ResponseData
    ]  # fmt: skip
    assert events[1].headers.get("link") == "</a>"
    assert events[3] == ResponseData(data=b"ok", end_stream=True)


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ],
)
def test_bodiless_responses_end_at_the_head(raw):
    codec = sent()
    (event,) = codec.feed(raw)
    assert isinstance(event, ResponseHeaders) and event.end_stream
    assert "content-length" not in event.headers or event.headers.get(":status") != "204"
    assert codec.reusable


def test_head_response_ends_at_the_head_whatever_its_length():
    codec = sent("HEAD")
    (event,) = codec.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    assert event.end_stream and event.headers.get("content-length") == "5"
    assert codec.reusable
    codec = sent("HEAD")
    (event,) = feed_all(codec, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 3)
    assert event.end_stream and codec.reusable


def test_head_response_followed_by_bytes_is_an_error():
    codec = sent("HEAD")
    events = codec.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    assert events[0].end_stream
    assert events[1] == ProtocolError(status=502, details="http1.extraneous_data")
    assert not codec.reusable


def test_response_without_length_runs_to_eof():
    codec = sent()
    events = codec.feed(b"HTTP/1.1 200 OK\r\n\r\nsome")
    assert not events[0].keep_alive
    assert codec.feed(b" more") == [ResponseData(data=b" more", end_stream=False)]
    assert codec.feed_eof() == [ResponseData(data=b"", end_stream=True)]
    assert not codec.reusable


@pytest.mark.parametrize(
    ("raw", "keep_alive"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n", True),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: Keep-Alive\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nProxy-Connection: close\r\n\r\n", False),
    ],
)
def test_keep_alive_decides_reuse(raw, keep_alive):
    codec = sent()
    (event,) = codec.feed(raw)
    assert event.keep_alive is keep_alive and codec.reusable is keep_alive
    if b"HTTP/1.0" in raw:
        assert event.protocol == "HTTP/1.0"


def test_obs_fold_in_a_response_is_unfolded():
    codec = sent()
    events = feed_all(codec, b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n", 4)
    assert events[0].headers.get("x-a") == "a b" and events[0].end_stream


def test_upgrade_response_turns_into_a_tunnel():
    codec = ClientCodec()
    codec.encode_request_headers(
        request("GET", "/ws", ("connection", "upgrade"), ("upgrade", "websocket")), False
    )
    events = codec.feed(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nfr"
    )
    assert events[0].upgrade and not events[0].keep_alive
    assert events[1] == ResponseData(data=b"fr", end_stream=False)
    assert codec.feed(b"ame") == [ResponseData(data=b"ame", end_stream=False)]
    # A tunnel has no end of its own: the close of the connection resets it (UC), as in Envoy.
    assert codec.feed_eof() == []
    assert not codec.reusable


@pytest.mark.parametrize("status", [b"200 OK", b"404 Not Found"])
def test_an_answer_to_an_upgrade_that_refuses_it_leaves_the_connection_unusable(status):
    codec = ClientCodec()
    codec.encode_request_headers(
        request("GET", "/ws", ("connection", "upgrade"), ("upgrade", "websocket")), False
    )
    assert codec.tunnel_request
    (headers, data) = codec.feed(b"HTTP/1.1 " + status + b"\r\ncontent-length: 1\r\n\r\nx")
    assert not headers.upgrade and data == ResponseData(data=b"x", end_stream=True)
    assert not codec.reusable  # what the client sent after the head was not HTTP


def test_connect_response_turns_into_a_tunnel():
    codec = ClientCodec()
    codec.encode_request_headers(HeaderMap([(":method", "CONNECT"), (":authority", "h:1")]), False)
    events = codec.feed(b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x01")
    assert events[0].upgrade and events[1].data == b"\x16\x03\x01"


@pytest.mark.parametrize(
    ("raw", "details"),
    [
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n",
         "http1.content_length_not_allowed"),
        (b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
         "http1.transfer_encoding_not_allowed"),
        (b"HTTP/1.1 100 Continue\r\nTransfer-Encoding: chunked\r\n\r\n",
         "http1.transfer_encoding_not_allowed"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
         "http1.content_length_and_chunked_not_allowed"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "http1.invalid_transfer_encoding"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", "http1.extraneous_data"),
        (b"garbage\r\n\r\n", "http1.codec_error"),
        (b"HTTP/1.1 \r\nContent-Length: 2\r\n\r\nok", "http1.codec_error"),
        (b"HTTP/1.1 200 OK\r\nX-A: \x01\r\n\r\n", "http1.codec_error"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "http1.codec_error"),
        (b"HTTP/1.1 200 OK\r\n X-A: a\r\n\r\n", "http1.codec_error"),
    ],
)  # fmt: skip
def test_upstream_protocol_errors(raw, details):
    codec = sent()
    events = codec.feed(raw)
    assert events[-1] == ProtocolError(status=502, details=details)
    assert not codec.reusable
    assert codec.feed(b"more") == []


def test_bytes_with_no_request_outstanding():
    assert ClientCodec().feed(b"HTTP/1.1 408 Request Timeout\r\n\r\n") == [
        ProtocolError(status=502, details="http1.premature_response")
    ]


def test_response_headers_limits():
    codec = sent(codec=ClientCodec(max_response_headers_count=2))
    events = codec.feed(b"HTTP/1.1 200 OK\r\na: 1\r\nb: 2\r\nc: 3\r\n\r\n")
    assert events == [ProtocolError(status=502, details="http1.too_many_headers")]
    codec = sent(codec=ClientCodec(max_response_headers_kb=1))
    assert codec.feed(b"HTTP/1.1 200 OK\r\nX-Big: " + b"v" * 600) == []
    assert codec.feed(b"v" * 600)[-1].details == "http1.headers_too_large"


RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-A: a\r\n\tb\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokX",
    b"HTTP/1.1 200 OK\r\n\r\nuntil the end",
    b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
]


@pytest.mark.parametrize("raw", RESPONSES, ids=range(len(RESPONSES)))
@pytest.mark.parametrize("chunk", [1, 3, 16])
def test_same_events_whatever_the_reads(raw, chunk):
    whole = coalesce(sent(codec=ClientCodec(enable_trailers=True)).feed(raw))
    codec = sent(codec=ClientCodec(enable_trailers=True))
    assert coalesce(feed_all(codec, raw, chunk)) == whole


def test_a_repeated_header_keeps_each_value_at_its_place():
    codec = sent()
    (event,) = codec.feed(
        b"HTTP/1.1 200 OK\r\nset-cookie: a=1\r\nx-up: 1\r\nSet-Cookie: b=2\r\n"
        b"content-length: 0\r\n\r\n"
    )
    assert list(event.headers.items()) == [
        (":status", "200"), ("set-cookie", "a=1"), ("x-up", "1"), ("set-cookie", "b=2"),
        ("content-length", "0"),
    ]  # fmt: skip


def test_a_response_after_a_head_response_on_the_same_connection():
    codec = sent("HEAD")
    (event,) = codec.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    assert event.end_stream and codec.reusable
    sent(codec=codec)  # llhttp was stopped at the HEAD response's head: the next one parses
    events = codec.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert events[1] == ResponseData(data=b"ok", end_stream=True)
    assert codec.reusable


def test_bytes_after_a_complete_response_are_extraneous_data():
    codec = sent()
    codec.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert codec.reusable
    assert codec.feed(b"HTTP/1.1 200 OK\r\n") == [
        ProtocolError(status=502, details="http1.extraneous_data")
    ]
    assert not codec.reusable


def test_a_repeated_header_counts_against_the_limits():
    codec = sent(codec=ClientCodec(max_response_headers_count=2))
    events = codec.feed(b"HTTP/1.1 200 OK\r\na: 1\r\na: 2\r\nb: 3\r\n\r\n")
    assert events == [ProtocolError(status=502, details="http1.too_many_headers")]


# Callbacks ---------------------------------------------------------------------------------------


class Recorder:
    """ResponseCallbacks that record each call with what ``reusable`` said at that moment."""

    def __init__(self) -> None:
        self.codec: ClientCodec | None = None
        self.calls: list = []

    def _record(self, name: str, *args) -> None:
        self.calls.append((name, *args, self.codec.reusable))

    def on_informational_headers(self, headers):
        self._record("informational", headers.get(":status"))

    def on_response_headers(self, headers, end_stream, keep_alive, upgrade, protocol):
        self._record("headers", headers.get(":status"), end_stream)

    def on_response_data(self, data, end_stream):
        self._record("data", data, end_stream)

    def on_response_trailers(self, trailers):
        self._record("trailers", trailers.get("t"))

    def on_protocol_error(self, error):
        self._record("error", error.details)


def recorded(method: str = "GET") -> tuple[ClientCodec, Recorder]:
    recorder = Recorder()
    codec = recorder.codec = ClientCodec(callbacks=recorder, enable_trailers=True)
    codec.encode_request_headers(request(method), True)
    return codec, recorder


def test_callbacks_end_of_response_comes_once_the_read_is_parsed():
    codec, recorder = recorded()
    assert (
        codec.dispatch(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        )
        is None
    )
    assert recorder.calls == [
        ("informational", "100", False),
        ("headers", "200", False, False),
        ("data", b"ok", True, True),  # the codec is idle again: the pool may reuse it
    ]


def test_callbacks_bytes_after_the_response_make_it_unreusable_before_the_error():
    for method, response in (
        ("GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA"),
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nEXTRA"),
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\nEXTRA"),
    ):
        codec, recorder = recorded(method)
        codec.dispatch(response)
        assert recorder.calls[-1] == ("error", "http1.extraneous_data", False)
        end = recorder.calls[-2]
        assert end[-1] is False and end[-2] is True  # the end of the response, not reusable


def test_callbacks_trailers_end_the_response_and_eof_ends_a_body_read_to_the_close():
    codec, recorder = recorded()
    codec.dispatch(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nt: v\r\n\r\n"
    )
    assert recorder.calls == [
        ("headers", "200", False, False),
        ("data", b"ok", False, False),
        ("trailers", "v", True),
    ]
    codec, recorder = recorded()
    codec.dispatch(b"HTTP/1.1 200 OK\r\n\r\nab")
    codec.dispatch_eof()
    assert recorder.calls[1:] == [("data", b"ab", False, False), ("data", b"", True, False)]


def test_feed_is_for_codecs_without_callbacks():
    codec, _ = recorded()
    with pytest.raises(TypeError):
        codec.feed(b"HTTP/1.1 200 OK\r\n")


# Release ---------------------------------------------------------------------------------------


class _Owner:
    """A pool client: it holds its codec, which reports to it (a cycle until release)."""

    def __init__(self) -> None:
        self.codec = ClientCodec(callbacks=self)
        self.seen: list = []

    def on_informational_headers(self, headers) -> None:
        self.seen.append("1xx")

    def on_response_headers(self, headers, end_stream, keep_alive, upgrade, protocol) -> None:
        self.seen.append("headers")

    def on_response_data(self, data, end_stream) -> None:
        self.seen.append("data")

    def on_response_trailers(self, trailers) -> None:
        self.seen.append("trailers")

    def on_protocol_error(self, error) -> None:
        self.seen.append("error")


def test_a_released_codec_and_its_owner_are_freed_by_reference_counting():
    def used(release: bool) -> None:
        owner = _Owner()
        sent(codec=owner.codec)
        owner.codec.dispatch(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        assert owner.seen == ["headers", "data"]
        if release:
            owner.codec.release()

    assert {"ClientCodec", "_Owner"} <= cyclic_garbage(lambda: used(False))
    assert cyclic_garbage(lambda: used(True)) == set()


def test_a_released_codec_reports_nothing_more():
    owner = _Owner()
    sent(codec=owner.codec)
    owner.codec.release()
    owner.codec.dispatch(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    owner.codec.dispatch_eof()
    assert owner.seen == []
