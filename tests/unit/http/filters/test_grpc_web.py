"""The grpc_web filter through the real filter manager: request translation, base64 bodies in
pieces, trailers into a body frame, non-gRPC answers into grpc-message, local replies, stats."""

from __future__ import annotations

import base64

import pytest

from legatus.extensions.filters.http.grpc_web.filter import (
    GrpcWebConfig,
    GrpcWebFilter,
    decode_base64,
)
from legatus.grpc.common import frame
from legatus.grpc.context import GrpcStatsContext
from legatus.stats.store import Store
from tests.unit.http.filters.grpc_support import (
    ClusterManager,
    Route,
    Stream,
    cluster_manager,
    stat_values,
)

GRPC_OK = [(":status", "200"), ("content-type", "application/grpc")]
TRAILERS = [("grpc-status", "0"), ("grpc-message", "fine")]


def stream(store: Store | None = None, **kw) -> Stream:
    store = Store() if store is None else store
    config = GrpcWebConfig(cluster_manager=cluster_manager(store), stats=GrpcStatsContext())
    return Stream([GrpcWebFilter(config)], **kw)


def web_request(content_type="application/grpc-web+proto", *extra, path="/pkg.Svc/Call"):
    return [(":method", "POST"), (":path", path), (":authority", "x"),
            ("content-type", content_type), ("content-length", "7"), *extra]  # fmt: skip


def test_request_becomes_grpc():
    s = stream()
    s.send(web_request("application/grpc-web", ("grpc-timeout", "1S")), frame(b"hi"))
    assert list(s.upstream.request.items()) == [
        (":method", "POST"), (":path", "/pkg.Svc/Call"), (":authority", "x"),
        ("content-type", "application/grpc"), ("grpc-timeout", "1S"), ("te", "trailers"),
        ("grpc-accept-encoding", "identity"),
    ]  # fmt: skip
    assert s.upstream.body == frame(b"hi") and s.upstream.ended
    assert s.info.is_grpc_request is False  # as it arrived: local replies are plain HTTP


def test_client_grpc_accept_encoding_is_kept():
    s = stream()
    s.send(web_request("application/grpc-web", ("grpc-accept-encoding", "gzip")), frame(b"x"))
    assert s.upstream.request.get("grpc-accept-encoding") == "gzip"


@pytest.mark.parametrize(
    "content_type",
    [
        "application/grpc-web+json",
        "application/grpc",
        "application/grpc-web; charset=x",
        "text/plain",
    ],
)
def test_other_content_types_pass_untouched(content_type):
    s = stream()
    s.send(web_request(content_type), b"payload")
    assert s.upstream.request.get("content-type") == content_type
    assert s.upstream.request.get("content-length") == "7" and "te" not in s.upstream.request
    s.upstream.respond(GRPC_OK, frame(b"r"), TRAILERS)
    assert s.sink.headers.get("content-type") == "application/grpc"
    assert s.sink.trailers is not None and list(s.sink.trailers.items()) == TRAILERS


def test_text_request_is_decoded_in_four_character_groups():
    s = stream()
    encoded = base64.b64encode(frame(b"hello"))  # 16 characters
    s.send(web_request("application/grpc-web-text"), [encoded[:3], encoded[3:9], encoded[9:]])
    assert s.upstream.body == frame(b"hello") and s.upstream.ended


def test_text_request_segments_decode_on_their_own():
    """Envoy decodes what it has at each read: padding at the end of a read is fine."""
    s = stream()
    s.send(web_request("application/grpc-web-text"), [b"YQ==", b"Yg=="])
    assert s.upstream.body == b"ab"


@pytest.mark.parametrize(
    ("body", "details"),
    [([b"abc"], "grpc_base_64_decode_failed_bad_size"),
     ([b"YQ==YQ=="], "grpc_base_64_decode_failed"),
     ([b"YR=="], "grpc_base_64_decode_failed"),  # stray bits
     ([b"ab!d"], "grpc_base_64_decode_failed"),
     ([b"AAAA", b"A"], "grpc_base_64_decode_failed_bad_size")],
)  # fmt: skip
def test_bad_base64_is_a_400_translated_for_the_client(body, details):
    s = stream()
    s.send(web_request("application/grpc-web-text", ("accept", "application/grpc-web-text")), body)
    assert s.info.response_code_details == details
    assert list(s.sink.headers.items()) == [
        (":status", "400"), ("content-type", "application/grpc-web-text+proto"),
        ("grpc-message", "Bad gRPC-web request, invalid base64 data."), ("grpc-status", "13"),
        ("content-length", "0"),
    ]  # fmt: skip
    assert s.sink.body == b"" and s.sink.ended


def test_decode_base64_is_strict():
    assert decode_base64(b"aGk=") == b"hi"
    for bad in (b"aGk", b"aG=k", b"====", b"aGl=", b"aGk=aGk=", b"a\nGk"):
        assert decode_base64(bad) is None, bad


def test_trailers_become_a_body_frame():
    s = stream()
    s.send(web_request(), frame(b"q"))
    s.upstream.respond([*GRPC_OK, ("content-length", "7")], frame(b"r"), TRAILERS)
    assert list(s.sink.headers.items()) == [
        (":status", "200"), ("content-type", "application/grpc-web+proto")]  # fmt: skip
    block = b"grpc-status:0\r\ngrpc-message:fine\r\n"
    assert s.sink.body == frame(b"r") + b"\x80" + len(block).to_bytes(4, "big") + block
    trailers = s.sink.trailers
    assert trailers is not None and len(trailers) == 0 and s.sink.ended


