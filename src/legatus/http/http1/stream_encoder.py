"""Writing one HTTP/1 message: Envoy's ``StreamEncoderImpl``, for requests and responses.

The head is the first line, then every header as ``name: value\\r\\n`` in map order (names are
already lower-case; ``:authority`` goes out as ``host``, other pseudo-headers and any
``transfer-encoding`` are left out: the encoder decides framing), then the framing header the
encoder adds last, exactly where Envoy adds it:

- ``content-length`` present, or chunking disabled (upgrade, CONNECT): the body goes as is;
- 1xx, 204, 304: nothing added, no body framing;
- a head that ends the stream (not a response to HEAD): ``content-length: 0`` (not for 204,
  nor for a request whose method has no body: GET, HEAD, DELETE, TRACE, CONNECT);
- an HTTP/1.0 response: nothing added, the body runs to the close of the connection;
- otherwise ``transfer-encoding: chunked``, and chunked framing unless the message is an
  upgrade, a response to HEAD, or a response to CONNECT.

A value with CR, LF or NUL would split the message: encoding it raises ``ValueError`` (a filter
set it; traffic cannot, the decoders refuse such bytes).

Header case (``header_key_format``, see header_formatter): a head is written by
``encode_head`` as is, unless it carries a stateful formatter or the connection has a key
format of its own; then ``encode_formatted_head`` writes every name of the head (``host`` and
the framing header included, trailers excepted) through the format. Any encoder may meet a
head with a formatter (the other side's codec made it), so each head costs one type test;
that is all a configuration without a format pays.

``ResponseEncoder`` is the server side's: one ``Exchange`` per request head the codec decoded,
answered in order, and whether the connection must close after the response.
"""

from __future__ import annotations

from collections import deque

from legatus.http.codes import reason_phrase
from legatus.http.headers import HeaderMap
from legatus.http.http1.common import has_token
from legatus.http.http1.header_formatter import FormattedHeaderMap, KeyFormat, key_format_of

CRLF = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"
_FRAMING_LENGTH_0 = "content-length: 0"
_FRAMING_CHUNKED = "transfer-encoding: chunked"
# Methods whose request has no body: a head that ends such a request gets no content-length.
_BODILESS_METHODS = frozenset(("GET", "HEAD", "DELETE", "TRACE", "CONNECT"))


def encode_head(first_line: str, headers: HeaderMap, framing: str) -> bytes:
    """``first_line``, the headers, ``framing`` (a header line or ``""``), each line ended with
    CRLF, then the empty line. Lines are given without their CRLF."""
    # Envoy's :authority is a pseudo-header, so host comes first.
    authority = headers.get(":authority")
    lines = [first_line] if authority is None else [first_line, "host: " + authority]
    append = lines.append
    for name, value in headers.items():
        if prefix := _PREFIXES.get(name):
            append(prefix + value)
        elif prefix is None:  # a name not seen before
            prefix = _prefix(name)
            if prefix:
                append(prefix + value)
    if framing:
        append(framing)
    # CR, LF or NUL inside a line would split the message (three memchr over the lines).
    text = "".join(lines)
    if "\r" in text or "\n" in text or "\x00" in text:
        raise ValueError("a header name or value contains CR, LF or NUL")
    lines += ("", "")  # the head ends with an empty line
    return "\r\n".join(lines).encode("latin1")  # (CPython's fast-path spelling of latin-1)


def encode_formatted_head(
    first_line: str, headers: HeaderMap, framing: str, key_format: KeyFormat | None
) -> bytes:
    """``encode_head`` with every name written through ``key_format`` (None: as is)."""
    if key_format is None:
        return encode_head(first_line, headers, framing)
    lines = [first_line]
    append = lines.append
    authority = headers.get(":authority")
    if authority is not None:
        append(f"{key_format('host')}: {authority}")
    for name, value in headers.items():
        if name[0] != ":" and name != "transfer-encoding":
            append(f"{key_format(name)}: {value}")
    if framing:
        name, _, value = framing.partition(": ")
        append(f"{key_format(name)}: {value}")
    text = "".join(lines)
    if "\r" in text or "\n" in text or "\x00" in text:
        raise ValueError("a header name or value contains CR, LF or NUL")
    lines += ("", "")
    return "\r\n".join(lines).encode("latin1")


