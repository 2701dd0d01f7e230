"""The upstream HTTP/1 codec: request events in, bytes out; response bytes in, events out.

Envoy's ``ClientConnectionImpl`` (codec_impl.cc), sans-I/O, on httptools. One request at a
time (Envoy does not pipeline upstream): ``encode_request_headers`` starts an exchange and a
fresh llhttp response parser, the response ends it. Theory of operation:

- Request head: ``METHOD path HTTP/1.1`` (``METHOD host:port`` for CONNECT), ``:authority`` as
  ``host``, then ``content-length: 0`` for a head that ends a request whose method may carry
  a body, or ``transfer-encoding: chunked`` (no chunking for CONNECT and upgrades).
- Response: 1xx other than 101 are ``InformationalHeaders`` and the final response follows;
  1xx/204 may not carry ``transfer-encoding`` or a non-zero ``content-length`` (a zero one is
  dropped); Content-Length with Transfer-Encoding and a Transfer-Encoding other than chunked
  are protocol errors, as in Envoy. A response to HEAD ends at its head (llhttp is told by
  stopping it there); 204, 304 and ``content-length: 0`` end at the head too. A response
  without length runs to ``feed_eof()``. A 101 to an upgrade, or a 2xx to CONNECT, turns the
  connection into a tunnel: later bytes are ``ResponseData``. A tunnel has no end of its own:
  ``feed_eof()`` reports nothing, so the close of the connection resets the stream (Envoy's
  codec client resets a tunnel's stream with "connection termination", UC).
- Obs-fold in a response head is unfolded as Balsa does (the head is buffered whole and parsed
  again); header lines are otherwise parsed strictly by llhttp.
- Bytes after the complete response, or with no request outstanding, are a protocol error
  (Envoy: "extraneous data after response complete", "premature response").
- ``reusable``: after a complete response, whether the pool may send another request on this
  connection (not closing, not HTTP/1.0 without keep-alive, not read to EOF, no error, and not
  after an upgrade or CONNECT request, whatever the answer: what the client sent after its
  head is the payload of a tunnel, not HTTP). ``tunnel_request``: the outstanding request
  asks for a tunnel (its payload waits for the answer that opens it: see conn_pool/http1).

Protocol errors carry status 502 (the router's upstream protocol error answer) and Envoy's
codec details.
"""

from __future__ import annotations

import enum

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpResponseParser,
)

from legatus.http.headers import HeaderMap
from legatus.http.http1 import common as c
from legatus.http.http1.events import (
    HTTP_10,
    HTTP_11,
    ClientEvent,
    InformationalHeaders,
    ProtocolError,
    ResponseData,
    ResponseHeaders,
    ResponseTrailers,
)
from legatus.http.http1.stream_encoder import StreamEncoder, encode_head

MAX_RESPONSE_HEADERS_KB = 80  # Envoy's default (the vanilla http_parser limit)
_BODILESS_METHODS = frozenset(("GET", "HEAD", "DELETE", "TRACE", "CONNECT"))
_UPSTREAM_ERROR = 502
_STATUS_TEXT = {code: str(code) for code in range(100, 600)}


class _Phase(enum.IntEnum):
    """Where the exchange is (an IntEnum: cheap to compare and hash)."""

    IDLE = 0  # no request outstanding
    WAITING = 1  # request sent, response head not complete
    FOLD = 2  # response head with obs-fold: buffered whole, then unfolded and re-parsed
    BODY = 3  # response head done, body being read
    TUNNEL = 4  # upgrade / CONNECT: raw bytes
    DONE = 5  # response complete within the current feed
    CLOSED = 6  # error or EOF: the connection is not reusable


# The members as module globals: reading a member through its enum class runs Python code in
# 3.11 (about ten times a global's cost), and the codec tests its phase several times a feed.
_IDLE, _WAITING, _FOLD, _BODY, _TUNNEL, _DONE, _CLOSED = _Phase


