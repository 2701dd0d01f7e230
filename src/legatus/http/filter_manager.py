"""Running one stream's HTTP filter chains (Envoy's FilterManager).

Theory of operation. Each direction (decoding the request, encoding the
response) is a chain of ``_Active`` filter slots. An event (headers, a piece of
body, trailers) enters the chain at a slot and walks forward. A slot that is
*blocked* keeps the events that reach it in its own queue, in order:

- a filter that stopped the headers (STOP_ITERATION) still sees later body
  pieces through its data hook; if one returns CONTINUE, the slot unblocks;
- a filter that stopped with STOP_ALL_ITERATION_AND_* sees nothing more until
  it calls continue_*(): body and trailers queue in its slot untouched;
- a filter that buffered body (STOP_ITERATION_AND_BUFFER/WATERMARK) queues it.

``continue_decoding()``/``continue_encoding()`` unblocks the slot and releases
its queue to the next slot, where the same rules apply. Bytes queued in a
direction are counted against the stream's buffer limit: past it a buffering
request gets 413 and a buffering response 500 (Envoy's answers), while the
watermark statuses ask the owner to stop reading instead (``on_watermark``).

The terminal decoder filter (the router) has no slot: events that leave the
decoder chain go to it, and the manager itself is its callbacks. Nothing
follows it, so what it answers does not matter; it costs no slot per stream.

Sans-I/O: the owner (the connection manager's active stream) feeds the
decoder side and receives the encoder side's output through ``StreamSink``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from legatus.http.filter import (
    FilterDataStatus,
    FilterHeadersStatus,
    FilterTrailersStatus,
    StreamDecoderFilter,
    StreamEncoderFilter,
)
from legatus.http.headers import HeaderMap
from legatus.stream_info import StreamInfo


class StreamSink(Protocol):
    """Where the encoder chain's output goes (the codec), and stream-level actions."""

    def write_headers(self, headers: HeaderMap, end_stream: bool) -> None: ...

    def write_data(self, data: bytes, end_stream: bool) -> None: ...

    def write_trailers(self, trailers: HeaderMap) -> None: ...

    def on_watermark(self, *, decoding: bool, above: bool) -> None:
        """Too much (or again little enough) is buffered: stop (or resume) reading."""

    def build_local_reply(
        self,
        status: int,
        body: bytes,
        details: str,
        headers: dict[str, str] | None,
        modify_headers: Callable[[HeaderMap], None] | None = None,
    ) -> tuple[HeaderMap, bytes]:
        """Envoy's local-reply headers and body for this stream (local_reply_config);
        ``modify_headers`` runs on the headers before the local_reply_config rewrite."""

    def add_watermark_callbacks(self, callbacks: Any) -> None:
        """Subscribe to the downstream write buffer's watermarks (the router pauses the
        upstream read while the client is slow)."""

    def remove_watermark_callbacks(self, callbacks: Any) -> None: ...

    def reset_stream(self) -> None:
        """Abandon the stream after its response started (HTTP/1: close the connection)."""

    def touch(self) -> None:
        """Activity on the stream (restarts stream_idle_timeout)."""

    def on_request_data_too_large(self) -> None:
        """A buffering filter went past the buffer limit; the 413 follows (optional: a sink
        without it is skipped)."""


class _Kind(enum.Enum):
    HEADERS = 0
    DATA = 1
    TRAILERS = 2


class _Block(enum.Enum):
    NONE = 0
    HEADERS = 1  # headers stopped; data still goes through the filter's data hook
    ALL = 2  # stop-all: nothing reaches the filter until it continues
    DATA = 3  # body buffered by the filter; later data still goes through its hook


_NONE = _Block.NONE
_HEADERS = _Kind.HEADERS
_DATA = _Kind.DATA
_HEADERS_CONTINUE = FilterHeadersStatus.CONTINUE
_DATA_CONTINUE = FilterDataStatus.CONTINUE

