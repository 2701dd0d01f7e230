"""What the HTTP/1 server and client codecs share: header decoding, Envoy's checks, details.

``MessageDecoder`` holds the per-message state both httptools-driven codecs fill from the
``on_header`` callback: one HeaderMap per head (names lower-cased once, through a bounded
cache of raw names; values decoded with latin-1 once; trailing whitespace trimmed as Envoy
does), the header count and block size against the limits, the underscores policy, and
trailers. llhttp parses header lines strictly (it refuses control characters in values, which
Envoy reports as ``http1.invalid_characters``); obs-fold, which Envoy's Balsa parser accepts,
is handled by the codecs by unfolding the head and parsing it again (``unfold``).

Errors found inside a parser callback are stored on the decoder and raised as ``Abort`` to
stop llhttp; the codec then reports the stored ``ProtocolError``.

With a stateful header formatter configured (``header_key_format``), each head's names are
also given, as they arrived, to a new formatter, and the head is handed over as a
``FormattedHeaderMap`` (see header_formatter); that takes the checked path, as an underscores
policy does, so that a plain configuration pays nothing for it.
"""

from __future__ import annotations

from collections.abc import Callable

from legatus.http.headers import HeaderMap
from legatus.http.http1.events import ProtocolError
from legatus.http.http1.header_formatter import FormattedHeaderMap, StatefulHeaderFormatter
from legatus.http.http1.settings import HeadersWithUnderscoresAction

# Envoy's response code details (codec_impl.cc Http1ResponseCodeDetails, and the shared ones).
CODEC_ERROR = "http1.codec_error"
INVALID_CHARACTERS = "http1.invalid_characters"
HEADERS_TOO_LARGE = "http1.headers_too_large"
TOO_MANY_HEADERS = "http1.too_many_headers"
CONNECTION_HEADER_REJECTED = "http1.connection_header_rejected"
INVALID_URL = "http1.invalid_url"
INVALID_TRANSFER_ENCODING = "http1.invalid_transfer_encoding"
BODY_DISALLOWED = "http1.body_disallowed"
TRANSFER_ENCODING_NOT_ALLOWED = "http1.transfer_encoding_not_allowed"
CONTENT_LENGTH_NOT_ALLOWED = "http1.content_length_not_allowed"
UNEXPECTED_UNDERSCORE = "http1.unexpected_underscore"
CHUNKED_CONTENT_LENGTH = "http1.content_length_and_chunked_not_allowed"
INVALID_SCHEME = "http1.invalid_scheme"
LOW_VERSION = "low_version"
INVALID_AUTHORITY = "http.invalid_authority"
# legatus' own (Envoy reports these as bare codec statuses without details).
EXTRANEOUS_DATA = "http1.extraneous_data"
PREMATURE_RESPONSE = "http1.premature_response"

# llhttp's leniencies both codecs run with; each one is then Envoy's check, done by the codec:
# Content-Length with Transfer-Encoding, the Transfer-Encoding value, the version, spaces after
# a chunk size (Balsa accepts them), and data after a closing message (the codec stops reading
# instead). Header lines stay strict: lenient_headers would also accept whitespace before the
# first header line, which Envoy refuses (a request-smuggling vector).
LENIENCIES = {
    "lenient_chunked_length": True,
    "lenient_transfer_encoding": True,
    "lenient_version": True,
    "lenient_keep_alive": True,
    "lenient_data_after_close": True,
    "lenient_spaces_after_chunk_size": True,
}

# llhttp's reason for an empty Transfer-Encoding value.
EMPTY_TE_ERROR = "Empty Transfer-Encoding"
# Bytes that are not control characters (CR and LF are framing, not content).
_NOT_CONTROL = bytes([9, 10, 13, *range(0x20, 0x7F), *range(0x80, 0x100)])
_OWS = frozenset(b" \t")
_dict_len = dict.__len__
_dict_items = dict.items

_NAME_CACHE_MAX = 4096


class _NameCache(dict):
    """Raw header name -> its lower-case ``str``: ``cache[raw]`` is one C-level lookup for a
    spelling seen before; a new one is decoded by ``__missing__`` and kept (up to a bound)."""

    def __missing__(self, raw: bytes) -> str:
        name = raw.decode("latin-1").lower()
        if len(self) < _NAME_CACHE_MAX:
            self[raw] = name
        return name


