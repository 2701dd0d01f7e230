"""The decompressor filter's config, compiled once: both directions, stats and the library.

Stats, as Envoy names them, under ``http.<hcm stat_prefix>.decompressor.<decompressor_library
name>.<library prefix>`` (``gzip.``): ``request.*`` and ``response.*``, each
``decompressed``, ``not_decompressed``, ``total_compressed_bytes`` and
``total_uncompressed_bytes``; the library's own under ``decompressor_library.`` (made with
the first stream decompressed).
"""

from __future__ import annotations

from dataclasses import dataclass

from legatus.common.runtime_fraction import FeatureFlag
from legatus.config.errors import join_path
from legatus.config.supported import check_supported
from legatus.extensions.compression.common import resolve_library
from legatus.extensions.compression.decompression import DecompressorFactory
from legatus.registry import Category
from legatus.stats.store import Scope, StatSet, counter

_SUPPORTED = ("decompressor_library", "request_direction_config", "response_direction_config")
_SUPPORTED_REQUEST = ("common_config", "advertise_accept_encoding")
_SUPPORTED_RESPONSE = ("common_config",)
_SUPPORTED_COMMON = ("enabled", "ignore_no_transform_header")


class DecompressorStats(StatSet):
    """Per direction: ``<prefix>request.*`` / ``<prefix>response.*``."""

    decompressed = counter()
    not_decompressed = counter()
    total_uncompressed_bytes = counter()
    total_compressed_bytes = counter()


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectionConfig:
    enabled: FeatureFlag  # common_config.enabled: on unless it says otherwise
    ignore_no_transform_header: bool
    stats: DecompressorStats


@dataclass(frozen=True, slots=True, kw_only=True)
class DecompressorConfig:
    request: DirectionConfig
    response: DirectionConfig
    advertise_accept_encoding: bool  # request_direction_config's, true when unset
    content_encoding: str  # the library's (``gzip``)
    content_encoding_lower: str
    factory: DecompressorFactory
    library_scope: Scope  # where the library's own stats go
    # x-envoy-decompressor-<library name>-{compressed,uncompressed}-bytes
    trailer_names: tuple[str, str]


def compile_config(proto, context, path: str) -> DecompressorConfig:
    check_supported(proto, _SUPPORTED, path, "Decompressor")
    factory, library_name = _library(proto, context, path)
    hcm_prefix = context.http_stat_prefix or ""
    scope = context.store.scope(
        f"http.{hcm_prefix}.decompressor.{library_name}.{factory.stats_prefix}"
    )
    runtime = context.runtime

    rpath = join_path(path, "request_direction_config")
    request_proto = proto.request_direction_config
    check_supported(request_proto, _SUPPORTED_REQUEST, rpath, "RequestDirectionConfig")
    advertise = (
        request_proto.advertise_accept_encoding.value
        if request_proto.HasField("advertise_accept_encoding")
        else True
    )
    request = _direction(request_proto, scope.scope("request."), runtime, rpath)

    spath = join_path(path, "response_direction_config")
    response_proto = proto.response_direction_config
    check_supported(response_proto, _SUPPORTED_RESPONSE, spath, "ResponseDirectionConfig")
    response = _direction(response_proto, scope.scope("response."), runtime, spath)

    prefix = f"x-envoy-decompressor-{library_name}".lower()
    return DecompressorConfig(
        request=request,
        response=response,
        advertise_accept_encoding=advertise,
        content_encoding=factory.content_encoding,
        content_encoding_lower=factory.content_encoding.lower(),
        factory=factory,
        library_scope=scope.scope("decompressor_library."),
        trailer_names=(f"{prefix}-compressed-bytes", f"{prefix}-uncompressed-bytes"),
    )


def _direction(direction, scope, runtime, path: str) -> DirectionConfig:
    common = direction.common_config
    check_supported(common, _SUPPORTED_COMMON, join_path(path, "common_config"),
                    "CommonDirectionConfig")  # fmt: skip
    return DirectionConfig(
        enabled=FeatureFlag(
            common.enabled if common.HasField("enabled") else None, runtime=runtime, unset=True
        ),
        ignore_no_transform_header=common.ignore_no_transform_header,
        stats=DecompressorStats(scope),
    )


def _library(proto, context, path: str) -> tuple[DecompressorFactory, str]:
    return resolve_library(proto, "decompressor_library", Category.DECOMPRESSOR, context, path)