_HEADERS_STOP = {
    FilterHeadersStatus.STOP_ITERATION: _Block.HEADERS,
    FilterHeadersStatus.STOP_ALL_ITERATION_AND_BUFFER: _Block.ALL,
    FilterHeadersStatus.STOP_ALL_ITERATION_AND_WATERMARK: _Block.ALL,
}


class _Active:
    """One filter's slot in one direction; also the callbacks that filter gets for that
    direction (``_DecoderSlot`` / ``_EncoderSlot``): one object per filter and direction.

    Made by ``_make_chain``, which sets every attribute (there is no ``__init__``)."""

    __slots__ = ("block", "chain", "filter", "index", "injected_end", "manager", "queue",
                 "route", "stream", "stream_info", "watermark")  # fmt: skip

    def continue_iteration(self) -> None:
        self.chain.resume(self)


class _Chain:
    """One direction's filters and the events held in them (made by ``_make_chain``)."""

    __slots__ = ("above_watermark", "decoding", "manager", "queued_bytes", "slots")

    # Walking -------------------------------------------------------------------

    def walk(self, start: int, kind: _Kind, payload: Any, end_stream: bool) -> None:
        """Run the event through the slots from ``start`` on, and out of the chain's end.

        The unblocked slot that lets headers or body through (the common case) is handled
        here, without a call per slot; every other case goes through ``call``."""
        slots = self.slots
        manager = self.manager
        if manager is None:
            return  # destroyed: a late continue or injection goes nowhere
        decoding = self.decoding
        for i in range(start, len(slots)):
            if decoding and manager.done:
                return  # a local reply ended the request side
            slot = slots[i]
            block = slot.block
            if block is _NONE:
                if kind is _HEADERS:
                    f = slot.filter
                    if decoding:
                        status = f.decode_headers(payload, end_stream)
                    else:
                        status = f.encode_headers(payload, end_stream)
                    if status is _HEADERS_CONTINUE:
                        continue
                    self.headers_stopped(slot, status, payload, end_stream)
                    return
                if kind is _DATA:
                    f = slot.filter
                    if decoding:
                        status = f.decode_data(payload, end_stream)
                    else:
                        status = f.encode_data(payload, end_stream)
                    if status is _DATA_CONTINUE:
                        continue
                    self.data_stopped(slot, status, payload, end_stream)
                    return
            elif block is _Block.ALL or kind is _HEADERS:
                self.hold(slot, kind, payload, end_stream)
                return
            # Stopped only for headers/body: body and trailers still go through the
            # filter's hooks, which may continue the chain.
            if not self.call(slot, kind, payload, end_stream):
                return
        manager.chain_end(self, kind, payload, end_stream)

    def call(self, slot: _Active, kind: _Kind, payload: Any, end_stream: bool) -> bool:
        """Run one hook; True if the event goes on to the next slot."""
        f = slot.filter
        d = self.decoding
        if kind is _HEADERS:
            status = (f.decode_headers if d else f.encode_headers)(payload, end_stream)
            if status is _HEADERS_CONTINUE:
                return True
            self.headers_stopped(slot, status, payload, end_stream)
            return False
        if kind is _DATA:
            status = (f.decode_data if d else f.encode_data)(payload, end_stream)
            if status is _DATA_CONTINUE:
                if slot.block is not _NONE:  # continuing data releases held headers
                    self.hold(slot, kind, payload, end_stream)
                    self.resume(slot)
                    return False
                return True
            self.data_stopped(slot, status, payload, end_stream)
            return False
        status = (f.decode_trailers if d else f.encode_trailers)(payload)
        if status is FilterTrailersStatus.CONTINUE:
            if slot.block is not _NONE:  # the end of the stream releases what it held
                self.hold(slot, kind, payload, True)
                self.resume(slot)
                return False
            return True
        slot.block = _Block.ALL
        slot.queue.append((kind, payload, True))
        return False

    def headers_stopped(self, slot: _Active, status, payload: Any, end_stream: bool) -> None:
        """A headers hook answered something other than CONTINUE."""
        if status is FilterHeadersStatus.CONTINUE_AND_DONT_END_STREAM:
            self.walk(slot.index + 1, _HEADERS, payload, False)
            return
        # (identity tests: an Enum's hash runs Python code, dict and set lookups pay it)
        if status is FilterHeadersStatus.STOP_ITERATION:
            slot.block = _Block.HEADERS
        else:
            slot.block = _HEADERS_STOP[status]
            slot.watermark = status is FilterHeadersStatus.STOP_ALL_ITERATION_AND_WATERMARK
        slot.queue.append((_HEADERS, payload, end_stream))

    def data_stopped(self, slot: _Active, status, payload: Any, end_stream: bool) -> None:
        """A data hook answered something other than CONTINUE."""
        if status is FilterDataStatus.STOP_ITERATION_NO_BUFFER:
            if end_stream and not slot.injected_end:
                # The filter took the bytes; the end of stream waits for it.
                if slot.block is _NONE:
                    slot.block = _Block.DATA
                slot.queue.append((_DATA, b"", True))
            return
        if slot.block is _NONE:
            slot.block = _Block.DATA
        slot.watermark = status is FilterDataStatus.STOP_ITERATION_AND_WATERMARK
        self.hold(slot, _DATA, payload, end_stream)

    def hold(self, slot: _Active, kind: _Kind, payload: Any, end_stream: bool) -> None:
        slot.queue.append((kind, payload, end_stream))
        if kind is _Kind.DATA and payload and self.manager is not None:
            self.queued_bytes += len(payload)
            self.manager.check_limit(self, slot)

    def resume(self, slot: _Active) -> None:
        """The filter in ``slot`` continues: release what it holds, in order."""
        if slot.block is _Block.NONE and not slot.queue:
            return
        slot.block = _Block.NONE
        queue = slot.queue
        start = slot.index + 1
        while queue and slot.block is _Block.NONE:
            kind, payload, end_stream = queue.pop(0)
            if kind is _Kind.DATA and payload:
                self.queued_bytes -= len(payload)
            self.walk(start, kind, payload, end_stream)
        if self.manager is not None:
            self.manager.check_limit(self, slot)

    def buffered(self, slot: _Active) -> bytearray:
        out = bytearray()
        for kind, payload, _ in slot.queue:
            if kind is _Kind.DATA:
                out += payload
        return out


