"""ServerCodec: requests in (events), responses out (bytes), driven directly (sans-I/O).

The malformed-request table (status and details per case, checked against the real Envoy) is
tests/differential/test_http1_malformed.py; here: the event stream, pipelining, bodies, the
response byte layout, and the chunking property (byte by byte == one read).
"""

from __future__ import annotations

import pytest

from legatus.config.errors import ConfigError
from legatus.http.headers import HeaderMap
from legatus.http.http1 import (
    HeadersWithUnderscoresAction,
    Http1Settings,
    ProtocolError,
    RequestData,
    RequestHeaders,
    RequestTrailers,
    ServerCodec,
)
from legatus.http.http1.settings import HeaderKeyFormat
from tests.support.garbage import cyclic_garbage

GET = b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n"


def feed_all(codec: ServerCodec, data: bytes, chunk: int | None = None) -> list:
    pieces = [data] if chunk is None else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    events = []
    for piece in pieces:
        events.extend(codec.feed(piece))
    return events


def drain(codec: ServerCodec, data: bytes, chunk: int | None = None) -> list:
    """Every event, releasing pipelined requests as soon as they are paused."""
    events = feed_all(codec, data, chunk)
    while codec.paused:
        more = codec.resume()
        if not more and codec.paused:
            break
        events.extend(more)
    return events


def coalesce(events: list) -> list:
    """Join adjacent data events of one request (chunking changes only their boundaries)."""
    out: list = []
    for event in events:
        if out and isinstance(event, RequestData) and isinstance(out[-1], RequestData):
            out[-1] = RequestData(data=out[-1].data + event.data, end_stream=event.end_stream)
        else:
            out.append(event)
    return [e for e in out if not (isinstance(e, RequestData) and not e.data and not e.end_stream)]


def response(*items: tuple[str, str]) -> HeaderMap:
    return HeaderMap(items)


# Request heads -----------------------------------------------------------------------------


def test_get_head_has_pseudo_headers_first_and_lower_case_names():
    (event,) = ServerCodec().feed(GET)
    assert isinstance(event, RequestHeaders)
    assert event.end_stream and event.keep_alive and not event.upgrade
    assert event.protocol == "HTTP/1.1"
    assert list(event.headers.items()) == [
        (":method", "GET"),
        (":path", "/a?b=1"),
        (":authority", "example.com"),
        ("user-agent", "t"),
        ("accept", "*/*"),
    ]
    assert ":scheme" not in event.headers  # the HCM sets it


def test_values_are_trimmed_and_decoded_as_latin1():
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-A:   v \t\r\nX-B: caf\xe9\r\nX-C:\r\n\r\n"
    (event,) = ServerCodec().feed(raw)
    assert event.headers.get("x-a") == "v"
    assert event.headers.get("x-b") == "caf\u00e9"
    assert event.headers.get("x-c") == ""


def test_repeated_headers_are_kept_and_hosts_joined():
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nSet-X: 1\r\nset-x: 2\r\n\r\n"
    (event,) = ServerCodec().feed(raw)
    assert event.headers.get(":authority") == "a,b"
    assert event.headers.get_all("set-x") == ["1", "2"]


def test_missing_host_is_left_to_the_connection_manager():
    (event,) = ServerCodec().feed(b"GET / HTTP/1.1\r\n\r\n")
    assert isinstance(event, RequestHeaders)
    assert ":authority" not in event.headers


def test_obs_fold_is_unfolded_as_envoy_does():
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n\t b  \r\n   c\r\nX-B: 1\r\n\r\n"
    (event,) = ServerCodec().feed(raw)
    assert event.headers.get("x-a") == "a\t b     c"
    assert event.headers.get("x-b") == "1"


def test_absolute_url_sets_authority_scheme_and_path():
    raw = b"GET HTTP://Foo:8080/p?q HTTP/1.1\r\nHost: ignored\r\n\r\n"
    (event,) = ServerCodec().feed(raw)
    h = event.headers
    assert (h.get(":authority"), h.get(":path"), h.get(":scheme")) == ("Foo:8080", "/p?q", "http")


@pytest.mark.parametrize(
    ("url", "authority", "path"),
    [
        (b"http://foo", "foo", "/"),
        (b"http://u@foo/x", "foo", "/x"),
        (b"http://foo?x", "foo", "?x"),
        (b"http://[::1]:8/p", "[::1]:8", "/p"),
    ],
)
def test_absolute_url_forms(url, authority, path):
    (event,) = ServerCodec().feed(b"GET " + url + b" HTTP/1.1\r\n\r\n")
    assert (event.headers.get(":authority"), event.headers.get(":path")) == (authority, path)


