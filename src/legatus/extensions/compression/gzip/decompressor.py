"""``envoy.compression.gzip.decompressor``: gzip through zlib, as Envoy's zlib decompressor
(window bits 15, chunks of 4096 bytes and an inflate ratio of 100 unless configured).

Theory of operation. Envoy inflates each piece of the stream into a chunk-sized buffer,
appending the chunk to the output each time it fills; after each inflate step it checks the
output against ``max_inflate_ratio`` times the piece's length and, past it, counts
``zlib_data_error`` and stops: that piece yields what it had (whole chunks) and the rest of it
is dropped, the stream going on with the next piece. A zlib error also counts (by its code)
and stops the stream for good: the bytes decoded before it go on, every later piece yields
nothing and counts again. Bytes after the end of the gzip stream are ignored.

legatus steps the same way with ``decompressobj().decompress(data, chunk_size)``: zlib through
Python inflates each such call into one buffer of ``chunk_size`` (up to 32768 bytes), so
output, ratio stops and where an error is found fall as in Envoy. Python drops what a failing
call decoded, so on an error the failing step is done again, from a copy of the stream taken
before the piece, over the longest prefix of its input that decodes: the bytes Envoy passes
on. Memory per stream: zlib's state and window, and at most a piece's share of output.

A chunk above 32768 bytes is inflated by Python in several calls, which moves where a distance
reaching before ``window_bits`` is found (Envoy finds it later, within its one buffer): with
``window_bits`` under 15 such a ``chunk_size`` is refused.
"""

from __future__ import annotations

import re
import zlib

from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported
from legatus.extensions.compression.common import wrapped
from legatus.extensions.compression.decompression import DecompressorFactory
from legatus.registry import Category, Registry, extension
from legatus.stats.store import StatSet, counter

NAME = "envoy.compression.gzip.decompressor"
CONFIG_TYPE = "envoy.extensions.compression.gzip.decompressor.v3.Gzip"
_SUPPORTED = ("window_bits", "chunk_size", "max_inflate_ratio")
_GZIP_HEADER = 16  # added to the window bits: a gzip wrapper, not zlib's
_MAX_ONE_CALL = 32768  # CPython inflates up to this much output in one zlib call
_ERROR_CODE = re.compile(r"Error (-?\d+)")


class ZlibStats(StatSet):
    """``<filter prefix>decompressor_library.*``, created with the first decompressor."""

    zlib_errno = counter()
    zlib_stream_error = counter()
    zlib_data_error = counter()
    zlib_mem_error = counter()
    zlib_buf_error = counter()
    zlib_version_error = counter()


def _error_stat(stats: ZlibStats, error: zlib.error):
    """The counter of a zlib error's code (Z_DATA_ERROR when the message has none)."""
    match = _ERROR_CODE.search(str(error))
    code = int(match.group(1)) if match else zlib.Z_DATA_ERROR
    return {
        -1: stats.zlib_errno, -2: stats.zlib_stream_error, -4: stats.zlib_mem_error,
        -5: stats.zlib_buf_error, -6: stats.zlib_version_error,
    }.get(code, stats.zlib_data_error)  # fmt: skip


class GzipDecompressor:
    __slots__ = ("_chunk", "_error", "_inflate", "_ratio", "_stats")

    def __init__(self, wbits: int, chunk: int, ratio: int, stats: ZlibStats) -> None:
        self._inflate = zlib.decompressobj(wbits)
        self._chunk = chunk
        self._ratio = ratio
        self._stats = stats
        self._error = None  # the counter of the error that stopped the stream

    def decompress(self, data: bytes) -> bytes:
        if not data:
            return b""
        if self._error is not None:
            self._error.inc()  # zlib answers every later piece with the same error
            return b""
        inflate = self._inflate
        if inflate.eof:
            return b""
        before = inflate.copy()
        chunk = self._chunk
        limit = self._ratio * len(data)
        out = []
        total = 0
        tail = data
        while True:
            try:
                piece = inflate.decompress(tail, chunk)
            except zlib.error as e:
                self._error = _error_stat(self._stats, e)
                self._error.inc()
                out.append(self._decoded_before_error(before, data, len(out), tail))
                return b"".join(out)
            out.append(piece)
            if len(piece) < chunk:
                return b"".join(out)
            total += chunk
            if total > limit:
                # Past max_inflate_ratio: Envoy counts a data error and drops the rest.
                self._stats.zlib_data_error.inc()
                return b"".join(out)
            tail = inflate.unconsumed_tail

    def _decoded_before_error(self, before, data: bytes, steps: int, tail: bytes) -> bytes:
        """What the failing step (the one after ``steps`` whole chunks of ``data``, fed
        ``tail``) decoded before zlib's error: the output of the longest prefix of ``tail``
        that decodes in that step, the stream rebuilt from ``before`` (as it was before
        ``data``)."""
        chunk = self._chunk
        inflate = before.copy()
        rest = data
        for _ in range(steps):
            inflate.decompress(rest, chunk)
            rest = inflate.unconsumed_tail
        good, bad = 0, len(tail)
        decoded = b""
        while bad - good > 1:
            middle = (good + bad) // 2
            try:
                out = inflate.copy().decompress(tail[:middle], chunk)
            except zlib.error:
                bad = middle
            else:
                good, decoded = middle, out
        return decoded


def _factory(proto, context, path: str) -> DecompressorFactory:
    check_supported(proto, _SUPPORTED, path, "Gzip")
    window_bits = wrapped(proto, "window_bits", 15, path, 9, 15)
    chunk = wrapped(proto, "chunk_size", 4096, path, 4096, 65536)
    ratio = wrapped(proto, "max_inflate_ratio", 100, path, 1, 1032)
    if chunk > _MAX_ONE_CALL and window_bits < 15:
        raise ConfigError(
            join_path(path, "chunk_size"),
            f"chunk_size above {_MAX_ONE_CALL} with window_bits below 15 is not supported by "
            "legatus yet (where an out-of-window distance is found would differ from Envoy)",
        )
    wbits = window_bits + _GZIP_HEADER
    library_stats: list[ZlibStats] = []  # made with the first decompressor, as in Envoy

    def create(scope) -> GzipDecompressor:
        if not library_stats:
            library_stats.append(ZlibStats(scope))
        return GzipDecompressor(wbits, chunk, ratio, library_stats[0])

    return DecompressorFactory(content_encoding="gzip", stats_prefix="gzip.", create=create)


def register(registry: Registry) -> None:
    registry.register(extension(Category.DECOMPRESSOR, NAME, CONFIG_TYPE, _factory))
