"""What a runtime value reads as, and the text it shows: Envoy's SnapshotImpl::createEntry.

Each value keeps its text (``get_string``, ``/runtime``) and what that text reads as: a number
is a double, a non-negative number also an unsigned integer (floored), an integral number
within int32 also a boolean (non-zero is true); a string is read as a number only (Envoy 1.40
no longer reads ``"true"`` or a fraction out of a string); an object as a FractionalPercent.
Envoy's YAML loader turns floats and integers beyond int32 into strings, so their text is the
one written in the YAML (the bootstrap loader keeps it for static layers); an int32 number
prints as absl's ``StrCat`` does (``%.6g``: ``1234567`` is ``1.23457e+06``), an object as
protobuf's text format (Envoy adds protobuf's randomized ``goo.gle/debug...`` line first;
legatus does not).

Two ways in: ``struct_entries`` flattens a Struct (a static layer, an RTDS resource's
``layer``); ``yaml_entry`` reads one text as YAML the way Envoy's yaml-cpp loader does (an
admin layer's ``/runtime_modify`` value, a disk layer's file).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import yaml
from google.protobuf import struct_pb2, text_encoding

__all__ = ["EMPTY", "Entry", "InvalidEntry", "struct_entries", "yaml_entry"]

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_UINT64_MAX = 2**64 - 1
_UINT32_MAX = 2**32 - 1
_DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}


class InvalidEntry(ValueError):
    """A value Envoy refuses: a list or null in a Struct, a text that is not YAML."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One runtime value: its text and what the text reads as (None: does not read so)."""

    raw: str
    double: float | None = None
    uint: int | None = None
    boolean: bool | None = None
    fraction: tuple[int, int] | None = None  # (numerator, denominator: 100, 10000, 1000000)


EMPTY: Mapping[str, Entry] = MappingProxyType({})


def struct_entries(struct: struct_pb2.Struct) -> dict[str, Entry]:
    """A Struct flattened into dotted keys (``{a: {b: 1}}`` is ``a.b``); InvalidEntry names
    the key of a list or null (Envoy's ProtoLayer). A nested object that is empty or has a
    ``numerator`` or ``denominator`` key is one value (a FractionalPercent), not a level."""
    out: dict[str, Entry] = {}
    for key, value in struct.fields.items():
        _walk(value, key, out)
    return out


def _walk(value: struct_pb2.Value, key: str, out: dict[str, Entry]) -> None:
    """Envoy's ProtoLayer::walkProtoValue; a key seen twice keeps its first value."""
    kind = value.WhichOneof("kind")
    if kind in (None, "null_value", "list_value"):
        raise InvalidEntry(f"Invalid runtime entry value for {key}")
    if kind == "struct_value":
        fields = value.struct_value.fields
        if fields and "numerator" not in fields and "denominator" not in fields:
            for name, inner in fields.items():
                _walk(inner, f"{key}.{name}", out)
            return
    out.setdefault(key, _create_entry(value))


# Reading values ---------------------------------------------------------------------------


def _create_entry(value: struct_pb2.Value, raw: str = "") -> Entry:
    """Envoy's SnapshotImpl::createEntry: ``raw`` is the text given, if any."""
    kind = value.WhichOneof("kind")
    text = raw or (value.string_value if kind == "string_value" else "")
    if kind == "number_value":
        return _number_entry(text or _six_digits(value.number_value), value.number_value)
    if kind == "bool_value":
        return Entry(raw=text or ("true" if value.bool_value else "false"),
                     boolean=value.bool_value)  # fmt: skip
    if kind == "struct_value":
        return Entry(
            raw=text or _struct_text(value.struct_value), fraction=_fraction(value.struct_value)
        )
    if kind == "string_value":
        number = _parse_double(text)
        return Entry(raw=text) if number is None else _number_entry(text, number)
    return Entry(raw=text)  # null and lists: text only


def _number_entry(raw: str, number: float) -> Entry:
    """Envoy's setNumberValue: the double, a floored unsigned integer, an int32 boolean."""
    boolean = None
    if _INT32_MIN <= number < _INT32_MAX and number == int(number):
        boolean = number != 0
    uint = None
    if 0 <= number <= _UINT64_MAX:
        uint = min(int(number), _UINT64_MAX)
    return Entry(raw=raw, double=number, uint=uint, boolean=boolean)


def _fraction(struct: struct_pb2.Struct) -> tuple[int, int] | None:
    """Envoy's parseFractionValue: ``numerator`` (a number) and ``denominator`` (a name)."""
    numerator, denominator = 0, 100
    for name, value in struct.fields.items():
        kind = value.WhichOneof("kind")
        if name == "numerator":
            if kind == "number_value":
                numerator = _uint32(value.number_value)
        elif name == "denominator" and kind == "string_value":
            denominator = _DENOMINATORS.get(value.string_value)
            if denominator is None:
                return None
        else:
            return None
    return numerator, denominator


def _uint32(number: float) -> int:
    if math.isnan(number) or number <= 0:
        return 0
    return min(int(number), _UINT32_MAX)


_DOUBLE = re.compile(
    r"-?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?|nan(?:\([0-9A-Za-z_]*\))?)",
    re.IGNORECASE,
)


