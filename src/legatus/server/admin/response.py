"""What an admin handler returns, and the small helpers every endpoint shares.

Handlers are plain functions ``(context, query) -> AdminResponse``: no sockets,
no HTTP framing. The listener adds ``date``, ``server`` and the framing headers.

Facts checked against Envoy 1.40's admin listener:
- every response carries ``content-type``, ``cache-control: no-cache, max-age=0``
  and ``x-content-type-options: nosniff``, in that order; text bodies are
  ``text/plain; charset=UTF-8``, JSON bodies ``application/json``, the home
  page ``text/html; charset=UTF-8``;
- query values are percent-decoded but '+' stays '+' (``?filter=a+b`` is the
  regex ``a+b``); a bare key (``?usedonly``) has the value "";
- JSON bodies from protos are protobuf's JSON with proto field names and a
  one-space indent, followed by a newline.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from google.protobuf import json_format

TEXT = "text/plain; charset=UTF-8"
JSON = "application/json"
HTML = "text/html; charset=UTF-8"

_COMMON = (("cache-control", "no-cache, max-age=0"), ("x-content-type-options", "nosniff"))


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


def respond(body: str | bytes, *, status: int = 200, content_type: str = TEXT) -> AdminResponse:
    if isinstance(body, str):
        body = body.encode()
    return AdminResponse(
        status=status, headers=(("content-type", content_type), *_COMMON), body=body
    )


def text(body: str, status: int = 200) -> AdminResponse:
    return respond(body, status=status)


def json_body(body: str, status: int = 200) -> AdminResponse:
    return respond(body, status=status, content_type=JSON)


def proto_json(message: Any, *, defaults: bool = False) -> str:
    """A proto as Envoy's admin prints it; ``defaults`` also prints zero-valued fields
    (``/server_info`` and ``/memory`` do, ``/config_dump`` and ``/clusters`` do not)."""
    if not defaults:
        return (
            json_format.MessageToJson(
                message, preserving_proto_field_name=True, indent=1, ensure_ascii=False
            )
            + "\n"
        )
    return dumps(proto_dict(message))


def proto_dict(message: Any) -> dict[str, Any]:
    """The JSON object of a proto with every field, in field-number order as Envoy's
    (C++) printer writes them; Python's printer puts the zero-valued ones last."""
    data = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _field_order(message.DESCRIPTOR, data)


def dumps(data: Any) -> str:
    """JSON as protobuf's printer lays it out: one-space indent, UTF-8 kept, a final newline."""
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


def _field_order(descriptor: Any, data: Any) -> Any:
    if not isinstance(data, dict) or descriptor.full_name.startswith("google.protobuf."):
        return data  # well-known types print as scalars, lists or free-form objects
    out = {}
    for field in sorted(descriptor.fields, key=lambda f: f.number):
        if field.name not in data:
            continue
        value = data[field.name]
        sub = field.message_type
        if sub is not None and not sub.GetOptions().map_entry:
            if field.is_repeated:
                value = [_field_order(sub, item) for item in value]
            else:
                value = _field_order(sub, value)
        out[field.name] = value
    for key, value in data.items():  # "@type" and anything else the printer added
        out.setdefault(key, value)
    return out


@dataclass(frozen=True, slots=True)
class Query:
    """A query string as Envoy's admin reads it: ordered pairs, first value wins."""

    pairs: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, query_string: str) -> Query:
        pairs = []
        for item in query_string.split("&"):
            if not item:
                continue
            key, _, value = item.partition("=")
            pairs.append((unquote(key), unquote(value)))
        return cls(tuple(pairs))

    def __add__(self, other: Query) -> Query:
        return Query(self.pairs + other.pairs)

    def __contains__(self, name: object) -> bool:
        return any(key == name for key, _ in self.pairs)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def get(self, name: str, default: str | None = None) -> str | None:
        for key, value in self.pairs:
            if key == name:
                return value
        return default
