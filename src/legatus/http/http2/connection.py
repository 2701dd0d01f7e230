"""The HTTP/2 connection, sans-I/O, for both roles: frames in, stream events out; stream
calls in, frames out. ``ServerConnection`` (server.py) and ``ClientConnection`` (client.py)
add what differs: who opens streams and what a header block must be.

Theory of operation:

- ``feed(bytes)`` parses frames straight from the bytes read (a ``struct`` unpack per frame
  header, no object per frame; a partial frame waits in a buffer). Each frame is checked
  against the protocol and Envoy's flood limits (protocol_constraints.py) before it is acted
  on, then turned into calls on the stream's ``decoder`` (stream.py) or on the connection's
  ``callbacks``. Those calls may call back in (send a response, reset, pause reading).
- Everything to send (answers to SETTINGS and PING, WINDOW_UPDATEs, the streams' frames)
  is appended to one output buffer; the owner takes it with ``data_to_send()`` once per
  read or per burst of sends and writes it in one go.
- Flow control, both ways. Sending: a stream's body goes out as far as the peer's windows
  (stream and connection) allow; the rest waits in the stream, and a stream that waits
  longer than its buffer limit tells its decoder (``on_send_watermark``), which stops its
  source (the upstream read). Receiving: the peer may send up to the windows we granted
  (``initial_stream_window_size``, ``initial_connection_window_size``); bytes given to a
  decoder are consumed at once unless the stream's reading is disabled (``read_disable``,
  nested): then they are held back, and so is the WINDOW_UPDATE that would let the peer
  send more. A WINDOW_UPDATE goes out when half a window has been consumed (nghttp2's rule).
- Errors. A stream error resets the stream (RST_STREAM) and tells its decoder; a
  connection error ends the codec: ``feed`` returns a ``CodecError`` (the same one from then
  on). Errors nghttp2 answers with a GOAWAY get one (``goaway``); those Envoy's callbacks
  refuse (malformed messages, floods) drop the output instead, as Envoy's connection does.

Stream ids: the peer's must grow; a frame for a stream id not yet used is "idle", one for
an id used and gone is "closed" (RFC 9113 5.1). Frames on closed streams are dropped (their
header blocks still go through HPACK, their DATA still counts against the connection
window), as nghttp2 does for streams it closed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from legatus.http.headers import HeaderMap
from legatus.http.http2 import frames as f
from legatus.http.http2.hpack_codec import HeaderBlockDecoder, HeaderBlockEncoder, HPACKError
from legatus.http.http2.protocol_constraints import (
    INBOUND_EMPTY_FRAMES_FLOOD,
    OUTBOUND_CONTROL_FLOOD,
    OUTBOUND_FLOOD,
    ProtocolConstraints,
)
from legatus.http.http2.settings import MAX_CONTINUATIONS, Http2Settings
from legatus.http.http2.stream import END_LOCAL, ResetReason, Stream, StreamState

_FRAME_HEADER = f.FRAME_HEADER.unpack_from
_FRAME_HEADER_PACK = f.FRAME_HEADER.pack
_CLOSED = StreamState.CLOSED
_DATA, _HEADERS, _CONTINUATION = f.DATA, f.HEADERS, f.CONTINUATION
_END_HEADERS = f.FLAG_END_HEADERS
_END_HEADERS_END_STREAM = f.FLAG_END_HEADERS | f.FLAG_END_STREAM
_NO_FRAMES = (0, 0)  # (frames, control frames) active
# The flags of a HEADERS frame that make it the usual one when only END_HEADERS is among them.
_PLAIN_HEADERS_MASK = f.FLAG_END_HEADERS | f.FLAG_PADDED | f.FLAG_PRIORITY
# hpack's own bound on a decoded list (a decompression bomb): far above any header limit.
_HPACK_LIST_LIMIT = 1 << 20
# A single field longer than this is a COMPRESSION_ERROR, as nghttp2's inflater has it.
MAX_FIELD_SIZE = 65536
# Response code details for the streams a reset ends (Envoy's Http2ResponseCodeDetails).
REMOTE_RESET = "http2.remote_reset"
REMOTE_REFUSED = "http2.remote_refuse"
_FLOOD_DETAILS = {
    INBOUND_EMPTY_FRAMES_FLOOD: "http2.inbound_empty_frames_flood",
    OUTBOUND_FLOOD: "http2.outbound_frames_flood",
    OUTBOUND_CONTROL_FLOOD: "http2.outbound_control_frames_flood",
}


@dataclass(frozen=True, slots=True)
class CodecError:
    """The connection must end. ``message``: what Envoy logs (its ``dispatch error``);
    ``error_code``: the HTTP/2 code of the GOAWAY, if ``goaway`` put one in the output (else
    the output was dropped); ``flood``: an overload (Envoy's ``handleCodecOverloadError``,
    not a ``downstream_cx_protocol_error``); ``details``: Envoy's response code details for
    the streams it ends, when it has some."""

    message: str
    error_code: int = f.PROTOCOL_ERROR
    goaway: bool = False
    flood: bool = False
    details: str = ""


class Http2Connection:
    """Both roles' shared machinery (see module doc). ``callbacks`` is the owner."""

    client = False

    def __init__(
        self,
        settings: Http2Settings,
        stats: Any,
        callbacks: Any,
        *,
        buffer_limit: int = 1 << 20,
    ) -> None:
        self.settings = settings
        self.stats = stats
        self.callbacks = callbacks
        self.buffer_limit = buffer_limit  # a stream's send buffer high watermark
        self.streams: dict[int, Stream] = {}
        self.constraints = ProtocolConstraints(settings, stats)
        # (the outbound flood limits, for the check after each read: ``check_outbound``'s)
        self._max_frames = settings.max_outbound_frames
        self._max_control_frames = settings.max_outbound_control_frames
        self._hpack_in = HeaderBlockDecoder(
            max_table_size=settings.hpack_table_size, max_list_size=_HPACK_LIST_LIMIT
        )
        self._hpack_out = HeaderBlockEncoder()
        self._in = bytearray()
        self._out = bytearray()
        self.error: CodecError | None = None
        self.halted = False  # see halt()
        self._settings_received = False
        self._preface_left = 0  # bytes of the client preface still to come (server role)
        # What the connection window is still to be raised by, once (server role: at the end
        # of the first read, unless the ACK of the first SETTINGS came first).
        self._raise_window_by = 0
        # The next frame is checked before anything else: the first SETTINGS is due, or the
        # CONTINUATION of a header block.
        self._expecting = True
        # Header block being assembled from HEADERS + CONTINUATION.
        self._hb_stream = 0
        self._hb_flags = 0
        self._hb_parts: list[bytes] = []
        self._hb_continuations = 0
        # The peer's settings.
        self.peer_max_frame_size = f.DEFAULT_MAX_FRAME_SIZE
        self.peer_initial_window = f.DEFAULT_WINDOW_SIZE
        self.peer_max_concurrent_streams = f.MAX_STREAM_ID
        self.peer_max_header_list_size: int | None = None
        # Connection windows; ours is raised to the configured size at once.
        self._send_window = f.DEFAULT_WINDOW_SIZE
        self._recv_window = settings.initial_connection_window_size
        self._recv_consumed = 0
        self._conn_update_at = settings.initial_connection_window_size // 2
        self._stream_update_at = settings.initial_stream_window_size // 2
        self._blocked: dict[int, Stream] = {}  # waiting for connection window, in order
        self.last_peer_stream_id = 0  # the highest stream id the peer opened
        self.goaway_sent: int | None = None  # the last stream id we said we would process
        self.goaway_received: int | None = None
        self._pending_bytes = 0  # body waiting for windows, all streams (a gauge)
        self._frames_gauges = _NO_FRAMES

    # Output --------------------------------------------------------------------------

    def data_to_send(self) -> bytes | bytearray:
        """Everything queued since the last call (empty if nothing)."""
        out = self._out
        if not out:
            return b""
        self._out = bytearray()
        self.constraints.handed(len(out))
        return out

    def on_transport_buffer(self, unsent: int) -> CodecError | None:
        """The owner's transport holds ``unsent`` bytes not yet written to the socket:
        frames before them no longer count towards the outbound flood limits."""
        constraints = self.constraints
        active = constraints.transport_buffer(unsent)
        old = self._frames_gauges
        if active != old:
            self._frames_gauges = active
            self.stats.outbound_frames_active.add(active[0] - old[0])
            self.stats.outbound_control_frames_active.add(active[1] - old[1])
        over = active[0] > self._max_frames or active[1] > self._max_control_frames
        if over and constraints.violation is None and constraints.check_outbound() is not None:
            return self._fail(constraints.violation, f.ENHANCE_YOUR_CALM, flood=True)
        return self.error

    def _control(self, data: bytes) -> None:
        """A frame sent in answer to the peer (flood-monitored: SETTINGS/PING ACK, RST)."""
        self._out += data
        constraints = self.constraints
        constraints.outbound_frames += 1
        constraints.outbound_control_frames += 1
        if constraints.check_outbound() is not None:
            self._fail(constraints.violation, f.ENHANCE_YOUR_CALM, flood=True)

    def _frame(self, data: bytes) -> None:
        self._out += data
        self.constraints.outbound_frames += 1

    # Input ---------------------------------------------------------------------------

    def feed(self, data: bytes) -> CodecError | None:
        """Parse ``data``; None, or the error that ends the connection."""
        if self.error is not None:
            return self.error
        if self._in:
            self._in += data
            data = bytes(self._in)
            self._in.clear()
        pos = 0
        if self._preface_left:
            pos = self._start(data)
            if self.error is not None or self.halted:
                return self.error
        n = len(data)
        max_frame = f.DEFAULT_MAX_FRAME_SIZE
        constraints = self.constraints
        while n - pos >= 9:
            hi, lo, kind, flags, sid = _FRAME_HEADER(data, pos)
            length = (hi << 8) | lo
            end = pos + 9 + length
            if end > n or length > max_frame:
                if length > max_frame:
                    self._fail("too large frame size", f.FRAME_SIZE_ERROR, goaway=True)
                break
            payload = data[pos + 9 : end]
            pos = end
            if self._expecting:
                if self._hb_stream and kind != _CONTINUATION:
                    self._fail("expected CONTINUATION", f.PROTOCOL_ERROR, goaway=True)
                    break
                if not self._settings_received and (kind != f.SETTINGS or flags & f.FLAG_ACK):
                    self._fail("SETTINGS expected", f.PROTOCOL_ERROR, goaway=True)
                    break
            if (kind == _HEADERS and flags & _PLAIN_HEADERS_MASK == _END_HEADERS and length
                    and 0 < sid <= f.MAX_STREAM_ID):  # fmt: skip
                # A whole header block, unpadded, without priority, the reserved bit clear
                # (every request's HEADERS): what track_inbound counts for it, and
                # _on_headers' work, inline.
                constraints.inbound_streams += 1
                constraints.consecutive_empty = 0
                self._on_header_block(sid, flags, payload)
            else:
                sid &= 0x7FFFFFFF
                padding = 0
                if flags & f.FLAG_PADDED and kind <= _HEADERS and length:
                    padding = payload[0] + 1
                if constraints.track_inbound(kind, flags, length, padding) is not None:
                    self._fail(constraints.violation, f.ENHANCE_YOUR_CALM, flood=True)
                    break
                if kind == _DATA:
                    self._on_data(flags, sid, payload, padding)
                elif kind == _HEADERS:
                    self._on_headers(flags, sid, payload, padding)
                elif kind == f.WINDOW_UPDATE:
                    self._on_window_update(sid, payload)
                elif kind == f.SETTINGS:
                    self._on_settings(flags, sid, payload)
                elif kind == f.PING:
                    self._on_ping(flags, sid, payload)
                elif kind == f.RST_STREAM:
                    self._on_rst_stream(sid, payload)
                elif kind == _CONTINUATION:
                    self._on_continuation(flags, sid, payload)
                elif kind == f.PRIORITY:
                    self._on_priority(sid, payload)
                elif kind == f.GOAWAY:
                    self._on_goaway(sid, payload)
                elif kind == f.PUSH_PROMISE:
                    self._fail("PUSH_PROMISE: push is disabled", f.PROTOCOL_ERROR, goaway=True)
                # (unknown frame types are ignored, RFC 9113 5.5)
            if self.error is not None or self.halted:
                break
        if self.error is not None:
            return self.error
        if pos < n:
            self._in += memoryview(data)[pos:]
        if self._raise_window_by:
            self._raise_window()
        return None

    def _raise_window(self) -> None:
        """The connection window goes up to its configured size (see ``_raise_window_by``)."""
        self._frame(f.window_update(0, self._raise_window_by))
        self._raise_window_by = 0

    def _start(self, data: bytes) -> int:
        """Where frames start in ``data``, while ``_preface_left`` (the server skips the
        client preface first)."""
        return 0

    def halt(self) -> None:
        """Parse nothing more (the owner is closing the connection, maybe from a callback
        in the middle of ``feed``: the frames after the current one are dropped)."""
        self.halted = True

    def _fail(
        self,
        message: str,
        error_code: int,
        *,
        goaway: bool = False,
        flood: bool = False,
        details: str = "",
    ) -> CodecError:
        """End the connection (see module doc)."""
        if self.error is None:
            if goaway:
                self._out += f.goaway(self.last_peer_stream_id, error_code, message.encode())
                self.goaway_sent = self.last_peer_stream_id
            else:
                self._out.clear()
            if flood and not details:
                details = _FLOOD_DETAILS.get(message, "")
            self.error = CodecError(message, error_code, goaway, flood, details)
            self._on_connection_error(self.error)
        return self.error

    def _on_connection_error(self, error: CodecError) -> None:
        """Role-specific consequences of a connection error (the server reports a request
        whose header block was still arriving)."""

    # Frames --------------------------------------------------------------------------

    def _on_data(self, flags: int, sid: int, payload: bytes, padding: int) -> None:
        length = len(payload)
        if padding:
            if padding > length:
                self._fail("DATA: padding too long", f.PROTOCOL_ERROR, goaway=True)
                return
            data = payload[1 : length - padding + 1]
        else:
            data = payload
        self._recv_window -= length
        if self._recv_window < 0:
            self._fail("DATA: connection window exceeded", f.FLOW_CONTROL_ERROR, goaway=True)
            return
        stream = self.streams.get(sid)
        if stream is None:
            if sid == 0 or self._idle(sid):
                self._fail("DATA: stream in idle", f.PROTOCOL_ERROR, goaway=True)
                return
            self._consume(None, length)  # a closed stream's: the window comes back
            return
        if stream.remote_ended or (self.client and not stream.response_headers_seen):
            self._consume(None, length)
            self._reset(stream, f.STREAM_CLOSED, ResetReason.PROTOCOL_ERROR, REMOTE_RESET)
            return
        stream.recv_window -= length
        if stream.recv_window < 0:
            self._consume(None, length)
            self._reset(stream, f.FLOW_CONTROL_ERROR, ResetReason.PROTOCOL_ERROR, REMOTE_RESET)
            return
        end_stream = bool(flags & f.FLAG_END_STREAM)
        expected = stream.content_length
        if expected is not None:
            received = stream.received = stream.received + len(data)
            if received > expected or (end_stream and received != expected):
                self._consume(None, length)
                self._reset(stream, f.PROTOCOL_ERROR, ResetReason.PROTOCOL_ERROR, REMOTE_RESET)
                return
        if end_stream:
            stream.end_remote()
        if stream.read_disabled:
            stream.unconsumed += len(data)
            if padding:
                self._consume(stream, padding)
        else:
            self._consume(stream, length)
        decoder = stream.decoder
        if decoder is not None and (data or end_stream):
            decoder.decode_data(data, end_stream)
        if stream.state is _CLOSED:
            self._close_stream(stream)

    def _idle(self, sid: int) -> bool:
        """Whether ``sid`` names a stream the peer (or we) never opened."""
        if (sid & 1) == (0 if self.client else 1):
            return sid > self.last_peer_stream_id
        return sid >= self._next_local_id()

    def _next_local_id(self) -> int:
        return 1 << 31

    def _on_headers(self, flags: int, sid: int, payload: bytes, padding: int) -> None:
        if sid == 0:
            self._fail("HEADERS: stream id 0", f.PROTOCOL_ERROR, goaway=True)
            return
        start = 0
        end = len(payload)
        if padding:
            start = 1
            end -= padding - 1
        if flags & f.FLAG_PRIORITY:
            start += 5
        if start > end:
            self._fail("HEADERS: padding too long", f.PROTOCOL_ERROR, goaway=True)
            return
        block = payload[start:end] if start or end != len(payload) else payload
        if flags & f.FLAG_END_HEADERS:
            self._on_header_block(sid, flags, block)
        else:
            self._hb_stream = sid
            self._expecting = True
            self._hb_flags = flags
            self._hb_parts = [block]
            self._hb_continuations = 0

    def _on_continuation(self, flags: int, sid: int, payload: bytes) -> None:
        if not self._hb_stream or sid != self._hb_stream:
            self._fail("CONTINUATION: unexpected", f.PROTOCOL_ERROR, goaway=True)
            return
        self._hb_continuations += 1
        if self._hb_continuations > MAX_CONTINUATIONS:
            self.stats.header_overflow.inc()
            self._fail("Too many CONTINUATION frames following a HEADER frame", f.PROTOCOL_ERROR)
            return
        parts = self._hb_parts
        parts.append(payload)
        if flags & f.FLAG_END_HEADERS:
            self._hb_stream = 0
            self._expecting = False  # (the first SETTINGS came before the HEADERS)
            self._hb_parts = []
            self._on_header_block(sid, self._hb_flags, b"".join(parts))

    def _on_header_block(self, sid: int, flags: int, block: bytes) -> None:
        """A complete header block (role-specific)."""
        raise NotImplementedError

    def _decode_block(self, block: bytes) -> list[tuple[bytes, bytes]] | None:
        """The fields of a block, or None after failing the connection (HPACK state lost)."""
        try:
            fields = self._hpack_in.decode(block)
        except HPACKError:
            self._fail("header compression error", f.COMPRESSION_ERROR, goaway=True)
            return None
        for name, value in fields:
            if len(name) + len(value) > MAX_FIELD_SIZE:
                self._fail("header field too large", f.COMPRESSION_ERROR, goaway=True)
                return None
        return fields

    def _on_window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            self._fail("WINDOW_UPDATE: bad length", f.FRAME_SIZE_ERROR, goaway=True)
            return
        increment = f.u32(payload)
        if sid == 0:
            if increment == 0:
                self._fail("WINDOW_UPDATE: increment 0", f.PROTOCOL_ERROR)
                return
            window = self._send_window + increment
            if window > f.MAX_WINDOW_SIZE:
                self._fail("WINDOW_UPDATE: window overflow", f.FLOW_CONTROL_ERROR, goaway=True)
                return
            self._send_window = window
            blocked = self._blocked
            while blocked and self._send_window > 0:
                stream = next(iter(blocked.values()))
                del blocked[stream.id]
                self._flush_stream(stream)
            return
        stream = self.streams.get(sid)
        if stream is None:
            if self._idle(sid):
                self._fail("WINDOW_UPDATE: stream in idle", f.PROTOCOL_ERROR, goaway=True)
            return
        if increment == 0:
            self._reset(stream, f.PROTOCOL_ERROR, ResetReason.PROTOCOL_ERROR, REMOTE_RESET)
            return
        window = stream.send_window + increment
        if window > f.MAX_WINDOW_SIZE:
            self._reset(stream, f.FLOW_CONTROL_ERROR, ResetReason.PROTOCOL_ERROR, REMOTE_RESET)
            return
        stream.send_window = window
        if stream.pending_size or stream.local_end_queued:
            self._flush_stream(stream)

    def _on_settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            self._fail("SETTINGS: stream id not 0", f.PROTOCOL_ERROR, goaway=True)
            return
        if flags & f.FLAG_ACK:
            if payload:
                self._fail("SETTINGS: ACK with payload", f.FRAME_SIZE_ERROR, goaway=True)
            return
        if len(payload) % 6:
            self._fail("SETTINGS: bad length", f.FRAME_SIZE_ERROR, goaway=True)
            return
        self._settings_received = True
        self._expecting = False  # (no header block is open: it would have failed first)
        delta = 0
        for key, value in f.parse_settings(payload):
            if key == f.SETTINGS_INITIAL_WINDOW_SIZE:
                if value > f.MAX_WINDOW_SIZE:
                    self._fail("SETTINGS: window too large", f.FLOW_CONTROL_ERROR, goaway=True)
                    return
                delta += value - self.peer_initial_window
                self.peer_initial_window = value
            elif key == f.SETTINGS_MAX_FRAME_SIZE:
                if not f.DEFAULT_MAX_FRAME_SIZE <= value <= f.MAX_MAX_FRAME_SIZE:
                    self._fail("SETTINGS: bad max frame size", f.PROTOCOL_ERROR, goaway=True)
                    return
                self.peer_max_frame_size = value
            elif key == f.SETTINGS_HEADER_TABLE_SIZE:
                self._hpack_out.set_max_table_size(value)
            elif key == f.SETTINGS_MAX_CONCURRENT_STREAMS:
                self.peer_max_concurrent_streams = value
            elif key == f.SETTINGS_ENABLE_PUSH:
                if value > 1 or (value and self.client):
                    self._fail("SETTINGS: bad ENABLE_PUSH", f.PROTOCOL_ERROR, goaway=True)
                    return
            elif key == f.SETTINGS_MAX_HEADER_LIST_SIZE:
                self.peer_max_header_list_size = value
        streams = list(self.streams.values()) if delta else ()
        for stream in streams:
            window = stream.send_window = stream.send_window + delta
            if window > f.MAX_WINDOW_SIZE:
                self._fail("SETTINGS: window overflow", f.FLOW_CONTROL_ERROR, goaway=True)
                return
        # The ACK first, then what the new windows let out (nghttp2's order: a peer may
        # apply its new settings only once acknowledged).
        self._control(f.SETTINGS_ACK)
        if delta > 0:
            for stream in streams:
                if stream.state is not _CLOSED and (stream.pending_size or stream.local_end_queued):
                    self._flush_stream(stream)

    def _on_ping(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            self._fail("PING: stream id not 0", f.PROTOCOL_ERROR, goaway=True)
            return
        if len(payload) != 8:
            self._fail("PING: bad length", f.FRAME_SIZE_ERROR, goaway=True)
            return
        if flags & f.FLAG_ACK:
            on_ping_ack = getattr(self.callbacks, "on_ping_ack", None)
            if on_ping_ack is not None:
                on_ping_ack(payload)
            return
        self._control(f.ping(payload, ack=True))

    def _on_rst_stream(self, sid: int, payload: bytes) -> None:
        if sid == 0:
            self._fail("RST_STREAM: stream id 0", f.PROTOCOL_ERROR, goaway=True)
            return
        if len(payload) != 4:
            self._fail("RST_STREAM: bad length", f.FRAME_SIZE_ERROR, goaway=True)
            return
        stream = self.streams.get(sid)
        if stream is None:
            if self._idle(sid):
                self._fail("RST_STREAM: stream in idle", f.PROTOCOL_ERROR, goaway=True)
            return
        self.stats.rx_reset.inc()
        refused = f.u32(payload) == f.REFUSED_STREAM
        self._close_stream(stream)
        decoder = stream.decoder
        if decoder is not None:
            if refused:
                decoder.on_stream_reset(ResetReason.REMOTE_REFUSED_STREAM_RESET, REMOTE_REFUSED)
            else:
                decoder.on_stream_reset(ResetReason.REMOTE_RESET, REMOTE_RESET)

    def _on_priority(self, sid: int, payload: bytes) -> None:
        """Ignored (RFC 9113 deprecates the scheme), but still checked and counted."""
        if sid == 0:
            self._fail("PRIORITY: stream id 0", f.PROTOCOL_ERROR, goaway=True)
        elif len(payload) != 5:
            self._fail("PRIORITY: bad length", f.FRAME_SIZE_ERROR, goaway=True)

    def _on_goaway(self, sid: int, payload: bytes) -> None:
        if sid != 0 or len(payload) < 8:
            self._fail("GOAWAY: malformed", f.PROTOCOL_ERROR, goaway=True)
            return
        last, code = f.u32_pair(payload)
        last &= 0x7FFFFFFF
        self.goaway_received = last
        self._on_peer_goaway(last, code)
        on_goaway = getattr(self.callbacks, "on_goaway", None)
        if on_goaway is not None:
            on_goaway(last, code)

    def _on_peer_goaway(self, last_stream_id: int, error_code: int) -> None:
        """Role-specific consequences of the peer's GOAWAY."""

    # Receive-side flow control ------------------------------------------------------

    def _consume(self, stream: Stream | None, n: int) -> None:
        """``n`` received bytes are done with: give the window back once half of it is."""
        if stream is not None and not stream.remote_ended:
            consumed = stream.recv_consumed + n
            if consumed >= self._stream_update_at:
                stream.recv_window += consumed
                self._frame(f.window_update(stream.id, consumed))
                consumed = 0
            stream.recv_consumed = consumed
        consumed = self._recv_consumed + n
        if consumed >= self._conn_update_at:
            self._recv_window += consumed
            self._frame(f.window_update(0, consumed))
            consumed = 0
        self._recv_consumed = consumed

    def read_disable(self, stream: Stream, disable: bool) -> None:
        """Stop (or resume) consuming ``stream``'s data: its WINDOW_UPDATEs (and the
        connection's share) wait. Nested, as Envoy's ``readDisable``."""
        if disable:
            stream.read_disabled += 1
            return
        if stream.read_disabled:
            stream.read_disabled -= 1
            if not stream.read_disabled and stream.unconsumed:
                n, stream.unconsumed = stream.unconsumed, 0
                if stream.state is not _CLOSED:
                    self._consume(stream, n)

    # Sending -------------------------------------------------------------------------

    def send_headers(self, stream: Stream, headers: HeaderMap, end_stream: bool) -> None:
        """A header block on ``stream`` (pseudo-headers first). Raises ``ValueError`` (and
        sends nothing) for a value no codec can send."""
        block = self._hpack_out.encode_headers(headers)
        n = len(block)
        if n <= self.peer_max_frame_size:
            flags = _END_HEADERS_END_STREAM if end_stream else _END_HEADERS
            self._out += _FRAME_HEADER_PACK(n >> 8, n & 0xFF, _HEADERS, flags, stream.id)
            self._out += block
            self.constraints.outbound_frames += 1
        else:
            data, count = f.header_block_frames(
                stream.id, block, end_stream, self.peer_max_frame_size
            )
            self._out += data
            self.constraints.outbound_frames += count
        if end_stream:
            self._end_local(stream)

    def send_data(self, stream: Stream, data: bytes, end_stream: bool) -> None:
        """Body on ``stream``: sent as far as the windows allow, the rest queued."""
        if stream.local_end_queued or stream.state is _CLOSED:
            return
        n = len(data)
        if (not stream.pending_size and n <= stream.send_window and n <= self._send_window
                and n <= self.peer_max_frame_size and (n or end_stream)):  # fmt: skip
            # All of it in one frame, now (the usual case).
            stream.send_window -= n
            self._send_window -= n
            self.constraints.outbound_data_frames += 1
            self.constraints.outbound_frames += 1
            self._out += _FRAME_HEADER_PACK(n >> 8, n & 0xFF, _DATA, 1 if end_stream else 0,
                                            stream.id)  # fmt: skip
            self._out += data
            if end_stream:
                self._end_local(stream)
            return
        if end_stream:
            stream.local_end_queued = True
        if n:
            pending = stream.pending
            if not pending:
                pending = stream.pending = deque()
            pending.append(memoryview(data))
            stream.pending_size += n
            self._pending_bytes += n
            self.stats.pending_send_bytes.add(n)
        self._flush_stream(stream)

    def send_trailers(self, stream: Stream, trailers: HeaderMap) -> None:
        """Trailers end the stream; they wait for the body still queued. Empty trailers end
        it with an empty DATA frame, as Envoy's codec does (no empty HEADERS)."""
        if stream.local_end_queued or stream.state is _CLOSED:
            return
        if not len(trailers):
            self.send_data(stream, b"", True)
            return
        stream.local_end_queued = True
        if stream.pending_size:
            stream.pending_trailers = trailers
            return
        self.send_headers(stream, trailers, True)

    def _flush_stream(self, stream: Stream) -> None:
        """Send what ``stream`` has queued, as far as the windows allow."""
        pending = stream.pending
        out = self._out
        sent = 0
        constraints = self.constraints
        max_frame = self.peer_max_frame_size
        while pending:
            window = stream.send_window
            if self._send_window < window:
                window = self._send_window
            if window <= 0:
                if self._send_window <= 0:
                    self._blocked[stream.id] = stream
                break
            chunk = pending[0]
            n = len(chunk)
            if n > window:
                n = window
            if n > max_frame:
                n = max_frame
            if n == len(chunk):
                pending.popleft()
            else:
                pending[0] = chunk[n:]
                chunk = chunk[:n]
            stream.send_window -= n
            self._send_window -= n
            stream.pending_size -= n
            sent += n
            end = not pending and stream.local_end_queued and stream.pending_trailers is None
            out += _FRAME_HEADER_PACK(n >> 8, n & 0xFF, _DATA, 1 if end else 0, stream.id)
            out += chunk
            constraints.outbound_data_frames += 1
            constraints.outbound_frames += 1
            if end:
                self._end_local(stream)
                if stream.state is _CLOSED:
                    break
        if sent:
            self._pending_bytes -= sent
            self.stats.pending_send_bytes.sub(sent)
        if not pending and stream.local_end_queued and not stream.local_ended:
            trailers = stream.pending_trailers
            if trailers is not None:
                stream.pending_trailers = None
                self.send_headers(stream, trailers, True)
            else:
                self._frame(_FRAME_HEADER_PACK(0, 0, _DATA, 1, stream.id))
                self._end_local(stream)
        self._watermark(stream)

    def _watermark(self, stream: Stream) -> None:
        size = stream.pending_size
        if stream.above_watermark:
            if size <= self.buffer_limit // 2:
                stream.above_watermark = False
                if stream.decoder is not None and stream.state is not _CLOSED:
                    stream.decoder.on_send_watermark(False)
        elif size > self.buffer_limit:
            stream.above_watermark = True
            if stream.decoder is not None:
                stream.decoder.on_send_watermark(True)

    def _end_local(self, stream: Stream) -> None:
        """Our END_STREAM is queued (so the user had ended its side)."""
        stream.local_end_queued = True
        state = stream.state = END_LOCAL[stream.state]  # (Stream.end_local, inline)
        if state is _CLOSED:
            self._close_stream(stream)
        elif stream.deferred_reset is not None:
            self.stats.tx_reset.inc()
            self._control(f.rst_stream(stream.id, stream.deferred_reset))
            self._close_stream(stream)

    def reset_stream(self, stream: Stream, error_code: int = f.CANCEL, *,
                     deferred: bool = False) -> None:  # fmt: skip
        """The user abandons ``stream``: RST_STREAM, queued body dropped, no callback.
        ``deferred``: once the body and trailers already given have gone out (a response
        that is complete, to a request that is not: Envoy's deferred reset)."""
        if stream.state is _CLOSED:
            return
        if deferred and stream.local_end_queued and not stream.local_ended:
            stream.deferred_reset = error_code
            return
        self.stats.tx_reset.inc()
        self._control(f.rst_stream(stream.id, error_code))
        self._close_stream(stream)

    def _reset(self, stream: Stream, error_code: int, reason: ResetReason, details: str) -> None:
        """The codec resets ``stream`` for the peer's fault and tells its decoder."""
        if stream.state is _CLOSED:
            return
        self.stats.tx_reset.inc()
        self._control(f.rst_stream(stream.id, error_code))
        self._close_stream(stream)
        if stream.decoder is not None:
            stream.decoder.on_stream_reset(reason, details)

    def _close_stream(self, stream: Stream) -> None:
        """Forget ``stream``: what it still holds (queued body, unconsumed bytes) goes."""
        stream.state = _CLOSED
        if self.streams.pop(stream.id, None) is None:
            return
        self.stats.streams_active.dec()
        self._blocked.pop(stream.id, None)
        if stream.pending_size or stream.unconsumed:
            if stream.pending_size:
                self._pending_bytes -= stream.pending_size
                self.stats.pending_send_bytes.sub(stream.pending_size)
                stream.pending_size = 0
                stream.pending.clear()
            if stream.unconsumed:
                n, stream.unconsumed = stream.unconsumed, 0
                self._consume(None, n)

    def _open_stream(self, stream_id: int) -> Stream:
        stream = Stream(
            stream_id,
            send_window=self.peer_initial_window,
            recv_window=self.settings.initial_stream_window_size,
        )
        self.streams[stream_id] = stream
        self.stats.streams_active.inc()
        return stream

    # Connection-level sends ----------------------------------------------------------

    def ping(self, opaque: bytes) -> None:
        """A PING (keepalive); its ACK reaches ``callbacks.on_ping_ack``."""
        self._frame(f.ping(opaque, ack=False))

    def goaway(self, error_code: int = f.NO_ERROR, last_stream_id: int | None = None) -> None:
        """GOAWAY: streams past ``last_stream_id`` (default: the last the peer opened) will
        not be processed."""
        last = self.last_peer_stream_id if last_stream_id is None else last_stream_id
        self.goaway_sent = last
        self._frame(f.goaway(last, error_code))

    def terminate(self) -> None:
        """The connection is gone: every stream still open is reset under its decoder."""
        streams = list(self.streams.values())
        for stream in streams:
            self._close_stream(stream)
        if self._pending_bytes:
            self._pending_bytes = 0
        old = self._frames_gauges
        if old != _NO_FRAMES:
            self._frames_gauges = _NO_FRAMES
            self.stats.outbound_frames_active.sub(old[0])
            self.stats.outbound_control_frames_active.sub(old[1])
        details = self.error.details if self.error is not None else ""
        for stream in streams:
            if stream.decoder is not None:
                stream.decoder.on_stream_reset(ResetReason.CONNECTION_TERMINATION, details)

    @property
    def active_streams(self) -> int:
        return len(self.streams)