_NAMES = _NameCache()
for _name in (
    "Host", "User-Agent", "Accept", "Accept-Encoding", "Accept-Language", "Connection",
    "Content-Length", "Content-Type", "Transfer-Encoding", "Cookie", "Set-Cookie", "Date",
    "Server", "Cache-Control", "Authorization", "Referer", "Origin", "Upgrade", "Expect", "TE",
    "Keep-Alive", "X-Forwarded-For", "X-Forwarded-Proto", "X-Request-Id", "Location", "ETag",
    "Last-Modified", "If-None-Match", "If-Modified-Since", "Range", "Vary", "Pragma",
):  # fmt: skip
    for _variant in (_name, _name.lower()):
        _NAMES[_variant.encode()] = _name.lower()


def has_control_characters(data: bytes) -> bool:
    return bool(data.translate(None, _NOT_CONTROL))


def unfold(buffer: bytes) -> tuple[bytes, bytes] | None:
    """Split ``buffer`` (starting at a message, leading empty lines allowed) into its head with
    obs-folds removed as Balsa does (the CRLF goes, the whitespace stays) and what follows;
    None while the head is incomplete. A first header line starting with whitespace is no
    fold (Envoy refuses it): ``ValueError``."""
    buffer = buffer.lstrip(b"\r\n")
    end = buffer.find(b"\r\n\r\n")
    if end == -1:
        return None
    first = buffer.find(b"\r\n")
    if buffer[first + 2 : first + 3] in (b" ", b"\t"):
        raise ValueError("whitespace before the first header line")
    head = buffer[: end + 4].replace(b"\r\n ", b" ").replace(b"\r\n\t", b"\t")
    return head, buffer[end + 4 :]


def has_fold(head: bytes) -> bool:
    return b"\r\n " in head or b"\r\n\t" in head


def has_token(value: str | None, token: str) -> bool:
    """Envoy's ``StringUtil::caseFindToken(value, ",", token)``."""
    if not value:
        return False
    lowered = value.lower()
    if token not in lowered:
        return False
    return any(part.strip(" \t") == token for part in lowered.split(","))


def should_close_connection(http10: bool, headers: HeaderMap) -> bool:
    """Envoy's ``HeaderUtility::shouldCloseConnection`` for HTTP/1.0 and 1.1."""
    connection = headers.get("connection")
    if http10:
        if connection is None or not has_token(connection, "keep-alive"):
            return True
    elif connection is not None and has_token(connection, "close"):
        return True
    proxy_connection = headers.get("proxy-connection")
    return proxy_connection is not None and has_token(proxy_connection, "close")


def joined(headers: HeaderMap, name: str) -> str | None:
    """The value of ``name`` with repeats joined by ``,``, as Envoy's inline headers are (the
    joined value replaces the repeats)."""
    values = headers.get_all(name)
    if len(values) <= 1:
        return values[0] if values else None
    value = ",".join(v for v in values if v)
    headers.set(name, value)
    return value


class Abort(Exception):
    """Raised inside a parser callback to stop llhttp; the reason is on the decoder."""


class MessageDecoder:
    """Header block decoding shared by the server and the client codec (see module doc).

    ``on_header`` only collects the raw (name, value) pairs; ``_decode_block`` turns a complete
    block into a HeaderMap in one tight loop (names through the cache, values trimmed and
    decoded, count, size and underscores checked). Errors Envoy finds header by header
    (underscores, count) are reported once the block is complete, as Balsa hands Envoy whole
    blocks; the size is also bounded while a block spans reads (by the codecs)."""

    _limit_status = 431  # headers too large or too many
    _policy_status = 400  # underscores rejected

    __slots__ = (
        "_checked",
        "_enable_trailers",
        "_error",
        "_items",
        "_max_count",
        "_max_size",
        "_new_formatter",
        "_underscores",
    )

    def __init__(
        self,
        *,
        max_size: int,
        max_count: int,
        enable_trailers: bool,
        underscores: HeadersWithUnderscoresAction = HeadersWithUnderscoresAction.ALLOW,
        new_formatter: Callable[[], StatefulHeaderFormatter] | None = None,
    ) -> None:
        self._max_size = max_size
        self._max_count = max_count
        self._enable_trailers = enable_trailers
        self._underscores = (
            None if underscores is HeadersWithUnderscoresAction.ALLOW else (underscores)
        )
        # Makes the stateful header formatter of each head (None: heads get none).
        self._new_formatter = new_formatter
        # Blocks take _decode_block_checked: a policy to apply, or names to record.
        self._checked = self._underscores is not None or new_formatter is not None
        self._error: ProtocolError | None = None
        self._items: list[tuple[bytes, bytes]] = []

    def _fail(self, status: int, details: str) -> Abort:
        if self._error is None:
            self._error = ProtocolError(status, details)
        return Abort()

    # Parser callback ------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._items.append((name, value))

    def _decode_block(self, headers: HeaderMap, size: int) -> HeaderMap:
        """The collected pairs added to ``headers`` (a new map without repeats: the
        pseudo-headers the codec puts first, or nothing), which is returned; when a name
        repeats, a new map is returned instead (so ``result is headers`` tells a codec that no
        name repeats). ``size`` is what the block already counts (the request line). Raises
        ``Abort`` (with the error set) on a limit or policy."""
        if self._checked:
            return self._decode_block_checked(headers, size)
        items = self._items
        expected = _dict_len(headers) + len(items)  # entries, unless a name repeats
        for name, value in items:
            if value and value[-1] in _OWS:
                value = value.rstrip(b" \t")
            size += len(name) + len(value) + 4
            headers[_NAMES[name]] = value.decode("latin-1")  # (a repeat is caught below)
        if _dict_len(headers) != expected or size > self._max_size or len(items) > self._max_count:
            headers = self._decode_block_end(headers, expected, size)
        items.clear()
        return headers

    def _decode_block_end(self, headers: HeaderMap, expected: int, size: int) -> HeaderMap:
        """The end of ``_decode_block`` past the common block: a limit exceeded (``Abort``), or
        a repeated name. Then a new map is built entry by entry, to keep each value at its
        own position (Envoy's order), from the entries the codec put first on."""
        items = self._items
        if size > self._max_size or len(items) > self._max_count:
            details = HEADERS_TOO_LARGE if size > self._max_size else TOO_MANY_HEADERS
            items.clear()
            raise self._fail(self._limit_status, details)
        ordered = HeaderMap(list(_dict_items(headers))[: expected - len(items)])
        add = ordered.add
        for name, value in items:
            add(_NAMES[name], value.rstrip(b" \t").decode("latin-1"))
        return ordered

    def _decode_block_checked(self, headers: HeaderMap, size: int) -> HeaderMap:
        """``_decode_block`` with a headers-with-underscores policy other than ALLOW, or a
        stateful header formatter for heads (a head's map comes seeded with its
        pseudo-headers, trailers' empty): the head is then a new FormattedHeaderMap."""
        items = self._items
        underscores = self._underscores
        formatter = None
        if self._new_formatter is not None and headers:
            formatter = self._head_formatter()
            formatter.process_keys([name.decode("latin-1") for name, _ in items])
        add = headers.add
        added = 0
        rejected_at = -1  # position (among added headers) of the first one with "_"
        for name, value in items:
            key = _NAMES[name]
            if value and value[-1] in _OWS:
                value = value.rstrip(b" \t")
            size += len(name) + len(value) + 4
            if underscores is not None and rejected_at < 0 and "_" in key:
                if underscores is HeadersWithUnderscoresAction.DROP_HEADER:
                    continue
                rejected_at = added
            add(key, value.decode("latin-1"))
            added += 1
        items.clear()
        if size > self._max_size:
            raise self._fail(self._limit_status, HEADERS_TOO_LARGE)
        # Envoy checks header by header, underscores before the count: the first error wins.
        if rejected_at >= 0 and rejected_at <= self._max_count:
            raise self._fail(self._policy_status, UNEXPECTED_UNDERSCORE)
        if added > self._max_count:
            raise self._fail(self._limit_status, TOO_MANY_HEADERS)
        if formatter is not None:
            return FormattedHeaderMap.attach(headers, formatter)  # (a new map)
        # A new map when a name repeats, as _decode_block returns.
        return headers.copy() if headers.has_repeats else headers

    def _head_formatter(self) -> StatefulHeaderFormatter:
        """The stateful formatter of the head being decoded."""
        return self._new_formatter()  # type: ignore[misc]
