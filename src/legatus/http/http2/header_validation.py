"""What a decoded HTTP/2 header block must look like (RFC 9113 8.2-8.3), checked the way
Envoy 1.40's default codec (nghttp2 plus Envoy's own header checks) checks it.

``check_request`` / ``check_response`` / ``check_trailers`` take the raw fields of one block
in order and return either the message (``Head``) or a ``Rejection`` saying why and how
Envoy answers it:

- a field nghttp2 refuses as it arrives (upper-case or non-token name, a control character
  or DEL in a value, a connection-specific header, ``te`` other than ``trailers``, a
  pseudo-header unknown (``:protocol`` without extended CONNECT), repeated or after a
  regular field, a bad ``:method``, ``:scheme``, ``:authority``, ``:protocol`` (when
  extended CONNECT is allowed: not a token), a ``:path`` empty or with a
  control, space or DEL byte, a bad or repeated ``content-length``) is
  ``http2.invalid.header.field``; what the whole head
  lacks (a pseudo-header missing, a ``:path`` not in origin form, CONNECT rules) is
  ``http2.violation.of.messaging.rule``. Both count
  ``http2.rx_messaging_error`` and, by default, end the connection (a stream reset with
  ``override_stream_error_on_invalid_http_message``);
- Envoy's limits reset the stream with INTERNAL_ERROR: more fields than
  ``max_headers_count`` (``http2.too_many_headers``, ``http2.header_overflow``), more bytes
  than ``max_request_headers_kb`` (``http2.header_list_size_too_large``), an underscore in
  a name under REJECT_REQUEST (``http2.unexpected_underscore``).

Extended CONNECT (RFC 8441, with ``allow_connect``: ``:method CONNECT`` with ``:protocol``,
``:scheme``, ``:path`` and ``:authority``) becomes what Envoy's codec makes of it, an
HTTP/1.1-style upgrade: ``:method GET``, ``:protocol`` removed, ``upgrade: <protocol>`` and
``connection: upgrade`` last (``Head.upgrade``).

What the checks leave is Envoy's request: values as they came (whitespace included),
``host`` folded into a missing ``:authority`` (and dropped beside one), cookie crumbs
joined with ``"; "`` into one ``cookie`` field at the end, names under DROP_HEADER with an
underscore dropped (``http2.dropped_headers_with_underscores``).
"""

from __future__ import annotations

from dataclasses import dataclass

from legatus.http.headers import HeaderMap
from legatus.http.http1.settings import HeadersWithUnderscoresAction
from legatus.http.http2 import frames as f

