"""Which upgrades a connection manager lets through: ``HttpConnectionManager.upgrade_configs``
with the route's ``upgrade_configs`` (Envoy's ``createUpgradeFilterChain``).

An upgrade request (``Upgrade`` + ``Connection: upgrade``, or CONNECT, whose type is
``CONNECT``) is allowed when its route enables its type (``RouteAction.upgrade_configs``,
router/upgrade.py), or when the route says nothing of it and the connection manager has it
enabled. A route that disables it wins over the connection manager. Types compare without
case. The allowed request runs through the type's own HTTP filter chain (its ``filters``)
or, without one, the connection manager's; a refused one gets Envoy's answer (403
``upgrade_failed``, the connection closes after it) when it has a route, and the default
chain (the router's 404) when it has none.

::

    HCM enabled | route says | upgrade
    yes (default) | nothing / yes | yes
    yes | no | no
    no / absent | yes | yes
    no / absent | nothing | no
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from legatus.http.filter_chain import HttpFilterChain

__all__ = ["NO_UPGRADE_CONFIGS", "UpgradeConfig", "UpgradeConfigs", "upgrade_type"]


def upgrade_type(headers) -> str:
    """What an upgrade request asks for: ``CONNECT`` for CONNECT, else its Upgrade header."""
    return "CONNECT" if headers.get(":method") == "CONNECT" else headers.get("upgrade", "")


@dataclass(frozen=True, slots=True, kw_only=True)
class UpgradeConfig:
    """One ``HttpConnectionManager.UpgradeConfig``: whether the type is enabled and its own
    filter chain (None: the connection manager's)."""

    enabled: bool = True
    filter_chain: HttpFilterChain | None = None


class UpgradeConfigs:
    """The connection manager's upgrade types (immutable once built)."""

    __slots__ = ("_configs",)

    def __init__(self, configs: Mapping[str, UpgradeConfig]) -> None:
        """``configs``: lower-case upgrade type -> its config."""
        self._configs = types.MappingProxyType(dict(configs))

    def filter_chain(
        self,
        upgrade_type: str,
        route_upgrades: Mapping[str, bool] | None,
        default: HttpFilterChain,
    ) -> HttpFilterChain | None:
        """The filter chain an upgrade of ``upgrade_type`` runs through, or None when it is
        refused. ``route_upgrades``: the route's upgrade map (None without a forwarding
        route); ``default``: the connection manager's chain."""
        key = upgrade_type.lower()
        route_enabled = False
        if route_upgrades:
            enabled = route_upgrades.get(key)
            if enabled is False:
                return None
            route_enabled = enabled is True
        config = self._configs.get(key)
        if (config is None or not config.enabled) and not route_enabled:
            return None
        if config is not None and config.filter_chain is not None:
            return config.filter_chain
        return default

    def __bool__(self) -> bool:
        return bool(self._configs)


NO_UPGRADE_CONFIGS = UpgradeConfigs({})
