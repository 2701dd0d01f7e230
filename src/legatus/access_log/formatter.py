"""Envoy's substitution formatter: access-log format strings and JSON formats.

A format string is parsed once, exactly as Envoy's SubstitutionFormatParser does, into
literal strings and operator Providers (see ``operators.py``):

- ``%%`` is a literal ``%``; any other ``%`` must start a command matching
  ``%COMMAND(SUBCOMMAND):LENGTH%`` (Envoy's regex), or the format is rejected with
  Envoy's "Couldn't find valid command at position N";
- an unset value renders ``-`` (nothing with ``omit_empty_values``).

A JSON format (``json_format``, a ``google.protobuf.Struct``) renders one compact JSON
object per line with its keys sorted, as Envoy 1.40 does for every JSON format (its
deprecated FileAccessLog ``json_format`` / ``typed_json_format`` included): a string that
is exactly one operator keeps the operator's type (numbers for counters, codes, ports and
durations, ``null`` when unset); a string mixing text and operators is a string (unset
parts ``-``); numbers, booleans and nulls of the config are copied. With
``omit_empty_values`` nulls are left out, and so is a nested object left empty.

Header maps are mappings of lower-case name to str; header values are logged as they
are (no escaping in text formats, JSON escaping in JSON formats).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from legatus.access_log.json_text import json_number, json_string
from legatus.access_log.metadata import RawJson
from legatus.access_log.operators import build
from legatus.access_log.providers import Provider
from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported

DEFAULT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
)

# Envoy's command regex (RE2 there; `.` does not match a newline in either).
_COMMAND = re.compile(r"%((?:[A-Z]|[0-9]|_)+)(?:\((.*?)\))?(?::([0-9]+))?%")
_MAX_LENGTH = 2**64 - 1

Headers = Mapping[str, str] | None


class LogFormatter(Protocol):
    def format(
        self,
        info: Any,
        request_headers: Headers = None,
        response_headers: Headers = None,
        response_trailers: Headers = None,
    ) -> str: ...


def parse(text: str, path: str) -> list[str | Provider]:
    """Split a format string into literals and Providers (Envoy's parser, error texts)."""
    parts: list[str | Provider] = []
    literal: list[str] = []
    pos, n = 0, len(text)
    while pos < n:
        c = text[pos]
        if c != "%":
            literal.append(c)
            pos += 1
            continue
        if pos + 1 < n and text[pos + 1] == "%":
            literal.append("%")
            pos += 2
            continue
        if literal:
            parts.append("".join(literal))
            literal = []
        m = _COMMAND.match(text, pos)
        length = m.group(3) if m else None
        if m is None or (length is not None and int(length) > _MAX_LENGTH):
            raise ConfigError(
                path,
                f"Incorrect configuration: {text}. Couldn't find valid command at position {pos}",
            )
        parts.append(
            build(m.group(1), m.group(2) or "", None if length is None else int(length), path)
        )
        pos = m.end()
    if literal or not text:
        parts.append("".join(literal))
    return parts


class Formatter:
    """A compiled text format. Immutable; ``format`` never raises on traffic data.

    The parts are compiled into one Python function (``_compile_text``): literals and the
    operators' inline expressions in a single f-string, so a line costs one call plus the
    operators that have no inline form.
    """

    __slots__ = ("format", "text")

    def __init__(self, text: str, parts: list[str | Provider], *, omit_empty_values: bool):
        self.text = text
        self.format = _compile_text(parts, "" if omit_empty_values else "-")


def _compile_text(parts: list[str | Provider], empty: str) -> Callable[..., str]:
    """``format(info, request_headers=None, response_headers=None, response_trailers=None)``.

    Generated source: ``return 'lit' f"{_D if (_v1 := EXPR) is None else _v1}" ...``, with
    every constant bound as a global of the generated function (no literal inside an
    expression, so no quoting issue); adjacent literals and f-strings compile to one
    string build.
    """
    env: dict[str, Any] = {"_D": empty}
    pieces: list[str] = []
    for i, part in enumerate(parts):
        if part.__class__ is str:
            if part:
                pieces.append(repr(part))
            continue
        inline = part.inline  # type: ignore[union-attr]
        if inline is None:
            env[f"_p{i}"] = part.text  # type: ignore[union-attr]
            expr = f"_p{i}(info, req, resp, trl)"
        else:
            template, constants = inline
            names = []
            for j, constant in enumerate(constants):
                names.append(f"_c{i}_{j}")
                env[names[-1]] = constant
            expr = template.format(*names, t=f"_t{i}")
        if part.never_none:  # type: ignore[union-attr]
            pieces.append(f'f"{{{expr}}}"')
        else:
            pieces.append(f'f"{{_D if (_v{i} := {expr}) is None else _v{i}}}"')
    source = (
        "def format(info, request_headers=None, response_headers=None, response_trailers=None):\n"
        "    req, resp, trl = request_headers, response_headers, response_trailers\n"
        f"    return {' '.join(pieces) or repr('')}\n"
    )
    exec(compile(source, "<access log format>", "exec"), env)
    return env["format"]


def compile_format(text: str, path: str, *, omit_empty_values: bool = False) -> Formatter:
    """Compile an Envoy format string (``text_format``, FileAccessLog ``format``)."""
    return Formatter(text, parse(text, path), omit_empty_values=omit_empty_values)


# JSON ---------------------------------------------------------------------------------

# Node: f(info, req, resp, trailers) -> JSON text, or None for a null (omittable) value.
Node = Callable[[Any, Headers, Headers, Headers], "str | None"]


def _json_value(value: Any) -> str | None:
    if value is None:
        return None
    if value.__class__ is str:
        return json_string(value)
    if value.__class__ is RawJson:
        return value
    if value is True or value is False:
        return "true" if value else "false"
    return json_number(value)


class JsonFormatter:
    """A compiled JSON format; ``format`` returns one JSON object and a newline."""

    __slots__ = ("_root",)

    def __init__(self, root: Node) -> None:
        self._root = root

    def format(
        self,
        info: Any,
        request_headers: Headers = None,
        response_headers: Headers = None,
        response_trailers: Headers = None,
    ) -> str:
        return (
            self._root(info, request_headers, response_headers, response_trailers) or "{}"
        ) + "\n"


def compile_json(struct, path: str, *, omit_empty_values: bool = False) -> JsonFormatter:
    """Compile a ``google.protobuf.Struct`` JSON format."""
    return JsonFormatter(_struct_node(struct, path, omit_empty_values, top=True))


def _struct_node(struct, path: str, omit: bool, *, top: bool = False) -> Node:
    items = tuple(
        (json_string(key) + ":", _value_node(struct.fields[key], join_path(path, key), omit))
        for key in sorted(struct.fields)
    )

    def node(info, req, resp, trl):
        out = []
        for key, child in items:
            value = child(info, req, resp, trl)
            if value is None:
                if omit:
                    continue
                value = "null"
            out.append(key + value)
        if omit and not out and not top:
            return None
        return "{" + ",".join(out) + "}"

    return node


def _list_node(values, path: str, omit: bool) -> Node:
    children = tuple(_value_node(v, f"{path}[{i}]", omit) for i, v in enumerate(values))

    def node(info, req, resp, trl):
        out = []
        for child in children:
            value = child(info, req, resp, trl)
            if value is None:
                if omit:
                    continue
                value = "null"
            out.append(value)
        return "[" + ",".join(out) + "]"

    return node


def _constant(text: str | None) -> Node:
    return lambda _info, _req, _resp, _trl: text


def _value_node(value, path: str, omit: bool) -> Node:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return _string_node(value.string_value, path, omit)
    if kind == "struct_value":
        return _struct_node(value.struct_value, path, omit)
    if kind == "list_value":
        return _list_node(value.list_value.values, path, omit)
    if kind == "number_value":
        return _constant(json_number(value.number_value))
    if kind == "bool_value":
        return _constant("true" if value.bool_value else "false")
    return _constant(None)  # null_value (or no kind)


def _string_node(text: str, path: str, omit: bool) -> Node:
    parts = parse(text, path)
    if all(isinstance(p, str) for p in parts):
        return _constant(json_string("".join(parts)))  # type: ignore[arg-type]
    if len(parts) == 1:
        typed = parts[0].value  # type: ignore[union-attr]
        return lambda info, req, resp, trl: _json_value(typed(info, req, resp, trl))
    formatter = Formatter(text, parts, omit_empty_values=omit)
    return lambda info, req, resp, trl: json_string(formatter.format(info, req, resp, trl))


# SubstitutionFormatString -------------------------------------------------------------

_SUPPORTED = frozenset(
    {
        "text_format",
        "json_format",
        "text_format_source",
        "omit_empty_values",
        "content_type",
        "formatters",
        "json_format_options",
    }
)


def compile_substitution_format(proto, path: str) -> LogFormatter:
    """Compile an ``envoy.config.core.v3.SubstitutionFormatString``.

    ``content_type`` only matters to local replies; ``json_format_options.sort_properties``
    changes nothing because keys are always sorted (as Envoy 1.40 does). Formatter
    extensions (``formatters``) are not implemented.
    """
    check_supported(proto, _SUPPORTED, path, "SubstitutionFormatString")
    if proto.formatters:
        first = proto.formatters[0]
        raise ConfigError(
            join_path(path, "formatters[0]"),
            f"formatter extension '{first.name}' "
            f"({first.typed_config.type_url or 'no type'}) is not supported by "
            "legatus yet",
        )
    omit = proto.omit_empty_values
    which = proto.WhichOneof("format")
    if which == "text_format":
        return compile_format(
            proto.text_format, join_path(path, "text_format"), omit_empty_values=omit
        )
    if which == "text_format_source":
        from legatus.config.datasource import read_data_source

        source_path = join_path(path, "text_format_source")
        data = read_data_source(proto.text_format_source, source_path)
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise ConfigError(source_path, "format string is not valid UTF-8") from None
        return compile_format(text, source_path, omit_empty_values=omit)
    if which == "json_format":
        return compile_json(
            proto.json_format, join_path(path, "json_format"), omit_empty_values=omit
        )
    raise ConfigError(
        join_path(path, "format"),
        "one of text_format, text_format_source or json_format is required",
    )
