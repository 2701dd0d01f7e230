"""The clusters as one worker sees them: host snapshots, load balancers, pools, stats.

The main process sends each worker the cluster configs and, whenever they
change, the host sets; the worker swaps in a new host tuple and balancer
(connections already open keep their Host object). The balancer is rebuilt from the
cluster's LbConfig on every host or health change (``update_hosts``, ``refresh_health``);
``choose_host`` is what the router and the TCP proxy call per request. HTTP connection
pools (HTTP/1.1 or HTTP/2, as the cluster's protocol options and, with
use_downstream_protocol_config, the downstream request say; with auto_config, one pool whose
connections each speak what ALPN chose) are made per host on first use; a
host that leaves the cluster has its pools drained and deleted once idle, as Envoy does.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

from legatus.http.codes import ResponseCodeStats
from legatus.stats.store import Store
from legatus.upstream.cluster import ClusterConfig, HostConfig
from legatus.upstream.host import Host, host_stats_prefix
from legatus.upstream.load_balancer import (
    EDS_HEALTH_FLAGS,
    LbStats,
    build_balancer,
    eds_health_flags,
    table_stats,
)
from legatus.upstream.stats import ClusterTrafficStats

HTTP_2 = "HTTP/2"  # a downstream stream's ``protocol``


class ThreadLocalCluster:
    __slots__ = ("_default_pools", "_h2_options", "_h2_pools", "_lb_stats", "_locality_weights",
                 "_loop", "_mixed_options", "_mixed_pools", "_pool_context", "_pools", "_rng",
                 "_store", "_table_stats", "_tcp_pools", "code_stats", "config", "hashing",
                 "hosts", "lb", "lb_config", "pick_host", "resource_managers", "retry_code_stats",
                 "scope", "stats", "transport_socket", "use_downstream_protocol")  # fmt: skip

    def __init__(
        self,
        config: ClusterConfig,
        store: Store,
        rng: random.Random,
        loop=None,
        *,
        counters=None,
        lb_table_stats: bool = True,
    ) -> None:
        """``lb_table_stats``: whether this worker keeps the ring_hash_lb / maglev_lb gauges
        (one worker does: every worker builds the same tables)."""
        self.config = config
        self._store = store
        self._rng = rng
        self._loop = loop
        self.scope = store.scope(f"cluster.{config.stat_name}.")
        self.stats = ClusterTrafficStats(self.scope)
        from legatus.extensions.transport_sockets.upstream import upstream_socket_factory

        # What its upstream connections connect through (TLS), None for plaintext.
        self.transport_socket = upstream_socket_factory(config.transport_socket, self.scope)
        self.code_stats = ResponseCodeStats(self.scope)
        # responses a retry replaced: cluster.<name>.retry.upstream_rq_<code>...
        self.retry_code_stats = ResponseCodeStats(self.scope.scope("retry."), categories=False)
        self.hosts: tuple[Host, ...] = ()
        lb = self.lb_config = config.lb
        # Whether the balancer hashes requests: the router then passes a HashContext.
        self.hashing = lb.hashing
        self._lb_stats = LbStats(self.scope)
        self._table_stats = table_stats(lb, self.scope) if lb_table_stats else None
        self._locality_weights = dict(lb.locality_weights)
        self._set_lb(self._build_lb(()))
        self._pools: dict = {}  # HTTP/1.1
        self._h2_pools: dict = {}  # HTTP/2
        self._mixed_pools: dict = {}  # auto_config: HTTP/2 or HTTP/1.1 as ALPN chose
        # The pools a request goes to when no downstream protocol chooses (see http_conn_pool).
        self._default_pools = (
            self._mixed_pools
            if config.auto_config
            else self._h2_pools
            if config.http2
            else self._pools
        )
        self._h2_options = None
        self._mixed_options = None
        # use_downstream_protocol_config: the router passes the downstream request's protocol.
        self.use_downstream_protocol = config.use_downstream_protocol
        self._tcp_pools: dict = {}  # the router's TCP upstream (CONNECT terminated here)
        self._pool_context = None
        from legatus.upstream.resource_manager import ResourceManager, ResourcePriority

        breakers = (
            config.proto.circuit_breakers if config.proto.HasField("circuit_breakers") else None
        )
        # counters: the cluster's slots in the instance-wide table (None: count in this process)
        self.resource_managers = tuple(
            ResourceManager.from_circuit_breakers(breakers, self.scope, priority, counters=counters)
            for priority in ResourcePriority
        )

    def http_conn_pool(self, host: Host, downstream_protocol: str | None = None):
        """The HTTP pool to ``host`` on this worker (made on first use), as Envoy picks its
        protocol: HTTP/2 for ``explicit_http_config.http2_protocol_options``; with
        ``use_downstream_protocol_config``, the ``downstream_protocol`` (HTTP/2 for an HTTP/2
        request, else HTTP/1.1: one pool per protocol and host), HTTP/2 without one (a
        mirrored request) when it has ``http2_protocol_options``; else HTTP/1.1."""
        if downstream_protocol is None:
            pool = self._default_pools.get(host)
            if pool is not None:  # (every request but a host's first)
                return pool
            pools = self._default_pools
        else:
            pools = self._h2_pools if downstream_protocol == HTTP_2 else self._pools
            pool = pools.get(host)
            if pool is not None:
                return pool
        return self._new_http_pool(host, pools)

    def _new_http_pool(self, host: Host, pools: dict):
        if pools is self._h2_pools:
            from legatus.conn_pool.http2 import Http2ConnPool

            pool = Http2ConnPool(host, self._context(), self._http2_options())
        elif pools is self._mixed_pools:
            from legatus.conn_pool.mixed import MixedConnPool

            pool = MixedConnPool(
                host,
                self._context(),
                self._mixed_pool_options(),
                codec_factory=self._h1_codec(declare=False),
                on_first_http1=self.declare_http1_stats,
            )
        else:
            from legatus.conn_pool.http1 import Http1ConnPool

            pool = Http1ConnPool(host, self._context(), codec_factory=self._h1_codec())
        pools[host] = pool
        # Envoy counts each pool against max_connection_pools and deletes it once idle.
        self.resource_managers[0].connection_pools.inc()
        pool.add_idle_callback(lambda: self._on_pool_idle(host, pool, pools))
        return pool

    def _h1_codec(self, *, declare: bool = True):
        """The HTTP/1 clients' codec factory: the cluster's http_protocol_options (trailers
        read, header case...)."""
        from legatus.http.http1.client_codec import client_codec_factory

        if declare:
            self.declare_http1_stats()
        return client_codec_factory(self.config.http1_settings)

    def declare_http1_stats(self) -> None:
        """``cluster.<name>.http1.*``: Envoy declares them with the first HTTP/1 codec (the
        first HTTP/1 pool, or a mixed pool's first HTTP/1.1 connection)."""
        from legatus.http.conn_manager_stats import Http1CodecStats

        Http1CodecStats(self.scope.scope("http1."))

    def _http2_options(self):
        """What the cluster's HTTP/2 pools share: the compiled http2_protocol_options, the
        ``cluster.<name>.http2.*`` codec stats (declared with the first connection), and the
        transport socket: TLS offers ALPN ``h2`` when the cluster's TLS context names no
        ALPN protocol (Envoy's ALPN fallback for an HTTP/2 pool)."""
        options = self._h2_options
        if options is None:
            options = self._h2_options = self._pool_options(("h2",))
        return options

    def _mixed_pool_options(self):
        """The same for the auto_config pools: TLS offers ``h2,http/1.1`` when the cluster's
        TLS context names no ALPN protocol (Envoy adds them for auto_config)."""
        options = self._mixed_options
        if options is None:
            options = self._mixed_options = self._pool_options(("h2", "http/1.1"))
        return options

    def _pool_options(self, alpn_fallback: tuple[str, ...]):
        from legatus.conn_pool.http2 import Http2PoolOptions
        from legatus.http.http2.settings import DEFAULT_SETTINGS
        from legatus.http.http2.stats import LazyCodecStats

        transport_socket = self.transport_socket
        tls = self.config.transport_socket
        if tls is not None and not tls.common.alpn:
            from legatus.extensions.transport_sockets.upstream import upstream_socket_factory

            alpn_tls = replace(tls, common=replace(tls.common, alpn=alpn_fallback))
            transport_socket = upstream_socket_factory(alpn_tls, self.scope)
        return Http2PoolOptions(
            settings=self.config.http2_settings or DEFAULT_SETTINGS,
            codec_stats=LazyCodecStats(self.scope),
            transport_socket=transport_socket,
            random=self._rng,
        )

    def tcp_conn_pool(self, host: Host):
        """The TCP pool to ``host`` on this worker, for CONNECT terminated at the proxy
        (conn_pool/tcp.py); made on first use, deleted once idle, as the HTTP ones."""
        pool = self._tcp_pools.get(host)
        if pool is None:
            from legatus.conn_pool.tcp import TcpConnPool

            pool = self._tcp_pools[host] = TcpConnPool(host, self._context())
            self.resource_managers[0].connection_pools.inc()
            pool.add_idle_callback(lambda: self._on_pool_idle(host, pool, self._tcp_pools))
        return pool

    def _on_pool_idle(self, host: Host, pool, pools=None) -> None:
        pools = self._pools if pools is None else pools
        if pools.get(host) is pool:  # (idle callbacks may repeat)
            del pools[host]
            self.resource_managers[0].connection_pools.dec()
            pool.clear_idle_callbacks()

    def _context(self):
        context = self._pool_context
        if context is None:
            from legatus.conn_pool import PoolContext

            config = self.config
            context = self._pool_context = PoolContext.for_cluster(
                self,
                self.scope,
                self._loop,
                resource_manager=self.resource_managers[0],
                max_requests_per_connection=config.max_requests_per_connection,
                idle_timeout=config.upstream_idle_timeout,
            )
        return context

    def drain_pools(self) -> None:
        """Close every pool's idle connections and let busy ones finish (cluster removed)."""
        from legatus.conn_pool import DrainBehavior

        # (an idle pool leaves its dict as it drains)
        pools = (self._pools, self._h2_pools, self._mixed_pools, self._tcp_pools)
        for pool in [p for by_host in pools for p in by_host.values()]:
            pool.drain(DrainBehavior.DRAIN_EXISTING_CONNECTIONS)

    def update_hosts(self, hosts: tuple[HostConfig, ...]) -> None:
        old = {h.config: h for h in self.hosts}
        new = tuple(
            old.get(h) or Host(h, self._store.scope(host_stats_prefix(self.config.stat_name, h)))
            for h in hosts
        )
        for host in new:
            if host.config.health_status and host.config not in old:
                host.health_flags |= eds_health_flags(host.config.health_status)
        gone = set(self.hosts) - set(new)
        self.hosts = new
        self._set_lb(self._build_lb(new, self.lb))
        for host in gone:
            for pools in (self._pools, self._h2_pools, self._mixed_pools, self._tcp_pools):
                pool = pools.pop(host, None)
                if pool is not None:
                    from legatus.conn_pool import DrainBehavior

                    self.resource_managers[0].connection_pools.dec()
                    pool.drain(DrainBehavior.DRAIN_AND_DELETE)

    def set_lb_settings(self, settings: dict) -> None:
        """An EDS assignment's balancing settings (overprovisioning factor, weighted priority
        health, locality weights) over the cluster's own; the next host update applies them."""
        self.lb_config = replace(self.config.lb, **settings)
        self._locality_weights = dict(self.lb_config.locality_weights)

    def _set_lb(self, lb) -> None:
        self.lb = lb
        # choose_host() for a first pick without a hash context, as one call (the router's,
        # once per request): the balancer's picker when every pick has the same source.
        self.pick_host = lb.chooser

    def _build_lb(self, hosts: tuple[Host, ...], previous=None):
        return build_balancer(
            hosts,
            self.lb_config,
            self._rng,
            self._lb_stats,
            table_stats=self._table_stats,
            locality_weights=self._locality_weights,
            previous=previous,
        )

    def choose_host(self, context=None, attempt: int = 0, priority_load=None) -> Host | None:
        """The host for a request, or None (no healthy upstream).

        ``context``: a ``legatus.router.hash_policy.HashContext`` for hashing balancers (see
        ``hashing``); ignored by the others. ``attempt``: 0 for a first pick, n for the n-th
        pick of the same request after a host was rejected (RING_HASH / MAGLEV then move off
        the host the hash points at, as Envoy does). ``priority_load``: a retry's priority
        load (``legatus.router.retry_priority``)."""
        return self.lb.choose(context, attempt, priority_load)

    def refresh_health(self) -> None:
        """Rebuild the balancing after the hosts' ``health_flags`` changed.

        Call it after setting the flags (active health checking, outlier detection): the
        priority levels, panic and the balancer are recomputed. The EDS-style flags that come
        from the endpoints' ``health_status`` are kept whatever the caller wrote."""
        for host in self.hosts:
            status = host.config.health_status
            if status:
                host.health_flags = (host.health_flags & ~EDS_HEALTH_FLAGS) | eds_health_flags(
                    status
                )
        self._set_lb(self._build_lb(self.hosts, self.lb))


class ThreadLocalClusterManager:
    def __init__(
        self, store: Store, rng: random.Random, loop=None, *, circuit_breakers=None, worker: int = 0
    ) -> None:
        self._store = store
        self._rng = rng
        self._loop = loop
        # The main process's CircuitBreakerTables (inherited with the fork) and this worker's
        # slot in them: the circuit breakers count for the whole instance.
        self._circuit_breakers = circuit_breakers
        self._worker = worker
        self.clusters: dict[str, ThreadLocalCluster] = {}
        # get(name) -> the cluster or None: the dict's own method (called twice a request,
        # by the connection manager and the router). ``clusters`` is only ever mutated.
        self.get: Callable[[str], ThreadLocalCluster | None] = self.clusters.get

    def add_or_update(
        self, config: ClusterConfig, hosts: tuple[HostConfig, ...], lb_settings=None
    ) -> None:
        old = self.clusters.get(config.name)
        if old is not None:
            old.drain_pools()
        breakers = self._circuit_breakers
        counters = breakers.slots(config.name, self._worker) if breakers is not None else None
        cluster = ThreadLocalCluster(
            config,
            self._store,
            self._rng,
            self._loop,
            counters=counters,
            lb_table_stats=self._worker == 0,
        )
        if lb_settings:
            cluster.set_lb_settings(lb_settings)
        cluster.update_hosts(hosts)
        self.clusters[config.name] = cluster

    def remove(self, name: str) -> None:
        """A cluster removed by CDS: its pools drain (busy connections finish their
        requests), and new requests no longer find it."""
        cluster = self.clusters.pop(name, None)
        if cluster is not None:
            cluster.drain_pools()
            from legatus.upstream.cluster_manager import drop_cluster_stats

            others = [c.config for c in self.clusters.values()]
            drop_cluster_stats(self._store, cluster.config.stat_name, others)

    def attach_circuit_breakers(self, name: str, table_name: str) -> None:
        """Map the shared counts the main process made for a cluster added after this
        worker started (before ``add_or_update`` of that cluster)."""
        if self._circuit_breakers is not None:
            self._circuit_breakers.attach(name, table_name)

    def update_hosts(self, name: str, hosts: tuple[HostConfig, ...], lb_settings=None) -> None:
        cluster = self.clusters.get(name)
        if cluster is not None:
            if lb_settings is not None:
                cluster.set_lb_settings(lb_settings)
            cluster.update_hosts(hosts)
