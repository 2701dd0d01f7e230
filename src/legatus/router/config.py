"""A route configuration compiled into a RouteTable: virtual hosts, routes, actions.

``compile_route_config(proto, context, path)`` turns an ``envoy.config.route.v3.
RouteConfiguration`` into an immutable ``RouteTable`` once; ``RouteTable.route(headers,
random_value)`` is the per-request lookup (Envoy's ConfigImpl / RouteMatcher /
VirtualHostImpl in ``source/common/router/config_impl.cc``):

1. The virtual host is chosen by ``:authority`` (or by the first value of the table's
   ``vhost_header``: without that header no virtual host is chosen), lower-cased (ASCII),
   port included unless ``ignore_port_in_host_matching`` (then anything after the last
   ``:`` outside IPv6 brackets is dropped): an exact domain first; then suffix wildcards
   (``*.example.com``, ``*-bar.example.com``), longest first; then prefix wildcards
   (``foo.*``), longest first; then ``*``. A wildcard never matches an empty part
   (``*.a.com`` does not match ``.a.com``). Domains are unique across the table and only
   one ``*`` is allowed. A table whose only domain is ``*`` routes requests without
   ``:authority`` (or ``vhost_header``) too.
2. Without ``x-forwarded-proto`` (the connection manager always sets it) nothing routes,
   as in Envoy. A virtual host with ``require_tls`` answers a request whose
   ``x-forwarded-proto`` is not exactly ``https`` (``EXTERNAL_ONLY``: and that is not
   internal, ``x-envoy-internal: true``) with Envoy's TLS redirect (redirect.py) before
   any route. The routes of the virtual host are tried in order; the first whose
   RouteMatch matches wins (see matchers.py).
3. The result is a ``RouteMatch``: the route, its virtual host and, for a forwarding
   route, the cluster picked for this request (``cluster``, ``cluster_header`` or
   ``weighted_clusters`` with ``random_value``).

Static routes resolve to a RouteMatch built at config time, so a lookup allocates nothing
for them. ``validate_clusters`` (default true for a route configuration given inline in
the connection manager, as Envoy does; pass ``validate_clusters_default=False`` for RDS)
rejects static cluster names not in ``context.cluster_names``.

A CONNECT request (no ``:path``) is matched only by routes with a ``connect_matcher``, which
match nothing else; ``RouteAction.upgrade_configs`` are compiled by upgrade.py.

Mirror policies: a route's own, else its virtual host's, else the route configuration's
(the most specific non-empty list, as Envoy: lists are not merged); with
``validate_clusters`` a mirror's static cluster must exist. ``internal_only_headers`` are
kept on the table for the connection manager, which removes them from external requests
(conn_manager_utility.py).

A virtual host's ``virtual_clusters`` (virtual_cluster.py) and a route's ``stat_prefix`` give
a forwarding route's action its ``request_stats`` (route_stats.py).

Not implemented yet, and refused by name when set: VHDS, cluster specifier plugins; virtual
host ``matcher`` trees, CORS; route ``decorator``, ``tracing``, filter/non-forwarding actions;
and, in RouteMatch/RouteAction, what matchers.py and action.py list.
``typed_per_filter_config`` is compiled by the HTTP filter that owns each entry's type
(per_filter_config.py).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from legatus.common.matchers import ascii_lower
from legatus.config.errors import ConfigError, join_path
from legatus.config.metadata import EMPTY as NO_METADATA
from legatus.config.metadata import compile_metadata
from legatus.config.supported import check_supported
from legatus.router.action import (
    DEFAULT_MAX_DIRECT_RESPONSE_BODY_SIZE,
    DirectResponseAction,
    RouteAction,
    compile_direct_response,
    compile_route_action,
)
from legatus.router.header_mutations import EMPTY, HeaderMutations, compile_header_mutations
from legatus.router.matchers import PathKind, RouteMatcher, compile_route_match, path_for_matching
from legatus.router.per_filter_config import (
    EMPTY as NO_PER_FILTER_CONFIG,
)
from legatus.router.per_filter_config import (
    PerFilterConfig,
    compile_per_filter_configs,
)
from legatus.router.rate_limit_policy import EMPTY_POLICY, compile_rate_limit_policy
from legatus.router.redirect import TLS_REDIRECT, RedirectAction, compile_redirect
from legatus.router.retry_policy import compile_hedge_policy, compile_retry_policy
from legatus.router.route_stats import compile_request_stats
from legatus.router.shadow_writer import MirrorPolicy, compile_mirror_policies
from legatus.router.virtual_cluster import VirtualClusters, compile_virtual_clusters
from legatus.router.weighted_clusters import ClusterWeight

__all__ = ["Route", "RouteMatch", "RouteTable", "VirtualHost", "compile_route_config"]

Action = RouteAction | RedirectAction | DirectResponseAction
_EXTERNAL_ONLY = 1  # VirtualHost.TlsRequirementType (NONE, EXTERNAL_ONLY, ALL)

_ROUTE_CONFIG_FIELDS = (
    "name",
    "virtual_hosts",
    "request_headers_to_add",
    "request_headers_to_remove",
    "response_headers_to_add",
    "response_headers_to_remove",
    "most_specific_header_mutations_wins",
    "validate_clusters",
    "max_direct_response_body_size_bytes",
    "ignore_port_in_host_matching",
    "ignore_path_parameters_in_path_matching",
    "typed_per_filter_config",
    "internal_only_headers",
    "vhost_header",
    "request_mirror_policies",
)
_VIRTUAL_HOST_FIELDS = (
    "name",
    "domains",
    "routes",
    "retry_policy",
    "request_mirror_policies",
    "hedge_policy",
    "include_request_attempt_count",
    "include_attempt_count_in_response",
    "request_headers_to_add",
    "request_headers_to_remove",
    "response_headers_to_add",
    "response_headers_to_remove",
    "typed_per_filter_config",
    "rate_limits",
    "metadata",
    "require_tls",
    "include_is_timeout_retry_header",
    "virtual_clusters",
)
_ROUTE_FIELDS = (
    "name",
    "metadata",
    "match",
    "route",
    "redirect",
    "direct_response",
    "typed_per_filter_config",
    "request_headers_to_add",
    "request_headers_to_remove",
    "response_headers_to_add",
    "response_headers_to_remove",
    "stat_prefix",
)


def _per_filter(proto, context, path: str) -> PerFilterConfig:
    return compile_per_filter_configs(
        proto.typed_per_filter_config, context, join_path(path, "typed_per_filter_config")
    )


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """The answer for one request: the route, its virtual host, and the cluster picked."""

    route: Route
    cluster_name: str | None = None  # None for redirects and direct responses
    weighted_cluster: ClusterWeight | None = None
    # The route's, copied when built (attributes, not properties: read several times a
    # request), and ``Route.request_as_is`` / ``response_as_is`` with the weighted cluster's
    # header mutations and host rewrite.
    name: str = field(init=False, repr=False, compare=False)
    virtual_host: VirtualHost = field(init=False, repr=False, compare=False)
    action: Action = field(init=False, repr=False, compare=False)
    request_as_is: bool = field(init=False, repr=False, compare=False)
    response_as_is: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        route = self.route
        weighted = self.weighted_cluster
        request_as_is = route.request_as_is
        response_as_is = route.response_as_is
        if weighted is not None:
            request_as_is = request_as_is and not (
                weighted.request_headers or weighted.host_rewrite_literal
            )
            response_as_is = response_as_is and not weighted.response_headers
        object.__setattr__(self, "name", route.name)
        object.__setattr__(self, "virtual_host", route.virtual_host)
        object.__setattr__(self, "action", route.action)
        object.__setattr__(self, "request_as_is", request_as_is)
        object.__setattr__(self, "response_as_is", response_as_is)

    def rewrite_path(self, path: str) -> str | None:
        """The ``:path`` after the route's prefix/regex rewrite (a redirect's for a redirect
        route), or None when nothing is rewritten (then no ``x-envoy-original-path`` either).
        """
        return self.route.action.rewrite_path(path)

    def finalize_request_headers(self, headers, info) -> None:
        """Apply every level's request header mutations, in Envoy's order."""
        weighted = self.weighted_cluster
        if weighted is not None and weighted.request_headers:
            weighted.request_headers.apply(headers, info, headers)
        for mutations in self.route.request_headers:
            mutations.apply(headers, info, headers)

    def finalize_response_headers(self, request_headers, response_headers, info) -> None:
        """Apply every level's response header mutations, in Envoy's order."""
        weighted = self.weighted_cluster
        if weighted is not None and weighted.response_headers:
            weighted.response_headers.apply(
                response_headers, info, request_headers, response_headers
            )
        for mutations in self.route.response_headers:
            mutations.apply(response_headers, info, request_headers, response_headers)

    def most_specific_per_filter_config(self, filter_name: str) -> Any:
        """The compiled per-route config of the filter named ``filter_name`` (its
        ``HttpFilter.name``) at the most specific level that has one, or None."""
        weighted = self.weighted_cluster
        if weighted is not None:
            found = weighted.typed_per_filter_config.get(filter_name)
            if found is not None:
                return found
        route = self.route
        found = route.typed_per_filter_config.get(filter_name)
        if found is not None:
            return found
        virtual_host = route.virtual_host
        found = virtual_host.typed_per_filter_config.get(filter_name)
        if found is not None:
            return found
        return virtual_host.table_per_filter_config.get(filter_name)

    def per_filter_configs(self, filter_name: str) -> list[Any]:
        """The compiled per-filter configs for ``filter_name``, least specific first."""
        route = self.route
        levels = (
            route.virtual_host.table_per_filter_config,
            route.virtual_host.typed_per_filter_config,
            route.typed_per_filter_config,
            self.weighted_cluster.typed_per_filter_config if self.weighted_cluster else None,
        )
        return [level[filter_name] for level in levels if level and filter_name in level]


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    name: str
    virtual_host: VirtualHost
    match: RouteMatcher | None  # None for require_tls's redirect, which no matcher picks
    action: Action
    # Levels to apply in order (route config / virtual host / route, as the table says).
    request_headers: tuple[HeaderMutations, ...] = ()
    response_headers: tuple[HeaderMutations, ...] = ()
    typed_per_filter_config: PerFilterConfig = field(default_factory=lambda: NO_PER_FILTER_CONFIG)
    metadata: Mapping = field(default_factory=lambda: NO_METADATA)  # %METADATA(ROUTE:...)%
    static_match: RouteMatch | None = None  # prebuilt answer when nothing varies per request
    weighted_matches: tuple[RouteMatch | None, ...] = ()  # prebuilt per named weighted cluster
    # Derived when built, for the router's common path (router.py). ``request_as_is``: the
    # router sends the request on as it came (no header mutations, host or path rewrite,
    # attempt count, nor mirror). ``response_as_is``: it passes the response on with only
    # its own headers (no header mutations, attempt count, nor internal redirect to follow).
    request_as_is: bool = field(init=False, repr=False, compare=False)
    response_as_is: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        action = self.action
        virtual_host = self.virtual_host
        request_as_is = not (
            self.request_headers
            or virtual_host.include_request_attempt_count
            or getattr(action, "rewrites", False)
            or getattr(action, "request_mirror_policies", ())
        )
        response_as_is = not (
            self.response_headers
            or virtual_host.include_attempt_count_in_response
            or getattr(action, "internal_redirect_policy", None) is not None
        )
        object.__setattr__(self, "request_as_is", request_as_is)
        object.__setattr__(self, "response_as_is", response_as_is)

    def select(self, headers, random_value: int) -> RouteMatch | None:
        static = self.static_match
        if static is not None:
            return static
        action = self.action
        weighted = action.weighted_clusters  # type: ignore[union-attr]
        if weighted is not None:
            index = weighted.pick_index(headers, random_value)
            if index is None:  # runtime weights that add up to 0: no route
                return None
            prebuilt = self.weighted_matches[index]
            if prebuilt is not None:
                return prebuilt
            cluster = weighted.clusters[index]
            return RouteMatch(self, weighted.cluster_name(cluster, headers), cluster)
        value = headers.get(action.cluster_header)  # type: ignore[union-attr]
        return RouteMatch(self, value or "")


class VirtualHost:
    """A compiled virtual host. Built once by compile_route_config, then never changed."""

    __slots__ = (
        "connect_routes",
        "domains",
        "ignore_path_parameters",
        "include_attempt_count_in_response",
        "include_is_timeout_retry_header",
        "include_request_attempt_count",
        "leading_match",
        "leading_prefix",
        "metadata",
        "name",
        "rate_limit_policy",
        "routes",
        "table_per_filter_config",
        "typed_per_filter_config",
        "virtual_clusters",
    )

    def __init__(self, *, name: str, domains: tuple[str, ...], ignore_path_parameters: bool):
        self.name = name
        self.domains = domains
        self.ignore_path_parameters = ignore_path_parameters
        self.routes: tuple[Route, ...] = ()
        self.connect_routes: tuple[Route, ...] = ()  # those with a connect_matcher
        # The first route when it is a plain prefix (see ``set_routes``): its prefix, tested
        # on the raw ``:path``, and its prebuilt answer.
        self.leading_prefix: str | None = None
        self.leading_match: RouteMatch | None = None
        self.include_request_attempt_count = False  # x-envoy-attempt-count to the upstream
        self.include_attempt_count_in_response = False  # and to the client
        self.include_is_timeout_retry_header = False  # x-envoy-is-timeout-retry on retries
        self.typed_per_filter_config: PerFilterConfig = NO_PER_FILTER_CONFIG
        self.table_per_filter_config: PerFilterConfig = NO_PER_FILTER_CONFIG
        self.rate_limit_policy = EMPTY_POLICY  # rate_limits (rate_limit_policy.py)
        self.metadata: Mapping = NO_METADATA  # filter_metadata (%METADATA(VIRTUAL_HOST:...)%)
        self.virtual_clusters: VirtualClusters | None = None  # (virtual_cluster.py)

    def set_routes(self, routes: tuple[Route, ...]) -> None:
        """The routes, in order. When the first one matches on a case-sensitive prefix alone
        (no headers, query parameters, gRPC or runtime fraction) that has none of the
        characters ``path_for_matching`` cuts at, testing the prefix on the raw ``:path``
        gives the same answer as on the stripped one: ``route`` then answers a request it
        matches (with a catch-all ``/``, every one) without stripping the path or calling
        the matcher."""
        self.routes = routes
        self.connect_routes = tuple(r for r in routes if r.match.connect)
        self.leading_prefix = self.leading_match = None
        if not routes:
            return
        first = routes[0]
        match = first.match
        cuts = "?#;" if self.ignore_path_parameters else "?#"
        if (
            first.static_match is not None
            and match.path.kind is PathKind.PREFIX
            and match.path.case_sensitive
            and not match.headers
            and not match.query_parameters
            and not match.grpc
            and match.runtime_fraction is None
            and not match.connect
            and not any(c in match.path.text for c in cuts)
        ):
            self.leading_prefix = match.path.text
            self.leading_match = first.static_match

    def route(self, headers, random_value: int) -> RouteMatch | None:
        if not headers.get("x-forwarded-proto"):
            return None  # Envoy: no scheme, no route (the HCM always sets it)
        path = headers.get(":path")
        if path is None:
            # A CONNECT has no path: only connect_matcher routes may match it (Envoy's
            # supportsPathlessHeaders).
            for route in self.connect_routes:
                if route.match.matches(headers, "", "", random_value):
                    return route.select(headers, random_value)
            return None
        if self.leading_prefix is not None and path.startswith(self.leading_prefix):
            return self.leading_match
        stripped = path_for_matching(path, self.ignore_path_parameters)
        for route in self.routes:
            if route.match.matches(headers, path, stripped, random_value):
                return route.select(headers, random_value)
        return None

    def __repr__(self) -> str:
        return f"VirtualHost({self.name!r})"


class TlsRequiringVirtualHost(VirtualHost):
    """A virtual host with ``require_tls`` (``ALL``, or ``EXTERNAL_ONLY``: requests that are
    not internal). Envoy decides by ``x-forwarded-proto`` alone, before any route: anything
    but exactly ``https`` gets the TLS redirect (a connection over TLS has ``https`` unless
    a trusted downstream said otherwise). A class of its own so that virtual hosts without
    the requirement test nothing."""

    __slots__ = ("external_only", "tls_redirect")

    def __init__(self, *, external_only: bool, **kwargs) -> None:
        super().__init__(**kwargs)
        self.external_only = external_only
        # Envoy's SslRedirectRoute: no name, no header mutations, the answer of redirect.py.
        self.tls_redirect = RouteMatch(
            Route(name="", virtual_host=self, match=None, action=TLS_REDIRECT)
        )

    def route(self, headers, random_value: int) -> RouteMatch | None:
        scheme = headers.get("x-forwarded-proto")
        if (
            scheme
            and scheme != "https"
            and not (self.external_only and headers.get("x-envoy-internal") == "true")
        ):
            return self.tls_redirect
        return VirtualHost.route(self, headers, random_value)


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteTable:
    name: str
    virtual_hosts: tuple[VirtualHost, ...]
    exact: Mapping[str, VirtualHost]
    suffixes: tuple[tuple[int, Mapping[str, VirtualHost]], ...]  # longest first
    prefixes: tuple[tuple[int, Mapping[str, VirtualHost]], ...]  # longest first
    default: VirtualHost | None
    ignore_port_in_host_matching: bool = False
    most_specific_header_mutations_wins: bool = False
    request_headers: HeaderMutations = EMPTY
    response_headers: HeaderMutations = EMPTY
    typed_per_filter_config: PerFilterConfig = field(default_factory=lambda: NO_PER_FILTER_CONFIG)
    # Lower-case names the connection manager removes from external requests.
    internal_only_headers: tuple[str, ...] = ()
    # The header that chooses the virtual host: ``vhost_header`` (lower-case) or :authority.
    host_header: str = ":authority"
    # Derived when built: a ``*`` domain and no other, so every request gets ``default``.
    wildcard_only: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        only = self.default is not None and not (self.exact or self.suffixes or self.prefixes)
        object.__setattr__(self, "wildcard_only", only)

    def per_filter_configs(self, filter_name: str) -> list[Any]:
        """Every compiled per-route config of the filter named ``filter_name``, at every level
        of the table (what a filter may meet at request time)."""
        found = []
        levels = [self.typed_per_filter_config]
        for vh in self.virtual_hosts:
            levels.append(vh.typed_per_filter_config)
            for r in vh.routes:
                levels.append(r.typed_per_filter_config)
                weighted = getattr(r.action, "weighted_clusters", None)
                if weighted is not None:
                    levels.extend(c.typed_per_filter_config for c in weighted.clusters)
        for level in levels:
            config = level.get(filter_name)
            if config is not None:
                found.append(config)
        return found

    def route(self, headers, random_value: int) -> RouteMatch | None:
        """The route for a request (None: no virtual host or no route matched)."""
        if self.wildcard_only:  # (a "*" domain, and no other)
            return self.default.route(headers, random_value)  # type: ignore[union-attr]
        virtual_host = self.find_virtual_host(headers)
        if virtual_host is None:
            return None
        return virtual_host.route(headers, random_value)

    def find_virtual_host(self, headers) -> VirtualHost | None:
        if not self.exact and not self.suffixes and not self.prefixes:
            return self.default
        host = headers.get(self.host_header)
        if host is None:
            if self.host_header != ":authority":  # no vhost_header: no virtual host (Envoy)
                return None
            host = headers.get("host")
            if host is None:
                return None
        if self.ignore_port_in_host_matching:
            host = _without_port(host)
        host = ascii_lower(host)
        found = self.exact.get(host)
        if found is not None:
            return found
        size = len(host)
        for length, table in self.suffixes:
            if length < size:
                found = table.get(host[size - length :])
                if found is not None:
                    return found
        for length, table in self.prefixes:
            if length < size:
                found = table.get(host[:length])
                if found is not None:
                    return found
        return self.default


def _without_port(host: str) -> str:
    """Envoy's HeaderUtility::getPortStart: cut at the last ':' not inside [IPv6]."""
    colon = host.rfind(":")
    if colon < 0:
        return host
    bracket = host.rfind("]")
    if bracket < 0 or bracket < colon:
        return host[:colon]
    return host


