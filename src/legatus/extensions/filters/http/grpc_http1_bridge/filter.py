"""The gRPC HTTP/1.1 bridge: an HTTP/1.1 client that cannot read trailers calls a gRPC service
and still learns the call's status (Envoy's Http1BridgeFilter, checked against Envoy 1.40).

Bridging. A request that arrives over HTTP/1.x with a ``:path`` and a gRPC content type
(``application/grpc`` or ``application/grpc+...``) is bridged; HTTP/2 requests and anything
else pass untouched. A bridged response that ends with its headers (trailers-only, a local
reply) passes as it is. Any other is held, headers and body, until it ends: when trailers come,
their ``grpc-status`` goes into the headers (and the HTTP status becomes 503 unless it is a
plain unsigned ``0``), so does ``grpc-message``, and ``content-length`` becomes the size of the
body held; the HTTP/1 codec then drops the trailers (the response is no longer chunked). A
response that ends with a body instead goes on unchanged. The body is held in the stream, so
past the buffer limit the response is Envoy's 500 (``response_payload_too_large``).

``ignore_query_parameters``: a bridged request's ``:path`` loses its query (gRPC servers
answer "unknown method" to one).

``upgrade_protobuf_to_grpc``: a request (any protocol) with a ``:path`` and ``content-type:
application/x-protobuf`` becomes gRPC: ``content-type: application/grpc``, no
``content-length``, and the route is matched again. It was not gRPC when it arrived, so local
replies to it stay plain HTTP. When it is also bridged (HTTP/1.x), its whole body is held and
sent with a 5-byte frame header (flags 0, the length) in front; past the buffer limit the
client's connection stops being read, as in Envoy (the request then waits for a timeout). On
the response, the first piece of body that does not end the response loses its first 5 bytes
(the frame header), the rest goes on as above. Only that one frame header is removed: the
upgrade is meant for unary calls. Such a response is held by this filter; past the buffer
limit it asks for Envoy's 500, which the stream sends straight to the client (the headers it
holds never reached the client).
"""

from __future__ import annotations

from dataclasses import dataclass

from legatus.grpc.common import FRAME_HEADER_SIZE, has_grpc_content_type
from legatus.http.filter import (
    FilterDataStatus,
    FilterHeadersStatus,
    FilterTrailersStatus,
    StreamFilter,
)
from legatus.http.local_reply import latch_grpc_request

PROTOBUF = "application/x-protobuf"
_BRIDGED_PROTOCOLS = frozenset(("HTTP/1.1", "HTTP/1.0"))  # Envoy: protocol < HTTP/2
_INTERNAL_SERVER_ERROR = b"Internal Server Error"

_CONTINUE = FilterHeadersStatus.CONTINUE
_DATA_CONTINUE = FilterDataStatus.CONTINUE
_TAKEN = FilterDataStatus.STOP_ITERATION_NO_BUFFER
_BUFFER = FilterDataStatus.STOP_ITERATION_AND_BUFFER


@dataclass(frozen=True, slots=True, kw_only=True)
class Http1BridgeConfig:
    upgrade_protobuf_to_grpc: bool = False
    ignore_query_parameters: bool = False


def is_ok_status(value: str) -> bool:
    """Whether a ``grpc-status`` value reads as 0 the way Envoy reads it (absl::SimpleAtoi into
    an unsigned 64-bit number: surrounding whitespace and a ``+`` allowed, no ``-``)."""
    text = value.strip(" \t\n\v\f\r")
    if text[:1] == "+":
        text = text[1:]
    return bool(text) and text.isascii() and text.isdigit() and int(text) == 0


def bridge_trailers(headers, trailers, body_length: int) -> None:
    """Envoy's encodeTrailers for a bridged response: the call's status into the held
    ``headers``, which then describe a body of ``body_length`` bytes."""
    status = trailers.get("grpc-status")
    if status is not None:
        if not is_ok_status(status):
            headers.set(":status", "503")
        headers.set("grpc-status", status)
    message = trailers.get("grpc-message")
    if message is not None:
        headers.set("grpc-message", message)
    headers.set("content-length", str(body_length))


def frame_header(length: int) -> bytes:
    """An uncompressed gRPC frame's header for a message of ``length`` bytes."""
    return b"\x00" + length.to_bytes(4, "big")


