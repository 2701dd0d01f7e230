"""The gRPC-Web filter: gRPC-Web requests in, gRPC to the upstream, gRPC-Web back (Envoy's
GrpcWebFilter, checked against Envoy 1.40).

Requests. A request with a ``:path`` and ``content-type`` exactly ``application/grpc-web``,
``application/grpc-web+proto``, ``application/grpc-web-text`` or
``application/grpc-web-text+proto`` (others, such as ``+json``, pass untouched) leaves as
gRPC: ``content-type: application/grpc``, ``te: trailers``, ``grpc-accept-encoding: identity``
unless the client sent one, and no ``content-length`` (the body may change size). A ``-text``
body is base64, decoded in 4-character groups as it streams; a body whose length is not a
multiple of 4, or that does not decode (strictly: no inner padding, no stray bits), is answered
400 ``Bad gRPC-web request, invalid base64 data.`` (details ``grpc_base_64_decode_failed_bad_size``
or ``grpc_base_64_decode_failed``). The request is recorded as not gRPC before its content type
changes (local_reply.latch_grpc_request), so local replies to it are plain HTTP ones, which the
response side below then translates, as in Envoy.

Responses. ``content-type`` becomes ``application/grpc-web+proto`` (``-text+proto`` when the
client's ``accept`` is a ``-text`` type), ``content-length`` goes. The trailers become the last
body frame: flags ``0x80``, the length, then ``name:value\\r\\n`` per trailer; the response
then ends with no trailers. A trailers-only response keeps its ``grpc-status`` in the headers.
A response that is not gRPC (not a 200 with a gRPC or gRPC-Web proto content type, and not
trailers-only) is answered with its body moved into ``grpc-message`` (percent-encoded; a body
that arrives in several pieces is cut at 16 KiB), ``grpc-status`` from its HTTP status
(httpToGrpcStatus) and ``content-length: 0``. For a ``-text`` client each message frame and the
trailers frame are base64-encoded one by one.

Stats: ``cluster.<cluster>.grpc-web.<service>.<method>.(success|failure|total|<grpc-status>)``
from a ``grpc-status`` in the response headers or trailers (grpc/context.py).
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from typing import Any

from legatus.grpc.common import (
    FLAG_WEB_TRAILERS,
    FrameDecoder,
    http_to_grpc_status,
    is_grpc_response_headers,
    resolve_service_and_method,
)
from legatus.grpc.context import GRPC_WEB, GrpcStatsContext, MethodStats
from legatus.http.filter import (
    FilterDataStatus,
    FilterHeadersStatus,
    FilterTrailersStatus,
    StreamFilter,
)
from legatus.http.local_reply import latch_grpc_request, percent_encode

_WEB_TYPES = {
    "application/grpc-web": False,  # content type -> base64 ("text") body
    "application/grpc-web+proto": False,
    "application/grpc-web-text": True,
    "application/grpc-web-text+proto": True,
}
_TEXT_TYPES = ("application/grpc-web-text", "application/grpc-web-text+proto")
_PROTO_RESPONSE_TYPES = ("application/grpc-web+proto", "application/grpc-web")
_MAX_BUFFERED_PLAINTEXT = 16384  # a non-gRPC response body kept for grpc-message
_BAD_BASE64 = b"Bad gRPC-web request, invalid base64 data."

_CONTINUE = FilterHeadersStatus.CONTINUE
_DATA_CONTINUE = FilterDataStatus.CONTINUE
_TAKEN = FilterDataStatus.STOP_ITERATION_NO_BUFFER


@dataclass(frozen=True, slots=True, kw_only=True)
class GrpcWebConfig:
    cluster_manager: Any  # the worker's ThreadLocalClusterManager (stats go to the cluster)
    stats: GrpcStatsContext


def decode_base64(chunk: bytes) -> bytes | None:
    """Envoy's Base64::decode: the canonical encoding of something, or None."""
    try:
        decoded = binascii.a2b_base64(chunk, strict_mode=True)
    except binascii.Error:
        return None
    if not decoded or binascii.b2a_base64(decoded, newline=False) != chunk:
        return None
    return decoded


def _proto_encoded_web_response(headers) -> bool:
    """A 200 whose content type (parameters aside, any case) is gRPC-Web proto already."""
    if headers.get(":status") != "200":
        return False
    content_type = headers.get("content-type")
    if content_type is None:
        return False
    media = content_type.split(";", 1)[0].rstrip(" \t").lower()
    return media in _PROTO_RESPONSE_TYPES