# Header name -> the start of its line ("" for what is not written here: pseudo-headers
# (:authority goes out first, as host) and transfer-encoding, which the encoder decides).
_PREFIXES: dict[str, str] = {":authority": ""}
_PREFIXES_MAX = 4096


def _prefix(name: str) -> str:
    prefix = "" if name[0] == ":" or name == "transfer-encoding" else f"{name}: "
    if len(_PREFIXES) < _PREFIXES_MAX:
        _PREFIXES[name] = prefix
    return prefix


class StreamEncoder:
    """Body framing of one outgoing message, decided by its head (see module doc)."""

    __slots__ = ("body_allowed", "chunked", "done", "trailers_enabled")

    def __init__(self, *, trailers_enabled: bool = False) -> None:
        self.chunked = self.done = False
        self.body_allowed = True
        self.trailers_enabled = trailers_enabled

    def request_framing(
        self, headers: HeaderMap, end_stream: bool, chunking_disabled: bool, method: str
    ) -> str:
        """Envoy's ``encodeHeadersBase`` for a request: the framing header to add; sets the
        body state. ``chunking_disabled``: a CONNECT or upgrade request; ``method`` decides
        whether a head that ends the request says ``content-length: 0``."""
        self.done = end_stream
        self.chunked = False
        if "content-length" in headers or chunking_disabled:
            return ""  # the body (if any) goes as is
        if end_stream:
            return "" if method in _BODILESS_METHODS else _FRAMING_LENGTH_0
        self.chunked = True  # (an upgrade disables chunking: not one here)
        return _FRAMING_CHUNKED

    def data(self, data: bytes, end_stream: bool) -> bytes:
        if self.done:
            raise ValueError("the message was already complete")
        if not self.body_allowed:
            data = b""
        self.done = end_stream
        if self.chunked:
            if data:
                out = b"".join((b"%x\r\n" % len(data), data, CRLF))
                return out + LAST_CHUNK if end_stream else out
            return LAST_CHUNK if end_stream else b""
        return data

    def trailers(self, trailers: HeaderMap) -> bytes:
        """Envoy's ``encodeTrailersBase``: trailers only go out chunked, when enabled."""
        if self.done:
            raise ValueError("the message was already complete")
        self.done = True
        if not self.chunked:
            return b""
        if not self.trailers_enabled:
            return LAST_CHUNK
        return encode_head("0", trailers, "")


class Exchange(StreamEncoder):
    """One request and the encoder of its response: what the response encoder needs to know
    (one object per request, not two)."""

    __slots__ = ("connect", "head", "http10", "keep_alive", "request_done")

    def __init__(self, http10: bool, head: bool, connect: bool, keep_alive: bool) -> None:
        # StreamEncoder's fields, set here rather than through a second __init__ call.
        self.chunked = self.done = self.trailers_enabled = self.request_done = False
        self.body_allowed = True
        self.http10, self.head, self.connect, self.keep_alive = http10, head, connect, keep_alive

    def response_framing(self, headers: HeaderMap, status: int, end_stream: bool) -> str:
        """Envoy's ``encodeHeadersBase`` for the response: the framing header to add; sets
        the body state (no body for HEAD, 204, 304; a 2xx to CONNECT opens a tunnel)."""
        self.done = end_stream
        self.chunked = False
        self.body_allowed = not self.head and status != 204 and status != 304
        if "content-length" in headers or status < 200 or status == 204 or status == 304:
            return ""  # the body (if any) goes as is
        if end_stream and not self.head:
            return _FRAMING_LENGTH_0
        if self.http10:
            return ""  # HTTP/1.0 has no chunking: the body ends when the connection closes
        connect = self.connect and status < 300
        upgrade = "upgrade" in headers and has_token(headers.get("connection"), "upgrade")
        self.chunked = not upgrade and not self.head and not connect
        return "" if connect else _FRAMING_CHUNKED