class Http1BridgeFilter(StreamFilter):
    """Per stream. The plain bridged response is held by the stream (STOP_ITERATION_AND_BUFFER,
    so the stream's limit applies). An upgraded request's body and response body are held here
    instead, since their bytes change (a frame header added, one removed) and the stream only
    releases what it was given."""

    __slots__ = ("body_length", "bridging", "config", "decoder_callbacks", "encoder_callbacks",
                 "paused", "request_body", "response_body", "response_headers",
                 "strip_frame")  # fmt: skip

    def __init__(self, config: Http1BridgeConfig) -> None:
        self.config = config
        self.bridging = False
        self.strip_frame = False  # an upgraded call: the response's frame header is still due
        self.request_body: bytearray | None = None  # an upgraded request's body, while held
        self.paused = False  # ... past the buffer limit: the client is not read
        self.response_headers = None  # held until the response ends
        self.response_body: bytearray | None = None  # an upgraded call's response body, held
        self.body_length = 0  # of the response body held by the stream

    # Request ------------------------------------------------------------------------------

    def decode_headers(self, headers, end_stream: bool) -> FilterHeadersStatus:
        callbacks = self.decoder_callbacks
        config = self.config
        upgraded = False
        if (
            config.upgrade_protobuf_to_grpc
            and headers.get("content-type") == PROTOBUF
            and ":path" in headers
        ):
            latch_grpc_request(callbacks.stream_info, headers)
            headers.set("content-type", "application/grpc")
            headers.remove("content-length")  # the frame header changes it
            callbacks.clear_route_cache()
            upgraded = True
        if ":path" not in headers or not has_grpc_content_type(headers):
            return _CONTINUE
        if callbacks.stream_info.protocol not in _BRIDGED_PROTOCOLS:
            return _CONTINUE
        self.bridging = True
        if upgraded:
            self.strip_frame = True
            if not end_stream:
                self.request_body = bytearray()
        if config.ignore_query_parameters:
            path = headers.get(":path")
            query = path.find("?")
            if query >= 0:
                headers.set(":path", path[:query])
        return _CONTINUE

    def decode_data(self, data: bytes, end_stream: bool) -> FilterDataStatus:
        body = self.request_body
        if body is None:
            return _DATA_CONTINUE
        body += data
        callbacks = self.decoder_callbacks
        if not end_stream:
            if not self.paused and len(body) > callbacks.stream.connection.buffer_limit:
                self.paused = True  # Envoy's watermark: never released before the end
                callbacks.on_decoder_filter_above_write_buffer_high_watermark()
            return _TAKEN
        self.request_body = None
        if self.paused:
            self.paused = False
            callbacks.on_decoder_filter_below_write_buffer_low_watermark()
        callbacks.inject_decoded_data_to_filter_chain(frame_header(len(body)) + body, True)
        return _TAKEN

    def decode_trailers(self, trailers) -> FilterTrailersStatus:
        body = self.request_body
        if body is not None:
            # The body never ended with data: it goes on without a frame header, as in Envoy.
            self.request_body = None
            if self.paused:
                self.paused = False
                self.decoder_callbacks.on_decoder_filter_below_write_buffer_low_watermark()
            if body:
                self.decoder_callbacks.inject_decoded_data_to_filter_chain(bytes(body), False)
        return FilterTrailersStatus.CONTINUE

    # Response -----------------------------------------------------------------------------

    def encode_headers(self, headers, end_stream: bool) -> FilterHeadersStatus:
        if not self.bridging or end_stream:
            return _CONTINUE
        self.response_headers = headers
        return FilterHeadersStatus.STOP_ITERATION

    def encode_data(self, data: bytes, end_stream: bool) -> FilterDataStatus:
        if not self.bridging:
            return _DATA_CONTINUE
        body = self.response_body
        if body is None:
            if end_stream:
                return _DATA_CONTINUE  # releases the headers and what the stream holds
            if not self.strip_frame:
                self.body_length += len(data)
                return _BUFFER
            self.strip_frame = False
            body = self.response_body = bytearray(data[FRAME_HEADER_SIZE:])
        elif end_stream:
            self._release(body)
            return _DATA_CONTINUE
        else:
            body += data
        if len(body) > self.encoder_callbacks.stream.connection.buffer_limit:
            self._too_large()
        return _TAKEN

    def encode_trailers(self, trailers) -> FilterTrailersStatus:
        if not self.bridging:
            return FilterTrailersStatus.CONTINUE
        headers = self.response_headers
        body = self.response_body
        if body is None:
            bridge_trailers(headers, trailers, self.body_length)
            return FilterTrailersStatus.CONTINUE  # the headers, the body, then the trailers
        bridge_trailers(headers, trailers, len(body))
        self._release(body)
        return FilterTrailersStatus.CONTINUE

    def _release(self, body: bytearray) -> None:
        """The held headers, then the body held here, go on."""
        self.response_body = None
        callbacks = self.encoder_callbacks
        callbacks.continue_encoding()
        if body:
            callbacks.inject_encoded_data_to_filter_chain(bytes(body), False)

    def _too_large(self) -> None:
        """Past the buffer limit: Envoy's 500 ``response_payload_too_large``, sent past the
        encoder filters (the headers held here never reached the client)."""
        self.response_body = None
        self.bridging = False
        self.decoder_callbacks.send_local_reply(
            500, _INTERNAL_SERVER_ERROR, details="response_payload_too_large"
        )

    def on_destroy(self) -> None:
        self.response_headers = self.response_body = self.request_body = None
