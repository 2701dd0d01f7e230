"""ConfigSources into subscriptions (Envoy's SubscriptionFactoryImpl), and their checks.

``check_config_source`` refuses at config time, by field path, what legatus cannot fetch
from; ``SubscriptionFactory.subscribe`` makes the subscription at run time:

- ``ads: {}`` (and ``self: {}``, which legatus reads as "the same as the resource that
  named it", i.e. ADS when the bootstrap has ``ads_config``): the one ADS stream of
  ``dynamic_resources.ads_config``, state of the world (``GRPC``) or delta (``DELTA_GRPC``).
- ``api_config_source`` with ``GRPC`` / ``DELTA_GRPC``: a stream of its own, as Envoy gives
  every non-aggregated subscription.
- ``api_config_source`` with ``REST``: polling over HTTP/1.1 (``refresh_delay``).
- ``path_config_source`` (and the deprecated ``path``): a file, watched.

A gRPC service is reached through ``envoy_grpc`` (a static cluster of the bootstrap: its
endpoints become the channel's target) or ``google_grpc`` (its ``target_uri``), without TLS
(TLS arrives with its own issue). The node sent is the bootstrap's, with Envoy's user agent.
"""

from __future__ import annotations

import os
import random
from typing import Any

from envoy.config.core.v3 import config_source_pb2

from legatus.config.errors import ConfigError, join_path
from legatus.config.subscription import Subscription, SubscriptionCallbacks
from legatus.config.supported import check_supported
from legatus.config_subscription.stats import SubscriptionStats

__all__ = ["SubscriptionFactory", "check_config_source", "initial_fetch_timeout"]

ApiType = config_source_pb2.ApiConfigSource.ApiType
_GRPC_TYPES = (ApiType.GRPC, ApiType.DELTA_GRPC)
_CONFIG_SOURCE_FIELDS = ("path", "path_config_source", "api_config_source", "ads", "self",
                         "initial_fetch_timeout", "resource_api_version")  # fmt: skip
_API_FIELDS = ("api_type", "transport_api_version", "cluster_names", "grpc_services",
               "refresh_delay", "request_timeout", "rate_limit_settings",
               "set_node_on_first_message_only")  # fmt: skip
_GRPC_SERVICE_FIELDS = ("envoy_grpc", "google_grpc", "timeout", "initial_metadata")
DEFAULT_INITIAL_FETCH_TIMEOUT = 15.0
_API_VERSIONS = (config_source_pb2.AUTO, config_source_pb2.V3)  # Envoy 1.40 reads AUTO as V3


def initial_fetch_timeout(source) -> float | None:
    """``initial_fetch_timeout`` in seconds (default 15 s); None when 0 (wait forever)."""
    if not source.HasField("initial_fetch_timeout"):
        return DEFAULT_INITIAL_FETCH_TIMEOUT
    d = source.initial_fetch_timeout
    return (d.seconds + d.nanos / 1e9) or None


def check_config_source(source, path: str, bootstrap) -> None:
    """Refuse, by field path, a ConfigSource legatus cannot subscribe with."""
    check_supported(source, _CONFIG_SOURCE_FIELDS, path, "ConfigSource")
    if source.resource_api_version not in _API_VERSIONS:
        raise ConfigError(
            join_path(path, "resource_api_version"),
            "only the V3 resource API version is supported (AUTO is V3)",
        )
    which = source.WhichOneof("config_source_specifier")
    if which is None:
        raise ConfigError(path, "ConfigSource needs one of path_config_source, "
                          "api_config_source, ads or self")  # fmt: skip
    if which in ("ads", "self"):
        if not bootstrap.dynamic_resources.HasField("ads_config"):
            raise ConfigError(
                join_path(path, which), "ADS must be configured to support an ADS config source"
            )
        return
    if which in ("path", "path_config_source"):
        if which == "path_config_source":
            check_supported(
                source.path_config_source,
                ("path", "watched_directory"),
                join_path(path, "path_config_source"),
                "PathConfigSource",
            )
            file = source.path_config_source.path
            fpath = join_path(path, "path_config_source.path")
        else:
            file, fpath = source.path, join_path(path, "path")
        if not file:
            raise ConfigError(fpath, "value length must be at least 1 characters")
        if not os.path.exists(file):
            raise ConfigError(
                fpath,
                f"paths must refer to an existing path in the system: '{file}' does not exist",
            )
        return
    check_api_config_source(source.api_config_source, join_path(path, "api_config_source"),
                            bootstrap, aggregated=False)  # fmt: skip