def test_text_response_encodes_each_frame():
    s = stream()
    s.send(web_request("application/grpc-web-text", ("accept", "application/grpc-web-text")),
           base64.b64encode(frame(b"q")))  # fmt: skip
    message = frame(b"first") + frame(b"second")
    s.upstream.respond(GRPC_OK, [message[:3], message[3:12], message[12:]], TRAILERS)
    assert s.sink.headers.get("content-type") == "application/grpc-web-text+proto"
    block = b"grpc-status:0\r\ngrpc-message:fine\r\n"
    assert s.sink.body == (
        base64.b64encode(frame(b"first")) + base64.b64encode(frame(b"second"))
        + base64.b64encode(b"\x80" + len(block).to_bytes(4, "big") + block)
    )  # fmt: skip


def test_trailers_only_response_keeps_its_status_in_the_headers():
    s = stream()
    s.send(web_request(), frame(b"q"))
    s.upstream.respond([*GRPC_OK, ("grpc-status", "5"), ("grpc-message", "no")])
    assert list(s.sink.headers.items()) == [
        (":status", "200"), ("content-type", "application/grpc-web+proto"),
        ("grpc-status", "5"), ("grpc-message", "no"),
    ]  # fmt: skip
    assert s.sink.ended


def test_non_grpc_response_moves_its_body_into_grpc_message():
    s = stream()
    s.send(web_request(), frame(b"q"))
    s.upstream.respond(
        [(":status", "503"), ("content-type", "text/plain"), ("content-length", "9")],
        [b"oops ", b"100%"],
    )
    assert list(s.sink.headers.items()) == [
        (":status", "503"), ("content-type", "application/grpc-web+proto"),
        ("grpc-message", "oops 100%25"), ("grpc-status", "14"), ("content-length", "0"),
    ]  # fmt: skip
    assert s.sink.body == b"" and s.sink.ended


def test_non_grpc_response_with_trailers():
    s = stream()
    s.send(web_request(), frame(b"q"))
    s.upstream.respond([(":status", "404")], b"missing", [("x-t", "1")])
    headers = s.sink.headers
    assert (headers.get("grpc-message"), headers.get("grpc-status")) == ("missing", "12")
    assert s.sink.body == b"" and list(s.sink.trailers.items()) == [("x-t", "1")]


def test_a_long_non_grpc_body_is_cut_once_in_pieces():
    s = stream()
    s.send(web_request(), frame(b"q"))
    s.upstream.respond([(":status", "500")], [b"a" * 10000, b"b" * 10000, b"c" * 10])
    assert len(s.sink.headers.get("grpc-message")) == 16384


def test_proto_encoded_grpc_web_response_passes():
    s = stream()
    s.send(web_request(), frame(b"q"))
    s.upstream.respond([(":status", "200"), ("content-type", "Application/Grpc-Web; x=y")],
                       b"raw")  # fmt: skip
    assert s.sink.body == b"raw" and "grpc-status" not in s.sink.headers


def test_local_reply_after_translation_is_plain_http_then_translated():
    """The router's reply to a gRPC-Web request: Envoy's filter manager saw no gRPC request,
    so a 503 text reply comes back through the filter, not a trailers-only gRPC one."""
    s = stream()
    s.send(web_request(), frame(b"q"))
    s.upstream.decoder_callbacks.send_local_reply(
        503, b"no healthy upstream", details="no_healthy_upstream"
    )
    assert list(s.sink.headers.items()) == [
        (":status", "503"), ("content-type", "application/grpc-web+proto"),
        ("grpc-message", "no healthy upstream"), ("grpc-status", "14"),
        ("content-length", "0"),
    ]  # fmt: skip


def test_empty_local_reply_gets_no_grpc_status():
    s = stream()
    s.send(web_request(), frame(b"q"))
    s.upstream.decoder_callbacks.send_local_reply(503, details="cluster_not_found")
    assert list(s.sink.headers.items()) == [
        (":status", "503"), ("content-type", "application/grpc-web+proto")]  # fmt: skip


def test_stats_per_method_from_grpc_status():
    store = Store()
    for status in ("0", "0", "14"):
        s = stream(store)
        s.send(web_request(), frame(b"q"))
        s.upstream.respond(GRPC_OK, frame(b"r"), [("grpc-status", status)])
    s = stream(store)  # trailers-only
    s.send(web_request(), frame(b"q"))
    s.upstream.respond([*GRPC_OK, ("grpc-status", "5")])
    s = stream(store)  # not gRPC: not counted
    s.send(web_request(), frame(b"q"))
    s.upstream.respond([(":status", "503")], b"x")
    assert stat_values(store) == {
        "grpc-web.pkg.Svc.Call.0": 2, "grpc-web.pkg.Svc.Call.success": 2,
        "grpc-web.pkg.Svc.Call.total": 4, "grpc-web.pkg.Svc.Call.14": 1,
        "grpc-web.pkg.Svc.Call.failure": 2, "grpc-web.pkg.Svc.Call.5": 1,
    }  # fmt: skip


def test_no_stats_without_a_cluster_or_a_method():
    store = Store()
    config = GrpcWebConfig(cluster_manager=ClusterManager(), stats=GrpcStatsContext())
    s = Stream([GrpcWebFilter(config)], route=Route(cluster_name="unknown"))
    s.send(web_request(), frame(b"q"))
    s.upstream.respond(GRPC_OK, frame(b"r"), TRAILERS)
    s = stream(store)
    s.send(web_request(path="/not-a-method"), frame(b"q"))
    s.upstream.respond(GRPC_OK, frame(b"r"), TRAILERS)
    assert stat_values(store) == {}
