"""Envoy's request path normalization (PathUtil), as the connection manager applies it.

Three HCM options change ``:path`` before any filter or route sees it, so that what routing
and RBAC match is what the upstream gets (the point of them: ``/admin`` must not be reachable
as ``/public/../admin`` or ``/admin%2F``):

- ``path_with_escaped_slashes_action``: ``%2F`` / ``%5C`` (either case) in the path are left
  alone, rejected, unescaped and forwarded, or unescaped and redirected to;
- ``normalize_path``: RFC 3986 normalization the way Envoy does it (it uses Chromium's URL
  path canonicalizer): dot segments removed (``%2E`` counts as a dot), ``\\`` taken as ``/``,
  escaped unreserved characters (``%41``, ``%7E``...) decoded, characters a path may not carry
  raw escaped in upper-case hex, other escapes (``%2f``, ``%3a``, invalid ones like ``%zz``)
  kept as sent; an escaped NUL (``%00``) makes the path invalid;
- ``merge_slashes``: runs of ``/`` become one.

They run in that order, on the path only: the query (from the first ``?``) is kept as sent. A
path with a fragment (``#``) is rejected whatever the options, as Envoy 1.40 does.
Facts checked against Envoy 1.40 in tests/differential/test_http_path_normalization.py.
"""

from __future__ import annotations

import enum
import re
from random import getrandbits


class EscapedSlashesAction(enum.IntEnum):
    """``HttpConnectionManager.PathWithEscapedSlashesAction`` (same names and numbers)."""

    IMPLEMENTATION_SPECIFIC_DEFAULT = 0
    KEEP_UNCHANGED = 1
    REJECT_REQUEST = 2
    UNESCAPE_AND_REDIRECT = 3
    UNESCAPE_AND_FORWARD = 4


class NormalizeResult(enum.Enum):
    """What the connection manager does with the request (Envoy's NormalizePathAction)."""

    CONTINUE = 0
    REJECT = 1  # 400, path_normalization_failed
    REDIRECT = 2  # 307 to the new path (a gRPC request gets the 400 instead)


_HEX = frozenset(b"0123456789abcdefABCDEF")
# RFC 3986 unreserved characters: an escaped one is decoded (Chromium's canonical form).
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# What Chromium escapes in a path: controls, space, '"', '#', '<', '>', '^', '`', '{', '|',
# '}', DEL and every non-ASCII byte. (HTTP/1 requests cannot carry most of them raw; HTTP/2
# ones can.)
_ESCAPED = frozenset(range(0x21)) | frozenset(b'"#<>^`{|}') | frozenset(range(0x7F, 0x100))
# Bytes that make canonicalization do something; a path without any is already canonical
# unless it has a dot segment.
_NEEDS_WORK = re.compile(r'[%\\"#<>^`{|}\x00-\x20\x7f-\xff]')
_ESCAPED_SLASH = re.compile(r"%(?:2[fF]|5[cC])")
_SLASHES = re.compile(r"//+")


def split_query(path: str) -> tuple[str, str]:
    """(the path part, the rest from the first ``?`` on, or "")."""
    i = path.find("?")
    return (path, "") if i < 0 else (path[:i], path[i:])


def unescape_slashes(path: str) -> str:
    """``%2F`` -> ``/`` and ``%5C`` -> ``\\`` in the path part (Envoy's unescapeSlashes)."""
    part, query = split_query(path)
    return _ESCAPED_SLASH.sub(_slash_of, part) + query


def _slash_of(m: re.Match) -> str:
    return "/" if m.group(0)[2] in "fF" else "\\"


def merge_slashes(path: str) -> str:
    """Runs of ``/`` in the path part become one (Envoy's mergeSlashes)."""
    part, query = split_query(path)
    return _SLASHES.sub("/", part) + query


def canonical_path(path: str) -> str | None:
    """The path part canonicalized (see the module doc) plus the query as sent; None if the
    path is invalid (an escaped NUL)."""
    part, query = split_query(path)
    if _NEEDS_WORK.search(part) is not None:
        part = _canonical_characters(part)
        if part is None:
            return None
    if not part.startswith("/"):
        part = "/" + part
    if "/." in part:
        part = _remove_dot_segments(part)
    return part + query


