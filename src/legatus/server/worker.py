"""A worker process: one uvloop loop that owns its connections end to end.

Forked by the main process (so the code and protos already loaded are shared
pages). It takes its configuration from the control channel only, binds its
own SO_REUSEPORT socket for every listener (or takes the listening socket the main process
shares, for a listener without enable_reuse_port: at its start, or later over its socket
channel), and reports stats deltas back (and, for outlier
detection and passive health checking, the outcome of each upstream response). It
never outlives the main process: PR_SET_PDEATHSIG kills it if the main process
dies, and the end of the control channel stops it too.

Drains: a listener removed or replaced by LDS drains for ``drain_time`` (its connections ask
its drain decision, and what is left is closed at the end); a server drain (admin
``/drain_listeners``) reaches the listeners of its direction, those added while it lasts too,
and ``StopListeners`` then stops them accepting (their connections stay, as in Envoy).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import random
import signal
import socket
import time
from typing import Any

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2

from legatus.config.factory_context import FactoryContext
from legatus.network.address import SocketAddress
from legatus.network.drain_decision import DrainDirection, DrainEvent, DrainStrategy
from legatus.network.listener import (
    ActiveListener,
    bind_socket,
    compile_listener,
    in_place_update,
)
from legatus.router.rds import RouteConfigProviderManager
from legatus.router.route_stats import RouteStatOwners
from legatus.runtime import Runtime, compile_runtime
from legatus.server import control
from legatus.server.options import Options
from legatus.server.server_health import ServerHealth
from legatus.stats.store import Store
from legatus.upstream.cluster import compile_cluster
from legatus.upstream.host import HealthFlag
from legatus.upstream.outlier_reporter import HostHealthChecker, HostOutlier, ReportSink
from legatus.upstream.thread_local_cluster import ThreadLocalClusterManager

log = logging.getLogger("legatus.main")
PERIODIC_FLUSH_S = 1.0
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when the main process exits."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError) as e:
        # Still bounded: the end of the control channel stops the worker too.
        log.warning("cannot ask to die with the main process (prctl): %s", e)
    if os.getppid() != parent_pid:  # the main process died before prctl took effect
        os._exit(1)


def run_worker(
    *,
    index: int,
    control_sock: socket.socket,
    options: Options,
    registry,
    log_sink,
    parent_pid: int,
    close_fds: list[int] = (),
    circuit_breakers=None,
    fd_map: dict[int, int] | None = None,
    socket_channel: socket.socket | None = None,
) -> None:
    """The body of a forked worker. Never returns: the process exits at the end.
    ``fd_map``: the main process's numbers of the listening sockets it shares -> ours;
    ``socket_channel``: where it passes the ones it shares later (control.ReceivedSockets)."""
    code = 0
    try:
        die_with_parent(parent_pid)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process coordinates Ctrl-C
        for fd in close_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        asyncio.events._set_running_loop(None)  # forked from inside the main loop
        import uvloop

        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        worker = Worker(
            index=index,
            options=options,
            registry=registry,
            loop=loop,
            log_sink=log_sink,
            circuit_breakers=circuit_breakers,
            fd_map=fd_map,
            received=control.ReceivedSockets(socket_channel),
        )
        loop.run_until_complete(worker.run(control_sock))
    except BaseException:
        logging.getLogger("legatus.main").exception("worker %d failed", index)
        code = 1
    finally:
        logging.shutdown()
        os._exit(code)


def _close_all(providers: list) -> None:
    """A drained listener's route configuration providers (FactoryContext.owned_route_configs)."""
    for provider in providers:
        provider.close()


