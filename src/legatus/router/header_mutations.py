"""Request and response header mutations of a route table level (Envoy's HeaderParser).

``request_headers_to_add`` / ``request_headers_to_remove`` (and the response pair) exist on
the route configuration, each virtual host, each route and each weighted cluster. One level
compiles into one ``HeaderMutations``; applying it does what Envoy 1.40 does (checked
against the real Envoy on direct responses):

1. every name of ``*_headers_to_remove`` is removed;
2. every value of ``*_headers_to_add`` is formatted, all against the headers as they are
   now (Envoy's substitution formatter, ``%REQ(x)%``, ``%DOWNSTREAM_REMOTE_ADDRESS%``...;
   an operator without a value renders as nothing); an empty value is skipped unless
   ``keep_empty_value``;
3. the ``append_action`` of each decides: ``APPEND_IF_EXISTS_OR_ADD`` adds a value,
   ``ADD_IF_ABSENT`` adds only when the header was absent, ``OVERWRITE_IF_EXISTS_OR_ADD``
   replaces (or adds), ``OVERWRITE_IF_EXISTS`` replaces only a present header; the
   deprecated ``append`` (true: append, false: overwrite) may not be set with a
   non-default ``append_action``;
4. all overwrites are applied, then all additions. An overwritten header moves to the end
   of the map, as Envoy's ``setReferenceKey`` (remove, then add) does.

Which level wins is the route table's business (see ``RouteMatch.finalize_*_headers``):
by default levels apply from the most specific (route) to the least (route configuration),
so the least specific overwrite lands last; ``most_specific_header_mutations_wins``
reverses that. A weighted cluster's mutations always apply first.

``:``-prefixed names and ``host`` may be neither added nor removed (Envoy's errors).

``HeaderValue.raw_value`` is accepted, and used as Envoy 1.40's route header mutations use
it: not at all. Only ``value`` is formatted, so a header given by ``raw_value`` alone has an
empty value (skipped unless ``keep_empty_value``); with both, ``value`` is the value.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from legatus.access_log.formatter import Formatter, parse
from legatus.common.matchers import ascii_lower
from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported

__all__ = ["AppendAction", "HeaderMutations", "compile_header_mutations"]


class AppendAction(enum.IntEnum):
    """``envoy.config.core.v3.HeaderValueOption.HeaderAppendAction``."""

    APPEND_IF_EXISTS_OR_ADD = 0
    ADD_IF_ABSENT = 1
    OVERWRITE_IF_EXISTS_OR_ADD = 2
    OVERWRITE_IF_EXISTS = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderToAdd:
    name: str
    action: AppendAction
    keep_empty_value: bool
    value: str | None  # the value when it has no operator (no formatting per request)
    formatter: Formatter | None


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderMutations:
    """One level's compiled ``*_headers_to_add`` and ``*_headers_to_remove``."""

    to_add: tuple[HeaderToAdd, ...] = ()
    to_remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.to_add or self.to_remove)

    def apply(self, headers, info, request_headers=None, response_headers=None) -> None:
        """Mutate ``headers``; the formatter sees ``request_headers``/``response_headers``.

        For request headers pass the same map as ``headers`` and ``request_headers``; for
        response headers pass the response map as ``headers`` and ``response_headers``.
        """
        for name in self.to_remove:
            headers.remove(name)
        if not self.to_add:
            return
        overwrite: list[tuple[str, str]] = []
        add: list[tuple[str, str]] = []
        for entry in self.to_add:
            value = entry.value
            if value is None:
                value = entry.formatter.format(info, request_headers, response_headers)
            if not value and not entry.keep_empty_value:
                continue
            action = entry.action
            if action == AppendAction.APPEND_IF_EXISTS_OR_ADD:
                add.append((entry.name, value))
            elif action == AppendAction.ADD_IF_ABSENT:
                if entry.name not in headers:
                    add.append((entry.name, value))
            elif action == AppendAction.OVERWRITE_IF_EXISTS_OR_ADD or entry.name in headers:
                overwrite.append((entry.name, value))
        for name, value in overwrite:
            headers.remove(name)
            headers.add(name, value)
        for name, value in add:
            headers.add(name, value)


