"""One HTTP/2 stream in the codec: its state, its two flow-control windows, the body it could
not send yet, and the object its events go to.

States follow RFC 9113 5.1 for an opened stream (idle and reserved streams have no object):
OPEN, HALF_CLOSED_LOCAL (our END_STREAM went out), HALF_CLOSED_REMOTE (the peer's came in),
CLOSED. ``end_local``/``end_remote`` are the transitions; ending a side twice is a bug of
the caller, never traffic (the connection turns the peer's attempts into protocol errors
before calling them). A reset closes from any state.

``decoder`` is the stream's user (the connection manager's stream downstream, the pool's
request upstream); the connection calls it as ``StreamDecoder`` says.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Protocol

from legatus.http.headers import HeaderMap


class StreamState(enum.IntEnum):
    OPEN = 0
    HALF_CLOSED_LOCAL = 1
    HALF_CLOSED_REMOTE = 2
    CLOSED = 3


_OPEN, _HALF_LOCAL, _HALF_REMOTE, _CLOSED = StreamState
# The transitions of ``end_local`` and ``end_remote`` (the codec applies them inline on its
# hot path: a missing key is the caller's bug, as with the methods).
END_LOCAL = {_OPEN: _HALF_LOCAL, _HALF_REMOTE: _CLOSED}
END_REMOTE = {_OPEN: _HALF_REMOTE, _HALF_LOCAL: _CLOSED}


class ResetReason(enum.Enum):
    """Why a stream ended early: Envoy's ``Http::StreamResetReason`` (the value is its
    ``resetReasonToString``), as far as an HTTP/2 codec can give it."""

    REMOTE_RESET = "remote reset"
    """The peer sent RST_STREAM (other than REFUSED_STREAM)."""
    REMOTE_REFUSED_STREAM_RESET = "remote refused stream reset"
    """The peer refused the stream (RST_STREAM REFUSED_STREAM, or a GOAWAY it came after):
    it was not processed, a retry is safe."""
    LOCAL_RESET = "local reset"
    """This side reset the stream (a protocol error of the peer on it, or the user)."""
    CONNECTION_TERMINATION = "connection termination"
    """The connection ended under the stream."""
    PROTOCOL_ERROR = "protocol error"
    """The peer broke the protocol on this stream (the codec sent RST_STREAM)."""


class StreamDecoder(Protocol):
    """What a stream's events go to. The connection calls these synchronously while it
    parses; they may call back into the connection (send, reset, read_disable)."""

    def decode_headers(self, headers: HeaderMap, end_stream: bool) -> None:
        """Client role: the final response head (server role: never, the request head goes
        to the connection's callbacks, which create the decoder)."""

    def decode_informational_headers(self, headers: HeaderMap) -> None:
        """Client role: a 1xx response (100 Continue, 103...); the final one follows."""

    def decode_data(self, data: bytes, end_stream: bool) -> None: ...

    def decode_trailers(self, trailers: HeaderMap) -> None: ...

    def on_stream_reset(self, reason: ResetReason, details: str) -> None:
        """The stream is gone (nothing else is called after this). ``details`` is Envoy's
        response code details for it (``http2.remote_reset``...)."""

    def on_send_watermark(self, above: bool) -> None:
        """The body waiting for the peer's window went above this stream's buffer limit (or
        back under half of it): stop (or resume) producing it."""


class Stream:
    """One opened stream (see module doc).

    A stream is made per request, and most of its state keeps its initial value for the
    whole of a short exchange, so the defaults are class attributes and a new stream sets
    only its id and windows (an instance attribute appears when a value first changes)."""

    state = _OPEN
    decoder: StreamDecoder | None = None
    user = None  # free for the decoder's owner
    recv_consumed = 0  # received and consumed, not yet given back (WINDOW_UPDATE)
    unconsumed = 0  # received while reading is disabled
    read_disabled = 0
    # Body waiting for window: a deque once there is some (the empty tuple until then).
    pending: deque[memoryview] | tuple = ()
    pending_size = 0
    pending_trailers: HeaderMap | None = None  # trailers to send after the body
    local_end_queued = False  # the user ended its side (maybe still pending)
    above_watermark = False
    content_length: int | None = None  # declared by the peer, counted down
    received = 0
    response_headers_seen = False  # client role: the final response head came
    deferred_reset: int | None = None  # RST_STREAM code once our END_STREAM is out

    def __init__(self, stream_id: int, *, send_window: int, recv_window: int) -> None:
        self.id = stream_id
        self.send_window = send_window  # what the peer lets us send
        self.recv_window = recv_window  # what we let the peer send

    def end_local(self) -> None:
        self.state = END_LOCAL[self.state]

    def end_remote(self) -> None:
        self.state = END_REMOTE[self.state]

    @property
    def remote_ended(self) -> bool:
        return self.state is _HALF_REMOTE or self.state is _CLOSED

    @property
    def local_ended(self) -> bool:
        return self.state is _HALF_LOCAL or self.state is _CLOSED

    def __repr__(self) -> str:
        return f"Stream({self.id}, {self.state.name})"
