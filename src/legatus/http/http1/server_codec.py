"""The downstream HTTP/1 codec: request bytes in, events out; response events in, bytes out.

Envoy's ``ServerConnectionImpl`` (source/common/http/http1/codec_impl.cc), sans-I/O, on
httptools (llhttp). Theory of operation:

- ``feed(data)`` runs llhttp over the bytes; its callbacks collect the request head (see
  common.MessageDecoder) and Envoy's checks run when the head is complete, in Envoy's order:
  the method (Balsa's list), the block's size, the first per-header error (underscores,
  count), Balsa's URL check, CONNECT with a body, Content-Length with Transfer-Encoding, the
  Transfer-Encoding value, the Connection header's nominations, the request target
  (origin-form, ``*`` for OPTIONS, absolute-form -> ``:authority``/``:scheme``/``:path``,
  authority-form for CONNECT), the version (HTTP/1.0 refused unless accepted), the authority.
  llhttp's own refusals become ``http1.codec_error``, or ``http1.invalid_characters`` when the
  head holds a control character (Balsa checks those first). A failure is a ``ProtocolError``
  with Envoy's status and details; the codec stops. Missing Host is the HCM's check
  (``missing_host_header``), not the codec's: the head comes without ``:authority``.
- A request without a body (no chunked, no Content-Length > 0, no upgrade) is reported once,
  as ``RequestHeaders(end_stream=True)``, when llhttp completes it, as Envoy defers it. Body
  pieces of one ``feed`` are joined into one ``RequestData`` (never more than what arrived).
- Pipelining: after each complete request the codec pauses, as Envoy's parser does. Events of
  requests that arrived in the same ``feed`` are held, later bytes are buffered unparsed, and
  ``resume()`` (called once the response went out) releases the next request. While paused,
  ``wants_data`` turns False once ``buffer_limit`` bytes wait: the connection should stop
  reading, so memory stays bounded by the limit plus one read.
- Upgrade (``Upgrade`` + ``Connection: upgrade``) and CONNECT put the codec in tunnel mode:
  ``RequestHeaders(end_stream=False, upgrade=True)``, then every byte is ``RequestData`` and
  ``feed_eof()`` ends the stream. An ``h2c`` upgrade is stripped and served as HTTP/1.1, as
  Envoy does, and so is one whose whole Upgrade value ``ignore_http_11_upgrade`` matches
  (with or without ``Connection: upgrade``; its body, chunked too, is parsed as any
  request's: see _ChunkedAfterUpgrade). ``PRI * HTTP/2.0`` is a codec error (400,
  ``http1.codec_error``).
- Responses: ``encode_headers``/``encode_data``/``encode_trailers`` frame the response to the
  oldest unanswered request (HTTP/1.0 status line for an HTTP/1.0 request, no body for HEAD,
  1xx, 204 and 304, chunked without a content-length, see stream_encoder).
  ``close_after_response`` says the connection must close once the bytes are written.
- Header case: with ``header_key_format: proper_case_words`` response names go out
  Proper-Case; with a stateful formatter each request head records its names as they arrived
  (a ``FormattedHeaderMap``, see header_formatter), for whichever encoder writes it upstream.

Obs-fold: llhttp parses header lines strictly; a folded head is buffered to its end, unfolded
as Balsa does (the CRLF removed, the whitespace kept) and parsed again with a fresh parser. The
start of the message must be known for that, which it is unless another request completed
earlier in the same ``feed`` (a pipelined folded head is refused).

Known divergences from Envoy 1.40 (Balsa), all stricter, listed in the differential table: a
bare LF ending a head or trailer line, a bare CR inside a header value, whitespace after the
version, and bytes between chunk data and its CRLF are 400 ``http1.codec_error`` here (Balsa
tolerates them); an ``h2c`` upgrade request with a chunked body is refused; the method
``MSEARCH`` is refused (Balsa accepts it, llhttp does not). The head size is counted from what
llhttp delivers (request line and ``name: value`` lines), which equals Balsa's count unless a
line carries extra optional whitespace.
"""

