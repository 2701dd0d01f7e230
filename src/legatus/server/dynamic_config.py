"""The main process's xDS subscriptions: CDS, EDS and RDS, and what they change.

Theory of operation. The main process owns every subscription (DESIGN §2); workers only
receive what was accepted, as control messages (``AddCluster``, ``RemoveCluster``,
``UpdateHosts``, ``UpdateRouteConfig``), and swap it in between events. An update is checked
here first, by compiling it as the workers will: a refused update is NACKed with the error
and nothing reaches the workers.

- CDS (``dynamic_resources.cds_config``): ``CdsApi`` feeds the cluster manager, where the
  clusters warm; a warm cluster is sent to the workers with its hosts and its shared
  circuit-breaker table. Over ADS, EDS requests are held while a CDS update is applied, so
  that the endpoints of every new cluster are asked for in one request (Envoy's ordering).
- EDS: one subscription per EDS cluster version (static or from CDS), made when the
  cluster starts warming; its hosts go through the cluster manager. A changed cluster's new
  version subscribes beside the version in place, whose subscription stays until the new
  one is warm (as Envoy's cluster objects each hold theirs): the name stays of interest, so
  nothing is asked of the control plane, and the new version warms with the next
  assignment. A removed cluster's subscriptions close (the last one unsubscribes).
- SDS (``extensions/transport_sockets/tls/sds_api.py``): one subscription per secret over
  xDS (name and config source) that a listener or a cluster names; an accepted secret goes
  to the workers (``UpdateSecret``). Clusters and listeners warm until their secrets arrive.
- RDS: one subscription per (route configuration name, config source) that an HTTP
  connection manager uses; an update is compiled for every such connection manager, then
  sent to the workers, whose new streams use it. An update that changes the route
  configuration counts ``config_reload`` (``http.<stat_prefix>.rds.<name>.``), one without
  it ``update_empty``, as Envoy's RDS does.

Start-up follows Envoy's init order: static clusters (and their EDS), then CDS and the
clusters it brings (each warm, or its initial fetch timed out), then the routes of the
listeners (RDS), then the workers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

from legatus.config.errors import ConfigError
from legatus.config.subscription import ConfigUpdate, UpdateFailureReason
from legatus.config_subscription import decode
from legatus.config_subscription.factory import SubscriptionFactory, check_config_source
from legatus.config_subscription.records import Accepted, ResourceRecords
from legatus.config_subscription.stats import SubscriptionStats
from legatus.extensions.filters.network.http_connection_manager import listener_hcms
from legatus.router.rds import RdsSubscriptionKey, RouteConfigProviderManager
from legatus.server import control
from legatus.server.listener_manager import LdsApi
from legatus.stats.store import StatSet, counter, gauge
from legatus.upstream.cds_api import CdsApi
from legatus.upstream.cluster import ClusterConfig, DiscoveryType
from legatus.upstream.eds import EdsCallbacks

__all__ = ["DynamicConfig", "check_dynamic_resources"]

log = logging.getLogger("legatus.main")


def check_dynamic_resources(bootstrap, clusters: list[ClusterConfig]) -> None:
    """Config-time checks of ``dynamic_resources`` and of the static EDS clusters' sources."""
    from legatus.config.supported import check_supported
    from legatus.config_subscription.factory import check_api_config_source

    dynamic = bootstrap.dynamic_resources
    check_supported(dynamic, ("cds_config", "lds_config", "ads_config"), "dynamic_resources",
                    "DynamicResources")  # fmt: skip
    if dynamic.HasField("cds_config"):
        _check_node(bootstrap, "dynamic_resources.cds_config", decode.CLUSTER)
    if dynamic.HasField("lds_config"):
        _check_node(bootstrap, "dynamic_resources.lds_config", decode.LISTENER)
    for i, config in enumerate(clusters):
        if config.type is DiscoveryType.EDS:
            _check_node(bootstrap, f"static_resources.clusters[{i}]", decode.ENDPOINT)
    for i, layer in enumerate(bootstrap.layered_runtime.layers):
        if layer.WhichOneof("layer_specifier") == "rtds_layer":
            _check_node(bootstrap, f"layered_runtime.layers[{i}].rtds_layer", decode.RUNTIME)
    if dynamic.HasField("ads_config"):
        check_api_config_source(
            dynamic.ads_config, "dynamic_resources.ads_config", bootstrap, aggregated=True
        )
    if dynamic.HasField("cds_config"):
        check_config_source(dynamic.cds_config, "dynamic_resources.cds_config", bootstrap)
    if dynamic.HasField("lds_config"):
        check_config_source(dynamic.lds_config, "dynamic_resources.lds_config", bootstrap)
    for i, layer in enumerate(bootstrap.layered_runtime.layers):
        if layer.WhichOneof("layer_specifier") == "rtds_layer":
            check_config_source(
                layer.rtds_layer.rtds_config,
                f"layered_runtime.layers[{i}].rtds_layer.rtds_config",
                bootstrap,
            )
    for i, config in enumerate(clusters):
        if config.type is DiscoveryType.EDS:
            check_config_source(
                config.eds_config,
                f"static_resources.clusters[{i}].eds_cluster_config.eds_config",
                bootstrap,
            )


