"""The control channel between the main process and one worker.

A Unix socketpair carrying length-prefixed frames (4-byte big-endian length,
then a pickled message). Both ends are this program in processes forked from
one main process, so pickle is a safe and compact wire format; protos travel
inside messages as serialized bytes.

``FrameDecoder`` is sans-I/O; ``ControlProtocol`` is the asyncio glue.

Listening sockets cannot travel in a pickle: one shared with the workers (a listener without
``enable_reuse_port``) goes over a second channel per worker, a SOCK_SEQPACKET socketpair, as
the file descriptor itself (SCM_RIGHTS), named by its number in the main process. The main
process sends it before the message that names it (``ListenerSocket.inherited_fd``), so the
worker finds it waiting when that message arrives (``ReceivedSockets``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from legatus.network.drain_decision import DrainDirection, DrainEvent
from legatus.runtime_values import Entry
from legatus.stats.store import Flush
from legatus.upstream.cluster import HostConfig

_HEADER = struct.Struct("!I")
MAX_FRAME = 256 * 1024 * 1024


# Main -> worker ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerSocket:
    listener: bytes  # serialized envoy.config.listener.v3.Listener, as configured
    name: str  # the listener's name (generated when the config has none)
    port: int  # the port the main process reserved (port 0 resolved)
    # A shared listening socket (enable_reuse_port: false): its number in the main process. The
    # worker has it from its start (static listeners) or from its socket channel.
    inherited_fd: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Configure:
    bootstrap: bytes  # serialized Bootstrap (for stats_config and the like)
    listeners: list[ListenerSocket]
    clusters: list[bytes]  # serialized envoy.config.cluster.v3.Cluster
    hosts: dict[str, tuple[HostConfig, ...]]
    # The runtime's non-static layers (see UpdateRuntime): the worker compiles the layers
    # from the bootstrap, and a worker started after a change must see it too.
    runtime_layers: dict[int, dict[str, Entry] | None] = field(default_factory=dict)
    # cluster -> host address ("ip:port") -> HealthFlag bits, for clusters with active health
    # checking or outlier detection: a worker started later must see the current health.
    health: dict[str, dict[str, int]] = field(default_factory=dict)
    healthcheck_failed: bool = False  # admin /healthcheck/fail is in force
    # What came from xDS so far, for a worker started later: each RDS route configuration
    # (RdsSubscriptionKey -> (serialized RouteConfiguration, version)) and the shared
    # circuit-breaker tables of CDS clusters (cluster -> table name).
    route_configs: dict[Any, tuple[bytes, str]] = field(default_factory=dict)
    breaker_tables: dict[str, str] = field(default_factory=dict)
    lb_settings: dict[str, dict] = field(default_factory=dict)  # EDS clusters (UpdateHosts)
    # The server's drain sequences begun so far (admin /drain_listeners), by direction.
    drain_events: dict[DrainDirection, DrainEvent] = field(default_factory=dict)
    # The SDS secrets over xDS accepted so far (see UpdateSecret), by key.
    secrets: dict[tuple[str, bytes], bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class SetHealthCheckFailed:
    """Admin ``/healthcheck/fail`` (True) or ``/healthcheck/ok`` (False)."""

    failed: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateHealth:
    """Every host's HealthFlag bits in one cluster (the whole map, not the change, so applying
    it twice or late is harmless). Sent after any UpdateHosts of the same cluster."""

    cluster: str
    flags: dict[str, int]  # host address ("ip:port") -> HealthFlag bits; 0 is healthy


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateHosts:
    cluster: str
    hosts: tuple[HostConfig, ...]
    # An EDS cluster's balancing settings from its assignment (LbConfig fields), or None.
    lb_settings: dict | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateRuntime:
    """The runtime's admin, disk and RTDS layers after any of them changed: each whole, not
    the change, so applying it twice or late is harmless. Keyed by the layer's index in
    layered_runtime.layers (the worker compiles the same bootstrap); None is a disk layer
    whose directory does not exist (absent from the snapshot)."""

    layers: dict[int, dict[str, Entry] | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class AddCluster:
    """A cluster from CDS, new or replacing the one of the same name (whose pools drain)."""

    cluster: bytes  # serialized envoy.config.cluster.v3.Cluster
    hosts: tuple[HostConfig, ...]
    health: dict[str, int] = field(default_factory=dict)  # address -> HealthFlag bits
    breaker_table: str | None = None  # its shared circuit-breaker counts, to attach by name
    lb_settings: dict | None = None  # an EDS cluster's assignment settings (see UpdateHosts)


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoveCluster:
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AddListener:
    """A listener from LDS, new or replacing the one of the same name: the new one starts
    accepting, the old one (if any) drains for ``drain_time`` seconds."""

    listener: ListenerSocket
    drain_time: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoveListener:
    name: str
    drain_time: float


@dataclass(frozen=True, slots=True, kw_only=True)
class StartDrain:
    """A server drain sequence began (admin ``/drain_listeners``): the listeners it reaches
    (``direction``), and those added later while it lasts, drain their connections."""

    direction: DrainDirection
    event: DrainEvent


@dataclass(frozen=True, slots=True, kw_only=True)
class StopListeners:
    """Stop accepting on the listeners ``direction`` reaches; their connections stay."""

    direction: DrainDirection


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateRouteConfig:
    """An RDS RouteConfiguration: the HTTP connection managers that use it compile it and
    give it to their new streams."""

    key: Any  # legatus.router.rds.RdsSubscriptionKey
    route_config: bytes  # serialized envoy.config.route.v3.RouteConfiguration
    version: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class UpdateSecret:
    """An SDS secret over xDS that the main process accepted: the TLS contexts that use it
    are rebuilt, and new connections use it."""

    key: tuple[str, bytes]  # (secret name, serialized ConfigSource): sds_api.source_key
    secret: bytes  # serialized envoy.extensions.transport_sockets.tls.v3.Secret


@dataclass(frozen=True, slots=True, kw_only=True)
class FlushStats:
    request_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ReopenLogs:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class SetLogLevels:
    levels: dict[str, str] = field(default_factory=dict)  # component -> level


@dataclass(frozen=True, slots=True, kw_only=True)
class Shutdown:
    pass


# Worker -> main ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Ready:
    pid: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Failed:
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HostReports:
    """Passive health from the traffic of one worker (upstream/outlier_reporter.py)."""

    # cluster -> host address -> run-length encoded outcomes, in the order they happened
    outcomes: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    # (cluster, host address) that answered with x-envoy-immediate-health-check-fail
    immediate_fails: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class StatsFlushed:
    request_id: int  # 0 for the periodic push
    flush: Flush
    # Counters the worker dropped since (route_stats.RouteStatOwners): dropped here too.
    removed: tuple[str, ...] = ()


# Listening sockets (main -> worker, SCM_RIGHTS) ------------------------------------------

_FD_NAME = struct.Struct("!i")


def pass_socket(channel: socket.socket, fd: int) -> None:
    """Send the listening socket ``fd`` to a worker, named by its number here. The channel is
    non-blocking: a worker that stopped reading gets nothing (and fails to add the listener)
    rather than block the main process."""
    socket.send_fds(channel, [_FD_NAME.pack(fd)], [fd])


class ReceivedSockets:
    """The worker's end of its socket channel: the listening sockets the main process passed,
    by their number there, until a listener takes them."""

    def __init__(self, channel: socket.socket | None) -> None:
        self._channel = channel
        self._fds: dict[int, int] = {}
        if channel is not None:
            channel.setblocking(False)

    def collect(self) -> None:
        """Take in what has arrived (everything sent before the message being handled)."""
        channel = self._channel
        while channel is not None:
            try:
                data, fds, _flags, _addr = socket.recv_fds(channel, _FD_NAME.size, 1)
            except (BlockingIOError, InterruptedError):
                return
            if not data:  # the main process is gone: the control channel says so too
                return
            (name,) = _FD_NAME.unpack(data)
            for fd in fds:
                old = self._fds.pop(name, None)
                if old is not None:  # never taken (its listener failed): not leaked
                    os.close(old)
                self._fds[name] = fd

    def take(self, name: int) -> int | None:
        """The socket the main process calls ``name``; the caller owns it now."""
        return self._fds.pop(name, None)

    def discard(self, name: int) -> None:
        fd = self._fds.pop(name, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        if self._channel is not None:
            self._channel.close()


class FrameDecoder:
    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        buf = self._buffer
        buf += data
        out = []
        while len(buf) >= 4:
            (size,) = _HEADER.unpack_from(buf)
            if size > MAX_FRAME:
                raise ValueError(f"control frame of {size} bytes is too large")
            if len(buf) < 4 + size:
                break
            out.append(pickle.loads(bytes(buf[4 : 4 + size])))
            del buf[: 4 + size]
        return out


def encode(message: Any) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


class ControlProtocol(asyncio.Protocol):
    """One end of the channel: calls ``on_message`` per message and ``on_lost`` at EOF."""

    def __init__(self, on_message: Callable[[Any], None], on_lost: Callable[[], None]) -> None:
        self._decoder = FrameDecoder()
        self._on_message = on_message
        self._on_lost = on_lost
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for message in self._decoder.feed(data):
            self._on_message(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._on_lost()

    def send(self, message: Any) -> bool:
        if self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(encode(message))
        return True