def compile_route_config(
    proto, context, path: str = "", *, validate_clusters_default: bool = True
) -> RouteTable:
    """Compile a RouteConfiguration (PGV rules included); ConfigError names the field."""
    from legatus.config.validate import validate_message

    errors = validate_message(proto, path)
    if errors:
        raise errors[0]
    check_supported(proto, _ROUTE_CONFIG_FIELDS, path, "RouteConfiguration")
    validate = (
        proto.validate_clusters.value
        if proto.HasField("validate_clusters")
        else validate_clusters_default
    )
    max_body = (
        proto.max_direct_response_body_size_bytes.value
        if proto.HasField("max_direct_response_body_size_bytes")
        else DEFAULT_MAX_DIRECT_RESPONSE_BODY_SIZE
    )
    table_request = compile_header_mutations(
        proto.request_headers_to_add, proto.request_headers_to_remove, path, prefix="request"
    )
    table_response = compile_header_mutations(
        proto.response_headers_to_add, proto.response_headers_to_remove, path, prefix="response"
    )
    builder = _Builder(
        table_name=proto.name,
        cluster_names=frozenset(context.cluster_names) if validate else None,
        max_body=max_body,
        most_specific_wins=proto.most_specific_header_mutations_wins,
        table_request=table_request,
        table_response=table_response,
        table_per_filter_config=_per_filter(proto, context, path),
        ignore_path_parameters=proto.ignore_path_parameters_in_path_matching,
        table_mirrors=compile_mirror_policies(
            proto.request_mirror_policies, join_path(path, "request_mirror_policies")
        ),
        runtime=getattr(context, "runtime", None),
        context=context,
    )
    virtual_hosts = []
    for i, vh_proto in enumerate(proto.virtual_hosts):
        vh_path = f"{join_path(path, 'virtual_hosts')}[{i}]"
        virtual_host = builder.virtual_host(vh_proto, vh_path)
        virtual_hosts.append(virtual_host)
        builder.add_domains(virtual_host, vh_path)
    return RouteTable(
        name=proto.name,
        virtual_hosts=tuple(virtual_hosts),
        exact=types.MappingProxyType(builder.exact),
        suffixes=_by_length(builder.suffixes),
        prefixes=_by_length(builder.prefixes),
        default=builder.default,
        ignore_port_in_host_matching=proto.ignore_port_in_host_matching,
        most_specific_header_mutations_wins=proto.most_specific_header_mutations_wins,
        request_headers=table_request,
        response_headers=table_response,
        typed_per_filter_config=builder.table_per_filter_config,
        internal_only_headers=tuple(ascii_lower(name) for name in proto.internal_only_headers),
        host_header=ascii_lower(proto.vhost_header) or ":authority",
    )