_new = object.__new__


def _make_chain(manager: FilterManager | None, filters: Sequence[Any], decoding: bool) -> _Chain:
    """A chain and its slots, each filter given its callbacks (its slot) as the slot is made.

    Built here attribute by attribute rather than by constructors: in CPython 3.11 a class
    whose ``__init__`` is Python code costs about as much to call as the dozen stores that
    ``__init__`` would hold, and this runs for every filter of every stream."""
    chain = _new(_Chain)
    chain.manager, chain.decoding = manager, decoding
    chain.queued_bytes, chain.above_watermark = 0, False
    slots = chain.slots = []
    if manager is None:
        return chain
    info, sink, route = manager.stream_info, manager.sink, manager._route
    cls = _DecoderSlot if decoding else _EncoderSlot
    for index, f in enumerate(filters):
        slot = _new(cls)
        slot.chain, slot.manager, slot.index, slot.filter = chain, manager, index, f
        # Read often by filters: plain attributes (the manager keeps ``route`` in step).
        # ``stream`` is the stream's owner (the connection manager's ActiveStream): its
        # connection, request headers and whether the request is internal.
        slot.stream_info, slot.stream, slot.route = info, sink, route
        # Not blocked, no watermark, and the filter has not injected the end of stream.
        slot.block, slot.watermark, slot.injected_end = _NONE, False, False
        slot.queue = []  # short: a list beats a deque here
        slots.append(slot)
        if decoding:
            f.set_decoder_filter_callbacks(slot)
        else:
            f.set_encoder_filter_callbacks(slot)
    return chain


# The encoder side of a stream without encoder filters (shared: it holds nothing).
_NO_ENCODER = _make_chain(None, (), False)


