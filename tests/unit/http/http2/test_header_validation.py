"""Header blocks as Envoy's HTTP/2 codec checks them (names, values, pseudo-headers, limits)
and shapes them (cookies, host, underscores)."""

from __future__ import annotations

import pytest

from legatus.http.http1.settings import HeadersWithUnderscoresAction as Underscores
from legatus.http.http2 import Http2Settings
from legatus.http.http2 import frames as f
from legatus.http.http2.header_validation import (
    HEADER_LIST_SIZE_TOO_LARGE,
    INVALID_HEADER_FIELD,
    TOO_MANY_HEADERS,
    UNEXPECTED_UNDERSCORE,
    VIOLATION_OF_MESSAGING_RULE,
    Head,
    Rejection,
    check_request,
    check_response,
    check_trailers,
)

SETTINGS = Http2Settings()
REQUEST = [(":method", "GET"), (":scheme", "https"), (":authority", "a.example"), (":path", "/")]


def raw(fields) -> list[tuple[bytes, bytes]]:
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in fields]


def request(*extra, base=REQUEST, settings=SETTINGS):
    return check_request(raw([*base, *extra]), settings)


def test_a_plain_request_keeps_its_order_and_values():
    head = request(("accept", " */* "), ("x-b", "1"), ("x-b", "2"))
    assert isinstance(head, Head)
    assert list(head.header_map().items()) == [
        *REQUEST,
        ("accept", " */* "),
        ("x-b", "1"),
        ("x-b", "2"),
    ]
    assert head.repeated and head.content_length is None and not head.connect


def test_cookies_are_joined_at_the_end_and_host_becomes_the_authority():
    base = [(":method", "GET"), (":scheme", "http"), (":path", "/")]
    head = request(
        ("cookie", "a=1"), ("host", "h.example"), ("x", "y"), ("cookie", "b=2"), base=base
    )
    assert list(head.header_map().items()) == [
        *base,
        (":authority", "h.example"),
        ("x", "y"),
        ("cookie", "a=1; b=2"),
    ]
    head = request(("host", "other.example"))
    assert head.header_map().get(":authority") == "a.example" and "host" not in head.items[4:]


def test_content_length_expect_and_connect():
    head = request(("content-length", "12"), ("expect", "100-Continue"))
    assert head.content_length == 12 and head.expect_continue
    head = request(base=[(":method", "CONNECT"), (":authority", "a.example:443")])
    assert head.connect


@pytest.mark.parametrize(
    ("extra", "base", "details"),
    [
        ((("X-Up", "1"),), REQUEST, INVALID_HEADER_FIELD),
        ((("x y", "1"),), REQUEST, INVALID_HEADER_FIELD),
        ((("", "1"),), REQUEST, INVALID_HEADER_FIELD),
        ((("x-a", "a\x00b"),), REQUEST, INVALID_HEADER_FIELD),
        ((("x-a", "a\rb"),), REQUEST, INVALID_HEADER_FIELD),
        ((("x-a", "a\x7fb"),), REQUEST, INVALID_HEADER_FIELD),
        ((("connection", "close"),), REQUEST, INVALID_HEADER_FIELD),
        ((("keep-alive", "1"),), REQUEST, INVALID_HEADER_FIELD),
        ((("transfer-encoding", "chunked"),), REQUEST, INVALID_HEADER_FIELD),
        ((("upgrade", "h2c"),), REQUEST, INVALID_HEADER_FIELD),
        ((("te", "gzip"),), REQUEST, INVALID_HEADER_FIELD),
        ((("content-length", "1x"),), REQUEST, INVALID_HEADER_FIELD),
        ((("content-length", "1"), ("content-length", "1")), REQUEST, INVALID_HEADER_FIELD),
        (((":path", "/again"),), REQUEST, INVALID_HEADER_FIELD),
        (((":protocol", "websocket"),), REQUEST, INVALID_HEADER_FIELD),
        (((":status", "200"),), REQUEST, INVALID_HEADER_FIELD),
        ((("x", "1"), (":foo", "1")), REQUEST, INVALID_HEADER_FIELD),
        ((), [(":method", "G T"), *REQUEST[1:]], INVALID_HEADER_FIELD),
        ((), [*REQUEST[:2], (":authority", "a b"), REQUEST[3]], INVALID_HEADER_FIELD),
        ((), [*REQUEST[:3], (":path", "")], INVALID_HEADER_FIELD),
        ((), REQUEST[:3], VIOLATION_OF_MESSAGING_RULE),
        ((), REQUEST[1:], VIOLATION_OF_MESSAGING_RULE),
        ((), [REQUEST[0], *REQUEST[2:]], VIOLATION_OF_MESSAGING_RULE),
        ((), [*REQUEST[:2], REQUEST[3]], VIOLATION_OF_MESSAGING_RULE),
        ((), [*REQUEST[:3], (":path", "http://a/")], VIOLATION_OF_MESSAGING_RULE),
        (
            (),
            [(":method", "CONNECT"), (":authority", "a:1"), (":path", "/")],
            VIOLATION_OF_MESSAGING_RULE,
        ),
    ],
)
def test_malformed_requests(extra, base, details):
    rejection = request(*extra, base=base)
    assert rejection == Rejection(details)


