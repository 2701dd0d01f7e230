"""ServerConnection against the h2 package as the client: the connection's life, streams,
trailers, resets, GOAWAY, and what a broken peer gets."""

from __future__ import annotations

import struct

import h2.events
import h2.settings
import hpack
import pytest

from legatus.http.headers import HeaderMap
from legatus.http.http2 import Http2Settings, ResetReason
from legatus.http.http2 import frames as f
from tests.unit.http.http2.peer import (
    GET,
    ServerPair,
    headers_frame,
    post,
    raw,
    rst,
)


def respond(pair: ServerPair, stream_id: int, body: bytes = b"ok", trailers=None) -> None:
    server = pair.server
    stream = server.streams[stream_id]
    server.send_headers(stream, HeaderMap([(":status", "200"), ("server", "envoy")]), False)
    if trailers is None:
        server.send_data(stream, body, True)
    else:
        server.send_data(stream, body, False)
        server.send_trailers(stream, HeaderMap(trailers))


def test_first_frames_are_envoys_settings_and_connection_window():
    pair = ServerPair()
    changed = next(e for e in pair.events if isinstance(e, h2.events.RemoteSettingsChanged))
    values = {k: v.new_value for k, v in changed.changed_settings.items()}
    assert values == {
        h2.settings.SettingCodes.HEADER_TABLE_SIZE: 4096,
        h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 0,
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1024,
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 16 * 1024 * 1024,
    }
    update = next(e for e in pair.events if isinstance(e, h2.events.WindowUpdated))
    assert (update.stream_id, update.delta) == (0, 24 * 1024 * 1024 - 65535)
    assert any(isinstance(e, h2.events.SettingsAcknowledged) for e in pair.events)
    assert pair.error is None


def test_request_head_is_checked_and_shaped_as_envoy():
    pair = ServerPair()
    pair.client.config.normalize_outbound_headers = False  # keep the value's whitespace
    pair.client.config.validate_outbound_headers = False
    fields = [
        (":method", "GET"),
        (":path", "/x"),
        (":scheme", "http"),
        ("host", "h.example"),
        ("cookie", "a=1"),
        ("x-b", " padded\t"),
        ("cookie", "b=2"),
        ("te", "trailers"),
    ]
    pair.client.send_headers(1, fields, end_stream=True)
    pair.exchange()
    ((stream, head, end_stream),) = pair.owner.requests
    assert end_stream and stream.id == 1
    assert list(head.header_map().items()) == [
        (":method", "GET"),
        (":path", "/x"),
        (":scheme", "http"),
        (":authority", "h.example"),
        ("x-b", " padded\t"),
        ("te", "trailers"),
        ("cookie", "a=1; b=2"),
    ]


def test_response_with_body_and_trailers_reaches_the_client():
    pair = ServerPair()
    pair.client.send_headers(1, GET, end_stream=True)
    pair.exchange()
    respond(pair, 1, b"hello", trailers=[("grpc-status", "0")])
    events = pair.receive()
    response = next(e for e in events if isinstance(e, h2.events.ResponseReceived))
    assert response.headers == [(":status", "200"), ("server", "envoy")]
    data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
    assert data == b"hello"
    trailers = next(e for e in events if isinstance(e, h2.events.TrailersReceived))
    assert trailers.headers == [("grpc-status", "0")]
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)
    assert pair.server.streams == {}
    assert pair.stats.streams_active.value == 0


def test_empty_trailers_end_the_stream_with_an_empty_data_frame():
    """As Envoy's codec: no empty HEADERS frame (grpc_web ends a response this way)."""
    pair = ServerPair()
    pair.client.send_headers(1, GET, end_stream=True)
    pair.exchange()
    respond(pair, 1, b"hello", trailers=[])
    events = pair.receive()
    assert not any(isinstance(e, h2.events.TrailersReceived) for e in events)
    data = [e for e in events if isinstance(e, h2.events.DataReceived)]
    assert [e.data for e in data] == [b"hello", b""]
    assert data[-1].stream_ended is not None
    assert pair.server.streams == {}


def test_request_body_and_trailers_reach_the_stream():
    pair = ServerPair()
    pair.client.send_headers(1, post(), end_stream=False)
    pair.client.send_data(1, b"abc")
    pair.client.send_data(1, b"def", pad_length=10)
    pair.client.send_headers(1, [("x-t", "1")], end_stream=True)
    pair.exchange()
    stream = pair.owner.streams[1]
    assert bytes(stream.data) == b"abcdef"
    assert list(stream.trailers.items()) == [("x-t", "1")]
    assert pair.counter("trailers") == 1


