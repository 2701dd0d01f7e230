"""The compressor HTTP filter (Envoy's ``envoy.filters.http.compressor``).

Request (``decode_headers``): the request's ``accept-encoding`` is kept for the response
(and removed when ``remove_accept_encoding_header`` says so and response compression is on).
With ``request_direction_config``, a request with a body, not an upgrade, at least
``min_content_length`` long (when it says), of an allowed content type, without
``content-encoding`` and not transfer-encoded with a known compression gets compressed:
``content-length`` removed, ``content-encoding`` set.

Response (``encode_headers``), in Envoy's order (which its stats follow):

1. enabled (runtime flag, or the route's ``CompressorPerRoute``) and long enough (a
   ``content-length`` below ``min_content_length`` counts ``content_length_too_small``);
2. compressible: not an upgrade, an allowed content type, no ``cache-control: no-transform``,
   no ``etag`` when ``disable_on_etag_header`` (``not_compressed_etag``), no
   ``content-encoding``, a status not in ``uncompressible_response_codes``;
3. the response has a body, and Accept-Encoding chooses this filter's encoding (see below);
4. not transfer-encoded with a known compression.

Compressing removes ``content-length`` and a strong ``etag`` and sets ``content-encoding``;
a compressible response gets ``Vary: Accept-Encoding`` whether or not it was compressed.

Several compressor filters in one chain decide together, as in Envoy: each registers in the
stream's filter state (in chain order) and the first that looks at Accept-Encoding chooses
the encoding for all (highest q-value among the encodings of the filters whose content types
allow the response; ``*`` picks the first registered; ``choose_first`` wins ties); the others
reuse the decision. The Accept-Encoding stats count, per filter, what the decision was.

Body: each piece is compressed with a flush, so the client can decode what it has; the end of
the stream (last data or trailers) finishes the compressed stream. The filter takes each piece
(STOP_ITERATION_NO_BUFFER) and passes its compressed bytes on with ``add_*coded_data``: it
holds nothing, so the stream's flow control applies as to any body. At the end of the stream
the compressed end goes on, then the end itself, injected (``inject_*coded_data_to_filter_
chain``) so that nothing waits for a later loop turn.
"""

from __future__ import annotations

from typing import Any

from legatus.extensions.filters.http.compressor.config import (
    CompressorConfig,
    CompressorPerRoute,
    ResponseConfig,
)
from legatus.http.filter import (
    FilterDataStatus,
    FilterHeadersStatus,
    FilterTrailersStatus,
    StreamFilter,
)

_CONTINUE = FilterHeadersStatus.CONTINUE
_DATA_CONTINUE = FilterDataStatus.CONTINUE
_TAKEN = FilterDataStatus.STOP_ITERATION_NO_BUFFER
_REGISTRY_KEY = "envoy.filters.http.compressor.compressors"
_DECISION_KEY = "envoy.filters.http.compressor.encoding_decision"
_IDENTITY = "identity"
_WILDCARD = "*"
_VARY_VALUE = "Accept-Encoding"
# How the Accept-Encoding decision is counted (Envoy's EncodingDecision::HeaderStat).
_VALID, _HEADER_IDENTITY, _HEADER_WILDCARD, _NOT_VALID = range(4)
# Transfer codings that mean the body is compressed already.
_COMPRESSED_CODINGS = frozenset({"gzip", "br", "deflate", "compress", "zstd"})


def is_upgrade(headers) -> bool:
    """Envoy's Utility::isUpgrade: an ``upgrade`` header and ``connection: upgrade``."""
    if "upgrade" not in headers:
        return False
    connection = headers.get("connection")
    return connection is not None and any(
        t.strip().lower() == "upgrade" for t in connection.split(",")
    )


def choose_encoding(accept_encoding: str, content_type: str | None, registry) -> tuple:
    """Envoy's chooseEncoding: (encoding, how to count it) for the compressor filters in
    ``registry`` (their configs, in chain order) and the response's ``content_type``."""
    ct = content_type.split(";", 1)[0].strip().lower() if content_type else ""
    # encoding -> (registration order, choose_first), the first filter of an encoding only
    allowed: dict[str, tuple[int, bool]] = {}
    for config in registry:
        if ct and ct not in config.response.direction.content_types:
            continue
        if config.content_encoding not in allowed:
            allowed[config.content_encoding] = (len(allowed), config.choose_first)
    pairs = []
    for token in accept_encoding.split(","):
        if not token:
            continue
        name, sep, params = token.partition(";")
        name = name.strip()
        q = 1.0
        if sep:
            key, eq, value = params.partition("=")
            if eq and key.strip().lower() == "q":
                q = _parse_q(value.strip())
                if q is None:
                    continue  # a q-value that does not parse: the entry is skipped
        pairs.append((name, q))
        if not q:
            allowed.pop(name, None)
    if not pairs or not allowed:
        return _IDENTITY, _NOT_VALID
    choice, choice_q = _IDENTITY, 0.0
    for name, q in pairs:
        if name in allowed or name in (_IDENTITY, _WILDCARD):
            if q > choice_q:
                choice, choice_q = name, q
            elif q == choice_q:
                entry = allowed.get(name)
                if entry is not None and entry[1]:  # choose_first wins a tie
                    choice, choice_q = name, q
    if not choice_q:
        return _IDENTITY, _NOT_VALID
    if choice == _IDENTITY:
        return _IDENTITY, _HEADER_IDENTITY
    if choice == _WILDCARD:
        first = min(allowed, key=lambda n: allowed[n][0])  # the first registered
        return first, _HEADER_WILDCARD
    return choice, _VALID


