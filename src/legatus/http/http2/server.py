"""The server role of the HTTP/2 connection: the peer opens the streams.

The connection's first output is our SETTINGS and the WINDOW_UPDATE that raises the
connection window to its configured size (Envoy sends the same two frames); its first input
must be the client preface, then a SETTINGS frame.

A request head becomes ``callbacks.on_request_headers(stream, head, end_stream)``: the
owner creates the stream's decoder there and sets ``stream.decoder``. A head that is refused
becomes ``callbacks.on_stream_rejected(details, reason)`` (Envoy had made a stream for it,
which its owner counts), then a stream reset or, for a malformed message under the default
policy, the end of the connection (reason ``CONNECTION_TERMINATION``; see
header_validation.py). So does a header block the connection ends in the middle of.
Trailers must end the stream.

``callbacks`` (the connection manager) implements::

    on_request_headers(stream, head, end_stream)
    on_stream_rejected(details, reason)
    on_goaway(last_stream_id, error_code)   # optional
    on_ping_ack(opaque)                     # optional
"""

from __future__ import annotations

from legatus.http.http2 import frames as f
from legatus.http.http2.connection import REMOTE_RESET, Http2Connection
from legatus.http.http2.header_validation import (
    VIOLATION_OF_MESSAGING_RULE,
    Head,
    Rejection,
    check_request,
    check_trailers,
)
from legatus.http.http2.stream import ResetReason, Stream, StreamState

_CLOSED = StreamState.CLOSED
_HALF_REMOTE = StreamState.HALF_CLOSED_REMOTE
_PREFACE = f.PREFACE


