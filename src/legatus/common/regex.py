"""Envoy's ``safe_regex``: Google RE2, compiled once at config time.

Envoy matches every ``envoy.type.matcher.v3.RegexMatcher`` with RE2 (its only regex engine),
so legatus does too, through the ``google-re2`` package (the RE2 C++ library, not a
re-implementation): the same syntax is accepted and refused, matching runs in linear time
whatever the pattern (no catastrophic backtracking on traffic), and errors carry RE2's own
text (``missing ): (``, ``invalid escape sequence: \\1``), as Envoy reports them.

What follows Envoy's ``source/common/common/regex.cc``:

- patterns compile in RE2's UTF-8 mode with logging off (``RE2::Quiet``);
- a pattern whose RE2 program is larger than 100 instructions is refused with Envoy's
  message (Envoy's ``re2.max_program_size.error_level`` runtime default; legatus has no
  runtime layer, so the default holds), or larger than ``google_re2.max_program_size`` when
  that deprecated field is set;
- ``full_match`` is ``RE2::FullMatch`` (the whole value must match);
- ``RegexRewrite.apply`` is ``RE2::GlobalReplace`` with RE2's rewrite syntax (``\\0`` to
  ``\\9`` name groups, ``\\\\`` is a backslash), including its treatment of empty matches.

Text is matched as UTF-8 bytes; strings carrying undecodable bytes (surrogate-escaped, as
the codecs produce them) are matched on their original bytes.

The matcher calls the compiled ``re2._re2.RE2`` object directly: the ``re``-compatible
wrapper of the package costs about five times as much per match (it builds a generator
and a match object), and the hot path only needs a yes/no and spans.
"""

from __future__ import annotations

import re2
from re2 import _re2

from legatus.config.errors import ConfigError, join_path

__all__ = ["Regex", "RegexRewrite", "compile_regex", "compile_regex_matcher", "compile_rewrite"]

# Envoy's default for the runtime key re2.max_program_size.error_level.
MAX_PROGRAM_SIZE = 100

_ANCHOR_BOTH = _re2.RE2.Anchor.ANCHOR_BOTH
_UNANCHORED = _re2.RE2.Anchor.UNANCHORED
_NO_MATCH = (-1, -1)
_BACKSLASH, _DIGIT_0, _DIGIT_9 = 0x5C, 0x30, 0x39


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False
    return options


_OPTIONS = _options()


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


class Regex:
    """One compiled RE2 pattern. Immutable; matching never raises."""

    __slots__ = ("_re", "groups", "pattern")

    def __init__(self, pattern: str, compiled) -> None:
        self.pattern = pattern
        self._re = compiled
        self.groups: int = compiled.NumberOfCapturingGroups()

    def full_match(self, value: str) -> bool:
        """RE2::FullMatch: does the whole of ``value`` match?"""
        data = _encode(value)
        return self._re.Match(_ANCHOR_BOTH, data, 0, len(data))[0] != _NO_MATCH

    def spans(self, data: bytes, pos: int) -> list[tuple[int, int]] | None:
        """The spans of the leftmost match at or after ``pos`` in ``data``, or None."""
        spans = self._re.Match(_UNANCHORED, data, pos, len(data))
        return None if spans[0] == _NO_MATCH else spans

    def __repr__(self) -> str:
        return f"Regex({self.pattern!r})"


def compile_regex(pattern: str, path: str, *, max_program_size: int | None = None) -> Regex:
    """Compile ``pattern`` as Envoy does; ConfigError at ``path`` when RE2 refuses it.

    ``max_program_size`` is the deprecated per-matcher ``google_re2.max_program_size``; when
    None, Envoy's error-level threshold (100) applies, with Envoy's wording for each case.
    """
    compiled = _re2.RE2(_encode(pattern), _OPTIONS)
    if not compiled.ok():
        raise ConfigError(path, _decode(compiled.error()))
    size = compiled.ProgramSize()
    if max_program_size is not None:
        if size > max_program_size:
            raise ConfigError(
                path,
                f"regex '{pattern}' RE2 program size of {size} > max program size of "
                f"{max_program_size}. Increase configured max program size if necessary.",
            )
    elif size > MAX_PROGRAM_SIZE:
        raise ConfigError(
            path,
            f"regex '{pattern}' RE2 program size of {size} > max program size of "
            f"{MAX_PROGRAM_SIZE} set for the error level threshold. Increase configured max "
            "program size if necessary.",
        )
    return Regex(pattern, compiled)


