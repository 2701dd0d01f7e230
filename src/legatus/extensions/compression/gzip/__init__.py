"""``envoy.compression.gzip.compressor``: gzip through zlib, with Envoy's defaults (window bits
12, memory level 5, zlib's default level and strategy). Each piece of a stream ends with a
sync flush (Envoy's ``Z_SYNC_FLUSH``), the last with ``Z_FINISH``. ``chunk_size`` sizes
Envoy's output buffers only: it changes nothing on the wire, and is accepted as such."""

from __future__ import annotations

import zlib

from legatus.config.supported import check_supported
from legatus.extensions.compression.common import CompressorFactory, wrapped
from legatus.registry import Category, Registry, extension

NAME = "envoy.compression.gzip.compressor"
CONFIG_TYPE = "envoy.extensions.compression.gzip.compressor.v3.Gzip"
_SUPPORTED = ("memory_level", "compression_level", "compression_strategy", "window_bits",
              "chunk_size")  # fmt: skip
_GZIP_HEADER = 16  # added to the window bits: a gzip wrapper, not zlib's
# CompressionStrategy: DEFAULT_STRATEGY, FILTERED, HUFFMAN_ONLY, RLE, FIXED (zlib's numbers).
_STRATEGIES = (zlib.Z_DEFAULT_STRATEGY, zlib.Z_FILTERED, zlib.Z_HUFFMAN_ONLY, zlib.Z_RLE,
               zlib.Z_FIXED)  # fmt: skip
_SYNC = zlib.Z_SYNC_FLUSH
_FINISH = zlib.Z_FINISH


class GzipCompressor:
    __slots__ = ("_flush", "_process")

    def __init__(self, level: int, wbits: int, memory_level: int, strategy: int) -> None:
        c = zlib.compressobj(level, zlib.DEFLATED, wbits, memory_level, strategy)
        self._process = c.compress
        self._flush = c.flush

    def compress(self, data: bytes) -> bytes:
        return self._process(data) + self._flush(_SYNC)

    def finish(self, data: bytes) -> bytes:
        if data:
            return self._process(data) + self._flush(_SYNC) + self._flush(_FINISH)
        return self._flush(_FINISH)


def _factory(proto, context, path: str) -> CompressorFactory:
    check_supported(proto, _SUPPORTED, path, "Gzip")
    memory_level = wrapped(proto, "memory_level", 5, path, 1, 9)
    wbits = wrapped(proto, "window_bits", 12, path, 9, 15) + _GZIP_HEADER
    wrapped(proto, "chunk_size", 4096, path, 4096, 65536)
    # CompressionLevel: DEFAULT_COMPRESSION is 0 in the proto, zlib's -1 (its level 6).
    level = proto.compression_level or zlib.Z_DEFAULT_COMPRESSION
    strategy = _STRATEGIES[proto.compression_strategy]

    def create() -> GzipCompressor:
        return GzipCompressor(level, wbits, memory_level, strategy)

    return CompressorFactory(content_encoding="gzip", stats_prefix="gzip.", create=create)


def register(registry: Registry) -> None:
    registry.register(extension(Category.COMPRESSOR, NAME, CONFIG_TYPE, _factory))
