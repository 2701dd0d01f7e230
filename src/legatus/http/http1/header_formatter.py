"""HTTP/1 header key formats: Envoy's ``Http1ProtocolOptions.header_key_format``.

Header maps hold lower-case names; a key format decides how an HTTP/1 encoder writes them.
Envoy has two kinds, and so does legatus:

- Stateless (``proper_case_words``): a property of the connection that writes. ``proper_case``
  upper-cases the first character and every letter that follows a character that is neither
  a letter nor a digit (``x-123abc`` -> ``X-123abc``, ``x_y`` -> ``X_Y``).
- Stateful (``stateful_formatter``, e.g. preserve_case): the codec that decodes a message head
  makes one formatter per head, gives it every header name as it arrived (and, on the upstream
  side, the reason phrase), and hands the head over as a ``FormattedHeaderMap``. Whichever
  HTTP/1 encoder writes that map later, on either side of the proxy, formats its names with
  the map's formatter, which wins over the writing connection's own key format. So a
  request's case follows the listener's setting (its downstream codec recorded it) and a
  response's the cluster's, whatever the other side says (checked against Envoy 1.40).

Maps Envoy makes itself (local replies) carry no formatter. Trailers are written lower-case
whatever the format (Envoy formats heads only). HTTP/2 encoders ignore all of this.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from legatus.http.headers import HeaderMap

KeyFormat = Callable[[str], str]
"""A stateless key format: lower-case name -> the name as written."""

_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_PROPER: dict[str, str] = {}
_PROPER_MAX = 4096
_dict_new = dict.__new__
_dict_update = dict.update


def proper_case(name: str) -> str:
    """Envoy's ProperCaseWords: the first character, and each character after one that is not
    an ASCII letter or digit, upper-cased. Names repeat, so results are kept (up to a bound)."""
    known = _PROPER.get(name)
    if known is not None:
        return known
    out = []
    upper_next = True
    for ch in name:
        out.append(ch.upper() if upper_next and ch.isascii() else ch)
        upper_next = ch not in _ALNUM
    formatted = "".join(out)
    if len(_PROPER) < _PROPER_MAX:
        _PROPER[name] = formatted
    return formatted


class StatefulHeaderFormatter(Protocol):
    """One message head's formatter (Envoy's ``StatefulHeaderKeyFormatter``)."""

    reason_phrase: str
    """The reason phrase to write in a status line ("": the standard one)."""

    def process_keys(self, names: Iterable[str]) -> None:
        """The head's header names, as they arrived, in order."""

    def set_reason_phrase(self, phrase: str) -> None:
        """The reason phrase of the status line the head arrived with."""

    def format(self, name: str) -> str:
        """How to write ``name`` (lower-case, as the map holds it)."""


class FormattedHeaderMap(HeaderMap):
    """A decoded head with the stateful formatter its codec made for it (see module doc).

    ``copy()`` gives a plain HeaderMap: a copy is a new message (a mirrored request), which
    Envoy writes without the formatter too."""

    __slots__ = ("formatter",)

    formatter: StatefulHeaderFormatter

    @classmethod
    def attach(cls, headers: HeaderMap, formatter: StatefulHeaderFormatter) -> FormattedHeaderMap:
        """``headers`` (which the caller drops) with ``formatter``: one C-level copy."""
        new = _dict_new(cls)
        _dict_update(new, headers)
        entries = headers._entries
        new._entries = None if entries is None else entries.copy()
        new.formatter = formatter
        return new


def key_format_of(headers: HeaderMap, connection: KeyFormat | None) -> KeyFormat | None:
    """How to write ``headers``' names: its formatter's, else the connection's (None: as
    they are)."""
    if type(headers) is FormattedHeaderMap:
        return headers.formatter.format
    return connection
