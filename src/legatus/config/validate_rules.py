"""Compiled checks for one value under one protoc-gen-validate rule set.

``compile_check(kind, rules)`` turns the rules of one kind (the name of the
``validate.FieldRules.type`` oneof member: ``"string"``, ``"uint32"``, ``"duration"``, ...)
into a function ``check(value) -> message | None``. Compiling once per field lets the walker
in ``validate.py`` run each check as a closure over plain Python values.

A check returns the first violation only, in the order PGV's C++ templates test them (which
is what Envoy runs), and with their message texts: numbers, durations and string literals
are printed the way the Go generator printed them into those messages (``0s``, ``1e+06``,
``"^[^\\x00\\n\\r]*$"``).
"""

from __future__ import annotations

import functools
import re
import socket
import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

Check = Callable[[Any], "str | None"]

NUMERIC_KINDS = frozenset(
    {
        "float",
        "double",
        "int32",
        "int64",
        "uint32",
        "uint64",
        "sint32",
        "sint64",
        "fixed32",
        "fixed64",
        "sfixed32",
        "sfixed64",
    }
)

# The patterns PGV's generator substitutes for `well_known_regex` (module/checker.go).
_HEADER_NAME = r"^:?[0-9a-zA-Z!#$%&'*+-.^_|~`]+$"
_HEADER_VALUE = "^[^\x00-\x08\x0a-\x1f\x7f]*$"
_HEADER_STRING = "^[^\x00\x0a\x0d]*$"  # `strict: false`
_UUID = re.compile("[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DURATION_MAX_SECONDS = 315_576_000_000
_NS = 1_000_000_000


# Formatting, as Go's fmt printed the rule values into PGV's messages


def go_quote(s: str | bytes) -> str:
    """Go's ``%q``: a double-quoted literal with C-like escapes."""
    if isinstance(s, bytes):
        s = s.decode("utf-8", "backslashreplace")
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif not ch.isprintable() and o > 0x7F:
            out.append(f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


_GO_ESCAPES = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    "\\": "\\\\",
    '"': '\\"',
}


def go_float(x: float, bits: int = 64) -> str:
    """Go's ``%v`` of a float32/float64: shortest digits, ``%e`` outside [1e-4, 1e6)."""
    if x != x:
        return "NaN"
    if x in (float("inf"), float("-inf")):
        return "+Inf" if x > 0 else "-Inf"
    if x == 0:
        return "-0" if str(x).startswith("-") else "0"
    for prec in range(17 if bits == 64 else 9):
        text = f"{x:.{prec}e}"
        if _same_float(float(text), x, bits):
            break
    mantissa, exp_text = text.split("e")
    exp = int(exp_text)
    sign = "-" if mantissa.startswith("-") else ""
    digits = mantissa.lstrip("-").replace(".", "").rstrip("0") or "0"
    if exp < -4 or exp >= 6:  # strconv's 'g' with shortest precision
        frac = f".{digits[1:]}" if len(digits) > 1 else ""
        return f"{sign}{digits[0]}{frac}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if exp < 0:
        return f"{sign}0.{'0' * (-exp - 1)}{digits}"
    whole, frac = digits[: exp + 1].ljust(exp + 1, "0"), digits[exp + 1 :]
    return f"{sign}{whole}.{frac}" if frac else f"{sign}{whole}"


def _same_float(a: float, b: float, bits: int) -> bool:
    if bits == 64:
        return a == b
    try:
        return struct.unpack("f", struct.pack("f", a))[0] == b
    except OverflowError:
        return False


def go_duration(ns: int) -> str:
    """Go's ``time.Duration.String()``: ``0s``, ``1.5s``, ``100ms``, ``1m30s``, ``1h0m0s``."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u < _NS:
        if u < 1_000:
            return f"{sign}{u}ns"
        if u < 1_000_000:
            return f"{sign}{_frac(u, 3)}µs"
        return f"{sign}{_frac(u, 6)}ms"
    text = f"{_frac(u % (60 * _NS), 9)}s"
    minutes = u // (60 * _NS)
    if minutes:
        text = f"{minutes % 60}m{text}"
        if minutes // 60:
            text = f"{minutes // 60}h{text}"
    return sign + text


def _frac(value: int, prec: int) -> str:
    whole, frac = divmod(value, 10**prec)
    digits = f"{frac:0{prec}d}".rstrip("0") if prec else ""
    return f"{whole}.{digits}" if digits else str(whole)


def go_timestamp(ns: int) -> str:
    """Go's ``time.Time.String()`` of a UTC instant."""
    seconds, frac = divmod(ns, _NS)
    when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
    digits = f".{frac:09d}".rstrip("0") if frac else ""
    return f"{when:%Y-%m-%d %H:%M:%S}{digits} +0000 UTC"


def go_list(values: Any, fmt: Callable[[Any], str] = str) -> str:
    """Go's ``%v`` of a slice: ``[a b c]``."""
    return "[" + " ".join(fmt(v) for v in values) + "]"


def _float_fmt(bits: int) -> Callable[[Any], str]:
    return functools.partial(go_float, bits=bits)


# Ranges (numbers, durations and timestamps, compared as ints/floats)


def _range_check(rules: Any, conv: Callable[[Any], Any], fmt: Callable[[Any], str]) -> Check | None:
    """PGV's lt/lte/gt/gte, including the "outside range" meaning when the bounds cross."""

    def bound(name: str) -> Any:
        return conv(getattr(rules, name)) if rules.HasField(name) else None

    lt, lte, gt, gte = bound("lt"), bound("lte"), bound("gt"), bound("gte")
    hi, hi_incl = (lt, False) if lt is not None else (lte, True)
    lo, lo_incl = (gt, False) if gt is not None else (gte, True)
    if hi is None and lo is None:
        return None
    if lo is None:
        text = f"value must be less than {'or equal to ' if hi_incl else ''}{fmt(hi)}"
        if hi_incl:
            return lambda v: text if v > hi else None
        return lambda v: text if v >= hi else None
    if hi is None:
        text = f"value must be greater than {'or equal to ' if lo_incl else ''}{fmt(lo)}"
        if lo_incl:
            return lambda v: text if v < lo else None
        return lambda v: text if v <= lo else None

    def below_hi(v: Any) -> bool:
        return v <= hi if hi_incl else v < hi

    def above_lo(v: Any) -> bool:
        return v >= lo if lo_incl else v > lo

    if hi > lo:
        text = (
            f"value must be inside range {'[' if lo_incl else '('}{fmt(lo)}, "
            f"{fmt(hi)}{']' if hi_incl else ')'}"
        )
        return lambda v: None if above_lo(v) and below_hi(v) else text
    # Crossed bounds (e.g. lt: 5, gt: 10) exclude the band between them.
    left, right = "(" if hi_incl else "[", ")" if lo_incl else "]"
    text = f"value must be outside range {left}{fmt(hi)}, {fmt(lo)}{right}"
    return lambda v: text if not below_hi(v) and not above_lo(v) else None


def _in_check(rules: Any, conv: Callable[[Any], Any], fmt: Callable[[Any], str]) -> Check | None:
    allowed = [conv(v) for v in getattr(rules, "in")]
    banned = [conv(v) for v in rules.not_in]
    if allowed:
        allowed_set, text = frozenset(allowed), f"value must be in list {go_list(allowed, fmt)}"
        return lambda v: None if v in allowed_set else text
    if banned:
        banned_set, text = frozenset(banned), f"value must not be in list {go_list(banned, fmt)}"
        return lambda v: text if v in banned_set else None
    return None


def _chain(checks: list[Check | None], ignore_empty: bool = False) -> Check | None:
    live = tuple(c for c in checks if c is not None)
    if not live:
        return None
    if len(live) == 1 and not ignore_empty:
        return live[0]

    def check(value: Any) -> str | None:
        if ignore_empty and not value:
            return None
        for c in live:
            message = c(value)
            if message is not None:
                return message
        return None

    return check


def _const_check(rules: Any, conv: Callable[[Any], Any], fmt: Callable[[Any], str]) -> Check | None:
    if not rules.HasField("const"):
        return None
    const = conv(rules.const)
    text = f"value must equal {fmt(const)}"
    return lambda v: None if v == const else text


def _identity(v: Any) -> Any:
    return v


# Numbers, bools, enums


def _numeric(kind: str, rules: Any) -> Check | None:
    fmt: Callable[[Any], str] = str
    if kind in ("float", "double"):
        fmt = _float_fmt(32 if kind == "float" else 64)
    return _chain(
        [
            _const_check(rules, _identity, fmt),
            _range_check(rules, _identity, fmt),
            _in_check(rules, _identity, fmt),
        ],
        ignore_empty=rules.ignore_empty,
    )


def _bool(rules: Any) -> Check | None:
    return _const_check(rules, _identity, lambda v: "true" if v else "false")


def _enum(rules: Any, enum_type: Any) -> Check | None:
    def fmt(number: int) -> str:
        value = enum_type.values_by_number.get(number) if enum_type is not None else None
        return value.name if value is not None else str(number)

    checks = [_const_check(rules, _identity, fmt), _in_check(rules, _identity, fmt)]
    if rules.defined_only and enum_type is not None:
        defined = frozenset(enum_type.values_by_number)
        text = "value must be one of the defined enum values"
        checks.append(lambda v: None if v in defined else text)
    return _chain(checks)


# Strings and bytes


@functools.cache
def compile_pattern(pattern: str) -> re.Pattern[str] | None:
    """An RE2 pattern as a Python regex (None if Python cannot express it: not checked)."""
    try:
        return re.compile(pattern.replace(r"\z", r"\Z"))
    except re.error:
        return None


def _length_check(
    rules: Any, exact: str, lo: str, hi: str, measure: Callable[[Any], int], unit: str
) -> Check | None:
    """PGV's len / min_len / max_len family (also for the *_bytes rules)."""
    n_min = getattr(rules, lo) if rules.HasField(lo) else None
    n_max = getattr(rules, hi) if rules.HasField(hi) else None
    if rules.HasField(exact) or (n_min is not None and n_min == n_max):
        n = getattr(rules, exact) if rules.HasField(exact) else n_min
        text = f"value must be {n} characters"
        if unit != "chars":
            text = f"value length must be {n} bytes"
        return lambda v: None if measure(v) == n else text
    if n_min is not None and n_max is not None:
        text = (
            f"value must have between {n_min} and {n_max} characters inclusive"
            if unit == "chars"
            else f"value length must be between {n_min} and {n_max} bytes, inclusive"
        )
        return lambda v: None if n_min <= measure(v) <= n_max else text
    if n_min is not None:
        noun = "characters" if unit == "chars" else "bytes"
        text = f"value length must be at least {n_min} {noun}"
        return lambda v: None if measure(v) >= n_min else text
    if n_max is not None:
        noun = "characters" if unit == "chars" else "bytes"
        text = f"value length must be at most {n_max} {noun}"
        return lambda v: None if measure(v) <= n_max else text
    return None


def _utf8_len(v: str) -> int:
    return len(v.encode())


def _affix_checks(rules: Any) -> list[Check | None]:
    checks: list[Check | None] = []
    if rules.HasField("prefix"):
        prefix, text = rules.prefix, f"value does not have prefix {go_quote(rules.prefix)}"
        checks.append(lambda v: None if v.startswith(prefix) else text)
    if rules.HasField("suffix"):
        suffix, text = rules.suffix, f"value does not have suffix {go_quote(rules.suffix)}"
        checks.append(lambda v: None if v.endswith(suffix) else text)
    if rules.HasField("contains"):
        needle = rules.contains
        text = f"value does not contain substring {go_quote(needle)}"
        checks.append(lambda v: None if needle in v else text)
    if "not_contains" in rules.DESCRIPTOR.fields_by_name and rules.HasField("not_contains"):
        banned = rules.not_contains
        text = f"value contains substring {go_quote(banned)}"
        checks.append(lambda v: text if banned in v else None)
    return checks


def _pattern_check(pattern: str, as_bytes: bool = False) -> Check | None:
    compiled = compile_pattern(pattern)
    if compiled is None:
        return None
    text = f"value does not match regex pattern {go_quote(pattern)}"
    if as_bytes:
        return lambda v: None if compiled.fullmatch(v.decode("utf-8", "replace")) else text
    return lambda v: None if compiled.fullmatch(v) else text


def _string(rules: Any) -> Check | None:
    checks: list[Check | None] = [
        _const_check(rules, _identity, go_quote),
        _in_check(rules, _identity, _identity),
        _length_check(rules, "len", "min_len", "max_len", len, "chars"),
        _length_check(rules, "len_bytes", "min_bytes", "max_bytes", _utf8_len, "bytes"),
        *_affix_checks(rules),
    ]
    pattern = rules.pattern if rules.HasField("pattern") else None
    well_known = rules.WhichOneof("well_known")
    if well_known == "well_known_regex" and rules.well_known_regex:
        lenient = rules.HasField("strict") and not rules.strict
        strict_pattern = _HEADER_NAME if rules.well_known_regex == 1 else _HEADER_VALUE
        pattern = _HEADER_STRING if lenient else strict_pattern
    if pattern is not None:
        checks.append(_pattern_check(pattern))
    if well_known and well_known != "well_known_regex" and getattr(rules, well_known):
        checks.append(_WELL_KNOWN[well_known])
    return _chain(checks, ignore_empty=rules.ignore_empty)


def _bytes(rules: Any) -> Check | None:
    checks: list[Check | None] = [
        _const_check(rules, _identity, go_quote),
        _in_check(rules, _identity, go_quote),
        _length_check(rules, "len", "min_len", "max_len", len, "bytes"),
        *_affix_checks(rules),
    ]
    if rules.HasField("pattern"):
        checks.append(_pattern_check(rules.pattern, as_bytes=True))
    well_known = rules.WhichOneof("well_known")
    if well_known and getattr(rules, well_known):
        size = {"ip": (4, 16), "ipv4": (4,), "ipv6": (16,)}[well_known]
        text = f"value must be a valid {_IP_NAMES[well_known]} address"
        checks.append(lambda v: None if len(v) in size else text)
    return _chain(checks, ignore_empty=rules.ignore_empty)


_IP_NAMES = {"ip": "IP", "ipv4": "IPv4", "ipv6": "IPv6"}


def _is_ip(value: str, family: int) -> bool:
    try:
        socket.inet_pton(family, value)
    except (OSError, ValueError):
        return False
    return True


def is_hostname(value: str) -> bool:
    """PGV's C++ ``IsHostname`` (a trailing dot is allowed, empty labels are not)."""
    if len(value) > 253:
        return False
    labels = value.split(".")
    if labels[-1] == "":
        labels.pop()
    return all(
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and all(c.isascii() and (c.isalnum() or c == "-") for c in label)
        for label in labels
    )


def _is_email(value: str) -> bool:
    local, at, host = value.rpartition("@")
    return bool(at) and 0 < len(local) <= 64 and len(value) <= 254 and is_hostname(host)


def _uri_check(absolute: bool) -> Check:
    from urllib.parse import urlsplit

    def check(value: str) -> str | None:
        try:
            parts = urlsplit(value)
        except ValueError:
            return "value must be a valid URI"
        if any(c.isspace() for c in value):
            return "value must be a valid URI"
        if absolute and not parts.scheme:
            return "value must be absolute"
        return None

    return check


_WELL_KNOWN: dict[str, Check] = {
    "ip": lambda v: (
        None
        if _is_ip(v, socket.AF_INET) or _is_ip(v, socket.AF_INET6)
        else "value must be a valid IP Address"
    ),
    "ipv4": lambda v: None if _is_ip(v, socket.AF_INET) else "value must be a valid IPv4 Address",
    "ipv6": lambda v: None if _is_ip(v, socket.AF_INET6) else "value must be a valid IPv6 Address",
    "hostname": lambda v: None if is_hostname(v) else "value must be a valid hostname",
    "address": lambda v: (
        None
        if is_hostname(v) or _is_ip(v, socket.AF_INET) or _is_ip(v, socket.AF_INET6)
        else "value must be an ip address, or a hostname."
    ),
    "uuid": lambda v: None if _UUID.fullmatch(v) else "value must be a valid UUID",
    "email": lambda v: None if _is_email(v) else "value must be a valid email address",
    "uri": _uri_check(absolute=True),
    "uri_ref": _uri_check(absolute=False),
}


# Well-known message types: Duration, Timestamp, Any


def _duration_ns(d: Any) -> int:
    return d.seconds * _NS + d.nanos


def _duration(rules: Any) -> Check | None:
    checks = [
        _const_check(rules, _duration_ns, go_duration),
        _range_check(rules, _duration_ns, go_duration),
        _in_check(rules, _duration_ns, go_duration),
    ]
    inner = _chain(checks)
    if inner is None:
        return None

    def check(d: Any) -> str | None:
        if not (-_DURATION_MAX_SECONDS <= d.seconds <= _DURATION_MAX_SECONDS) or not (
            -999_999_999 <= d.nanos <= 999_999_999
        ):
            return "value is not a valid duration"
        return inner(_duration_ns(d))

    return check


def _timestamp(rules: Any) -> Check | None:
    # lt_now / gt_now / within are not implemented by PGV's C++ generator, so Envoy's
    # protos cannot use them; they are not checked here either.
    inner = _chain(
        [
            _const_check(rules, _duration_ns, go_timestamp),
            _range_check(rules, _duration_ns, go_timestamp),
        ]
    )
    if inner is None:
        return None
    return lambda ts: inner(_duration_ns(ts))


def _any(rules: Any) -> Check | None:
    allowed, banned = frozenset(getattr(rules, "in")), frozenset(rules.not_in)
    if allowed:
        text = f"type URL must be in list {go_list(getattr(rules, 'in'))}"
        return lambda a: None if a.type_url in allowed else text
    if banned:
        text = f"type URL must not be in list {go_list(rules.not_in)}"
        return lambda a: text if a.type_url in banned else None
    return None


def compile_check(kind: str, rules: Any, enum_type: Any = None) -> Check | None:
    """The check for ``rules`` of ``kind`` (a ``FieldRules.type`` member), or None if vacuous.

    Rules on presence (``required``) and on containers (repeated, map) are the walker's.
    """
    if kind in NUMERIC_KINDS:
        return _numeric(kind, rules)
    builder = {
        "string": _string,
        "bytes": _bytes,
        "bool": _bool,
        "duration": _duration,
        "timestamp": _timestamp,
        "any": _any,
    }.get(kind)
    if builder is not None:
        return builder(rules)
    if kind == "enum":
        return _enum(rules, enum_type)
    return None