def _check_node(bootstrap, path: str, type_url: str) -> None:
    """Envoy refuses to subscribe without a node id and cluster (a control plane needs them)."""
    node = bootstrap.node
    if not node.id or not node.cluster:
        raise ConfigError(
            path,
            f"{type_url}: node 'id' and 'cluster' are required. Set it either in 'node' config "
            "or via --service-node and --service-cluster options.",
        )


class RdsStats(StatSet):
    """Envoy's ALL_RDS_STATS, beside the subscription's under ``http.<p>.rds.<name>.``."""

    config_reload = counter()
    update_empty = counter()
    config_reload_time_ms = gauge()  # ms since the epoch


class _Rds:
    """One RDS subscription's callbacks."""

    def __init__(self, owner: DynamicConfig, key: RdsSubscriptionKey, stats: RdsStats) -> None:
        self.owner = owner
        self.key = key
        self.stats = stats
        self.ready = owner.loop.create_future()
        self.subscription: Any = None
        self.config = None  # the route configuration last taken

    def on_config_update(self, update: ConfigUpdate) -> None:
        added = update.added
        if len(added) > 1:
            raise ConfigError("", f"Unexpected RDS resource length: {len(added)}")
        records = self.owner.route_records
        name = self.key.route_config_name
        if added:
            proto = added[0].resource
            try:
                self.owner.route_providers.validate(self.key, proto)
            except ConfigError as e:
                records.reject(name, proto, str(e), update.version_info)
                raise
            if proto != self.config:  # Envoy: an unchanged configuration is not reloaded
                self.config = proto
                self.stats.config_reload.inc()
                self.stats.config_reload_time_ms.set(int(time.time() * 1000))
            self.owner.on_route_config(self.key, proto.SerializeToString(), update.version_info)
            previous = records.accepted.get(name)
            if previous is None or previous.resource != proto:  # Envoy: unchanged, not updated
                records.accept(name, proto, added[0].version or update.version_info)
        elif update.state_of_the_world:
            self.stats.update_empty.inc()  # (delta: a removal, which Envoy ignores)
        self._ready()

    def on_config_update_failed(self, reason: UpdateFailureReason, error) -> None:
        self._ready()  # the listener stops waiting (its routes stay empty until an update)

    def _ready(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)