from __future__ import annotations

import enum
from collections import deque

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpRequestParser,
)

from legatus.http.headers import HeaderMap
from legatus.http.http1 import common as c
from legatus.http.http1 import request_head as rh
from legatus.http.http1.events import (
    HTTP_10,
    HTTP_11,
    ProtocolError,
    RequestData,
    RequestHeaders,
    RequestTrailers,
    ServerEvent,
    ends_request,
)
from legatus.http.http1.settings import DEFAULT_SETTINGS, Http1Settings
from legatus.http.http1.stream_encoder import Exchange, ResponseEncoder

_new_map = dict.__new__
_dict_pop = dict.pop


class _In(enum.IntEnum):
    """Where the request stream is (an IntEnum: members are dict keys on the hot path)."""

    IDLE = 0  # between requests
    HEAD = 1  # inside a request head
    FOLD = 2  # a head with obs-fold: buffered until complete, then unfolded and re-parsed
    BODY = 3  # head done, body (or trailers) being read
    TUNNEL = 4  # upgrade/CONNECT: raw bytes
    CLOSED = 5  # after an error, EOF, or a request that closes the connection


# The members as module globals: reading a member through its enum class runs Python code in
# 3.11 (about ten times a global's cost), and the codec tests its state several times a request.
_IDLE, _HEAD, _FOLD, _BODY, _TUNNEL, _CLOSED = _In
# The states in which bytes do not go to llhttp.
_NOT_PARSED = frozenset((_FOLD, _TUNNEL, _CLOSED))
# Headers whose presence takes a request head off the common path (no body, no upgrade, no
# Connection or Expect to act on): see on_headers_complete.
_NOT_PLAIN = frozenset(
    ("connection", "content-length", "expect", "proxy-connection", "transfer-encoding", "upgrade")
)

# The one transition table of the request stream (``ServerCodec._enter``).
_TRANSITIONS: dict[_In, frozenset[_In]] = {
    _IDLE: frozenset((_HEAD, _CLOSED)),
    _HEAD: frozenset((_BODY, _FOLD, _CLOSED)),
    _FOLD: frozenset((_IDLE, _CLOSED)),
    _BODY: frozenset((_IDLE, _TUNNEL, _CLOSED)),
    _TUNNEL: frozenset((_CLOSED,)),
    _CLOSED: frozenset((_CLOSED,)),
}


