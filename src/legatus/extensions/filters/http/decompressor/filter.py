"""The decompressor HTTP filter (Envoy's ``envoy.filters.http.decompressor``).

Request (``decode_headers``): while response decompression is enabled and
``advertise_accept_encoding`` (true when unset) says so, the library's encoding is added to
``accept-encoding`` at full weight (an entry of that exact name, with its q-value, is moved to
the end). A request with a body is then decompressed, as a response is (``encode_headers``),
when all of these hold, else ``not_decompressed`` counts (a message without a body counts
nothing):

1. the direction is enabled (``common_config.enabled``, a runtime flag, on when unset);
2. no ``cache-control: no-transform``, unless ``ignore_no_transform_header``;
3. the first ``content-encoding`` coding is the library's (case-insensitive).

Decompressing counts ``decompressed``, removes ``content-length`` (the body goes on chunked)
and that first coding from ``content-encoding`` (the header goes when nothing is left after it,
an empty value stays if only a comma was).

Body: each piece is decompressed as it comes and passed on at once
(``STOP_ITERATION_NO_BUFFER`` with ``inject_*coded_data_to_filter_chain``): the filter holds
nothing, so the stream's flow control applies as to any body. The end of the stream becomes
trailers ``x-envoy-decompressor-<library name>-compressed-bytes`` and ``-uncompressed-bytes``
(the stream's totals), added to the stream's own trailers when it has some. Envoy builds those
two names once per process, from the first decompressor filter that handles a stream; so does
legatus, per worker process (``_TRAILER_NAMES``).
"""

from __future__ import annotations

from typing import Any

from legatus.extensions.filters.http.decompressor.config import (
    DecompressorConfig,
    DirectionConfig,
)
from legatus.http.filter import (
    FilterDataStatus,
    FilterHeadersStatus,
    FilterTrailersStatus,
    StreamFilter,
)
from legatus.http.headers import HeaderMap

_CONTINUE = FilterHeadersStatus.CONTINUE
_DATA_CONTINUE = FilterDataStatus.CONTINUE
_TAKEN = FilterDataStatus.STOP_ITERATION_NO_BUFFER
_WHITESPACE = " \t\f\v\n\r"
# The trailer names of the first stream any decompressor filter of this process handled.
_TRAILER_NAMES: list[tuple[str, str]] = []


def add_encoding_to_accept_encoding(value: str | None, encoding: str) -> str:
    """Envoy's HeaderUtility::addEncodingToAcceptEncoding: the entries other than ``encoding``
    (exact name, before any ``;``), then ``encoding``, comma-joined."""
    kept = []
    if value:
        for entry in value.split(","):
            entry = entry.strip(_WHITESPACE)
            if entry and entry.split(";", 1)[0].strip(_WHITESPACE) != encoding:
                kept.append(entry)
    kept.append(encoding)
    return ",".join(kept)


def _header(headers, name: str) -> str | None:
    """The header's value, repeated values comma-joined (as Envoy keeps these headers)."""
    if headers.has_repeats:
        values = headers.get_all(name)
        return ",".join(values) if values else None
    return headers.get(name)


def _has_no_transform(headers) -> bool:
    value = _header(headers, "cache-control")
    return value is not None and any(
        t.strip(_WHITESPACE).lower() == "no-transform" for t in value.split(",")
    )


