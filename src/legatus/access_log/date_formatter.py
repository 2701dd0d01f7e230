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

    __slots__ = ("_cache_key", "_cache_parts", "_has_subseconds", "_local", "_segments")

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
        self._has_subseconds = any(s[0] == "sub" for s in segments)
        self._cache_key: int | None = None
        self._cache_parts: list[str] = []
        self.format(0.0)  # strftime rejects some formats (embedded NUL): fail at config time

    def format(self, when: float) -> str:
        micros = round(when * 1_000_000)
        seconds, fraction = divmod(micros, 1_000_000)
        if seconds != self._cache_key:
            self._cache_parts = self._render_second(seconds)
            self._cache_key = seconds
        parts = self._cache_parts
        if not self._has_subseconds:
            return "".join(parts)
        nanos = f"{fraction:06d}000"
        out = []
        for segment, cached in zip(self._segments, parts, strict=True):
            out.append(_subseconds(segment, nanos) if segment[0] == "sub" else cached)
        return "".join(out)

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


def _subseconds(segment: tuple, nanos: str) -> str:
    _, width, with_dot = segment
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