def _by_length(tables: dict[int, dict[str, VirtualHost]]):
    return tuple(
        (length, types.MappingProxyType(tables[length])) for length in sorted(tables, reverse=True)
    )


@dataclass(kw_only=True)
class _Builder:
    """Compile-time state shared by the virtual hosts of one table."""

    table_name: str
    cluster_names: frozenset[str] | None
    max_body: int
    most_specific_wins: bool
    table_request: HeaderMutations
    table_response: HeaderMutations
    table_per_filter_config: PerFilterConfig
    ignore_path_parameters: bool
    table_mirrors: tuple[MirrorPolicy, ...] = ()  # the route configuration's mirror policies
    runtime: Any = None  # legatus.runtime.Runtime, for runtime_fraction
    context: Any = None  # the FactoryContext, for per-filter configs
    exact: dict[str, VirtualHost] = field(default_factory=dict)
    suffixes: dict[int, dict[str, VirtualHost]] = field(default_factory=dict)
    prefixes: dict[int, dict[str, VirtualHost]] = field(default_factory=dict)
    default: VirtualHost | None = None

    def virtual_host(self, proto, path: str) -> VirtualHost:
        check_supported(proto, _VIRTUAL_HOST_FIELDS, path, "VirtualHost")
        common = {
            "name": proto.name,
            "domains": tuple(proto.domains),
            "ignore_path_parameters": self.ignore_path_parameters,
        }
        virtual_host = (
            TlsRequiringVirtualHost(external_only=proto.require_tls == _EXTERNAL_ONLY, **common)
            if proto.require_tls
            else VirtualHost(**common)
        )
        virtual_host.include_is_timeout_retry_header = proto.include_is_timeout_retry_header
        virtual_host.typed_per_filter_config = _per_filter(proto, self.context, path)
        if proto.HasField("metadata"):
            virtual_host.metadata = compile_metadata(proto.metadata, join_path(path, "metadata"))
        virtual_host.include_request_attempt_count = proto.include_request_attempt_count
        virtual_host.include_attempt_count_in_response = proto.include_attempt_count_in_response
        virtual_host.rate_limit_policy = compile_rate_limit_policy(
            proto.rate_limits, join_path(path, "rate_limits")
        )
        virtual_host.virtual_clusters = compile_virtual_clusters(
            proto.virtual_clusters,
            proto.name,
            getattr(self.context, "store", None),
            join_path(path, "virtual_clusters"),
        )
        vh_retry = (
            compile_retry_policy(proto.retry_policy, join_path(path, "retry_policy"))
            if proto.HasField("retry_policy")
            else None
        )
        vh_hedge = (
            compile_hedge_policy(proto.hedge_policy, join_path(path, "hedge_policy"))
            if proto.HasField("hedge_policy")
            else False
        )
        vh_mirrors = compile_mirror_policies(
            proto.request_mirror_policies, join_path(path, "request_mirror_policies")
        )
        vh_mirrors = vh_mirrors or self.table_mirrors  # the most specific non-empty list
        virtual_host.table_per_filter_config = self.table_per_filter_config
        vh_request = compile_header_mutations(
            proto.request_headers_to_add, proto.request_headers_to_remove, path, prefix="request"
        )
        vh_response = compile_header_mutations(
            proto.response_headers_to_add,
            proto.response_headers_to_remove,
            path,
            prefix="response",
        )
        inherited = (vh_retry, vh_mirrors, vh_hedge)
        routes = []
        for i, route_proto in enumerate(proto.routes):
            route_path = f"{join_path(path, 'routes')}[{i}]"
            routes.append(
                self.route(
                    route_proto, route_path, virtual_host, vh_request, vh_response, inherited
                )
            )
        virtual_host.set_routes(tuple(routes))
        return virtual_host

    def route(
        self,
        proto,
        path: str,
        virtual_host: VirtualHost,
        vh_request: HeaderMutations,
        vh_response: HeaderMutations,
        inherited: tuple = (None, (), False),
    ) -> Route:
        """``inherited``: the virtual host's retry policy, mirror policies and hedging, which
        a forwarding route without its own takes."""
        check_supported(proto, _ROUTE_FIELDS, path, "Route")
        matcher = compile_route_match(proto.match, join_path(path, "match"), self.runtime)
        which = proto.WhichOneof("action")
        action_path = join_path(path, which or "action")
        action: Action
        if which == "route":
            action = compile_route_action(
                proto.route,
                action_path,
                route_name=proto.name,
                path_matcher=matcher.path,
                cluster_names=self.cluster_names,
                runtime=self.runtime,
            )
            action = _inherit(action, *inherited)
        elif which == "redirect":
            action = compile_redirect(proto.redirect, action_path, path_matcher=matcher.path)
        elif which == "direct_response":
            action = compile_direct_response(
                proto.direct_response, action_path, max_body_size=self.max_body
            )
        else:
            raise ConfigError(action_path, "one of route, redirect or direct_response is required")
        if self.cluster_names is not None:
            self._validate_mirror_clusters(proto, path, action, inherited[1])
        request_stats = compile_request_stats(
            proto.stat_prefix,
            virtual_host.name,
            virtual_host.virtual_clusters,
            getattr(self.context, "store", None),
        )
        if request_stats is not None and isinstance(action, RouteAction):
            action = dataclasses.replace(action, request_stats=request_stats)
        route_request = compile_header_mutations(
            proto.request_headers_to_add, proto.request_headers_to_remove, path, prefix="request"
        )
        route_response = compile_header_mutations(
            proto.response_headers_to_add,
            proto.response_headers_to_remove,
            path,
            prefix="response",
        )
        route = Route(
            name=proto.name,
            virtual_host=virtual_host,
            match=matcher,
            action=action,
            request_headers=self._levels(route_request, vh_request, self.table_request),
            response_headers=self._levels(route_response, vh_response, self.table_response),
            typed_per_filter_config=_per_filter(proto, self.context, path),
            metadata=compile_metadata(proto.metadata, join_path(path, "metadata"))
            if proto.HasField("metadata")
            else NO_METADATA,
        )
        if isinstance(action, RouteAction) and action.weighted_clusters is not None:
            for k, (cluster, cluster_proto) in enumerate(
                zip(
                    action.weighted_clusters.clusters,
                    proto.route.weighted_clusters.clusters,
                    strict=True,
                )
            ):
                cpath = f"{action_path}.weighted_clusters.clusters[{k}]"
                object.__setattr__(
                    cluster,
                    "typed_per_filter_config",
                    _per_filter(cluster_proto, self.context, cpath),
                )
        static = _static_match(route)
        if static is not None:
            object.__setattr__(route, "static_match", static)
        elif isinstance(action, RouteAction) and action.weighted_clusters is not None:
            prebuilt = tuple(
                RouteMatch(route, cluster.name, cluster) if cluster.name else None
                for cluster in action.weighted_clusters.clusters
            )
            object.__setattr__(route, "weighted_matches", prebuilt)
        return route

    def _validate_mirror_clusters(self, proto, path: str, action, inherited) -> None:
        """Envoy checks the mirror policies every route ends up with (its own, or those of
        its virtual host or route configuration, even on a redirect or direct response)."""
        own = proto.WhichOneof("action") == "route" and proto.route.request_mirror_policies
        policies = action.request_mirror_policies if own else inherited
        for policy in policies:
            if policy.cluster and policy.cluster not in self.cluster_names:  # type: ignore[operator]
                raise ConfigError(
                    join_path(path, "route.request_mirror_policies") if own else path,
                    f"route: unknown shadow cluster '{policy.cluster}'",
                )

    def _levels(self, route_level, vh_level, table_level) -> tuple[HeaderMutations, ...]:
        # Envoy: most specific first by default, so the least specific overwrite lands last.
        levels = (route_level, vh_level, table_level)
        if self.most_specific_wins:
            levels = levels[::-1]
        return tuple(level for level in levels if level)

    def add_domains(self, virtual_host: VirtualHost, path: str) -> None:
        for i, domain in enumerate(virtual_host.domains):
            domain = ascii_lower(domain)
            if domain == "*":
                if self.default is not None:
                    raise ConfigError(
                        f"{join_path(path, 'domains')}[{i}]",
                        f"Only a single wildcard domain is permitted in route {self.table_name}",
                    )
                self.default = virtual_host
                continue
            if domain.startswith("*"):
                table = self.suffixes.setdefault(len(domain) - 1, {})
                key = domain[1:]
            elif domain.endswith("*"):
                table = self.prefixes.setdefault(len(domain) - 1, {})
                key = domain[:-1]
            else:
                table, key = self.exact, domain
            if key in table:
                raise ConfigError(
                    f"{join_path(path, 'domains')}[{i}]",
                    "Only unique values for domains are permitted. Duplicate entry of domain "
                    f"{domain} in route {self.table_name}",
                )
            table[key] = virtual_host


def _inherit(action: RouteAction, retry, mirrors, hedge) -> RouteAction:
    """The virtual host's policies for those the route leaves out (the route's replace the
    host's, as Envoy's); a new action, so that its derived fields see them."""
    changes: dict[str, Any] = {}
    if retry is not None and not action.retry_policy:
        changes["retry_policy"] = retry
    if mirrors and not action.request_mirror_policies:
        changes["request_mirror_policies"] = mirrors
    if action.hedge_on_per_try_timeout is None:
        changes["hedge_on_per_try_timeout"] = hedge
    return dataclasses.replace(action, **changes) if changes else action


def _static_match(route: Route) -> RouteMatch | None:
    action = route.action
    if isinstance(action, RouteAction):
        if action.weighted_clusters is not None or action.cluster_header:
            return None
        return RouteMatch(route, action.cluster)
    return RouteMatch(route)
