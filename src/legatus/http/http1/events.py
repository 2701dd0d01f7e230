"""What the HTTP/1 codecs report: one event per decoded piece of a message.

Server side (requests): ``RequestHeaders``, then ``RequestData`` pieces, then optionally
``RequestTrailers``; the last event of a request has ``end_stream`` (a trailers event always
ends it). Client side (responses): ``InformationalHeaders`` for 1xx, ``ResponseHeaders``,
``ResponseData``, ``ResponseTrailers``, collected by ``ResponseEventList`` from the client
codec's callbacks (which the connection pool takes directly, without events). ``ProtocolError``
ends a codec: nothing follows it.

Header maps are handed over, not copied: the receiver owns (and may mutate) them, as Envoy
moves its header maps into the decoder. Body pieces are ``bytes`` of any size, never the
whole body unless it arrived in one read.
"""

from __future__ import annotations

from legatus.http.codes import reason_phrase
from legatus.http.headers import HeaderMap

HTTP_11 = "HTTP/1.1"
HTTP_10 = "HTTP/1.0"


class _Event:
    """Value semantics for the events: equal when of the same class with equal fields.

    Events are built once or twice per request, so they are plain slotted classes with a
    positional ``__init__`` (keywords work too) that sets its fields in one or two tuple
    assignments (not a statement per field): a frozen dataclass sets each field through
    ``object.__setattr__``, several times slower. Nobody mutates an event after building it.
    """

    __slots__ = ()
    _FIELDS: tuple[str, ...] = ()  # in constructor order

    def _fields(self) -> tuple:
        return tuple(getattr(self, name) for name in self._FIELDS)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._fields() == other._fields()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self._fields()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._FIELDS)
        return f"{type(self).__name__}({fields})"


class RequestHeaders(_Event):
    """A request head: ``:method``, ``:path`` (absent for CONNECT), ``:authority`` (from Host,
    or the absolute-form URL), ``:scheme`` only for an absolute-form URL, then the headers in
    arrival order with lower-case names.

    ``keep_alive``: the connection may carry another request after this one (Envoy's
    ``shouldCloseConnection`` with HTTP/1.0 defaulting to close). ``upgrade``: the codec is in
    upgrade mode (``Upgrade`` + ``Connection: upgrade``, or CONNECT): every later byte is
    ``RequestData`` of this stream, up to ``feed_eof``. ``protocol``: ``HTTP/1.1`` or
    ``HTTP/1.0`` (any other version, when HTTP/1.0 is accepted, counts as 1.0, as in Envoy).
    """

    __slots__ = ("end_stream", "expect_continue", "headers", "keep_alive", "protocol", "upgrade")
    _FIELDS = ("headers", "end_stream", "keep_alive", "expect_continue", "upgrade", "protocol")

    def __init__(
        self,
        headers: HeaderMap,
        end_stream: bool,
        keep_alive: bool = True,
        expect_continue: bool = False,
        upgrade: bool = False,
        protocol: str = HTTP_11,
    ) -> None:
        self.headers, self.end_stream, self.keep_alive = headers, end_stream, keep_alive
        self.expect_continue, self.upgrade, self.protocol = expect_continue, upgrade, protocol


class RequestData(_Event):
    __slots__ = _FIELDS = ("data", "end_stream")

    def __init__(self, data: bytes, end_stream: bool) -> None:
        self.data, self.end_stream = data, end_stream


class RequestTrailers(_Event):
    """Trailers of a chunked request (only with ``enable_trailers``); they end the request."""

    __slots__ = _FIELDS = ("trailers",)

    def __init__(self, trailers: HeaderMap) -> None:
        self.trailers = trailers


class InformationalHeaders(_Event):
    """A 1xx response other than 101 (100 Continue, 102, 103...); the final one follows."""

    __slots__ = _FIELDS = ("headers",)

    def __init__(self, headers: HeaderMap) -> None:
        self.headers = headers


class ResponseHeaders(_Event):
    """A final response head (``:status`` first). ``keep_alive``: the connection may be reused
    after this response (no ``Connection: close``, HTTP/1.0 only with keep-alive, not
    delimited by the close of the connection, not an upgrade)."""

    __slots__ = ("end_stream", "headers", "keep_alive", "protocol", "upgrade")
    _FIELDS = ("headers", "end_stream", "keep_alive", "upgrade", "protocol")

    def __init__(
        self,
        headers: HeaderMap,
        end_stream: bool,
        keep_alive: bool = True,
        upgrade: bool = False,
        protocol: str = HTTP_11,
    ) -> None:
        self.headers, self.end_stream, self.keep_alive = headers, end_stream, keep_alive
        self.upgrade, self.protocol = upgrade, protocol


class ResponseData(_Event):
    __slots__ = _FIELDS = ("data", "end_stream")

    def __init__(self, data: bytes, end_stream: bool) -> None:
        self.data, self.end_stream = data, end_stream


class ResponseTrailers(_Event):
    __slots__ = _FIELDS = ("trailers",)

    def __init__(self, trailers: HeaderMap) -> None:
        self.trailers = trailers


class ProtocolError(_Event):
    """The peer broke HTTP/1; the codec stops. ``details`` is Envoy's response code details
    (``%RESPONSE_CODE_DETAILS%``), ``status`` the local reply Envoy sends downstream (the
    connection is closed after it). On the client side the router answers 502 (UPE) whatever
    the status; ``details`` then names the cause as Envoy's codec does."""

    __slots__ = ("details", "status")
    _FIELDS = ("status", "details")

    def __init__(self, status: int, details: str) -> None:
        if not 100 <= status <= 599:
            raise ValueError(f"status {status} out of range")
        if not details:
            raise ValueError("details must not be empty")
        self.status = status
        self.details = details

    @property
    def body(self) -> bytes:
        """The body of Envoy's local reply for a codec error: the reason phrase."""
        return reason_phrase(self.status).encode()


class ResponseEventList:
    """``ClientCodec`` callbacks that collect events, for an owner that reads whole responses
    (``ClientCodec.feed`` returns them); the connection pool takes the calls directly."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: list[ClientEvent] = []

    def clear(self) -> None:
        self.events = []

    def take(self) -> list[ClientEvent]:
        events = self.events
        self.events = []
        return events

    def on_informational_headers(self, headers: HeaderMap) -> None:
        self.events.append(InformationalHeaders(headers))

    def on_response_headers(
        self, headers: HeaderMap, end_stream: bool, keep_alive: bool, upgrade: bool, protocol: str
    ) -> None:
        self.events.append(ResponseHeaders(headers, end_stream, keep_alive, upgrade, protocol))

    def on_response_data(self, data: bytes, end_stream: bool) -> None:
        self.events.append(ResponseData(data, end_stream))

    def on_response_trailers(self, trailers: HeaderMap) -> None:
        self.events.append(ResponseTrailers(trailers))

    def on_protocol_error(self, error: ProtocolError) -> None:
        self.events.append(error)


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
