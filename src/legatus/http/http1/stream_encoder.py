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

``ResponseEncoder`` is the server side's: one ``Exchange`` per request head the codec decoded,
answered in order, and whether the connection must close after the response.
"""

from __future__ import annotations

from collections import deque

from legatus.http.codes import reason_phrase
from legatus.http.headers import HeaderMap
from legatus.http.http1.common import has_token

CRLF = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"
_FRAMING_LENGTH_0 = "content-length: 0"
_FRAMING_CHUNKED = "transfer-encoding: chunked"


def encode_head(first_line: str, headers: HeaderMap, framing: str) -> bytes:
    """``first_line``, the headers, ``framing`` (a header line or ``""``), each line ended with
    CRLF, then the empty line. Lines are given without their CRLF."""
    prefixes = _PREFIXES
    lines = [first_line]
    append = lines.append
    authority = headers.get(":authority")
    if authority is not None:  # Envoy's :authority is a pseudo-header, so host comes first
        append("host: " + authority)
    for name, value in headers.items():
        prefix = prefixes.get(name)
        if prefix is None:
            prefix = _prefix(name)
        if prefix:
            append(prefix + value)
    if framing:
        append(framing)
    # CR, LF or NUL inside a line would split the message (three memchr over the lines).
    text = "".join(lines)
    if "\r" in text or "\n" in text or "\x00" in text:
        raise ValueError("a header name or value contains CR, LF or NUL")
    append("")
    append("")
    return "\r\n".join(lines).encode("latin1")  # (CPython's fast-path spelling of latin-1)


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

    __slots__ = ("body_allowed", "chunked", "done", "headers_sent", "trailers_enabled")

    def __init__(self, *, trailers_enabled: bool = False) -> None:
        self.chunked = False
        self.body_allowed = True
        self.done = False
        self.headers_sent = False
        self.trailers_enabled = trailers_enabled

    def framing(
        self,
        headers: HeaderMap,
        *,
        status: int | None,
        end_stream: bool,
        chunking_disabled: bool = False,
        connect_response: bool = False,
        head_response: bool = False,
        http10: bool = False,
        bodiless_request: bool = False,
    ) -> str:
        """Envoy's ``encodeHeadersBase``: the framing header to add; sets the body state.

        ``status`` is None for a request. ``chunking_disabled``: a CONNECT or upgrade request.
        ``connect_response``/``head_response``: the response answers CONNECT (2xx) or HEAD.
        """
        self.headers_sent = True
        self.chunked = False
        if end_stream:
            self.done = True
        self.body_allowed = not head_response and status != 204 and status != 304
        if (
            "content-length" in headers
            or chunking_disabled
            or (status is not None and (status < 200 or status == 204 or status == 304))
        ):
            return ""  # the body (if any) goes as is
        if end_stream and not head_response:
            return "" if bodiless_request else _FRAMING_LENGTH_0
        if http10:
            return ""  # HTTP/1.0 has no chunking: the body ends when the connection closes
        upgrade = "upgrade" in headers and has_token(headers.get("connection"), "upgrade")
        self.chunked = not upgrade and not head_response and not connect_response
        return "" if connect_response else _FRAMING_CHUNKED

    def data(self, data: bytes, end_stream: bool) -> bytes:
        if self.done:
            raise ValueError("the message was already complete")
        if not self.body_allowed:
            data = b""
        if end_stream:
            self.done = True
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

    def __init__(self, *, http10: bool, head: bool, connect: bool, keep_alive: bool) -> None:
        # StreamEncoder's fields, set here rather than through a second __init__ call.
        self.chunked = False
        self.body_allowed = True
        self.done = False
        self.headers_sent = False
        self.trailers_enabled = False
        self.http10 = http10
        self.head = head
        self.connect = connect
        self.keep_alive = keep_alive
        self.request_done = False


class ResponseEncoder:
    """Envoy's ``ResponseEncoderImpl`` for a connection: responses in request order."""

    __slots__ = ("close", "enable_trailers", "exchanges")

    def __init__(self, *, enable_trailers: bool) -> None:
        self.enable_trailers = enable_trailers
        self.exchanges: deque[Exchange] = deque()
        self.close = False

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
        exchanges = self.exchanges
        exchange = exchanges[0] if exchanges else self._current()
        status_text = headers.get(":status") or "0"
        status = _STATUS_CODES.get(status_text)
        if status is None:
            status = int(status_text)
        http10 = exchange.http10
        framing = exchange.framing(
            headers,
            status=status,
            end_stream=end_stream,
            connect_response=exchange.connect and 200 <= status < 300,
            head_response=exchange.head,
            http10=http10,
        )
        head = encode_head(_status_line(http10, status), headers, framing)
        if status < 200 and status != 101:
            exchange.done = False  # informational: the final response is still to come
            return head
        connection = headers.get("connection")
        if (connection is not None and has_token(connection, "close")) or (
            http10 and not framing and "content-length" not in headers
            and exchange.body_allowed and not end_stream
        ):  # fmt: skip
            self.close = True  # asked for, or the body runs to the close
        if end_stream:
            self._done(exchange)
        return head

    def encode_data(self, data: bytes, end_stream: bool) -> bytes:
        exchanges = self.exchanges
        exchange = exchanges[0] if exchanges else self._current()
        out = exchange.data(data, end_stream)
        if end_stream:
            self._done(exchange)
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


_STATUS_LINES: dict[tuple[bool, int], str] = {}  # (http10, status) -> status line
_STATUS_CODES = {str(code): code for code in range(100, 600)}  # ":status" -> int, no int()


def _status_line(http10: bool, status: int) -> str:
    line = _STATUS_LINES.get((http10, status))
    if line is None:
        version = "HTTP/1.0" if http10 else "HTTP/1.1"
        line = f"{version} {status} {reason_phrase(status)}"
        if len(_STATUS_LINES) < 2048:
            _STATUS_LINES[(http10, status)] = line
    return line