class DynamicConfig:
    def __init__(
        self,
        *,
        bootstrap,
        node,
        store,
        loop: asyncio.AbstractEventLoop,
        cluster_manager,
        route_providers: RouteConfigProviderManager,
        broadcast: Callable[[Any], int | None],
        circuit_breakers: Callable[[], Any],
        compile_listener: Callable[[Any, str], Any] | None = None,
        static_listeners: dict[str, tuple[str, int]] | None = None,
        listener_stats=None,
        drain_time: float = 600.0,
        runtime_loader=None,
        secrets=None,
    ) -> None:
        self.bootstrap = bootstrap
        self.secrets = secrets  # the SecretManager (SDS over xDS subscribes through it)
        self.secret_records = ResourceRecords()  # SDS secrets, for /config_dump
        self._secrets_initialized: dict[tuple, asyncio.Future] = {}
        self.store = store
        self.loop = loop
        self.cluster_manager = cluster_manager
        self.route_providers = route_providers
        self.broadcast = broadcast
        self.circuit_breakers = circuit_breakers  # () -> CircuitBreakerTables or None
        self.factory = SubscriptionFactory(bootstrap, node, store=store, loop=loop)
        self.cds: CdsApi | None = None
        self._cds_ready = loop.create_future()
        self._cds_paused = False
        self.lds: LdsApi | None = None
        self._lds_ready = loop.create_future()
        self._compile_listener = compile_listener
        self._static_listeners = static_listeners or {}
        self._listener_stats = listener_stats
        self._drain_time = drain_time
        self._runtime_loader = runtime_loader
        self._rtds_ready: list[asyncio.Future] = []
        # EDS subscriptions by cluster: of the version in place, and of a version warming.
        self._eds: dict[str, tuple[Any, EdsCallbacks]] = {}
        self._eds_warming: dict[str, tuple[Any, EdsCallbacks]] = {}
        self._rds: dict[RdsSubscriptionKey, _Rds] = {}
        # What the workers have, for a worker started later (Configure).
        self.route_configs: dict[RdsSubscriptionKey, tuple[bytes, str]] = {}
        self.route_records = ResourceRecords()  # RDS route configurations, for /config_dump
        self.endpoint_records = ResourceRecords()  # EDS assignments, for /config_dump
        # The CDS record of each active CDS cluster (its version and time), for /config_dump:
        # cds.records has the newest, which may still be warming behind the active one.
        self.active_cluster_records: dict[str, Accepted] = {}
        self.breaker_tables: dict[str, str] = {}

    # Start-up ---------------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe: the runtime's RTDS layers, EDS of the static EDS clusters, CDS; then
        open the ADS stream."""
        self._subscribe_runtime()
        cm = self.cluster_manager
        if self.secrets is not None:
            self.secrets.subscribe_xds(self._subscribe_secret)
            cm.secrets_ready = self._cluster_secrets_ready
            # The static clusters' secrets now (their init); the static listeners' once
            # the clusters are initialized (subscribe_secrets), as Envoy's init order.
            keys = set().union(*(_secret_keys(c) for c in cm.configs.values()))
            for provider in self.secrets.xds_providers():
                if provider.key in keys:
                    self._subscribe_secret(provider)
        for config in list(cm.configs.values()):
            if config.type is DiscoveryType.EDS:
                self._eds[config.name] = self._subscribe_eds(config)
        dynamic = self.bootstrap.dynamic_resources
        if dynamic.HasField("cds_config"):
            scope = self.store.scope("cluster_manager.cds.")
            self.cds = CdsApi(
                cm,
                scope=scope,
                secrets=self.secrets,
                check=self._check_cluster,
                on_initialized=self._on_cds_ready,
                on_removed=self._close_eds,
            )
            stats = SubscriptionStats(scope)
            sub = self.factory.subscribe(
                dynamic.cds_config, decode.CLUSTER, _PausingEds(self, self.cds), stats
            )
            sub.start(())
        else:
            self._cds_ready.set_result(None)
        self.factory.start_ads()

    def _subscribe_runtime(self) -> None:
        from legatus.runtime_loader import RtdsLayerCallbacks

        loader = self._runtime_loader
        if loader is None:
            return
        for layer in loader.runtime.rtds_layers():
            ready = self.loop.create_future()
            self._rtds_ready.append(ready)
            callbacks = RtdsLayerCallbacks(
                loader, layer, on_ready=lambda f=ready: f.done() or f.set_result(None)
            )
            stats = SubscriptionStats(self.store.scope("runtime."))
            sub = self.factory.subscribe(layer.rtds_config, decode.RUNTIME, callbacks, stats)
            sub.start((layer.resource_name,))

    async def wait_runtime(self) -> None:
        """Every RTDS layer's first update (or its failure), as Envoy's runtime init waits."""
        if self._rtds_ready:
            await asyncio.wait(self._rtds_ready)

    def start_listeners(self) -> None:
        """Subscribe to LDS (after the clusters are initialized, as Envoy does)."""
        dynamic = self.bootstrap.dynamic_resources
        if not dynamic.HasField("lds_config"):
            self._lds_ready.set_result(None)
            return
        self.lds = LdsApi(
            compile=self._compile_listener,
            routes_ready=self._routes_ready,
            broadcast=self.broadcast,
            static=self._static_listeners,
            stats=self._listener_stats,
            drain_time=self._drain_time,
            loop=self.loop,
            on_initialized=lambda: (
                None if self._lds_ready.done() else self._lds_ready.set_result(None)
            ),
        )
        stats = SubscriptionStats(self.store.scope("listener_manager.lds."))
        sub = self.factory.subscribe(dynamic.lds_config, decode.LISTENER, self.lds, stats)
        sub.start(())

    def _on_lds_ready(self) -> None:
        if not self._lds_ready.done():
            self._lds_ready.set_result(None)

    async def wait_listeners(self) -> None:
        """LDS's first update (or its failure) and the warming of what it brought."""
        await self._lds_ready
        if self.lds is not None:
            await self.lds.wait_warm()

    async def _routes_ready(self, config) -> None:
        """An LDS listener warms until its own RDS route configurations have answered (not
        those of another listener still waiting), as Envoy's per-listener init does."""
        await self.wait_secrets()  # Envoy's listener init waits for its SDS secrets too
        self.subscribe_routes()
        wanted = _rds_names(config.proto)
        pending = [
            rds.ready
            for key, rds in self._rds.items()
            if key.route_config_name in wanted and not rds.ready.done()
        ]
        if pending:
            await asyncio.wait(pending)

    async def wait_clusters(self) -> None:
        """CDS's first update (or its failure) and the warming of what it brought."""
        await self._cds_ready
        await self.cluster_manager.wait_warm()

    def subscribe_routes(self) -> None:
        """Subscribe to every RDS route configuration the listeners use (new ones only)."""
        for key, stat_prefix in self.route_providers.subscriptions().items():
            if key in self._rds:
                continue
            source = self.route_providers.config_source(key)
            check_config_source(source, f"rds {key.route_config_name}.config_source",
                                self.bootstrap)  # fmt: skip
            scope = self.store.scope(f"http.{stat_prefix}.rds.{key.route_config_name}.")
            rds = self._rds[key] = _Rds(self, key, RdsStats(scope))
            rds.subscription = self.factory.subscribe(
                source, decode.ROUTE, rds, SubscriptionStats(scope)
            )
            rds.subscription.start((key.route_config_name,))

    async def wait_routes(self) -> None:
        """Every RDS subscription's first update (or its failure): listeners warm until
        their routes arrive."""
        pending = [r.ready for r in self._rds.values() if not r.ready.done()]
        if pending:
            await asyncio.wait(pending)

    def unready_init_targets(self) -> list[tuple[str, list[str]]]:
        """/init_dump: each warming LDS listener and the RDS route configurations it awaits."""
        if self.lds is None:
            return []
        from legatus.router.hash_policy import xxhash64

        out = []
        for name, entry in self.lds.warming.items():
            wanted = _rds_names(entry.config.proto)
            awaited = sorted(
                key.route_config_name
                for key, rds in self._rds.items()
                if not rds.ready.done() and key.route_config_name in wanted
            )
            if awaited:
                digest = xxhash64(entry.config.proto.SerializeToString(deterministic=True))
                out.append(
                    (
                        f"init manager Listener-local-init-manager {name} {digest}",
                        [f"shared target RdsRouteConfigSubscription RDS init {n}" for n in awaited],
                    )
                )
        return out

    async def close(self) -> None:
        if self.lds is not None:
            self.lds.close()
        for name in list(self._eds) + list(self._eds_warming):
            self._close_eds(name)
        await self.factory.close()

    # CDS ---------------------------------------------------------------------------------

    def _check_cluster(self, config: ClusterConfig, path: str) -> None:
        if config.type is DiscoveryType.EDS:
            check_config_source(
                config.eds_config, f"{path}.eds_cluster_config.eds_config", self.bootstrap
            )

    def _on_cds_ready(self) -> None:
        if not self._cds_ready.done():
            self._cds_ready.set_result(None)

    def on_cluster_warming(self, config: ClusterConfig) -> None:
        """A cluster from CDS starts warming: an EDS cluster subscribes to its endpoints,
        beside the version in place (which keeps its subscription until this one is warm);
        a version that was warming before it goes with its subscription."""
        _close(self._eds_warming.pop(config.name, None))
        if config.type is DiscoveryType.EDS:
            self._eds_warming[config.name] = self._subscribe_eds(
                config, on_initialized=lambda: self._eds_initialized(config)
            )

    def _eds_initialized(self, config: ClusterConfig) -> None:
        """A warming EDS version took its first assignment. Without health checks to pass
        first, Envoy makes it active right there, dropping the version in place and its
        subscription before that one is handed the same response: so here (the cluster
        manager swaps the versions a moment later)."""
        if config.health_check is None:
            _close(self._eds.pop(config.name, None))

    def on_warming_count(self, count: int) -> None:
        """While clusters warm, CDS is paused on the ADS stream (its ACK, and any further
        CDS request, waits until none warms), as Envoy pauses it."""
        mux = self.factory.ads_mux
        if mux is None or self.cds is None:
            return
        if count and not self._cds_paused:
            self._cds_paused = True
            mux.pause(decode.CLUSTER)
        elif not count and self._cds_paused:
            self._cds_paused = False
            mux.resume(decode.CLUSTER)

    def on_cluster(self, config: ClusterConfig, hosts, workers: bool) -> None:
        """A CDS cluster is warm: it takes over the EDS subscription of the version it
        replaces, and goes to the workers, with its circuit-breaker table."""
        _close(self._eds.pop(config.name, None))
        warmed = self._eds_warming.pop(config.name, None)
        if warmed is not None:
            self._eds[config.name] = warmed
        record = self.cds.records.accepted.get(config.name) if self.cds is not None else None
        if record is not None:
            self.active_cluster_records[config.name] = record
        tables = self.circuit_breakers()
        table_name = None
        if tables is not None:
            breakers = (
                config.proto.circuit_breakers if config.proto.HasField("circuit_breakers") else None
            )
            scope = self.store.scope(f"cluster.{config.stat_name}.")
            table_name = tables.add_cluster(config.name, breakers, scope, named=True)
            if table_name is not None:
                self.breaker_tables[config.name] = table_name
        if workers:
            self.broadcast(
                control.AddCluster(
                    cluster=config.proto.SerializeToString(),
                    hosts=tuple(hosts),
                    health=dict(self.cluster_manager.health.get(config.name, {})),
                    breaker_table=table_name,
                    lb_settings=self.cluster_manager.lb_settings.get(config.name),
                )
            )

    def on_cluster_removed(self, name: str) -> None:
        self.active_cluster_records.pop(name, None)
        self._close_eds(name)
        tables = self.circuit_breakers()
        if tables is not None:
            tables.remove_cluster(name)
        self.breaker_tables.pop(name, None)
        self.broadcast(control.RemoveCluster(name=name))

    # EDS ---------------------------------------------------------------------------------

    def _subscribe_eds(
        self, config: ClusterConfig, on_initialized: Callable[[], None] = lambda: None
    ) -> tuple[Any, EdsCallbacks]:
        scope = self.store.scope(f"cluster.{config.stat_name}.")
        callbacks = EdsCallbacks(
            self.cluster_manager, config.name, config.eds_service_name, scope,
            records=self.endpoint_records, on_initialized=on_initialized,
        )  # fmt: skip
        sub = self.factory.subscribe(
            config.eds_config, decode.ENDPOINT, callbacks, SubscriptionStats(scope)
        )
        sub.start((config.eds_service_name,))
        return sub, callbacks

    def _close_eds(self, name: str) -> None:
        """A cluster went: the EDS subscriptions of its versions, in place and warming."""
        _close(self._eds.pop(name, None))
        _close(self._eds_warming.pop(name, None))

    # SDS ---------------------------------------------------------------------------------

    def subscribe_secrets(self) -> None:
        """Subscribe to the secrets over xDS not subscribed yet (the static listeners')."""
        if self.secrets is not None:
            for provider in self.secrets.xds_providers():
                self._subscribe_secret(provider)

    def _subscribe_secret(self, provider) -> None:
        """A secret over xDS: its subscription (sds.<name>.*), made once."""
        from legatus.extensions.transport_sockets.tls.sds_api import SdsApi, SdsApiStats

        if provider.subscription is not None:
            return
        scope = self.store.scope(f"sds.{provider.name}.")
        SdsApiStats(scope)
        initialized = self.loop.create_future()
        provider.waiters.append(initialized)
        self._secrets_initialized[provider.key] = initialized
        callbacks = SdsApi(provider, records=self.secret_records, publish=self._publish_secret)
        sub = self.factory.subscribe(
            provider.sds_config, decode.SECRET, callbacks, SubscriptionStats(scope), scope=scope
        )
        provider.subscription = sub
        sub.start((provider.name,))

    def _publish_secret(self, provider) -> None:
        self.broadcast(
            control.UpdateSecret(key=provider.key, secret=provider.secret.SerializeToString())
        )

    async def wait_secrets(self, keys=None) -> None:
        """The first fetch of each secret over xDS (``keys``: of those only) is over: its
        value arrived, or its initial fetch timed out, as Envoy's SDS init target."""
        pending = [
            f
            for key, f in self._secrets_initialized.items()
            if not f.done() and (keys is None or key in keys)
        ]
        if pending:
            await asyncio.wait(pending)

    async def _cluster_secrets_ready(self, config: ClusterConfig) -> None:
        """A cluster warms until the secrets of its TLS context arrive (Envoy's cluster
        init manager holds the SDS init target)."""
        keys = _secret_keys(config)
        if keys:
            await self.wait_secrets(keys)

    async def wait_static_cluster_secrets(self) -> None:
        """The static clusters' secrets over xDS (their initialization waits for them)."""
        for config in list(self.cluster_manager.configs.values()):
            await self._cluster_secrets_ready(config)

    # RDS ---------------------------------------------------------------------------------

    def on_route_config(self, key: RdsSubscriptionKey, raw: bytes, version: str) -> None:
        self.route_providers.update(key, raw, version)
        self.route_configs[key] = (raw, version)
        self.broadcast(control.UpdateRouteConfig(key=key, route_config=raw, version=version))


