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


def resolve_library(proto, field: str, category, context, path: str):
    """The compiled library of a filter's ``compressor_library`` / ``decompressor_library``
    (a TypedExtensionConfig naming one ``category`` extension): its factory's result, and the
    name the config gave it. Both HTTP filters choose their library this way."""
    from legatus.config.supported import check_supported
    from legatus.config.validate import validate_message

    lpath = join_path(path, field)
    if not proto.HasField(field):
        raise ConfigError(lpath, "value is required")
    library = getattr(proto, field)
    check_supported(library, ("name", "typed_config"), lpath, "TypedExtensionConfig")
    extension, config = context.registry.resolve(
        category,
        name=library.name,
        typed_config=library.typed_config if library.HasField("typed_config") else None,
        path=lpath,
    )
    tpath = join_path(lpath, "typed_config")
    errors = validate_message(config, tpath)
    if errors:
        raise errors[0]
    return extension.factory(config, context, tpath), library.name