def test_absolute_url_not_allowed_keeps_the_target_as_path():
    codec = ServerCodec(Http1Settings(allow_absolute_url=False))
    (event,) = codec.feed(b"GET http://foo/x HTTP/1.1\r\nHost: a\r\n\r\n")
    assert event.headers.get(":path") == "http://foo/x"
    assert event.headers.get(":authority") == "a"


def test_options_asterisk():
    (event,) = ServerCodec().feed(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
    assert event.headers.get(":path") == "*"


def test_connection_nominated_headers_are_removed_te_trailers_kept():
    raw = (
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, foo, te\r\nfoo: 1\r\n"
        b"TE: gzip, trailers\r\n\r\n"
    )
    (event,) = ServerCodec().feed(raw)
    h = event.headers
    assert "foo" not in h
    assert h.get("te") == "trailers"
    assert h.get("connection") == "keep-alive,te"


def test_expect_continue_is_reported():
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\n"
    (event,) = ServerCodec().feed(raw)
    assert event.expect_continue and not event.end_stream


def test_underscore_headers_dropped():
    codec = ServerCodec(
        Http1Settings(headers_with_underscores_action=HeadersWithUnderscoresAction.DROP_HEADER)
    )
    (event,) = codec.feed(b"GET / HTTP/1.1\r\nHost: a\r\nx_a: 1\r\nx-b: 2\r\n\r\n")
    assert "x_a" not in event.headers and event.headers.get("x-b") == "2"


# Bodies ------------------------------------------------------------------------------------


def test_content_length_body_streams_in_pieces():
    body = bytes(range(256)) * 4096  # 1 MiB
    codec = ServerCodec()
    events = codec.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body))
    assert [type(e) for e in events] == [RequestHeaders]
    assert not events[0].end_stream
    got = b""
    for i in range(0, len(body), 65536):
        piece_events = codec.feed(body[i : i + 65536])
        assert len(piece_events) == 1
        (event,) = piece_events
        assert isinstance(event, RequestData) and len(event.data) <= 65536
        got += event.data
    assert event.end_stream and got == body


def test_chunked_body_with_extensions_and_ignored_trailers():
    raw = (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3;name=value\r\nabc\r\n4 ;q\r\ndefg\r\n0\r\nX-T: 1\r\n\r\n"
    )
    events = ServerCodec().feed(raw)
    assert [type(e) for e in events] == [RequestHeaders, RequestData]
    assert events[1] == RequestData(data=b"abcdefg", end_stream=True)


def test_trailers_when_enabled():
    raw = (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-T: 1\r\nX-U: 2\r\n\r\n"
    )
    events = ServerCodec(Http1Settings(enable_trailers=True)).feed(raw)
    assert [type(e) for e in events] == [RequestHeaders, RequestData, RequestTrailers]
    assert events[1] == RequestData(data=b"abc", end_stream=False)
    assert list(events[2].trailers.items()) == [("x-t", "1"), ("x-u", "2")]


def test_empty_chunked_body_ends_with_empty_data():
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    events = ServerCodec().feed(raw)
    assert events[0].end_stream is False
    assert events[1] == RequestData(data=b"", end_stream=True)


def test_content_length_zero_is_headers_only():
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
    (event,) = ServerCodec().feed(raw)
    assert isinstance(event, RequestHeaders) and event.end_stream


def test_chunked_with_content_length_allowed_drops_content_length():
    raw = (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
    )
    events = ServerCodec(Http1Settings(allow_chunked_length=True)).feed(raw)
    assert "content-length" not in events[0].headers
    assert events[1] == RequestData(data=b"abc", end_stream=True)


# Pipelining and flow control -------------------------------------------------------------


PIPELINED = (
    b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
    b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
    b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n"
)


def test_pipelined_requests_are_released_one_at_a_time():
    codec = ServerCodec()
    first = codec.feed(PIPELINED)
    assert [e.headers.get(":path") for e in first] == ["/1"]
    assert codec.paused
    assert codec.feed(b"") == []
    second = codec.resume()
    assert [type(e) for e in second] == [RequestHeaders, RequestData]
    assert second[0].headers.get(":path") == "/2" and second[1].data == b"abc"
    third = codec.resume()
    assert third[0].headers.get(":path") == "/3"
    assert codec.resume() == []  # nothing held, nothing buffered


