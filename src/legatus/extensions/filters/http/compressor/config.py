"""The compressor filter's config, compiled once: directions, stats and the library's factory.

Stats, as Envoy names them, under ``http.<hcm stat_prefix>.compressor.<compressor_library
name>.<library prefix>`` (``gzip.``, ``brotli.``, ``zstd.``):

- ``request.*`` and ``response.*``: ``compressed``, ``not_compressed``,
  ``total_uncompressed_bytes``, ``total_compressed_bytes``, ``content_length_too_small``;
  without ``response_direction_config`` (the deprecated top-level fields) the response's sit
  right under the prefix, without ``response.``;
- right under the prefix, the response's Accept-Encoding stats: ``no_accept_header``,
  ``header_identity``, ``header_compressor_used``, ``header_compressor_overshadowed``,
  ``header_wildcard``, ``header_not_valid``, ``not_compressed_etag``.
"""

from __future__ import annotations

from dataclasses import dataclass

from legatus.common.runtime_fraction import FeatureFlag
from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported
from legatus.extensions.compression.common import CompressorFactory, resolve_library
from legatus.registry import Category
from legatus.stats.store import StatSet, counter

_SUPPORTED = (
    "content_length", "content_type", "disable_on_etag_header", "remove_accept_encoding_header",
    "runtime_enabled", "compressor_library", "request_direction_config",
    "response_direction_config", "choose_first",
)  # fmt: skip
_SUPPORTED_COMMON = ("enabled", "min_content_length", "content_type")
_SUPPORTED_RESPONSE = ("common_config", "disable_on_etag_header", "remove_accept_encoding_header",
                       "uncompressible_response_codes")  # fmt: skip
_SUPPORTED_PER_ROUTE = ("disabled", "overrides")
_SUPPORTED_OVERRIDES = ("response_direction_config",)
_DEFAULT_MIN_CONTENT_LENGTH = 30
# Envoy's list when content_type is empty (its source; the docs list only some of them).
DEFAULT_CONTENT_TYPES = frozenset({
    "text/html", "text/plain", "text/css", "application/javascript", "application/x-javascript",
    "text/javascript", "text/x-javascript", "text/ecmascript", "text/js", "text/jscript",
    "text/x-js", "application/ecmascript", "application/x-json", "application/xml",
    "application/json", "image/svg+xml", "text/xml", "application/xhtml+xml",
    "application/grpc-web", "application/grpc-web+proto",
})  # fmt: skip


class CompressorStats(StatSet):
    """Per direction: ``<prefix>request.*`` / ``<prefix>response.*``."""

    compressed = counter()
    not_compressed = counter()
    total_uncompressed_bytes = counter()
    total_compressed_bytes = counter()
    content_length_too_small = counter()


class ResponseCompressorStats(StatSet):
    """The response's Accept-Encoding stats, right under the filter's prefix."""

    no_accept_header = counter()
    header_identity = counter()
    header_compressor_used = counter()
    header_compressor_overshadowed = counter()
    header_wildcard = counter()
    header_not_valid = counter()
    not_compressed_etag = counter()


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectionConfig:
    enabled: FeatureFlag
    is_set: bool  # request: request_direction_config is there (else request compression is off)
    min_content_length: int
    content_types: frozenset[str]  # lower-case
    stats: CompressorStats

    def compression_enabled(self) -> bool:
        return self.is_set and self.enabled.enabled()

    def is_minimum_content_length(self, headers) -> bool:
        value = headers.get("content-length")
        if value is None:
            return True
        value = value.strip()
        ok = value.isdigit() and value.isascii() and int(value) >= self.min_content_length
        if not ok:
            self.stats.content_length_too_small.inc()
        return ok

    def is_content_type_allowed(self, headers) -> bool:
        value = headers.get("content-type")
        if value is None:
            return True
        return value.split(";", 1)[0].strip().lower() in self.content_types


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseConfig:
    direction: DirectionConfig
    disable_on_etag_header: bool
    remove_accept_encoding_header: bool
    uncompressible_response_codes: frozenset[str]  # ":status" values
    stats: ResponseCompressorStats


@dataclass(frozen=True, slots=True, kw_only=True)
class CompressorConfig:
    request: DirectionConfig
    response: ResponseConfig
    content_encoding: str
    content_encoding_lower: str
    choose_first: bool
    factory: CompressorFactory


@dataclass(frozen=True, slots=True, kw_only=True)
class CompressorPerRoute:
    """``CompressorPerRoute``: None where the route says nothing (the filter's own applies)."""

    response_enabled: bool | None
    remove_accept_encoding_header: bool | None