INVALID_HEADER_FIELD = "http2.invalid.header.field"
VIOLATION_OF_MESSAGING_RULE = "http2.violation.of.messaging.rule"
TOO_MANY_HEADERS = "http2.too_many_headers"
HEADER_LIST_SIZE_TOO_LARGE = "http2.header_list_size_too_large"
UNEXPECTED_UNDERSCORE = "http2.unexpected_underscore"


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a header block is refused. ``rst_code`` None: a messaging error (the connection
    ends, or the stream under ``stream_error_on_invalid_http_messaging``); otherwise the
    stream is reset with that code and the connection lives on."""

    details: str
    rst_code: int | None = None
    stat: str = "rx_messaging_error"  # the http2.* counter charged


_INVALID = Rejection(INVALID_HEADER_FIELD)
_VIOLATION = Rejection(VIOLATION_OF_MESSAGING_RULE)
_TOO_MANY = Rejection(TOO_MANY_HEADERS, f.INTERNAL_ERROR, "header_overflow")
_TOO_LARGE = Rejection(HEADER_LIST_SIZE_TOO_LARGE, f.INTERNAL_ERROR, "header_list_size_too_large")
_UNDERSCORE = Rejection(
    UNEXPECTED_UNDERSCORE, f.INTERNAL_ERROR, "requests_rejected_with_underscores_in_headers"
)


@dataclass(frozen=True, slots=True)
class Head:
    """A checked header block: ``items`` in order (str names and values), ``repeated`` if a
    name occurs twice; ``content_length`` (None if absent); for requests whether it asks for
    100-continue, whether it is a CONNECT and whether it is an upgrade (a CONNECT, or an
    extended CONNECT made into an upgrade); ``dropped`` fields with underscores."""

    items: tuple[tuple[str, str], ...]
    repeated: bool
    content_length: int | None = None
    expect_continue: bool = False
    connect: bool = False
    dropped: int = 0
    upgrade: bool = False

    def header_map(self) -> HeaderMap:
        if self.repeated:
            return HeaderMap(self.items)
        return HeaderMap.adopt(dict(self.items))


# Name kinds.
_REGULAR, _BAD, _CONNECTION, _TE, _COOKIE, _CONTENT_LENGTH, _HOST, _EXPECT = range(8)
_PSEUDO_REQUEST = frozenset((":method", ":scheme", ":authority", ":path"))
_PSEUDO_EXTENDED_CONNECT = _PSEUDO_REQUEST | {":protocol"}
_TCHAR_LOWER = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")
_NAME_OK = bytes(sorted(_TCHAR_LOWER))
_TOKEN_OK = bytes(sorted(_TCHAR_LOWER | frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")))
_VALUE_OK = bytes([9, *range(0x20, 0x7F), *range(0x80, 0x100)])
_PATH_OK = bytes([*range(0x21, 0x7F), *range(0x80, 0x100)])
_AUTHORITY_OK = bytes(
    sorted(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@[]%")
)
_SCHEME_OK = bytes(sorted(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+-."))
_CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
_SPECIAL = {b"te": _TE, b"cookie": _COOKIE, b"content-length": _CONTENT_LENGTH, b"host": _HOST,
            b"expect": _EXPECT}  # fmt: skip
_NAMES: dict[bytes, tuple[str, int]] = {}
_NAMES_MAX = 4096


def _name(raw: bytes) -> tuple[str, int]:
    """(str name, kind) of a regular (non-pseudo) field name, cached up to a bound."""
    known = _NAMES.get(raw)
    if known is not None:
        return known
    if not raw or raw.translate(None, _NAME_OK):
        kind = _BAD
    elif raw in _CONNECTION_SPECIFIC:
        kind = _CONNECTION
    else:
        kind = _SPECIAL.get(raw, _REGULAR)
    known = (raw.decode("latin-1"), kind)
    if len(_NAMES) < _NAMES_MAX:
        _NAMES[raw] = known
    return known


def _value(raw: bytes) -> str | None:
    """The value (surrounding whitespace kept, as Envoy forwards it), or None if it holds a
    forbidden byte."""
    if raw.translate(None, _VALUE_OK):
        return None
    return raw.decode("latin-1")


def _content_length(value: str) -> int | None:
    return int(value) if value.isdigit() and value.isascii() else None


def _pseudo_ok(name: str, value: str) -> bool:
    """nghttp2's checks of a request pseudo-header's value, as it arrives."""
    if name == ":method":
        return bool(value) and not value.encode("latin-1").translate(None, _TOKEN_OK)
    if name == ":scheme":
        return bool(value) and not value.encode("latin-1").translate(None, _SCHEME_OK)
    if name == ":authority":
        return not value.encode("latin-1").translate(None, _AUTHORITY_OK)
    if name == ":protocol":
        return bool(value) and not value.encode("latin-1").translate(None, _TOKEN_OK)
    # :path: nghttp2 takes any byte above space but DEL (non-ASCII too; '#' is the HCM's)
    return bool(value) and not value.encode("latin-1").translate(None, _PATH_OK)


def check_request(fields, settings) -> Head | Rejection:
    """A request's header block (``settings``: the connection's Http2Settings)."""
    max_count = settings.max_headers_count
    max_size = settings.max_headers_kb * 1024
    underscores = settings.headers_with_underscores_action
    pseudo: dict[str, str] = {}
    items: list[tuple[str, str]] = []
    seen: set[str] = set()
    repeated = False
    cookies: list[str] | None = None
    host = None
    content_length = None
    expect = False
    dropped = 0
    count = size = 0
    regular = False
    allowed = _PSEUDO_EXTENDED_CONNECT if settings.allow_connect else _PSEUDO_REQUEST
    for raw_name, raw_value in fields:
        value = _value(raw_value)
        if value is None:
            return _INVALID
        if raw_name[:1] == b":":
            name = raw_name.decode("latin-1")
            if regular or name in pseudo or name not in allowed:
                return _INVALID  # (:protocol too, unless extended CONNECT is allowed)
            if not _pseudo_ok(name, value):
                return _INVALID
            pseudo[name] = value
            items.append((name, value))
        else:
            regular = True
            name, kind = _name(raw_name)
            if kind is not _REGULAR:
                if kind is _BAD or kind is _CONNECTION:
                    return _INVALID
                if kind is _TE:
                    if value.lower() != "trailers":
                        return _INVALID
                elif kind is _COOKIE:
                    if cookies is None:
                        cookies = [value]
                    else:
                        cookies.append(value)
                    continue
                elif kind is _CONTENT_LENGTH:
                    if content_length is not None:
                        return _INVALID
                    content_length = _content_length(value)
                    if content_length is None:
                        return _INVALID
                elif kind is _HOST:
                    host = value
                    continue
                elif kind is _EXPECT:
                    expect = value.lower() == "100-continue"
            if "_" in name and underscores is not HeadersWithUnderscoresAction.ALLOW:
                if underscores is HeadersWithUnderscoresAction.REJECT_REQUEST:
                    return _UNDERSCORE
                dropped += 1
                continue
            if name in seen:
                repeated = True
            else:
                seen.add(name)
            items.append((name, value))
        count += 1
        size += len(raw_name) + len(value)
        if size > max_size:
            return _TOO_LARGE
        if count > max_count:
            return _TOO_MANY
    method = pseudo.get(":method")
    if method is None:
        return _VIOLATION
    authority = pseudo.get(":authority")
    if authority is None and host is not None:
        if not host or host.encode("latin-1").translate(None, _AUTHORITY_OK):
            return _VIOLATION
        items.insert(len(pseudo), (":authority", host))
        count += 1
        size += 10 + len(host)
    connect = method == "CONNECT"
    if ":protocol" in pseudo:
        if not connect or ":scheme" not in pseudo or pseudo.get(":path", "")[:1] != "/":
            return _VIOLATION
        if authority is None and host is None:
            return _VIOLATION
        if cookies is not None:
            items.append(("cookie", "; ".join(cookies)))
        return _extended_connect(items, pseudo[":protocol"], content_length, expect, dropped)
    if connect:
        if authority is None and host is None:
            return _VIOLATION
        if ":scheme" in pseudo or ":path" in pseudo:
            return _VIOLATION
    else:
        path = pseudo.get(":path")
        scheme = pseudo.get(":scheme")
        if path is None or scheme is None or (authority is None and host is None):
            return _VIOLATION
        if path[:1] != "/" and not (path == "*" and method == "OPTIONS"):
            return _VIOLATION
    if cookies is not None:
        items.append(("cookie", "; ".join(cookies)))
    return Head(tuple(items), repeated, content_length, expect, connect, dropped, connect)


def _extended_connect(items, protocol: str, content_length, expect, dropped) -> Head:
    """An extended CONNECT as Envoy's codec hands it on: an upgrade to ``protocol``."""
    out = [(":method", "GET") if n == ":method" else (n, v) for n, v in items if n != ":protocol"]
    out.append(("upgrade", protocol))
    out.append(("connection", "upgrade"))
    repeated = len({n for n, _ in out}) != len(out)
    return Head(tuple(out), repeated, content_length, expect, False, dropped, True)


