"""Refusing configuration legatus does not act on yet, by name.

A set field that a component does not implement must fail loudly, never be
ignored. Each compiled message type lists the fields it honours; any other
field that is set is an error naming its path. As features land, fields move
into the allow lists.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.message import Message

from legatus.config.errors import ConfigError, join_path


def check_supported(
    message: Message, supported: Iterable[str], path: str, what: str | None = None
) -> None:
    """Raise ConfigError for the first set field of ``message`` not in ``supported``."""
    allowed = supported if isinstance(supported, frozenset | set) else frozenset(supported)
    for field, _ in message.ListFields():
        if field.name not in allowed:
            kind = what or message.DESCRIPTOR.full_name
            raise ConfigError(
                join_path(path, field.name),
                f"field '{field.name}' of {kind} is not supported by legatus yet",
            )
