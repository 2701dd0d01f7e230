"""JSON/YAML documents to Envoy protos, with errors that name the field path.

protobuf's json_format does the parsing (it knows every proto3 JSON rule); this
module adds what operators need around it:

- ``Any`` bodies (``typed_config``) name their type with ``@type``; the proto
  module that defines the type is imported on demand, found from the type's
  package (``envoy.extensions.filters.network.tcp_proxy.v3`` is the folder
  ``envoy/extensions/filters/network/tcp_proxy/v3`` of xds-protos), so the
  process loads only the protos its configuration uses.
- json_format's error text loses list indexes and sometimes the path. When a
  parse fails, ``_locate`` parses the document again piece by piece to find the
  smallest failing field, and reports its exact path (only on the error path).
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
from typing import Any

from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from legatus.config.errors import ConfigError, join_path

TYPE_URL_PREFIX = "type.googleapis.com/"
_imported_packages: set[str] = set()


def type_name(type_url: str) -> str:
    """``type.googleapis.com/a.b.C`` -> ``a.b.C`` (any host prefix is dropped)."""
    return type_url.rsplit("/", 1)[-1]


def message_class(full_name: str) -> type[Message] | None:
    """The generated class for a proto message name, importing its package if needed."""
    pool = descriptor_pool.Default()
    try:
        descriptor = pool.FindMessageTypeByName(full_name)
    except KeyError:
        import_package_for(full_name)
        try:
            descriptor = pool.FindMessageTypeByName(full_name)
        except KeyError:
            return None
    return message_factory.GetMessageClass(descriptor)


def import_package_for(full_name: str) -> None:
    """Import every ``*_pb2`` module of the proto package that defines ``full_name``.

    A nested message (``a.b.v3.Outer.Inner``) lives in a shorter package, so
    prefixes are tried from the longest down.
    """
    parts = full_name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        package = ".".join(parts[:end])
        if package in _imported_packages:
            continue
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            continue
        _imported_packages.add(package)
        for info in pkgutil.iter_modules(spec.submodule_search_locations):
            if info.name.endswith("_pb2") and not info.name.endswith("_grpc_pb2"):
                importlib.import_module(f"{package}.{info.name}")
        return


def preload_types(document: Any) -> None:
    """Import the protos of every ``@type`` named anywhere in a JSON-like document."""
    stack = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            url = node.get("@type")
            if isinstance(url, str):
                name = type_name(url)
                message_class(name)  # an unknown type is reported with its path by parse()
                if name in _EMPTY_WKT_VALUE and "value" not in node:
                    # Envoy takes {"@type": ".../google.protobuf.Struct"} as an empty
                    # struct; json_format wants the "value" key.
                    node["value"] = _EMPTY_WKT_VALUE[name]()
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def parse(
    document: Any,
    message_type: type[Message],
    *,
    path: str = "",
    ignore_unknown_fields: bool = False,
) -> Message:
    """Parse a JSON-like ``document`` into ``message_type``; raise ConfigError with a path."""
    preload_types(document)
    message = message_type()
    try:
        json_format.ParseDict(document, message, ignore_unknown_fields=ignore_unknown_fields)
    except (json_format.ParseError, TypeError, ValueError, AttributeError):
        # Envoy's JSON parser is lenient where json_format is not; retry with the
        # document brought into strict form before reporting anything.
        document = _lenient(document, message_type.DESCRIPTOR)
        message = message_type()
        try:
            json_format.ParseDict(document, message, ignore_unknown_fields=ignore_unknown_fields)
        except (json_format.ParseError, TypeError, ValueError, AttributeError) as e:
            raise _locate(document, message_type, path, ignore_unknown_fields, e) from None
    return message


def _lenient(document: Any, descriptor) -> Any:
    """What Envoy's parser accepts and json_format does not, made strict.

    - a single value where a repeated field expects a list (``listener_filters: {...}``);
    - enum names in another case (``type: strict_dns``): Envoy parses enums
      case-insensitively.
    """
    if not isinstance(document, dict):
        return document
    if descriptor.full_name == "google.protobuf.Any":
        url = document.get("@type")
        cls = message_class(type_name(url)) if isinstance(url, str) else None
        if cls is None or cls.DESCRIPTOR.full_name in _WELL_KNOWN_JSON:
            return document
        return _lenient(document, cls.DESCRIPTOR)
    if descriptor.full_name in _WELL_KNOWN_JSON:
        return document
    fields = {}
    for f in descriptor.fields:
        fields[f.name] = f
        fields[f.json_name] = f
    out = {}
    for key, value in document.items():
        field = fields.get(key)
        if field is not None:
            value = _lenient_field(field, value)
        out[key] = value
    return out


def _lenient_field(field: FieldDescriptor, value: Any) -> Any:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        if isinstance(value, dict):
            value_field = field.message_type.fields_by_name["value"]
            return {k: _lenient_single(value_field, v) for k, v in value.items()}
        return value
    if field.is_repeated:
        items = value if isinstance(value, list) else [value]
        return [_lenient_single(field, v) for v in items]
    return _lenient_single(field, value)


def _lenient_single(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return _lenient(value, field.message_type)
    if field.type == FieldDescriptor.TYPE_ENUM and isinstance(value, str):
        names = field.enum_type.values_by_name
        if value not in names and value.upper() in names:
            return value.upper()
    return value


# -- finding the failing field ----------------------------------------------------


def _try(document: Any, message_type: type[Message], ignore: bool) -> Exception | None:
    try:
        json_format.ParseDict(document, message_type(), ignore_unknown_fields=ignore)
    except (json_format.ParseError, TypeError, ValueError, AttributeError) as e:
        return e
    return None


def _locate(
    document: Any, message_type: type[Message], path: str, ignore: bool, error: Exception
) -> ConfigError:
    """Descend into ``document`` to the smallest part that fails to parse."""
    descriptor = message_type.DESCRIPTOR
    full_name = descriptor.full_name
    if full_name == "google.protobuf.Any" and isinstance(document, dict):
        url = document.get("@type")
        if not isinstance(url, str) or not url:
            return ConfigError(path, "typed_config has no @type")
        cls = message_class(type_name(url))
        if cls is None:
            return ConfigError(path, f"unknown type URL {url}: no such proto message")
        body = {k: v for k, v in document.items() if k != "@type"}
        if cls.DESCRIPTOR.full_name in _WKT_WITH_VALUE and "value" in body:
            body = body["value"]
        return _locate(body, cls, path, ignore, error)
    if not isinstance(document, dict) and full_name not in _WELL_KNOWN_JSON:
        return ConfigError(path, f"expected an object ({full_name}), got {_kind(document)}")
    if isinstance(document, dict) and full_name not in _WELL_KNOWN_JSON:
        fields = {}
        for f in descriptor.fields:
            fields[f.name] = f
            fields[f.json_name] = f
        for key, value in document.items():
            field = fields.get(key)
            if field is None:
                if ignore or key.startswith("@"):
                    continue
                return ConfigError(
                    join_path(path, key), f"unknown field {key!r} in {descriptor.full_name}"
                )
            sub = join_path(path, field.name)
            found = _locate_field(field, value, sub, ignore)
            if found is not None:
                return found
    return ConfigError(path, _clean_message(str(error)))


def _locate_field(
    field: FieldDescriptor, value: Any, path: str, ignore: bool
) -> ConfigError | None:
    is_message = field.type == FieldDescriptor.TYPE_MESSAGE
    cls = message_factory.GetMessageClass(field.message_type) if is_message else None
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        if not isinstance(value, dict):
            return ConfigError(path, f"expected an object (map), got {_kind(value)}")
        value_field = field.message_type.fields_by_name["value"]
        for key, item in value.items():
            error = _locate_field(value_field, item, f'{path}["{key}"]', ignore)
            if error is not None:
                return error
        return _single(field, value, path, ignore)
    if field.is_repeated:
        if not isinstance(value, list):
            return ConfigError(path, f"expected a list, got {_kind(value)}")
        for i, item in enumerate(value):
            error = _element(field, cls, item, f"{path}[{i}]", ignore)
            if error is not None:
                return error
        return None
    return _element(field, cls, value, path, ignore)


def _element(field, cls, value, path, ignore) -> ConfigError | None:
    if cls is not None:
        error = _try(value, cls, ignore)
        return None if error is None else _locate(value, cls, path, ignore, error)
    return _single(field, value, path, ignore)


def _single(field: FieldDescriptor, value: Any, path: str, ignore: bool) -> ConfigError | None:
    """Check one scalar (or map) by parsing a one-field document of the containing type."""
    holder = message_factory.GetMessageClass(field.containing_type)
    error = _try({field.name: value}, holder, ignore)
    if error is None:
        return None
    return ConfigError(path, _clean_message(str(error)))


_WELL_KNOWN_JSON = {
    "google.protobuf.Duration",
    "google.protobuf.Timestamp",
    "google.protobuf.Struct",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
    "google.protobuf.FieldMask",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
    "google.protobuf.Int32Value",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.FloatValue",
    "google.protobuf.DoubleValue",
    "google.protobuf.Empty",
}
_WKT_WITH_VALUE = _WELL_KNOWN_JSON - {"google.protobuf.Empty"}
_EMPTY_WKT_VALUE = {"google.protobuf.Struct": dict, "google.protobuf.ListValue": list}
_PREFIX = re.compile(r"^(Failed to parse \w+ field: )+")
_AT = re.compile(r"\s+at\s+\"?[\w.\[\]\"]*\"?\.*$")


def _clean_message(text: str) -> str:
    text = text.split("\n Available Fields", 1)[0].strip()
    text = _PREFIX.sub("", text)
    text = _AT.sub("", text)
    return text.rstrip(".") or "invalid value"


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )
