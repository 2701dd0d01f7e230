"""Listeners: config compiled once, and the accepting socket in each worker.

``compile_listener`` turns an ``envoy.config.listener.v3.Listener`` into a
``ListenerConfig`` (filter chains with their network filter factories, buffer
limit, stats scope); it runs in the main process to validate and in every
worker to serve. ``ActiveListener`` binds the worker's own SO_REUSEPORT socket,
accepts connections, picks a filter chain and builds the filters on the new
connection. With ``listener_filters`` an accepted socket first goes through them
(``listener_filter.ActiveTcpSocket``) and what they learn (SNI, transport protocol, ALPN)
joins the filter chain match; a chain's ``transport_socket`` (TLS) is put between the
socket and the connection before its filters are built.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from envoy.config.listener.v3 import listener_pb2

from legatus.config.errors import ConfigError
from legatus.config.factory_context import FactoryContext
from legatus.config.metadata import FrozenMetadata
from legatus.config.supported import check_supported
from legatus.network import address as addr
from legatus.network.connection import DEFAULT_BUFFER_LIMIT, Connection
from legatus.network.drain_decision import DrainEvent, ListenerDrainDecision
from legatus.network.filter import CloseType, ConnectionEvent
from legatus.network.filter_chain_match import (
    ConnectionKey,
    FilterChainMatcher,
    compile_match,
)
from legatus.network.listener_filter import AcceptedSocket, ActiveTcpSocket, ListenerFilter
from legatus.registry import Category
from legatus.stats.store import StatSet, counter, gauge, histogram
from legatus.stream_info import StreamInfo

log = logging.getLogger("legatus.conn_handler")
Listener = listener_pb2.Listener

_SUPPORTED_LISTENER = frozenset(
    {
        "name",
        "address",
        "stat_prefix",
        "filter_chains",
        "default_filter_chain",
        "per_connection_buffer_limit_bytes",
        "metadata",
        "enable_reuse_port",
        "access_log",
        "traffic_direction",
        "tcp_backlog_size",
        "drain_type",
        "listener_filters",
        "listener_filters_timeout",
        "continue_on_listener_filters_timeout",
    }
)
_SUPPORTED_CHAIN = frozenset(
    {"filter_chain_match", "filters", "name", "metadata", "transport_socket"}
)
_SUPPORTED_FILTER = frozenset({"name", "typed_config"})
_SUPPORTED_LISTENER_FILTER = frozenset({"name", "typed_config"})
DEFAULT_LISTENER_FILTERS_TIMEOUT = 15.0  # Envoy's listener_filters_timeout default


class ListenerCoreStats(StatSet):
    """``listener.<name>.*`` that every listener has, the admin listener included."""

    downstream_cx_total = counter()
    downstream_cx_destroy = counter()
    downstream_cx_active = gauge()
    downstream_cx_length_ms = histogram()
    downstream_cx_overflow = counter()
    downstream_cx_overload_reject = counter()
    downstream_cx_transport_socket_connect_timeout = counter()
    downstream_global_cx_overflow = counter()
    downstream_pre_cx_timeout = counter()
    downstream_pre_cx_active = gauge()
    downstream_listener_filter_error = counter()
    downstream_listener_filter_remote_close = counter()
    no_filter_chain_match = counter()
    connections_accepted_per_socket_event = histogram()


class AcceptBatch:
    """Envoy's ``connections_accepted_per_socket_event``: how many connections one readiness
    event of the listening socket brought. uvloop accepts until the socket is drained and
    reports each connection before it returns to the loop, so the connections accepted within
    one loop iteration are one event's: the first schedules the count's recording."""

    __slots__ = ("_count", "_histogram", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, histogram) -> None:
        self._loop = loop
        self._histogram = histogram
        self._count = 0

    def accepted(self) -> None:
        if not self._count:
            self._loop.call_soon(self._record)
        self._count += 1

    def _record(self) -> None:
        self._histogram.record(self._count)
        self._count = 0


class ListenerStats(ListenerCoreStats):
    """``listener.<address or stat_prefix>.*``."""

    extension_config_missing = counter()
    network_extension_config_missing = counter()


class PerWorkerListenerStats(StatSet):
    """``listener.<address>.worker_<n>.*``."""

    downstream_cx_total = counter()
    downstream_cx_active = gauge()


@dataclass(frozen=True, slots=True, kw_only=True)
class FilterChainConfig:
    name: str
    factories: tuple[Callable[[Connection], None], ...]
    key: bytes = b""  # the chain's proto, serialized: which chains an LDS update left alone
    # Its transport_socket (a DownstreamTransportSocketFactory), None for plaintext.
    transport_socket: Any = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerConfig:
    name: str
    address: addr.SocketAddress
    stat_prefix: str  # the scope: ``listener.<stat_prefix>.``
    buffer_limit: int
    matcher: FilterChainMatcher[FilterChainConfig]
    reuse_port: bool
    backlog: int
    access_logs: tuple
    proto: Listener
    # listener_filters: one factory per filter (each call makes a ListenerFilter), the phase's
    # timeout (0: none) and whether a timeout goes on to the filter chains.
    listener_filters: tuple[Callable[[], ListenerFilter], ...] = ()
    listener_filters_timeout: float = DEFAULT_LISTENER_FILTERS_TIMEOUT
    continue_on_listener_filters_timeout: bool = False
    metadata: FrozenMetadata | None = None  # %METADATA(LISTENER:...)%


def compile_listener(proto: Listener, context: FactoryContext, path: str) -> ListenerConfig:
    check_supported(proto, _SUPPORTED_LISTENER, path, "Listener")
    address = addr.from_proto(proto.address, f"{path}.address")
    stat_prefix = proto.stat_prefix or address.stat_name()
    context = dataclasses.replace(context, listener_stat_prefix=f"listener.{stat_prefix}.")
    chains = []
    for i, chain in enumerate(proto.filter_chains):
        cpath = f"{path}.filter_chains[{i}]"
        match = compile_match(chain.filter_chain_match, f"{cpath}.filter_chain_match", str(address))
        chains.append((match, _compile_chain(chain, context, cpath)))
    default = None
    if proto.HasField("default_filter_chain"):
        dpath = f"{path}.default_filter_chain"
        if proto.default_filter_chain.HasField("filter_chain_match"):
            raise ConfigError(
                f"{dpath}.filter_chain_match",
                "the default filter chain cannot have a filter_chain_match",
            )
        default = _compile_chain(proto.default_filter_chain, context, dpath)
    if not chains and default is None:
        raise ConfigError(
            f"{path}.filter_chains",
            f"error adding listener '{address}': no filter chains specified",
        )
    from legatus.access_log.access_log import create_access_logs

    access_logs = create_access_logs(proto.access_log, context, f"{path}.access_log")
    listener_filters = tuple(
        _compile_listener_filter(f, context, f"{path}.listener_filters[{i}]")
        for i, f in enumerate(proto.listener_filters)
    )
    return ListenerConfig(
        name=proto.name or str(uuid.uuid4()),  # Envoy names an unnamed listener with a UUID
        address=address,
        stat_prefix=stat_prefix,
        buffer_limit=proto.per_connection_buffer_limit_bytes.value
        if proto.HasField("per_connection_buffer_limit_bytes")
        else DEFAULT_BUFFER_LIMIT,
        matcher=FilterChainMatcher(
            chains,
            default,
            listener_path=path,
            listener=str(address),
            names=[c.name for c in proto.filter_chains],
            protos=[c.filter_chain_match for c in proto.filter_chains],
        ),
        reuse_port=proto.enable_reuse_port.value if proto.HasField("enable_reuse_port") else True,
        backlog=proto.tcp_backlog_size.value if proto.HasField("tcp_backlog_size") else 4096,
        access_logs=tuple(access_logs),
        proto=proto,
        listener_filters=listener_filters,
        listener_filters_timeout=(
            proto.listener_filters_timeout.seconds + proto.listener_filters_timeout.nanos / 1e9
            if proto.HasField("listener_filters_timeout")
            else DEFAULT_LISTENER_FILTERS_TIMEOUT
        ),
        continue_on_listener_filters_timeout=proto.continue_on_listener_filters_timeout,
        metadata=FrozenMetadata.from_proto(proto.metadata, f"{path}.metadata")
        if proto.HasField("metadata")
        else None,
    )


def _compile_listener_filter(proto, context: FactoryContext, path: str):
    """One ``listener_filters`` entry: its factory (``envoy.filters.listener.*``)."""
    check_supported(proto, _SUPPORTED_LISTENER_FILTER, path, "ListenerFilter")
    return context.registry.create(Category.LISTENER_FILTER, proto, context, path)


def _compile_chain(chain, context: FactoryContext, path: str) -> FilterChainConfig:
    check_supported(chain, _SUPPORTED_CHAIN, path, "FilterChain")
    factories = []
    count = len(chain.filters)
    for j, f in enumerate(chain.filters):
        fpath = f"{path}.filters[{j}]"
        check_supported(f, _SUPPORTED_FILTER, fpath, "Filter")
        extension, config = context.registry.resolve(
            Category.NETWORK_FILTER,
            name=f.name,
            typed_config=f.typed_config if f.HasField("typed_config") else None,
            path=fpath,
        )
        from legatus.config.validate import validate_message

        errors = validate_message(config, f"{fpath}.typed_config")
        if errors:
            raise errors[0]
        factory = extension.factory(config, context, f"{fpath}.typed_config")
        terminal = factory.terminal
        if terminal and j != count - 1:
            raise ConfigError(
                fpath,
                f"Error: terminal filter named {f.name} of type "
                f"{config.DESCRIPTOR.full_name} must be the last filter in a "
                "network filter chain.",
            )
        if not terminal and j == count - 1:
            raise ConfigError(
                fpath,
                f"Error: non-terminal filter named {f.name} of type "
                f"{config.DESCRIPTOR.full_name} is the last filter in a network "
                "filter chain.",
            )
        factories.append(factory)
    transport_socket = None
    if chain.HasField("transport_socket"):
        transport_socket = _compile_transport_socket(
            chain.transport_socket, context, f"{path}.transport_socket"
        )
    return FilterChainConfig(
        name=chain.name,
        factories=tuple(factories),
        key=chain.SerializeToString(deterministic=True),
        transport_socket=transport_socket,
    )


def _compile_transport_socket(proto, context: FactoryContext, path: str) -> Any:
    """A filter chain's ``transport_socket`` (TLS; raw_buffer gives None): an extension
    legatus does not have is refused with its name, type URL and path."""
    check_supported(proto, ("name", "typed_config"), path, "TransportSocket")
    return context.registry.create(Category.TRANSPORT_SOCKET_DOWNSTREAM, proto, context, path)


def in_place_update(old: Listener, new: Listener) -> bool:
    """Whether an LDS update from ``old`` to ``new`` changes only filter chains (Envoy's
    in-place filter chain update): then the connections of the chains it leaves alone stay,
    and only those of removed or changed chains drain."""
    if old == new:
        return False
    a, b = Listener(), Listener()
    a.CopyFrom(old)
    b.CopyFrom(new)
    for message in (a, b):
        message.ClearField("filter_chains")
        message.ClearField("default_filter_chain")
    return a == b


def bind_socket(
    address: addr.SocketAddress, *, reuse_port: bool, listen: bool, backlog: int = 4096
) -> socket.socket:
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if address.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address.as_tuple())
        if listen:
            sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class ActiveListener:
    """One listener in one worker: its socket, its stats, its connections."""

    def __init__(self, config: ListenerConfig, context: FactoryContext, worker_index: int) -> None:
        self.config = config
        self.context = context
        self.loop: asyncio.AbstractEventLoop = context.loop  # type: ignore[assignment]
        scope = context.store.scope(f"listener.{config.stat_prefix}.")
        self.stats = ListenerStats(scope)
        self.accept_batch = AcceptBatch(self.loop, self.stats.connections_accepted_per_socket_event)
        self.worker_stats = PerWorkerListenerStats(scope.scope(f"worker_{worker_index}."))
        self.connections: set[Connection] = set()
        self.pending_sockets: set[ActiveTcpSocket] = set()  # in their listener-filter phase
        self.server: asyncio.AbstractServer | None = None
        self._only_chain = config.matcher._only
        self.sock: socket.socket | None = None
        self.draining = False
        self._drained: asyncio.Future | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        # What its connections ask before closing gracefully (see network/drain_decision.py).
        self.drain_decision = ListenerDrainDecision.for_listener(
            config.proto, health=context.server_health, rng=context.random
        )

    async def start(self, sock: socket.socket) -> None:
        self.sock = sock  # (a listener that replaces this one takes it over: see worker.py)
        self.server = await self.loop.create_server(
            self._new_connection, sock=sock, backlog=self.config.backlog
        )

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def close_connections(self) -> None:
        for pending in list(self.pending_sockets):
            if pending.transport is not None:
                pending.transport.abort()
        for c in list(self.connections):
            c.close(CloseType.NO_FLUSH)

    def hand_over(self, successor: ActiveListener, keep: frozenset[bytes]) -> int:
        """Give ``successor`` (the listener replacing this one in place) the connections of
        the filter chains in ``keep`` (chain keys): they stay open, counted by it from now
        on. Returns how many."""
        moved = [c for c in self.connections if c.chain_key in keep]
        for conn in moved:
            self.connections.discard(conn)
            successor.connections.add(conn)
            conn.listener = successor
            conn.drain_decision = successor.drain_decision
        return len(moved)

    def drain(self, event: DrainEvent) -> asyncio.Future:
        """Envoy's listener drain (removed or replaced by LDS): stop accepting; its connections
        drain as ``event`` says when they ask the listener's drain decision (the HTTP
        connection manager, per response); whatever is left when the drain time is over is
        closed. The future is done when the last connection is gone."""
        self.stop()
        self.draining = True
        self.drain_decision.notify(event)
        done = self.loop.create_future()
        self._drained = done
        self._drain_timer = self.loop.call_later(event.drain_time, self.close_connections)
        self._check_drained()
        return done

    def _check_drained(self) -> None:
        done = self._drained
        if done is not None and not self.connections and not done.done():
            done.set_result(None)
            if self._drain_timer is not None:
                self._drain_timer.cancel()
                self._drain_timer = None

    def _new_connection(self) -> asyncio.Protocol:
        config = self.config
        if not config.listener_filters:
            return _DownstreamConnection(self)
        # Envoy's ActiveTcpSocket: the listener filters run before there is a connection.
        self.accept_batch.accepted()
        self.stats.downstream_pre_cx_active.inc()
        pending = ActiveTcpSocket(
            [factory() for factory in config.listener_filters],
            loop=self.loop,
            timeout=config.listener_filters_timeout,
            continue_on_timeout=config.continue_on_listener_filters_timeout,
            on_done=self._on_filters_done,
            on_gone=self._on_filters_gone,
        )
        self.pending_sockets.add(pending)
        return pending

    def _on_filters_done(
        self, pending: ActiveTcpSocket, transport, sock: AcceptedSocket, initial: bytes
    ) -> None:
        if pending in self.pending_sockets:
            self.pending_sockets.discard(pending)
            self.stats.downstream_pre_cx_active.dec()
        conn = _DownstreamConnection(self)
        conn.accepted_socket = sock
        conn.initial_bytes = initial
        transport.set_protocol(conn)
        conn.connection_made(transport)

    def _on_filters_gone(self, pending: ActiveTcpSocket, reason: str) -> None:
        stats = self.stats
        if reason == "timeout_continue":
            stats.downstream_pre_cx_timeout.inc()
            return  # the connection follows (_on_filters_done)
        if pending in self.pending_sockets:
            self.pending_sockets.discard(pending)
            stats.downstream_pre_cx_active.dec()
        if reason == "timeout":
            stats.downstream_pre_cx_timeout.inc()
        elif reason == "remote_close":
            stats.downstream_listener_filter_remote_close.inc()
        else:
            stats.downstream_listener_filter_error.inc()

    def on_accepted(self, conn: Connection) -> None:
        sock = conn.accepted_socket
        if sock is None:
            self.accept_batch.accepted()
        info = StreamInfo(now_monotonic=self.loop.time())
        info.connection_id = conn.id
        local, remote = conn.local_address, conn.remote_address
        info.downstream_local_address = _fmt(local)
        info.downstream_remote_address = info.downstream_direct_remote_address = _fmt(remote)
        info.listener_metadata = self.config.metadata
        conn.stream_info = info
        chain = self._only_chain
        if chain is None:
            key = ConnectionKey(
                destination_ip=local[0],
                destination_port=local[1],
                source_ip=remote[0],
                source_port=remote[1],
            )
            if sock is not None:
                key = _with_socket(key, sock)
            chain = self.config.matcher.match(key)
        if sock is not None and sock.requested_server_name:
            info.requested_server_name = sock.requested_server_name
        if chain is None:
            # Envoy: counted, logged and closed; never a connection of the listener.
            self.stats.no_filter_chain_match.inc()
            info.set_flag(_NR)
            info.response_code_details = "filter_chain_not_found"
            log.debug(
                "[C%d] closing connection from %s: no matching filter chain found",
                conn.id,
                info.downstream_remote_address,
            )
            # Envoy closes a socket whose peeked bytes were never read: the kernel resets it.
            conn.close(CloseType.ABORT_RESET if conn.initial_bytes else CloseType.NO_FLUSH)
            if self.config.access_logs:
                info.end_monotonic = self.loop.time()
                for access_log in self.config.access_logs:
                    access_log.log(info)
            return
        stats = self.stats
        stats.downstream_cx_total.inc()
        stats.downstream_cx_active.inc()
        self.worker_stats.downstream_cx_total.inc()
        self.worker_stats.downstream_cx_active.inc()
        self.connections.add(conn)
        conn.chain_key = chain.key
        receiver: asyncio.Protocol = conn
        transport_socket = chain.transport_socket
        if transport_socket is not None:
            receiver = transport_socket.attach(conn, conn.transport)
        for factory in chain.factories:
            factory(conn)
        conn.initialize_read_filters()
        initial = conn.initial_bytes
        if initial:
            conn.initial_bytes = b""
            receiver.data_received(initial)

    def on_closed(self, conn: Connection) -> None:
        if conn not in self.connections:
            return
        self.connections.discard(conn)
        stats = self.stats
        stats.downstream_cx_active.dec()
        stats.downstream_cx_destroy.inc()
        self.worker_stats.downstream_cx_active.dec()
        info = conn.stream_info
        now = self.loop.time()
        stats.downstream_cx_length_ms.record((now - info.start_monotonic) * 1000)
        if self.config.access_logs:
            info.end_monotonic = now
            info.bytes_received = info.bytes_received or conn.bytes_received
            info.bytes_sent = info.bytes_sent or conn.bytes_sent
            for access_log in self.config.access_logs:
                access_log.log(info)
        if self._drained is not None:
            self._check_drained()


def _fmt(a) -> str | None:
    if not a:
        return None
    return f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}"


def _with_socket(key: ConnectionKey, sock: AcceptedSocket) -> ConnectionKey:
    """The match key with what the listener filters learnt (Envoy: "raw_buffer" when no
    filter detected a transport protocol)."""
    return dataclasses.replace(
        key,
        server_name=sock.requested_server_name,
        transport_protocol=sock.detected_transport_protocol or "raw_buffer",
        application_protocols=sock.requested_application_protocols,
    )


class _DownstreamConnection(Connection):
    """An accepted connection: reports to its listener when made and when gone."""

    # Set when listener filters ran first: what they learnt, and the bytes they read.
    accepted_socket: AcceptedSocket | None = None
    initial_bytes = b""

    def __init__(self, listener: ActiveListener) -> None:
        super().__init__(buffer_limit=listener.config.buffer_limit)
        self.listener = listener
        self.chain_key = b""  # its filter chain (see FilterChainConfig.key)
        # Whether to close now because of a drain: its listener's (moved with the connection
        # when an in-place update hands it over; see ActiveListener.hand_over).
        self.drain_decision = listener.drain_decision

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.listener.on_accepted(self)

    def _raise_event(self, event: ConnectionEvent) -> None:
        super()._raise_event(event)
        self.listener.on_closed(self)


from legatus.stream_info import ResponseFlag  # noqa: E402

_NR = ResponseFlag.NO_ROUTE_FOUND