def test_many_concurrent_streams_are_independent():
    pair = ServerPair()
    for sid in range(1, 200, 2):
        pair.client.send_headers(sid, GET, end_stream=True)
    pair.exchange()
    assert len(pair.owner.requests) == 100
    for sid in range(199, 0, -2):
        respond(pair, sid, str(sid).encode())
    events = pair.receive()
    bodies = {e.stream_id: e.data for e in events if isinstance(e, h2.events.DataReceived)}
    assert bodies == {sid: str(sid).encode() for sid in range(1, 200, 2)}


def test_padded_prioritised_and_reserved_bit_headers_open_streams_like_plain_ones():
    pair = ServerPair()
    block = hpack.Encoder().encode(GET)
    end = f.FLAG_END_HEADERS | f.FLAG_END_STREAM
    padded = raw(f.HEADERS, end | f.FLAG_PADDED, 1, b"\x03" + block + b"\x00" * 3)
    priority = raw(f.HEADERS, end | f.FLAG_PRIORITY, 3, b"\x00\x00\x00\x00\x10" + block)
    reserved = raw(f.HEADERS, end, (1 << 31) | 5, block)  # the reserved bit is ignored
    assert pair.feed_raw(padded + priority + reserved) is None
    assert [(stream.id, end_stream) for stream, _, end_stream in pair.owner.requests] == [
        (1, True),
        (3, True),
        (5, True),
    ]
    heads = [head.header_map() for _, head, _ in pair.owner.requests]
    assert heads[0] == heads[1] == heads[2]
    assert heads[0].get(":path") == "/p"


def test_request_heads_follow_the_clients_table_block_after_block():
    """A block seen before gives the head it gave (while the table is unchanged); blocks
    that change the table make the next ones decode afresh."""
    pair = ServerPair()
    encoder = hpack.Encoder()
    requests = [("x-a", "1"), ("x-a", "1"), ("x-a", "1"), ("x-b", "2"), ("x-a", "1"), ("x-b", "3")]
    blocks = [encoder.encode([*GET, field]) for field in requests]
    assert blocks[1] == blocks[2] and blocks[4] != blocks[1]  # x-b's entry moved x-a's index
    end = f.FLAG_END_HEADERS | f.FLAG_END_STREAM
    data = b"".join(raw(f.HEADERS, end, 1 + 2 * i, block) for i, block in enumerate(blocks))
    assert pair.feed_raw(data) is None
    got = []
    for _, head, _ in pair.owner.requests:
        headers = head.header_map()
        got.append(next((name, headers.get(name)) for name in ("x-a", "x-b") if name in headers))
    assert got == requests


def test_headers_split_in_continuation_frames_and_a_large_header_block():
    pair = ServerPair()
    big = [(f"x-big-{i}", "v" * 1000) for i in range(40)]  # ~40 KB: HEADERS + CONTINUATIONs
    pair.client.send_headers(1, GET + big, end_stream=True)
    pair.exchange()
    ((_, head, _),) = pair.owner.requests
    assert head.header_map().get("x-big-39") == "v" * 1000
    big_response = HeaderMap([(":status", "200")] + [(f"x-r{i}", "r" * 1000) for i in range(40)])
    pair.server.send_headers(pair.server.streams[1], big_response, True)
    kinds = [k for k, _, _, _ in pair.server_frames()]
    assert kinds[0] == f.HEADERS and kinds.count(f.CONTINUATION) == 2


def test_ping_is_acknowledged_and_our_ping_ack_reaches_the_owner():
    pair = ServerPair()
    pair.client.ping(b"12345678")
    events = pair.exchange()
    assert any(
        isinstance(e, h2.events.PingAckReceived) and e.ping_data == b"12345678" for e in events
    )
    pair.server.ping(b"abcdefgh")
    pair.receive()
    pair.exchange()
    assert pair.owner.ping_acks == [b"abcdefgh"]


