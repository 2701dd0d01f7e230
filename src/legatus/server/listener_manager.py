"""LDS: listeners from a control plane, in the main process (Envoy's LdsApiImpl and the
dynamic half of its ListenerManagerImpl).

An LDS update is applied listener by listener, as Envoy does: a listener that is refused
(its config does not compile, its address is taken or cannot be bound) is named in the
NACK (``Error adding/updating listener(s) a: ...``) while the others of the update are
applied. A state-of-the-world update removes the LDS listeners it no longer names; a delta
update the ones it lists. A static listener's name in an update is skipped, as in Envoy.

Life of a listener from LDS:

- **warming**: compiled, its port reserved here (port 0 resolved once, so every worker binds
  the same port), and its HTTP connection managers' RDS route configurations subscribed;
  it waits until each has answered (or its initial fetch failed or timed out);
- **active**: sent to the workers (``AddListener``), which start accepting on it; a listener
  it replaces (same name) then drains in the workers;
- **draining** (replaced or removed): it stops accepting; its connections drain as
  ``--drain-strategy`` says (an HTTP connection closes after a response that says
  ``connection: close``), and whatever is left is closed ``--drain-time-s`` later.

An update that changes only filter chains is done in place, as in Envoy: the connections of
the chains it leaves alone stay open on the new listener; only those of removed or changed
chains drain (``total_filter_chains_draining``).

The port: with ``enable_reuse_port`` (the default) this process binds a socket that only
reserves it, and each worker binds its own; without, this process binds the one listening
socket every worker accepts on, and passes it to them (control.pass_socket). Whether a
listener reuses the port cannot change in an update, as in Envoy.

After admin ``/drain_listeners`` stopped the listeners of a direction (``stop_listeners``),
LDS adds and updates no listener there, as Envoy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from legatus.config.errors import ConfigError
from legatus.config.subscription import ConfigUpdate, UpdateFailureReason
from legatus.config_subscription.decode import check_resource
from legatus.config_subscription.records import Rejected, ResourceRecords
from legatus.network import address as addr
from legatus.network.drain_decision import DrainDirection, listener_scope
from legatus.network.listener import ListenerConfig, bind_socket, in_place_update
from legatus.server import control
from legatus.server.admin.context import ListenerInfo

__all__ = ["DynamicListener", "LdsApi"]

log = logging.getLogger("legatus.main")


@dataclass(slots=True)
class DynamicListener:
    config: ListenerConfig
    # With reuse_port, the socket that reserves the port (bound, not listening); without, the
    # listening socket the workers share.
    sock: Any
    port: int
    version: str = ""
    warming: bool = True
    stopped: bool = False  # by /drain_listeners: it accepts no more, its socket is closed
    task: asyncio.Task | None = None
    last_updated: float = field(default_factory=time.time)  # when added or updated

    def socket_message(self) -> control.ListenerSocket:
        return control.ListenerSocket(
            listener=self.config.proto.SerializeToString(),
            name=self.config.name,
            port=self.port,
            inherited_fd=None if self.config.reuse_port else self.sock.fileno(),
        )

    def info(self) -> ListenerInfo:
        bound = addr.SocketAddress(self.config.address.host, self.port)
        return ListenerInfo(name=self.config.name, address=str(bound), config=self.config.proto)


class LdsApi:
    """The LDS subscription's callbacks, and the LDS listeners' state.

    ``compile(proto, path)`` compiles a listener as the workers will (raising ConfigError);
    ``routes_ready(config)`` subscribes the listener's RDS route configurations and returns
    an awaitable done when they have answered; ``broadcast`` sends to every worker;
    ``static`` maps the static listeners' names to their addresses."""

    def __init__(
        self,
        *,
        compile: Callable[[Any, str], ListenerConfig],
        routes_ready: Callable[[ListenerConfig], Any],
        broadcast: Callable[[Any], int | None],
        static: dict[str, tuple[str, int]],
        stats,
        drain_time: float,
        loop: asyncio.AbstractEventLoop,
        on_initialized: Callable[[], None] = lambda: None,
    ) -> None:
        self.compile = compile
        self.routes_ready = routes_ready
        self.broadcast = broadcast
        self.static = static
        self.stats = stats  # ListenerManagerStats
        self.drain_time = drain_time
        self.loop = loop
        self.on_initialized = on_initialized
        self.listeners: dict[str, DynamicListener] = {}  # active, by name
        self.warming: dict[str, DynamicListener] = {}
        self.draining = 0
        self.draining_filter_chains = 0  # in-place updates draining
        self.draining_listeners: list[DynamicListener] = []  # replaced or removed, newest first
        self.stopped = DrainDirection.NONE  # the direction /drain_listeners last stopped
        self.initialized = False
        # For /config_dump, as Envoy keeps them: the version of the last update that changed
        # something, and the refusals of the last update (by listener, and all of them).
        self.version_info = ""
        self.records = ResourceRecords()
        self.update_failures: list[Rejected] = []

    # Subscription callbacks -----------------------------------------------------------------

    def on_config_update(self, update: ConfigUpdate) -> None:
        errors: list[str] = []
        seen: set[str] = set()
        applied = False
        self.records.rejected.clear()
        failures: list[Rejected] = []
        if update.state_of_the_world:
            names = {r.name for r in update.added}
            removed = [n for n in {*self.listeners, *self.warming} if n not in names]
        else:
            removed = list(update.removed)
        for name in removed:
            if self.remove_listener(name):
                applied = True
            self.records.remove(name)
        for i, resource in enumerate(update.added):
            name = resource.name
            if name in seen:
                errors.append(f"duplicate listener {name} found")
                failures.append(Rejected(resource.resource, errors[-1], time.time()))
                continue
            seen.add(name)
            version = resource.version or update.version_info  # delta: the resource's own
            try:
                if self.add_or_update_listener(resource.resource, f"resources[{i}]", version):
                    applied = True
            except (ConfigError, ValueError, OSError) as e:
                errors.append(f"{name}: {e}")
                self.records.reject(name, resource.resource, str(e), update.version_info)
                failures.append(self.records.rejected[name])
        self.update_failures = failures
        if applied:
            self.version_info = update.version_info
        self._initialized()
        if errors:
            raise ConfigError("", "Error adding/updating listener(s) " + ", ".join(errors))

    def on_config_update_failed(self, reason: UpdateFailureReason, error) -> None:
        self._initialized()

    def _initialized(self) -> None:
        if not self.initialized:
            self.initialized = True
            self.on_initialized()

    # Listeners --------------------------------------------------------------------------

    def add_or_update_listener(self, proto, path: str, version: str = "") -> bool:
        name = proto.name
        if name in self.static:
            log.debug("lds: add/update listener '%s' skipped (static)", name)
            return False
        if self.stopped and listener_scope(proto) <= self.stopped:
            log.debug("lds: add/update listener '%s' skipped (listeners stopped)", name)
            return False
        current = self.warming.get(name) or self.listeners.get(name)
        if current is not None and current.config.proto == proto:
            return False
        check_resource(proto, path)
        config = self.compile(proto, path)
        if current is not None and current.config.reuse_port != config.reuse_port:
            raise ConfigError(
                f"{path}.enable_reuse_port",
                f"Listener {name}: reuse port cannot be changed during an update",
            )
        sock, port = self._reserve(config, path, keep=current)
        self._cancel_warming(name)
        active = self.listeners.get(name)
        if active is not None and in_place_update(active.config.proto, proto):
            version = active.version  # Envoy's in-place update keeps the listener's version
        entry = DynamicListener(config=config, sock=sock, port=port, version=version)
        self.warming[name] = entry
        self._set_gauges()
        entry.task = self.loop.create_task(self._warm(entry, modified=current is not None))
        log.info("lds: add/update listener '%s'", name)
        return True

    def _reserve(self, config: ListenerConfig, path: str, keep: DynamicListener | None):
        """Reserve the listener's port: the socket of the listener it replaces when the
        address is the same, a new bound socket otherwise (refused if another listener has
        that address); without reuse_port, the socket the workers will share, which listens
        once the listener is warm."""
        host, port = config.address.host, config.address.port
        if keep is not None and (keep.config.address.host, keep.config.address.port) == (
            host,
            port,
        ):
            return keep.sock, keep.port
        taken = [(n, a) for n, a in self.static.items()]
        taken += [(n, (e.config.address.host, e.port)) for n, e in self._entries()]
        for other, (h, p) in taken:
            if port and (h, p) == (host, port) and other != config.name:
                raise ConfigError(
                    f"{path}.address",
                    f"error adding listener '{config.address}': listener '{other}' has "
                    f"duplicate address '{config.address}' as existing listener",
                )
        try:
            sock = bind_socket(config.address, reuse_port=config.reuse_port, listen=False)
        except OSError as e:
            raise ConfigError(
                f"{path}.address", f"cannot bind '{config.address}': {e.strerror}"
            ) from None
        return sock, sock.getsockname()[1]

    def _entries(self):
        yield from self.listeners.items()
        yield from self.warming.items()

    async def _warm(self, entry: DynamicListener, *, modified: bool) -> None:
        name = entry.config.name
        try:
            await self.routes_ready(entry.config)
        except asyncio.CancelledError:
            return
        self.warming.pop(name, None)
        old = self.listeners.get(name)
        self.listeners[name] = entry
        entry.warming = False
        (self.stats.listener_modified if modified else self.stats.listener_added).inc()
        in_place = old is not None and in_place_update(old.config.proto, entry.config.proto)
        if in_place:
            self.stats.listener_in_place_updated.inc()  # the workers keep unchanged chains
        if old is not None and old.sock is not entry.sock:
            old.sock.close()
        if old is not None:
            self._count_drain(old, in_place=in_place)
        if not entry.config.reuse_port:
            entry.sock.listen(entry.config.backlog)
        workers = self.broadcast(control.AddListener(listener=entry.socket_message(),
                                                     drain_time=self.drain_time))  # fmt: skip
        self.stats.listener_create_success.add(workers or 0)  # Envoy: per worker it reaches
        self._set_gauges()

    def remove_listener(self, name: str) -> bool:
        found = self._cancel_warming(name)
        entry = self.listeners.pop(name, None)
        if entry is not None:
            self.stats.listener_removed.inc()
            self.broadcast(control.RemoveListener(name=name, drain_time=self.drain_time))
            entry.sock.close()
            self._count_drain(entry, in_place=False)
            log.info("lds: remove listener '%s'", name)
            found = True
        self._set_gauges()
        return found

    def _cancel_warming(self, name: str) -> bool:
        entry = self.warming.pop(name, None)
        if entry is None:
            return False
        if entry.task is not None:
            entry.task.cancel()
        active = self.listeners.get(name)
        if active is None or active.sock is not entry.sock:
            entry.sock.close()
        return True

    def _count_drain(self, entry: DynamicListener, *, in_place: bool) -> None:
        """A listener (or, updated in place, some of its filter chains) drains in the workers
        for ``drain_time``: the gauges follow it; a replaced or removed listener is listed
        meanwhile."""
        if in_place:
            self.draining_filter_chains += 1
        else:
            self.draining += 1
            self.draining_listeners.insert(0, entry)
        self._set_gauges()

        def done() -> None:
            if in_place:
                self.draining_filter_chains -= 1
            else:
                self.draining -= 1
                self.draining_listeners.remove(entry)
            self._set_gauges()

        self.loop.call_later(self.drain_time, done)

    def stop_listeners(self, direction: DrainDirection) -> int:
        """Admin /drain_listeners stopped the listeners ``direction`` reaches (Envoy's
        stopListeners): those active stop (their sockets close here; the workers stop
        accepting), a warming update of one of them is dropped, and later updates there are
        skipped. Returns how many listeners stopped."""
        self.stopped = direction
        count = 0
        for name, entry in list(self.listeners.items()):
            if listener_scope(entry.config.proto) > direction:
                continue
            self._cancel_warming(name)
            if not entry.stopped:
                entry.stopped = True
                entry.sock.close()
                count += 1
        self._set_gauges()
        return count

    def _set_gauges(self) -> None:
        s = self.stats
        s.total_listeners_warming.set(len(self.warming))
        s.total_listeners_active.set(len(self.static) + len(self.listeners))
        s.total_listeners_draining.set(self.draining)
        s.total_filter_chains_draining.set(self.draining_filter_chains)

    async def wait_warm(self) -> None:
        while True:
            pending = [e.task for e in self.warming.values() if e.task and not e.task.done()]
            if not pending:
                return
            await asyncio.wait(pending)

    def close(self) -> None:
        for entry in [*self.warming.values(), *self.listeners.values()]:
            if entry.task is not None:
                entry.task.cancel()
            entry.sock.close()
        self.warming.clear()
        self.listeners.clear()
