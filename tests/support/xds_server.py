"""An in-process xDS control plane for tests (grpcio's asyncio server, on 127.0.0.1).

It serves, SotW and delta, the aggregated service (``StreamAggregatedResources``,
``DeltaAggregatedResources``) and the per-type services of CDS, LDS, EDS, RDS, RTDS and SDS
(``ClusterDiscoveryService/StreamClusters``, ``.../DeltaClusters``, ...). It runs in the
test's event loop::

    server = XdsServer()
    await server.start()                          # an ephemeral port: server.address
    server.set_resources(CLUSTER, [cluster_a])    # version "1", pushed to subscribed streams
    ack = await server.wait_for(lambda r: r.type_url == CLUSTER and r.response_nonce)
    assert ack.version_info == "1" and not ack.is_nack
    await server.stop()                           # every stream fails (UNAVAILABLE)
    await server.start()                          # the same port again

Resources. ``set_resources(type_url, messages)`` replaces the whole set of a type (each named
by its ``name``, or ``cluster_name`` for a ClusterLoadAssignment) and gives the type a new
version: ``"1"``, ``"2"``, ... unless ``version=`` is given. In delta each resource also has
its own version, which changes only when the resource does. ``push=False`` changes the set
without telling anyone; ``push(type_url)`` tells every stream subscribed to it.

Answers (``auto_respond``, on by default; off, the server only records and the test sends
with ``push``/``send``):

- SotW: a request whose nonce is not the last one sent on its stream for its type is stale
  and not answered. Otherwise the server answers when the stream has not been sent the
  type's current version yet, or the request changed the names of interest; so an ACK or a
  NACK of the current version gets no answer. Names: none ever named on the stream is the
  legacy wildcard, ``*`` the explicit one; a response holds every resource (wildcard) or
  the ones named.
- Delta: the server keeps, per stream and type, the names of interest (``*``, or none on
  the first request, for the wildcard) and the version the client holds of each resource
  (from ``initial_resource_versions``, then from what it was sent). It answers with the
  resources of interest the client lacks or holds at another version (a name subscribed
  again on a stream always), and ``removed_resources`` for held names that no longer exist.
  Nothing to say: no answer.

Records. ``requests`` lists every request received (``Received``: stream number, method,
message, and accessors for its fields), ``responses`` every response sent (``Sent``),
``streams_opened`` counts streams. ``wait_for(predicate)`` and ``until(condition)`` wait
(bounded) for something to happen. ``send(response)`` sends a hand-made response (a bad Any,
a wrong type URL) to the open streams of its kind, with a fresh nonce unless it has one;
``close_streams(code)`` ends every open stream with a gRPC status.

``RecordingOwner`` is a ``SubscriptionCallbacks`` that records what it is given and can be
told to reject (``reject = "reason"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, symbol_database

from legatus.config.errors import ConfigError
from legatus.config.subscription import ConfigUpdate, UpdateFailureReason

__all__ = ["SERVICES", "Received", "RecordingOwner", "Sent", "XdsServer"]

_PREFIX = "type.googleapis.com/"
# service -> (SotW method, delta method)
SERVICES = {
    "envoy.service.discovery.v3.AggregatedDiscoveryService": (
        "StreamAggregatedResources",
        "DeltaAggregatedResources",
    ),
    "envoy.service.cluster.v3.ClusterDiscoveryService": ("StreamClusters", "DeltaClusters"),
    "envoy.service.listener.v3.ListenerDiscoveryService": ("StreamListeners", "DeltaListeners"),
    "envoy.service.endpoint.v3.EndpointDiscoveryService": ("StreamEndpoints", "DeltaEndpoints"),
    "envoy.service.route.v3.RouteDiscoveryService": ("StreamRoutes", "DeltaRoutes"),
    "envoy.service.runtime.v3.RuntimeDiscoveryService": ("StreamRuntime", "DeltaRuntime"),
    "envoy.service.secret.v3.SecretDiscoveryService": ("StreamSecrets", "DeltaSecrets"),
}
_WILDCARD = "*"


@dataclass(frozen=True, slots=True)
class Received:
    """One request, as received."""

    stream: int  # streams are numbered from 1 in the order they open
    method: str  # "/package.Service/Method"
    message: Any  # DiscoveryRequest or DeltaDiscoveryRequest
    delta: bool

    @property
    def type_url(self) -> str:
        return self.message.type_url

    @property
    def version_info(self) -> str:
        return "" if self.delta else self.message.version_info

    @property
    def response_nonce(self) -> str:
        return self.message.response_nonce

    @property
    def is_nack(self) -> bool:
        return self.message.HasField("error_detail")

    @property
    def error_detail(self):
        """The google.rpc.Status of a NACK, or None."""
        return self.message.error_detail if self.is_nack else None

    @property
    def has_node(self) -> bool:
        return self.message.HasField("node")

    @property
    def node(self):
        return self.message.node if self.has_node else None

    @property
    def resource_names(self) -> list[str]:
        return list(self.message.resource_names)

    @property
    def subscribe(self) -> list[str]:
        return list(self.message.resource_names_subscribe)

    @property
    def unsubscribe(self) -> list[str]:
        return list(self.message.resource_names_unsubscribe)

    @property
    def initial_resource_versions(self) -> dict[str, str]:
        return dict(self.message.initial_resource_versions)


@dataclass(frozen=True, slots=True)
class Sent:
    """One response, as sent."""

    stream: int
    method: str
    message: Any  # DiscoveryResponse or DeltaDiscoveryResponse

    @property
    def type_url(self) -> str:
        return self.message.type_url

    @property
    def nonce(self) -> str:
        return self.message.nonce

    @property
    def names(self) -> list[str]:
        if isinstance(self.message, discovery_pb2.DeltaDiscoveryResponse):
            return [r.name for r in self.message.resources]
        return [_unpacked_name(a, self.message.type_url) for a in self.message.resources]


@dataclass(slots=True)
class _Resource:
    name: str
    packed: any_pb2.Any
    version: str


@dataclass(slots=True)
class _SotwInterest:
    names: set[str] = field(default_factory=set)
    wildcard: bool = True
    named: bool = False  # a request named something: an empty list no longer means "*"
    sent_version: str | None = None
    nonce: str = ""


@dataclass(slots=True)
class _DeltaInterest:
    names: set[str] = field(default_factory=set)
    wildcard: bool = False
    held: dict[str, str] = field(default_factory=dict)  # what the client has: name -> version
    nonce: str = ""

    def wants(self, name: str) -> bool:
        return self.wildcard or name in self.names


@dataclass(slots=True)
class _Close:
    code: grpc.StatusCode
    details: str


class _Stream:
    def __init__(self, number: int, method: str, delta: bool) -> None:
        self.number = number
        self.method = method
        self.delta = delta
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.types: dict[str, Any] = {}  # type URL -> _SotwInterest | _DeltaInterest


def _name_field(type_url: str) -> str:
    return "cluster_name" if type_url.endswith("ClusterLoadAssignment") else "name"


def _unpacked_name(packed: any_pb2.Any, type_url: str) -> str:
    try:
        cls = symbol_database.Default().GetSymbol(packed.type_url.rpartition("/")[2])
    except KeyError:
        return ""
    message = cls()
    if not packed.Unpack(message):
        return ""
    return getattr(message, _name_field(type_url), "") or getattr(message, "name", "")


class XdsServer:
    """See the module docstring."""

    def __init__(self, *, auto_respond: bool = True) -> None:
        self.auto_respond = auto_respond
        self.port = 0
        self.requests: list[Received] = []
        self.responses: list[Sent] = []
        self.streams_opened = 0
        self._resources: dict[str, dict[str, _Resource]] = {}
        self._versions: dict[str, str] = {}
        self._version_counter: dict[str, itertools.count] = {}
        self._resource_counter = itertools.count(1)
        self._nonces = itertools.count(1)
        self._streams: dict[int, _Stream] = {}
        self._server: grpc.aio.Server | None = None
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task] = set()

    # Lifecycle -------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen (on the port of a previous start, if any) and serve."""
        server = grpc.aio.server()
        handlers = []
        for service, (sotw, delta) in SERVICES.items():
            handlers.append(
                grpc.method_handlers_generic_handler(
                    service,
                    {
                        sotw: self._handler(f"/{service}/{sotw}", delta=False),
                        delta: self._handler(f"/{service}/{delta}", delta=True),
                    },
                )
            )
        server.add_generic_rpc_handlers(handlers)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        """Stop serving: open streams are cancelled (clients see UNAVAILABLE)."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(None)
        self._streams.clear()

    # Resources -------------------------------------------------------------------

    def set_resources(
        self,
        type_url: str,
        resources: Iterable[Any],
        *,
        version: str | None = None,
        push: bool = True,
    ) -> str:
        """Replace the resources of ``type_url``; returns the type's new version."""
        old = self._resources.get(type_url, {})
        new: dict[str, _Resource] = {}
        for message in resources:
            packed = any_pb2.Any()
            packed.Pack(message)
            name = getattr(message, _name_field(type_url))
            previous = old.get(name)
            if previous is not None and previous.packed == packed:
                resource_version = previous.version
            else:
                resource_version = str(next(self._resource_counter))
            new[name] = _Resource(name, packed, resource_version)
        self._resources[type_url] = new
        if version is None:
            counter = self._version_counter.setdefault(type_url, itertools.count(1))
            version = str(next(counter))
        self._versions[type_url] = version
        if push:
            self.push(type_url)
        return version

    def version(self, type_url: str) -> str | None:
        return self._versions.get(type_url)

    def push(self, type_url: str) -> int:
        """Send the current state of ``type_url`` to every stream subscribed to it (delta:
        what changed for it, if anything). Returns how many responses went out."""
        sent = 0
        for stream in list(self._streams.values()):
            interest = stream.types.get(type_url)
            if interest is None:
                continue
            if stream.delta:
                sent += self._send_delta(stream, type_url, interest) is not None
            else:
                self._send_sotw(stream, type_url, interest)
                sent += 1
        return sent

    def send(self, response: Any, *, unasked: bool = False) -> list[Sent]:
        """Send a hand-made DiscoveryResponse / DeltaDiscoveryResponse to every open stream
        of its kind that asked for its type (``unasked``: to every one), with a fresh nonce
        unless it has one."""
        delta = isinstance(response, discovery_pb2.DeltaDiscoveryResponse)
        out = []
        for stream in list(self._streams.values()):
            interest = stream.types.get(response.type_url)
            if stream.delta != delta or (interest is None and not unasked):
                continue
            message = type(response)()
            message.CopyFrom(response)
            if not message.nonce:
                message.nonce = str(next(self._nonces))
            if interest is not None:
                interest.nonce = message.nonce
            out.append(self._enqueue(stream, message))
        return out

    def close_streams(self, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        """End every open stream with ``code`` (OK: a clean end of the stream)."""
        for stream in list(self._streams.values()):
            stream.outbox.put_nowait(_Close(code, "closed by the test control plane"))

    # Waiting ---------------------------------------------------------------------

    async def until(self, condition: Callable[[], bool], timeout: float = 2.0) -> None:
        """Wait until ``condition()`` holds: checked after each request, stream and response,
        and every 10 ms (for conditions on the client's side, such as its stats)."""
        async with asyncio.timeout(timeout), self._changed:
            while not condition():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.01)

    async def wait_for(
        self,
        predicate: Callable[[Received], bool] = lambda r: True,
        *,
        since: int = 0,
        timeout: float = 2.0,
    ) -> Received:
        """The first request from ``requests[since:]`` that satisfies ``predicate``."""
        found: list[Received] = []

        def check() -> bool:
            for request in self.requests[since:]:
                if predicate(request):
                    found.append(request)
                    return True
            return False

        await self.until(check, timeout)
        return found[0]

    def requests_of(self, type_url: str) -> list[Received]:
        return [r for r in self.requests if r.type_url == type_url]

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _poke(self) -> None:
        task = asyncio.get_running_loop().create_task(self._notify())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # Streams ---------------------------------------------------------------------

    def _handler(self, method: str, *, delta: bool):
        request_class = (
            discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest
        )

        async def serve(request_iterator, context):
            self.streams_opened += 1
            stream = _Stream(self.streams_opened, method, delta)
            self._streams[stream.number] = stream
            await self._notify()
            reader = asyncio.create_task(self._read(stream, request_iterator))
            try:
                while True:
                    item = await stream.outbox.get()
                    if item is None:
                        return
                    if isinstance(item, _Close):
                        if item.code != grpc.StatusCode.OK:
                            await context.abort(item.code, item.details)
                        return
                    await context.write(item)
            finally:
                reader.cancel()
                self._streams.pop(stream.number, None)

        return grpc.stream_stream_rpc_method_handler(
            serve,
            request_deserializer=request_class.FromString,
            response_serializer=lambda m: m.SerializeToString(),
        )

    async def _read(self, stream: _Stream, request_iterator) -> None:
        try:
            async for request in request_iterator:
                self.requests.append(Received(stream.number, stream.method, request, stream.delta))
                if stream.delta:
                    self._on_delta_request(stream, request)
                else:
                    self._on_sotw_request(stream, request)
                await self._notify()
        finally:
            stream.outbox.put_nowait(None)

    def _enqueue(self, stream: _Stream, message: Any) -> Sent:
        sent = Sent(stream.number, stream.method, message)
        self.responses.append(sent)
        stream.outbox.put_nowait(message)
        self._poke()
        return sent

    # SotW ------------------------------------------------------------------------

    def _on_sotw_request(self, stream: _Stream, request) -> None:
        interest = stream.types.get(request.type_url)
        if interest is None:
            interest = stream.types[request.type_url] = _SotwInterest()
        before = (set(interest.names), interest.wildcard)
        names = set(request.resource_names)
        if names:
            interest.named = True
            interest.wildcard = _WILDCARD in names
            interest.names = names - {_WILDCARD}
        elif interest.named:
            interest.wildcard = False
            interest.names = set()
        changed = (interest.names, interest.wildcard) != before
        if request.response_nonce and request.response_nonce != interest.nonce:
            return  # stale: a newer response is on its way
        version = self._versions.get(request.type_url)
        if not self.auto_respond or version is None:
            return
        if changed or interest.sent_version != version:
            self._send_sotw(stream, request.type_url, interest)

    def _send_sotw(self, stream: _Stream, type_url: str, interest: _SotwInterest) -> Sent:
        resources = self._resources.get(type_url, {})
        version = self._versions.get(type_url, "")
        chosen = [
            r.packed for r in resources.values() if interest.wildcard or r.name in interest.names
        ]
        nonce = str(next(self._nonces))
        interest.sent_version = version
        interest.nonce = nonce
        response = discovery_pb2.DiscoveryResponse(
            version_info=version, resources=chosen, type_url=type_url, nonce=nonce
        )
        return self._enqueue(stream, response)

    # Delta -----------------------------------------------------------------------

    def _on_delta_request(self, stream: _Stream, request) -> None:
        interest = stream.types.get(request.type_url)
        first = interest is None
        if interest is None:
            interest = stream.types[request.type_url] = _DeltaInterest()
            interest.held = dict(request.initial_resource_versions)
            if not request.resource_names_subscribe and not request.resource_names_unsubscribe:
                interest.wildcard = True  # the legacy wildcard
        fresh: set[str] = set()  # names to send even if the client holds them
        for name in request.resource_names_subscribe:
            if name == _WILDCARD:
                interest.wildcard = True
            else:
                interest.names.add(name)
                if not (first and name in interest.held):
                    fresh.add(name)
        for name in request.resource_names_unsubscribe:
            if name == _WILDCARD:
                interest.wildcard = False
            else:
                interest.names.discard(name)
                interest.held.pop(name, None)
        if not self.auto_respond or request.type_url not in self._versions:
            return
        self._send_delta(stream, request.type_url, interest, fresh)

    def _send_delta(
        self,
        stream: _Stream,
        type_url: str,
        interest: _DeltaInterest,
        fresh: Iterable[str] = (),
    ) -> Sent | None:
        resources = self._resources.get(type_url, {})
        fresh = set(fresh)
        added = [
            r
            for r in resources.values()
            if interest.wants(r.name)
            and (interest.held.get(r.name) != r.version or r.name in fresh)
        ]
        removed = sorted(name for name in interest.held if name not in resources)
        if not added and not removed:
            return None
        for r in added:
            interest.held[r.name] = r.version
        for name in removed:
            del interest.held[name]
        nonce = str(next(self._nonces))
        interest.nonce = nonce
        response = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=self._versions.get(type_url, ""),
            type_url=type_url,
            nonce=nonce,
            resources=[
                discovery_pb2.Resource(name=r.name, version=r.version, resource=r.packed)
                for r in added
            ],
            removed_resources=removed,
        )
        return self._enqueue(stream, response)


