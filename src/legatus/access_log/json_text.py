"""JSON text as Envoy's access logs write it: strings, numbers and Struct-like values.

Envoy serializes through its Json::Streamer: strings keep UTF-8 and escape only ``"``,
``\\`` and control characters; doubles are written by ``std::to_chars`` (the shortest
digits that read back exactly, in fixed or scientific notation, whichever is shorter,
fixed on a tie: ``1e+06``, ``123456``, ``0.001``, ``1e-04``); object keys are sorted.
Counters and other integers of the typed operators are written as integers.

These are shared by the JSON formats (formatter.py) and the metadata operators, which
render a whole Struct as JSON even in text formats.
"""

from __future__ import annotations

import math
import re
from typing import Any

_ESCAPE = re.compile(r'["\\\x00-\x1f]')
_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}
_INVALID_UTF8 = re.compile("[\udc80-\udcff]")


def _escape_char(m: re.Match) -> str:
    c = m.group()
    return _ESCAPES.get(c) or f"\\u{ord(c):04x}"


def json_string(s: str) -> str:
    """A JSON string as Envoy writes it: UTF-8 kept, ``"``, ``\\`` and controls escaped.

    A string carrying undecodable bytes (surrogate-escaped) is written as Envoy writes
    invalid UTF-8: every byte that is not printable ASCII as ``\\u00XX``.
    """
    if _INVALID_UTF8.search(s):
        raw = s.encode("utf-8", "surrogateescape")
        return (
            '"'
            + "".join(
                chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\u{b:04x}" for b in raw
            )
            + '"'
        )
    if _ESCAPE.search(s) is None:
        return '"' + s + '"'
    return '"' + _ESCAPE.sub(_escape_char, s) + '"'


def shortest_double(x: float) -> str:
    """``std::to_chars(double)``: shortest round-trip digits, fixed or scientific notation.

    Python's ``repr`` finds the same shortest digits; only the layout differs (``repr``
    switches to exponents at 1e16, ``to_chars`` picks the shorter text).
    """
    if math.isnan(x):
        return "-nan" if math.copysign(1.0, x) < 0 else "nan"
    if math.isinf(x):
        return "-inf" if x < 0 else "inf"
    sign = "-" if math.copysign(1.0, x) < 0 else ""
    if x == 0:
        return sign + "0"
    mantissa, _, exponent = repr(abs(x)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    if fraction == "0":
        fraction = ""
    all_digits = whole + fraction
    significant = all_digits.lstrip("0")
    # value = 0.DIGITS * 10**point
    point = len(whole) + (int(exponent) if exponent else 0) - (len(all_digits) - len(significant))
    digits = significant.rstrip("0")
    count = len(digits)
    if point >= count:
        fixed = digits + "0" * (point - count)
    elif point > 0:
        fixed = digits[:point] + "." + digits[point:]
    else:
        fixed = "0." + "0" * -point + digits
    power = point - 1
    scientific = (
        digits[0]
        + ("." + digits[1:] if count > 1 else "")
        + ("e-" if power < 0 else "e+")
        + f"{abs(power):02d}"
    )
    return sign + (fixed if len(fixed) <= len(scientific) else scientific)


def json_number(x: float | int) -> str:
    """A number of a JSON format: integers as integers, doubles as ``std::to_chars``."""
    if x.__class__ is int:
        return str(x)
    return shortest_double(float(x))


def json_value(value: Any) -> str:
    """A Struct-like value (dict, list, str, number, bool, None) as compact JSON.

    Numbers are Struct doubles, so an ``int`` is written as the double it stands for
    (``1000000`` as ``1e+06``), as Envoy writes a metadata number.
    """
    if value is None:
        return "null"
    if value.__class__ is str:
        return json_string(value)
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return shortest_double(float(value))
    if isinstance(value, dict):
        return (
            "{"
            + ",".join(
                json_string(key) + ":" + json_value(value[key]) for key in sorted(value, key=_utf8)
            )
            + "}"
        )
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(json_value(item) for item in value) + "]"
    return json_string(str(value))


def _utf8(key: str) -> bytes:
    """Envoy sorts keys as std::string compares them: bytewise."""
    return key.encode("utf-8", "surrogateescape")