class ResponseEncoder:
    """Envoy's ``ResponseEncoderImpl`` for a connection: responses in request order.

    ``key_format``: the connection's own header key format (None: lower-case)."""

    __slots__ = ("close", "enable_trailers", "exchanges", "key_format", "plain_map")

    def __init__(self, *, enable_trailers: bool, key_format: KeyFormat | None = None) -> None:
        self.enable_trailers = enable_trailers
        self.exchanges: deque[Exchange] = deque()
        self.close = False
        self.key_format = key_format
        # The map type written as is (None: every head goes through the key format).
        self.plain_map = HeaderMap if key_format is None else None

    def expect(self, exchange: Exchange) -> Exchange:
        """A request head was decoded: its response comes after the earlier ones."""
        self.exchanges.append(exchange)
        return exchange

    def on_protocol_error(self, current: Exchange | None) -> None:
        """The local reply to a codec error answers the request being decoded, or a request
        that had no head yet (Envoy makes a stream for it); the connection closes after it."""
        self.close = True
        if current is None or current.request_done:
            self.expect(Exchange(http10=False, head=False, connect=False, keep_alive=False))

    def encode_headers(self, headers: HeaderMap, end_stream: bool) -> bytes:
        """The response head for the oldest unanswered request (1xx heads may precede it)."""
        exchanges = self.exchanges
        exchange = exchanges[0] if exchanges else self._current()
        http10 = exchange.http10
        status, status_line = (_STATUS_10 if http10 else _STATUS_11)[headers.get(":status")]
        framing = exchange.response_framing(headers, status, end_stream)
        if type(headers) is self.plain_map:
            head = encode_head(status_line, headers, framing)
        else:
            head = self._encode_formatted_head(status_line, headers, framing)
        if status < 200 and status != 101:
            exchange.done = False  # informational: the final response is still to come
            return head
        if http10 or "connection" in headers:
            connection = headers.get("connection")
            if (connection is not None and has_token(connection, "close")) or (
                http10 and not framing and "content-length" not in headers
                and exchange.body_allowed and not end_stream
            ):  # fmt: skip
                self.close = True  # asked for, or the body runs to the close
        if end_stream:
            self._done(exchange)
        return head

    def _encode_formatted_head(self, status_line: str, headers: HeaderMap, framing: str) -> bytes:
        """A head with a stateful formatter (and maybe the upstream's reason phrase), or on a
        connection with a key format."""
        if type(headers) is FormattedHeaderMap:
            phrase = headers.formatter.reason_phrase
            if phrase:
                version, status, _ = status_line.split(" ", 2)
                status_line = f"{version} {status} {phrase}"
        return encode_formatted_head(
            status_line, headers, framing, key_format_of(headers, self.key_format)
        )

    def encode_data(self, data: bytes, end_stream: bool) -> bytes:
        exchanges = self.exchanges
        exchange = exchanges[0] if exchanges else self._current()
        out = exchange.data(data, end_stream)
        if end_stream:
            # _done, inlined (once a response): the exchange is the oldest one.
            exchanges.popleft()
            if not exchange.request_done or not exchange.keep_alive:
                self.close = True  # an early response, or a request that closes the connection
        return out

    def encode_trailers(self, trailers: HeaderMap) -> bytes:
        exchange = self._current()
        exchange.trailers_enabled = self.enable_trailers
        out = exchange.trailers(trailers)
        self._done(exchange)
        return out

    def _current(self) -> Exchange:
        if not self.exchanges:
            # A reply before any request head (Envoy makes a stream for it too).
            self.expect(Exchange(http10=False, head=False, connect=False, keep_alive=True))
        return self.exchanges[0]

    def _done(self, exchange: Exchange) -> None:
        if self.exchanges and self.exchanges[0] is exchange:
            self.exchanges.popleft()
        if not exchange.request_done or not exchange.keep_alive:
            self.close = True  # an early response, or a request that closes the connection


_STATUS_MAX = 2048


class _StatusLines(dict):
    """``:status`` -> (status code, status line) for one HTTP version: one C-level lookup for a
    status seen before; ``__missing__`` makes the others (and keeps them, up to a bound)."""

    __slots__ = ("version",)

    def __init__(self, version: str) -> None:
        self.version = version

    def __missing__(self, status_text: str | None) -> tuple[int, str]:
        # The int of :status (0 without one; a ValueError for a status that is no number).
        status = int(status_text or "0")
        known = (status, f"{self.version} {status} {reason_phrase(status)}")
        if len(self) < _STATUS_MAX:
            self[status_text] = known
        return known


_STATUS_11 = _StatusLines("HTTP/1.1")
_STATUS_10 = _StatusLines("HTTP/1.0")
