"""``envoy.filters.http.buffer``: the whole request is buffered before it goes on.

With a body, the request's headers wait (``STOP_ITERATION``) and its body is held in the stream
(``STOP_ITERATION_AND_BUFFER``) until the request ends; the stream's buffer limit becomes
``max_request_bytes`` for the request, so a larger body gets the filter chain's 413
(``Payload Too Large``, details ``request_payload_too_large``). A buffered request without
``content-length`` (a chunked one) gets one with the body's size, as Envoy's does. A
``BufferPerRoute`` in a route's ``typed_per_filter_config`` turns the filter off there
(``disabled``) or replaces its limit (``buffer``). A request without a body passes at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from legatus.config.supported import check_supported
from legatus.http.filter import (
    FilterDataStatus,
    FilterHeadersStatus,
    FilterTrailersStatus,
    StreamDecoderFilter,
)
from legatus.network.filter import FilterFactory
from legatus.registry import Registry, http_filter

NAME = "envoy.filters.http.buffer"
CONFIG_TYPE = "envoy.extensions.filters.http.buffer.v3.Buffer"
PER_ROUTE_TYPE = "envoy.extensions.filters.http.buffer.v3.BufferPerRoute"


@dataclass(frozen=True, slots=True, kw_only=True)
class BufferSettings:
    disabled: bool = False
    max_request_bytes: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class BufferConfig:
    settings: BufferSettings
    name: str  # the HttpFilter name: the key of the routes' settings


def compile_buffer(proto, path: str) -> BufferSettings:
    check_supported(proto, ("max_request_bytes",), path, "Buffer")
    return BufferSettings(max_request_bytes=proto.max_request_bytes.value)


def compile_per_route(proto, path: str) -> BufferSettings:
    check_supported(proto, ("disabled", "buffer"), path, "BufferPerRoute")
    if proto.HasField("buffer"):
        return compile_buffer(proto.buffer, f"{path}.buffer")
    return BufferSettings(disabled=proto.disabled)


class BufferFilter(StreamDecoderFilter):
    __slots__ = ("config", "content_length", "decoder_callbacks", "headers")

    def __init__(self, config: BufferConfig) -> None:
        self.config = config
        self.headers = None  # set while buffering (the filter is on for this request)
        self.content_length = 0

    def decode_headers(self, headers, end_stream: bool) -> FilterHeadersStatus:
        if end_stream:
            return FilterHeadersStatus.CONTINUE
        callbacks = self.decoder_callbacks
        settings = self.config.settings
        route = callbacks.route
        if route is not None:
            settings = route.most_specific_per_filter_config(self.config.name) or settings
        if settings.disabled:
            return FilterHeadersStatus.CONTINUE
        callbacks.set_decoder_buffer_limit(settings.max_request_bytes)
        self.headers = headers
        return FilterHeadersStatus.STOP_ITERATION

    def decode_data(self, data: bytes, end_stream: bool) -> FilterDataStatus:
        self.content_length += len(data)
        if end_stream or self.headers is None:
            self._add_content_length()
            return FilterDataStatus.CONTINUE
        return FilterDataStatus.STOP_ITERATION_AND_BUFFER

    def decode_trailers(self, trailers) -> FilterTrailersStatus:
        self._add_content_length()
        return FilterTrailersStatus.CONTINUE

    def _add_content_length(self) -> None:
        headers = self.headers
        if headers is not None and "content-length" not in headers:
            headers.set("content-length", str(self.content_length))

    def on_destroy(self) -> None:
        self.headers = None


def _factory(proto, context, path: str) -> FilterFactory:
    config = BufferConfig(settings=compile_buffer(proto, path), name=context.http_filter_name)
    return FilterFactory(lambda: BufferFilter(config), terminal=False)


def _route_factory(proto, context, path: str) -> BufferSettings:
    return compile_per_route(proto, path)


def register(registry: Registry) -> None:
    registry.register(
        http_filter(
            NAME,
            CONFIG_TYPE,
            _factory,
            route_config_type=PER_ROUTE_TYPE,
            route_factory=_route_factory,
        )
    )
