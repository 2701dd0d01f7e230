"""``%START_TIME(...)%`` formats: Envoy's DateFormatter on top of absl::FormatTime.

Envoy (source/common/common/utility.cc) splits a format at the leftmost matches of
``%[1-9*]?f | %s | %E[1-9*][Sf]`` (no regard for ``%%``, so ``%%f`` is ``%`` then
nanoseconds) and hands the text between them to ``absl::FormatTime`` in UTC:

- ``%f`` nine digits of the second's fraction, ``%3f`` three (truncated), ``%*f`` without
  trailing zeros (at least one digit); ``%s`` seconds since the epoch;
- ``%E3S`` seconds with a 3-digit fraction (``43.925``), ``%E*S`` without trailing zeros
  (and without the dot when the fraction is zero); ``%E6f`` the fraction alone;
- absl's own ``%Ez`` (``+00:00``), ``%E*z``, ``%E4Y``, ``%Z`` (``UTC``); every other
  conversion is the C library's strftime (glibc here, as in Envoy), in the C locale.

The text between sub-second specifiers depends only on the second, so it is cached per
second as Envoy does. A formatter belongs to one worker's loop: the cache is not shared.
"""

from __future__ import annotations

import re
import time

_SPECIFIER = re.compile(r"%[1-9*]?f|%s|%E[1-9*][Sf]")
# absl conversions strftime does not know (or renders differently for UTC), and ``%%``,
# which must be consumed as a unit so that ``%%Z`` stays a literal ``%Z``.
_ABSL = re.compile(r"%%|%E\*z|%Ez|%E4Y|%Es|%Z|%z")
NEWLINE = re.compile(r"%[-_0^#]*[1-9]*(E|O)?n")

DEFAULT_UTC = "%Y-%m-%dT%H:%M:%E3SZ"
DEFAULT_LOCAL = "%Y-%m-%dT%H:%M:%E3S%z"

_DYNAMIC = 255  # Envoy's width for '*': as many digits as needed


class DateFormatter:
    """Formats a wall-clock time (float seconds since the epoch) like Envoy.

    The time is taken at microsecond precision (Envoy's system clock on Linux), so ``%f``
    ends in ``000`` as Envoy's does.
    """

    __slots__ = (
        "_cache_after",
        "_cache_before",
        "_cache_key",
        "_cache_parts",
        "_local",
        "_one_sub",
        "_segments",
        "_subs",
    )

    def __init__(self, format_string: str, *, local: bool = False) -> None:
        self._local = local
        # Segments: ("text", absl-pieces) | ("seconds",) | ("sub", width, with_dot)
        segments: list[tuple] = []
        rest = format_string
        while (m := _SPECIFIER.search(rest)) is not None:
            prefix, spec = rest[: m.start()], m.group()
            if spec == "%s":
                kind: tuple = ("seconds",)
            elif spec[1] != "E":
                width = 9 if len(spec) == 2 else (_DYNAMIC if spec[1] == "*" else int(spec[1]))
                kind = ("sub", width, False)
            else:
                width = _DYNAMIC if spec[2] == "*" else int(spec[2])
                if spec[3] == "S":
                    prefix += "%S"  # absl renders the whole seconds; we add the fraction
                kind = ("sub", width, spec[3] == "S")
            if prefix:
                segments.append(("text", _absl_pieces(prefix)))
            segments.append(kind)
            rest = rest[m.end() :]
        if rest:
            segments.append(("text", _absl_pieces(rest)))
        self._segments = tuple(segments)
        self._subs = tuple((i, s) for i, s in enumerate(segments) if s[0] == "sub")
        # The usual formats have one sub-second field: cache the text around it.
        self._one_sub = self._subs[0][1] if len(self._subs) == 1 else None
        self._cache_key: int | None = None
        self._cache_parts: list[str] = []
        self._cache_before = self._cache_after = ""
        self.format(0.0)  # strftime rejects some formats (embedded NUL): fail at config time

    def format(self, when: float) -> str:
        seconds, fraction = divmod(round(when * 1_000_000), 1_000_000)
        if seconds != self._cache_key:
            self._fill_cache(seconds)
        one = self._one_sub
        if one is not None:
            return self._cache_before + _subseconds(one, fraction) + self._cache_after
        if not self._subs:
            return self._cache_before
        parts = list(self._cache_parts)
        for index, segment in self._subs:
            parts[index] = _subseconds(segment, fraction)
        return "".join(parts)

    def _fill_cache(self, seconds: int) -> None:
        parts = self._render_second(seconds)
        self._cache_parts = parts
        self._cache_key = seconds
        if self._one_sub is not None:
            index = self._subs[0][0]
            self._cache_before = "".join(parts[:index])
            self._cache_after = "".join(parts[index + 1 :])
        elif not self._subs:
            self._cache_before = "".join(parts)

    def _render_second(self, seconds: int) -> list[str]:
        tm = time.localtime(seconds) if self._local else time.gmtime(seconds)
        parts = []
        for segment in self._segments:
            if segment[0] == "text":
                parts.append(_render_absl(segment[1], tm, seconds, self._local))
            elif segment[0] == "seconds":
                parts.append(str(seconds))
            else:
                parts.append("")  # filled per call
        return parts


def _subseconds(segment: tuple, micros: int) -> str:
    """The fraction of the second (microseconds, as Envoy's clock gives) at ``width`` digits."""
    _, width, with_dot = segment
    nanos = f"{micros:06d}000"
    if width == _DYNAMIC:
        width = len(nanos.rstrip("0"))
    if with_dot:
        return "." + nanos[:width] if width else ""
    return nanos[: max(width, 1)]


def _absl_pieces(text: str) -> tuple[str, ...]:
    """Split text into strftime chunks and absl-only tokens (``%Ez``, ``%Z``...)."""
    pieces: list[str] = []
    chunk = []
    pos = 0
    for m in _ABSL.finditer(text):
        chunk.append(text[pos : m.start()])
        token = m.group()
        if token == "%%":
            chunk.append(token)
        else:
            pieces.append("".join(chunk))
            chunk = []
            pieces.append(token)
        pos = m.end()
    chunk.append(text[pos:])
    pieces.append("".join(chunk))
    return tuple(pieces)


def _render_absl(pieces: tuple[str, ...], tm: time.struct_time, seconds: int, local: bool) -> str:
    out = []
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            if piece:
                out.append(time.strftime(piece, tm))
            continue
        if piece == "%Es":
            out.append(str(seconds))
        elif piece == "%Z":
            out.append(tm.tm_zone if local else "UTC")
        elif piece == "%E4Y":
            out.append(f"{tm.tm_year:04d}")
        else:
            out.append(_offset(tm.tm_gmtoff if local else 0, piece))
    return "".join(out)


def _offset(gmtoff: int, token: str) -> str:
    sign = "-" if gmtoff < 0 else "+"
    hours, rem = divmod(abs(gmtoff), 3600)
    minutes, secs = divmod(rem, 60)
    if token == "%z":
        return f"{sign}{hours:02d}{minutes:02d}"
    if token == "%Ez":
        return f"{sign}{hours:02d}:{minutes:02d}"
    return f"{sign}{hours:02d}:{minutes:02d}:{secs:02d}"  # %E*z
