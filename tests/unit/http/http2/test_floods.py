"""Envoy's flood protections, each with its limit and stat: the connection ends, memory
stays bounded."""

from __future__ import annotations

import hpack

from legatus.http.http2 import Http2Settings
from legatus.http.http2 import frames as f
from legatus.http.http2.settings import MAX_CONTINUATIONS
from tests.unit.http.http2.peer import GET, ServerPair, headers_frame, post, raw

PING = raw(f.PING, 0, 0, b"12345678")


def assert_flood(pair: ServerPair, stat: str) -> None:
    error = pair.server.error
    assert error is not None and error.flood, error
    assert pair.counter(stat) == 1


def test_pings_answered_but_never_read_are_an_outbound_control_flood():
    pair = ServerPair(Http2Settings(max_outbound_control_frames=100))
    pair.server.on_transport_buffer(0)  # what the handshake queued went out
    for _ in range(100):
        assert pair.server.feed(PING) is None
        pair.server.data_to_send()  # handed to a transport that never drains
        assert pair.server.on_transport_buffer(17 * 10**6) is None
    assert pair.server.feed(PING) is not None
    assert_flood(pair, "outbound_control_flood")
    assert pair.stats.outbound_control_frames_active.value == 100


def test_answers_that_drain_are_no_flood():
    pair = ServerPair(Http2Settings(max_outbound_control_frames=100))
    for _ in range(500):
        assert pair.server.feed(PING) is None
        pair.server.data_to_send()
        assert pair.server.on_transport_buffer(0) is None
    assert pair.counter("outbound_control_flood") == 0


def test_a_burst_of_pings_in_one_read_is_an_outbound_control_flood():
    pair = ServerPair()
    assert pair.server.feed(PING * 1001) is not None
    assert_flood(pair, "outbound_control_flood")
    assert pair.server.data_to_send() == b""  # nothing of it goes out


def test_frames_never_written_are_an_outbound_flood():
    pair = ServerPair(Http2Settings(max_outbound_frames=50))
    pair.client.send_headers(1, GET, end_stream=True)
    pair.exchange()
    stream = pair.server.streams[1]
    from legatus.http.headers import HeaderMap

    pair.server.send_headers(stream, HeaderMap([(":status", "200")]), False)
    for _ in range(60):
        pair.server.send_data(stream, b"x", False)
    pair.server.data_to_send()
    assert pair.server.on_transport_buffer(10**6) is not None
    assert_flood(pair, "outbound_flood")


def test_empty_data_frames_in_a_row():
    pair = ServerPair()
    pair.client.send_headers(1, post(), end_stream=False)
    pair.exchange()
    assert pair.server.feed(raw(f.DATA, 0, 1)) is None  # one is allowed (the default: 1)
    assert pair.server.feed(raw(f.DATA, 0, 1, b"x")) is None  # a payload resets the count
    assert pair.server.feed(raw(f.DATA, 0, 1)) is None
    assert pair.server.feed(raw(f.DATA, 0, 1)) is not None
    assert_flood(pair, "inbound_empty_frames_flood")
    assert pair.server.error.details == "http2.inbound_empty_frames_flood"


def test_empty_continuation_frames_and_the_request_they_belong_to():
    pair = ServerPair()
    block = hpack.Encoder().encode(GET)
    pair.server.feed(raw(f.HEADERS, f.FLAG_END_STREAM, 1, block[:3]))
    assert pair.server.feed(raw(f.CONTINUATION, 0, 1) * 2) is not None
    assert_flood(pair, "inbound_empty_frames_flood")
    assert pair.owner.rejected[0][0] == "http2.inbound_empty_frames_flood"


def test_priority_frames_beyond_the_limit_per_stream():
    pair = ServerPair(Http2Settings(max_inbound_priority_frames_per_stream=5))
    priority = raw(f.PRIORITY, 0, 3, b"\x00\x00\x00\x00\x10")
    assert pair.server.feed(priority * 5) is None
    pair.client.send_headers(1, GET, end_stream=True)  # one stream: 10 allowed
    pair.exchange()
    assert pair.server.feed(priority * 5) is None
    assert pair.server.feed(priority) is not None
    assert_flood(pair, "inbound_priority_frames_flood")


def test_window_updates_beyond_what_the_data_sent_justifies():
    pair = ServerPair(Http2Settings(max_inbound_window_update_frames_per_data_frame_sent=2))
    update = raw(f.WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x01")
    assert pair.server.feed(update) is None  # 1 + 2 x (0 + 2 x 0) = 1 allowed
    assert pair.server.feed(update) is not None
    assert_flood(pair, "inbound_window_update_frames_flood")


def test_continuation_frames_past_envoys_limit_end_the_connection():
    pair = ServerPair()
    block = hpack.Encoder().encode([*GET, ("x-a", "v" * 600)], huffman=False)
    frames = [raw(f.HEADERS, f.FLAG_END_STREAM, 1, block[:1])]
    frames += [raw(f.CONTINUATION, 0, 1, block[i : i + 1]) for i in range(1, len(block))]
    assert len(frames) - 1 > MAX_CONTINUATIONS
    error = pair.server.feed(b"".join(frames))
    assert error is not None and not error.flood and not error.goaway
    assert pair.counter("header_overflow") == 1


def test_continuation_frames_up_to_the_limit_are_fine():
    pair = ServerPair()
    block = hpack.Encoder().encode([*GET, ("x-a", "v" * 300)], huffman=False)
    frames = [raw(f.HEADERS, f.FLAG_END_STREAM, 1, block[:1])]
    frames += [raw(f.CONTINUATION, 0, 1, block[i : i + 1]) for i in range(1, len(block) - 1)]
    frames.append(raw(f.CONTINUATION, f.FLAG_END_HEADERS, 1, block[-1:]))
    assert len(frames) - 1 <= MAX_CONTINUATIONS
    assert pair.server.feed(b"".join(frames)) is None
    assert len(pair.owner.requests) == 1


def test_a_decompression_bomb_is_stopped_by_hpack():
    pair = ServerPair()
    encoder = hpack.Encoder()
    pair.server.feed(headers_frame(1, [*GET, ("x-big", "v" * 3000)], encoder=encoder))
    # One byte per 3 KB field: a 16 KB frame would inflate to 48 MB.
    index = next(i for i in range(62, 70) if encoder.header_table.get_by_index(i)[0] == b"x-big")
    error = pair.server.feed(
        raw(f.HEADERS, f.FLAG_END_HEADERS | f.FLAG_END_STREAM, 3, bytes([0x80 | index]) * 16000)
    )
    assert error is not None and error.error_code == f.COMPRESSION_ERROR