def _close(eds: tuple[Any, EdsCallbacks] | None) -> None:
    if eds is not None:
        sub, callbacks = eds
        callbacks.closed = True
        sub.close()


def _secret_keys(config: ClusterConfig) -> set:
    """The keys of the secrets over xDS a cluster's TLS context uses."""
    common = getattr(config.transport_socket, "common", None)
    if common is None or not common.uses_sds:
        return set()
    providers = (*common.certificate_providers, common.validation_provider)
    return {p.key for p in providers if p is not None and getattr(p, "key", None) is not None}


def _rds_names(listener) -> set[str]:
    """The RDS route configuration names of a listener's HTTP connection managers."""
    return {
        hcm.rds.route_config_name
        for hcm in listener_hcms(listener)
        if hcm.WhichOneof("route_specifier") == "rds"
    }


class _PausingEds:
    """CDS callbacks that hold EDS requests on the ADS stream while an update is applied
    (Envoy's ADS ordering), so the new clusters' endpoints are asked for together."""

    def __init__(self, owner: DynamicConfig, cds: CdsApi) -> None:
        self.owner = owner
        self.cds = cds

    def on_config_update(self, update: ConfigUpdate) -> None:
        mux = self.owner.factory.ads_mux
        with mux.paused(decode.ENDPOINT) if mux is not None else nullcontext():
            self.cds.on_config_update(update)

    def on_config_update_failed(self, reason: UpdateFailureReason, error) -> None:
        self.cds.on_config_update_failed(reason, error)
