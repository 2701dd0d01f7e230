"""``envoy.config.core.v3.DataSource``: bytes from a file, inline bytes or an inline string."""

from __future__ import annotations

import os

from legatus.config.errors import ConfigError


def read_data_source(source, path: str) -> bytes:
    which = source.WhichOneof("specifier")
    if which == "filename":
        try:
            with open(source.filename, "rb") as f:
                return f.read()
        except OSError as e:
            raise ConfigError(
                f"{path}.filename", f"Invalid path: {source.filename} ({e.strerror})"
            ) from None
    if which == "inline_bytes":
        return source.inline_bytes
    if which == "inline_string":
        return source.inline_string.encode()
    if which == "environment_variable":
        value = os.environ.get(source.environment_variable)
        if value is None:
            raise ConfigError(
                f"{path}.environment_variable",
                f"Environment variable doesn't exist: {source.environment_variable}",
            )
        return value.encode()
    return b""