def test_rst_stream_from_the_client_resets_only_that_stream():
    pair = ServerPair()
    pair.client.send_headers(1, GET, end_stream=False)
    pair.client.send_headers(3, GET, end_stream=True)
    pair.exchange()
    pair.client.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
    pair.exchange()
    assert pair.owner.streams[1].reset == (ResetReason.REMOTE_RESET, "http2.remote_reset")
    assert pair.owner.streams[3].reset is None
    assert list(pair.server.streams) == [3]
    assert pair.counter("rx_reset") == 1
    respond(pair, 3)
    assert any(isinstance(e, h2.events.StreamEnded) for e in pair.receive())


def test_reset_by_the_user_sends_rst_without_calling_back():
    pair = ServerPair()
    pair.client.send_headers(1, GET, end_stream=False)
    pair.exchange()
    pair.server.reset_stream(pair.server.streams[1], f.NO_ERROR)
    events = pair.receive()
    assert any(isinstance(e, h2.events.StreamReset) and e.error_code == 0 for e in events)
    assert pair.owner.streams[1].reset is None
    assert pair.counter("tx_reset") == 1
    assert pair.feed_raw(raw(f.DATA, f.FLAG_END_STREAM, 1, b"late")) is None  # dropped
    assert pair.owner.streams[1].data == b""


def test_deferred_reset_goes_after_the_end_of_the_response():
    pair = ServerPair(client_settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 10})
    pair.client.send_headers(1, post(), end_stream=False)
    pair.exchange()
    stream = pair.server.streams[1]
    pair.server.send_headers(stream, HeaderMap([(":status", "200")]), False)
    pair.server.send_data(stream, b"x" * 30, True)
    pair.server.reset_stream(stream, f.NO_ERROR, deferred=True)
    frames = pair.server_frames()
    assert [k for k, _, _, _ in frames] == [f.HEADERS, f.DATA]  # the window held the rest
    pair.server.feed(raw(f.WINDOW_UPDATE, 0, 1, struct.pack(">L", 100)))
    frames = pair.server_frames()
    assert [(k, fl) for k, fl, _, _ in frames] == [(f.DATA, f.FLAG_END_STREAM), (f.RST_STREAM, 0)]


def test_graceful_goaway_then_goaway_with_the_last_stream():
    pair = ServerPair()
    pair.client.send_headers(1, GET, end_stream=True)
    pair.exchange()
    pair.server.shutdown_notice()
    pair.client.send_headers(3, GET, end_stream=True)
    events = pair.exchange()
    goaway = next(e for e in events if isinstance(e, h2.events.ConnectionTerminated))
    assert goaway.last_stream_id == 2**31 - 1 and goaway.error_code == 0
    assert len(pair.owner.requests) == 2
    pair.server.goaway()
    frames = pair.server_frames()
    assert frames == [(f.GOAWAY, 0, 0, struct.pack(">LL", 3, 0))]
    pair.server.feed(headers_frame(5, GET, encoder=hpack.Encoder()))  # past the last id
    assert len(pair.owner.requests) == 2


def test_goaway_from_the_client_is_reported():
    pair = ServerPair()
    pair.server.feed(raw(f.GOAWAY, 0, 0, struct.pack(">LL", 0, 0)))
    assert pair.owner.goaways == [(0, 0)]


def test_priority_and_unknown_frames_are_ignored():
    pair = ServerPair()
    pair.client.send_headers(1, GET, end_stream=False, priority_weight=10)
    pair.client.prioritize(1, weight=200)
    pair.exchange()
    assert pair.feed_raw(raw(0x20, 0, 0, b"extension")) is None
    assert pair.feed_raw(raw(f.PRIORITY, 0, 3, b"\x00\x00\x00\x01\x10")) is None
    assert len(pair.owner.requests) == 1


def test_max_concurrent_streams_refuses_the_stream_past_it():
    pair = ServerPair(Http2Settings(max_concurrent_streams=2))
    encoder = hpack.Encoder()
    pair.feed_raw(
        b"".join(headers_frame(sid, GET, end_stream=False, encoder=encoder) for sid in (1, 3, 5))
    )
    frames = pair.server_frames()
    assert [(k, sid, p) for k, _, sid, p in frames if k == f.RST_STREAM] == [
        (f.RST_STREAM, 5, struct.pack(">L", f.REFUSED_STREAM))
    ]
    assert len(pair.owner.requests) == 2


