"""What a decompression library extension compiles to (Envoy's
``envoy.compression.*.decompressor``, used by the decompressor HTTP filter through
``decompressor_library``).

A library's factory turns its config proto into a ``DecompressorFactory``: the content coding
it decodes (``gzip``), the part it adds to the filter's stat prefix (``gzip.``) and
``create(scope)``, which makes one ``Decompressor`` per decompressed stream, its own stats in
``scope`` (Envoy creates them with the first decompressor, not with the config).

A ``Decompressor`` is Envoy's ``Compression::Decompressor``: ``decompress(data)`` takes the
next piece of the compressed stream and returns what decodes from it, bounded as the library
bounds it (a piece never yields more than its share of ``max_inflate_ratio``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


class Decompressor(Protocol):
    def decompress(self, data: bytes) -> bytes:
        """The bytes ``data`` (the next piece of the stream) decodes to."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DecompressorFactory:
    content_encoding: str
    stats_prefix: str
    create: Callable[[Any], Decompressor]  # (the library's stats scope) -> a Decompressor
