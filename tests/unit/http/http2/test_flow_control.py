"""Flow control both ways: windows honoured when sending, the body queued past them with its
watermarks, WINDOW_UPDATEs held back while a stream's reading is disabled."""

from __future__ import annotations

import struct

import h2.events
import h2.settings

from legatus.http.headers import HeaderMap
from legatus.http.http2 import Http2Settings, ResetReason
from legatus.http.http2 import frames as f
from tests.unit.http.http2.peer import GET, ServerPair, parse_frames, post, raw

WINDOW = h2.settings.SettingCodes.INITIAL_WINDOW_SIZE


def start_response(pair: ServerPair, sid: int = 1):
    pair.client.send_headers(sid, GET, end_stream=True)
    pair.exchange()
    stream = pair.server.streams[sid]
    pair.server.send_headers(stream, HeaderMap([(":status", "200")]), False)
    return stream


def data_of(events, sid: int = 1) -> bytes:
    return b"".join(
        e.data for e in events if isinstance(e, h2.events.DataReceived) and e.stream_id == sid
    )


def test_a_body_larger_than_the_window_waits_for_window_updates():
    pair = ServerPair(client_settings={WINDOW: 1000})
    stream = start_response(pair)
    pair.server.send_data(stream, b"x" * 5000, True)
    events = pair.receive()
    assert len(data_of(events)) == 1000
    assert stream.pending_size == 4000 and pair.stats.pending_send_bytes.value == 4000
    pair.client.increment_flow_control_window(2500, stream_id=1)
    events = pair.exchange()
    assert len(data_of(events)) == 2500 and not any(
        isinstance(e, h2.events.StreamEnded) for e in events
    )
    pair.client.increment_flow_control_window(1500, stream_id=1)
    events = pair.exchange()
    assert len(data_of(events)) == 1500
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)
    assert pair.stats.pending_send_bytes.value == 0


def test_the_connection_window_is_shared_and_blocked_streams_resume_in_order():
    pair = ServerPair()
    pair.client.send_headers(1, GET, end_stream=True)
    pair.client.send_headers(3, GET, end_stream=True)
    pair.exchange()
    s1, s3 = pair.server.streams[1], pair.server.streams[3]
    for s in (s1, s3):
        pair.server.send_headers(s, HeaderMap([(":status", "200")]), False)
    pair.server.send_data(s1, b"a" * 60000, True)
    pair.server.send_data(s3, b"b" * 60000, True)  # the connection window (65535) is spent
    events = pair.receive()
    assert len(data_of(events, 1)) == 60000 and len(data_of(events, 3)) == 5535
    pair.client.increment_flow_control_window(100000)  # connection level
    events = pair.exchange()
    assert len(data_of(events, 3)) == 54465


def test_send_watermarks_tell_the_stream_to_stop_and_resume():
    pair = ServerPair(client_settings={WINDOW: 100}, buffer_limit=1000)
    stream = start_response(pair)
    decoder = pair.owner.streams[1]
    pair.server.send_data(stream, b"x" * 600, False)
    assert decoder.watermarks == []
    pair.server.send_data(stream, b"x" * 600, False)  # 1100 queued > 1000
    assert decoder.watermarks == [True]
    pair.receive()
    pair.client.increment_flow_control_window(700, stream_id=1)
    pair.exchange()  # 400 left <= 500
    assert decoder.watermarks == [True, False]


def test_a_settings_change_of_the_initial_window_applies_to_open_streams():
    pair = ServerPair(client_settings={WINDOW: 10})
    stream = start_response(pair)
    pair.server.send_data(stream, b"x" * 100, True)
    assert len(data_of(pair.receive())) == 10
    pair.client.update_settings({WINDOW: 200})
    events = pair.exchange()
    assert len(data_of(events)) == 90


def test_trailers_wait_for_the_queued_body():
    pair = ServerPair(client_settings={WINDOW: 10})
    stream = start_response(pair)
    pair.server.send_data(stream, b"x" * 30, False)
    pair.server.send_trailers(stream, HeaderMap([("grpc-status", "0")]))
    events = pair.receive()
    assert not any(isinstance(e, h2.events.TrailersReceived) for e in events)
    pair.client.increment_flow_control_window(100, stream_id=1)
    events = pair.exchange()
    assert len(data_of(events)) == 20
    assert any(isinstance(e, h2.events.TrailersReceived) for e in events)


def test_received_data_is_given_back_in_window_updates_at_half_the_window():
    settings = Http2Settings(
        initial_stream_window_size=100000, initial_connection_window_size=200000
    )
    pair = ServerPair(settings)
    pair.client.send_headers(1, post(), end_stream=False)
    pair.exchange()
    pair.server.feed(raw(f.DATA, 0, 1, b"x" * 16000) * 3)  # 48000 < 50000: nothing yet
    assert [k for k, _, _, _ in pair.server_frames()] == []
    pair.server.feed(raw(f.DATA, 0, 1, b"x" * 4000))  # 52000 >= 50000: the stream's
    frames = pair.server_frames()
    assert frames == [(f.WINDOW_UPDATE, 0, 1, struct.pack(">L", 52000))]


def test_reading_disabled_holds_the_window_until_enabled():
    settings = Http2Settings(initial_stream_window_size=65535, initial_connection_window_size=65535)
    pair = ServerPair(settings)
    pair.client.send_headers(1, post(), end_stream=False)
    pair.exchange()
    stream = pair.server.streams[1]
    pair.server.read_disable(stream, True)
    pair.server.read_disable(stream, True)  # nested
    pair.server.feed(raw(f.DATA, 0, 1, b"x" * 16000) * 2 + raw(f.DATA, 0, 1, b"x" * 8000))
    assert bytes(pair.owner.streams[1].data) == b"x" * 40000  # delivered, not consumed
    assert pair.server_frames() == []
    pair.server.read_disable(stream, False)
    assert pair.server_frames() == []
    pair.server.read_disable(stream, False)
    frames = pair.server_frames()
    assert frames == [
        (f.WINDOW_UPDATE, 0, 1, struct.pack(">L", 40000)),
        (f.WINDOW_UPDATE, 0, 0, struct.pack(">L", 40000)),
    ]


def test_data_beyond_the_window_is_a_flow_control_error():
    settings = Http2Settings(initial_stream_window_size=65535, initial_connection_window_size=65535)
    pair = ServerPair(settings)
    pair.client.send_headers(1, post(), end_stream=False)
    pair.exchange()
    stream = pair.server.streams[1]
    pair.server.read_disable(stream, True)
    for _ in range(4):
        assert pair.server.feed(raw(f.DATA, 0, 1, b"x" * 16000)) is None
    error = pair.server.feed(raw(f.DATA, 0, 1, b"x" * 1600))  # 65600 > 65535
    assert error is not None and error.error_code == f.FLOW_CONTROL_ERROR and error.goaway


def test_stream_window_overflow_resets_the_stream():
    pair = ServerPair()
    stream = start_response(pair)
    pair.server.feed(raw(f.WINDOW_UPDATE, 0, 1, struct.pack(">L", 2**31 - 1)))
    frames = parse_frames(bytes(pair.server.data_to_send()))
    assert (f.RST_STREAM, 0, 1, struct.pack(">L", f.FLOW_CONTROL_ERROR)) in frames
    assert pair.owner.streams[1].reset[0] is ResetReason.PROTOCOL_ERROR
    assert stream.state.name == "CLOSED"
