"""Test peers for the HTTP/2 codec: the ``h2`` package on the other end, plus raw frames for
what a well-behaved peer never sends."""

from __future__ import annotations

import struct

import h2.config
import h2.connection
import h2.events
import hpack

from legatus.http.http2 import ClientConnection, Http2Settings, ServerConnection
from legatus.http.http2 import frames as f
from legatus.http.http2.stats import codec_stats
from legatus.stats.store import Store

GET = [(":method", "GET"), (":path", "/p"), (":scheme", "http"), (":authority", "a.example")]


def post(path: str = "/up", *extra) -> list[tuple[str, str]]:
    return [
        (":method", "POST"),
        (":path", path),
        (":scheme", "http"),
        (":authority", "a.example"),
        *extra,
    ]


def raw(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return f.frame(kind, flags, stream_id, payload)


def headers_frame(stream_id: int, fields, *, end_stream=True, end_headers=True, encoder=None):
    block = (encoder or hpack.Encoder()).encode(fields)
    flags = (f.FLAG_END_STREAM if end_stream else 0) | (f.FLAG_END_HEADERS if end_headers else 0)
    return raw(f.HEADERS, flags, stream_id, block)


def rst(stream_id: int, code: int = f.CANCEL) -> bytes:
    return raw(f.RST_STREAM, 0, stream_id, struct.pack(">L", code))


class ServerStream:
    """The decoder of one server stream: records what the codec tells it."""

    def __init__(self, owner: Owner, stream) -> None:
        self.owner = owner
        self.stream = stream
        self.data = bytearray()
        self.ended = False
        self.trailers = None
        self.reset = None
        self.watermarks: list[bool] = []

    def decode_data(self, data: bytes, end_stream: bool) -> None:
        self.data += data
        self.ended = end_stream

    def decode_trailers(self, trailers) -> None:
        self.trailers = trailers
        self.ended = True

    def on_stream_reset(self, reason, details: str) -> None:
        self.reset = (reason, details)

    def on_send_watermark(self, above: bool) -> None:
        self.watermarks.append(above)


class Owner:
    """The server codec's callbacks (what the connection manager is)."""

    def __init__(self) -> None:
        self.requests: list[tuple[object, object, bool]] = []
        self.streams: dict[int, ServerStream] = {}
        self.rejected: list[tuple[str, object]] = []
        self.goaways: list[tuple[int, int]] = []
        self.ping_acks: list[bytes] = []

    def on_request_headers(self, stream, head, end_stream: bool) -> None:
        self.requests.append((stream, head, end_stream))
        decoder = ServerStream(self, stream)
        stream.decoder = decoder
        self.streams[stream.id] = decoder

    def on_stream_rejected(self, details: str, reason) -> None:
        self.rejected.append((details, reason))

    def on_goaway(self, last_stream_id: int, error_code: int) -> None:
        self.goaways.append((last_stream_id, error_code))

    def on_ping_ack(self, opaque: bytes) -> None:
        self.ping_acks.append(opaque)


def new_stats():
    store = Store()
    return store, codec_stats(store.scope(""))


def counter(store: Store, name: str) -> int:
    stat = store.get(f"http2.{name}")
    return 0 if stat is None else stat.value


class ServerPair:
    """A ``ServerConnection`` under test and an ``h2`` client."""

    def __init__(
        self,
        settings: Http2Settings | None = None,
        *,
        buffer_limit=1 << 20,
        client_settings: dict | None = None,
    ) -> None:
        self.store, self.stats = new_stats()
        self.owner = Owner()
        self.server = ServerConnection(
            settings or Http2Settings(), self.stats, self.owner, buffer_limit=buffer_limit
        )
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.client = h2.connection.H2Connection(config)
        self.client.initiate_connection()
        if client_settings:
            self.client.update_settings(client_settings)
        self.error = None
        self.events: list = []
        self.exchange()

    def exchange(self) -> list:
        """Client bytes to the server, then the server's answer to the client; the client's
        new events (also kept in ``events``)."""
        data = self.client.data_to_send()
        if data:
            self.error = self.server.feed(data)
        return self.receive()

    def receive(self) -> list:
        out = bytes(self.server.data_to_send())
        events = self.client.receive_data(out) if out else []
        self.events.extend(events)
        return events

    def feed_raw(self, data: bytes):
        self.error = self.server.feed(data)
        return self.error

    def server_frames(self) -> list[tuple[int, int, int, bytes]]:
        """The server's pending output as (type, flags, stream id, payload) tuples."""
        return parse_frames(bytes(self.server.data_to_send()))

    def counter(self, name: str) -> int:
        return counter(self.store, name)


def parse_frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out = []
    pos = 0
    while pos + 9 <= len(data):
        hi, lo, kind, flags, sid = f.FRAME_HEADER.unpack_from(data, pos)
        length = (hi << 8) | lo
        out.append((kind, flags, sid & 0x7FFFFFFF, data[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    return out


class ClientStream:
    """The decoder of one client stream."""

    def __init__(self) -> None:
        self.informational: list = []
        self.headers = None
        self.data = bytearray()
        self.ended = False
        self.trailers = None
        self.reset = None
        self.watermarks: list[bool] = []

    def decode_headers(self, headers, end_stream: bool) -> None:
        self.headers = headers
        self.ended = end_stream

    def decode_informational_headers(self, headers) -> None:
        self.informational.append(headers)

    def decode_data(self, data: bytes, end_stream: bool) -> None:
        self.data += data
        self.ended = end_stream

    def decode_trailers(self, trailers) -> None:
        self.trailers = trailers
        self.ended = True

    def on_stream_reset(self, reason, details: str) -> None:
        self.reset = (reason, details)

    def on_send_watermark(self, above: bool) -> None:
        self.watermarks.append(above)


class ClientPair:
    """A ``ClientConnection`` under test and an ``h2`` server."""

    def __init__(self, settings: Http2Settings | None = None, *, buffer_limit=1 << 20) -> None:
        self.store, self.stats = new_stats()
        self.owner = Owner()
        self.conn = ClientConnection(
            settings or Http2Settings(), self.stats, self.owner, buffer_limit=buffer_limit
        )
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.server = h2.connection.H2Connection(config)
        self.server.initiate_connection()
        self.error = None
        self.events: list = []
        self.exchange()

    def exchange(self) -> list:
        """Our bytes to the h2 server, its answer back to us; the server's new events."""
        out = bytes(self.conn.data_to_send())
        events = self.server.receive_data(out) if out else []
        self.events.extend(events)
        data = self.server.data_to_send()
        if data:
            self.error = self.conn.feed(data)
        return events

    def counter(self, name: str) -> int:
        return counter(self.store, name)


def request_received(events) -> h2.events.RequestReceived:
    return next(e for e in events if isinstance(e, h2.events.RequestReceived))
