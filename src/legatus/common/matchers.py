"""Envoy's string and header matchers, shared by routing and access-log filters.

- ``StringMatcher`` is ``envoy.type.matcher.v3.StringMatcher`` (Envoy's StringMatcherImpl):
  exact, prefix, suffix, contains or ``safe_regex`` (RE2, whole-value match);
  ``ignore_case`` folds ASCII letters only and does not apply to ``safe_regex``.
- ``HeaderMatcher`` is ``envoy.config.route.v3.HeaderMatcher`` (Envoy's HeaderUtility
  HeaderData), checked against Envoy 1.40 with real requests:

  - a header that occurs several times matches when any one of its values matches (the
    values are not joined); ``invert_match`` then negates that answer;
  - an absent header matches nothing, except ``present_match: false`` and, with
    ``invert_match``, a presence matcher (``present_match: true`` or no specifier);
    ``treat_missing_header_as_empty`` makes an absent header one empty value instead;
  - ``range_match`` parses the value as a signed 64-bit decimal (absl::SimpleAtoi: optional
    sign, surrounding ASCII whitespace) and tests ``start <= value < end``;
  - the deprecated ``exact_match: ""`` matches any value;
  - ``host`` names the ``:authority`` header (in Envoy they are one header).

Header maps are ``legatus.http.headers.HeaderMap`` objects (``get_all`` gives every value)
or plain lower-case ``name -> value`` mappings (one value per name).
"""

from __future__ import annotations

from typing import Any

from legatus.common.regex import compile_regex_matcher
from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported

__all__ = ["HeaderMatcher", "StringMatcher", "ascii_lower", "header_values", "simple_atoi"]

_UPPER_TO_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_ASCII_SPACE = " \t\n\v\f\r"


def ascii_lower(value: str) -> str:
    """Lower-case ASCII letters only (absl::AsciiStrToLower), leaving other text as is."""
    return value.lower() if value.isascii() else value.translate(_UPPER_TO_LOWER)


def header_values(headers: Any, name: str) -> list[str]:
    """Every value of ``name`` in a HeaderMap or a plain mapping (empty when absent)."""
    try:
        return headers.get_all(name)
    except AttributeError:
        value = headers.get(name)
        return [] if value is None else [value]


# StringMatcher ------------------------------------------------------------------------

_EXACT, _PREFIX, _SUFFIX, _CONTAINS, _REGEX = range(5)
_STRING_KINDS = {"exact": _EXACT, "prefix": _PREFIX, "suffix": _SUFFIX, "contains": _CONTAINS}


class StringMatcher:
    """A compiled ``envoy.type.matcher.v3.StringMatcher`` (``custom`` is not supported)."""

    __slots__ = ("ignore_case", "kind", "operand")

    def __init__(self, proto, path: str) -> None:
        check_supported(
            proto,
            ("exact", "prefix", "suffix", "safe_regex", "contains", "ignore_case"),
            path,
            "StringMatcher",
        )
        which = proto.WhichOneof("match_pattern")
        if which is None:
            raise ConfigError(join_path(path, "match_pattern"), "a match pattern is required")
        self.ignore_case = proto.ignore_case and which != "safe_regex"
        if which == "safe_regex":
            self.kind = _REGEX
            self.operand: Any = compile_regex_matcher(
                proto.safe_regex, join_path(path, "safe_regex")
            )
        else:
            self.kind = _STRING_KINDS[which]
            operand = getattr(proto, which)
            self.operand = ascii_lower(operand) if self.ignore_case else operand

    def matches(self, value: str) -> bool:
        kind, operand = self.kind, self.operand
        if kind == _REGEX:
            return operand.full_match(value)
        if self.ignore_case:
            value = ascii_lower(value)
        if kind == _EXACT:
            return value == operand
        if kind == _PREFIX:
            return value.startswith(operand)
        if kind == _SUFFIX:
            return value.endswith(operand)
        return operand in value


# HeaderMatcher ------------------------------------------------------------------------

_HEADER_MATCHER_FIELDS = (
    "name",
    "exact_match",
    "safe_regex_match",
    "range_match",
    "present_match",
    "prefix_match",
    "suffix_match",
    "contains_match",
    "string_match",
    "invert_match",
    "treat_missing_header_as_empty",
)

_PRESENT, _VALUE, _H_PREFIX, _H_SUFFIX, _H_CONTAINS, _H_REGEX, _RANGE, _STRING = range(8)
_DEPRECATED_KINDS = {
    "exact_match": _VALUE,
    "prefix_match": _H_PREFIX,
    "suffix_match": _H_SUFFIX,
    "contains_match": _H_CONTAINS,
}


class HeaderMatcher:
    """One ``HeaderMatcher`` condition; ``matches(headers)`` answers for a header map."""

    __slots__ = ("alias", "invert", "kind", "name", "operand", "present", "treat_missing_as_empty")

    def __init__(self, proto, path: str) -> None:
        check_supported(proto, _HEADER_MATCHER_FIELDS, path, "HeaderMatcher")
        name = ascii_lower(proto.name)
        # Envoy keeps Host as :authority; a plain mapping may still carry "host".
        self.name = ":authority" if name == "host" else name
        self.alias = "host" if self.name == ":authority" else None
        self.invert = proto.invert_match
        self.treat_missing_as_empty = proto.treat_missing_header_as_empty
        self.present = True
        self.operand: Any = None
        which = proto.WhichOneof("header_match_specifier")
        if which is None:
            self.kind = _PRESENT
        elif which == "present_match":
            self.kind, self.present = _PRESENT, proto.present_match
        elif which == "range_match":
            self.kind = _RANGE
            self.operand = (proto.range_match.start, proto.range_match.end)
        elif which == "safe_regex_match":
            self.kind = _H_REGEX
            self.operand = compile_regex_matcher(
                proto.safe_regex_match, join_path(path, "safe_regex_match")
            )
        elif which == "string_match":
            self.kind = _STRING
            self.operand = StringMatcher(proto.string_match, join_path(path, "string_match"))
        else:
            self.kind, self.operand = _DEPRECATED_KINDS[which], getattr(proto, which)

    def matches(self, headers) -> bool:
        values = header_values(headers, self.name)
        if not values and self.alias is not None:
            values = header_values(headers, self.alias)
        if not values:
            if not self.treat_missing_as_empty:
                if self.kind != _PRESENT:
                    return False
                return self.present if self.invert else not self.present
            values = [""]
        for value in values:
            if self._specific(value):
                return not self.invert
        return self.invert

    def _specific(self, value: str) -> bool:
        kind, operand = self.kind, self.operand
        if kind == _PRESENT:
            return self.present
        if kind == _VALUE:
            return not operand or value == operand
        if kind == _STRING:
            return operand.matches(value)
        if kind == _H_REGEX:
            return operand.full_match(value)
        if kind == _H_PREFIX:
            return value.startswith(operand)
        if kind == _H_SUFFIX:
            return value.endswith(operand)
        if kind == _H_CONTAINS:
            return operand in value
        number = simple_atoi(value)
        return number is not None and operand[0] <= number < operand[1]


def simple_atoi(value: str) -> int | None:
    """absl::SimpleAtoi into int64: optional sign, ASCII whitespace around, else None."""
    text = value.strip(_ASCII_SPACE)
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    number = int(text)
    return number if _INT64_MIN <= number <= _INT64_MAX else None
