"""The main process: configuration, workers, admin, stats, signals.

Start-up follows Envoy's order: the bootstrap is loaded and every listener and
cluster compiled (a bad config exits 1 before anything binds); clusters
initialize (DNS clusters wait for their first answer); listener ports are
reserved (port 0 is resolved here, once, so every worker binds the same port);
the admin listener starts; the workers are forked and configured; the server
is LIVE once every worker reports ready.

The main process never touches traffic. It keeps the workers alive (a worker
that dies is logged, counted in ``server.worker_restarts`` and replaced),
merges their stats, and on SIGTERM/SIGINT or POST /quitquitquit shuts down at
once, as Envoy does (no drain).

Admin ``/drain_listeners`` drains the server as Envoy 1.40 does (``drain_listeners``): a
drain sequence (``DrainManager``) whose event reaches the workers' listeners, then the
listeners stop accepting, at once or (``?graceful``) when the drain time is over, never with
``?skip_exit``; their connections stay open.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from legatus.config.factory_context import FactoryContext
from legatus.network import address as addr
from legatus.network.drain_decision import DrainDirection, DrainStrategy, listener_scope
from legatus.network.listener import ListenerConfig, bind_socket, compile_listener
from legatus.router.rds import RouteConfigProviderManager
from legatus.router.route_stats import drop_route_stats
from legatus.runtime import Runtime
from legatus.runtime_loader import RuntimeLoader, RuntimeStats, open_runtime
from legatus.server import control
from legatus.server.admin.access_log import AdminAccessLogger, compile_admin_access_logs
from legatus.server.admin.context import (
    ClusterInfo,
    HostInfo,
    ListenerInfo,
    OutlierInfo,
    ServerState,
)
from legatus.server.drain_manager import DrainManager
from legatus.server.dynamic_config import DynamicConfig, check_dynamic_resources
from legatus.server.options import Options
from legatus.server.server_stats import ServerStats, process_memory
from legatus.server.zygote import Zygote
from legatus.stats.store import Store
from legatus.upstream.cluster import ClusterConfig, HostConfig
from legatus.upstream.cluster_manager import (
    ClusterManager,
    compile_static_clusters,
    health_flag_names,
)
from legatus.upstream.host import host_stats_prefix
from legatus.upstream.resource_manager import CircuitBreakerTables
from legatus.upstream.shared_counters import remove_stale_tables
from legatus.upstream.stats import ListenerManagerStats

log = logging.getLogger("legatus.main")
HOT_RESTART_VERSION = "disabled"
STATS_REFRESH_TIMEOUT_S = 1.0
WORKER_SHUTDOWN_GRACE_S = 5.0
# Envoy 1.40 loads its runtime snapshot twice while starting (runtime.load_success is 2
# before any /runtime_modify).
STARTUP_RUNTIME_LOADS = 2


@dataclass(slots=True)
class CompiledConfig:
    """Everything checked in the main process before anything binds."""

    listeners: list[ListenerConfig]
    clusters: list[ClusterConfig]
    runtime: Runtime = field(default_factory=Runtime)
    # The RDS route configurations the listeners use (legatus.router.rds).
    route_providers: Any = None
    # SDS secrets (static and from files): /certs and LDS listeners use them too.
    secret_manager: Any = None


def compile_config(bootstrap, *, registry, options: Options, store: Store) -> CompiledConfig:
    """Compile the runtime, every cluster and listener, as validate mode and start-up need."""
    if bootstrap.admin.HasField("address"):
        addr.from_proto(bootstrap.admin.address, "admin.address")
    runtime = open_runtime(bootstrap)  # first, as Envoy: the rest of the config may use it
    from legatus.extensions.transport_sockets.tls.secret_manager import SecretManager

    secret_manager = SecretManager(bootstrap.static_resources.secrets)
    from legatus.config_subscription.factory import check_config_source

    secret_manager.check_xds_sources(
        lambda source, path: check_config_source(source, path, bootstrap)
    )
    clusters = compile_static_clusters(bootstrap, secret_manager)
    check_dynamic_resources(bootstrap, clusters)
    route_providers = RouteConfigProviderManager()
    context = FactoryContext(
        registry=registry,
        store=store,
        options=options,
        random=random.Random(),
        cluster_names=frozenset(c.name for c in clusters),
        runtime=runtime,
        route_config_providers=route_providers,
        secret_manager=secret_manager,
        node_id=bootstrap.node.id,
    )
    listeners = [
        compile_listener(proto, context, f"static_resources.listeners[{i}]")
        for i, proto in enumerate(bootstrap.static_resources.listeners)
    ]
    compile_admin_access_logs(bootstrap.admin, context)  # checked here; opened by _start_admin
    seen: dict[tuple, int] = {}
    for i, listener in enumerate(listeners):
        key = (listener.address.host, listener.address.port)
        if listener.address.port and key in seen:
            from legatus.config.errors import ConfigError

            raise ConfigError(
                f"static_resources.listeners[{i}].address",
                f"error adding listener '{listener.address}': listener "
                f"'{listeners[seen[key]].name}' has duplicate address "
                f"'{listener.address}' as existing listener",
            )
        seen[key] = i
    return CompiledConfig(
        listeners=listeners,
        clusters=clusters,
        runtime=runtime,
        route_providers=route_providers,
        secret_manager=secret_manager,
    )


@dataclass(slots=True)
class WorkerHandle:
    index: int
    pid: int
    channel: control.ControlProtocol | None = None
    socket_channel: socket.socket | None = None  # listening sockets passed later (control.py)
    ready: asyncio.Future | None = None
    pending: dict[int, asyncio.Future] = field(default_factory=dict)


class Server:
    """The main process. Implements the admin endpoints' AdminContext."""

    def __init__(
        self,
        *,
        options: Options,
        bootstrap,
        compiled: CompiledConfig,
        registry,
        log_sink,
        tag_extractor=None,
        unknown_static_fields: int = 0,
    ) -> None:
        self.options = options
        self.bootstrap = bootstrap
        self.compiled = compiled
        self.registry = registry
        self.log_sink = log_sink
        self.tag_extractor = tag_extractor
        self.stats = Store()
        self.server_stats = ServerStats(self.stats.scope("server."))
        self.server_stats.static_unknown_fields.add(unknown_static_fields)
        self.stats.gauge("server.compilation_settings.fips_mode")  # 0: OpenSSL, not FIPS
        self.listener_manager_stats = ListenerManagerStats(self.stats.scope("listener_manager."))
        self.runtime = compiled.runtime
        self.start_time = time.time()
        self.state = ServerState.PRE_INITIALIZING
        self.healthcheck_failed = False
        self.hot_restart_version = HOT_RESTART_VERSION
        self.loop: asyncio.AbstractEventLoop | None = None
        self.cluster_manager: ClusterManager | None = None
        self.workers: dict[int, WorkerHandle] = {}
        # The clusters' circuit-breaker counts, shared with the workers (made before the fork).
        self.circuit_breakers: CircuitBreakerTables | None = None
        self._listener_sockets: list[tuple[ListenerConfig, socket.socket, bool]] = []
        self._stopped: set[str] = set()  # static listeners stopped by /drain_listeners
        self.drain_manager: DrainManager | None = None
        self._listener_infos: list[ListenerInfo] = []
        self._admin_server = None
        self._access_log_manager = None  # the admin listener's access logs, if any
        self._shutdown = None
        self.dynamic: DynamicConfig | None = None
        self.zygote: Zygote | None = None
        self.exit_code = 0  # of run(), after a shutdown
        self._request_ids = itertools.count(1)
        self._stopping = False
        # Reads and watches the runtime's disk layers; sends every change to the workers.
        self.runtime_loader = RuntimeLoader(
            self.runtime, RuntimeStats(self.stats.scope("runtime.")), on_change=self._on_runtime
        )
        for _ in range(STARTUP_RUNTIME_LOADS):
            self.runtime_loader.load()

    # Start-up ------------------------------------------------------------------

    async def run(self) -> int:
        loop = self.loop = asyncio.get_running_loop()
        self._shutdown = loop.create_future()
        self.drain_manager = DrainManager(
            drain_time=float(self.options.drain_time_s),
            strategy=DrainStrategy(self.options.drain_strategy),
            loop=loop,
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGUSR1, self._on_sigusr1)
        loop.add_signal_handler(
            signal.SIGHUP,
            lambda: log.info("caught and eating SIGHUP. See documentation for how to hot restart."),
        )
        if self.options.mode != "init_only":
            # First, while this process is single-threaded and has touched no gRPC.
            self.zygote = Zygote.start(self._run_worker)
        self._set_server_gauges()  # PRE_INITIALIZING until the clusters are initialized
        self.runtime_loader.start(loop)
        if self.compiled.secret_manager is not None:  # watch SDS files, count sds.* stats
            self.compiled.secret_manager.start(loop, self.stats)
        try:
            await self._initialize()
        except OSError as e:
            log.critical("error initializing configuration: %s", e)
            await self._stop_workers()
            self._close_sockets()
            return 1
        except _StartupError as e:
            log.critical("%s", e)
            await self._stop_workers()
            self._close_sockets()
            return 1
        if self.options.mode == "init_only":
            await self._stop_workers()
            self._close_sockets()
            return 0
        self.state = ServerState.LIVE
        self._set_server_gauges()
        log.info("all clusters initialized. initializing init manager")
        log.info("starting main dispatch loop")
        await self._shutdown
        log.info("shutting down server instance")
        self.drain_manager.close()
        self.runtime_loader.stop()
        await self._stop_workers()
        if self.dynamic is not None:
            await self.dynamic.close()
        if self.cluster_manager is not None:
            self.cluster_manager.stop()
        if self._admin_server is not None:
            self._admin_server.close()
        if self._access_log_manager is not None:
            self._access_log_manager.close_all()
        self._close_sockets()
        log.info("main dispatch loop exited")
        log.info("exiting")
        return self.exit_code

    async def _initialize(self) -> None:
        t0 = time.monotonic()
        self.cluster_manager = ClusterManager(
            self.compiled.clusters,
            store=self.stats,
            loop=self.loop,
            rng=random.Random(),
            on_hosts=self._on_hosts,
            on_health=self._on_health,
            on_cluster=self._on_cds_cluster,
            on_cluster_removed=self._on_cds_cluster_removed,
            on_cluster_warming=self._on_cds_cluster_warming,
            on_warming_count=lambda count: self.dynamic.on_warming_count(count),
        )
        from legatus.server.admin.server_info import node

        self.dynamic = DynamicConfig(
            bootstrap=self.bootstrap,
            node=node(self),
            store=self.stats,
            loop=self.loop,
            cluster_manager=self.cluster_manager,
            route_providers=self.compiled.route_providers,
            broadcast=self._broadcast,
            circuit_breakers=lambda: self.circuit_breakers,
            compile_listener=self._compile_listener,
            static_listeners={
                c.name: (c.address.host, c.address.port) for c in self.compiled.listeners
            },
            listener_stats=self.listener_manager_stats,
            drain_time=float(self.options.drain_time_s),
            runtime_loader=self.runtime_loader,
            secrets=self.compiled.secret_manager,
        )
        if self.options.mode != "init_only":
            await self._start_admin()  # answering (/ready: 503) while the rest initializes
        self.dynamic.start()
        await self.dynamic.wait_runtime()
        await self.dynamic.wait_static_cluster_secrets()
        await self.cluster_manager.initialize()
        await self.dynamic.wait_clusters()  # CDS, and the warming of what it brought
        self.state = ServerState.INITIALIZING
        self._set_server_gauges()
        self.dynamic.subscribe_secrets()  # the static listeners' SDS secrets
        self.dynamic.subscribe_routes()
        await self.dynamic.wait_secrets()  # listeners warm until their secrets arrive
        await self.dynamic.wait_routes()  # listeners warm until their routes arrive
        self._reserve_listener_ports()
        self.dynamic.start_listeners()  # LDS, once the clusters are initialized
        await self.dynamic.wait_listeners()
        if self.options.mode == "init_only":
            return
        self._make_circuit_breakers()
        for index in range(self.options.concurrency):
            self._spawn_worker(index)
        lm = self.listener_manager_stats
        lm.listener_added.add(len(self.compiled.listeners))
        lm.total_listeners_warming.set(len(self.compiled.listeners))
        await self._wait_ready()
        lm.total_listeners_warming.set(0)
        lds = self.dynamic.lds
        lm.total_listeners_active.set(
            len(self.compiled.listeners) + len(lds.listeners if lds else ())
        )
        lm.workers_started.set(1)
        self.server_stats.initialization_time_ms.record((time.monotonic() - t0) * 1000)

    def _reserve_listener_ports(self) -> None:
        """Bind one socket per listener here: port 0 becomes a real port shared by all workers.

        With SO_REUSEPORT the main process's socket stays bound but not listening
        (it gets no connections); without it, this socket listens and the workers
        share it, as Envoy's workers share one socket when reuse_port is off.
        """
        for config in self.compiled.listeners:
            try:
                sock = bind_socket(
                    config.address,
                    reuse_port=config.reuse_port,
                    listen=not config.reuse_port,
                    backlog=config.backlog,
                )
            except OSError as e:
                raise OSError(e.errno, f"cannot bind '{config.address}': {e.strerror}") from None
            port = sock.getsockname()[1]
            bound = addr.SocketAddress(config.address.host, port)
            self._listener_sockets.append((config, sock, config.reuse_port))
            self._listener_infos.append(
                ListenerInfo(name=config.name, address=str(bound), config=config.proto)
            )

    async def _start_admin(self) -> None:
        admin = self.bootstrap.admin
        if not admin.HasField("address"):
            return
        from legatus.server.admin.listener import start_admin

        a = addr.from_proto(admin.address, "admin.address")
        access_logger = self._admin_access_logger(admin)
        self._admin_server, port = await start_admin(
            self, a.host, a.port, self.loop, access_logger=access_logger
        )
        bound = addr.SocketAddress(a.host, port)
        log.info("admin address: %s", bound)
        if self.options.admin_address_path:
            try:
                with open(self.options.admin_address_path, "w") as f:
                    f.write(str(bound))
            except OSError as e:
                log.critical(
                    "cannot open admin address output file %s for writing: %s",
                    self.options.admin_address_path,
                    e.strerror,
                )

    def _make_circuit_breakers(self) -> None:
        """Map every cluster's circuit-breaker counts, for the workers to inherit: the limits
        hold for the instance, as Envoy's for its threads (docs/circuit-breakers.md)."""
        remove_stale_tables()  # left behind by an instance that was killed
        tables = self.circuit_breakers = CircuitBreakerTables(self.options.concurrency)
        for config in self.cluster_manager.configs.values():
            breakers = (
                config.proto.circuit_breakers if config.proto.HasField("circuit_breakers") else None
            )
            scope = self.stats.scope(f"cluster.{config.stat_name}.")
            # Named: the workers are forked by the zygote, which does not have them mapped.
            name = tables.add_cluster(config.name, breakers, scope, named=True)
            self.dynamic.breaker_tables[config.name] = name

    def _admin_access_logger(self, admin) -> AdminAccessLogger | None:
        """The admin listener's access logs, written through a manager of the main process."""
        if not admin.access_log and not admin.access_log_path:
            return None
        from legatus.access_log.manager import AccessLogManager

        self._access_log_manager = AccessLogManager(
            self.loop, self.options.file_flush_interval_msec / 1000.0, store=self.stats
        )
        context = FactoryContext(
            registry=self.registry,
            store=self.stats,
            options=self.options,
            random=random.Random(),
            loop=self.loop,
            access_log_manager=self._access_log_manager,
            runtime=self.runtime,
        )
        logs = compile_admin_access_logs(admin, context)
        return AdminAccessLogger(logs, self.options.local_address_ip_version)

    # Workers -------------------------------------------------------------------

    def _compile_listener(self, proto, path: str) -> ListenerConfig:
        """An LDS listener, compiled as the workers will (the clusters known now)."""
        cm = self.cluster_manager
        context = FactoryContext(
            registry=self.registry,
            store=Store(),  # a scratch store: the workers keep the listener's stats
            options=self.options,
            random=random.Random(),
            cluster_names=frozenset(cm.configs),
            runtime=self.runtime,
            route_config_providers=self.compiled.route_providers,
            secret_manager=self.compiled.secret_manager,
            node_id=self.bootstrap.node.id,
        )
        return compile_listener(proto, context, path)

    def _run_worker(self, *, index, control_sock, socket_channel, parent_pid, fd_map) -> None:
        """What a worker runs, in the zygote's child (see zygote.py)."""
        from legatus.server.worker import run_worker

        run_worker(
            index=index,
            control_sock=control_sock,
            socket_channel=socket_channel,
            options=self.options,
            registry=self.registry,
            log_sink=self.log_sink,
            parent_pid=parent_pid,
            circuit_breakers=CircuitBreakerTables(self.options.concurrency),
            fd_map=fd_map,
        )

    def _spawn_worker(self, index: int) -> None:
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        sockets_here, sockets_there = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sockets_here.setblocking(False)
        shared = [
            s.fileno()
            for c, s, reuse in self._listener_sockets
            if not reuse and c.name not in self._stopped
        ]
        try:
            pid = self.zygote.spawn(index, child_sock, sockets_there, shared)
        except (OSError, EOFError) as e:
            # The zygote is gone (killed): no worker can be made any more, and a fork from
            # here would inherit gRPC's threads. Stop, so that a supervisor restarts us.
            log.critical("cannot start worker %d: the worker zygote is gone (%s)", index, e)
            for sock in (child_sock, parent_sock, sockets_here, sockets_there):
                sock.close()
            self.exit_code = 1
            self.shutdown()
            return
        child_sock.close()
        sockets_there.close()
        handle = WorkerHandle(
            index=index, pid=pid, ready=self.loop.create_future(), socket_channel=sockets_here
        )
        self.workers[index] = handle
        self.loop.create_task(self._attach_worker(handle, parent_sock))

    async def _attach_worker(self, handle: WorkerHandle, sock: socket.socket) -> None:
        _, channel = await self.loop.connect_accepted_socket(
            lambda: control.ControlProtocol(
                lambda m: self._on_worker_message(handle, m), lambda: self._on_worker_lost(handle)
            ),
            sock=sock,
        )
        handle.channel = channel
        message = self._configure_message()
        for ls in message.listeners:
            if ls.inherited_fd is not None and ls.inherited_fd not in self._static_fds():
                self._pass_socket(handle, ls.inherited_fd)  # an LDS listener's
        channel.send(message)

    def _static_fds(self) -> set[int]:
        """The shared listening sockets a worker gets when it starts (see _spawn_worker)."""
        return {s.fileno() for _, s, reuse in self._listener_sockets if not reuse}

    def _pass_socket(self, handle: WorkerHandle, fd: int) -> None:
        try:
            control.pass_socket(handle.socket_channel, fd)
        except OSError as e:  # it will not find the socket, and say so
            log.error("cannot pass a listening socket to worker %d: %s", handle.index, e)

    def _configure_message(self) -> control.Configure:
        listeners = []
        for config, sock, reuse in self._listener_sockets:
            if config.name in self._stopped:
                continue
            listeners.append(
                control.ListenerSocket(
                    listener=config.proto.SerializeToString(),
                    name=config.name,
                    port=sock.getsockname()[1],
                    inherited_fd=None if reuse else sock.fileno(),
                )
            )
        if self.dynamic.lds is not None:
            listeners += [
                e.socket_message() for e in self.dynamic.lds.listeners.values() if not e.stopped
            ]
        return control.Configure(
            bootstrap=self.bootstrap.SerializeToString(),
            listeners=listeners,
            clusters=[c.proto.SerializeToString() for c in self.cluster_manager.configs.values()],
            hosts=dict(self.cluster_manager.hosts),
            route_configs=dict(self.dynamic.route_configs),
            breaker_tables=dict(self.dynamic.breaker_tables),
            lb_settings=dict(self.cluster_manager.lb_settings),
            runtime_layers=self.runtime.dynamic_layers(),
            health={name: dict(flags) for name, flags in self.cluster_manager.health.items()},
            healthcheck_failed=self.healthcheck_failed,
            drain_events=dict(self.drain_manager.events),
            secrets=self.compiled.secret_manager.xds_values(),
        )

    async def _wait_ready(self) -> None:
        futures = [w.ready for w in self.workers.values()]
        done, _ = await asyncio.wait(futures, timeout=60)
        for f in futures:
            if f not in done:
                raise _StartupError("a worker did not start within 60 s")
            if f.exception() is not None:
                raise _StartupError(str(f.exception()))
        self.server_stats.concurrency.set(len(self.workers))

    def _on_worker_message(self, handle: WorkerHandle, message: Any) -> None:
        if isinstance(message, control.StatsFlushed):
            self.stats.merge_worker(handle.index, message.flush)
            if message.removed:  # route stats the worker dropped (router/route_stats.py)
                drop_route_stats(self.stats, message.removed)
            waiter = handle.pending.pop(message.request_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif isinstance(message, control.HostReports):
            if self.cluster_manager is not None:
                self.cluster_manager.on_outcomes(message.outcomes)
                for cluster, address in message.immediate_fails:
                    self.cluster_manager.on_immediate_health_check_fail(cluster, address)
        elif isinstance(message, control.Ready):
            log.debug("worker %d (pid %d) is ready", handle.index, message.pid)
            # Envoy counts each listener added to each worker (LDS ones after: ListenerManager).
            lds = self.dynamic.lds if self.dynamic is not None else None
            count = len(self.compiled.listeners) + len(lds.listeners if lds else ())
            self.listener_manager_stats.listener_create_success.add(count)
            if not handle.ready.done():
                handle.ready.set_result(None)
        elif isinstance(message, control.Failed) and not handle.ready.done():
            handle.ready.set_exception(_StartupError(message.error))

    def _on_worker_lost(self, handle: WorkerHandle) -> None:
        if self.workers.get(handle.index) is not handle:
            return
        status = self.zygote.wait(handle.pid, timeout=1.0) or "still running"
        if handle.socket_channel is not None:
            handle.socket_channel.close()
        for waiter in handle.pending.values():
            if not waiter.done():
                waiter.set_result(None)
        self.stats.forget_worker(handle.index)
        if self.circuit_breakers is not None:  # its connections and requests are gone
            self.circuit_breakers.forget_worker(handle.index)
        if self._stopping:
            return
        if not handle.ready.done():
            handle.ready.set_exception(
                _StartupError(f"worker {handle.index} exited during start-up ({status})")
            )
            return
        log.error(
            "worker %d (pid %d) exited (%s); starting a new one", handle.index, handle.pid, status
        )
        self.server_stats.worker_restarts.inc()
        del self.workers[handle.index]
        self._spawn_worker(handle.index)

    def _broadcast(self, message: Any) -> int:
        """Send ``message`` to every worker; returns how many it went to."""
        # A listener that shares the main process's listening socket: the socket goes first.
        fd = message.listener.inherited_fd if isinstance(message, control.AddListener) else None
        sent = 0
        for w in self.workers.values():
            if w.channel is not None:
                if fd is not None:
                    self._pass_socket(w, fd)
                w.channel.send(message)
                sent += 1
        return sent

    def _on_hosts(self, cluster: str, hosts: tuple[HostConfig, ...]) -> None:
        if self.workers:
            settings = self.cluster_manager.lb_settings.get(cluster)
            self._broadcast(control.UpdateHosts(cluster=cluster, hosts=hosts, lb_settings=settings))

    def _on_health(self, cluster: str, flags: dict[str, int]) -> None:
        if self.workers:
            self._broadcast(control.UpdateHealth(cluster=cluster, flags=flags))

    def _on_cds_cluster_warming(self, config: ClusterConfig) -> None:
        self.dynamic.on_cluster_warming(config)

    def _on_cds_cluster(self, config: ClusterConfig, hosts: tuple[HostConfig, ...]) -> None:
        self.dynamic.on_cluster(config, hosts, workers=bool(self.workers))

    def _on_cds_cluster_removed(self, name: str) -> None:
        self.dynamic.on_cluster_removed(name)

    def _on_runtime(self, layers: dict) -> None:
        if self.workers:
            self._broadcast(control.UpdateRuntime(layers=layers))

    # Drain (admin /drain_listeners) -----------------------------------------------------

    def drain_listeners(self, *, graceful: bool, inbound_only: bool, skip_exit: bool) -> None:
        """Envoy 1.40's /drain_listeners: start a drain sequence (its connections drain as
        --drain-strategy says), and stop the listeners at once, or at its end with
        ``graceful`` (they accept meanwhile), or never with ``skip_exit``. A graceful drain
        already covering the direction is left alone."""
        direction = DrainDirection.INBOUND_ONLY if inbound_only else DrainDirection.ALL
        drains = self.drain_manager
        if graceful and drains.draining(direction):
            return
        on_complete = _nothing
        if graceful and not skip_exit:

            def on_complete() -> None:
                self._stop_listeners(direction)

        event = drains.start_drain_sequence(direction, on_complete)
        if event is not None:
            log.info("draining listeners (%s)", direction.name.lower())
            self._broadcast(control.StartDrain(direction=direction, event=event))
        if not graceful and not skip_exit:
            self._stop_listeners(direction)

    def _stop_listeners(self, direction: DrainDirection) -> None:
        """Envoy's stopListeners: the listeners ``direction`` reaches stop accepting (their
        sockets close, so that a client fails fast) and LDS adds no listener there any more;
        their connections stay."""
        log.info("stopping listeners (%s)", direction.name.lower())
        stopped = 0
        for config, sock, _ in self._listener_sockets:
            if config.name in self._stopped or listener_scope(config.proto) > direction:
                continue
            self._stopped.add(config.name)
            sock.close()
            stopped += 1
        if self.dynamic is not None and self.dynamic.lds is not None:
            stopped += self.dynamic.lds.stop_listeners(direction)
        self._broadcast(control.StopListeners(direction=direction))
        self.listener_manager_stats.listener_stopped.add(stopped)

    async def _stop_workers(self) -> None:
        self._stopping = True
        self._broadcast(control.Shutdown())
        deadline = time.monotonic() + WORKER_SHUTDOWN_GRACE_S
        for w in list(self.workers.values()):
            while self.zygote.wait(w.pid) is None:
                if time.monotonic() > deadline:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(w.pid, signal.SIGKILL)
                    self.zygote.wait(w.pid, timeout=5.0)
                    break
                await asyncio.sleep(0.01)
        for w in self.workers.values():
            if w.socket_channel is not None:
                w.socket_channel.close()
        self.workers.clear()
        if self.zygote is not None:
            self.zygote.stop()
            self.zygote = None
        if self.circuit_breakers is not None:
            self.circuit_breakers.close()

    def _close_sockets(self) -> None:
        for _, sock, _ in self._listener_sockets:
            sock.close()
        self._listener_sockets.clear()

    # Signals -------------------------------------------------------------------

    def _on_signal(self, sig: int) -> None:
        log.warning("caught %s", signal.Signals(sig).name)
        self.shutdown()

    def _on_sigusr1(self) -> None:
        self.reopen_logs()  # first, so the line below starts the new file
        log.info("caught SIGUSR1. Reopening access logs.")

    # AdminContext --------------------------------------------------------------

    def shutdown(self) -> None:
        if self._shutdown is not None and not self._shutdown.done():
            self._shutdown.set_result(None)

    def reopen_logs(self) -> None:
        if self.log_sink is not None:
            self.log_sink.reopen()
        if self._access_log_manager is not None:
            self._access_log_manager.reopen_all()
        self._broadcast(control.ReopenLogs())

    def set_log_levels(self, levels: dict[str, str]) -> None:
        """Propagate an admin /logging change to the workers."""
        self._broadcast(control.SetLogLevels(levels=levels))

    def set_healthcheck_failed(self, failed: bool) -> None:
        self.healthcheck_failed = failed
        self._broadcast(control.SetHealthCheckFailed(failed=failed))

    def modify_runtime(self, values: dict[str, str]) -> None:
        """POST /runtime_modify: change the admin layer here, then in every worker.

        Raises RuntimeModifyError (nothing changed) as Envoy's mergeValues refuses.
        """
        self.runtime_loader.merge_values(values)

    async def refresh_stats(self) -> None:
        waiters = []
        for w in self.workers.values():
            if w.channel is None:
                continue
            rid = next(self._request_ids)
            fut = self.loop.create_future()
            w.pending[rid] = fut
            if w.channel.send(control.FlushStats(request_id=rid)):
                waiters.append(fut)
        if waiters:
            await asyncio.wait(waiters, timeout=STATS_REFRESH_TIMEOUT_S)
        if self.circuit_breakers is not None:
            self.circuit_breakers.refresh_gauges()
        self._set_server_gauges()

    def _set_server_gauges(self) -> None:
        s = self.server_stats
        s.uptime.set(int(time.time() - self.start_time))
        s.state.set(int(self.state))
        s.live.set(1 if self.state is ServerState.LIVE else 0)
        s.concurrency.set(self.options.concurrency)
        s.hot_restart_epoch.set(self.options.restart_epoch)
        s.hot_restart_generation.set(1)
        s.days_until_first_cert_expiring.set(_days_until_first_cert_expiring(self))
        total = 0
        for prefix in {c.stat_prefix for c in self.compiled.listeners}:
            g = self.stats.get(f"listener.{prefix}.downstream_cx_active")
            total += g.total() if g is not None else 0
        s.total_connections.set(total)
        pids = [os.getpid(), *(w.pid for w in self.workers.values())]
        physical, allocated = process_memory(pids)
        s.memory_physical_size.set(physical)
        s.memory_allocated.set(allocated)
        s.memory_heap_size.set(allocated)
        b = self.bootstrap
        s.version.set(
            b.stats_server_version_override.value
            if b.HasField("stats_server_version_override")
            else 0
        )

    def unready_init_targets(self) -> list[tuple[str, list[str]]]:
        return self.dynamic.unready_init_targets() if self.dynamic is not None else []

    @property
    def secret_manager(self) -> Any:
        """The SDS secrets (/certs shows their current certificates)."""
        return self.compiled.secret_manager

    def listeners(self) -> list[ListenerInfo]:
        infos = list(self._listener_infos)
        if self.dynamic is not None and self.dynamic.lds is not None:
            infos += [e.info() for e in self.dynamic.lds.listeners.values()]
        return infos

    def clusters(self) -> list[ClusterInfo]:
        out = []
        cm = self.cluster_manager
        configs = list(cm.configs.values()) if cm else self.compiled.clusters
        static = cm.static_names if cm else frozenset(c.name for c in configs)
        for config in configs:
            hosts = cm.hosts.get(config.name, ()) if cm else ()
            detector = cm.detectors.get(config.name) if cm else None
            out.append(
                ClusterInfo(
                    name=config.name,
                    config=config.proto,
                    added_via_api=config.name not in static,
                    hosts=tuple(
                        HostInfo(
                            address=str(h.address),
                            hostname=h.hostname,
                            weight=h.weight,
                            priority=h.priority,
                            region=h.region,
                            zone=h.zone,
                            sub_zone=h.sub_zone,
                            stats_prefix=host_stats_prefix(config.stat_name, h),
                            health_check=h.health_check,
                            health_flags=health_flag_names(
                                cm.host_flags(config.name, str(h.address))
                            )
                            if cm
                            else (),
                            **_success_rates(detector, str(h.address)),
                        )
                        for h in hosts
                    ),
                    outlier=_outlier_info(detector),
                )
            )
        return out


def _success_rates(detector, address: str) -> dict:
    monitor = detector.hosts.get(address) if detector is not None else None
    if monitor is None:
        return {}
    return {
        "success_rate": monitor.success_rate,
        "local_origin_success_rate": monitor.local_success_rate,
    }


def _outlier_info(detector) -> OutlierInfo | None:
    if detector is None:
        return None
    return OutlierInfo(
        success_rate_average=detector.success_rate_average,
        success_rate_ejection_threshold=detector.success_rate_ejection_threshold,
        local_origin_success_rate_average=detector.local_success_rate_average,
        local_origin_success_rate_ejection_threshold=detector.local_success_rate_ejection_threshold,
    )


def _days_until_first_cert_expiring(server: Server) -> int:
    from legatus.server.admin.certs import days_until_first_cert_expiring

    return days_until_first_cert_expiring(server)


class _StartupError(Exception):
    pass


def _nothing() -> None:
    pass
