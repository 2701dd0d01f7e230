"""The extension registry: config proto full name -> factory, as in Envoy.

Envoy finds an extension by the type of its ``typed_config`` (the type URL
without ``type.googleapis.com/``). Only an opaque config (``Struct``,
``Empty``) falls back to the extension ``name``; a ``TypedStruct`` names the
real type inside. An extension legatus does not have is an error at load time
that names it, its type URL and where in the config it sits.

The registry is a plain object built by ``default_registry()``; tests build
their own. Nothing registers itself on import.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.message import Message

from legatus.config.errors import ConfigError, join_path
from legatus.config.proto_json import TYPE_URL_PREFIX, message_class, type_name

_TYPED_STRUCTS = ("xds.type.v3.TypedStruct", "udpa.type.v1.TypedStruct")
_OPAQUE = ("google.protobuf.Struct", "google.protobuf.Empty")


class Category(enum.Enum):
    """Extension categories, named after Envoy's (``envoy.filters.network``...)."""

    NETWORK_FILTER = "envoy.filters.network"
    HTTP_FILTER = "envoy.filters.http"
    LISTENER_FILTER = "envoy.filters.listener"
    ACCESS_LOGGER = "envoy.access_loggers"
    TRANSPORT_SOCKET_DOWNSTREAM = "envoy.transport_sockets.downstream"
    TRANSPORT_SOCKET_UPSTREAM = "envoy.transport_sockets.upstream"
    ACCESS_LOG_FILTER = "envoy.access_loggers.extension_filters"
    BOOTSTRAP = "envoy.bootstrap"
    COMPRESSOR = "envoy.compression.compressor"
    DECOMPRESSOR = "envoy.compression.decompressor"
    STATEFUL_HEADER_FORMATTER = "envoy.http.stateful_header_formatters"
    ORIGINAL_IP_DETECTION = "envoy.http.original_ip_detection"


@dataclass(frozen=True, slots=True, kw_only=True)
class Extension:
    """One extension: its category, Envoy name(s), config proto type(s) and factory.

    ``factory(config, context, path)`` turns the unpacked config proto into the
    extension's immutable runtime object; it raises ConfigError (paths relative
    to the extension's typed_config) for what PGV rules cannot express.
    """

    category: Category
    name: str
    config_types: tuple[str, ...]
    factory: Callable[[Message, Any, str], Any]
    aliases: tuple[str, ...] = ()
    # An HTTP filter that takes a per-route config (``typed_per_filter_config``): its proto
    # type(s), and ``route_factory(config, context, path)`` compiling one (Envoy's
    # createRouteSpecificFilterConfig).
    route_config_types: tuple[str, ...] = ()
    route_factory: Callable[[Message, Any, str], Any] | None = None


def extension(
    category: Category, name: str, config_type: str, factory: Callable[[Message, Any, str], Any]
) -> Extension:
    """An extension with one config type and a factory (most of them)."""
    return Extension(category=category, name=name, config_types=(config_type,), factory=factory)


def network_filter(
    name: str, config_type: str, factory: Callable[[Message, Any, str], Any]
) -> Extension:
    """An ``envoy.filters.network`` extension: its config type and factory."""
    return extension(Category.NETWORK_FILTER, name, config_type, factory)


def http_filter(
    name: str,
    config_type: str,
    factory: Callable[[Message, Any, str], Any],
    *,
    route_config_type: str | None = None,
    route_factory: Callable[[Message, Any, str], Any] | None = None,
) -> Extension:
    """An ``envoy.filters.http`` extension: its config type and factory, and, when it takes
    per-route configs (``typed_per_filter_config``), their type and compiler."""
    return Extension(
        category=Category.HTTP_FILTER,
        name=name,
        config_types=(config_type,),
        factory=factory,
        route_config_types=(route_config_type,) if route_config_type else (),
        route_factory=route_factory,
    )


class Registry:
    def __init__(self) -> None:
        self._by_type: dict[tuple[Category, str], Extension] = {}
        self._by_name: dict[tuple[Category, str], Extension] = {}
        self._by_route_type: dict[str, Extension] = {}

    def register(self, extension: Extension) -> None:
        for t in extension.config_types:
            self._by_type[(extension.category, t)] = extension
        for t in extension.route_config_types:
            self._by_route_type[t] = extension
        for n in (extension.name, *extension.aliases):
            self._by_name[(extension.category, n)] = extension

    def knows_type(self, full_name: str) -> bool:
        """Whether any extension takes this config type (the typed-struct wrappers count)."""
        if full_name in _TYPED_STRUCTS or full_name in _OPAQUE:
            return True
        return any(t == full_name for _, t in self._by_type)

    def route_config_extension(self, full_name: str) -> Extension | None:
        """The HTTP filter whose per-route config has this proto type, if legatus has it."""
        return self._by_route_type.get(full_name)

    def extensions(self) -> list[Extension]:
        return sorted(set(self._by_name.values()), key=lambda e: (e.category.value, e.name))

    def resolve(
        self, category: Category, *, name: str, typed_config: AnyProto | None, path: str
    ) -> tuple[Extension, Message]:
        """Find the extension for a ``{name, typed_config}`` pair and unpack its config.

        ``path`` is where the pair sits (``...filters[0]``); errors name
        ``path.typed_config``.
        """
        config_path = join_path(path, "typed_config")
        url = typed_config.type_url if typed_config is not None else ""
        full_name = type_name(url) if url else ""
        payload: Any = typed_config
        if full_name in _TYPED_STRUCTS:
            full_name, payload = _typed_struct(typed_config, config_path)
            url = TYPE_URL_PREFIX + full_name
        extension = self._by_type.get((category, full_name)) if full_name else None
        if extension is None and full_name in _OPAQUE:
            extension = self._by_name.get((category, name))
        if extension is None:
            if not url:
                raise ConfigError(
                    path,
                    f"Didn't find a registered implementation for '{name}' with type URL: ''",
                )
            raise ConfigError(
                config_path,
                f"unsupported extension {url} (name '{name}'): legatus does not implement "
                f"this {category.value} extension",
            )
        return extension, _unpack(extension, full_name, payload, config_path)

    def create(self, category: Category, entry: Any, context: Any, path: str) -> Any:
        """Build the extension a ``{name, typed_config}`` entry (a filter, a transport
        socket...) names: ``resolve``, its config checked against the proto's constraints,
        then its factory with ``context``. ``path`` is where the entry sits."""
        from legatus.config.validate import validate_message

        extension, config = self.resolve(
            category,
            name=entry.name,
            typed_config=entry.typed_config if entry.HasField("typed_config") else None,
            path=path,
        )
        config_path = join_path(path, "typed_config")
        errors = validate_message(config, config_path)
        if errors:
            raise errors[0]
        return extension.factory(config, context, config_path)


def _typed_struct(typed_config: AnyProto, path: str) -> tuple[str, dict]:
    cls = message_class(type_name(typed_config.type_url))
    holder = cls()
    typed_config.Unpack(holder)
    if not holder.type_url:
        raise ConfigError(path, "TypedStruct has no type_url")
    return type_name(holder.type_url), json_format.MessageToDict(holder.value)


def _unpack(extension: Extension, full_name: str, payload: Any, path: str) -> Message:
    from legatus.config.proto_json import parse

    target = full_name if full_name in extension.config_types else extension.config_types[0]
    cls = message_class(target)
    if cls is None:
        raise ConfigError(path, f"proto type {target} is not available")
    if isinstance(payload, dict):
        return parse(payload, cls, path=path)
    message = cls()
    if payload is not None and type_name(payload.type_url) == target:
        payload.Unpack(message)
    return message
