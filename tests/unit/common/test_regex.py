"""safe_regex on RE2: Envoy's errors, program-size limit, full match and GlobalReplace."""

from __future__ import annotations

import pytest
from envoy.type.matcher.v3 import regex_pb2

from legatus.common.regex import RegexRewrite, compile_regex, compile_regex_matcher
from legatus.config.errors import ConfigError
from legatus.config.proto_json import parse


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("(", "missing ): ("),  # Envoy 1.40 reports exactly RE2's text
        ("(a)\\1", "invalid escape sequence: \\1"),  # no backreferences in RE2
        ("(?=a)", "invalid perl operator: (?="),  # no lookaround
        ("a{1001}", "invalid repetition size: {1001}"),
        ("[z-a]", "invalid character class range: z-a"),
    ],
)
def test_patterns_re2_refuses_are_config_errors(pattern, message):
    with pytest.raises(ConfigError) as e:
        compile_regex(pattern, "m.regex")
    assert e.value.path == "m.regex"
    assert e.value.message == message


def test_program_size_over_100_is_refused_with_envoys_message():
    with pytest.raises(ConfigError) as e:
        compile_regex("a{1000}", "m.regex")
    assert e.value.message == (
        "regex 'a{1000}' RE2 program size of 1004 > max program size of 100 set for the error "
        "level threshold. Increase configured max program size if necessary."
    )


def test_deprecated_max_program_size_replaces_the_threshold():
    proto = parse(
        {"regex": "a{1000}", "google_re2": {"max_program_size": 2000}}, regex_pb2.RegexMatcher
    )
    assert compile_regex_matcher(proto, "m").full_match("a" * 1000)
    proto.google_re2.max_program_size.value = 10
    with pytest.raises(ConfigError) as e:
        compile_regex_matcher(proto, "m")
    assert e.value.path == "m.regex"
    assert e.value.message == (
        "regex 'a{1000}' RE2 program size of 1004 > max program size of 10. Increase "
        "configured max program size if necessary."
    )


def test_re2_only_syntax_is_accepted():
    assert compile_regex("\\p{Greek}", "").full_match("λ")
    assert compile_regex("[[:alpha:]]+", "").full_match("abc")
    assert compile_regex("(?P<n>a)b", "").full_match("ab")


def test_full_match_needs_the_whole_value():
    regex = compile_regex("/re/[0-9]+", "")
    assert regex.full_match("/re/12")
    assert not regex.full_match("/re/12x")
    assert not regex.full_match("x/re/12")
    assert not compile_regex("a$", "").full_match("a\n")  # no Python-style $ before \n


def test_matching_is_on_utf8_and_keeps_undecodable_bytes():
    assert compile_regex("é.", "").full_match("éa")
    raw = b"\xff".decode("utf-8", "surrogateescape")
    assert compile_regex("\\C", "").full_match(raw)  # one byte, matched as a byte


def rewrite(pattern: str, substitution: str, value: str) -> str:
    return RegexRewrite(compile_regex(pattern, ""), substitution).apply(value)


@pytest.mark.parametrize(
    ("pattern", "substitution", "value", "expected"),
    [
        ("^/rx/([a-z]+)/([0-9]+)$", "/\\2/\\1", "/rx/abc/12", "/12/abc"),
        ("a", "b", "/rxall/aaa", "/rxbll/bbb"),  # every match
        ("x*", "-", "/rxe/ab", "-/-r-e-/-a-b-"),  # RE2's empty matches (Envoy answers this)
        ("", "-", "é!", "-é-!-"),  # an empty match steps over a whole UTF-8 character
        ("a", "\\5", "/aaa", "/aaa"),  # a group the pattern lacks: no replacement at all
        ("(a)", "<\\1\\n\\1>", "/aaa", "/<a<a<a"),  # invalid escape: rewrite stops there
        ("a", "\\\\", "a", "\\"),  # \\ is a backslash
        ("(a)|(b)", "[\\2]", "ab", "[][b]"),  # an unmatched group is empty
        ("z", "y", "abc", "abc"),
        ("^/prefix", "", "/prefix/rest", "/rest"),
    ],
)
def test_rewrite_is_re2_global_replace(pattern, substitution, value, expected):
    assert rewrite(pattern, substitution, value) == expected