class Worker:
    def __init__(
        self,
        *,
        index: int,
        options: Options,
        registry,
        loop,
        log_sink=None,
        circuit_breakers=None,
        fd_map: dict[int, int] | None = None,
        received: control.ReceivedSockets | None = None,
    ) -> None:
        self.index = index
        self.fd_map = dict(fd_map or {})  # each taken (and then owned) by its listener
        self.received = received or control.ReceivedSockets(None)
        self.log_sink = log_sink
        self.options = options
        self.registry = registry
        self.loop: asyncio.AbstractEventLoop = loop
        self.store = Store()
        self.rng = random.Random()
        # circuit_breakers: the main process's CircuitBreakerTables, mapped before the fork.
        self.cluster_manager = ThreadLocalClusterManager(
            self.store, self.rng, self.loop, circuit_breakers=circuit_breakers, worker=index
        )
        self.listeners: dict[str, ActiveListener] = {}
        self.draining: set[ActiveListener] = set()  # replaced or removed by LDS
        # The server's drain sequences (admin /drain_listeners), by direction.
        self.server_drains: dict[DrainDirection, DrainEvent] = {}
        self.route_config_providers = RouteConfigProviderManager()
        self.channel: control.ControlProtocol | None = None
        self.done = loop.create_future()
        self.access_log_manager = None
        self.runtime: Runtime | None = None
        self.server_health = ServerHealth()  # admin /healthcheck/fail, from the main process
        self.secret_manager: Any = None  # SDS secrets (see _start_secrets)
        self.node_id = ""  # the bootstrap's node.id (FactoryContext.node_id)
        # cluster -> host address -> HealthFlag bits, as the main process last sent them.
        self.health: dict[str, dict[str, int]] = {}
        self.reports = ReportSink(loop, self._send_reports)
        self._reporters: dict[tuple[str, str], tuple[HostOutlier, HostHealthChecker]] = {}

    async def run(self, sock: socket.socket) -> None:
        loop = self.loop
        loop.add_signal_handler(signal.SIGTERM, self._stop)
        # Made before the socket is attached: a message can arrive before the await returns.
        self.channel = control.ControlProtocol(self._on_message, self._stop)
        await loop.connect_accepted_socket(lambda: self.channel, sock=sock)
        flusher = loop.create_task(self._periodic_flush())
        try:
            await self.done
        finally:
            flusher.cancel()
            self.reports.close()
            every = [*self.listeners.values(), *self.draining]
            for listener in every:
                listener.stop()
            for listener in every:
                listener.close_connections()
            self.received.close()
            if self.access_log_manager is not None:
                self.access_log_manager.close_all()

    def _stop(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    async def _periodic_flush(self) -> None:
        while True:
            await asyncio.sleep(PERIODIC_FLUSH_S)
            self.channel.send(self._stats_flushed(0))

    def _stats_flushed(self, request_id: int) -> control.StatsFlushed:
        removed = RouteStatOwners.of(self.store).take_removed()
        flush = self.store.flush()
        return control.StatsFlushed(request_id=request_id, flush=flush, removed=removed)

    def _on_message(self, message: Any) -> None:
        if isinstance(message, control.FlushStats):
            self.channel.send(self._stats_flushed(message.request_id))
        elif isinstance(message, control.UpdateHosts):
            self.cluster_manager.update_hosts(message.cluster, message.hosts, message.lb_settings)
            self._apply_health(message.cluster)
        elif isinstance(message, control.UpdateHealth):
            self.health[message.cluster] = message.flags
            self._apply_health(message.cluster)
        elif isinstance(message, control.Configure):
            self.received.collect()  # the shared sockets it names were sent before it
            self.server_drains.update(message.drain_events)
            # Compiled at once, not in the task: an UpdateRuntime right behind must find it.
            try:
                bootstrap = bootstrap_pb2.Bootstrap.FromString(message.bootstrap)
                self.node_id = bootstrap.node.id
                self.runtime = compile_runtime(bootstrap)
                self._start_secrets(bootstrap)
                for key, secret in message.secrets.items():
                    self.secret_manager.apply_xds(key, secret)
                self.runtime.replace_layers(message.runtime_layers)
            except Exception as e:  # the main process compiled the same bootstrap: a bug
                log.exception("worker %d failed to compile the runtime", self.index)
                self.channel.send(control.Failed(error=str(e)))
                return
            self.loop.create_task(self._configure(message))
        elif isinstance(message, control.AddCluster):
            name = self._add_cluster(
                message.cluster, message.hosts, message.breaker_table, message.lb_settings
            )
            self.health[name] = message.health
            self._apply_health(name)
        elif isinstance(message, control.RemoveCluster):
            self.cluster_manager.remove(message.name)
            self.health.pop(message.name, None)
        elif isinstance(message, control.AddListener):
            self.received.collect()
            self.loop.create_task(self._add_listener(message.listener, message.drain_time))
        elif isinstance(message, control.RemoveListener):
            self._remove_listener(message.name, message.drain_time)
        elif isinstance(message, control.StartDrain):
            self._start_server_drain(message.direction, message.event)
        elif isinstance(message, control.StopListeners):
            for listener in self.listeners.values():
                if listener.drain_decision.reaches(message.direction):
                    listener.stop()
        elif isinstance(message, control.UpdateSecret):
            self.secret_manager.apply_xds(message.key, message.secret)
        elif isinstance(message, control.UpdateRouteConfig):
            self.route_config_providers.update(message.key, message.route_config, message.version)
        elif isinstance(message, control.SetHealthCheckFailed):
            self.server_health.failed = message.failed
        elif isinstance(message, control.UpdateRuntime) and self.runtime is not None:
            self.runtime.replace_layers(message.layers)
        elif isinstance(message, control.ReopenLogs):
            if self.log_sink is not None:
                self.log_sink.reopen()
            if self.access_log_manager is not None:
                self.access_log_manager.reopen_all()
        elif isinstance(message, control.SetLogLevels) and self.log_sink is not None:
            for name, level in message.levels.items():
                self.log_sink.set_component_level(name, level)
        elif isinstance(message, control.Shutdown):
            self._stop()

    # Health ------------------------------------------------------------------------------

    def _apply_health(self, name: str) -> None:
        """Give the cluster's hosts their health flags and passive-health reporters, then let
        the cluster rebuild its balancing. A host the main process has not reported on yet
        (just added) is FAILED_ACTIVE_HC when the cluster is health checked, as in Envoy."""
        cluster = self.cluster_manager.get(name)
        if cluster is None:
            return
        config = cluster.config
        if config.health_check is None and config.outlier is None:
            return
        flags = self.health.get(name, {})
        default = int(HealthFlag.FAILED_ACTIVE_HC) if config.health_check is not None else 0
        split = config.outlier is not None and config.outlier.split_external_local_origin_errors
        for host in cluster.hosts:
            address = host.address_text
            host.health_flags = flags.get(address, default)
            reporters = self._reporters.get((name, address))
            if reporters is None:
                reporters = self._reporters[(name, address)] = (
                    HostOutlier(self.reports, name, address, split=split),
                    HostHealthChecker(self.reports, name, address),
                )
            if config.outlier is not None:
                host.outlier = reporters[0]
            if config.health_check is not None:
                host.health_checker = reporters[1]
        cluster.refresh_health()

    def _send_reports(self, outcomes, immediate_fails) -> None:
        if self.channel is not None:
            self.channel.send(
                control.HostReports(outcomes=outcomes, immediate_fails=immediate_fails)
            )

    async def _configure(self, message: control.Configure) -> None:
        try:
            await self._apply(message)
        except Exception as e:
            log.exception("worker %d failed to configure", self.index)
            self.channel.send(control.Failed(error=str(e)))
            return
        # What the worker holds from now on (code, configuration, clusters) leaves the cyclic
        # collector's passes: a full pass walks every tracked object, about 200,000 here, and
        # under connection churn (connections living across younger passes, promoted) it ran
        # several times a second, for a third of the worker's time. Garbage made while
        # configuring is collected first; frozen objects are still freed by reference
        # counting, but a cycle among them (an initial configuration later replaced by xDS)
        # is not collected: a bounded, one-time cost.
        gc.collect()
        gc.freeze()
        self.channel.send(control.Ready(pid=os.getpid()))

    async def _apply(self, message: control.Configure) -> None:
        from legatus.access_log.manager import AccessLogManager

        self.access_log_manager = AccessLogManager(
            self.loop, self.options.file_flush_interval_msec / 1000.0, store=self.store
        )
        self.health.update(message.health)
        self.server_health.failed = message.healthcheck_failed
        for raw in message.clusters:
            name = cluster_pb2.Cluster.FromString(raw).name
            self._add_cluster(
                raw,
                message.hosts.get(name, ()),
                message.breaker_tables.get(name),
                message.lb_settings.get(name),
            )
            self._apply_health(name)
        for key, (raw, version) in message.route_configs.items():
            self.route_config_providers.update(key, raw, version)
        for ls in message.listeners:
            await self._start_listener(ls)
        for fd in self.fd_map.values():  # a listener stopped since our start: not kept open
            os.close(fd)
        self.fd_map.clear()

    # Clusters, listeners and routes from the main process (static and xDS) ----------------

    def _add_cluster(self, raw: bytes, hosts, breaker_table: str | None, lb_settings=None) -> str:
        proto = cluster_pb2.Cluster.FromString(raw)
        config = compile_cluster(proto, f"cluster {proto.name}", self.secret_manager)
        if breaker_table is not None:
            self.cluster_manager.attach_circuit_breakers(proto.name, breaker_table)
        self.cluster_manager.add_or_update(config, hosts, lb_settings)
        return proto.name

    def _context(self) -> FactoryContext:
        """What listeners are compiled with: the clusters known now."""
        clusters = self.cluster_manager.clusters
        return FactoryContext(
            registry=self.registry,
            store=self.store,
            options=self.options,
            random=self.rng,
            loop=self.loop,
            cluster_manager=self.cluster_manager,
            access_log_manager=self.access_log_manager,
            cluster_names=frozenset(clusters),
            runtime=self.runtime,
            server_health=self.server_health,
            route_config_providers=self.route_config_providers,
            secret_manager=self.secret_manager,
            node_id=self.node_id,
            owned_route_configs=[],
        )

    def _start_secrets(self, bootstrap) -> None:
        """This worker's SDS secrets: it reloads its own SSL contexts when a file changes;
        the main process counts the sds.* stats."""
        from legatus.extensions.transport_sockets.tls.secret_manager import SecretManager

        if self.secret_manager is not None:
            self.secret_manager.close()
        self.secret_manager = SecretManager(bootstrap.static_resources.secrets, count_stats=False)
        self.secret_manager.start(self.loop)

    async def _start_listener(
        self, ls: control.ListenerSocket, replaces: ActiveListener | None = None
    ) -> ActiveListener:
        proto = listener_pb2.Listener.FromString(ls.listener)
        context = self._context()
        config = compile_listener(proto, context, f"listener {ls.name}")
        active = ActiveListener(config, context, self.index)
        held = replaces.sock if replaces is not None else None
        if held is not None and held.fileno() < 0:  # stopped by /drain_listeners
            held = None
        if held is not None and held.getsockname()[:2] == (config.address.host, ls.port):
            # The same address: take over the listening socket of the listener this one
            # replaces, so that no connection waiting in its accept queue is refused.
            sock = socket.socket(fileno=os.dup(replaces.sock.fileno()))
            sock.setblocking(False)
            if ls.inherited_fd is not None:  # passed again, not needed
                self.received.discard(ls.inherited_fd)
        elif ls.inherited_fd is not None:
            sock = self._shared_socket(ls)
        else:
            address = SocketAddress(config.address.host, ls.port)
            sock = bind_socket(address, reuse_port=True, listen=True, backlog=config.backlog)
        await active.start(sock)
        self.listeners[ls.name] = active
        self._apply_server_drains(active)
        return active

    def _shared_socket(self, ls: control.ListenerSocket) -> socket.socket:
        """The listening socket the main process shares for ``ls``: one it had at our start
        (a static listener) or one it passed since (an LDS listener). Owned by the listener
        from now on: when it stops, nothing else here keeps the socket open."""
        fd = self.fd_map.pop(ls.inherited_fd, None)
        if fd is None:
            fd = self.received.take(ls.inherited_fd)
        if fd is None:
            raise RuntimeError(f"the listening socket of listener '{ls.name}' was not passed")
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        return sock

    async def _add_listener(self, ls: control.ListenerSocket, drain_time: float) -> None:
        """An LDS listener: the new one accepts before the old one (if any) drains."""
        old = self.listeners.get(ls.name)
        try:
            new = await self._start_listener(ls, replaces=old)
        except Exception:  # validated by the main process: a bug, not an input
            log.exception("worker %d failed to start listener '%s'", self.index, ls.name)
            return
        if old is None:
            return
        if in_place_update(old.config.proto, new.config.proto):
            # Only filter chains changed: the connections of the chains left alone stay.
            keep = frozenset(chain.key for chain in new.config.matcher.chains())
            old.hand_over(new, keep)
        self._drain(old, drain_time)

    def _remove_listener(self, name: str, drain_time: float) -> None:
        old = self.listeners.pop(name, None)
        if old is not None:
            self._drain(old, drain_time)

    def _drain(self, listener: ActiveListener, drain_time: float) -> None:
        self.draining.add(listener)
        strategy = DrainStrategy(self.options.drain_strategy)
        event = DrainEvent(start=time.monotonic(), drain_time=drain_time, strategy=strategy)
        done = listener.drain(event)
        done.add_done_callback(lambda _: self._drained(listener, event.start + drain_time))

    def _drained(self, listener: ActiveListener, drain_end: float) -> None:
        self.draining.discard(listener)
        # Its route configurations go when its drain time is over, as Envoy's draining filter
        # chains do (even when its connections went before), and with them the route stats
        # only they had (router/route_stats.py).
        providers = listener.context.owned_route_configs
        if providers:
            left = drain_end - time.monotonic()
            self.loop.call_later(max(left, 0.0), _close_all, providers)

    # Server drain (admin /drain_listeners) ---------------------------------------------

    def _start_server_drain(self, direction: DrainDirection, event: DrainEvent) -> None:
        self.server_drains.setdefault(direction, event)
        for listener in self.listeners.values():
            self._apply_server_drains(listener)

    def _apply_server_drains(self, listener: ActiveListener) -> None:
        """The first server drain sequence that reaches the listener, if any, reaches its
        connections (those it accepts later too)."""
        decision = listener.drain_decision
        reaching = [e for d, e in self.server_drains.items() if decision.reaches(d)]
        if reaching:
            decision.notify(min(reaching, key=lambda e: e.start))
