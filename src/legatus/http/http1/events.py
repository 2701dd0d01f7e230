"""What the HTTP/1 codecs report: one event per decoded piece of a message.

Server side (requests): ``RequestHeaders``, then ``RequestData`` pieces, then optionally
``RequestTrailers``; the last event of a request has ``end_stream`` (a trailers event always
ends it). Client side (responses): ``InformationalHeaders`` for 1xx, ``ResponseHeaders``,
``ResponseData``, ``ResponseTrailers``. ``ProtocolError`` ends a codec: nothing follows it.

Header maps are handed over, not copied: the receiver owns (and may mutate) them, as Envoy
moves its header maps into the decoder. Body pieces are ``bytes`` of any size, never the
whole body unless it arrived in one read.
"""

from __future__ import annotations

from dataclasses import dataclass

from legatus.http.codes import reason_phrase
from legatus.http.headers import HeaderMap

HTTP_11 = "HTTP/1.1"
HTTP_10 = "HTTP/1.0"


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestHeaders:
    """A request head: ``:method``, ``:path`` (absent for CONNECT), ``:authority`` (from Host,
    or the absolute-form URL), ``:scheme`` only for an absolute-form URL, then the headers in
    arrival order with lower-case names.

    ``keep_alive``: the connection may carry another request after this one (Envoy's
    ``shouldCloseConnection`` with HTTP/1.0 defaulting to close). ``upgrade``: the codec is in
    upgrade mode (``Upgrade`` + ``Connection: upgrade``, or CONNECT): every later byte is
    ``RequestData`` of this stream, up to ``feed_eof``. ``protocol``: ``HTTP/1.1`` or
    ``HTTP/1.0`` (any other version, when HTTP/1.0 is accepted, counts as 1.0, as in Envoy).
    """

    headers: HeaderMap
    end_stream: bool
    keep_alive: bool = True
    expect_continue: bool = False
    upgrade: bool = False
    protocol: str = HTTP_11


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestData:
    data: bytes
    end_stream: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestTrailers:
    """Trailers of a chunked request (only with ``enable_trailers``); they end the request."""

    trailers: HeaderMap


@dataclass(frozen=True, slots=True, kw_only=True)
class InformationalHeaders:
    """A 1xx response other than 101 (100 Continue, 102, 103...); the final one follows."""

    headers: HeaderMap


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseHeaders:
    """A final response head (``:status`` first). ``keep_alive``: the connection may be reused
    after this response (no ``Connection: close``, HTTP/1.0 only with keep-alive, not
    delimited by the close of the connection, not an upgrade)."""

    headers: HeaderMap
    end_stream: bool
    keep_alive: bool = True
    upgrade: bool = False
    protocol: str = HTTP_11


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseData:
    data: bytes
    end_stream: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseTrailers:
    trailers: HeaderMap


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtocolError:
    """The peer broke HTTP/1; the codec stops. ``details`` is Envoy's response code details
    (``%RESPONSE_CODE_DETAILS%``), ``status`` the local reply Envoy sends downstream (the
    connection is closed after it). On the client side the router answers 502 (UPE) whatever
    the status; ``details`` then names the cause as Envoy's codec does."""

    status: int
    details: str

    def __post_init__(self) -> None:
        if not 100 <= self.status <= 599:
            raise ValueError(f"status {self.status} out of range")
        if not self.details:
            raise ValueError("details must not be empty")

    @property
    def body(self) -> bytes:
        """The body of Envoy's local reply for a codec error: the reason phrase."""
        return reason_phrase(self.status).encode()


ServerEvent = RequestHeaders | RequestData | RequestTrailers | ProtocolError
ClientEvent = (
    InformationalHeaders | ResponseHeaders | ResponseData | ResponseTrailers | ProtocolError
)
Event = ServerEvent | ClientEvent


def ends_request(event: ServerEvent) -> bool:
    """Whether ``event`` is the last one of its request (the boundary between pipelined
    requests)."""
    cls = type(event)
    if cls is RequestHeaders or cls is RequestData:
        return event.end_stream  # type: ignore[union-attr]
    return True  # trailers and errors end it