def _parse_q(text: str) -> float | None:
    if not text or "_" in text:
        return None
    try:
        return float(text)
    except ValueError:
        return None


class CompressorFilter(StreamFilter):
    __slots__ = ("accept_encoding", "config", "decoder_callbacks", "encoder_callbacks",
                 "loop", "name", "request_compressor", "response_compressor")  # fmt: skip

    def __init__(self, config: CompressorConfig, name: str, loop: Any) -> None:
        self.config = config
        self.name = name
        self.loop = loop
        self.accept_encoding: str | None = None
        self.request_compressor: Any = None
        self.response_compressor: Any = None

    def set_decoder_filter_callbacks(self, callbacks) -> None:
        self.decoder_callbacks = callbacks
        info = callbacks.stream_info
        state = info.filter_state
        if state is None:
            state = info.filter_state = {}
        registry = state.get(_REGISTRY_KEY)
        if registry is None:
            state[_REGISTRY_KEY] = [self.config]
        else:
            registry.append(self.config)

    def on_destroy(self) -> None:
        self.request_compressor = self.response_compressor = None

    # Per route -------------------------------------------------------------------------

    def _per_route(self) -> CompressorPerRoute | None:
        route = self.decoder_callbacks.route
        if route is None:
            return None
        return route.most_specific_per_filter_config(self.name)

    @staticmethod
    def _response_enabled(response: ResponseConfig, per_route) -> bool:
        if per_route is not None and per_route.response_enabled is not None:
            return per_route.response_enabled
        return response.direction.enabled.enabled()

    # Request -------------------------------------------------------------------------------

    def decode_headers(self, headers, end_stream: bool) -> FilterHeadersStatus:
        config = self.config
        self.accept_encoding = headers.get("accept-encoding")
        response = config.response
        per_route = self._per_route()
        if self._response_enabled(response, per_route):
            remove = response.remove_accept_encoding_header
            if per_route is not None and per_route.remove_accept_encoding_header is not None:
                remove = per_route.remove_accept_encoding_header
            if remove:
                headers.remove("accept-encoding")
        request = config.request
        if (
            not end_stream
            and request.compression_enabled()
            and not is_upgrade(headers)
            and request.is_minimum_content_length(headers)
            and request.is_content_type_allowed(headers)
            and "content-encoding" not in headers
            and self._transfer_encoding_allowed(headers)
        ):
            headers.remove("content-length")
            headers.set("content-encoding", config.content_encoding)
            request.stats.compressed.inc()
            self.request_compressor = config.factory.create()
        else:
            request.stats.not_compressed.inc()
        return _CONTINUE

    def decode_data(self, data: bytes, end_stream: bool) -> FilterDataStatus:
        compressor = self.request_compressor
        if compressor is None or (not data and not end_stream):
            return _DATA_CONTINUE
        callbacks = self.decoder_callbacks
        if not self._compress(compressor, self.config.request.stats, callbacks.add_decoded_data,
                              data, end_stream):  # fmt: skip
            self.request_compressor = None
            callbacks.inject_decoded_data_to_filter_chain(b"", True)
        return _TAKEN

    def decode_trailers(self, trailers) -> FilterTrailersStatus:
        compressor = self.request_compressor
        if compressor is not None:
            self.request_compressor = None
            self._compress(compressor, self.config.request.stats,
                           self.decoder_callbacks.add_decoded_data, b"", True)  # fmt: skip
        return FilterTrailersStatus.CONTINUE

    # Response ------------------------------------------------------------------------------

    def encode_headers(self, headers, end_stream: bool) -> FilterHeadersStatus:
        config = self.config
        response = config.response
        direction = response.direction
        # Whether the Accept-Encoding stats are counted for this response.
        maybe = self._response_enabled(
            response, self._per_route()
        ) and direction.is_minimum_content_length(headers)
        compressible = (
            maybe
            and not is_upgrade(headers)
            and direction.is_content_type_allowed(headers)
            and not self._no_transform(headers)
            and self._etag_allowed(headers)
            and "content-encoding" not in headers
            and headers.get(":status") not in response.uncompressible_response_codes
        )
        if (
            not end_stream
            and self._accept_encoding_allowed(maybe, headers)
            and compressible
            and self._transfer_encoding_allowed(headers)
        ):
            etag = headers.get("etag")
            if etag is not None and len(etag) > 2 and not (etag[0] in "wW" and etag[1] == "/"):
                headers.remove("etag")  # a strong validator no longer matches the bytes
            headers.remove("content-length")
            headers.set("content-encoding", config.content_encoding)
            direction.stats.compressed.inc()
            self.response_compressor = config.factory.create()
        else:
            direction.stats.not_compressed.inc()
        if compressible:
            # A cache in front must know the answer depends on Accept-Encoding, even when
            # this request's did not allow compression.
            vary = headers.get("vary")
            if vary is None:
                headers.set("vary", _VARY_VALUE)
            elif not any(t.strip() == _VARY_VALUE for t in vary.split(",")):
                headers.set("vary", f"{vary}, {_VARY_VALUE}")
        return _CONTINUE

    def encode_data(self, data: bytes, end_stream: bool) -> FilterDataStatus:
        compressor = self.response_compressor
        if compressor is None or (not data and not end_stream):
            return _DATA_CONTINUE
        callbacks = self.encoder_callbacks
        if not self._compress(compressor, self.config.response.direction.stats,
                              callbacks.add_encoded_data, data, end_stream):  # fmt: skip
            self.response_compressor = None
            # The end of stream, empty, after the compressed end: the bytes and chunks
            # Envoy's HTTP/1 codec sends.
            callbacks.inject_encoded_data_to_filter_chain(b"", True)
        return _TAKEN

    def encode_trailers(self, trailers) -> FilterTrailersStatus:
        compressor = self.response_compressor
        if compressor is not None:
            self.response_compressor = None
            self._compress(compressor, self.config.response.direction.stats,
                           self.encoder_callbacks.add_encoded_data, b"", True)  # fmt: skip
        return FilterTrailersStatus.CONTINUE

    # Helpers ---------------------------------------------------------------------------

    @staticmethod
    def _compress(compressor, stats, add_data, data: bytes, end_stream: bool) -> bool:
        """Pass on ``data`` compressed; False at the end of the stream. Data that ends the
        stream is compressed with a flush, then the stream finished on its own, as Envoy does
        with a body its HTTP/1 codec ends with an empty end of stream (same bytes, same
        chunks)."""
        if data:
            stats.total_uncompressed_bytes.add(len(data))
            out = compressor.compress(data)
            stats.total_compressed_bytes.add(len(out))
            add_data(out)
        if not end_stream:
            return True
        out = compressor.finish(b"")
        stats.total_compressed_bytes.add(len(out))
        add_data(out)
        return False

    def _accept_encoding_allowed(self, maybe: bool, headers) -> bool:
        if not maybe:
            return False  # no compression whatever the client accepts: nothing counted
        stats = self.config.response.stats
        accept_encoding = self.accept_encoding
        if accept_encoding is None:
            stats.no_accept_header.inc()
            return False
        state = self.decoder_callbacks.stream_info.filter_state
        decision = state.get(_DECISION_KEY)
        if decision is None:
            decision = state[_DECISION_KEY] = choose_encoding(
                accept_encoding, headers.get("content-type"), state[_REGISTRY_KEY]
            )
        encoding, kind = decision
        chosen = encoding.lower() == self.config.content_encoding_lower
        if kind == _VALID:
            if chosen:
                stats.header_compressor_used.inc()
            else:
                stats.header_compressor_overshadowed.inc()
        elif kind == _HEADER_IDENTITY:
            stats.header_identity.inc()
        elif kind == _HEADER_WILDCARD:
            stats.header_wildcard.inc()
        else:
            stats.header_not_valid.inc()
        return chosen

    @staticmethod
    def _no_transform(headers) -> bool:
        value = headers.get("cache-control")
        return value is not None and any(
            t.strip().lower() == "no-transform" for t in value.split(",")
        )

    def _etag_allowed(self, headers) -> bool:
        response = self.config.response
        if response.disable_on_etag_header and "etag" in headers:
            response.stats.not_compressed_etag.inc()
            return False
        return True

    def _transfer_encoding_allowed(self, headers) -> bool:
        value = headers.get("transfer-encoding")
        if value is None:
            return True
        own = self.config.content_encoding_lower
        for token in value.split(","):
            coding = token.strip().lower()
            if coding in _COMPRESSED_CODINGS or coding == own:
                return False
        return True