class _TerminalCallbacks:
    """The callbacks of the terminal decoder filter (the router), given by the manager
    itself: the router has no slot of its own, as nothing follows it in the chain."""

    __slots__ = ()

    def continue_decoding(self) -> None:
        """Nothing follows a terminal filter."""

    def decoding_buffer(self) -> bytearray | None:
        return None

    def add_decoded_data(self, data: bytes) -> None:
        """Nothing follows a terminal filter to take the data."""

    def clear_route_cache(self) -> None:
        if self.route_resolver is not None:
            self.route = self.route_resolver()

    def add_downstream_watermark_callbacks(self, callbacks: Any) -> None:
        self.sink.add_watermark_callbacks(callbacks)

    def remove_downstream_watermark_callbacks(self, callbacks: Any) -> None:
        self.sink.remove_watermark_callbacks(callbacks)

    def on_decoder_filter_above_write_buffer_high_watermark(self) -> None:
        self.sink.on_watermark(decoding=True, above=True)

    def on_decoder_filter_below_write_buffer_low_watermark(self) -> None:
        self.sink.on_watermark(decoding=True, above=False)

    def reset_stream(self) -> None:
        self.sink.reset_stream()

    def touch(self) -> None:
        self.sink.touch()


class FilterManager(_TerminalCallbacks):
    """The decoder and encoder chains of one stream.

    The terminal decoder filter (the router), when given apart as ``terminal``, has no slot:
    it is called at the decoder chain's end and this manager is its callbacks. Nothing
    follows it, so its statuses do not matter (as in ``TerminalFilterManager``): it gets every
    request event that leaves the chain until the stream is answered."""

    _route: Any = None
    route_resolver: Callable[[], Any] | None = None
    terminal: Any = None
    done = False  # a response is complete (or the request was answered locally)
    response_started = False  # response headers entered the encoder chain
    encoding_aborted = False  # a direct local reply replaced what the encoder filters hold

    def __init__(
        self,
        decoder_filters: Sequence[StreamDecoderFilter],
        encoder_filters: Sequence[StreamEncoderFilter],
        sink: StreamSink,
        stream_info: StreamInfo,
        buffer_limit: int,
        route: Any = None,
        route_resolver: Callable[[], Any] | None = None,
        terminal: StreamDecoderFilter | None = None,
    ) -> None:
        """Built for every stream that has more than the router: the arguments may be given
        by position (one short call on the hot path). Each filter gets its callbacks as its
        slot is made: decoder filters first, then ``terminal``, then encoder filters."""
        self.sink = self.stream = sink
        self.stream_info = stream_info
        self.buffer_limit = buffer_limit
        self._route = route  # (before the slots, which copy it)
        self.route_resolver = route_resolver
        self.decoder = _make_chain(self, decoder_filters, True)
        if terminal is not None:
            self.terminal = terminal
            terminal.set_decoder_filter_callbacks(self)  # type: ignore[arg-type]
        # Encoder filters run in reverse configuration order.
        self.encoder = (
            _make_chain(self, encoder_filters[::-1], False) if encoder_filters else _NO_ENCODER
        )

    @property
    def route(self) -> Any:
        return self._route

    @route.setter
    def route(self, route: Any) -> None:
        """The stream's route; every filter's callbacks see it as a plain attribute."""
        self._route = route
        for slot in self.decoder.slots:
            slot.route = route
        for slot in self.encoder.slots:
            slot.route = route

    # From the codec ------------------------------------------------------------

    def decode_headers(self, headers: HeaderMap, end_stream: bool) -> None:
        """``_Chain.walk`` for the first event, where every slot is open: the same steps
        without its tests for the other cases (a slot found blocked, or the stream answered,
        hands over to ``walk``, which handles them). Nothing follows the decoder chain."""
        decoder = self.decoder
        for slot in decoder.slots:
            if self.done or slot.block is not _NONE:
                decoder.walk(slot.index, _HEADERS, headers, end_stream)
                return
            status = slot.filter.decode_headers(headers, end_stream)
            if status is not _HEADERS_CONTINUE:
                decoder.headers_stopped(slot, status, headers, end_stream)
                return
        terminal = self.terminal
        if terminal is not None and not self.done:
            terminal.decode_headers(headers, end_stream)

    def decode_data(self, data: bytes, end_stream: bool) -> None:
        self.decoder.walk(0, _DATA, data, end_stream)

    def decode_trailers(self, trailers: HeaderMap) -> None:
        self.decoder.walk(0, _Kind.TRAILERS, trailers, True)

    # From the router or a local reply ------------------------------------------

    def encode_headers(self, headers: HeaderMap, end_stream: bool) -> None:
        self.response_started = True
        encoder = self.encoder
        if encoder.slots:
            encoder.walk(0, _HEADERS, headers, end_stream)
            return
        # No encoder filter: straight to the codec.
        if end_stream:
            self.done = True
        self.sink.write_headers(headers, end_stream)

    def encode_data(self, data: bytes, end_stream: bool) -> None:
        encoder = self.encoder
        if encoder.slots:
            encoder.walk(0, _DATA, data, end_stream)
            return
        if end_stream:
            self.done = True
        self.sink.write_data(data, end_stream)

    def encode_trailers(self, trailers: HeaderMap) -> None:
        if self.encoder.slots:
            self.encoder.walk(0, _Kind.TRAILERS, trailers, True)
            return
        self.done = True
        self.sink.write_trailers(trailers)

    def send_local_reply(
        self,
        status: int,
        body: bytes = b"",
        *,
        details: str,
        headers: dict[str, str] | None = None,
        flags: int = 0,
        modify_headers: Callable[[HeaderMap], None] | None = None,
    ) -> None:
        info = self.stream_info
        info.response_code_details = details
        if flags:
            info.set_flags(flags)
        sink = self.sink
        if self.response_started:
            if getattr(sink, "response_started", True):
                sink.reset_stream()  # the client has the headers: too late to answer
                return
            # Envoy's sendDirectLocalReply: the response's headers reached an encoder filter
            # (which holds them) but not the client. The reply goes straight to the codec,
            # past the encoder filters, which are mid-response; what they release later is
            # dropped.
            self.done = self.encoding_aborted = True
            reply_headers, reply_body = sink.build_local_reply(
                status, body, details, headers, modify_headers
            )
            sink.write_headers(reply_headers, not reply_body)
            if reply_body:
                sink.write_data(reply_body, True)
            return
        self.done = True
        reply_headers, reply_body = sink.build_local_reply(
            status, body, details, headers, modify_headers
        )
        self.encode_headers(reply_headers, not reply_body)
        if reply_body:
            self.encode_data(reply_body, True)

    # Chain ends and limits -----------------------------------------------------

    def chain_end(self, chain: _Chain, kind: _Kind, payload: Any, end_stream: bool) -> None:
        if chain.decoding:
            terminal = self.terminal
            if terminal is None or self.done:
                return  # (a terminal filter given among the decoder filters has taken it)
            if kind is _HEADERS:
                terminal.decode_headers(payload, end_stream)
            elif kind is _DATA:
                terminal.decode_data(payload, end_stream)
            else:
                terminal.decode_trailers(payload)
            return
        if self.encoding_aborted:
            return  # a direct local reply went out instead (send_local_reply)
        sink = self.sink
        if kind is _Kind.HEADERS:
            sink.write_headers(payload, end_stream)
        elif kind is _Kind.DATA:
            sink.write_data(payload, end_stream)
        else:
            sink.write_trailers(payload)
        if end_stream or kind is _Kind.TRAILERS:
            self.done = True

    def check_limit(self, chain: _Chain, slot: _Active) -> None:
        over = chain.queued_bytes > self.buffer_limit
        if slot.watermark:
            if over != chain.above_watermark:
                chain.above_watermark = over
                self.sink.on_watermark(decoding=chain.decoding, above=over)
            return
        if not over:
            return
        if chain.decoding:
            on_too_large = getattr(self.sink, "on_request_data_too_large", None)
            if on_too_large is not None:
                on_too_large()  # downstream_rq_too_large
            self.send_local_reply(413, b"Payload Too Large", details="request_payload_too_large")
        else:
            slot.queue.clear()
            chain.queued_bytes = 0
            # Headers are held in the chain: the 500 goes straight to the codec (Envoy's
            # responseDataTooLarge, through sendLocalReply's direct reply).
            self.send_local_reply(
                500, b"Internal Server Error", details="response_payload_too_large"
            )

    def on_destroy(self) -> None:
        decoder, encoder = self.decoder, self.encoder
        decoders, encoders = decoder.slots, encoder.slots
        # Filters, their slots (their callbacks), the chains and this manager point at each
        # other: drop the chains' slots and their way back here, and each slot's filter as
        # it is told (breaking the cycles, so that the stream is freed by reference
        # counting, not by the cyclic collector). Once the chains are cut, a late call from
        # a filter goes nowhere, whatever slot it comes from.
        decoder.slots = []
        decoder.manager = None
        self.route_resolver = None
        if encoders:  # a StreamFilter has a slot on each side: told once
            encoder.slots = []
            encoder.manager = None
            told = [slot.filter for slot in decoders]
        for slot in decoders:
            f = slot.filter
            slot.filter = None
            f.on_destroy()
        terminal = self.terminal
        if terminal is not None:
            self.terminal = None
            terminal.on_destroy()
        for slot in encoders:
            f = slot.filter
            slot.filter = None
            if f not in told:
                f.on_destroy()