def _canonical_characters(part: str) -> str | None:
    raw = part.encode("latin-1")  # header values are latin-1 text of the bytes received
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == 0x25:  # '%'
            if i + 2 < n and raw[i + 1] in _HEX and raw[i + 2] in _HEX:
                value = int(raw[i + 1 : i + 3], 16)
                if value == 0:
                    return None
                if value in _UNRESERVED:
                    out.append(value)
                else:
                    out += raw[i : i + 3]
                i += 3
                continue
            out.append(c)  # not an escape: kept as sent
        elif c == 0x5C:  # '\'
            out.append(0x2F)
        elif c in _ESCAPED:
            out += b"%%%02X" % c
        else:
            out.append(c)
        i += 1
    return out.decode("latin-1")


def _remove_dot_segments(part: str) -> str:
    """RFC 3986 5.2.4 on an absolute path, as Chromium does it: a final ``.`` or ``..`` leaves
    a trailing slash, ``..`` at the root stays at the root."""
    segments = part[1:].split("/")
    last = len(segments) - 1
    out: list[str] = []
    for i, segment in enumerate(segments):
        if segment == ".":
            if i == last:
                out.append("")
        elif segment == "..":
            if out:
                out.pop()
            if i == last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)


class PathNormalization:
    """One HCM's compiled path options: ``normalize(headers)`` applies them to ``:path``."""

    __slots__ = ("escaped_slashes", "merge", "normalize")

    def __init__(self, *, normalize: bool, merge: bool, escaped_slashes: EscapedSlashesAction):
        self.normalize = normalize
        self.merge = merge
        self.escaped_slashes = escaped_slashes

    @property
    def active(self) -> bool:
        return (
            self.normalize
            or self.merge
            or self.escaped_slashes is not EscapedSlashesAction.KEEP_UNCHANGED
        )

    def apply(self, path: str) -> tuple[NormalizeResult, str]:
        """(what to do, the path to go on with)."""
        result = NormalizeResult.CONTINUE
        if "#" in path:
            return NormalizeResult.REJECT, path
        action = self.escaped_slashes
        if action is not EscapedSlashesAction.KEEP_UNCHANGED:
            unescaped = unescape_slashes(path)
            if unescaped != path:
                path = unescaped  # even when refused: the access log shows it unescaped
                if action is EscapedSlashesAction.REJECT_REQUEST:
                    return NormalizeResult.REJECT, path
                if action is EscapedSlashesAction.UNESCAPE_AND_REDIRECT:
                    result = NormalizeResult.REDIRECT
        if self.normalize:
            canonical = canonical_path(path)
            if canonical is None:
                return NormalizeResult.REJECT, path
            path = canonical
        if self.merge:
            path = merge_slashes(path)
        return result, path


FRAGMENT_ONLY = PathNormalization(
    normalize=False, merge=False, escaped_slashes=EscapedSlashesAction.KEEP_UNCHANGED
)


def compile_path_normalization(proto, runtime) -> PathNormalization | None:
    """From an HttpConnectionManager: None when no option is on (the connection manager then
    only rejects fragments).

    As in Envoy, the runtime decides the defaults once, when the config is loaded:
    ``http_connection_manager.normalize_path`` (a percentage, default 0) when
    ``normalize_path`` is unset, ``http_connection_manager.path_with_escaped_slashes_action``
    (the action's number) for ``IMPLEMENTATION_SPECIFIC_DEFAULT``, and
    ``http_connection_manager.path_with_escaped_slashes_action_enabled`` (a percentage,
    default 100) switching the action off.
    """
    if proto.HasField("normalize_path"):
        normalize = proto.normalize_path.value
    else:
        normalize = runtime is not None and runtime.feature_enabled(
            "http_connection_manager.normalize_path", 0, 100, getrandbits(63)
        )
    action = EscapedSlashesAction(proto.path_with_escaped_slashes_action)
    enabled = runtime is None or runtime.feature_enabled(
        "http_connection_manager.path_with_escaped_slashes_action_enabled", 100, 100,
        getrandbits(63),
    )  # fmt: skip
    if not enabled:
        action = EscapedSlashesAction.KEEP_UNCHANGED
    elif action is EscapedSlashesAction.IMPLEMENTATION_SPECIFIC_DEFAULT:
        value = 0 if runtime is None else runtime.get_integer(
            "http_connection_manager.path_with_escaped_slashes_action", 0
        )  # fmt: skip
        try:
            action = EscapedSlashesAction(value)
        except ValueError:
            action = EscapedSlashesAction.KEEP_UNCHANGED
        if action is EscapedSlashesAction.IMPLEMENTATION_SPECIFIC_DEFAULT:
            action = EscapedSlashesAction.KEEP_UNCHANGED
    compiled = PathNormalization(
        normalize=normalize, merge=proto.merge_slashes, escaped_slashes=action
    )
    return compiled if compiled.active else None
