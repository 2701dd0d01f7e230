"""What a compiled command operator is, and the small builders the operator tables share.

A ``Provider`` is an operator compiled once: ``text`` and ``value`` are functions of
``(info, request_headers, response_headers, response_trailers)``:

- ``text`` returns the operator's string, or None for "not set" (rendered ``-``, or
  nothing with ``omit_empty_values``);
- ``value`` returns the typed value used by JSON formats: ``int`` for counters, ports,
  durations and codes, ``str`` otherwise, None for "not set" (JSON ``null``).

``inline`` optionally gives ``text`` as a Python expression, so that a text format can be
compiled into one function with no call per operator (formatter.py): a template over the
names ``info``, ``req``, ``resp``, ``trl``, with ``{0}``, ``{1}``... standing for the
constants that follow it and ``{t}`` for a temporary name of its own. ``never_none`` says
the expression is never None (no ``-`` fallback needed); it may then be an ``int``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Getter = Callable[[Any, Any, Any, Any], Any]


@dataclass(frozen=True, slots=True)
class Provider:
    text: Getter
    value: Getter
    inline: tuple[str, tuple] | None = None
    never_none: bool = False


class Syntax(enum.IntFlag):
    """Envoy's CommandSyntaxChecker flags."""

    COMMAND_ONLY = 0
    PARAMS_REQUIRED = 1
    PARAMS_OPTIONAL = 2
    LENGTH_ALLOWED = 4


Factory = Callable[[str, "int | None", str], Provider]


def simple(provider: Provider) -> Factory:
    """A factory for an operator that takes no parameter: always the same Provider."""
    return lambda _sub, _max_length, _path: provider


def string(get: Callable[[Any], str | None], inline: str | None = None) -> Provider:
    """A string (or None) read from the stream info; ``inline`` its expression over ``info``."""

    def text(info, _req, _resp, _trl):
        return get(info)

    return Provider(text, text, None if inline is None else (inline, ()))


def uint(get: Callable[[Any], int], inline: str | None = None) -> Provider:
    """A number that is always there (``0`` when unknown), as Envoy's uint64 operators."""

    def value(info, _req, _resp, _trl):
        return get(info)

    def text(info, _req, _resp, _trl):
        return str(get(info))

    return Provider(text, value, None if inline is None else (inline, ()), never_none=True)


def optional_uint(get: Callable[[Any], int | None]) -> Provider:
    """A number that may be unset (``-``, JSON ``null``): durations."""

    def text(info, _req, _resp, _trl):
        v = get(info)
        return None if v is None else str(v)

    def value(info, _req, _resp, _trl):
        return get(info)

    return Provider(text, value)


def milliseconds(start: float, end: float) -> int:
    """Envoy's duration_cast<milliseconds> of a monotonic span given in float seconds.

    The span is rounded to whole nanoseconds first (Envoy's clock unit) so that float
    error (0.003 s read as 2.9999 ms) does not lose a millisecond, then truncated.
    """
    nanos = round((end - start) * 1e9)
    return nanos // 1_000_000 if nanos >= 0 else -(-nanos // 1_000_000)


def split_address(address: str) -> tuple[str, str]:
    """``1.2.3.4:80`` -> (``1.2.3.4``, ``80``); ``[::1]:80`` -> (``::1``, ``80``)."""
    if address.startswith("["):
        host, _, port = address[1:].rpartition("]:")
        return host, port
    host, sep, port = address.rpartition(":")
    return (host, port) if sep else (address, "")


def address(attr: str, part: str) -> Provider:
    """An ``ip:port`` StreamInfo field with its ``_WITHOUT_PORT`` / ``_PORT`` variants."""
    if part == "full":
        return string(lambda info: getattr(info, attr), f"info.{attr}")
    if part == "host":
        return string(lambda info: _host_of(getattr(info, attr)))

    def port_text(info, _req, _resp, _trl):
        address = getattr(info, attr)
        return None if address is None else split_address(address)[1]

    def port_value(info, _req, _resp, _trl):
        address = getattr(info, attr)
        port = None if address is None else split_address(address)[1]
        return int(port) if port else None

    return Provider(port_text, port_value)


def _host_of(address: str | None) -> str | None:
    return None if address is None else split_address(address)[0]


def truncate(value: str | None, max_length: int | None) -> str | None:
    return value if value is None or max_length is None else value[:max_length]
