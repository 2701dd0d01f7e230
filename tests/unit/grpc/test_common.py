"""gRPC on HTTP: content types, grpc-status, the status mappings, grpc-timeout, paths, frames."""

from __future__ import annotations

import pytest

from legatus.grpc.common import (
    INVALID_CODE,
    FrameDecoder,
    FrameInspector,
    format_grpc_timeout,
    frame,
    grpc_status,
    grpc_to_http_status,
    has_grpc_content_type,
    http_to_grpc_status,
    is_connect_request_headers,
    is_connect_streaming_request_headers,
    is_grpc_request_headers,
    is_grpc_response_headers,
    parse_grpc_timeout,
    resolve_service_and_method,
)
from legatus.http.headers import HeaderMap


def h(*items) -> HeaderMap:
    return HeaderMap(items)


@pytest.mark.parametrize(
    ("content_type", "grpc"),
    [("application/grpc", True), ("application/grpc+proto", True), ("application/grpc+", True),
     ("application/grpc-web", False), ("application/grpcx", False), ("Application/grpc", False),
     ("application/grpc;charset=utf-8", False), ("", False)],
)  # fmt: skip
def test_grpc_content_type(content_type, grpc):
    assert has_grpc_content_type(h(("content-type", content_type))) is grpc
    assert is_grpc_request_headers(h((":path", "/a/b"), ("content-type", content_type))) is grpc


def test_requests_need_a_path():
    assert not is_grpc_request_headers(h(("content-type", "application/grpc")))
    assert not is_grpc_request_headers(None)
    assert is_connect_request_headers(h((":path", "/a"), ("connect-protocol-version", "1")))
    assert is_connect_streaming_request_headers(
        h((":path", "/a"), ("content-type", "application/connect+json"))
    )


def test_grpc_responses():
    assert is_grpc_response_headers(h((":status", "200"), ("content-type", "application/grpc")),
                                    False)  # fmt: skip
    assert not is_grpc_response_headers(h((":status", "503"), ("content-type", "application/grpc")),
                                        False)  # fmt: skip
    assert is_grpc_response_headers(h((":status", "503"), ("grpc-status", "14")), True)
    assert not is_grpc_response_headers(h((":status", "200"), ("content-type", "application/grpc")),
                                        True)  # trailers-only needs grpc-status  # fmt: skip


@pytest.mark.parametrize(
    ("value", "allow", "expected"),
    [(None, False, None), ("", False, None), ("0", False, 0), ("16", False, 16),
     ("17", False, INVALID_CODE), ("17", True, 17), ("abc", True, INVALID_CODE),
     ("-1", True, INVALID_CODE), (" 5 ", False, 5), ("+5", False, 5)],
)  # fmt: skip
def test_grpc_status(value, allow, expected):
    headers = h() if value is None else h(("grpc-status", value))
    assert grpc_status(headers, allow_user_defined=allow) == expected


def test_status_mappings():
    assert [http_to_grpc_status(c) for c in (400, 401, 403, 404, 429, 502, 503, 504, 500, 200)] == [
        13, 16, 7, 12, 14, 14, 14, 14, 2, 2]  # fmt: skip
    assert [grpc_to_http_status(s) for s in range(17)] == [
        200,
        499,
        500,
        400,
        504,
        404,
        409,
        403,
        429,
        400,
        409,
        400,
        501,
        500,
        503,
        500,
        401,
    ]
    assert grpc_to_http_status(INVALID_CODE) == 500 and grpc_to_http_status(99) == 500


@pytest.mark.parametrize(
    ("value", "ms"),
    [("2S", 2000), ("50m", 50), ("3M", 180000), ("1H", 3600000), ("1500u", 2), ("1000u", 1),
     ("1n", 1), ("0S", 0), ("99999999m", 99999999), ("100000000m", None), ("5", None),
     ("S", None), ("", None), (None, None), ("5x", None), ("-5S", None), (" 5 S", 5000)],
)  # fmt: skip
def test_parse_grpc_timeout(value, ms):
    assert parse_grpc_timeout(value) == ms


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0, "0m"), (1900, "1900m"), (99999999, "99999999m"), (100000000, "100000S"),
     (99999999 * 1000 + 999, "99999999S"), (10**11, "1666666M"), (10**18, "99999999H")],
)  # fmt: skip
def test_format_grpc_timeout(ms, text):
    assert format_grpc_timeout(ms) == text


@pytest.mark.parametrize(
    ("path", "names"),
    [("/pkg.Svc/Call", ("pkg.Svc", "Call")), ("/a/b?c=/d/e", ("a", "b")), ("//a//b/", ("a", "b")),
     ("/a", None), ("/a/b/c", None), (None, None), ("", None)],
)  # fmt: skip
def test_resolve_service_and_method(path, names):
    assert resolve_service_and_method(path) == names


def test_frame_inspector_counts_frames_as_they_start():
    inspector = FrameInspector()
    data = frame(b"abc") + frame(b"") + frame(b"defgh", 1)
    counts = [inspector.inspect(data[i : i + 2]) for i in range(0, len(data), 2)]
    assert sum(counts) == 3 == inspector.count
    assert counts[0] == 1  # the first byte of the first frame


def test_frame_decoder_keeps_complete_frames():
    decoder = FrameDecoder()
    data = frame(b"abc") + frame(b"xy", 0x80)
    decoder.inspect(data[:6])
    assert decoder.take() == []
    decoder.inspect(data[6:])
    assert decoder.take() == [(0, b"abc"), (0x80, b"xy")]
