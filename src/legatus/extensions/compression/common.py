"""What a compression library extension compiles to, and helpers its factories share.

A library's factory turns its config proto into a ``CompressorFactory``: the content coding it
produces (``gzip``, ``br``, ``zstd``), the part it adds to the compressor filter's stat prefix
(``gzip.``...) and ``create()``, which makes one ``Compressor`` per compressed stream.

A ``Compressor`` is Envoy's ``Compression::Compressor``: ``compress(data)`` returns what the
library has for ``data`` after a flush (Envoy's ``State::Flush``: the receiver can decode
everything sent so far), and ``finish(data)`` ends the stream (``State::Finish``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from legatus.config.errors import ConfigError, join_path


class Compressor(Protocol):
    def compress(self, data: bytes) -> bytes:
        """Compress ``data`` and flush: the output decodes to everything given so far."""

    def finish(self, data: bytes) -> bytes:
        """Compress ``data`` (may be empty) and end the compressed stream."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CompressorFactory:
    content_encoding: str
    stats_prefix: str
    create: Callable[[], Compressor]


def wrapped(proto, field: str, default: int, path: str, low: int, high: int) -> int:
    """A UInt32Value field: its value in [low, high], or ``default`` when unset."""
    if not proto.HasField(field):
        return default
    value = getattr(proto, field).value
    if not low <= value <= high:
        raise ConfigError(
            join_path(path, field), f"value must be inside range [{low}, {high}], got {value}"
        )
    return value
