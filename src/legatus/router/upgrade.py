"""Upgrades and CONNECT on a route: ``RouteAction.upgrade_configs``, compiled once, and the
questions the router asks of an upgrade request (Envoy 1.40's rules, checked against it).

A route's ``upgrade_configs`` enable or disable an upgrade type for that route whatever the
connection manager says (``upgrade_map``: lower-case type -> enabled; the connection manager
decides with it, http/upgrades.py). ``CONNECT`` is an upgrade type like the others; with a
``connect_config`` the route terminates CONNECT at the proxy: the router opens a raw TCP
connection to the cluster's host (conn_pool/tcp.py) and answers 200 once it is up. Without
one, CONNECT is proxied to the HTTP/1.1 upstream as a CONNECT request (Envoy 1.40's default,
``http_route_connect_proxy_by_default``). ``connect_config.allow_post`` sends a POST's body
the same way, over a TCP connection that the end of the body half-closes.

Envoy's timeouts on an upgrade: the route timeout of a WebSocket upgrade runs from the request
head until the 101 (the request of a tunnel never completes, so other upgrades and CONNECT
have none); idle timeouts apply to the tunnel.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass

from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported
from legatus.http.conn_manager_utility import is_upgrade
from legatus.http.headers import HeaderMap

__all__ = [
    "NO_UPGRADES",
    "ConnectConfig",
    "compile_upgrade_configs",
    "is_websocket_upgrade",
    "uses_tcp_upstream",
]

NO_UPGRADES: Mapping[str, bool] = types.MappingProxyType({})
_UPGRADE_CONFIG_FIELDS = ("upgrade_type", "enabled", "connect_config")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectConfig:
    """``RouteAction.UpgradeConfig.ConnectConfig``: CONNECT (and, with ``allow_post``, POST)
    ends at the proxy and its payload goes over a raw TCP connection."""

    allow_post: bool = False


def compile_upgrade_configs(protos, path: str) -> tuple[Mapping[str, bool], ConnectConfig | None]:
    """``RouteAction.upgrade_configs`` at ``path``: (lower-case type -> enabled, the CONNECT
    config or None), with Envoy's errors for a repeated type and a ``connect_config`` on a
    type other than CONNECT."""
    upgrades: dict[str, bool] = {}
    connect_config = None
    for i, proto in enumerate(protos):
        entry = f"{path}[{i}]"
        check_supported(proto, _UPGRADE_CONFIG_FIELDS, entry, "UpgradeConfig")
        name = proto.upgrade_type
        key = name.lower()
        if key in upgrades:
            raise ConfigError(entry, f"Duplicate upgrade {name}")
        upgrades[key] = proto.enabled.value if proto.HasField("enabled") else True
        if proto.HasField("connect_config"):
            config_path = join_path(entry, "connect_config")
            if key != "connect":
                raise ConfigError(config_path, f"Non-CONNECT upgrade type {name} has ConnectConfig")
            check_supported(proto.connect_config, ("allow_post",), config_path, "ConnectConfig")
            connect_config = ConnectConfig(allow_post=proto.connect_config.allow_post)
    return (types.MappingProxyType(upgrades) if upgrades else NO_UPGRADES), connect_config


def is_websocket_upgrade(headers: HeaderMap) -> bool:
    """Envoy's isWebSocketUpgradeRequest: an upgrade whose Upgrade header is ``websocket``."""
    value = headers.get("upgrade")
    return value is not None and value.lower() == "websocket" and is_upgrade(headers)


def uses_tcp_upstream(connect_config: ConnectConfig | None, headers: HeaderMap) -> bool:
    """Whether the request goes over a raw TCP connection rather than to an HTTP upstream:
    a CONNECT (or, with ``allow_post``, a POST) on a route with a ``connect_config``."""
    if connect_config is None:
        return False
    method = headers.get(":method")
    return method == "CONNECT" or (connect_config.allow_post and method == "POST")
