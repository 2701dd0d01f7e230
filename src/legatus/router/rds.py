"""Route configurations that change at run time: RDS (Envoy's RdsRouteConfigProviderImpl and
RouteConfigProviderManager).

An HTTP connection manager reads its routes through a provider: ``StaticRouteConfigProvider``
for an inline ``route_config``, ``RdsRouteConfigProvider`` for ``rds``. A stream takes the
provider's ``route_table`` when it starts and keeps it, so that an update applies to new
streams only and a request in flight finishes on the routes it started with.

``RouteConfigProviderManager`` (one per process) keeps every RDS provider by route
configuration name. In the main process it is how an update is checked before it is
accepted (``validate``: compiled for every HTTP connection manager that uses the name, with
that manager's filters, as Envoy's RDS does) and what the main process subscribes to
(``subscriptions``); in a worker it applies the accepted update (``update``). A provider made
after an update (a listener added later) starts from the latest accepted version.

Until its first update an RDS provider has an empty route table: every request gets a 404
with the NR flag, as in Envoy when RDS has not answered (the listener waits for it first).

A provider given ``RouteStatOwners`` holds the ``vhost.*`` stat scopes of the configuration
it serves (route_stats.py): an update releases the old configuration's, ``close()`` (its
listener is gone) the last one's, so that the counters no configuration has any more go.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass

from envoy.config.route.v3 import route_pb2

from legatus.config.errors import ConfigError
from legatus.router.config import RouteTable, compile_route_config
from legatus.router.route_stats import RouteStatOwners, route_stat_prefixes

__all__ = [
    "RdsRouteConfigProvider",
    "RdsSubscriptionKey",
    "RouteConfigProviderManager",
    "StaticRouteConfigProvider",
]

log = logging.getLogger("legatus.router")
_EMPTY = route_pb2.RouteConfiguration()


class StaticRouteConfigProvider:
    __slots__ = ("_held", "_owners", "route_table")

    def __init__(
        self,
        route_table: RouteTable,
        *,
        proto: route_pb2.RouteConfiguration | None = None,
        owners: RouteStatOwners | None = None,
    ) -> None:
        self.route_table = route_table
        self._owners = owners
        self._held: frozenset[str] = frozenset()
        if owners is not None and proto is not None:
            self._held = route_stat_prefixes(proto)
            owners.hold(self._held)

    def close(self) -> None:
        """Its listener is gone: the route stats only it had go."""
        if self._owners is not None:
            self._owners.release(self._held)
            self._held = frozenset()


@dataclass(frozen=True, slots=True)
class RdsSubscriptionKey:
    """One RDS subscription: a route configuration name from one config source (a
    serialized ConfigSource, so that two identical sources share it, as in Envoy)."""

    route_config_name: str
    config_source: bytes


class RdsRouteConfigProvider:
    """One HTTP connection manager's view of an RDS route configuration."""

    __slots__ = (
        "__weakref__", "_compile", "_held", "_owners", "closed", "key", "route_table",
        "stat_prefix", "version",
    )  # fmt: skip

    def __init__(
        self,
        key: RdsSubscriptionKey,
        compile_table: Callable[[route_pb2.RouteConfiguration], RouteTable],
        stat_prefix: str,
        owners: RouteStatOwners | None = None,
    ) -> None:
        self.key = key
        self._compile = compile_table
        self.stat_prefix = stat_prefix
        self.route_table = compile_table(_EMPTY)
        self.version = ""
        self._owners = owners
        self._held: frozenset[str] = frozenset()
        self.closed = False

    def check(self, proto: route_pb2.RouteConfiguration) -> RouteTable:
        return self._compile(proto)

    def take(self, proto: route_pb2.RouteConfiguration, version: str) -> None:
        """Serve ``proto`` (accepted); the route stats only the old configuration had go."""
        self.route_table = self.check(proto)
        self.version = version
        owners = self._owners
        if owners is not None:
            held, self._held = self._held, route_stat_prefixes(proto)
            owners.hold(self._held)
            owners.release(held)

    def close(self) -> None:
        """Its listener is gone: no more updates; the route stats only it had go."""
        self.closed = True
        if self._owners is not None:
            self._owners.release(self._held)
            self._held = frozenset()


class RouteConfigProviderManager:
    def __init__(self) -> None:
        self._providers: dict[RdsSubscriptionKey, weakref.WeakSet] = {}
        self._latest: dict[RdsSubscriptionKey, tuple[bytes, str]] = {}
        self._first_prefix: dict[RdsSubscriptionKey, str] = {}

    def provider(
        self,
        rds,
        compile_table: Callable[[route_pb2.RouteConfiguration], RouteTable],
        stat_prefix: str,
        owners: RouteStatOwners | None = None,
    ) -> RdsRouteConfigProvider:
        """The provider of an HCM's ``rds`` (envoy...v3.Rds); ``compile_table`` compiles a
        RouteConfiguration for that HCM (its filters, its context); ``owners``: where it
        holds the route stats of what it serves."""
        key = RdsSubscriptionKey(rds.route_config_name, rds.config_source.SerializeToString())
        provider = RdsRouteConfigProvider(key, compile_table, stat_prefix, owners)
        latest = self._latest.get(key)
        if latest is not None:
            raw, version = latest
            provider.take(route_pb2.RouteConfiguration.FromString(raw), version)
        self._providers.setdefault(key, weakref.WeakSet()).add(provider)
        self._first_prefix.setdefault(key, stat_prefix)
        return provider

    def subscriptions(self) -> dict[RdsSubscriptionKey, str]:
        """Every RDS subscription still in use, with the stat prefix of the first HCM that
        asked for it (its ``http.<prefix>.rds.<name>.`` stats)."""
        return {
            key: self._first_prefix[key] for key, providers in self._providers.items() if providers
        }

    def config_source(self, key: RdsSubscriptionKey):
        from envoy.config.core.v3 import config_source_pb2

        return config_source_pb2.ConfigSource.FromString(key.config_source)

    def validate(self, key: RdsSubscriptionKey, proto: route_pb2.RouteConfiguration) -> None:
        """Compile ``proto`` for every HCM that uses ``key``; ConfigError if one refuses."""
        from legatus.config_subscription.decode import check_resource

        check_resource(proto, "")
        if proto.name != key.route_config_name:
            raise ConfigError(
                "name",
                f"Unexpected RDS configuration (expecting {key.route_config_name}): {proto.name}",
            )
        for provider in list(self._providers.get(key, ())):
            provider.check(proto)

    def update(self, key: RdsSubscriptionKey, raw: bytes, version: str = "") -> None:
        """Apply an accepted update (serialized RouteConfiguration) to every provider."""
        self._latest[key] = (raw, version)
        proto = route_pb2.RouteConfiguration.FromString(raw)
        for provider in list(self._providers.get(key, ())):
            if provider.closed:
                continue
            try:
                provider.take(proto, version)
            except ConfigError:  # validated by the main process: a bug, not an input
                log.exception("route configuration '%s' refused after it was accepted", key)


def compile_rds_table(context, path: str) -> Callable[[route_pb2.RouteConfiguration], RouteTable]:
    """How an HCM with ``rds`` compiles each RouteConfiguration it receives."""

    def compile_table(proto: route_pb2.RouteConfiguration) -> RouteTable:
        return compile_route_config(proto, context, path, validate_clusters_default=False)

    return compile_table