def check_api_config_source(api, path: str, bootstrap, *, aggregated: bool) -> None:
    check_supported(api, _API_FIELDS, path, "ApiConfigSource")
    if api.transport_api_version not in _API_VERSIONS:
        raise ConfigError(
            join_path(path, "transport_api_version"),
            "only the V3 transport API version is supported (AUTO is V3)",
        )
    kinds = (
        (ApiType.GRPC, ApiType.DELTA_GRPC, ApiType.AGGREGATED_GRPC, ApiType.AGGREGATED_DELTA_GRPC)
        if aggregated
        else (ApiType.GRPC, ApiType.DELTA_GRPC, ApiType.REST)
    )
    if api.api_type not in kinds:
        raise ConfigError(
            join_path(path, "api_type"),
            f"api_type {ApiType.Name(api.api_type)} is not supported here",
        )
    if api.api_type == ApiType.REST:
        from legatus.config_subscription.rest.http_subscription import rest_settings

        source = config_source_pb2.ConfigSource(api_config_source=api)
        rest_settings(source, path.rpartition(".api_config_source")[0])
        _static_cluster(bootstrap, api.cluster_names[0], join_path(path, "cluster_names[0]"))
        return
    if api.cluster_names:
        raise ConfigError(
            join_path(path, "cluster_names"),
            "gRPC API configs take grpc_services, not cluster_names",
        )
    if len(api.grpc_services) != 1:
        raise ConfigError(
            join_path(path, "grpc_services"),
            "API configs must have a single gRPC service specified",
        )
    gpath = join_path(path, "grpc_services[0]")
    service = api.grpc_services[0]
    check_supported(service, _GRPC_SERVICE_FIELDS, gpath, "GrpcService")
    which = service.WhichOneof("target_specifier")
    if which == "envoy_grpc":
        check_supported(service.envoy_grpc, ("cluster_name", "authority", "retry_policy"),
                        join_path(gpath, "envoy_grpc"), "EnvoyGrpc")  # fmt: skip
        _static_cluster(
            bootstrap, service.envoy_grpc.cluster_name, join_path(gpath, "envoy_grpc.cluster_name")
        )
    elif which == "google_grpc":
        check_supported(service.google_grpc, ("target_uri", "stat_prefix"),
                        join_path(gpath, "google_grpc"), "GoogleGrpc")  # fmt: skip
        if not service.google_grpc.target_uri:
            raise ConfigError(join_path(gpath, "google_grpc.target_uri"),
                              "value length must be at least 1 characters")  # fmt: skip
    else:
        raise ConfigError(gpath, "GrpcService needs envoy_grpc or google_grpc")


def _static_cluster(bootstrap, name: str, path: str):
    for cluster in bootstrap.static_resources.clusters:
        if cluster.name == name:
            return cluster
    # Envoy: the xDS cluster must be a static one (it is needed before CDS).
    raise ConfigError(path, f"{name} is not a static cluster of the bootstrap "
                      "(an xDS server must be reached through a static cluster)")  # fmt: skip


def _cluster_target(cluster) -> str:
    """A gRPC target for a static cluster: its endpoints (IPs: ``ipv4:`` / ``ipv6:`` lists,
    balanced round robin by grpcio; a DNS name: ``dns:///name:port``)."""
    addresses = []
    for locality in cluster.load_assignment.endpoints:
        for lb in locality.lb_endpoints:
            sa = lb.endpoint.address.socket_address
            addresses.append((sa.address, sa.port_value))
    if not addresses:
        raise ConfigError(f"cluster {cluster.name}", "the xDS cluster has no endpoints")
    import ipaddress

    try:
        ips = [ipaddress.ip_address(host) for host, _ in addresses]
    except ValueError:
        host, port = addresses[0]
        return f"dns:///{host}:{port}"
    if all(ip.version == 4 for ip in ips):
        return "ipv4:" + ",".join(f"{h}:{p}" for h, p in addresses)
    return "ipv6:" + ",".join(f"[{h}]:{p}" for h, p in addresses)