class ClientCodec(c.MessageDecoder):
    """The upstream side of one HTTP/1 connection (see module doc)."""

    _limit_status = _UPSTREAM_ERROR
    _policy_status = _UPSTREAM_ERROR

    __slots__ = (
        "_body",
        "_connect",
        "_encoder",
        "_fed",
        "_head_raw",
        "_head_request",
        "_heads",
        "_informational",
        "_keep_alive",
        "_out",
        "_parser",
        "_parser_clean",
        "_phase",
        "_ready",
        "_refolded",
        "_reusable",
        "_until_eof",
        "_upgrade_request",
    )

    def __init__(
        self,
        *,
        max_response_headers_kb: int = MAX_RESPONSE_HEADERS_KB,
        max_response_headers_count: int = 100,
        enable_trailers: bool = False,
    ) -> None:
        super().__init__(
            max_size=max_response_headers_kb * 1024,
            max_count=max_response_headers_count,
            enable_trailers=enable_trailers,
        )
        self._phase = _IDLE
        self._parser: HttpResponseParser | None = None
        self._parser_clean = False  # the parser ended a message cleanly: it can take the next
        self._encoder = StreamEncoder(trailers_enabled=enable_trailers)
        self._out: list[ClientEvent] = []
        self._body: list[bytes] = []
        self._ready: ResponseHeaders | None = None
        self._head_request = False
        self._connect = False
        self._upgrade_request = False
        self._informational = False
        self._until_eof = False
        self._keep_alive = True
        self._reusable = True
        self._fed: list[bytes] = []
        self._heads = 0
        self._head_raw = 0
        self._refolded = False

    # Encoding --------------------------------------------------------------------------

    def encode_request_headers(self, headers: HeaderMap, end_stream: bool) -> bytes:
        """Start a request; raises ``ValueError`` for a head no codec can write."""
        if self._phase is not _IDLE:
            raise ValueError(f"a request is already outstanding ({self._phase.name})")
        get = headers.get
        method = get(":method")
        path = get(":path")
        connect = method == "CONNECT"
        if not method or (path is None and not connect):
            raise ValueError(":method and :path must be specified")
        connection = get("connection")
        upgrade = (
            connection is not None and "upgrade" in headers and c.has_token(connection, "upgrade")
        )
        target = get(":authority", "") if connect else path
        encoder = self._encoder  # one per connection: reset for this request
        encoder.done = False
        framing = encoder.framing(
            headers,
            status=None,
            end_stream=end_stream,
            chunking_disabled=connect or upgrade,
            bodiless_request=method in _BODILESS_METHODS,
        )
        head = encode_head(f"{method} {target} HTTP/1.1", headers, framing)
        # A new exchange (inlined: once a request).
        self._phase = _WAITING
        self._head_request = method == "HEAD"
        self._connect = connect
        self._upgrade_request = upgrade
        self._informational = False
        self._until_eof = False
        self._ready = None
        self._reusable = False
        if self._fed:
            self._fed = []
        self._heads = 0
        self._head_raw = 0
        self._refolded = False
        self._error = None
        self._items.clear()
        self._size = 0
        if self._parser_clean:
            # llhttp is back at the start of a message after a complete keep-alive response.
            self._parser_clean = False
        else:
            self._parser = HttpResponseParser(self)
            self._parser.set_dangerous_leniencies(**c.LENIENCIES)
        return head

    def encode_data(self, data: bytes, end_stream: bool) -> bytes:
        return self._encoder.data(data, end_stream)

    def encode_trailers(self, trailers: HeaderMap) -> bytes:
        return self._encoder.trailers(trailers)

    # Decoding --------------------------------------------------------------------------

    @property
    def reusable(self) -> bool:
        """After a complete response: another request may use this connection."""
        return (
            self._phase is _IDLE
            and self._reusable
            and not self._upgrade_request
            and not self._connect
        )

    @property
    def tunnel_request(self) -> bool:
        """The outstanding request is an upgrade or a CONNECT."""
        return self._upgrade_request or self._connect

    @property
    def awaiting_response(self) -> bool:
        """A request is outstanding and its response is not complete (an EOF now is a
        connection termination, for the pool to report)."""
        return self._phase in (_WAITING, _FOLD, _BODY)

    def feed(self, data: bytes) -> list[ClientEvent]:
        out = self._out = []
        phase = self._phase
        if not data or phase is _CLOSED:
            return out
        if phase is _TUNNEL:
            out.append(ResponseData(data=data, end_stream=False))
            return out
        if phase is _IDLE:
            # Bytes with no request outstanding: left over from the last response, or not a
            # response to anything.
            self._error_event(c.EXTRANEOUS_DATA if self._heads else c.PREMATURE_RESPONSE)
            return out
        while data:
            if self._phase is _FOLD:
                data = self._unfold(data)
            else:
                self._parse(data)
                data = self._unfold(b"") if self._phase is _FOLD else b""
        if self._body:
            self._flush_body()
        phase = self._phase
        if phase is _DONE:
            self._phase = _IDLE
        elif phase is _WAITING or phase is _FOLD:
            return out
        if self._fed:
            self._fed = []
        return out

    def _parse(self, data: bytes) -> None:
        parser = self._parser
        assert parser is not None
        if self._phase is _WAITING:
            self._fed.append(data)  # where the head ends (_after_head), or to unfold it
        try:
            parser.feed_data(data)
        except HttpParserUpgrade as e:
            self._after_head(data, e.args[0])
        except HttpParserError as e:
            if isinstance(e.__context__, _StopAtHead):
                self._after_head(data, None)
            else:
                self._on_parse_error(e)
        else:
            if self._phase is _WAITING:
                self._head_raw += len(data)
                if self._head_raw > self._max_size:
                    self._error_event(c.HEADERS_TOO_LARGE)

    def _unfold(self, data: bytes) -> bytes:
        """Obs-fold in the (first) response head: buffer it whole, unfold, parse it again."""
        buffer = b"".join((*self._fed, data))
        try:
            split = c.unfold(buffer)
        except ValueError:
            self._error_event(c.CODEC_ERROR)
            return b""
        if split is None:
            if len(buffer) > self._max_size:
                self._error_event(c.HEADERS_TOO_LARGE)
            else:
                self._fed = [buffer]
            return b""
        self._phase = _WAITING
        self._refolded = True
        self._fed = []
        self._items.clear()
        self._size = 0
        self._parser = HttpResponseParser(self)
        self._parser.set_dangerous_leniencies(**c.LENIENCIES)
        return split[0] + split[1]

    def feed_eof(self) -> list[ClientEvent]:
        """The upstream closed. Ends a response read to EOF; a tunnel's stream is not ended
        (its connection's close resets it, as in Envoy)."""
        out = self._out = []
        if self._phase is _BODY and self._until_eof:
            out.append(ResponseData(data=b"".join(self._body), end_stream=True))
            self._body.clear()
        self._phase = _CLOSED
        self._reusable = False
        return out

    def _flush_body(self) -> None:
        if self._body:
            self._out.append(ResponseData(data=b"".join(self._body), end_stream=False))
            self._body.clear()

    def _on_parse_error(self, e: HttpParserError) -> None:
        if self._error is not None:
            self._flush_body()
            self._out.append(self._error)
            self._close()
        elif isinstance(e, HttpParserCallbackError):
            if not isinstance(e.__context__, c.Abort):
                raise e.__context__ or e  # a bug in a callback, not bad traffic
            self._error_event(c.EXTRANEOUS_DATA)
        elif (
            self._phase is _WAITING
            and self._heads == 0
            and not self._refolded
            and c.has_fold(b"".join(self._fed))
        ):
            self._phase = _FOLD
            self._fed = [b"".join(self._fed)]
        else:
            self._error_event(c.CODEC_ERROR)

    def _error_event(self, details: str) -> None:
        self._flush_body()
        self._out.append(ProtocolError(status=_UPSTREAM_ERROR, details=details))
        self._close()

    def _close(self) -> None:
        self._phase = _CLOSED
        self._reusable = False

    def _after_head(self, data: bytes, offset: int | None) -> None:
        """llhttp stopped after a head (HEAD, CONNECT 2xx, 101): what follows it."""
        if offset is None:
            # The end of the n-th head in what this parser was fed.
            fed = b"".join(self._fed)
            end = 0
            for _ in range(self._heads):
                end = fed.find(b"\r\n\r\n", end) + 4
            rest = fed[end:]
        else:
            rest = data[offset:]
        if self._phase is _TUNNEL:
            if rest:
                self._out.append(ResponseData(data=rest, end_stream=False))
        elif rest:
            self._error_event(c.EXTRANEOUS_DATA)
        self._fed = []

    # Parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._phase is _DONE:
            raise c.Abort()  # extraneous data after the response
        self._items.clear()
        self._size = 0

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        status = parser.get_status_code()
        headers = self._decode_block({":status": _STATUS_TEXT.get(status) or str(status)}, 0)
        self._heads += 1
        http10 = parser.get_http_version() != "1.1"
        get = headers.get
        transfer_encoding = (
            c.joined(headers, "transfer-encoding") if headers.has_repeats
            else get("transfer-encoding")
        )  # fmt: skip
        content_length = get("content-length")
        if (
            content_length is not None
            and transfer_encoding is None
            and status >= 200
            and status != 204
            and status != 304
            and content_length != "0"
            and not self._head_request
            and not self._connect
        ):
            # The common response: a body framed by content-length, nothing to reject, no
            # tunnel. What the general path below decides for it, with fewer tests.
            if http10 or "connection" in headers or "proxy-connection" in headers:
                keep_alive = not c.should_close_connection(http10, headers)
            else:
                keep_alive = True
            self._until_eof = False
            self._keep_alive = keep_alive
            self._phase = _BODY
            self._out.append(
                ResponseHeaders(headers, False, keep_alive, False, HTTP_10 if http10 else HTTP_11)
            )
            return
        if status < 200 or status == 204:
            if transfer_encoding is not None:
                raise self._fail(_UPSTREAM_ERROR, c.TRANSFER_ENCODING_NOT_ALLOWED)
            if content_length is not None:
                if content_length != "0":
                    raise self._fail(_UPSTREAM_ERROR, c.CONTENT_LENGTH_NOT_ALLOWED)
                headers.remove("content-length")
                content_length = None
        if transfer_encoding is not None:
            if content_length is not None:
                raise self._fail(_UPSTREAM_ERROR, c.CHUNKED_CONTENT_LENGTH)
            if transfer_encoding.lower() != "chunked":
                raise self._fail(_UPSTREAM_ERROR, c.INVALID_TRANSFER_ENCODING)
        if status < 200 and status != 101:
            self._informational = True
            self._out.append(InformationalHeaders(headers))
            return
        upgrade = (
            status == 101
            and self._upgrade_request
            and "upgrade" in headers
            and c.has_token(get("connection"), "upgrade")
        )
        tunnel = upgrade or (self._connect and 200 <= status < 300)
        if status == 101 and not upgrade:
            raise self._fail(_UPSTREAM_ERROR, c.CODEC_ERROR)
        chunked = transfer_encoding is not None
        no_body = (
            self._head_request
            or status == 204
            or status == 304
            or (content_length == "0" and not chunked)
        )
        self._until_eof = not tunnel and not no_body and not chunked and content_length is None
        keep_alive = not (tunnel or self._until_eof or c.should_close_connection(http10, headers))
        self._keep_alive = keep_alive
        protocol = HTTP_10 if http10 else HTTP_11
        if tunnel:
            self._phase = _TUNNEL
            self._out.append(ResponseHeaders(
                headers=headers, end_stream=False, keep_alive=False, upgrade=True,
                protocol=protocol,
            ))  # fmt: skip
            if not upgrade:  # llhttp does not know the request was CONNECT
                raise _StopAtHead()
            return
        if no_body:
            event = ResponseHeaders(headers, True, keep_alive, False, protocol)
            if self._head_request:
                # llhttp cannot be told the request was HEAD: stop it at the end of the head.
                self._out.append(event)
                self._finish()
                raise _StopAtHead()
            self._ready = event
        else:
            self._phase = _BODY
            self._out.append(ResponseHeaders(headers, False, keep_alive, False, protocol))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self._phase is _TUNNEL:
            return
        out = self._out
        trailers = None
        if self._items:
            if self._enable_trailers:
                trailers = self._decode_block({}, 0)
            else:
                self._items.clear()
        if self._ready is not None:
            out.append(self._ready)
            self._ready = None
        elif trailers:
            self._flush_body()
            out.append(ResponseTrailers(trailers))
        else:
            body = self._body
            out.append(ResponseData(b"".join(body) if body else b"", True))
            body.clear()
        self._phase = _DONE  # _finish, inlined: once a response
        self._reusable = self._keep_alive
        self._parser_clean = True

    def _finish(self) -> None:
        self._phase = _DONE
        self._reusable = self._keep_alive


class _StopAtHead(Exception):
    """Stops llhttp after a head whose body it would otherwise wait for."""
