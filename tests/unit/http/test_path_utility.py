"""http/path_utility.py: the path transformations of the HCM's path options. The expected
values were read from Envoy 1.40 (tests/differential/test_http_path_normalization.py sends
the same paths through both proxies); bytes HTTP/1 cannot carry raw are escaped as
Chromium's canonicalizer does."""

from __future__ import annotations

import pytest

from legatus.http.path_utility import (
    EscapedSlashesAction,
    NormalizeResult,
    PathNormalization,
    canonical_path,
    merge_slashes,
    unescape_slashes,
)

CANONICAL = [
    ("/a/b/../c", "/a/c"), ("/a/b/./c", "/a/b/c"), ("a/b/../c", "/a/c"), ("/a/b/..", "/a/"),
    ("/a/b/.", "/a/b/"), ("/..", "/"), ("//..", "/"), ("/./", "/"), ("/a/..\\c", "/c"),
    ("/a/%2E%2e/%2Fx", "/%2Fx"), ("/a/%2E%2E%2fb", "/a/..%2fb"), ("/a%2eb", "/a.b"),
    ("/a/%41%42/c", "/a/AB/c"), ("/a/%7e%7E/%2d%5f", "/a/~~/-_"), ("/a/%3a%3A", "/a/%3a%3A"),
    ("/a/%7b%7B", "/a/%7b%7B"), ("/%zz/a", "/%zz/a"), ("/a%", "/a%"), ("/a/%4", "/a/%4"),
    ('/a/"x"', "/a/%22x%22"), ("/a/{x}|^`<>", "/a/%7Bx%7D%7C%5E%60%3C%3E"), ("/a/[x]", "/a/[x]"),
    ("/a/b/..?x=/../y", "/a/?x=/../y"), ("/a/.b/..c/...", "/a/.b/..c/..."), ("/a//b", "/a//b"),
    ("/a/\x80\xff b\x01", "/a/%80%FF%20b%01"), ("/x", "/x"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "expected"), CANONICAL)
def test_canonical_path(path, expected):
    assert canonical_path(path) == expected


@pytest.mark.parametrize("path", ["/a/%00/b", "/a/%%0000/b", "/xyz/.%00../abc"])
def test_an_escaped_nul_is_invalid(path):
    assert canonical_path(path) is None


def test_merge_and_unescape_touch_the_path_only():
    assert merge_slashes("//a///b/?x=//y") == "/a/b/?x=//y"
    assert unescape_slashes("/a%2Fb%5cc?q=%2F") == "/a/b\\c?q=%2F"


def _options(action, normalize=False, merge=False):
    return PathNormalization(normalize=normalize, merge=merge, escaped_slashes=action)


def test_order_unescape_then_normalize_then_merge():
    options = _options(EscapedSlashesAction.UNESCAPE_AND_FORWARD, normalize=True, merge=True)
    assert options.apply("/a/%2e%2e%2Fb//c") == (NormalizeResult.CONTINUE, "/b/c")


def test_actions():
    reject = _options(EscapedSlashesAction.REJECT_REQUEST)
    assert reject.apply("/a%2fb") == (NormalizeResult.REJECT, "/a/b")
    assert reject.apply("/ab?x=%2f") == (NormalizeResult.CONTINUE, "/ab?x=%2f")
    redirect = _options(EscapedSlashesAction.UNESCAPE_AND_REDIRECT, normalize=True)
    assert redirect.apply("/a/../b%2f") == (NormalizeResult.REDIRECT, "/b/")
    assert redirect.apply("/a/../b") == (NormalizeResult.CONTINUE, "/b")
    keep = _options(EscapedSlashesAction.KEEP_UNCHANGED)
    assert not keep.active
    assert keep.apply("/a#b")[0] is NormalizeResult.REJECT
