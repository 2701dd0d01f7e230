"""One xDS stream over gRPC (ADS, or one resource type's own service), SotW or delta.

Theory of operation. A ``GrpcMux`` owns a task that keeps one bidirectional stream open to
the control plane, and a protocol state per resource type (``SotwState`` or ``DeltaState``)
shared by that type's subscriptions (``WatchMap``). Three things move it:

- Subscriptions change their interest (start, update_resource_interest, close): the state
  learns the new union of names and the type has something to say.
- A response arrives: the reader decodes it, hands it to the type's watches, and records
  the ACK or (if anything failed) the NACK. Responses are read one at a time and each is
  handled to the end before the next is read, so a flood of responses waits in gRPC's flow
  control, not in a queue of ours.
- The writer sends what is owed, as Envoy's two muxes do. SotW: one request per due type,
  in the order types became due, built from the state *when it is sent*: everything that
  happened to a type since its last request is said once (coalescing); a paused type
  (``pause``) stays due and is skipped until resumed. Delta: every response gets an answer
  of its own (``PausableAckQueue``), sent in order with the changes of interest, a paused
  type's held back (``control_plane.pending_requests`` counts them); then the types whose
  interest changed while paused, in subscription order. ``rate_limit_settings`` put a token
  bucket in front of the writes.

The answer to a response becomes sendable one event-loop turn after the response was
handled, once what the handling set off has run (a warming cluster's task finishing with
its first assignment, which resumes CDS). Envoy does that work inside the handling, so the
CDS ACK that the warm cluster releases goes out before the EDS ACK that warmed it; the turn
keeps that order here. A SotW response of a type nobody watches any more (the endpoints of
a cluster just removed) is taken without a request when it is empty, as Envoy takes it: the
request that dropped the last name said all there was to say.

When the stream fails (or the server closes it), every subscription counts a connection
failure, and after a jittered exponential back-off a new channel and stream are made; the
first request of every type of interest goes out again (SotW: with the last accepted
version and no nonce; delta: with ``initial_resource_versions``). Owners keep their config
meanwhile and are called again only when new responses arrive.

The node goes on the first request of each stream, and on every request unless
``set_node_on_first_message_only``. ``control_plane.connected_state`` is 1 while a stream is
up: from when its channel is connected (Envoy sets it when the stream is opened, before the
connection is known to work; a control plane that refuses connections then shows 1 between
retries) or a response arrives, to when the stream ends. ``control_plane.identifier`` is the
last ``control_plane.identifier`` a response carried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random as random_module
from collections.abc import Callable, Iterator, Sequence

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from legatus.common.token_bucket import TokenBucket
from legatus.config.errors import ConfigError
from legatus.config.subscription import SubscriptionCallbacks
from legatus.config_subscription import decode
from legatus.config_subscription.grpc.api_config import RateLimitSettings
from legatus.config_subscription.grpc.backoff import BackOffSettings, JitteredBackOff
from legatus.config_subscription.grpc.delta_state import DeltaState
from legatus.config_subscription.grpc.grpc_subscription import GrpcSubscription
from legatus.config_subscription.grpc.pausable_ack_queue import (
    InterestChange,
    PausableAckQueue,
    UpdateAck,
)
from legatus.config_subscription.grpc.protocol import error_detail
from legatus.config_subscription.grpc.resources import decode_delta, decode_sotw
from legatus.config_subscription.grpc.services import method_path
from legatus.config_subscription.grpc.sotw_state import SotwState
from legatus.config_subscription.grpc.watch_map import WatchMap
from legatus.config_subscription.stats import SubscriptionStats
from legatus.stats.store import Scope, StatSet, counter, gauge

__all__ = ["ControlPlaneStats", "GrpcMux", "StreamClosedError"]

log = logging.getLogger("legatus.config")

# Closes that are expected while a control plane restarts (Envoy logs them at debug).
_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


class ControlPlaneStats(StatSet):
    rate_limit_enforced = counter()
    pending_requests = gauge()  # due requests held back by the rate limit
    connected_state = gauge()


class StreamClosedError(ConnectionError):
    """The control plane ended the stream (gRPC status OK) or the stream broke locally."""


class _Type:
    """One resource type on the mux: its protocol state and its subscriptions."""

    __slots__ = ("state", "watches")

    def __init__(self, type_url: str, delta: bool) -> None:
        self.state: SotwState | DeltaState = DeltaState(type_url) if delta else SotwState(type_url)
        self.watches = WatchMap(type_url)


class GrpcMux:
    """See the module docstring.

    ``channel_factory()`` is called once per stream attempt and must return a new
    ``grpc.aio.Channel``, which the mux closes when the stream ends (see
    ``channel.channel_factory``). ``scope`` is the parent of the ``control_plane.`` stats.
    ``random()`` returns a float in [0, 1) (back-off jitter).
    """

    def __init__(
        self,
        channel_factory: Callable[[], grpc.aio.Channel],
        node: base_pb2.Node,
        *,
        ads: bool,
        delta: bool,
        scope: Scope,
        set_node_on_first_message_only: bool = False,
        backoff: BackOffSettings | None = None,
        rate_limit: RateLimitSettings | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        loop: asyncio.AbstractEventLoop | None = None,
        random: Callable[[], float] = random_module.random,
    ) -> None:
        self.ads = ads
        self.delta = delta
        self._channel_factory = channel_factory
        self._node = node
        self._node_first_only = set_node_on_first_message_only
        self._backoff = JitteredBackOff(backoff or BackOffSettings(), random)
        self._rate_limit = rate_limit
        self._bucket: TokenBucket | None = None
        self._metadata = tuple(metadata)
        self._loop = loop
        self._response_class = (
            discovery_pb2.DeltaDiscoveryResponse if delta else discovery_pb2.DiscoveryResponse
        )
        self._stats = ControlPlaneStats(scope.scope("control_plane."))
        self._identifier = scope.text_readout("control_plane.identifier")
        self._types: dict[str, _Type] = {}  # in subscription order
        self._type_url: str | None = None  # the one type of a non-ADS stream
        self._due: dict[str, None] = {}  # SotW: an ordered set of the types owing a request
        self._pauses: dict[str, int] = {}
        self._acks = PausableAckQueue(self._is_paused)  # delta: the answers owed
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._streaming = False
        self._stream_number = 0  # which stream a deferred answer belongs to
        self._first_request = True
        self._closed = False

    # Public interface ------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    @property
    def connected(self) -> bool:
        """A stream is open (it may still fail before its first response)."""
        return self._streaming

    @property
    def stats(self) -> ControlPlaneStats:
        return self._stats

    def subscribe(
        self,
        type_url: str,
        callbacks: SubscriptionCallbacks,
        stats: SubscriptionStats,
        initial_fetch_timeout: float | None = None,
    ) -> GrpcSubscription:
        """A subscription to ``type_url`` on this stream; it fetches once ``start``ed."""
        if self._closed:
            raise RuntimeError("the xDS mux is closed")
        try:
            decode.message_class(type_url)
        except decode.DecodeError as e:
            raise ValueError(str(e)) from None
        if not self.ads:
            method_path(type_url, ads=False, delta=self.delta)  # raises for a type without one
            if self._type_url is None:
                self._type_url = type_url
            elif self._type_url != type_url:
                raise ValueError(
                    f"a non-aggregated xDS stream carries one type ({self._type_url}), "
                    f"not {type_url}"
                )
        return GrpcSubscription(self, type_url, callbacks, stats, initial_fetch_timeout)

    def start(self) -> None:
        """Open the stream. ADS: call once the first subscriptions are started, so they go
        out together in subscription order; a per-type stream starts with its first
        subscription."""
        if self._closed:
            raise RuntimeError("the xDS mux is closed")
        if not self.ads and self._type_url is None:
            raise RuntimeError("a per-type xDS stream starts with its first subscription")
        if self._task is None:
            if self._rate_limit is not None:
                self._bucket = TokenBucket(
                    max_tokens=self._rate_limit.max_tokens,
                    tokens_per_fill=1,
                    fill_interval=1.0 / self._rate_limit.fill_rate,
                    clock=self.loop.time,
                )
            self._task = self.loop.create_task(self._run())

    def pause(self, *type_urls: str) -> None:
        """Hold the requests of these types (counted: each pause needs its resume)."""
        for type_url in type_urls:
            self._pauses[type_url] = self._pauses.get(type_url, 0) + 1

    def resume(self, *type_urls: str) -> None:
        """Undo one ``pause``; a type no longer paused sends its latest request, if due."""
        for type_url in type_urls:
            if not self._pauses.get(type_url):
                raise RuntimeError(f"resume of {type_url}, which is not paused")
        for type_url in type_urls:
            count = self._pauses[type_url] - 1
            if count:
                self._pauses[type_url] = count
                continue
            del self._pauses[type_url]
            if self.delta and type_url in self._types:
                self._queue(type_url)  # its change of interest goes now, as in Envoy
            self._wake.set()

    @contextlib.contextmanager
    def paused(self, *type_urls: str) -> Iterator[None]:
        self.pause(*type_urls)
        try:
            yield
        finally:
            self.resume(*type_urls)

    async def close(self) -> None:
        """Stop streaming: the stream is cancelled and its channel closed."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        self._streaming = False
        self._stats.connected_state.set(0)

    # Subscriptions' interface --------------------------------------------------------

    def add_watch(self, watch: GrpcSubscription) -> None:
        entry = self._types.get(watch.type_url)
        if entry is None:
            entry = self._types[watch.type_url] = _Type(watch.type_url, self.delta)
        entry.watches.add(watch)
        self._refresh(entry)
        if not self.ads:
            self.start()

    def interest_changed(self, watch: GrpcSubscription) -> None:
        entry = self._types[watch.type_url]
        entry.watches.add(watch)  # first in line again, as in Envoy
        self._refresh(entry)

    def remove_watch(self, watch: GrpcSubscription) -> None:
        entry = self._types.get(watch.type_url)
        if entry is None:
            return
        before = entry.state.names, entry.state.wildcard
        entry.watches.remove(watch)
        names, wildcard = entry.watches.interest()
        if (names, wildcard) != before:
            self._refresh(entry)

    def _refresh(self, entry: _Type) -> None:
        names, wildcard = entry.watches.interest()
        entry.state.set_interest(names, wildcard)
        self._queue(entry.state.type_url)

    # Requests -------------------------------------------------------------------

    def _queue(self, type_url: str) -> None:
        """``type_url`` may have something to say (its interest changed, a response of it
        was handled, it was resumed)."""
        if not self._streaming:
            return  # the next stream asks afresh
        if not self.delta:
            self._due[type_url] = None
        elif type_url not in self._pauses and self._types[type_url].state.wants_request():
            self._acks.push(InterestChange(type_url))
        self._wake.set()

    def _is_paused(self, type_url: str) -> bool:
        return type_url in self._pauses

    def _next_due(self) -> tuple[str, UpdateAck | None] | None:
        """The type of the next request, and the answer it carries (delta)."""
        if not self.delta:
            for type_url in self._due:
                if type_url not in self._pauses:
                    return type_url, None
            return None
        while (queued := self._acks.front()) is not None:
            if isinstance(queued, UpdateAck):
                return queued.type_url, queued
            self._acks.pop(queued)
            if self._types[queued.type_url].state.wants_request():
                return queued.type_url, None
        for type_url, entry in self._types.items():
            if type_url not in self._pauses and entry.state.wants_request():
                return type_url, None
        return None

    def _next_request(self, type_url: str, ack: UpdateAck | None):
        state = self._types[type_url].state
        if ack is not None:
            self._acks.pop(ack)
            request = state.next_request(ack)
        else:
            self._due.pop(type_url, None)
            request = state.next_request()
        if self._first_request or not self._node_first_only:
            request.node.CopyFrom(self._node)
        self._first_request = False
        return request

    def _update_pending(self) -> None:
        """Envoy's queue size: SotW, the due requests held back (by the rate limit); delta,
        every answer owed, paused types' included. Set once it was ever non-zero."""
        pending = self._stats.pending_requests
        if self.delta:
            count = len(self._acks)
        else:
            count = sum(1 for type_url in self._due if type_url not in self._pauses)
        if count or pending.used:
            pending.set(count)

    async def _write_loop(self, call) -> None:
        bucket = self._bucket
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while (due := self._next_due()) is not None:
                    if bucket is not None and not bucket.consume():
                        self._stats.rate_limit_enforced.inc()
                        self._update_pending()
                        await asyncio.sleep(bucket.next_token_ms() / 1000)
                        continue
                    await call.write(self._next_request(*due))
                self._update_pending()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return  # the call is over; the reader says why

    # The stream -----------------------------------------------------------------

    def _method(self) -> str:
        return method_path(self._type_url, ads=self.ads, delta=self.delta)

    async def _run(self) -> None:
        while not self._closed:
            try:
                error = await self._stream_once()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug of ours: log it, and keep the config coming
                log.exception("xDS stream %s failed", self._method())
                error = e
            self._stream_failed(error)
            await asyncio.sleep(self._backoff.next_delay())

    async def _stream_once(self) -> Exception:
        try:
            channel = self._channel_factory()
        except Exception as e:  # e.g. no host to reach the control plane through
            return e
        try:
            call = channel.stream_stream(
                self._method(),
                request_serializer=_serialize,
                response_deserializer=self._response_class.FromString,
            )(metadata=self._metadata or None)
            self._stream_started()
            writer = asyncio.create_task(self._write_loop(call))
            writer.add_done_callback(lambda task: _writer_done(task, call))
            watcher = asyncio.create_task(self._watch_connected(channel))
            try:
                return await self._read_loop(call)
            finally:
                self._streaming = False
                writer.cancel()
                watcher.cancel()
                await asyncio.wait([writer, watcher])
                call.cancel()
        finally:
            await channel.close()

    async def _watch_connected(self, channel: grpc.aio.Channel) -> None:
        state = channel.get_state(try_to_connect=True)
        while state is not grpc.ChannelConnectivity.READY:
            await channel.wait_for_state_change(state)
            state = channel.get_state()
        self._stats.connected_state.set(1)

    async def _read_loop(self, call) -> Exception:
        while True:
            try:
                response = await call.read()
            except grpc.aio.AioRpcError as e:
                return e
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                return StreamClosedError("the xDS stream was cancelled")
            if response is grpc.aio.EOF:
                return StreamClosedError("the control plane closed the xDS stream")
            self._backoff.reset()
            self._stats.connected_state.set(1)
            self._on_response(response)

    def _stream_started(self) -> None:
        self._streaming = True
        self._stream_number += 1
        self._first_request = True
        self._due.clear()
        self._acks.clear()
        for type_url, entry in self._types.items():
            entry.state.stream_started()
            if entry.state.interested and not self.delta:
                self._due[type_url] = None
        self._wake.set()

    def _stream_failed(self, error: Exception) -> None:
        self._streaming = False
        self._stats.connected_state.set(0)
        self._due.clear()
        self._update_pending()
        code = error.code() if isinstance(error, grpc.aio.AioRpcError) else None
        level = logging.DEBUG if code in _TRANSIENT else logging.WARNING
        log.log(level, "%s gRPC config stream closed: %s", self._method(), _describe(error))
        for entry in tuple(self._types.values()):
            for watch in entry.watches:
                watch.connection_failed()

    # Responses ------------------------------------------------------------------

    def _on_response(self, response) -> None:
        entry = self._types.get(response.type_url)
        if entry is None:
            log.warning(
                "ignoring an xDS response for type URL %s, which has no subscription",
                response.type_url,
            )
            return
        if response.HasField("control_plane"):
            self._identifier.set(response.control_plane.identifier)
        if self.delta:
            answer = self._on_delta_response(entry, response)
            self.loop.call_soon(self._answer, self._stream_number, answer)
        elif self._on_sotw_response(entry, response):
            self.loop.call_soon(self._answer, self._stream_number, response.type_url)

    def _answer(self, stream_number: int, answer: UpdateAck | str) -> None:
        """Make the answer to a response sendable (see the module doc): delta, its ACK or
        NACK; SotW, the type's next request."""
        if stream_number != self._stream_number or not self._streaming:
            return  # that stream is gone, and its nonces with it
        if isinstance(answer, UpdateAck):
            self._acks.push(answer)
            self._wake.set()
        else:
            self._queue(answer)

    def _on_sotw_response(self, entry: _Type, response: discovery_pb2.DiscoveryResponse) -> bool:
        """Handle a SotW response; whether it wants a request in answer."""
        state = entry.state
        assert isinstance(state, SotwState)
        if not len(entry.watches):
            # Nobody asked (every subscription went away): take an empty answer silently,
            # and answer anything else without ACKing its version (Envoy's GrpcMuxImpl).
            if response.resources:
                state.seen(response.nonce)
                return True
            state.accepted(response.version_info, response.nonce)
            return False
        try:
            resources = [
                decode_sotw(r, response.type_url, f"resources[{i}]")
                for i, r in enumerate(response.resources)
            ]
            entry.watches.deliver_sotw(resources, response.version_info)
        except Exception as error:
            state.rejected(response.nonce, self._rejection(entry, error))
        else:
            state.accepted(response.version_info, response.nonce)
        return True

    def _on_delta_response(
        self, entry: _Type, response: discovery_pb2.DeltaDiscoveryResponse
    ) -> UpdateAck:
        """Handle a delta response; its answer."""
        state = entry.state
        assert isinstance(state, DeltaState)
        if response.resource_errors:
            log.debug("%s: resource_errors are not acted upon", response.type_url)
        try:
            added, removed = decode_delta(response, state)
            entry.watches.deliver_delta(added, removed, response.system_version_info)
        except Exception as error:
            message = self._rejection(entry, error)
            return UpdateAck(response.type_url, response.nonce, error_detail(message))
        state.accepted([(r.name, r.version) for r in added], removed)
        return UpdateAck(response.type_url, response.nonce)

    def _rejection(self, entry: _Type, error: Exception) -> str:
        """Log a refused response, tell its watches; the NACK's text."""
        message = str(error)
        if isinstance(error, ConfigError | ValueError):
            log.warning("gRPC config for %s rejected: %s", entry.state.type_url, message)
        else:
            log.error("gRPC config for %s rejected by an unexpected error", entry.state.type_url,
                      exc_info=error)  # fmt: skip
            message = message or type(error).__name__
        for watch in entry.watches:
            watch.rejected(error)
        return message


def _serialize(request) -> bytes:
    return request.SerializeToString()


def _writer_done(task: asyncio.Task, call) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        log.error("xDS request writer failed", exc_info=error)
        call.cancel()  # the reader ends the stream


def _describe(error: Exception) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().value[0]}, {error.details()}"
    return str(error) or type(error).__name__