class ServerCodec(c.MessageDecoder):
    """The downstream side of one HTTP/1 connection (see module doc).

    ``encode_headers(headers, end_stream)``, ``encode_data(data, end_stream)`` and
    ``encode_trailers(trailers)`` return the bytes of the response to the oldest unanswered
    request (1xx heads may precede it): the connection's ResponseEncoder's methods, bound
    once (no forwarding call per response). ``paused``: parsing stops after a request (see
    module doc) until ``resume()``. ``holding``: events or bytes wait for ``resume()``; when
    it is False, ``resume()`` only clears ``paused``, which its owner may then do itself (no
    call). Otherwise read both, do not set them.
    """

    __slots__ = (
        "_body",
        "_boundary",
        "_buffer_limit",
        "_chunked_after_upgrade",
        "_exchange",
        "_fold_buf",
        "_head_chunks",
        "_head_raw",
        "_held",
        "_msg_start_known",
        "_out",
        "_parser",
        "_pending",
        "_pending_size",
        "_raw_left",
        "_ready",
        "_refolded",
        "_responses",
        "_settings",
        "_state",
        "_swallow_complete",
        "_tunnel",
        "_url",
        "encode_data",
        "encode_headers",
        "encode_trailers",
        "holding",
        "paused",
    )

    def __init__(self, settings: Http1Settings = DEFAULT_SETTINGS, *, buffer_limit: int = 1 << 20):
        super().__init__(
            max_size=settings.max_request_headers_kb * 1024,
            max_count=settings.max_request_headers_count,
            enable_trailers=settings.enable_trailers,
            underscores=settings.headers_with_underscores_action,
            new_formatter=settings.new_formatter,
        )
        self._settings = settings
        self._buffer_limit = buffer_limit
        self._parser = HttpRequestParser(self)
        self._parser.set_dangerous_leniencies(**c.LENIENCIES)
        self._state = _IDLE
        self._out: list[ServerEvent] = []
        self._boundary: int | None = None
        self._body: list[bytes] = []
        self._url = b""
        self._ready: RequestHeaders | None = None  # a bodiless request, until complete
        self._tunnel = False
        self._swallow_complete = False
        self._raw_left = 0
        self._chunked_after_upgrade = False
        self._exchange: Exchange | None = None
        responses = self._responses = ResponseEncoder(
            enable_trailers=settings.enable_trailers, key_format=settings.key_format
        )
        self.encode_headers = responses.encode_headers
        self.encode_data = responses.encode_data
        self.encode_trailers = responses.encode_trailers
        self.paused = False
        self.holding = False
        self._held: deque[ServerEvent] = deque()
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._head_chunks: list[bytes] = []
        self._head_raw = 0
        self._msg_start_known = True
        self._fold_buf = b""
        self._refolded = False

    # Decoding --------------------------------------------------------------------------

    def _enter(self, state: _In) -> None:
        if state not in _TRANSITIONS[self._state]:
            raise RuntimeError(f"HTTP/1 server codec: {self._state.name} -> {state.name}")
        self._state = state

    def feed(self, data: bytes) -> list[ServerEvent]:
        """Parse ``data``; the events of the current request (see module doc on pausing)."""
        if self.paused:
            if data and self._state is not _CLOSED:
                self._pending.append(data)
                self._pending_size += len(data)
                self.holding = True
            return []
        out = self._out = []
        self._boundary = None  # set once a request completes (or fails) in this feed
        while data:
            if self._state in _NOT_PARSED or self._raw_left:
                state = self._state
                if state is _TUNNEL:
                    out.append(RequestData(data=data, end_stream=False))
                    break
                if state is _CLOSED:
                    break
                data = self._unfold(data) if state is _FOLD else self._raw_body(data)
                continue
            try:
                self._parser.feed_data(data)
            except HttpParserUpgrade as e:
                data = data[e.args[0] :]
                self._after_llhttp_upgrade()
                continue
            except HttpParserError as e:
                data = self._on_parse_error(e, data)
                continue
            if self._state is _HEAD:
                # A head spanning reads: bound what llhttp and httptools hold for it (its
                # bytes so far, or, when it began after another request in this read, its
                # parsed part).
                if self._head_chunks or self._msg_start_known:
                    self._head_raw += len(data)
                else:
                    self._head_raw = len(self._url)
                self._head_chunks.append(data)
                if self._head_raw > self._max_size:
                    self._error_event(ProtocolError(status=431, details=c.HEADERS_TOO_LARGE))
            break
        if self._body:
            out.append(RequestData(data=b"".join(self._body), end_stream=False))
            self._body.clear()
        boundary = self._boundary
        if boundary is not None:
            self.paused = True
            if boundary < len(out):
                self._held.extend(out[boundary:])
                del out[boundary:]
                self.holding = True
        return out

    def feed_eof(self) -> list[ServerEvent]:
        """The peer closed its side. Ends a tunnel's stream; otherwise nothing to report."""
        tunnel = self._state is _TUNNEL
        self._enter(_CLOSED)
        return [RequestData(data=b"", end_stream=True)] if tunnel else []

    def pause(self) -> None:
        """Stop parsing: later bytes are buffered until ``resume()``."""
        self.paused = True

    def resume(self) -> list[ServerEvent]:
        """Release the next request: held events first, then buffered bytes."""
        if not self.holding:
            self.paused = False
            return []  # the common case: nothing arrived after the request
        if not self.paused:
            return []
        self.paused = False
        out: list[ServerEvent] = []
        held = self._held
        while held:
            event = held.popleft()
            out.append(event)
            if ends_request(event):
                self.paused = True
                self.holding = bool(held) or bool(self._pending)
                return out
        self.holding = False  # (feed holds again what it must)
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._pending_size = 0
            out.extend(self.feed(data))
        return out

    @property
    def wants_data(self) -> bool:
        """False when reading more would only grow the buffer (paused and over the limit), or
        when nothing more will be parsed."""
        full = self.paused and self._pending_size >= self._buffer_limit
        return not full and self._state is not _CLOSED

    def _on_parse_error(self, e: HttpParserError, data: bytes) -> bytes:
        """Report the error; or, for an obs-fold in a head whose start is known, switch to
        unfolding it (returns the bytes to parse next)."""
        error = self._error
        if error is None:
            if isinstance(e, HttpParserCallbackError):
                if not isinstance(e.__context__, c.Abort):
                    raise e.__context__ or e  # a bug in a callback, not bad traffic
                self._enter(_CLOSED)  # a silent stop (data after a closing request)
                return b""
            if self._state is _BODY:
                details = c.CODEC_ERROR
            else:
                head = b"".join((*self._head_chunks, data))
                reason = str(e)
                # An obs-fold (whatever llhttp made of it), or an empty Transfer-Encoding (to
                # judge it on the whole head, as Balsa does): buffer the head, parse it again.
                if (
                    (reason == c.EMPTY_TE_ERROR or c.has_fold(head))
                    and self._msg_start_known
                    and not self._refolded
                    and not c.has_control_characters(head)
                ):
                    self._enter(_FOLD)
                    self._fold_buf = b""
                    self._head_chunks = []
                    self._head_raw = 0
                    return head
                # Balsa checks the characters of the whole head (up to its empty line, not
                # what follows it: an HTTP/2 preface's frames) before anything else.
                end = head.find(b"\r\n\r\n")
                if c.has_control_characters(head if end < 0 else head[: end + 4]):
                    details = c.INVALID_CHARACTERS
                elif reason == c.EMPTY_TE_ERROR:
                    # Envoy: Transfer-Encoding present, with Content-Length or not a chunked one.
                    cl_te = b"\ncontent-length:" in head.lower()
                    error = ProtocolError(
                        status=400 if cl_te else 501,
                        details=c.CHUNKED_CONTENT_LENGTH if cl_te else c.INVALID_TRANSFER_ENCODING,
                    )
                    self._error_event(error)
                    return b""
                else:
                    details = c.CODEC_ERROR
            error = ProtocolError(status=400, details=details)
        self._error_event(error)
        return b""

    def _unfold(self, data: bytes) -> bytes:
        buffer = self._fold_buf + data if self._fold_buf else data
        try:
            split = c.unfold(buffer)
        except ValueError:
            self._error_event(ProtocolError(status=400, details=c.CODEC_ERROR))
            return b""
        if split is None:
            if len(buffer) > self._max_size:
                self._error_event(ProtocolError(status=431, details=c.HEADERS_TOO_LARGE))
            else:
                self._fold_buf = buffer
            return b""
        self._fold_buf = b""
        self._refolded = True
        self._items.clear()  # what the refused parse collected
        self._parser = HttpRequestParser(self)
        self._parser.set_dangerous_leniencies(**c.LENIENCIES)
        self._enter(_IDLE)
        return split[0] + split[1]

    def _error_event(self, error: ProtocolError) -> None:
        if self._body:
            self._out.append(RequestData(data=b"".join(self._body), end_stream=False))
            self._body.clear()
        self._out.append(error)
        if self._boundary is None:
            self._boundary = len(self._out)
        self._enter(_CLOSED)
        self._responses.on_protocol_error(self._exchange)

    def _after_llhttp_upgrade(self) -> None:
        if self._tunnel:
            self._enter(_TUNNEL)
        elif self._swallow_complete:
            # An h2c upgrade with a body: llhttp skipped it, count its bytes ourselves.
            self._swallow_complete = False
            if self._chunked_after_upgrade:
                self._chunked_after_upgrade = False
                self._parser = _ChunkedAfterUpgrade.parser(self)
            elif self._raw_left == 0:
                self._error_event(ProtocolError(status=400, details=c.CODEC_ERROR))

    def _raw_body(self, data: bytes) -> bytes:
        piece = data[: self._raw_left]
        self._raw_left -= len(piece)
        self._body.append(piece)
        if self._raw_left == 0:
            self.on_message_complete()  # (what llhttp skipped ends here: nothing to swallow)
        return data[len(piece) :]

    # Parser callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        state = self._state
        if state is not _IDLE:
            if state is _CLOSED:
                raise c.Abort()
            self._enter(_HEAD)  # refused: a message begins only between requests
        self._state = _HEAD
        # The start of the message is known unless a request completed earlier in this feed.
        self._msg_start_known = self._boundary is None
        self._url = b""

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._max_size:
            raise self._fail(431, c.HEADERS_TOO_LARGE)

    def on_headers_complete(self) -> None:
        raw_method = self._parser.get_method()
        method = rh.METHODS.get(raw_method)
        if method is None:
            raise self._fail(400, c.CODEC_ERROR)
        url = self._url.decode("latin-1")
        # The pseudo-headers come first, in this order (:path and :authority are settled
        # below). The block's size as Balsa counts it: request line (" ", " HTTP/1.1\r\n"),
        # header lines, the final CRLF.
        seed = _new_map(HeaderMap)  # filled in place by _decode_block (no dict to copy)
        seed._entries = None
        seed[":method"] = method
        seed[":path"] = url
        seed[":authority"] = ""
        headers = self._decode_block(seed, len(self._url) + len(raw_method) + 14)
        http10 = self._parser.get_http_version() != "1.1"
        plain = headers is seed and _NOT_PLAIN.isdisjoint(headers)  # (seed: no repeats)
        if plain and not http10 and url[:1] == "/" and method != "CONNECT":
            # The common request: origin-form, HTTP/1.1, no body, nothing to check but its
            # authority; the general path below would decide the same, with more tests.
            host = _dict_pop(headers, "host", None)  # (a map without repeats: dict-level)
            if host is None:
                del headers[":authority"]
            else:
                headers[":authority"] = host
                if host and not rh.AUTHORITY_IS_VALID[host]:
                    raise self._fail(400, c.INVALID_AUTHORITY)
            exchange = self._exchange = Exchange(False, method == "HEAD", False, True)
            self._responses.exchanges.append(exchange)
            self._state = _BODY  # (_enter(_BODY), from _HEAD)
            if self._head_chunks:
                self._head_chunks = []
                self._head_raw = 0
            self._tunnel = self._swallow_complete = self._refolded = False
            self._ready = RequestHeaders(headers, True)  # reported once llhttp completes it
        else:
            self._on_headers_checked(method, url, headers, headers is not seed, http10)

    def _on_headers_checked(
        self, method: str, url: str, headers: HeaderMap, repeated: bool, http10: bool
    ) -> None:
        """``on_headers_complete`` past the common request: Envoy's checks in Envoy's order."""
        connect = method == "CONNECT"
        first = url[:1]
        if not connect and first != "/" and first != "*" and not rh.balsa_url_ok(url):
            raise self._fail(400, c.CODEC_ERROR)
        get = headers.get

        # Upgrade: llhttp's rule is Envoy's (Upgrade + Connection: upgrade, or CONNECT).
        connection = c.joined(headers, "connection") if repeated else get("connection")
        upgrade = (
            connection is not None and "upgrade" in headers and c.has_token(connection, "upgrade")
        )
        llhttp_upgrade = upgrade or connect
        ignored = False
        ignore = self._settings.ignore_upgrade
        if ignore is not None and "upgrade" in headers and self._ignored(headers, ignore):
            ignored = True
            upgrade = False
        elif upgrade and get("upgrade", "").lower() == "h2c":
            connection = rh.strip_h2c(headers, connection)
            upgrade = False
        tunnel = upgrade or connect

        content_length = get("content-length")
        if connect and content_length is not None:
            if content_length != "0":
                raise self._fail(400, c.BODY_DISALLOWED)
            headers.remove("content-length")
            content_length = None
        transfer_encoding = (
            c.joined(headers, "transfer-encoding") if repeated else get("transfer-encoding")
        )
        if transfer_encoding is not None:
            chunked_te = transfer_encoding.lower() == "chunked"
            if content_length is not None:
                if self._settings.allow_chunked_length and chunked_te:
                    headers.remove("content-length")
                    content_length = None
                else:
                    raise self._fail(400, c.CHUNKED_CONTENT_LENGTH)
            if not chunked_te or connect:
                raise self._fail(501, c.INVALID_TRANSFER_ENCODING)
        if (
            connection is not None
            and not tunnel
            and connection.lower() not in rh.NOTHING_NOMINATED
            and not rh.sanitize_connection(headers, connection)
        ):
            raise self._fail(400, c.CONNECTION_HEADER_REJECTED)

        if repeated:
            hosts = headers.get_all("host")
            host = (
                (",".join(h for h in hosts if h) if len(hosts) > 1 else hosts[0]) if hosts else None
            )
        else:
            host = get("host")
        if host is not None:
            headers.remove("host")
            headers.set(":authority", host)
        else:
            headers.remove(":authority")
        if connect or not (first == "/" or (first == "*" and method == "OPTIONS")):
            self._handle_path(headers, url, connect)  # (:path is the target otherwise)
        if http10:
            if not self._settings.accept_http_10:
                raise self._fail(426, c.LOW_VERSION)
            if ":authority" not in headers and self._settings.default_host_for_http_10:
                headers.set(":authority", self._settings.default_host_for_http_10)
        authority = get(":authority")
        if authority and not rh.AUTHORITY_IS_VALID[authority]:
            raise self._fail(400, c.INVALID_AUTHORITY)

        chunked = transfer_encoding is not None
        body_length = int(content_length) if content_length is not None else 0
        keep_alive = not c.should_close_connection(http10, headers)
        expect = get("expect")
        self._exchange = self._responses.expect(
            Exchange(http10=http10, head=method == "HEAD", connect=connect, keep_alive=keep_alive)
        )
        self._tunnel = tunnel
        self._swallow_complete = tunnel
        if llhttp_upgrade and not tunnel and (chunked or body_length):
            # llhttp skips the body of what it takes for an upgrade (h2c): read it ourselves.
            self._swallow_complete = True
            self._raw_left = 0 if chunked else body_length
            self._chunked_after_upgrade = ignored and chunked
        self._enter(_BODY)
        if self._head_chunks:
            self._head_chunks = []
            self._head_raw = 0
        self._refolded = False
        has_body = chunked or body_length or tunnel
        event = RequestHeaders(
            headers,
            not has_body,
            keep_alive,
            expect is not None and expect.lower() == "100-continue",
            tunnel,
            HTTP_10 if http10 else HTTP_11,
        )
        if has_body:
            self._ready = None
            self._out.append(event)
        else:
            self._ready = event  # reported when llhttp completes the request, as Envoy does

    @staticmethod
    def _ignored(headers: HeaderMap, matchers: tuple) -> bool:
        """``ignore_http_11_upgrade``: an Upgrade value one of the matchers takes (whole) is
        dropped, with or without ``Connection: upgrade``, and the request goes on as a plain
        one (its Connection header nominations are removed as any other's)."""
        value = c.joined(headers, "upgrade")
        if not any(m.matches(value) for m in matchers):
            return False
        headers.remove("upgrade")
        return True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        """The request is complete: its last event, then the pause at this boundary."""
        if self._swallow_complete:
            return  # (an h2c upgrade's body, which llhttp skips: see _raw_body)
        ready = self._ready
        if ready is not None:  # a request without body (no trailers either)
            self._out.append(ready)
            self._ready = None
        else:
            out = self._out
            trailers = None
            if self._items:
                if self._enable_trailers:
                    trailers = self._decode_block(HeaderMap(), 0)
                else:
                    self._items.clear()  # Envoy ignores trailers unless enabled
            body = self._body
            if trailers:
                if body:
                    out.append(RequestData(data=b"".join(body), end_stream=False))
                    body.clear()
                out.append(RequestTrailers(trailers=trailers))
            else:
                out.append(RequestData(data=b"".join(body), end_stream=True))
                body.clear()
        exchange = self._exchange  # (set by the head)
        exchange.request_done = True
        self._state = _IDLE if exchange.keep_alive else _CLOSED  # (_enter, from _BODY)
        if self._boundary is None:
            self._boundary = len(self._out)

    def _handle_path(self, headers: HeaderMap, url: str, connect: bool) -> None:
        """Envoy's ``handlePath`` for a target that is not origin-form (nor ``*`` for
        OPTIONS): absolute-form into ``:authority``/``:scheme``/``:path``, authority-form for
        CONNECT."""
        if not connect and not self._settings.allow_absolute_url:
            headers.set(":path", url)
            return
        parsed = rh.parse_absolute_url(url, connect)
        if parsed is None:
            raise self._fail(400, c.INVALID_URL)
        scheme, authority, path = parsed
        headers.set(":authority", authority)
        if connect:
            headers.remove(":path")
            return
        scheme = scheme.lower()
        headers.set(":scheme", scheme)
        if scheme != "http" and scheme != "https":
            raise self._fail(400, c.INVALID_SCHEME)
        headers.set(":path", path)

    def release(self) -> None:
        """The connection is gone: nothing more is parsed. llhttp holds this codec's bound
        callbacks, a reference cycle that would leave the codec, and everything its last
        request reached, to the cyclic collector; dropping the parser here lets reference
        counting free them when the connection goes (a collection over a worker's whole
        heap costs more than the rest of a short connection)."""
        self._state = _CLOSED
        self._parser = None

    # Encoding ------------------------------------------------------------------------------

    @property
    def close_after_response(self) -> bool:
        """The connection must close once the encoded bytes are written (a request or response
        that closes it, a response delimited by the close, an error, an early response)."""
        return self._responses.close


