"""The HTTP filter contract (Envoy's ``envoy/http/filter.h``).

A stream runs its decoder filters in configuration order on the request and
its encoder filters in reverse order on the response; the router is the last
decoder filter (it turns the request into an upstream request and feeds the
response into the encoder chain)::

    request  -> decoder 1 -> decoder 2 -> ... -> router -> upstream
    client   <- encoder 1 <- encoder 2 <- ... <- (router, or a local reply)

Each hook is a plain synchronous call that returns a status. A filter that
must wait (for an auth service, a timer) starts the work, returns a Stop
status, and later calls ``callbacks.continue_decoding()`` /
``continue_encoding()``. Any filter may answer the request itself with
``callbacks.send_local_reply(...)``, which stops the decoder chain and runs the
response through the encoder filters of the filters already visited.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from legatus.http.headers import HeaderMap
    from legatus.stream_info import StreamInfo


class FilterHeadersStatus(enum.Enum):
    CONTINUE = 0
    """Pass the headers to the next filter."""

    STOP_ITERATION = 1
    """Do not pass the headers on for now. Data that follows still reaches this
    filter (and stops here too unless the filter continues); the filter resumes
    the chain with continue_decoding()/continue_encoding()."""

    STOP_ALL_ITERATION_AND_BUFFER = 2
    """Stop, and buffer body and trailers in the stream (up to the buffer limit;
    past it the request gets 413 / the response 500) without calling this
    filter's data hooks; continuing sends headers, then the buffered body."""

    STOP_ALL_ITERATION_AND_WATERMARK = 3
    """Like STOP_ALL_ITERATION_AND_BUFFER, but past the buffer limit the stream
    applies back-pressure (stops reading) instead of failing."""

    CONTINUE_AND_DONT_END_STREAM = 4
    """Continue, but tell the following filters the stream is not ended even if
    it was (this filter will add a body or trailers)."""


class FilterDataStatus(enum.Enum):
    CONTINUE = 0
    """Pass this data on. If headers were stopped, continuing here also releases them."""

    STOP_ITERATION_AND_BUFFER = 1
    """Keep this data buffered in the stream (up to the limit: then 413/500) and
    call the filter again with the whole buffer as more arrives."""

    STOP_ITERATION_AND_WATERMARK = 2
    """As STOP_ITERATION_AND_BUFFER, with back-pressure past the limit instead of failing."""

    STOP_ITERATION_NO_BUFFER = 3
    """Drop nothing and keep nothing: the filter has taken the data (it will
    inject it itself, or discard it on purpose)."""


class FilterTrailersStatus(enum.Enum):
    CONTINUE = 0
    """Pass the trailers on."""

    STOP_ITERATION = 1
    """Hold the trailers until the filter continues."""


class LocalReply(Protocol):
    """What ``send_local_reply`` takes; see legatus.http.local_reply."""


class StreamDecoderFilterCallbacks(Protocol):
    """What a decoder filter can ask of its stream."""

    stream_info: StreamInfo
    route: Any  # the matched route (legatus.router), or None

    def continue_decoding(self) -> None:
        """Resume the decoder chain after the filter that stopped it."""

    def send_local_reply(
        self,
        status: int,
        body: bytes = b"",
        *,
        details: str,
        headers: dict[str, str] | None = None,
        flags: int = 0,
    ) -> None:
        """Answer the request from here; the response passes through the encoder
        filters of the filters before this one."""

    def decoding_buffer(self) -> bytearray | None:
        """The request body buffered so far by STOP_ITERATION_AND_BUFFER."""

    def add_decoded_data(self, data: bytes) -> None:
        """Add body to the request as it continues (from a trailers/end-of-stream hook)."""

    def inject_decoded_data_to_filter_chain(self, data: bytes, end_stream: bool) -> None:
        """Send data, and with ``end_stream`` the end of the request, to the filters after
        this one now (a data hook that returns STOP_ITERATION_NO_BUFFER replaces its bytes
        this way; the end it injects is not held for it)."""

    def add_decoded_trailers(self, trailers: HeaderMap) -> None:
        """End the request with ``trailers`` from a data hook at its end that took the data
        (STOP_ITERATION_NO_BUFFER; the data injected first without the end)."""

    def clear_route_cache(self) -> None:
        """Headers that routing looks at were changed: match the route again."""

    def encode_headers(self, headers: HeaderMap, end_stream: bool) -> None:
        """Send a response (the router does, with what the upstream answered)."""

    def encode_data(self, data: bytes, end_stream: bool) -> None: ...

    def encode_trailers(self, trailers: HeaderMap) -> None: ...


class StreamEncoderFilterCallbacks(Protocol):
    stream_info: StreamInfo
    route: Any

    def continue_encoding(self) -> None:
        """Resume the encoder chain after the filter that stopped it."""

    def encoding_buffer(self) -> bytearray | None: ...

    def add_encoded_data(self, data: bytes) -> None: ...

    def inject_encoded_data_to_filter_chain(self, data: bytes, end_stream: bool) -> None:
        """The response side of inject_decoded_data_to_filter_chain."""

    def add_encoded_trailers(self, trailers: HeaderMap) -> None:
        """The response side of add_decoded_trailers."""


class StreamDecoderFilter:
    """Base with safe defaults: every hook continues; ``on_destroy`` does nothing."""

    def set_decoder_filter_callbacks(self, callbacks: StreamDecoderFilterCallbacks) -> None:
        self.decoder_callbacks = callbacks

    def decode_headers(self, headers: HeaderMap, end_stream: bool) -> FilterHeadersStatus:
        return FilterHeadersStatus.CONTINUE

    def decode_data(self, data: bytes, end_stream: bool) -> FilterDataStatus:
        return FilterDataStatus.CONTINUE

    def decode_trailers(self, trailers: HeaderMap) -> FilterTrailersStatus:
        return FilterTrailersStatus.CONTINUE

    def on_destroy(self) -> None:
        """The stream is over (completed or reset): release timers and tasks."""


class StreamEncoderFilter:
    def set_encoder_filter_callbacks(self, callbacks: StreamEncoderFilterCallbacks) -> None:
        self.encoder_callbacks = callbacks

    def encode_headers(self, headers: HeaderMap, end_stream: bool) -> FilterHeadersStatus:
        return FilterHeadersStatus.CONTINUE

    def encode_data(self, data: bytes, end_stream: bool) -> FilterDataStatus:
        return FilterDataStatus.CONTINUE

    def encode_trailers(self, trailers: HeaderMap) -> FilterTrailersStatus:
        return FilterTrailersStatus.CONTINUE

    def on_destroy(self) -> None:
        """The stream is over."""


class StreamFilter(StreamDecoderFilter, StreamEncoderFilter):
    """A filter on both paths."""