class ServerConnection(Http2Connection):
    client = False

    def __init__(self, settings, stats, callbacks, *, buffer_limit: int = 1 << 20) -> None:
        super().__init__(settings, stats, callbacks, buffer_limit=buffer_limit)
        self._preface_left = len(_PREFACE)
        self._max_streams = settings.max_concurrent_streams
        self._stream_recv_window = settings.initial_stream_window_size
        self._frame(f.settings(settings.local_settings(client=False)))
        # The connection window is raised right after the ACK of the client's first SETTINGS
        # (or at the end of the first read without one), as nghttp2 orders them.
        self._raise_window_by = settings.initial_connection_window_size - f.DEFAULT_WINDOW_SIZE

    def _on_settings(self, flags: int, sid: int, payload: bytes) -> None:
        super()._on_settings(flags, sid, payload)
        if self._raise_window_by and self.error is None and not flags & f.FLAG_ACK:
            self._raise_window()

    def _start(self, data: bytes) -> int:
        left = self._preface_left
        done = len(_PREFACE) - left
        got = data[:left]
        if got != _PREFACE[done : done + len(got)]:
            self._fail("Received bad client magic byte string", f.PROTOCOL_ERROR)
            return 0
        self._preface_left = left - len(got)
        return len(got)

    def shutdown_notice(self) -> None:
        """Envoy's graceful GOAWAY (the first step of a drain): the last stream id is the
        largest possible, so nothing in flight is refused; ``goaway`` follows later."""
        self._frame(f.goaway(f.MAX_STREAM_ID, f.NO_ERROR))

    def _on_header_block(self, sid: int, flags: int, block: bytes) -> None:
        """A request head (the usual case, inline: a new stream, a head this connection
        decoded before, nothing to refuse), or trailers, or a block to drop."""
        if (
            sid <= self.last_peer_stream_id or not sid & 1 or self.goaway_sent is not None
        ) and not self._opens_stream(sid, flags, block):
            return
        self.last_peer_stream_id = sid
        head = self._hpack_in.cache.get(block)
        if head is None:
            fields = self._decode_block(block)
            if fields is None:
                return
            head = check_request(fields, self.settings)
            if type(head) is Head and not head.dropped:
                self._hpack_in.store(block, head)
        end_stream = (flags & f.FLAG_END_STREAM) != 0
        if type(head) is Rejection or head.dropped or len(self.streams) >= self._max_streams:
            if not self._admit(sid, head, end_stream):
                return
        elif end_stream and head.content_length:
            self._reject(sid, Rejection(VIOLATION_OF_MESSAGING_RULE, f.PROTOCOL_ERROR))
            return
        stream = self.streams[sid] = Stream(
            sid, send_window=self.peer_initial_window, recv_window=self._stream_recv_window
        )
        self.stats.streams_active.inc()
        stream.content_length = head.content_length
        if end_stream:
            stream.state = _HALF_REMOTE
        self.callbacks.on_request_headers(stream, head, end_stream)
        if stream.state is _CLOSED:
            self._close_stream(stream)

    def _opens_stream(self, sid: int, flags: int, block: bytes) -> bool:
        """Whether a block on ``sid`` (not past the last stream the peer opened, or even, or
        after our GOAWAY) opens a stream; what it is otherwise: trailers, a protocol error,
        a block for a stream closed or refused (decoded all the same: the HPACK state)."""
        stream = self.streams.get(sid)
        if stream is not None:
            self._on_trailers(stream, block, (flags & f.FLAG_END_STREAM) != 0)
            return False
        if not sid & 1:
            self._fail("HEADERS: invalid stream id", f.PROTOCOL_ERROR)
            return False
        if sid <= self.last_peer_stream_id or (
            self.goaway_sent is not None and sid > self.goaway_sent
        ):
            self._decode_block(block)
            return False
        return True

    def _admit(self, sid: int, head: Head | Rejection, end_stream: bool) -> bool:
        """Whether a request head that is refused, or drops fields, or comes past
        MAX_CONCURRENT_STREAMS, opens its stream (after the answer Envoy gives it)."""
        if type(head) is Rejection:
            self._reject(sid, head)
            return False
        if len(self.streams) >= self._max_streams:
            self.stats.tx_reset.inc()
            self._control(f.rst_stream(sid, f.REFUSED_STREAM))
            return False
        if end_stream and head.content_length:
            self._reject(sid, Rejection(VIOLATION_OF_MESSAGING_RULE, f.PROTOCOL_ERROR))
            return False
        if head.dropped:
            self.stats.dropped_headers_with_underscores.add(head.dropped)
        return True

    def _on_connection_error(self, error) -> None:
        sid = self._hb_stream
        if sid and sid & 1 and sid > self.last_peer_stream_id and sid not in self.streams:
            # Envoy makes a stream when a request's HEADERS begins: it ends with the connection.
            self._hb_stream = 0
            self.callbacks.on_stream_rejected(error.details, ResetReason.CONNECTION_TERMINATION)

    def _reject(self, sid: int, rejection: Rejection) -> None:
        """Envoy's answers to a refused request head (see header_validation)."""
        getattr(self.stats, rejection.stat).inc()
        callbacks = self.callbacks
        if rejection.rst_code is not None:
            self.stats.tx_reset.inc()
            self._control(f.rst_stream(sid, rejection.rst_code))
            callbacks.on_stream_rejected(rejection.details, ResetReason.REMOTE_RESET)
        elif self.settings.stream_error_on_invalid_http_messaging:
            self.stats.tx_reset.inc()
            self._control(f.rst_stream(sid, f.PROTOCOL_ERROR))
            callbacks.on_stream_rejected(rejection.details, ResetReason.LOCAL_RESET)
        else:
            callbacks.on_stream_rejected(rejection.details, ResetReason.CONNECTION_TERMINATION)
            self._fail("The user callback function failed", f.PROTOCOL_ERROR,
                       details=rejection.details)  # fmt: skip

    def _on_trailers(self, stream: Stream, block: bytes, end_stream: bool) -> None:
        fields = self._decode_block(block)
        if fields is None:
            return
        if stream.remote_ended:
            self._reset(stream, f.STREAM_CLOSED, ResetReason.PROTOCOL_ERROR, REMOTE_RESET)
            return
        head = check_trailers(fields, self.settings)
        if not end_stream and type(head) is Head:
            head = Rejection(VIOLATION_OF_MESSAGING_RULE)
        self.stats.trailers.inc()
        if type(head) is Rejection:
            getattr(self.stats, head.stat).inc()
            if head.rst_code is None and not self.settings.stream_error_on_invalid_http_messaging:
                self._fail("The user callback function failed", f.PROTOCOL_ERROR,
                           details=head.details)  # fmt: skip
                return
            code = f.PROTOCOL_ERROR if head.rst_code is None else head.rst_code
            self._reset(stream, code, ResetReason.LOCAL_RESET, head.details)
            return
        if stream.content_length is not None and stream.received != stream.content_length:
            self._reset(stream, f.PROTOCOL_ERROR, ResetReason.PROTOCOL_ERROR, REMOTE_RESET)
            return
        stream.end_remote()
        if stream.decoder is not None:
            stream.decoder.decode_trailers(head.header_map())
        if stream.state is _CLOSED:
            self._close_stream(stream)