def check_trailers(fields, settings) -> Head | Rejection:
    """Trailers: regular fields only (the caller checks that they end the stream)."""
    items: list[tuple[str, str]] = []
    seen: set[str] = set()
    repeated = False
    size = 0
    max_size = settings.max_headers_kb * 1024
    for raw_name, raw_value in fields:
        value = _value(raw_value)
        if value is None:
            return _INVALID
        if raw_name[:1] == b":":
            return _VIOLATION
        name, kind = _name(raw_name)
        if kind is _BAD or kind is _CONNECTION:
            return _INVALID
        if kind is _TE and value.lower() != "trailers":
            return _INVALID
        if name in seen:
            repeated = True
        else:
            seen.add(name)
        items.append((name, value))
        size += len(raw_name) + len(value)
        if size > max_size:
            return _TOO_LARGE
        if len(items) > settings.max_headers_count:
            return _TOO_MANY
    return Head(tuple(items), repeated)


def check_response(fields, settings) -> Head | Rejection:
    """A response's (or an informational response's) header block, for the client role."""
    status = None
    items: list[tuple[str, str]] = []
    seen: set[str] = set()
    repeated = False
    regular = False
    content_length = None
    count = size = 0
    max_size = settings.max_headers_kb * 1024
    for raw_name, raw_value in fields:
        value = _value(raw_value)
        if value is None:
            return _INVALID
        if raw_name[:1] == b":":
            if regular or raw_name != b":status" or status is not None:
                return _VIOLATION
            status = value
            items.append((":status", value))
            continue
        regular = True
        name, kind = _name(raw_name)
        if kind is _BAD or kind is _CONNECTION:
            return _INVALID
        if kind is _TE and value.lower() != "trailers":
            return _INVALID
        if kind is _CONTENT_LENGTH:
            if content_length is not None:
                return _VIOLATION
            content_length = _content_length(value)
            if content_length is None:
                return _VIOLATION
        if name in seen:
            repeated = True
        else:
            seen.add(name)
        items.append((name, value))
        count += 1
        size += len(raw_name) + len(value)
        if size > max_size:
            return _TOO_LARGE
        if count > settings.max_headers_count:
            return _TOO_MANY
    if status is None or len(status) != 3 or not status.isdigit() or status == "101":
        return _VIOLATION
    return Head(tuple(items), repeated, content_length)
