"""Virtual clusters (``VirtualHost.virtual_clusters``): request stats for chosen endpoints.

A virtual host may name some of its requests, by header matchers, as virtual clusters, so
that they get stats of their own whatever route and cluster serve them (Envoy's
``VirtualClusterEntry``). The router picks the first virtual cluster whose matchers all match
the request headers, once its route has a cluster; a request that matches none counts under
the catch-all ``other``. A virtual host without virtual clusters has no such stats at all.

Stats, under ``vhost.<virtual host name>.vcluster.<virtual cluster name>.`` (names as given:
Envoy keeps their dots and colons), as Envoy 1.40 keeps them:

- ``VirtualClusterStats``, made with the configuration (zero until used): ``upstream_rq_total``
  (one per try that got a connection), ``upstream_rq_timeout`` (the route timeout),
  ``upstream_rq_retry``, ``_retry_success``, ``_retry_limit_exceeded``, ``_retry_overflow``;
- the response code stats (``upstream_rq_completed``, ``_<N>xx``, ``_<code>``, the
  ``upstream_rq_time`` histogram), charged with the cluster's (http/codes.py, ``scopes``).

The stats store keeps stats by name, so a route configuration update that keeps a virtual
cluster keeps counting on the same stats, as Envoy's do; one that removes it drops its six
counters once no route configuration in use has them (route_stats.RouteStatOwners).
"""

from __future__ import annotations

from dataclasses import dataclass

from legatus.common.matchers import HeaderMatcher
from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported
from legatus.stats.store import StatSet, Store, counter

__all__ = [
    "VirtualCluster",
    "VirtualClusterStats",
    "VirtualClusters",
    "compile_virtual_clusters",
]

_VIRTUAL_CLUSTER_FIELDS = ("name", "headers")
OTHER = "other"  # the catch-all's stat name


class VirtualClusterStats(StatSet):
    """Envoy's ALL_VIRTUAL_CLUSTER_STATS (also its ALL_ROUTE_STATS: route_stats.py)."""

    upstream_rq_retry = counter()
    upstream_rq_retry_limit_exceeded = counter()
    upstream_rq_retry_overflow = counter()
    upstream_rq_retry_success = counter()
    upstream_rq_timeout = counter()
    upstream_rq_total = counter()


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class VirtualCluster:
    """One virtual cluster, compiled (a key by identity). ``name`` is what
    %VIRTUAL_CLUSTER_NAME% shows: None for the catch-all, which Envoy leaves unnamed there
    (its stats still say ``other``)."""

    name: str | None
    headers: tuple[HeaderMatcher, ...]
    prefix: str  # vhost.<vh>.vcluster.<vc>. : the scope of its response code stats
    stats: VirtualClusterStats


class VirtualClusters:
    """A virtual host's virtual clusters in order, and its catch-all ``other``."""

    __slots__ = ("entries", "other")

    def __init__(self, entries: tuple[VirtualCluster, ...], other: VirtualCluster) -> None:
        self.entries = entries
        self.other = other

    def __iter__(self):
        yield from self.entries
        yield self.other

    def match(self, headers) -> VirtualCluster:
        """The request's virtual cluster: the first whose header matchers all match."""
        for entry in self.entries:
            for matcher in entry.headers:
                if not matcher.matches(headers):
                    break
            else:
                return entry
        return self.other


def _virtual_cluster(store: Store, virtual_host: str, name: str | None, headers) -> VirtualCluster:
    prefix = f"vhost.{virtual_host}.vcluster.{OTHER if name is None else name}."
    return VirtualCluster(
        name=name,
        headers=headers,
        prefix=prefix,
        stats=VirtualClusterStats(store.scope(prefix)),
    )


def compile_virtual_clusters(
    protos, virtual_host: str, store: Store, path: str
) -> VirtualClusters | None:
    """A virtual host's ``virtual_clusters`` (None when it has none), with their stats made in
    ``store``; ConfigError names the field Envoy would refuse."""
    if not protos:
        return None
    entries = []
    for i, proto in enumerate(protos):
        entry_path = f"{path}[{i}]"
        check_supported(proto, _VIRTUAL_CLUSTER_FIELDS, entry_path, "VirtualCluster")
        if not proto.headers:
            raise ConfigError(
                join_path(entry_path, "headers"), "virtual clusters must define 'headers'"
            )
        headers = tuple(
            HeaderMatcher(h, f"{join_path(entry_path, 'headers')}[{k}]")
            for k, h in enumerate(proto.headers)
        )
        entries.append(_virtual_cluster(store, virtual_host, proto.name, headers))
    return VirtualClusters(tuple(entries), _virtual_cluster(store, virtual_host, None, ()))
