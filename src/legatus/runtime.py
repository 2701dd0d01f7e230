"""Envoy's runtime: the bootstrap's ``layered_runtime``, read through immutable snapshots.

Theory of operation. ``compile_runtime`` turns ``envoy.config.bootstrap.v3.LayeredRuntime``
into a ``Runtime`` (Envoy's Runtime::Loader). Its layers are read in order and a later layer
overrides an earlier one key by key; the result is a ``Snapshot``, replaced (never changed)
when the admin layer changes, so readers never see half an update. Features that consult the
runtime keep the ``Runtime`` and ask it at request time (``feature_enabled``), as Envoy's do.

Layers, as Envoy 1.40 builds them:

- ``static_layer``: a Struct flattened into dotted keys (``{a: {b: 1}}`` is ``a.b``). A
  nested object that is empty or has a ``numerator`` or ``denominator`` key is one value
  (a FractionalPercent), not a level. A list or a null is refused (``Invalid runtime entry
  value for <key>``).
- ``admin_layer``: values set by ``POST /runtime_modify?key=value``, each parsed as YAML
  the way Envoy's yaml-cpp loader does (``5`` a number, ``true``/``yes``/``on`` booleans,
  ``{numerator: 5, denominator: TEN_THOUSAND}`` a fraction, anything else a string). An
  empty value removes the key. At most one admin layer.
- ``disk_layer``, ``rtds_layer``: refused (not supported by legatus yet).

A bootstrap without ``layered_runtime`` gets a runtime with no layers (``/runtime_modify``
then answers ``No admin layer specified``); a ``layered_runtime`` with no layers gets one
admin layer named ``""``. Both are Envoy's defaults.

Each value keeps its text (``get_string``, ``/runtime``) and what that text reads as,
following Envoy's SnapshotImpl::createEntry: a number is a double, a non-negative number
also an unsigned integer (floored), an integral number within int32 also a boolean (non-zero
is true); a string is read as a number only (Envoy 1.40 no longer reads ``"true"`` or a
fraction out of a string); an object as a FractionalPercent. Envoy's YAML loader turns
floats and integers beyond int32 into strings, so their text is the one written in the
YAML (the bootstrap loader keeps it for static layers); an int32 number prints as absl's
``StrCat`` does (``%.6g``: ``1234567`` is ``1.23457e+06``), an object as protobuf's text
format (Envoy adds protobuf's randomized ``goo.gle/debug...`` line first; legatus does not).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import yaml
from google.protobuf import struct_pb2, text_encoding

from legatus.config.errors import ConfigError

__all__ = [
    "Entry",
    "Layer",
    "Runtime",
    "RuntimeModifyError",
    "Snapshot",
    "compile_runtime",
]

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_UINT64_MAX = 2**64 - 1
_UINT32_MAX = 2**32 - 1
_DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}
_EMPTY: Mapping[str, Entry] = MappingProxyType({})


class RuntimeModifyError(Exception):
    """A ``/runtime_modify`` request Envoy refuses (503 with this text)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One runtime value: its text and what the text reads as (None: does not read so)."""

    raw: str
    double: float | None = None
    uint: int | None = None
    boolean: bool | None = None
    fraction: tuple[int, int] | None = None  # (numerator, denominator: 100, 10000, 1000000)


@dataclass(frozen=True, slots=True, kw_only=True)
class Layer:
    name: str
    values: Mapping[str, Entry] = field(default_factory=lambda: _EMPTY)


class Snapshot:
    """The layers at one moment and their merged values; never changes once built.

    The getters follow Envoy's Snapshot: an empty key is never found, and a value that does
    not read as the asked type gives the default.
    """

    __slots__ = ("layers", "values")

    def __init__(self, layers: tuple[Layer, ...]) -> None:
        values: dict[str, Entry] = {}
        for layer in layers:
            values.update(layer.values)
        self.layers = layers
        self.values: Mapping[str, Entry] = MappingProxyType(values)

    def get(self, key: str) -> Entry | None:
        return self.values.get(key) if key else None

    def get_integer(self, key: str, default: int) -> int:
        entry = self.get(key)
        return default if entry is None or entry.uint is None else entry.uint

    def get_double(self, key: str, default: float) -> float:
        entry = self.get(key)
        return default if entry is None or entry.double is None else entry.double

    def get_boolean(self, key: str, default: bool) -> bool:
        entry = self.get(key)
        return default if entry is None or entry.boolean is None else entry.boolean

    def get_string(self, key: str) -> str | None:
        entry = self.get(key)
        return None if entry is None else entry.raw

    def feature_enabled(
        self, key: str, default_numerator: int, default_denominator: int, random_value: int
    ) -> bool:
        """Envoy's featureEnabled(key, FractionalPercent default, random_value).

        A fraction value replaces the default; an integer value is a percentage (above 100:
        always on); anything else leaves the default.
        """
        numerator, denominator = default_numerator, default_denominator
        entry = self.get(key)
        if entry is not None:
            if entry.fraction is not None:
                numerator, denominator = entry.fraction
            elif entry.uint is not None:
                if entry.uint > 100:
                    return True
                numerator, denominator = entry.uint, 100
        return random_value % denominator < numerator


class Runtime:
    """Envoy's runtime loader: the current snapshot, and the admin layer that changes it.

    The main process compiles one from the bootstrap; each worker compiles its own from the
    same bootstrap and takes the main process's admin layer (``replace_admin_overrides``)
    whenever ``/runtime_modify`` changes it. Getters read the current snapshot.
    """

    __slots__ = ("_admin_index", "_admin_text", "_layers", "_snapshot")

    def __init__(self, layers: Sequence[Layer] = (), *, admin_index: int | None = None) -> None:
        if admin_index is not None and not 0 <= admin_index < len(layers):
            raise ValueError(f"admin layer index {admin_index} out of range")
        self._layers = tuple(layers)
        self._admin_index = admin_index
        self._admin_text: dict[str, str] = {}
        self._snapshot = Snapshot(self._layers)

    @property
    def has_admin_layer(self) -> bool:
        return self._admin_index is not None

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def get_integer(self, key: str, default: int) -> int:
        return self._snapshot.get_integer(key, default)

    def get_double(self, key: str, default: float) -> float:
        return self._snapshot.get_double(key, default)

    def get_boolean(self, key: str, default: bool) -> bool:
        return self._snapshot.get_boolean(key, default)

    def get_string(self, key: str) -> str | None:
        return self._snapshot.get_string(key)

    def feature_enabled(
        self, key: str, default_numerator: int, default_denominator: int, random_value: int
    ) -> bool:
        return self._snapshot.feature_enabled(
            key, default_numerator, default_denominator, random_value
        )

    def admin_overrides(self) -> dict[str, str]:
        """The admin layer as set through ``/runtime_modify``: key -> the text given."""
        return dict(self._admin_text)

    def merge_values(self, values: Mapping[str, str]) -> None:
        """``/runtime_modify``: set each key of the admin layer (an empty value removes it).

        All or nothing: a value that does not parse changes no key. Raises
        RuntimeModifyError with Envoy's text when there is no admin layer.
        """
        if self._admin_index is None:
            raise RuntimeModifyError("No admin layer specified")
        text = dict(self._admin_text)
        entries = dict(self._layers[self._admin_index].values)
        for key, value in values.items():
            text.pop(key, None)
            entries.pop(key, None)
            if value:
                entries[key] = _admin_entry(value)
                text[key] = value
        self._set_admin_layer(text, entries)

    def replace_admin_overrides(self, values: Mapping[str, str]) -> None:
        """Make the admin layer exactly ``values`` (a worker taking the main process's)."""
        if self._admin_index is None:
            if values:
                raise RuntimeModifyError("No admin layer specified")
            return
        text = {key: value for key, value in values.items() if value}
        self._set_admin_layer(text, {key: _admin_entry(value) for key, value in text.items()})

    def _set_admin_layer(self, text: dict[str, str], entries: dict[str, Entry]) -> None:
        index = self._admin_index
        layers = list(self._layers)
        layers[index] = Layer(name=layers[index].name, values=MappingProxyType(entries))
        self._layers = tuple(layers)
        self._admin_text = text
        self._snapshot = Snapshot(self._layers)


def compile_runtime(bootstrap, path: str = "layered_runtime") -> Runtime:
    """The runtime of a bootstrap; ConfigError names the offending layer.

    Checks run in Envoy's order: layer names and kinds first, then the static layers' values.
    """
    if not bootstrap.HasField("layered_runtime"):
        return Runtime()
    protos = list(bootstrap.layered_runtime.layers)
    if not protos:
        return Runtime([Layer(name="")], admin_index=0)
    names: set[str] = set()
    admin_index = None
    for i, proto in enumerate(protos):
        layer_path = f"{path}.layers[{i}]"
        if proto.name in names:
            raise ConfigError(f"{layer_path}.name", f"Duplicate layer name: {proto.name}")
        names.add(proto.name)
        which = proto.WhichOneof("layer_specifier")
        if which == "admin_layer":
            if admin_index is not None:
                raise ConfigError(
                    f"{layer_path}.admin_layer",
                    "Too many admin layers specified in LayeredRuntime, "
                    "at most one may be specified",
                )
            admin_index = i
        elif which in ("disk_layer", "rtds_layer"):
            raise ConfigError(
                f"{layer_path}.{which}",
                f"field '{which}' of RuntimeLayer is not supported by legatus yet",
            )
        elif which != "static_layer":
            raise ConfigError(layer_path, "layer specifier not set")
    layers = []
    for i, proto in enumerate(protos):
        if i == admin_index:
            layers.append(Layer(name=proto.name))
            continue
        values: dict[str, Entry] = {}
        for key, value in proto.static_layer.fields.items():
            _walk_static(value, key, values, f"{path}.layers[{i}].static_layer")
        layers.append(Layer(name=proto.name, values=MappingProxyType(values)))
    return Runtime(layers, admin_index=admin_index)


def _walk_static(value: struct_pb2.Value, key: str, out: dict[str, Entry], path: str) -> None:
    """Envoy's ProtoLayer::walkProtoValue; a key seen twice keeps its first value."""
    kind = value.WhichOneof("kind")
    if kind in (None, "null_value", "list_value"):
        raise ConfigError(path, f"Invalid runtime entry value for {key}")
    if kind == "struct_value":
        fields = value.struct_value.fields
        if fields and "numerator" not in fields and "denominator" not in fields:
            for name, inner in fields.items():
                _walk_static(inner, f"{key}.{name}", out, path)
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


# The admin layer's YAML -----------------------------------------------------------------

_YAML_TRUE = frozenset({"y", "yes", "true", "on"})
_YAML_FALSE = frozenset({"n", "no", "false", "off"})
_YAML_NULL = frozenset({"", "~", "null", "Null", "NULL"})
_YAML_INT = re.compile(r"[+-]?(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")


def _admin_entry(text: str) -> Entry:
    """A ``/runtime_modify`` value: YAML read as Envoy's ValueUtil::loadFromYaml does."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"error at line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise RuntimeModifyError(f"{where}{e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise RuntimeModifyError(str(e)) from None
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
                raise RuntimeModifyError("bad conversion")
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