class DecompressorFilter(StreamFilter):
    __slots__ = ("config", "decoder_callbacks", "encoder_callbacks", "request_compressed",
                 "request_decompressor", "request_uncompressed", "response_compressed",
                 "response_decompressor", "response_uncompressed", "trailer_names")  # fmt: skip

    def __init__(self, config: DecompressorConfig) -> None:
        self.config = config
        if not _TRAILER_NAMES:
            _TRAILER_NAMES.append(config.trailer_names)
        self.trailer_names = _TRAILER_NAMES[0]
        self.request_decompressor: Any = None
        self.response_decompressor: Any = None
        self.request_compressed = self.request_uncompressed = 0
        self.response_compressed = self.response_uncompressed = 0

    def on_destroy(self) -> None:
        self.request_decompressor = self.response_decompressor = None

    # Request -------------------------------------------------------------------------------

    def decode_headers(self, headers, end_stream: bool) -> FilterHeadersStatus:
        config = self.config
        if config.advertise_accept_encoding and config.response.enabled.enabled():
            headers.set(
                "accept-encoding",
                add_encoding_to_accept_encoding(
                    _header(headers, "accept-encoding"), config.content_encoding
                ),
            )
        if not end_stream and self._should_decompress(config.request, headers):
            self.request_decompressor = config.factory.create(config.library_scope)
        return _CONTINUE

    def decode_data(self, data: bytes, end_stream: bool) -> FilterDataStatus:
        decompressor = self.request_decompressor
        if decompressor is None:
            return _DATA_CONTINUE
        out = decompressor.decompress(data)
        self.request_compressed += len(data)
        self.request_uncompressed += len(out)
        _count(self.config.request, len(data), len(out))
        callbacks = self.decoder_callbacks
        if out:
            callbacks.inject_decoded_data_to_filter_chain(out, False)
        if end_stream:
            callbacks.add_decoded_trailers(
                self._totals(HeaderMap(), self.request_compressed, self.request_uncompressed)
            )
        return _TAKEN

    def decode_trailers(self, trailers) -> FilterTrailersStatus:
        if self.request_decompressor is not None:
            self._totals(trailers, self.request_compressed, self.request_uncompressed)
        return FilterTrailersStatus.CONTINUE

    # Response ------------------------------------------------------------------------------

    def encode_headers(self, headers, end_stream: bool) -> FilterHeadersStatus:
        if not end_stream and self._should_decompress(self.config.response, headers):
            config = self.config
            self.response_decompressor = config.factory.create(config.library_scope)
        return _CONTINUE

    def encode_data(self, data: bytes, end_stream: bool) -> FilterDataStatus:
        decompressor = self.response_decompressor
        if decompressor is None:
            return _DATA_CONTINUE
        out = decompressor.decompress(data)
        self.response_compressed += len(data)
        self.response_uncompressed += len(out)
        _count(self.config.response, len(data), len(out))
        callbacks = self.encoder_callbacks
        if out:
            callbacks.inject_encoded_data_to_filter_chain(out, False)
        if end_stream:
            callbacks.add_encoded_trailers(
                self._totals(HeaderMap(), self.response_compressed, self.response_uncompressed)
            )
        return _TAKEN

    def encode_trailers(self, trailers) -> FilterTrailersStatus:
        if self.response_decompressor is not None:
            self._totals(trailers, self.response_compressed, self.response_uncompressed)
        return FilterTrailersStatus.CONTINUE

    # Helpers ---------------------------------------------------------------------------

    def _should_decompress(self, direction: DirectionConfig, headers) -> bool:
        """The three checks of the module doc, counted; on success the headers are updated."""
        ok = direction.enabled.enabled() and (
            direction.ignore_no_transform_header or not _has_no_transform(headers)
        )
        encoding = _header(headers, "content-encoding") if ok else None
        if encoding is None or (
            encoding.split(",", 1)[0].strip(_WHITESPACE).lower()
            != self.config.content_encoding_lower
        ):
            direction.stats.not_decompressed.inc()
            return False
        direction.stats.decompressed.inc()
        headers.remove("content-length")
        codings = encoding.strip(_WHITESPACE)
        _, comma, rest = codings.partition(",")
        if comma:
            headers.set("content-encoding", rest.strip(_WHITESPACE))
        else:
            headers.remove("content-encoding")
        return True

    def _totals(self, trailers, compressed: int, uncompressed: int):
        compressed_name, uncompressed_name = self.trailer_names
        trailers.add(compressed_name, str(compressed))
        trailers.add(uncompressed_name, str(uncompressed))
        return trailers


def _count(direction: DirectionConfig, compressed: int, uncompressed: int) -> None:
    stats = direction.stats
    stats.total_compressed_bytes.add(compressed)
    stats.total_uncompressed_bytes.add(uncompressed)
