"""The client role of the HTTP/2 connection: this side opens the streams (an upstream
connection of a pool).

The connection's first output is the client preface, our SETTINGS (push disabled) and the
WINDOW_UPDATE that raises the connection window; the server's first frame must be SETTINGS.

Use::

    conn = ClientConnection(settings, stats, callbacks, buffer_limit=...)
    stream = conn.open_stream(decoder)            # the next odd stream id
    conn.send_headers(stream, request_headers, end_stream=False)
    conn.send_data(stream, body, end_stream=False)
    conn.send_trailers(stream, trailers)          # (or send_data(..., end_stream=True))
    transport.write(conn.data_to_send())
    error = conn.feed(bytes_read)                 # events reach ``decoder``

The response comes to the stream's decoder (stream.py ``StreamDecoder``):
``decode_informational_headers`` for 1xx, ``decode_headers`` for the final head, then
``decode_data`` / ``decode_trailers``; ``on_stream_reset`` if it ends early. A malformed
response resets its stream only (PROTOCOL_ERROR, reason ``PROTOCOL_ERROR``). A GOAWAY from
the server resets the streams it will not process with ``REMOTE_REFUSED_STREAM_RESET`` (safe
to retry elsewhere) and reaches ``callbacks.on_goaway``; ``can_open_stream`` turns False.
"""

from __future__ import annotations

from legatus.http.http2 import frames as f
from legatus.http.http2.connection import REMOTE_REFUSED, REMOTE_RESET, Http2Connection
from legatus.http.http2.header_validation import (
    VIOLATION_OF_MESSAGING_RULE,
    Head,
    Rejection,
    check_response,
    check_trailers,
)
from legatus.http.http2.stream import ResetReason, Stream, StreamDecoder, StreamState

_CLOSED = StreamState.CLOSED
_VIOLATION = Rejection(VIOLATION_OF_MESSAGING_RULE)


class ClientConnection(Http2Connection):
    client = True

    def __init__(self, settings, stats, callbacks=None, *, buffer_limit: int = 1 << 20) -> None:
        super().__init__(settings, stats, callbacks, buffer_limit=buffer_limit)
        self._next_id = 1
        self._out += f.PREFACE
        self._frame(f.settings(settings.local_settings(client=True)))
        raise_by = settings.initial_connection_window_size - f.DEFAULT_WINDOW_SIZE
        if raise_by:
            self._frame(f.window_update(0, raise_by))

    def _next_local_id(self) -> int:
        return self._next_id

    @property
    def can_open_stream(self) -> bool:
        """A new stream may be opened: no GOAWAY either way, no error, ids left, and the
        server's MAX_CONCURRENT_STREAMS not reached."""
        return (
            self.error is None
            and self.goaway_received is None
            and self.goaway_sent is None
            and self._next_id <= f.MAX_STREAM_ID
            and len(self.streams) < self.peer_max_concurrent_streams
        )

    def open_stream(self, decoder: StreamDecoder) -> Stream:
        """A new stream whose events go to ``decoder``; send its headers next. Raises
        ``RuntimeError`` when ``can_open_stream`` is False (a bug of the pool)."""
        if not self.can_open_stream:
            raise RuntimeError("no stream can be opened on this HTTP/2 connection")
        stream = self._open_stream(self._next_id)
        self._next_id += 2
        stream.decoder = decoder
        return stream

    def _on_header_block(self, sid: int, flags: int, block: bytes) -> None:
        end_stream = bool(flags & f.FLAG_END_STREAM)
        stream = self.streams.get(sid)
        if stream is None:
            if self._idle(sid) or not sid & 1:
                self._fail("HEADERS: invalid stream id", f.PROTOCOL_ERROR, goaway=True)
            else:
                self._decode_block(block)  # a stream we closed: HPACK state only
            return
        if stream.remote_ended:
            if self._decode_block(block) is not None:
                self._reset(stream, f.STREAM_CLOSED, ResetReason.PROTOCOL_ERROR, REMOTE_RESET)
            return
        if stream.response_headers_seen:
            fields = self._decode_block(block)
            if fields is None:
                return
            head = check_trailers(fields, self.settings)
            if not end_stream and type(head) is Head:
                head = _VIOLATION
            if type(head) is Rejection:
                self._refuse(stream, head)
                return
            # (http2.trailers counts trailers received by a server connection only, as Envoy)
            if stream.content_length is not None and stream.received != stream.content_length:
                self._reset(stream, f.PROTOCOL_ERROR, ResetReason.PROTOCOL_ERROR, REMOTE_RESET)
                return
            stream.end_remote()
            stream.decoder.decode_trailers(head.header_map())
        else:
            hpack_in = self._hpack_in
            head = hpack_in.cache.get(block)
            if head is None:
                fields = self._decode_block(block)
                if fields is None:
                    return
                head = check_response(fields, self.settings)
                if type(head) is Head:
                    hpack_in.store(block, head)
            if type(head) is Rejection:
                self._refuse(stream, head)
                return
            if head.items[0][1][0] == "1":  # informational
                if end_stream:
                    self._refuse(stream, _VIOLATION)
                    return
                stream.decoder.decode_informational_headers(head.header_map())
                return
            stream.response_headers_seen = True
            stream.content_length = head.content_length
            if end_stream:
                if head.content_length:
                    self._refuse(stream, _VIOLATION)
                    return
                stream.end_remote()
            stream.decoder.decode_headers(head.header_map(), end_stream)
        if stream.state is _CLOSED:
            self._close_stream(stream)

    def _refuse(self, stream: Stream, rejection: Rejection) -> None:
        """A malformed response: by default the whole connection fails, as Envoy's codec
        (its streams reset as protocol errors: the router's 502 UPE; checked against Envoy
        1.40); with ``stream_error_on_invalid_http_messaging`` only this stream."""
        getattr(self.stats, rejection.stat).inc()
        if rejection.rst_code is None and not self.settings.stream_error_on_invalid_http_messaging:
            self._fail("The user callback function failed", f.PROTOCOL_ERROR,
                       details=rejection.details)  # fmt: skip
            return
        code = f.PROTOCOL_ERROR if rejection.rst_code is None else rejection.rst_code
        self._reset(stream, code, ResetReason.PROTOCOL_ERROR, rejection.details)

    def _on_peer_goaway(self, last_stream_id: int, error_code: int) -> None:
        refused = [s for sid, s in self.streams.items() if sid > last_stream_id]
        for stream in refused:
            self._close_stream(stream)
        for stream in refused:
            if stream.decoder is not None:
                stream.decoder.on_stream_reset(
                    ResetReason.REMOTE_REFUSED_STREAM_RESET, REMOTE_REFUSED
                )