EMPTY = HeaderMutations()

_MODIFY_ERROR = ":-prefixed or host headers may not be modified"
_REMOVE_ERROR = ":-prefixed or host headers may not be removed"


def is_modifiable_header(name: str) -> bool:
    """Envoy's HeaderUtility::isModifiableHeader (and isRemovableHeader)."""
    return bool(name) and not name.startswith(":") and ascii_lower(name) != "host"


def compile_header_mutations(
    to_add: Sequence[Any], to_remove: Sequence[str], path: str, *, prefix: str
) -> HeaderMutations:
    """Compile ``<prefix>_headers_to_add`` / ``<prefix>_headers_to_remove`` at ``path``.

    ``prefix`` is ``request`` or ``response`` (it names the fields in errors).
    """
    if not to_add and not to_remove:
        return EMPTY
    add_field = join_path(path, f"{prefix}_headers_to_add")
    entries = tuple(_header_to_add(option, f"{add_field}[{i}]") for i, option in enumerate(to_add))
    removed = []
    remove_field = join_path(path, f"{prefix}_headers_to_remove")
    for i, name in enumerate(to_remove):
        if not is_modifiable_header(name):
            raise ConfigError(f"{remove_field}[{i}]", _REMOVE_ERROR)
        removed.append(ascii_lower(name))
    return HeaderMutations(to_add=entries, to_remove=tuple(removed))


def _header_to_add(option, path: str) -> HeaderToAdd:
    check_supported(
        option, ("header", "append", "append_action", "keep_empty_value"), path, "HeaderValueOption"
    )
    header_path = join_path(path, "header")
    check_supported(option.header, ("key", "value", "raw_value"), header_path, "HeaderValue")
    key = option.header.key
    if not is_modifiable_header(key):
        raise ConfigError(join_path(header_path, "key"), _MODIFY_ERROR)
    if option.HasField("append"):
        if option.append_action != AppendAction.APPEND_IF_EXISTS_OR_ADD:
            raise ConfigError(
                join_path(path, "append"),
                "Both append and append_action are set and it's not allowed",
            )
        action = (
            AppendAction.APPEND_IF_EXISTS_OR_ADD
            if option.append.value
            else AppendAction.OVERWRITE_IF_EXISTS_OR_ADD
        )
    else:
        action = AppendAction(option.append_action)
    text = _translate_legacy(option.header.value)
    parts = parse(text, join_path(header_path, "value"))
    if all(isinstance(part, str) for part in parts):  # no operator: nothing to format later
        value, formatter = "".join(parts), None  # type: ignore[arg-type]
    else:
        value, formatter = None, Formatter(text, parts, omit_empty_values=True)
    return HeaderToAdd(
        name=ascii_lower(key),
        action=action,
        keep_empty_value=option.keep_empty_value,
        value=value,
        formatter=formatter,
    )


# Envoy 1.40 still translates two legacy header-formatter spellings before parsing
# (runtime guard envoy.reloadable_features.remove_legacy_route_formatter is off):
# %UPSTREAM_METADATA(["ns", "key"])% -> %UPSTREAM_METADATA(ns:key)% (and DYNAMIC_METADATA),
# %PER_REQUEST_STATE(key)% -> %FILTER_STATE(key:PLAIN)%.
_LEGACY_METADATA = re.compile(
    r'%(UPSTREAM|DYNAMIC)_METADATA\(\s*(\[(?:\s*"[^"]*"\s*,?)*\s*\])\s*\)%'
)
_LEGACY_PER_REQUEST_STATE = re.compile(r"%PER_REQUEST_STATE\((.*)\)%")


def _translate_legacy(value: str) -> str:
    if "%" not in value:
        return value

    def metadata(m: re.Match) -> str:
        try:
            keys = json.loads(m.group(2))
        except ValueError:
            return m.group(0)
        return f"%{m.group(1)}_METADATA({':'.join(str(k) for k in keys)})%"

    value = _LEGACY_METADATA.sub(metadata, value)
    return _LEGACY_PER_REQUEST_STATE.sub(r"%FILTER_STATE(\1:PLAIN)%", value)
