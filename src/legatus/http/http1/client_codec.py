"""The upstream HTTP/1 codec: request calls in, bytes out; response bytes in, callbacks out.

Envoy's ``ClientConnectionImpl`` (codec_impl.cc), sans-I/O, on httptools. One request at a
time (Envoy does not pipeline upstream): ``encode_request_headers`` starts an exchange and a
fresh llhttp response parser, the response ends it. Theory of operation:

- Request head: ``METHOD path HTTP/1.1`` (``METHOD host:port`` for CONNECT), ``:authority`` as
  ``host``, then ``content-length: 0`` for a head that ends a request whose method may carry
  a body, or ``transfer-encoding: chunked`` (no chunking for CONNECT and upgrades).
- Response: 1xx other than 101 are informational heads and the final response follows;
  1xx/204 may not carry ``transfer-encoding`` or a non-zero ``content-length`` (a zero one is
  dropped); Content-Length with Transfer-Encoding and a Transfer-Encoding other than chunked
  are protocol errors, as in Envoy. A response to HEAD ends at its head (llhttp is told by
  stopping it there); 204, 304 and ``content-length: 0`` end at the head too. A response
  without length runs to ``dispatch_eof()``. A 101 to an upgrade, or a 2xx to CONNECT, turns
  the connection into a tunnel: later bytes are response data. A tunnel has no end of its
  own: ``dispatch_eof()`` reports nothing, so the close of the connection resets the stream
  (Envoy's codec client resets a tunnel's stream with "connection termination", UC).
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

The cluster's Http1ProtocolOptions (``settings``): ``header_key_format`` (proper-case names
for request heads without a stateful formatter of their own; or a stateful formatter that
records each response head's names, and its reason phrase, see header_formatter),
``send_fully_qualified_url`` (absolute-form targets, ``scheme://authority/path``),
``allow_chunked_length`` (a response with both Content-Length and chunked Transfer-Encoding
loses its Content-Length instead of being refused), ``enable_trailers``.
``client_codec_factory(settings)`` is what a pool makes its codecs with.

Decoding calls the codec's ``callbacks`` (``ResponseCallbacks``: Envoy's codecs call their
stream decoder directly, no event object in between): ``dispatch(data)`` and
``dispatch_eof()``. Heads, 1xx and body pieces are reported as llhttp finds them; the last
call of a response (its end) comes once llhttp has parsed all of ``data``, so that the owner
sees the codec's state after the whole read (``reusable`` is False when bytes followed the
response), and before the protocol error those bytes cause. A codec made without callbacks
collects events instead (``ResponseEventList``): ``feed(data)`` and ``feed_eof()`` return
them, for owners that read whole responses.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from functools import partial
from typing import Protocol

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
    ProtocolError,
    ResponseEventList,
)
from legatus.http.http1.header_formatter import StatefulHeaderFormatter, key_format_of
from legatus.http.http1.settings import DEFAULT_SETTINGS, Http1Settings
from legatus.http.http1.stream_encoder import StreamEncoder, encode_formatted_head, encode_head

MAX_RESPONSE_HEADERS_KB = 80  # Envoy's default (the vanilla http_parser limit)
_UPSTREAM_ERROR = 502
_STATUS_TEXT = {code: str(code) for code in range(100, 600)}


class _Phase(enum.IntEnum):
    """Where the exchange is (an IntEnum: cheap to compare and hash)."""

    IDLE = 0  # no request outstanding (a message llhttp begins now is extraneous data)
    WAITING = 1  # request sent, response head not complete
    FOLD = 2  # response head with obs-fold: buffered whole, then unfolded and re-parsed
    BODY = 3  # response head done, body being read
    TUNNEL = 4  # upgrade / CONNECT: raw bytes
    CLOSED = 5  # error or EOF: the connection is not reusable


# The members as module globals: reading a member through its enum class runs Python code in
# 3.11 (about ten times a global's cost), and the codec tests its phase several times a feed.
_IDLE, _WAITING, _FOLD, _BODY, _TUNNEL, _CLOSED = _Phase
# The phases in which response bytes go to llhttp (or, for FOLD, are buffered to unfold).
_READING = frozenset((_WAITING, _FOLD, _BODY))
_HEAD_PENDING = frozenset((_WAITING, _FOLD))
# Final statuses whose response may carry a body (llhttp reads any three digits).
_BODY_STATUSES = frozenset(range(200, 1000)) - {204, 304}


def _ignore(*_args) -> None:
    """The callbacks of a released codec."""


_new_map = dict.__new__


class ResponseCallbacks(Protocol):
    """What a ``ClientCodec`` reports, as it decodes (Envoy's ``ResponseDecoder`` calls).
    ``on_response_headers``'s ``keep_alive`` and ``protocol`` are ``ResponseHeaders``'s;
    nothing follows ``on_protocol_error``. Header maps are handed over (see events)."""

    def on_informational_headers(self, headers: HeaderMap) -> None: ...

    def on_response_headers(
        self, headers: HeaderMap, end_stream: bool, keep_alive: bool, upgrade: bool, protocol: str
    ) -> None: ...

    def on_response_data(self, data: bytes, end_stream: bool) -> None: ...

    def on_response_trailers(self, trailers: HeaderMap) -> None: ...

    def on_protocol_error(self, error: ProtocolError) -> None: ...


class ClientCodec(c.MessageDecoder):
    """The upstream side of one HTTP/1 connection (see module doc)."""

    _limit_status = _UPSTREAM_ERROR
    _policy_status = _UPSTREAM_ERROR

    __slots__ = (
        "_absolute_url",
        "_allow_chunked_length",
        "_body",
        "_connect",
        "_encoder",
        "_events",
        "_fed",
        "_final",
        "_final_args",
        "_head_raw",
        "_head_request",
        "_heads",
        "_informational",
        "_keep_alive",
        "_key_format",
        "_on_data",
        "_on_error",
        "_on_headers",
        "_on_informational",
        "_on_trailers",
        "_parser",
        "_parser_clean",
        "_phase",
        "_plain_map",
        "_ready",
        "_refolded",
        "_until_eof",
        "_upgrade_request",
    )

    def __init__(
        self,
        *,
        max_response_headers_kb: int = MAX_RESPONSE_HEADERS_KB,
        max_response_headers_count: int = 100,
        enable_trailers: bool = False,
        callbacks: ResponseCallbacks | None = None,
        settings: Http1Settings = DEFAULT_SETTINGS,
    ) -> None:
        super().__init__(
            max_size=max_response_headers_kb * 1024,
            max_count=max_response_headers_count,
            enable_trailers=enable_trailers,
            new_formatter=settings.new_formatter,
        )
        # The cluster's Http1ProtocolOptions (see module doc).
        self._key_format = settings.key_format
        self._absolute_url = settings.send_fully_qualified_url
        self._allow_chunked_length = settings.allow_chunked_length
        # The map type written as is (None: every head goes through _encode_configured_head).
        plain = self._key_format is None and not self._absolute_url
        self._plain_map = HeaderMap if plain else None
        self._phase = _IDLE
        self._parser = HttpResponseParser(self)
        self._parser.set_dangerous_leniencies(**c.LENIENCIES)
        # The parser can take the next message (False once it was stopped inside one).
        self._parser_clean = True
        self._encoder = StreamEncoder(trailers_enabled=enable_trailers)
        self._events = None
        if callbacks is None:
            callbacks = self._events = ResponseEventList()
        # The callbacks, bound once (no attribute lookup per call).
        self._on_informational = callbacks.on_informational_headers
        self._on_headers = callbacks.on_response_headers
        self._on_data = callbacks.on_response_data
        self._on_trailers = callbacks.on_response_trailers
        self._on_error = callbacks.on_protocol_error
        # The call that ends the response, made once llhttp is done with the read (see
        # module doc): a callback (None: none pending) and its arguments.
        self._final: Callable[..., None] | None = None
        self._final_args: tuple = ()
        self._body: list[bytes] = []
        # The arguments of a bodiless response's on_response_headers, until llhttp
        # completes it.
        self._ready: tuple | None = None
        self._head_request = False
        self._connect = False
        self._upgrade_request = False
        self._informational = False
        self._until_eof = False
        self._keep_alive = True  # of the last response: with the phase, whether reusable
        self._fed: list[bytes] = []
        self._heads = 0
        self._head_raw = 0
        self._refolded = False

    # Encoding --------------------------------------------------------------------------

    def encode_request_headers(self, headers: HeaderMap, end_stream: bool) -> bytes:
        """Start a request; raises ``ValueError`` for a head no codec can write."""
        if self._phase is not _IDLE:
            raise ValueError(f"a request is already outstanding ({self._phase.name})")
        method = headers.get(":method")
        path = headers.get(":path")
        connect = method == "CONNECT"
        if not method or (path is None and not connect):
            raise ValueError(":method and :path must be specified")
        upgrade = "upgrade" in headers and c.has_token(headers.get("connection"), "upgrade")
        target = headers.get(":authority", "") if connect else path
        framing = self._encoder.request_framing(headers, end_stream, connect or upgrade, method)
        if type(headers) is self._plain_map:
            head = encode_head(f"{method} {target} HTTP/1.1", headers, framing)
        else:
            head = self._encode_configured_head(method, target, headers, framing, connect)
        # A new exchange (inlined: once a request). What a complete response leaves as the
        # next one needs it is not reset here: no informational or ready head, no read to
        # EOF, nothing fed, no error, no collected header.
        self._phase = _WAITING
        self._head_request = method == "HEAD"
        self._connect = connect
        self._upgrade_request = upgrade
        self._heads = self._head_raw = 0
        self._refolded = False
        if not self._parser_clean:
            # llhttp was stopped inside the last response (HEAD): a fresh parser. Otherwise it
            # is back at the start of a message after a complete keep-alive response.
            self._parser = HttpResponseParser(self)
            self._parser.set_dangerous_leniencies(**c.LENIENCIES)
            self._parser_clean = True
        return head

    def _encode_configured_head(
        self, method: str, target: str, headers: HeaderMap, framing: str, connect: bool
    ) -> bytes:
        """A request head with a stateful formatter, or under the cluster's key format or
        ``send_fully_qualified_url``."""
        if self._absolute_url and not connect:
            scheme = headers.get(":scheme")
            if scheme is None:
                raise ValueError("missing required header: :scheme")
            authority = headers.get(":authority")
            if authority is None:
                raise ValueError("missing required header: host")
            target = f"{scheme}://{authority}{target}"
        return encode_formatted_head(
            f"{method} {target} HTTP/1.1",
            headers,
            framing,
            key_format_of(headers, self._key_format),
        )

    def encode_data(self, data: bytes, end_stream: bool) -> bytes:
        return self._encoder.data(data, end_stream)

    def encode_trailers(self, trailers: HeaderMap) -> bytes:
        return self._encoder.trailers(trailers)

    # Decoding --------------------------------------------------------------------------

    @property
    def reusable(self) -> bool:
        """After a complete response: another request may use this connection."""
        tunnel_request = self._upgrade_request or self._connect
        return self._phase is _IDLE and self._keep_alive and not tunnel_request

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
        """``dispatch(data)`` for a codec made without callbacks: the events it reports."""
        events = self._events
        if events is None:
            raise TypeError("a codec made with callbacks reports to them: use dispatch()")
        events.clear()
        self.dispatch(data)
        return events.take()

    def feed_eof(self) -> list[ClientEvent]:
        """``dispatch_eof()`` for a codec made without callbacks: the events it reports."""
        events = self._events
        if events is None:
            raise TypeError("a codec made with callbacks reports to them: use dispatch_eof()")
        events.clear()
        self.dispatch_eof()
        return events.take()

    def dispatch(self, data: bytes) -> None:
        """Decode ``data``, reporting to the callbacks (see module doc)."""
        if self._phase not in _READING or not data:
            self._dispatch_not_reading(data)
            return
        if self._phase is _FOLD:
            self._unfold_and_parse(data)
        else:
            self._parse(data)
            if self._phase is _FOLD:
                self._unfold_and_parse(b"")  # (the head as far as fed: see _on_parse_error)
        if self._phase not in _HEAD_PENDING and self._fed:
            self._fed = []  # (while the head is not complete, what was fed of it stays)
        if self._body:
            self._flush_body()
        final = self._final
        if final is not None:
            self._final = None
            final(*self._final_args)

    def _dispatch_not_reading(self, data: bytes) -> None:
        """``dispatch`` with no response being read: a tunnel's bytes, or nothing to parse."""
        phase = self._phase
        if not data or phase is _CLOSED:
            return
        if phase is _TUNNEL:
            self._on_data(data, False)
            return
        # _IDLE: bytes with no request outstanding: left over from the last response, or not
        # a response to anything.
        self._error_event(c.EXTRANEOUS_DATA if self._heads else c.PREMATURE_RESPONSE)

    def _parse(self, data: bytes) -> None:
        # What was fed while waiting for the head is kept (``_fed``) to find where the head
        # ends (_after_head) or to unfold it: ``data`` joins it when llhttp stopped, or when
        # the head is still not complete.
        waiting = self._phase is _WAITING
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade as e:
            self._after_head(data, e.args[0])
        except HttpParserError as e:
            if waiting:
                self._fed.append(data)
            if isinstance(e.__context__, _StopAtHead):
                self._after_head(data, None)
            else:
                self._on_parse_error(e)
        else:
            if self._phase is _WAITING:
                self._fed.append(data)
                self._head_raw += len(data)
                if self._head_raw > self._max_size:
                    self._error_event(c.HEADERS_TOO_LARGE)

    def _unfold_and_parse(self, data: bytes) -> None:
        data = self._unfold(data)
        if data:
            self._parse(data)  # the unfolded head (a second fold is an error: _refolded)

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
        self._parser = HttpResponseParser(self)
        self._parser.set_dangerous_leniencies(**c.LENIENCIES)
        return split[0] + split[1]

    def dispatch_eof(self) -> None:
        """The upstream closed. Ends a response read to EOF; a tunnel's stream is not ended
        (its connection's close resets it, as in Envoy)."""
        until_eof = self._phase is _BODY and self._until_eof
        self._phase = _CLOSED
        if until_eof:
            data = b"".join(self._body)
            self._body.clear()
            self._on_data(data, True)

    def release(self) -> None:
        """The connection is gone: nothing more is parsed or reported. llhttp holds this
        codec's bound callbacks and the codec holds its owner's: reference cycles, dropped
        here so that reference counting frees the connection at once (see
        ``ServerCodec.release``)."""
        self._phase = _CLOSED
        self._parser = None
        self._on_informational = self._on_headers = self._on_data = _ignore
        self._on_trailers = self._on_error = _ignore
        self._final = None

    def _flush_body(self) -> None:
        body = self._body
        if body:
            data = b"".join(body)
            body.clear()
            self._on_data(data, False)

    def _on_parse_error(self, e: HttpParserError) -> None:
        if self._error is not None:
            self._report_error(self._error)
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
        self._report_error(ProtocolError(status=_UPSTREAM_ERROR, details=details))

    def _report_error(self, error: ProtocolError) -> None:
        """The codec stops: what it decoded before (a body piece, or the end of a response
        followed by bytes that are no response) is reported first, then ``error``."""
        self._phase = _CLOSED
        self._flush_body()
        final = self._final
        if final is not None:
            self._final = None
            final(*self._final_args)
        self._on_error(error)

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
        self._fed = []
        if self._phase is _TUNNEL:
            if rest:
                self._on_data(rest, False)
        elif rest:
            self._error_event(c.EXTRANEOUS_DATA)

    # Parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._phase is _IDLE:
            raise c.Abort()  # extraneous data after the response

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        seed = _new_map(HeaderMap)  # filled in place by _decode_block (no dict to copy)
        seed._entries = None
        seed[":status"] = _STATUS_TEXT.get(status) or str(status)
        headers = self._decode_block(seed, 0)
        self._heads += 1
        http10 = self._parser.get_http_version() != "1.1"
        content_length = headers.get("content-length")
        framed = content_length is not None and content_length != "0" and status in _BODY_STATUSES
        plain = headers is seed and "transfer-encoding" not in headers  # (seed: no repeats)
        if framed and plain and not self._head_request and not self._connect:
            # The common response: a body framed by content-length, nothing to reject, no
            # tunnel. What the general path below decides for it, with fewer tests.
            if http10 or "connection" in headers or "proxy-connection" in headers:
                keep_alive = not c.should_close_connection(http10, headers)
            else:
                keep_alive = True
            self._keep_alive = keep_alive  # (_until_eof stays False)
            self._phase = _BODY
            self._on_headers(headers, False, keep_alive, False, HTTP_10 if http10 else HTTP_11)
        else:
            self._on_headers_checked(headers, headers is not seed, status, http10, content_length)

    def _on_headers_checked(
        self,
        headers: HeaderMap,
        repeated: bool,
        status: int,
        http10: bool,
        content_length: str | None,
    ) -> None:
        """``on_headers_complete`` past the common response: Envoy's checks, 1xx, tunnels,
        bodiless responses and responses read to the close."""
        get = headers.get
        transfer_encoding = (
            c.joined(headers, "transfer-encoding") if repeated else get("transfer-encoding")
        )
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
                if not self._allow_chunked_length or transfer_encoding.lower() != "chunked":
                    raise self._fail(_UPSTREAM_ERROR, c.CHUNKED_CONTENT_LENGTH)
                headers.remove("content-length")  # (allow_chunked_length)
                content_length = None
            if transfer_encoding.lower() != "chunked":
                raise self._fail(_UPSTREAM_ERROR, c.INVALID_TRANSFER_ENCODING)
        if status < 200 and status != 101:
            self._informational = True
            self._on_informational(headers)
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
            self._on_headers(headers, False, False, True, protocol)
            if not upgrade:  # llhttp does not know the request was CONNECT
                self._parser_clean = False
                raise _StopAtHead()
            return
        if no_body:
            ready = (headers, True, keep_alive, False, protocol)
            if self._head_request:
                # llhttp cannot be told the request was HEAD: stop it at the end of the head
                # (the response ends there: reported once the read is parsed).
                self._final, self._final_args = self._on_headers, ready
                self._phase = _IDLE  # (reusable with _keep_alive)
                self._parser_clean = False
                raise _StopAtHead()
            self._ready = ready
        else:
            self._phase = _BODY
            self._on_headers(headers, False, keep_alive, False, protocol)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._informational or self._phase is _TUNNEL or self._items:
            self._on_message_complete_other()
            return
        ready = self._ready
        if ready is None:  # the end of the response is reported once the read is parsed
            body = self._body
            self._final, self._final_args = self._on_data, (b"".join(body) if body else b"", True)
            body.clear()
        else:
            self._final, self._final_args = self._on_headers, ready
            self._ready = None
        self._phase = _IDLE  # (reusable with _keep_alive)

    def _on_message_complete_other(self) -> None:
        """``on_message_complete`` of a 1xx, in a tunnel, or with trailers."""
        if self._informational:
            self._informational = False
            return
        if self._phase is _TUNNEL:
            return
        trailers = None
        if self._enable_trailers:
            trailers = self._decode_block(HeaderMap(), 0)
        else:
            self._items.clear()
        # The end of the response is reported once the read is parsed.
        if self._ready is not None:
            self._final, self._final_args = self._on_headers, self._ready
            self._ready = None
        elif trailers:
            self._flush_body()
            self._final, self._final_args = self._on_trailers, (trailers,)
        else:
            body = self._body
            self._final, self._final_args = self._on_data, (b"".join(body) if body else b"", True)
            body.clear()
        self._phase = _IDLE


class _StopAtHead(Exception):
    """Stops llhttp after a head whose body it would otherwise wait for."""


class _ReasonPhraseClientCodec(ClientCodec):
    """A ClientCodec whose heads' stateful formatters also get the status line's reason
    phrase (llhttp reports it only to a parser owner that has ``on_status``)."""

    __slots__ = ("_reason",)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._reason = b""

    def on_message_begin(self) -> None:
        self._reason = b""
        super().on_message_begin()

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def _head_formatter(self) -> StatefulHeaderFormatter:
        formatter = super()._head_formatter()
        formatter.set_reason_phrase(self._reason.decode("latin-1"))
        return formatter


def client_codec_factory(settings: Http1Settings) -> Callable[..., ClientCodec]:
    """What a pool makes its codecs with, for a cluster's ``settings`` (the plain ClientCodec
    for the defaults)."""
    if settings is DEFAULT_SETTINGS:
        return ClientCodec
    cls = ClientCodec if settings.stateful_formatter is None else _ReasonPhraseClientCodec
    return partial(cls, enable_trailers=settings.enable_trailers, settings=settings)
