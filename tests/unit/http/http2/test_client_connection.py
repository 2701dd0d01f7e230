"""ClientConnection (the upstream role) against the h2 package as the server: the API a
connection pool uses, and what it gets back."""

from __future__ import annotations

import h2.errors
import h2.events
import h2.settings
import pytest

from legatus.http.headers import HeaderMap
from legatus.http.http2 import Http2Settings, ResetReason
from tests.unit.http.http2.peer import ClientPair, ClientStream, request_received

REQUEST = [
    (":method", "POST"),
    (":scheme", "http"),
    (":authority", "up.example"),
    (":path", "/rpc"),
    ("content-type", "application/grpc"),
]


def open_request(pair: ClientPair, *, end_stream: bool = False):
    decoder = ClientStream()
    stream = pair.conn.open_stream(decoder)
    pair.conn.send_headers(stream, HeaderMap(REQUEST), end_stream)
    return stream, decoder


def test_preface_settings_and_a_full_exchange_with_trailers_both_ways():
    pair = ClientPair()
    changed = next(e for e in pair.events if isinstance(e, h2.events.RemoteSettingsChanged))
    assert changed.changed_settings[h2.settings.SettingCodes.ENABLE_PUSH].new_value == 0
    stream, decoder = open_request(pair)
    pair.conn.send_data(stream, b"ping", False)
    pair.conn.send_trailers(stream, HeaderMap([("x-sum", "1")]))
    events = pair.exchange()
    received = request_received(events)
    assert received.stream_id == 1 and received.headers == REQUEST
    assert any(isinstance(e, h2.events.TrailersReceived) for e in events)
    server = pair.server
    server.send_headers(1, [(":status", "100")])
    server.send_headers(1, [(":status", "200"), ("content-type", "application/grpc")])
    server.send_data(1, b"pong")
    server.send_headers(1, [("grpc-status", "0")], end_stream=True)
    pair.exchange()
    assert [list(h.items()) for h in decoder.informational] == [[(":status", "100")]]
    assert list(decoder.headers.items()) == [
        (":status", "200"),
        ("content-type", "application/grpc"),
    ]
    assert bytes(decoder.data) == b"pong" and list(decoder.trailers.items()) == [
        ("grpc-status", "0")
    ]
    assert pair.conn.streams == {} and pair.counter("trailers") == 0  # a server-side stat


def test_stream_ids_grow_and_the_servers_concurrency_limit_is_honoured():
    pair = ClientPair()
    pair.server.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 2})
    pair.exchange()
    ids = [open_request(pair)[0].id for _ in range(2)]
    assert ids == [1, 3]
    assert not pair.conn.can_open_stream
    with pytest.raises(RuntimeError):
        pair.conn.open_stream(ClientStream())


def test_a_request_body_is_flow_controlled_by_the_server():
    pair = ClientPair()
    pair.server.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 100})
    pair.exchange()
    stream, _ = open_request(pair)
    pair.conn.send_data(stream, b"x" * 250, True)
    events = pair.exchange()
    assert sum(len(e.data) for e in events if isinstance(e, h2.events.DataReceived)) == 100
    pair.server.increment_flow_control_window(200, stream_id=1)
    pair.exchange()  # the WINDOW_UPDATE reaches us
    events = pair.exchange()
    assert sum(len(e.data) for e in events if isinstance(e, h2.events.DataReceived)) == 150
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)


def test_resets_either_way():
    pair = ClientPair()
    stream, decoder = open_request(pair)
    pair.exchange()
    pair.server.reset_stream(1, h2.errors.ErrorCodes.REFUSED_STREAM)
    pair.exchange()
    assert decoder.reset == (ResetReason.REMOTE_REFUSED_STREAM_RESET, "http2.remote_refuse")
    stream, decoder = open_request(pair)
    pair.conn.reset_stream(stream)
    events = pair.exchange()
    assert any(isinstance(e, h2.events.StreamReset) and e.stream_id == 3 for e in events)
    assert decoder.reset is None  # the user's own reset is not reported back


def test_goaway_refuses_the_streams_past_its_last_id():
    pair = ClientPair()
    _, d1 = open_request(pair)
    _, d2 = open_request(pair)
    pair.exchange()
    pair.server.close_connection(last_stream_id=1)
    pair.exchange()
    assert d2.reset == (ResetReason.REMOTE_REFUSED_STREAM_RESET, "http2.remote_refuse")
    assert d1.reset is None and pair.owner.goaways == [(1, 0)]
    assert not pair.conn.can_open_stream


def test_a_malformed_response_fails_the_connection_as_envoys_codec_does():
    pair = ClientPair()
    pair.server.config.validate_outbound_headers = False
    pair.server.config.normalize_outbound_headers = False
    open_request(pair)
    pair.exchange()
    pair.server.send_headers(1, [(":status", "200"), ("Bad", "1")])
    pair.exchange()
    assert pair.error is not None and pair.error.details == "http2.invalid.header.field"
    assert pair.counter("rx_messaging_error") == 1


def test_a_malformed_response_resets_only_its_stream_when_configured():
    pair = ClientPair(Http2Settings(stream_error_on_invalid_http_messaging=True))
    pair.server.config.validate_outbound_headers = False
    pair.server.config.normalize_outbound_headers = False
    _, decoder = open_request(pair)
    pair.exchange()
    pair.server.send_headers(1, [(":status", "200"), ("Bad", "1")])
    pair.exchange()
    assert decoder.reset == (ResetReason.PROTOCOL_ERROR, "http2.invalid.header.field")
    assert pair.conn.error is None and pair.counter("rx_messaging_error") == 1


def test_a_response_body_waits_while_reading_is_disabled():
    settings = Http2Settings(initial_stream_window_size=65535, initial_connection_window_size=65535)
    pair = ClientPair(settings)
    stream, decoder = open_request(pair, end_stream=True)
    pair.exchange()
    pair.server.send_headers(1, [(":status", "200")])
    pair.conn.read_disable(stream, True)
    pair.server.send_data(1, b"x" * 16000)
    pair.server.send_data(1, b"x" * 16000)
    pair.server.send_data(1, b"x" * 16000)
    pair.exchange()
    assert len(decoder.data) == 48000
    assert pair.server.local_flow_control_window(1) == 65535 - 48000  # nothing given back
    pair.conn.read_disable(stream, False)
    pair.exchange()
    assert pair.server.local_flow_control_window(1) == 65535
