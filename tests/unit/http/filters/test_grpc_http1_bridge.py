"""The grpc_http1_bridge filter through the real filter manager: what is bridged, trailers into
headers, the upgrade's frame header on the request and off the response, buffer limits."""

from __future__ import annotations

import types

import pytest

from legatus.extensions.filters.http.grpc_http1_bridge.filter import (
    Http1BridgeConfig,
    Http1BridgeFilter,
    is_ok_status,
)
from legatus.grpc.common import frame
from legatus.http.headers import HeaderMap
from tests.unit.http.filters.grpc_support import Stream

GRPC_OK = [(":status", "200"), ("content-type", "application/grpc")]
FAIL = [("grpc-status", "14"), ("grpc-message", "down")]


def stream(protocol="HTTP/1.1", limit=1 << 20, **config) -> Stream:
    s = Stream([Http1BridgeFilter(Http1BridgeConfig(**config))], buffer_limit=limit)
    s.info.protocol = protocol
    s.sink.connection = types.SimpleNamespace(buffer_limit=limit)  # (the stream's connection)
    s.watermarks = []
    s.sink.on_watermark = lambda *, decoding, above: s.watermarks.append((decoding, above))
    return s


def request(content_type="application/grpc", path="/pkg.Svc/Call", length=7):
    return [(":method", "POST"), (":path", path), (":authority", "x"),
            ("content-type", content_type), ("content-length", str(length))]  # fmt: skip


def events(s: Stream) -> list:
    return [(kind, list(p.items()) if kind != "data" and p is not None else p, end)
            for kind, p, end in s.sink.events]  # fmt: skip


@pytest.mark.parametrize(
    ("value", "ok"),
    [("0", True), ("+0", True), (" 00\t", True), ("-0", False), ("", False), ("1", False),
     ("abc", False), ("0x0", False), ("\u0660", False)],
)  # fmt: skip
def test_ok_status_reads_as_an_unsigned_zero(value, ok):
    assert is_ok_status(value) is ok


def test_the_response_waits_for_its_trailers():
    s = stream()
    s.send(request(), frame(b"hi"))
    router = s.upstream.decoder_callbacks
    router.encode_headers(HeaderMap(GRPC_OK), False)
    router.encode_data(frame(b"a"), False)
    router.encode_data(frame(b"bc"), False)
    assert s.sink.events == []  # (no trailers yet: nothing goes out)
    router.encode_trailers(HeaderMap(FAIL))
    assert events(s) == [
        ("headers", [(":status", "503"), ("content-type", "application/grpc"),
                     ("grpc-status", "14"), ("grpc-message", "down"),
                     ("content-length", "13")], False),
        ("data", frame(b"a"), False), ("data", frame(b"bc"), False),
        ("trailers", FAIL, True),
    ]  # fmt: skip


def test_a_response_without_trailers_goes_on_unchanged():
    s = stream()
    s.send(request(), frame(b"hi"))
    s.upstream.respond([(":status", "404")], [b"no", b"pe"])
    assert events(s) == [("headers", [(":status", "404")], False), ("data", b"no", False),
                         ("data", b"pe", True)]  # fmt: skip


@pytest.mark.parametrize(
    ("protocol", "content_type"),
    [("HTTP/2", "application/grpc"), ("HTTP/1.1", "application/grpc-web"),
     ("HTTP/1.1", "text/plain")],
)  # fmt: skip
def test_what_is_not_bridged_passes(protocol, content_type):
    s = stream(protocol, ignore_query_parameters=True)
    s.send(request(content_type, "/pkg.Svc/Call?a=1"), frame(b"hi"))
    assert s.upstream.request.get(":path") == "/pkg.Svc/Call?a=1"
    s.upstream.respond(GRPC_OK, frame(b"a"), FAIL)
    assert [kind for kind, _, _ in s.sink.events] == ["headers", "data", "trailers"]
    assert "grpc-status" not in s.sink.headers


def test_ignore_query_parameters():
    s = stream(ignore_query_parameters=True)
    s.send(request("application/grpc+proto", "/pkg.Svc/Call?a=1?b"), frame(b"hi"))
    assert s.upstream.request.get(":path") == "/pkg.Svc/Call"


def test_upgrade_frames_the_request_and_unframes_the_response():
    s = stream(upgrade_protobuf_to_grpc=True)
    s.send(request("application/x-protobuf", length=5), [b"he", b"llo"])
    assert s.upstream.request.get("content-type") == "application/grpc"
    assert "content-length" not in s.upstream.request
    assert s.upstream.body == frame(b"hello") and s.upstream.ended
    assert s.info.is_grpc_request is False  # as it arrived: local replies stay plain HTTP
    first, second = frame(b"wor")[:3], frame(b"wor")[3:]
    s.upstream.respond(GRPC_OK, [first, second, b"ld"], [("grpc-status", "0")])
    # Envoy drains the first 5 bytes of the first piece, however long it is.
    assert s.sink.body == second + b"ld"
    assert s.sink.headers.get("content-length") == "7"


def test_upgrade_over_http2_changes_only_the_content_type():
    s = stream("HTTP/2", upgrade_protobuf_to_grpc=True)
    s.send(request("application/x-protobuf", length=5), b"hello")
    assert s.upstream.request.get("content-type") == "application/grpc"
    assert s.upstream.body == b"hello"


def test_an_upgraded_request_past_the_limit_stops_being_read():
    s = stream(limit=4, upgrade_protobuf_to_grpc=True)
    s.send(request("application/x-protobuf"), [b"abc", b"de", b"f"])
    assert s.watermarks == [(True, True), (True, False)]
    assert s.upstream.body == frame(b"abcdef")


def test_an_upgraded_response_past_the_limit_resets_the_stream():
    s = stream(limit=4, upgrade_protobuf_to_grpc=True)
    s.send(request("application/x-protobuf"), b"q")
    s.upstream.respond(GRPC_OK, [frame(b"abc"), b"de"], [("grpc-status", "0")])
    assert s.sink.events[0] == ("reset", None, True)  # (a real reset ends the stream here)
    assert s.info.response_code_details == "response_payload_too_large"
