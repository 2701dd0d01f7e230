"""``typed_per_filter_config``: per-route HTTP filter configs, compiled with the route table.

At each level (route configuration, virtual host, route, weighted cluster) the map goes
from an HTTP filter's config *name* (its ``HttpFilter.name``) to a config proto in an
``Any``. As in Envoy, the filter that compiles an entry is found by the entry's proto type,
not by the name: legatus asks the registry for the HTTP filter whose
``route_config_types`` contain the type and runs its ``route_factory`` once, here, at
config time. At request time a filter asks its stream's ``RouteMatch`` for
``most_specific_per_filter_config(name)`` (weighted cluster, then route, then virtual
host, then route configuration) or for every level with ``per_filter_configs(name)``.

An ``envoy.config.route.v3.FilterConfig`` wrapper is unwrapped: with ``is_optional`` an
entry whose type legatus has no filter for is skipped (Envoy skips it when the filter is
absent); without it the entry is an error naming the type. ``FilterConfig.disabled``
(turning a filter off, or a ``disabled`` filter on, per route) is refused by name until
the filter chain honours it.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

from legatus.config.errors import ConfigError
from legatus.config.proto_json import type_name

PerFilterConfig = Mapping[str, Any]  # filter config name -> the compiled per-route config
EMPTY: PerFilterConfig = types.MappingProxyType({})
_FILTER_CONFIG = "envoy.config.route.v3.FilterConfig"


def compile_per_filter_configs(entries, context, path: str) -> PerFilterConfig:
    """Compile one level's ``typed_per_filter_config`` map (``path`` names the map)."""
    if not entries:
        return EMPTY
    registry = getattr(context, "registry", None)
    compiled: dict[str, Any] = {}
    for name, any_proto in entries.items():
        where = f"{path}['{name}']"
        full_name = type_name(any_proto.type_url)
        optional = False
        if full_name == _FILTER_CONFIG:
            from envoy.config.route.v3 import route_components_pb2

            wrapper = route_components_pb2.FilterConfig()
            any_proto.Unpack(wrapper)
            if wrapper.disabled:
                raise ConfigError(
                    f"{where}.disabled",
                    "FilterConfig.disabled (per-route enabling or disabling of a filter) is "
                    "not supported by legatus yet",
                )
            optional = wrapper.is_optional
            if not wrapper.HasField("config"):
                continue
            any_proto = wrapper.config
            full_name = type_name(any_proto.type_url)
            where = f"{where}.config"
        extension = registry.route_config_extension(full_name) if registry else None
        if extension is None or extension.route_factory is None:
            if optional:
                continue
            raise ConfigError(
                where,
                f"per-route config {full_name} (entry '{name}') is not supported by legatus: "
                "no HTTP filter it has takes that type",
            )
        from legatus.config.proto_json import message_class
        from legatus.config.validate import validate_message

        message = message_class(full_name)()
        any_proto.Unpack(message)
        errors = validate_message(message, where)
        if errors:
            raise errors[0]
        compiled[name] = extension.route_factory(message, context, where)
    return types.MappingProxyType(compiled) if compiled else EMPTY