class SubscriptionFactory:
    """Makes subscriptions for the main process (see the module doc). ``close()`` ends
    every stream it made."""

    def __init__(self, bootstrap, node, *, store, loop, rng: random.Random | None = None):
        self.bootstrap = bootstrap
        self.node = node
        self.store = store
        self.loop = loop
        self.rng = rng or random.Random()
        self.ads_mux: Any = None
        self._muxes: list = []
        self._subscriptions: list = []
        if bootstrap.dynamic_resources.HasField("ads_config"):
            api = bootstrap.dynamic_resources.ads_config
            delta = api.api_type in (ApiType.DELTA_GRPC, ApiType.AGGREGATED_DELTA_GRPC)
            self.ads_mux = self._mux(api, ads=True, delta=delta)

    def _mux(self, api, *, ads: bool, delta: bool, scope=None):
        from legatus.config_subscription.grpc import (
            GrpcMux,
            backoff_settings,
            channel_factory,
            rate_limit_settings,
        )

        service = api.grpc_services[0]
        if service.WhichOneof("target_specifier") == "envoy_grpc":
            cluster = _static_cluster(self.bootstrap, service.envoy_grpc.cluster_name, "")
            target = _cluster_target(cluster)
            authority = service.envoy_grpc.authority or cluster.name
        else:
            target = service.google_grpc.target_uri
            authority = ""
        metadata = tuple((m.key.lower(), m.value) for m in service.initial_metadata)
        mux = GrpcMux(
            channel_factory(target, authority=authority),
            self.node,
            ads=ads,
            delta=delta,
            scope=scope if scope is not None else self.store.scope(""),
            set_node_on_first_message_only=api.set_node_on_first_message_only,
            backoff=backoff_settings(api),
            rate_limit=rate_limit_settings(api),
            metadata=metadata,
            loop=self.loop,
            random=self.rng.random,
        )
        self._muxes.append(mux)
        return mux

    def subscribe(
        self,
        source,
        type_url: str,
        callbacks: SubscriptionCallbacks,
        stats: SubscriptionStats,
        scope=None,
    ) -> Subscription:
        """A subscription (not started) for ``type_url`` from ``source`` (a ConfigSource
        already checked by ``check_config_source``). ``scope``: where a gRPC stream of its
        own counts ``control_plane.*`` (Envoy's: the subscription's scope; default the
        root)."""
        timeout = initial_fetch_timeout(source)
        which = source.WhichOneof("config_source_specifier")
        if which in ("ads", "self"):
            sub = self.ads_mux.subscribe(type_url, callbacks, stats, timeout)
        elif which in ("path", "path_config_source"):
            from legatus.config_subscription.filesystem import FilesystemSubscription

            sub = FilesystemSubscription.from_config_source(
                type_url, source, callbacks=callbacks, stats=stats
            )
        else:
            api = source.api_config_source
            if api.api_type in _GRPC_TYPES:
                delta = api.api_type == ApiType.DELTA_GRPC
                mux = self._mux(api, ads=False, delta=delta, scope=scope)
                sub = mux.subscribe(type_url, callbacks, stats, timeout)
            else:
                sub = self._rest(source, type_url, callbacks, stats)
        self._subscriptions.append(sub)
        return sub

    def _rest(self, source, type_url, callbacks, stats):
        from legatus.config_subscription.rest.http_subscription import (
            HttpSubscription,
            rest_settings,
        )

        settings = rest_settings(source)
        cluster = _static_cluster(self.bootstrap, settings.cluster_name, "")
        sa = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address

        async def host_port():
            return sa.address, sa.port_value

        return HttpSubscription(
            type_url,
            host_port_factory=host_port,
            cluster_name=cluster.name,
            node=self.node,
            callbacks=callbacks,
            stats=stats,
            refresh_delay=settings.refresh_delay,
            request_timeout=settings.request_timeout,
            initial_fetch_timeout=settings.initial_fetch_timeout,
            rng=self.rng,
        )

    def start_ads(self) -> None:
        """Open the ADS stream once the first subscriptions are started (they go out
        together, CDS before LDS, as in Envoy)."""
        if self.ads_mux is not None:
            self.ads_mux.start()

    async def close(self) -> None:
        for sub in self._subscriptions:
            sub.close()
        for mux in self._muxes:
            await mux.close()