class _DecoderSlot(_Active):
    """A decoder filter's slot, and its StreamDecoderFilterCallbacks."""

    __slots__ = ()

    def continue_decoding(self) -> None:
        self.chain.resume(self)

    def send_local_reply(
        self,
        status: int,
        body: bytes = b"",
        *,
        details: str,
        headers: dict[str, str] | None = None,
        flags: int = 0,
        modify_headers: Callable[[HeaderMap], None] | None = None,
    ) -> None:
        self.manager.send_local_reply(
            status, body, details=details, headers=headers, flags=flags,
            modify_headers=modify_headers,
        )  # fmt: skip

    def add_downstream_watermark_callbacks(self, callbacks: Any) -> None:
        self.manager.sink.add_watermark_callbacks(callbacks)

    def remove_downstream_watermark_callbacks(self, callbacks: Any) -> None:
        self.manager.sink.remove_watermark_callbacks(callbacks)

    def on_decoder_filter_above_write_buffer_high_watermark(self) -> None:
        """The filter's own sink (the upstream) is backed up: stop reading the client."""
        self.manager.sink.on_watermark(decoding=True, above=True)

    def on_decoder_filter_below_write_buffer_low_watermark(self) -> None:
        self.manager.sink.on_watermark(decoding=True, above=False)

    def reset_stream(self) -> None:
        self.manager.sink.reset_stream()

    def touch(self) -> None:
        self.manager.sink.touch()

    def decoding_buffer(self) -> bytearray | None:
        return self.manager.decoder.buffered(self) if self.queue else None

    def set_decoder_buffer_limit(self, limit: int) -> None:
        """Envoy's setDecoderBufferLimit: the stream's buffer limit becomes ``limit`` (the
        buffer filter's max_request_bytes)."""
        self.manager.buffer_limit = limit

    def add_decoded_data(self, data: bytes) -> None:
        self.manager.decoder.walk(self.index + 1, _Kind.DATA, data, False)

    def inject_decoded_data_to_filter_chain(self, data: bytes, end_stream: bool) -> None:
        """Envoy's injectDecodedDataToFilterChain: data (and possibly the end of the stream)
        from this filter straight to the next ones, e.g. from a data hook that returned
        STOP_ITERATION_NO_BUFFER."""
        if end_stream:
            self.injected_end = True
        self.manager.decoder.walk(self.index + 1, _Kind.DATA, data, end_stream)

    def add_decoded_trailers(self, trailers: HeaderMap) -> None:
        """Envoy's addDecodedTrailers: from a data hook at the end of the stream that took
        its data (STOP_ITERATION_NO_BUFFER, the data injected without the end), end the
        request with ``trailers`` instead."""
        self.injected_end = True
        self.manager.decoder.walk(self.index + 1, _Kind.TRAILERS, trailers, True)

    def clear_route_cache(self) -> None:
        if self.manager.route_resolver is not None:
            self.manager.route = self.manager.route_resolver()

    def encode_headers(self, headers: HeaderMap, end_stream: bool) -> None:
        self.manager.encode_headers(headers, end_stream)

    def encode_data(self, data: bytes, end_stream: bool) -> None:
        self.manager.encode_data(data, end_stream)

    def encode_trailers(self, trailers: HeaderMap) -> None:
        self.manager.encode_trailers(trailers)