class GrpcWebFilter(StreamFilter):
    __slots__ = ("config", "decoder_callbacks", "encoder_callbacks", "frames", "message",
                 "pending", "response_headers", "stats", "text_request", "text_response",
                 "transform", "web")  # fmt: skip

    def __init__(self, config: GrpcWebConfig) -> None:
        self.config = config
        self.web = False  # this is a gRPC-Web request
        self.text_request = False
        self.text_response = False
        self.pending = b""  # base64 not yet decoded (less than 4 characters)
        self.stats: MethodStats | None = None
        self.transform = False  # the response is not gRPC: its body becomes grpc-message
        self.response_headers = None  # held while ``transform``
        self.message = bytearray()  # ... and the body so far
        self.frames: FrameDecoder | None = None  # a -text response's frames

    # Request ------------------------------------------------------------------------------

    def decode_headers(self, headers, end_stream: bool) -> FilterHeadersStatus:
        content_type = headers.get("content-type")
        text = _WEB_TYPES.get(content_type) if content_type is not None else None
        if text is None or ":path" not in headers:
            return _CONTINUE
        self.web = True
        callbacks = self.decoder_callbacks
        latch_grpc_request(callbacks.stream_info, headers)
        headers.remove("content-length")
        self._setup_stats(callbacks.route, headers.get(":path"))
        self.text_request = text
        headers.set("content-type", "application/grpc")
        if headers.get("accept") in _TEXT_TYPES:
            self.text_response = True
        headers.set("te", "trailers")
        if "grpc-accept-encoding" not in headers:
            headers.set("grpc-accept-encoding", "identity")
        return _CONTINUE

    def decode_data(self, data: bytes, end_stream: bool) -> FilterDataStatus:
        if not self.text_request:
            return _DATA_CONTINUE
        pending = self.pending
        available = len(pending) + len(data)
        if end_stream:
            if not available:
                return _DATA_CONTINUE
            if available % 4:  # base64 padding is mandatory
                self._bad_request("grpc_base_64_decode_failed_bad_size")
                return _TAKEN
        elif available < 4:
            self.pending = pending + data
            return _TAKEN
        needed = available // 4 * 4 - len(pending)
        decoded = decode_base64(pending + data[:needed])
        if decoded is None:
            self._bad_request("grpc_base_64_decode_failed")
            return _TAKEN
        self.pending = data[needed:]
        self.decoder_callbacks.inject_decoded_data_to_filter_chain(decoded, end_stream)
        return _TAKEN

    def _bad_request(self, details: str) -> None:
        self.decoder_callbacks.send_local_reply(400, _BAD_BASE64, details=details)

    # Response -----------------------------------------------------------------------------

    def encode_headers(self, headers, end_stream: bool) -> FilterHeadersStatus:
        if not self.web:
            return _CONTINUE
        stats = self.stats
        if stats is not None:
            stats.charge_status(headers.get("grpc-status"))
        transform = not is_grpc_response_headers(headers, end_stream) and (
            not _proto_encoded_web_response(headers)
        )
        headers.remove("content-length")
        if self.text_response:
            headers.set("content-type", "application/grpc-web-text+proto")
            if not transform and not end_stream:
                self.frames = FrameDecoder()
        else:
            headers.set("content-type", "application/grpc-web+proto")
        if end_stream or not transform:
            return _CONTINUE
        self.transform = True
        self.response_headers = headers
        return FilterHeadersStatus.STOP_ITERATION

    def encode_data(self, data: bytes, end_stream: bool) -> FilterDataStatus:
        if not self.web:
            return _DATA_CONTINUE
        callbacks = self.encoder_callbacks
        if self.transform:
            # Not gRPC: keep the body (up to the limit once it is in pieces) for grpc-message.
            message = self.message
            if not end_stream:
                if len(message) < _MAX_BUFFERED_PLAINTEXT:
                    message += data
                return _TAKEN
            if message:
                message += data
                del message[_MAX_BUFFERED_PLAINTEXT:]
            else:
                message = data
            self._finish_transform(message)
            callbacks.continue_encoding()  # the headers, now complete
            callbacks.inject_encoded_data_to_filter_chain(b"", True)
            return _TAKEN
        frames = self.frames
        if frames is None:
            return _DATA_CONTINUE
        # A -text client: each complete frame, base64-encoded on its own.
        frames.inspect(data)
        out = b"".join(_base64_frame(flags, m) for flags, m in frames.take())
        if out or end_stream:
            callbacks.inject_encoded_data_to_filter_chain(out, end_stream)
        return _TAKEN

    def encode_trailers(self, trailers) -> FilterTrailersStatus:
        if not self.web:
            return FilterTrailersStatus.CONTINUE
        stats = self.stats
        if stats is not None:
            stats.charge_status(trailers.get("grpc-status"))
        if self.transform:
            self._finish_transform(self.message)
            return FilterTrailersStatus.CONTINUE  # releases the headers, then the trailers
        block = b"".join(f"{n}:{v}\r\n".encode("latin-1") for n, v in trailers.items())
        trailers.clear()  # they travel in the body now
        if self.text_response:
            out = _base64_frame(FLAG_WEB_TRAILERS, block)
        else:
            out = bytes((FLAG_WEB_TRAILERS,)) + len(block).to_bytes(4, "big") + block
        self.encoder_callbacks.add_encoded_data(out)
        return FilterTrailersStatus.CONTINUE

    def _finish_transform(self, body) -> None:
        """Envoy's setTransformedNonProtoEncodedResponseHeaders."""
        self.transform = False
        headers = self.response_headers
        self.response_headers = None
        message = bytes(body).decode("utf-8", "surrogateescape")
        headers.set("grpc-message", percent_encode(message))
        status = headers.get(":status", "")
        code = int(status) if status.isdigit() else 0
        headers.set("grpc-status", str(int(http_to_grpc_status(code))))
        headers.set("content-length", "0")

    # Stats --------------------------------------------------------------------------------

    def _setup_stats(self, route, path: str | None) -> None:
        if route is None:
            return
        name = route.cluster_name
        manager = self.config.cluster_manager
        cluster = manager.get(name) if name and manager is not None else None
        if cluster is None:
            return
        names = resolve_service_and_method(path)
        if names is not None:
            self.stats = self.config.stats.method_stats(cluster.scope, GRPC_WEB, names)

    def on_destroy(self) -> None:
        self.response_headers = None
        self.frames = None


def _base64_frame(flags: int, message: bytes) -> bytes:
    head = bytes((flags,)) + len(message).to_bytes(4, "big")
    return binascii.b2a_base64(head + message, newline=False)