def compile_regex_matcher(proto, path: str) -> Regex:
    """Compile an ``envoy.type.matcher.v3.RegexMatcher`` or an ``xds.type.matcher.v3`` one
    (``path`` names the matcher).

    Errors point at ``<path>.regex``, the field an operator edits.
    """
    max_program_size = None
    re2 = proto.google_re2  # (xds.type.matcher.v3's GoogleRE2 has no max_program_size)
    if (
        proto.HasField("google_re2")
        and "max_program_size" in re2.DESCRIPTOR.fields_by_name
        and re2.HasField("max_program_size")
    ):
        max_program_size = proto.google_re2.max_program_size.value
    return compile_regex(proto.regex, join_path(path, "regex"), max_program_size=max_program_size)


class RegexRewrite:
    """A pattern and an RE2 rewrite string: ``apply`` is ``RE2::GlobalReplace``.

    The rewrite is parsed once into literal bytes and group numbers. As in RE2, a rewrite
    that names a group the pattern does not have makes every replacement a no-op (the value
    comes back unchanged), and an invalid escape (``\\n``, a trailing ``\\``) ends the
    rewrite where it stands (RE2 stops rewriting there and keeps what it wrote).
    """

    __slots__ = ("_noop", "_pieces", "regex", "substitution")

    def __init__(self, regex: Regex, substitution: str) -> None:
        self.regex = regex
        self.substitution = substitution
        self._pieces, max_group = _parse_rewrite(_encode(substitution))
        self._noop = max_group > regex.groups

    def apply(self, value: str) -> str:
        if self._noop:
            return value
        data = _encode(value)
        end = len(data)
        out = bytearray()
        pos = 0
        last_end = -1
        count = 0
        regex, pieces = self.regex, self._pieces
        while pos <= end:
            spans = regex.spans(data, pos)
            if spans is None:
                break
            start, stop = spans[0]
            if pos < start:
                out += data[pos:start]
            if start == last_end and start == stop:
                # An empty match right where the last match ended: step over one character
                # (a whole UTF-8 sequence, as RE2 does in UTF-8 mode) and try again.
                step = _char_length(data, pos)
                out += data[pos : pos + step]
                pos += step or 1
                continue
            for piece in pieces:
                if piece.__class__ is int:
                    group_start, group_stop = spans[piece]
                    if group_start >= 0:
                        out += data[group_start:group_stop]
                else:
                    out += piece
            pos = last_end = stop
            count += 1
        if not count:
            return value
        if pos < end:
            out += data[pos:]
        return _decode(bytes(out))

    def __repr__(self) -> str:
        return f"RegexRewrite({self.regex.pattern!r}, {self.substitution!r})"


def compile_rewrite(proto, path: str) -> RegexRewrite:
    """Compile an ``envoy.type.matcher.v3.RegexMatchAndSubstitute``."""
    regex = compile_regex_matcher(proto.pattern, join_path(path, "pattern"))
    return RegexRewrite(regex, proto.substitution)


def _parse_rewrite(rewrite: bytes) -> tuple[tuple[bytes | int, ...], int]:
    """RE2::Rewrite's grammar: pieces (bytes or group numbers) and RE2::MaxSubmatch."""
    pieces: list[bytes | int] = []
    literal = bytearray()
    i, n = 0, len(rewrite)
    while i < n:
        c = rewrite[i]
        if c != _BACKSLASH:
            literal.append(c)
            i += 1
            continue
        nxt = rewrite[i + 1] if i + 1 < n else -1
        if _DIGIT_0 <= nxt <= _DIGIT_9:
            if literal:
                pieces.append(bytes(literal))
                literal.clear()
            pieces.append(nxt - _DIGIT_0)
        elif nxt == _BACKSLASH:
            literal.append(_BACKSLASH)
        else:
            break  # RE2 logs "invalid rewrite pattern" and stops rewriting here
        i += 2
    if literal:
        pieces.append(bytes(literal))
    return tuple(pieces), _max_submatch(rewrite)


def _max_submatch(rewrite: bytes) -> int:
    """RE2::MaxSubmatch: the highest ``\\N`` in the whole rewrite (escaped pairs skipped)."""
    highest = 0
    i, n = 0, len(rewrite)
    while i < n:
        if rewrite[i] == _BACKSLASH:
            i += 1
            if i < n and _DIGIT_0 <= rewrite[i] <= _DIGIT_9:
                highest = max(highest, rewrite[i] - _DIGIT_0)
        i += 1
    return highest


def _char_length(data: bytes, pos: int) -> int:
    """Bytes in the UTF-8 sequence starting at ``pos``: 0 at the end, 1 when invalid."""
    if pos >= len(data):
        return 0
    lead = data[pos]
    if lead < 0x80:
        return 1
    if lead >> 5 == 0b110:
        length = 2
    elif lead >> 4 == 0b1110:
        length = 3
    elif lead >> 3 == 0b11110:
        length = 4
    else:
        return 1
    try:
        data[pos : pos + length].decode("utf-8")
    except UnicodeDecodeError:
        return 1
    return length