class _EncoderSlot(_Active):
    """An encoder filter's slot, and its StreamEncoderFilterCallbacks."""

    __slots__ = ()

    def continue_encoding(self) -> None:
        self.chain.resume(self)

    def encoding_buffer(self) -> bytearray | None:
        return self.manager.encoder.buffered(self) if self.queue else None

    def add_encoded_data(self, data: bytes) -> None:
        self.manager.encoder.walk(self.index + 1, _Kind.DATA, data, False)

    def inject_encoded_data_to_filter_chain(self, data: bytes, end_stream: bool) -> None:
        """Envoy's injectEncodedDataToFilterChain (see the decoding side)."""
        if end_stream:
            self.injected_end = True
        self.manager.encoder.walk(self.index + 1, _Kind.DATA, data, end_stream)

    def add_encoded_trailers(self, trailers: HeaderMap) -> None:
        """Envoy's addEncodedTrailers (see the decoding side)."""
        self.injected_end = True
        self.manager.encoder.walk(self.index + 1, _Kind.TRAILERS, trailers, True)


class TerminalFilterManager(_TerminalCallbacks):
    """The chain of the common case: one terminal decoder filter (the router) and no
    encoder filter. Same contract as ``FilterManager`` from both sides (the owner drives it
    the same way; the filter gets the same callbacks), without walking chains: the filter is
    called directly and its output goes straight to the sink. The filter's statuses do not
    matter, as nothing comes after it; after a local reply, request events are dropped."""

    __slots__ = ("done", "filter", "response_started", "route", "route_resolver", "sink",
                 "stream", "stream_info")  # fmt: skip

    def __init__(
        self,
        f: StreamDecoderFilter,
        *,
        sink: StreamSink,
        stream_info: StreamInfo,
        route: Any = None,
        route_resolver: Callable[[], Any] | None = None,
    ):
        self.sink = self.stream = sink
        self.stream_info = stream_info
        self.route = route
        self.route_resolver = route_resolver
        self.done = self.response_started = False
        self.filter = f
        f.set_decoder_filter_callbacks(self)  # type: ignore[arg-type]

    # From the owner -------------------------------------------------------------

    def decode_headers(self, headers: HeaderMap, end_stream: bool) -> None:
        self.filter.decode_headers(headers, end_stream)

    def decode_data(self, data: bytes, end_stream: bool) -> None:
        if not self.done:
            self.filter.decode_data(data, end_stream)

    def decode_trailers(self, trailers: HeaderMap) -> None:
        if not self.done:
            self.filter.decode_trailers(trailers)

    def on_destroy(self) -> None:
        # Filter <-> manager is a reference cycle: broken here so the stream is freed at once
        # by reference counting, not later by the cyclic GC.
        f = self.filter
        self.filter = None  # type: ignore[assignment]
        self.route_resolver = None
        if f is not None:
            f.on_destroy()

    # The filter's callbacks -----------------------------------------------------------

    def encode_headers(self, headers: HeaderMap, end_stream: bool) -> None:
        self.response_started = True
        if end_stream:
            self.done = True
        self.sink.write_headers(headers, end_stream)

    def encode_data(self, data: bytes, end_stream: bool) -> None:
        if end_stream:
            self.done = True
        self.sink.write_data(data, end_stream)

    def encode_trailers(self, trailers: HeaderMap) -> None:
        self.done = True
        self.sink.write_trailers(trailers)

    send_local_reply = FilterManager.send_local_reply