def _parse_double(text: str) -> float | None:
    """absl::SimpleAtod: surrounding whitespace and one leading '+' allowed, no hex."""
    text = text.strip(" \t\n\v\f\r")
    if text.startswith("+"):
        text = text[1:]
        if text.startswith("-"):
            return None
    if not _DOUBLE.fullmatch(text):
        return None
    if "nan" in text.lower():
        return math.nan
    return float(text)


def _six_digits(number: float) -> str:
    """absl::StrCat of a double (six significant digits, like printf's %g)."""
    return f"{number:.6g}"


def _simple_dtoa(number: float) -> str:
    """protobuf's SimpleDtoa: the shortest of %.15g and %.17g that reads back exactly."""
    if math.isnan(number):
        return "nan"
    text = f"{number:.15g}"
    if not math.isinf(number) and float(text) != number:
        text = f"{number:.17g}"
    return text


def _struct_text(struct: struct_pb2.Struct) -> str:
    """A Struct in protobuf's text format, as Envoy prints an object value (map keys sorted)."""
    out: list[str] = []
    _struct_fields(struct, "", out)
    return "".join(out)


def _struct_fields(struct: struct_pb2.Struct, pad: str, out: list[str]) -> None:
    for key in sorted(struct.fields):
        out.append(f'{pad}fields {{\n{pad}  key: "{_escape(key)}"\n{pad}  value {{\n')
        _value_text(struct.fields[key], pad + "    ", out)
        out.append(f"{pad}  }}\n{pad}}}\n")


def _value_text(value: struct_pb2.Value, pad: str, out: list[str]) -> None:
    kind = value.WhichOneof("kind")
    if kind == "null_value":
        out.append(f"{pad}null_value: NULL_VALUE\n")
    elif kind == "number_value":
        out.append(f"{pad}number_value: {_simple_dtoa(value.number_value)}\n")
    elif kind == "string_value":
        out.append(f'{pad}string_value: "{_escape(value.string_value)}"\n')
    elif kind == "bool_value":
        out.append(f"{pad}bool_value: {'true' if value.bool_value else 'false'}\n")
    elif kind == "struct_value":
        out.append(f"{pad}struct_value {{\n")
        _struct_fields(value.struct_value, pad + "  ", out)
        out.append(f"{pad}}}\n")
    elif kind == "list_value":
        out.append(f"{pad}list_value {{\n")
        for item in value.list_value.values:
            out.append(f"{pad}  values {{\n")
            _value_text(item, pad + "    ", out)
            out.append(f"{pad}  }}\n")
        out.append(f"{pad}}}\n")


def _escape(text: str) -> str:
    return text_encoding.CEscape(text.encode("utf-8"), as_utf8=False)


# YAML values -----------------------------------------------------------------

_YAML_TRUE = frozenset({"y", "yes", "true", "on"})
_YAML_FALSE = frozenset({"n", "no", "false", "off"})
_YAML_NULL = frozenset({"", "~", "null", "Null", "NULL"})
_YAML_INT = re.compile(r"[+-]?(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")


def yaml_entry(text: str) -> Entry:
    """A text read as YAML, as Envoy's ValueUtil::loadFromYaml does; InvalidEntry if it is not
    YAML (with yaml-cpp's ``error at line L, column C: ...`` shape, PyYAML's words)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"error at line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise InvalidEntry(f"{where}{e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise InvalidEntry(str(e)) from None
    return _create_entry(_yaml_value(node), text)


def _yaml_value(node) -> struct_pb2.Value:
    """A YAML node as a protobuf Value, with yaml-cpp's reading of plain scalars."""
    value = struct_pb2.Value()
    if node is None:
        value.null_value = struct_pb2.NULL_VALUE
    elif isinstance(node, yaml.MappingNode):
        value.struct_value.SetInParent()
        for key, inner in node.value:
            if not isinstance(key, yaml.ScalarNode):
                raise InvalidEntry("bad conversion")
            value.struct_value.fields[key.value].CopyFrom(_yaml_value(inner))
    elif isinstance(node, yaml.SequenceNode):
        value.list_value.SetInParent()
        for inner in node.value:
            value.list_value.values.add().CopyFrom(_yaml_value(inner))
    elif node.style is not None:  # quoted or block scalars are strings
        value.string_value = node.value
    else:
        _plain_scalar(node.value, value)
    return value


def _plain_scalar(text: str, value: struct_pb2.Value) -> None:
    if text in _YAML_NULL:
        value.null_value = struct_pb2.NULL_VALUE
        return
    if text in (text.lower(), text.upper(), text.capitalize()):  # yaml-cpp's flexible case
        lowered = text.lower()
        if lowered in _YAML_TRUE or lowered in _YAML_FALSE:
            value.bool_value = lowered in _YAML_TRUE
            return
    if _YAML_INT.fullmatch(text):
        number = _yaml_int(text)
        if -(2**63) <= number < 2**63:
            if _INT32_MIN <= number <= _INT32_MAX:
                value.number_value = number
            else:
                value.string_value = str(number)
            return
    value.string_value = text


def _yaml_int(text: str) -> int:
    """An integer as C++ streams read it with the base unset: 0x hex, 0 octal, else decimal."""
    digits = text.lstrip("+-")
    if digits[:2] in ("0x", "0X"):
        number = int(digits[2:], 16)
    elif len(digits) > 1 and digits[0] == "0":
        number = int(digits, 8)
    else:
        number = int(digits)
    return -number if text.startswith("-") else number