def compile_config(proto, context, path: str) -> CompressorConfig:
    check_supported(proto, _SUPPORTED, path, "Compressor")
    factory, library_name = _library(proto, context, path)
    hcm_prefix = context.http_stat_prefix or ""
    prefix = f"http.{hcm_prefix}.compressor.{library_name}.{factory.stats_prefix}"
    scope = context.store.scope(prefix)
    runtime = context.runtime

    request_set = proto.HasField("request_direction_config")
    request_common = proto.request_direction_config.common_config
    request = _direction(
        request_common if request_set and proto.request_direction_config.HasField(
            "common_config") else None,
        scope.scope("request."), runtime, is_set=request_set,
        path=join_path(path, "request_direction_config.common_config"),
    )  # fmt: skip

    if proto.HasField("response_direction_config"):
        rdc = proto.response_direction_config
        rpath = join_path(path, "response_direction_config")
        check_supported(rdc, _SUPPORTED_RESPONSE, rpath, "ResponseDirectionConfig")
        direction = _direction(
            rdc.common_config if rdc.HasField("common_config") else None,
            scope.scope("response."), runtime, is_set=True,
            path=join_path(rpath, "common_config"),
        )  # fmt: skip
        disable_on_etag, remove_ae = rdc.disable_on_etag_header, rdc.remove_accept_encoding_header
        codes = frozenset(str(c) for c in rdc.uncompressible_response_codes)
    else:
        # The deprecated top-level fields, and the stats without ``response.``.
        length = proto.content_length.value if proto.HasField("content_length") else 0
        direction = DirectionConfig(
            enabled=FeatureFlag(
                proto.runtime_enabled if proto.HasField("runtime_enabled") else None,
                runtime=runtime,
                unset=True,
            ),
            is_set=True,
            min_content_length=length or _DEFAULT_MIN_CONTENT_LENGTH,
            content_types=_content_types(proto.content_type),
            stats=CompressorStats(scope),
        )
        disable_on_etag = proto.disable_on_etag_header
        remove_ae = proto.remove_accept_encoding_header
        codes = frozenset()
    response = ResponseConfig(
        direction=direction,
        disable_on_etag_header=disable_on_etag,
        remove_accept_encoding_header=remove_ae,
        uncompressible_response_codes=codes,
        stats=ResponseCompressorStats(scope),
    )
    return CompressorConfig(
        request=request,
        response=response,
        content_encoding=factory.content_encoding,
        content_encoding_lower=factory.content_encoding.lower(),
        choose_first=proto.choose_first,
        factory=factory,
    )


def compile_per_route(proto, context, path: str) -> CompressorPerRoute:
    check_supported(proto, _SUPPORTED_PER_ROUTE, path, "CompressorPerRoute")
    if proto.WhichOneof("override") == "disabled":
        return CompressorPerRoute(response_enabled=False, remove_accept_encoding_header=None)
    overrides = proto.overrides
    opath = join_path(path, "overrides")
    if overrides.HasField("compressor_library"):
        raise ConfigError(
            join_path(opath, "compressor_library"),
            "field 'compressor_library' of CompressorOverrides (a per-route compression "
            "library) is not supported by legatus yet",
        )
    check_supported(overrides, _SUPPORTED_OVERRIDES, opath, "CompressorOverrides")
    if not overrides.HasField("response_direction_config"):
        return CompressorPerRoute(response_enabled=None, remove_accept_encoding_header=None)
    # An empty response_direction_config enables response compression, as in Envoy.
    rdc = overrides.response_direction_config
    remove = (
        rdc.remove_accept_encoding_header.value
        if rdc.HasField("remove_accept_encoding_header")
        else None
    )
    return CompressorPerRoute(response_enabled=True, remove_accept_encoding_header=remove)


def _direction(common, scope, runtime, *, is_set: bool, path: str) -> DirectionConfig:
    if common is not None:
        check_supported(common, _SUPPORTED_COMMON, path, "CommonDirectionConfig")
    has = common is not None
    length = common.min_content_length.value if has and common.HasField(
        "min_content_length") else 0  # fmt: skip
    return DirectionConfig(
        enabled=FeatureFlag(
            common.enabled if has and common.HasField("enabled") else None,
            runtime=runtime,
            unset=True,
        ),
        is_set=is_set,
        min_content_length=length or _DEFAULT_MIN_CONTENT_LENGTH,
        content_types=_content_types(common.content_type if has else ()),
        stats=CompressorStats(scope),
    )


def _content_types(types) -> frozenset[str]:
    return frozenset(t.lower() for t in types) if types else DEFAULT_CONTENT_TYPES


def _library(proto, context, path: str) -> tuple[CompressorFactory, str]:
    return resolve_library(proto, "compressor_library", Category.COMPRESSOR, context, path)
