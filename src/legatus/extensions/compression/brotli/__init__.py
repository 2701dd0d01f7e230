"""``envoy.compression.brotli.compressor``: brotli through Google's ``brotli`` package, with
Envoy's defaults (quality 3, window bits 18, input block bits 24, generic mode). Each piece of
a stream ends with ``BROTLI_OPERATION_FLUSH``, the last with ``BROTLI_OPERATION_FINISH``.
``disable_literal_context_modeling`` is not offered by the package: set, it is refused.
``chunk_size`` sizes Envoy's output buffers only and is accepted as such."""

from __future__ import annotations

import brotli

from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported
from legatus.extensions.compression.common import CompressorFactory, wrapped
from legatus.registry import Category, Registry, extension

NAME = "envoy.compression.brotli.compressor"
CONFIG_TYPE = "envoy.extensions.compression.brotli.compressor.v3.Brotli"
_SUPPORTED = ("quality", "encoder_mode", "window_bits", "input_block_bits", "chunk_size",
              "disable_literal_context_modeling")  # fmt: skip
# EncoderMode: DEFAULT, GENERIC, TEXT, FONT.
_MODES = (brotli.MODE_GENERIC, brotli.MODE_GENERIC, brotli.MODE_TEXT, brotli.MODE_FONT)


class BrotliCompressor:
    __slots__ = ("_finish", "_flush", "_process")

    def __init__(self, mode: int, quality: int, lgwin: int, lgblock: int) -> None:
        c = brotli.Compressor(mode=mode, quality=quality, lgwin=lgwin, lgblock=lgblock)
        self._process = c.process
        self._flush = c.flush
        self._finish = c.finish

    def compress(self, data: bytes) -> bytes:
        return self._process(data) + self._flush()

    def finish(self, data: bytes) -> bytes:
        if data:
            return self._process(data) + self._flush() + self._finish()
        return self._finish()


def _factory(proto, context, path: str) -> CompressorFactory:
    check_supported(proto, _SUPPORTED, path, "Brotli")
    if proto.disable_literal_context_modeling:
        raise ConfigError(
            join_path(path, "disable_literal_context_modeling"),
            "field 'disable_literal_context_modeling' of Brotli is not supported by legatus yet",
        )
    quality = wrapped(proto, "quality", 3, path, 0, 11)
    lgwin = wrapped(proto, "window_bits", 18, path, 10, 24)
    lgblock = wrapped(proto, "input_block_bits", 24, path, 16, 24)
    wrapped(proto, "chunk_size", 4096, path, 4096, 65536)
    mode = _MODES[proto.encoder_mode]

    def create() -> BrotliCompressor:
        return BrotliCompressor(mode, quality, lgwin, lgblock)

    return CompressorFactory(content_encoding="br", stats_prefix="brotli.", create=create)


def register(registry: Registry) -> None:
    registry.register(extension(Category.COMPRESSOR, NAME, CONFIG_TYPE, _factory))
