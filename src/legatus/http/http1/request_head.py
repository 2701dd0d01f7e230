"""Envoy's checks on a request head that are not parsing: the method list, the request target
(origin-form, absolute-form, authority-form), the authority's characters, the Connection
header's nominations and the h2c upgrade Envoy ignores. Pure functions over strings and
HeaderMaps, used by the server codec once llhttp has delivered a head.
"""

from __future__ import annotations

import ipaddress

from httptools import HttpParserError, parse_url

from legatus.http.headers import HeaderMap

# Balsa's list of methods (balsa_parser.cc isMethodValid), with QUERY (accepted by Envoy 1.40).
METHODS = {m.encode(): m for m in (
    "ACL", "BIND", "CHECKOUT", "CONNECT", "COPY", "DELETE", "GET", "HEAD", "LINK", "LOCK",
    "MERGE", "MKACTIVITY", "MKCALENDAR", "MKCOL", "MOVE", "MSEARCH", "NOTIFY", "OPTIONS",
    "PATCH", "POST", "PROPFIND", "PROPPATCH", "PURGE", "PUT", "QUERY", "REBIND", "REPORT", "SEARCH",
    "SOURCE", "SUBSCRIBE", "TRACE", "UNBIND", "UNLINK", "UNLOCK", "UNSUBSCRIBE",
)}  # fmt: skip
# Balsa's isUrlValid host characters (absolute-form and CONNECT targets).
_HOST_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!$%&'()*+,-.:;=@[]_~"
)
# HeaderUtility::authorityIsValid (Envoy's check_authority_h1_h2): translate() deletes these.
_AUTHORITY_OK = str.maketrans(
    "", "", "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!$%&'()*+,-.:;=@[]_~"
)
_CONNECTION_NOMINATIONS_MAX = 10
# Connection values that nominate no header (sanitize_connection would leave them as they are).
NOTHING_NOMINATED = frozenset(("keep-alive", "close", "upgrade"))
_TE_MAX = 256


class _AuthorityCheck(dict):
    """``HeaderUtility::authorityIsValid`` as a mapping, ``AUTHORITY_IS_VALID[authority]``: one
    C-level lookup for an authority found valid before (kept, up to a bound), ``__missing__``
    checks the others."""

    __slots__ = ()

    def __missing__(self, authority: str) -> bool:
        if authority.translate(_AUTHORITY_OK):
            return False
        if len(self) < 1024:
            self[authority] = True
        return True


AUTHORITY_IS_VALID = _AuthorityCheck()


def balsa_url_ok(url: str) -> bool:
    """Balsa's isUrlValid for an absolute-form target: alpha scheme, ``://``, host chars."""
    i = 0
    while i < len(url) and url[i].isascii() and url[i].isalpha():
        i += 1
    if i == 0 or url[i : i + 3] != "://":
        return False
    rest = url[i + 3 :]
    end = len(rest)
    for delimiter in "/?":
        j = rest.find(delimiter)
        if j != -1 and j < end:
            end = j
    host = rest[:end]
    return "@@" not in host and all(ch in _HOST_CHARS for ch in host)


def parse_absolute_url(url: str, connect: bool) -> tuple[str, str, str] | None:
    """Envoy's ``Utility::Url::initialize`` (http_parser's URL parser): (scheme, host and
    port, path and query) or None."""
    target = "http://" + url if connect else url
    try:
        parsed = parse_url(target.encode("latin-1"))
    except (HttpParserError, ValueError):
        return None
    if parsed.host is None and parsed.schema is None:
        return None
    if connect and (parsed.port is None or parsed.path or parsed.query or parsed.fragment):
        return None
    if connect and parsed.userinfo:
        return None
    start = target.index("://") + 3
    end = len(target)
    for delimiter in "/?#":
        j = target.find(delimiter, start)
        if j != -1 and j < end:
            end = j
    authority = target[start:end].rpartition("@")[2]
    if authority.startswith("["):
        try:
            ipaddress.IPv6Address(authority[1 : authority.index("]")])
        except ValueError:
            return None
    path = target[end:] or ("" if connect else "/")
    return parsed.schema.decode("latin-1"), authority, path


def strip_h2c(headers: HeaderMap, connection: str | None) -> str | None:
    """Envoy ignores h2c upgrades: drop Upgrade, HTTP2-Settings and their Connection tokens."""
    headers.remove("upgrade")
    headers.remove("http2-settings")
    if connection is None:
        return None
    kept = [
        t for t in (p.strip(" \t") for p in connection.split(","))
        if t and t.lower() not in ("upgrade", "http2-settings")
    ]  # fmt: skip
    if not kept:
        headers.remove("connection")
        return None
    value = ",".join(kept)
    headers.set("connection", value)
    return value


def sanitize_connection(headers: HeaderMap, connection: str) -> bool:
    """Envoy's ``Utility::sanitizeConnectionHeader``: remove the headers the Connection header
    nominates (keeping ``te: trailers``); refuse 10+ nominations, x-forwarded-* and
    pseudo-headers, and a TE of 256+ bytes."""
    tokens = [t for t in connection.split(",") if t]
    if len(tokens) >= _CONNECTION_NOMINATIONS_MAX:
        return False
    removed: set[str] = set()
    for token in tokens:
        name = token.strip(" \t\f\v\n\r").lower()
        if name in ("close", "http2-settings", "keep-alive", "upgrade"):
            continue
        keep = False
        if name == "connection":
            keep = True
            removed.add(name)
        elif name in ("x-forwarded-for", "x-forwarded-host", "x-forwarded-proto") or (
            name.startswith(":")
        ):
            return False
        elif name == "te":
            te = headers.get("te")
            if te is not None:
                if len(te) >= _TE_MAX:
                    return False
                if any(v.strip(" \t").lower() == "trailers" for v in te.split(",") if v):
                    keep = True
                    headers.set("te", "trailers")
        if not keep:
            headers.remove(name)
            removed.add(name)
    if removed:
        value = ",".join(
            t for t in (p.strip(" \t\f\v\n\r") for p in connection.split(","))
            if t and t.lower() not in removed
        )  # fmt: skip
        if value:
            headers.set("connection", value)
        else:
            headers.remove("connection")
    return True