def test_options_asterisk_is_a_request_the_connection_manager_answers():
    assert isinstance(request(base=[(":method", "OPTIONS"), *REQUEST[1:3], (":path", "*")]), Head)


def test_limits_reset_the_stream_with_internal_error():
    many = [(f"x-{i}", "v") for i in range(97)]  # 4 pseudo + 97 > 100
    rejection = request(*many)
    assert rejection == Rejection(TOO_MANY_HEADERS, f.INTERNAL_ERROR, "header_overflow")
    assert isinstance(request(*many[:96]), Head)
    pseudo = sum(len(n) + len(v) for n, v in REQUEST)
    big = 60 * 1024 - pseudo - len("x-big")
    assert isinstance(request(("x-big", "v" * big)), Head)
    assert request(("x-big", "v" * (big + 1))) == Rejection(
        HEADER_LIST_SIZE_TOO_LARGE, f.INTERNAL_ERROR, "header_list_size_too_large"
    )
    small = Http2Settings(max_headers_kb=1, max_headers_count=5)
    assert request(("x-big", "v" * 1000), settings=small).details == HEADER_LIST_SIZE_TOO_LARGE
    assert request(("a", "1"), ("b", "2"), settings=small).details == TOO_MANY_HEADERS


def test_headers_with_underscores():
    drop = Http2Settings(headers_with_underscores_action=Underscores.DROP_HEADER)
    head = request(("x_a", "1"), ("x-b", "2"), settings=drop)
    assert head.dropped == 1 and "x_a" not in head.header_map()
    reject = Http2Settings(headers_with_underscores_action=Underscores.REJECT_REQUEST)
    assert request(("x_a", "1"), settings=reject).details == UNEXPECTED_UNDERSCORE
    assert "x_a" in request(("x_a", "1")).header_map()  # ALLOW, Envoy's default


def test_trailers_and_responses():
    assert isinstance(check_trailers(raw([("grpc-status", "0")]), SETTINGS), Head)
    assert check_trailers(raw([(":path", "/")]), SETTINGS).details == VIOLATION_OF_MESSAGING_RULE
    head = check_response(raw([(":status", "200"), ("content-length", "3")]), SETTINGS)
    assert head.content_length == 3
    for bad in (
        [("x", "1")],
        [(":status", "2000")],
        [(":status", "101")],
        [(":status", "200"), (":path", "/")],
        [(":status", "200"), ("Upper", "1")],
    ):
        assert isinstance(check_response(raw(bad), SETTINGS), Rejection), bad


ALLOW_CONNECT = Http2Settings(allow_connect=True)
EXTENDED_CONNECT = [
    (":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
    (":authority", "a.example"), (":path", "/chat"),
]  # fmt: skip


def test_extended_connect_becomes_an_upgrade():
    head = request(("sec-websocket-version", "13"), base=EXTENDED_CONNECT, settings=ALLOW_CONNECT)
    assert isinstance(head, Head) and head.upgrade and not head.connect
    assert list(head.header_map().items()) == [
        (":method", "GET"), (":scheme", "https"), (":authority", "a.example"), (":path", "/chat"),
        ("sec-websocket-version", "13"), ("upgrade", "websocket"), ("connection", "upgrade"),
    ]  # fmt: skip
    connect = request(base=[(":method", "CONNECT"), (":authority", "a:1")], settings=ALLOW_CONNECT)
    assert connect.connect and connect.upgrade
    assert not request(settings=ALLOW_CONNECT).upgrade


@pytest.mark.parametrize(
    ("base", "details"),
    [
        (EXTENDED_CONNECT, None),  # allowed: see above
        ([(":method", "GET"), *EXTENDED_CONNECT[1:]], VIOLATION_OF_MESSAGING_RULE),
        ([f for f in EXTENDED_CONNECT if f[0] != ":path"], VIOLATION_OF_MESSAGING_RULE),
        ([f for f in EXTENDED_CONNECT if f[0] != ":scheme"], VIOLATION_OF_MESSAGING_RULE),
        ([*EXTENDED_CONNECT[:4], (":path", "a.example:443")], VIOLATION_OF_MESSAGING_RULE),
        (
            [EXTENDED_CONNECT[0], (":protocol", "web socket"), *EXTENDED_CONNECT[2:]],
            INVALID_HEADER_FIELD,
        ),
    ],
)
def test_extended_connect_rules(base, details):
    head = request(base=base, settings=ALLOW_CONNECT)
    if details is None:
        assert isinstance(head, Head)
    else:
        assert isinstance(head, Rejection) and head.details == details
    # Without allow_connect, :protocol is refused as it arrives.
    assert request(base=EXTENDED_CONNECT) == Rejection(INVALID_HEADER_FIELD)