class RecordingOwner:
    """A subscription's owner that records its updates and failures.

    Set ``reject`` to a text to make the next updates raise ``ConfigError`` with it (the
    update is then NACKed); ``None`` accepts. ``updated`` is set on every update.
    """

    def __init__(self) -> None:
        self.updates: list[ConfigUpdate] = []
        self.failures: list[tuple[UpdateFailureReason, Exception | None]] = []
        self.rejected: list[ConfigUpdate] = []
        self.reject: str | None = None
        self.updated = asyncio.Event()
        self.on_update: Callable[[ConfigUpdate], None] | None = None

    def on_config_update(self, update: ConfigUpdate) -> None:
        self.updated.set()
        if self.on_update is not None:
            self.on_update(update)
        if self.reject is not None:
            self.rejected.append(update)
            raise ConfigError("", self.reject)
        self.updates.append(update)

    def on_config_update_failed(self, reason: UpdateFailureReason, error: Exception | None):
        self.failures.append((reason, error))

    @property
    def names(self) -> list[str]:
        """The names of the last accepted update."""
        return [r.name for r in self.updates[-1].added] if self.updates else []

    async def wait(self, count: int = 1, timeout: float = 2.0) -> ConfigUpdate:
        """Wait until ``count`` updates were accepted in all; the last one."""
        async with asyncio.timeout(timeout):
            while len(self.updates) < count:
                self.updated.clear()
                await self.updated.wait()
        return self.updates[-1]