def test_content_length_that_does_not_match_the_body_resets_the_stream():
    pair = ServerPair()
    pair.client.send_headers(1, post("/up", ("content-length", "5")), end_stream=False)
    pair.exchange()
    pair.server.feed(raw(f.DATA, f.FLAG_END_STREAM, 1, b"abc"))
    frames = pair.server_frames()
    assert (f.RST_STREAM, 0, 1, struct.pack(">L", f.PROTOCOL_ERROR)) in frames
    assert pair.owner.streams[1].reset == (ResetReason.PROTOCOL_ERROR, "http2.remote_reset")


@pytest.mark.parametrize(
    ("data", "error_code", "goaway"),
    [
        (raw(f.DATA, 0, 1, b"x"), f.PROTOCOL_ERROR, True),  # a stream never opened
        (raw(f.DATA, 0, 0, b"x"), f.PROTOCOL_ERROR, True),
        (raw(f.SETTINGS, 0, 0, b"\x00\x04\xff\xff\xff\xff"), f.FLOW_CONTROL_ERROR, True),
        (raw(f.SETTINGS, 0, 0, b"\x00\x05\x00\x00\x00\x01"), f.PROTOCOL_ERROR, True),
        (raw(f.SETTINGS, 0, 0, b"\x00\x01"), f.FRAME_SIZE_ERROR, True),
        (raw(f.SETTINGS, 0, 1, b""), f.PROTOCOL_ERROR, True),
        (raw(f.PING, 0, 0, b"short"), f.FRAME_SIZE_ERROR, True),
        (raw(f.WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x00"), f.PROTOCOL_ERROR, False),
        (raw(f.RST_STREAM, 0, 7, b"\x00\x00\x00\x08"), f.PROTOCOL_ERROR, True),
        (raw(f.CONTINUATION, f.FLAG_END_HEADERS, 1, b""), f.PROTOCOL_ERROR, True),
        (raw(f.PUSH_PROMISE, 0, 1, b"\x00\x00\x00\x02"), f.PROTOCOL_ERROR, True),
        (raw(f.HEADERS, f.FLAG_END_HEADERS, 2, b"\x82"), f.PROTOCOL_ERROR, False),
        (raw(f.HEADERS, f.FLAG_END_HEADERS, 0, b"\x82"), f.PROTOCOL_ERROR, True),
        (raw(f.HEADERS, f.FLAG_END_HEADERS, 1 << 31, b"\x82"), f.PROTOCOL_ERROR, True),
        (raw(f.HEADERS, f.FLAG_END_HEADERS, 1, b"\xff\xff"), f.COMPRESSION_ERROR, True),
        (f.frame_header(f.HEADERS, 0, 1, 16385) + b"\x00" * 16385, f.FRAME_SIZE_ERROR, True),
    ],
)
def test_connection_errors(data, error_code, goaway):
    pair = ServerPair()
    error = pair.feed_raw(data)
    assert error is not None and error.error_code == error_code and error.goaway is goaway
    frames = pair.server_frames()
    if goaway:
        assert frames[-1][0] == f.GOAWAY
        assert struct.unpack(">LL", frames[-1][3][:8])[1] == error_code
    else:
        assert frames == []  # as Envoy: nothing more is written
    assert pair.server.feed(b"anything") is error  # the codec stays dead


def test_the_client_preface_and_first_settings_are_required():
    from legatus.http.http2 import ServerConnection
    from tests.unit.http.http2.peer import Owner, new_stats

    _, stats = new_stats()
    server = ServerConnection(Http2Settings(), stats, Owner())
    assert server.feed(b"GET / HTTP/1.1\r\n\r\n").message == (
        "Received bad client magic byte string"
    )
    server = ServerConnection(Http2Settings(), stats, Owner())
    assert server.feed(f.PREFACE[:10]) is None  # split anywhere
    assert server.feed(f.PREFACE[10:]) is None
    error = server.feed(raw(f.PING, 0, 0, b"12345678"))
    assert error.message == "SETTINGS expected" and error.goaway


def test_frames_on_a_closed_stream_are_dropped_but_counted_against_the_window():
    pair = ServerPair()
    pair.client.send_headers(1, GET, end_stream=True)
    pair.exchange()
    respond(pair, 1)
    pair.receive()
    assert pair.feed_raw(raw(f.DATA, 0, 1, b"x" * 1000)) is None
    assert pair.feed_raw(raw(f.WINDOW_UPDATE, 0, 1, struct.pack(">L", 1))) is None
    assert pair.feed_raw(rst(1)) is None
    assert pair.server._recv_consumed == 1000  # the connection window is not lost