class _ChunkedAfterUpgrade:
    """The parser callbacks of a connection whose request was an ignored upgrade with a
    chunked body (``ignore_http_11_upgrade`` and ``Connection: upgrade``).

    llhttp takes such a request for an upgrade and leaves its body unparsed; Envoy serves it
    as a plain request. A fresh parser, primed with a bodiless chunked head these callbacks
    swallow, parses the rest of the connection: the chunked body, then the next requests,
    whose callbacks go on to the codec (httptools binds its callbacks when it is built).
    """

    __slots__ = ("codec",)
    _HEAD = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"

    def __init__(self) -> None:
        self.codec: ServerCodec | None = None  # None while the priming head is parsed

    @classmethod
    def parser(cls, codec: ServerCodec) -> HttpRequestParser:
        """The parser that goes on from the end of the upgrade request's head."""
        callbacks = cls()
        parser = HttpRequestParser(callbacks)
        parser.set_dangerous_leniencies(**c.LENIENCIES)
        parser.feed_data(cls._HEAD)
        callbacks.codec = codec
        return parser

    def on_message_begin(self) -> None:
        if self.codec is not None:
            self.codec.on_message_begin()

    def on_url(self, url: bytes) -> None:
        if self.codec is not None:
            self.codec.on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.codec is not None:
            self.codec.on_header(name, value)

    def on_headers_complete(self) -> None:
        if self.codec is not None:
            self.codec.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self.codec.on_body(body)  # (the priming head has none)

    def on_message_complete(self) -> None:
        self.codec.on_message_complete()