def test_responses_go_to_requests_in_order():
    codec = ServerCodec()
    codec.feed(b"HEAD /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    head = codec.encode_headers(response((":status", "200"), ("content-length", "5")), False)
    assert codec.encode_data(b"hello", True) == b""  # a response to HEAD has no body
    assert head == b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"
    codec.resume()
    codec.encode_headers(response((":status", "200"), ("content-length", "5")), False)
    assert codec.encode_data(b"hello", True) == b"hello"
    assert not codec.close_after_response


def test_bytes_while_paused_are_buffered_up_to_the_limit():
    codec = ServerCodec(buffer_limit=50)
    codec.feed(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert codec.paused and codec.wants_data
    assert codec.feed(b"GET /2 HTTP/1.1\r\nHost: a\r\n\r\n") == []
    assert codec.wants_data
    assert codec.feed(b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n") == []
    assert not codec.wants_data  # 58 bytes wait: stop reading
    assert [e.headers.get(":path") for e in codec.resume()] == ["/2"]
    assert codec.wants_data
    assert [e.headers.get(":path") for e in codec.resume()] == ["/3"]


def test_explicit_pause_mid_body():
    codec = ServerCodec()
    codec.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nab")
    codec.pause()
    assert codec.feed(b"cd") == []
    assert codec.resume() == [RequestData(data=b"cd", end_stream=False)]
    assert codec.feed(b"ef") == [RequestData(data=b"ef", end_stream=True)]


def test_connection_close_stops_parsing_after_the_request():
    codec = ServerCodec()
    events = codec.feed(
        b"GET /1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert len(events) == 1 and not events[0].keep_alive
    assert codec.resume() == [] and not codec.wants_data
    codec.encode_headers(response((":status", "200")), True)
    assert codec.close_after_response


def test_early_response_closes_the_connection():
    codec = ServerCodec()
    codec.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\npartial")
    codec.encode_headers(response((":status", "413")), True)
    assert codec.close_after_response


# HTTP/1.0 ----------------------------------------------------------------------------------


def test_http10_refused_by_default():
    assert ServerCodec().feed(b"GET / HTTP/1.0\r\n\r\n") == [
        ProtocolError(status=426, details="low_version")
    ]


def test_http10_keep_alive():
    settings = Http1Settings(accept_http_10=True, default_host_for_http_10="dflt")
    codec = ServerCodec(settings)
    (event,) = codec.feed(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert event.protocol == "HTTP/1.0" and event.keep_alive
    assert event.headers.get(":authority") == "dflt"
    head = codec.encode_headers(response((":status", "200"), ("content-length", "2")), False)
    assert head.startswith(b"HTTP/1.0 200 OK\r\n")
    codec.encode_data(b"ok", True)
    assert not codec.close_after_response
    (again,) = codec.resume() or codec.feed(b"GET /2 HTTP/1.0\r\nHost: h\r\n\r\n")
    assert not again.keep_alive and again.headers.get(":authority") == "h"


def test_http10_response_without_length_is_not_chunked_and_closes():
    codec = ServerCodec(Http1Settings(accept_http_10=True))
    codec.feed(b"GET / HTTP/1.0\r\n\r\n")
    head = codec.encode_headers(response((":status", "200")), False)
    assert head == b"HTTP/1.0 200 OK\r\n\r\n"
    assert codec.encode_data(b"body", False) == b"body"
    assert codec.close_after_response


# Upgrade, CONNECT, h2c -----------------------------------------------------------------------


def test_websocket_upgrade_turns_into_a_tunnel():
    codec = ServerCodec()
    raw = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nxyz"
    events = codec.feed(raw)
    assert events[0].upgrade and not events[0].end_stream
    assert events[1] == RequestData(data=b"xyz", end_stream=False)
    assert codec.feed(b"GET / HTTP/1.1\r\n") == [
        RequestData(data=b"GET / HTTP/1.1\r\n", end_stream=False)
    ]
    assert codec.feed_eof() == [RequestData(data=b"", end_stream=True)]


def test_connect_takes_the_authority_form_target():
    codec = ServerCodec()
    events = codec.feed(b"CONNECT example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n\x16\x03")
    h = events[0].headers
    assert h.get(":authority") == "example.com:443" and ":path" not in h
    assert events[0].upgrade and events[1].data == b"\x16\x03"
    head = codec.encode_headers(response((":status", "200")), False)
    assert head == b"HTTP/1.1 200 OK\r\n\r\n"  # no chunking for a CONNECT response
    assert codec.encode_data(b"raw", False) == b"raw"


def test_h2c_upgrade_is_ignored_and_served_as_http11():
    raw = (
        b"POST / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    codec = ServerCodec()
    events = codec.feed(raw)
    h = events[0].headers
    assert not events[0].upgrade
    assert "upgrade" not in h and "http2-settings" not in h and "connection" not in h
    assert events[1] == RequestData(data=b"abc", end_stream=True)
    (nxt,) = codec.resume()
    assert nxt.headers.get(":path") == "/next"


def test_h2c_preface_is_a_codec_error():
    events = ServerCodec().feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert events == [ProtocolError(status=400, details="http1.codec_error")]
    assert events[0].body == b"Bad Request"


# Errors --------------------------------------------------------------------------------------


def test_error_after_headers_follows_the_body_seen_so_far():
    codec = ServerCodec()
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n"
    events = codec.feed(raw)
    assert [type(e) for e in events] == [RequestHeaders, RequestData, ProtocolError]
    assert events[2].details == "http1.codec_error"
    assert codec.feed(b"GET / HTTP/1.1\r\n\r\n") == [] and codec.close_after_response


def test_header_block_bounded_while_it_spans_reads():
    codec = ServerCodec(Http1Settings(max_request_headers_kb=1))
    assert codec.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 512) == []
    assert codec.feed(b"v" * 600) == [ProtocolError(status=431, details="http1.headers_too_large")]


def test_pipelined_request_after_a_large_body_is_not_miscounted():
    body = b"x" * 70000
    raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 70000\r\n\r\n" + body + b"GET /2 HTTP/1.1"
    codec = ServerCodec()
    events = codec.feed(raw)
    assert events[-1] == RequestData(data=body, end_stream=True)
    assert codec.resume() == []
    (event,) = codec.feed(b"\r\nHost: a\r\n\r\n") or codec.resume()
    assert event.headers.get(":path") == "/2"


def test_too_many_headers_counts_after_drops():
    settings = Http1Settings(
        max_request_headers_count=2,
        headers_with_underscores_action=HeadersWithUnderscoresAction.DROP_HEADER,
    )
    ok = ServerCodec(settings).feed(b"GET / HTTP/1.1\r\nHost: a\r\nx_1: 1\r\nx-2: 2\r\n\r\n")
    assert isinstance(ok[0], RequestHeaders)
    bad = ServerCodec(settings).feed(b"GET / HTTP/1.1\r\nHost: a\r\nx-1: 1\r\nx-2: 2\r\n\r\n")
    assert bad == [ProtocolError(status=431, details="http1.too_many_headers")]


def test_protocol_error_validates():
    with pytest.raises(ValueError):
        ProtocolError(status=99, details="x")
    with pytest.raises(ValueError):
        ProtocolError(status=400, details="")


# The chunking property -----------------------------------------------------------------------

PROPERTY_INPUTS = [
    GET,
    PIPELINED,
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
    b"GET /x HTTP/1.1\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\r\n b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nraw data",
    b"GET http://foo/bar HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x01\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nq\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n chunked\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 2\r\n"
    b"\r\nokGET / HTTP/1.1\r\nHost: a\r\n\r\n",
]


@pytest.mark.parametrize("raw", PROPERTY_INPUTS, ids=range(len(PROPERTY_INPUTS)))
@pytest.mark.parametrize("chunk", [1, 2, 7, 64])
def test_same_events_whatever_the_reads(raw, chunk):
    settings = Http1Settings(enable_trailers=True)
    whole = coalesce(drain(ServerCodec(settings), raw))
    pieces = coalesce(drain(ServerCodec(settings), raw, chunk))
    assert pieces == whole


# Settings ------------------------------------------------------------------------------------


def test_settings_stateful_key_format_needs_its_formatter():
    with pytest.raises(ValueError, match="header_key_format"):
        Http1Settings(header_key_format=HeaderKeyFormat.STATEFUL)


def test_settings_from_protos():
    from envoy.config.core.v3 import protocol_pb2

    http1 = protocol_pb2.Http1ProtocolOptions(accept_http_10=True, enable_trailers=True)
    http1.allow_absolute_url.value = False
    common = protocol_pb2.HttpProtocolOptions(headers_with_underscores_action=1)
    common.max_headers_count.value = 7
    settings = Http1Settings.from_protos(http1, common, max_request_headers_kb=8)
    assert settings == Http1Settings(
        accept_http_10=True,
        enable_trailers=True,
        allow_absolute_url=False,
        max_request_headers_count=7,
        max_request_headers_kb=8,
        headers_with_underscores_action=HeadersWithUnderscoresAction.REJECT_REQUEST,
    )
    http1.allow_custom_methods = True
    with pytest.raises(ConfigError, match="allow_custom_methods"):
        Http1Settings.from_protos(http1, None, path="hcm")


# Response encoding (byte layout as Envoy's) ----------------------------------------------------


def answered(request: bytes = GET, settings: Http1Settings | None = None) -> ServerCodec:
    codec = ServerCodec(settings or Http1Settings())
    codec.feed(request)
    return codec


def test_chunked_response_when_no_length():
    codec = answered()
    head = codec.encode_headers(
        response((":status", "200"), ("content-type", "text/plain"), ("server", "envoy")), False
    )
    assert head == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nserver: envoy\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
    )
    assert codec.encode_data(b"hello", False) == b"5\r\nhello\r\n"
    assert codec.encode_data(b"x" * 300, False) == b"12c\r\n" + b"x" * 300 + b"\r\n"
    assert codec.encode_data(b"", False) == b""
    assert codec.encode_data(b"!", True) == b"1\r\n!\r\n0\r\n\r\n"
    assert not codec.close_after_response


def test_headers_only_response_gets_content_length_zero():
    head = answered().encode_headers(response((":status", "404"), ("x-a", "1")), True)
    assert head == b"HTTP/1.1 404 Not Found\r\nx-a: 1\r\ncontent-length: 0\r\n\r\n"


@pytest.mark.parametrize(
    ("status", "line"),
    [
        (200, b"HTTP/1.1 200 OK"),
        (426, b"HTTP/1.1 426 Upgrade Required"),
        (418, b"HTTP/1.1 418 Unknown"),
        (299, b"HTTP/1.1 299 Unknown"),
        (599, b"HTTP/1.1 599 Last Unassigned Server Error Code"),
    ],
)
def test_reason_phrases_are_envoys(status, line):
    head = answered().encode_headers(response((":status", str(status))), True)
    assert head.split(b"\r\n")[0] == line


def test_204_and_304_have_no_body_framing():
    head = answered().encode_headers(response((":status", "204")), True)
    assert head == b"HTTP/1.1 204 No Content\r\n\r\n"
    codec = answered()
    head = codec.encode_headers(response((":status", "304"), ("content-length", "5")), False)
    assert head == b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n"
    assert codec.encode_data(b"hello", True) == b""


def test_head_response_without_length_announces_chunked_but_sends_no_body():
    codec = answered(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    head = codec.encode_headers(response((":status", "200")), True)
    assert head == b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


def test_100_continue_then_final_response():
    codec = answered(
        b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    )
    assert codec.encode_headers(response((":status", "100")), False) == (
        b"HTTP/1.1 100 Continue\r\n\r\n"
    )
    assert codec.feed(b"ok") == [RequestData(data=b"ok", end_stream=True)]
    head = codec.encode_headers(response((":status", "201")), True)
    assert head == b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n"
    assert not codec.close_after_response


def test_trailers_only_when_enabled_and_chunked():
    trailers = HeaderMap([("x-t", "1")])
    codec = answered(settings=Http1Settings(enable_trailers=True))
    codec.encode_headers(response((":status", "200")), False)
    codec.encode_data(b"ab", False)
    assert codec.encode_trailers(trailers) == b"0\r\nx-t: 1\r\n\r\n"
    codec = answered()
    codec.encode_headers(response((":status", "200")), False)
    assert codec.encode_trailers(trailers) == b"0\r\n\r\n"


def test_transfer_encoding_from_filters_is_not_repeated():
    head = answered().encode_headers(
        response((":status", "200"), ("transfer-encoding", "chunked")), False
    )
    assert head.count(b"transfer-encoding") == 1


def test_connection_close_response_closes():
    codec = answered()
    codec.encode_headers(response((":status", "200"), ("connection", "close")), True)
    assert codec.close_after_response


@pytest.mark.parametrize("value", ["a\r\nx-injected: 1", "a\nb", "a\rb", "a\x00b"])
def test_header_values_that_would_split_the_message_are_refused(value):
    with pytest.raises(ValueError):
        answered().encode_headers(response((":status", "200"), ("x-a", value)), True)


def test_reply_to_a_protocol_error():
    codec = ServerCodec()
    (error,) = codec.feed(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n")
    assert error == ProtocolError(status=400, details="http1.codec_error")
    head = codec.encode_headers(
        response((":status", "400"), ("content-length", "11"), ("connection", "close")), False
    )
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert codec.encode_data(error.body, True) == b"Bad Request"
    assert codec.close_after_response


def test_a_repeated_request_header_keeps_each_value_at_its_place():
    (event,) = ServerCodec().feed(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nX-A: 3\r\nX-B: 2\r\n\r\n"
    )
    assert list(event.headers.items()) == [
        (":method", "GET"), (":path", "/"), (":authority", "a"), ("x-a", "1"), ("x-a", "3"),
        ("x-b", "2"),
    ]  # fmt: skip


@pytest.mark.parametrize("host", [b"a b", b"a^b", b'a"b'])
def test_a_host_envoy_refuses_is_a_protocol_error(host):
    events = ServerCodec().feed(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert events == [ProtocolError(status=400, details="http.invalid_authority")]


def test_a_status_that_is_no_number_is_refused():
    codec = answered()
    with pytest.raises(ValueError):
        codec.encode_headers(response((":status", "2xx")), True)
    head = codec.encode_headers(response((":status", "200")), True)  # nothing was framed
    assert head == b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


def test_pseudo_headers_and_names_seen_first_by_the_encoder():
    head = answered().encode_headers(
        response((":status", "200"), ("x-first-seen-here", "1"), (":other", "x")), True
    )
    assert head == b"HTTP/1.1 200 OK\r\nx-first-seen-here: 1\r\ncontent-length: 0\r\n\r\n"


def test_holding_says_whether_resume_has_anything_to_release():
    codec = ServerCodec()
    codec.feed(GET)
    assert codec.paused and not codec.holding  # resume() would only unpause it
    assert codec.resume() == [] and not codec.paused
    codec.feed(GET + GET)
    assert codec.paused and codec.holding  # the second request is held
    codec.feed(b"GET /3 HTTP/1.1\r\nHost: h\r\n\r\n")  # buffered unparsed
    assert [e.headers.get(":path") for e in codec.resume()] == ["/a?b=1"]
    assert codec.paused and codec.holding  # the buffered bytes are still to parse
    assert [e.headers.get(":path") for e in codec.resume()] == ["/3"]
    assert codec.paused and not codec.holding


# Release ---------------------------------------------------------------------------------------


def test_a_released_codec_is_freed_by_reference_counting():
    """llhttp holds the codec's bound callbacks (a cycle): ``release`` breaks it, so a closed
    connection's codec and its last request go at once, without the cyclic collector."""

    def used(release: bool) -> None:
        codec = ServerCodec()
        assert [type(e) for e in codec.feed(GET)] == [RequestHeaders]
        if release:
            codec.release()

    assert {"ServerCodec", "RequestHeaders"} <= cyclic_garbage(lambda: used(False))
    assert cyclic_garbage(lambda: used(True)) == set()


def test_a_released_codec_parses_nothing_more():
    codec = ServerCodec()
    codec.feed(GET)
    codec.release()
    assert codec.feed(GET) == []
    assert codec.resume() == []


# ignore_http_11_upgrade -------------------------------------------------------------------


def _ignoring(*values: str) -> Http1Settings:
    from envoy.config.core.v3 import protocol_pb2

    opts = protocol_pb2.Http1ProtocolOptions()
    for value in values:
        opts.ignore_http_11_upgrade.add(exact=value)
    return Http1Settings.from_protos(opts)


IGNORED_CHUNKED = (
    b"POST /u HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade, x-n\r\n"
    b"X-N: 1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n"
)


@pytest.mark.parametrize("chunk", [None, 1, 7])
def test_an_ignored_upgrade_with_a_chunked_body_is_a_plain_request(chunk):
    codec = ServerCodec(_ignoring("websocket"))
    events = coalesce(drain(codec, IGNORED_CHUNKED + GET, chunk))
    head, data, second = events
    assert isinstance(head, RequestHeaders) and not head.upgrade and not head.end_stream
    assert "upgrade" not in head.headers and "x-n" not in head.headers
    assert data == RequestData(data=b"body", end_stream=True)
    assert isinstance(second, RequestHeaders) and second.headers[":path"] == "/a?b=1"


def test_an_upgrade_not_matched_whole_and_by_case_stays_an_upgrade():
    for value in (b"WebSocket", b"websocket, h2c"):
        codec = ServerCodec(_ignoring("websocket"))
        raw = b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: " + value + b"\r\nConnection: upgrade\r\n\r\n"
        (head,) = codec.feed(raw)
        assert head.upgrade and head.headers["upgrade"] == value.decode()
