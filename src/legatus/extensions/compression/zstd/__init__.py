"""``envoy.compression.zstd.compressor``: zstd through the ``zstandard`` package, with Envoy's
defaults (level 3, no checksum, the level's own strategy). Each piece of a stream ends with a
block flush (Envoy's ``ZSTD_e_flush``), the last with the end of the frame (``ZSTD_e_end``).
A ``dictionary`` is refused (legatus does not load one yet). ``chunk_size`` sizes Envoy's
output buffers only and is accepted as such."""

from __future__ import annotations

import zstandard

from legatus.config.supported import check_supported
from legatus.extensions.compression.common import CompressorFactory, wrapped
from legatus.registry import Category, Registry, extension

NAME = "envoy.compression.zstd.compressor"
CONFIG_TYPE = "envoy.extensions.compression.zstd.compressor.v3.Zstd"
_SUPPORTED = ("compression_level", "enable_checksum", "strategy", "chunk_size")
_BLOCK = zstandard.COMPRESSOBJ_FLUSH_BLOCK
_FRAME = zstandard.COMPRESSOBJ_FLUSH_FINISH


class ZstdCompressor:
    __slots__ = ("_flush", "_process")

    def __init__(self, compressor: zstandard.ZstdCompressor) -> None:
        c = compressor.compressobj()
        self._process = c.compress
        self._flush = c.flush

    def compress(self, data: bytes) -> bytes:
        return self._process(data) + self._flush(_BLOCK)

    def finish(self, data: bytes) -> bytes:
        if data:
            return self._process(data) + self._flush(_BLOCK) + self._flush(_FRAME)
        return self._flush(_FRAME)


def _factory(proto, context, path: str) -> CompressorFactory:
    check_supported(proto, _SUPPORTED, path, "Zstd")
    # No bounds in the proto: zstd clamps a level past its maximum (22), and so does legatus.
    level = min(proto.compression_level.value, 22) if proto.HasField("compression_level") else 3
    wrapped(proto, "chunk_size", 4096, path, 4096, 65536)
    checksum = proto.enable_checksum
    strategy = proto.strategy  # 0: the level's own; else ZSTD_strategy's number

    def make() -> zstandard.ZstdCompressor:
        # A ZstdCompressor is not thread-safe but is reusable per stream only through
        # compressobj(), which resets it: one per stream.
        if strategy:
            params = zstandard.ZstdCompressionParameters.from_level(
                level, strategy=strategy, write_checksum=checksum, write_content_size=False
            )
            return zstandard.ZstdCompressor(compression_params=params)
        return zstandard.ZstdCompressor(
            level=level, write_checksum=checksum, write_content_size=False
        )

    def create() -> ZstdCompressor:
        return ZstdCompressor(make())

    return CompressorFactory(content_encoding="zstd", stats_prefix="zstd.", create=create)


def register(registry: Registry) -> None:
    registry.register(extension(Category.COMPRESSOR, NAME, CONFIG_TYPE, _factory))
