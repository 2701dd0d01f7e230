"""Configuration errors that carry the path of the offending field.

Every rejection of configuration, at start-up or (later) on an xDS update, is a
ConfigError whose ``path`` names the field the way an operator reads their
YAML: ``static_resources.listeners[0].filter_chains[0].filters[0].typed_config``.
"""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration is invalid at ``path`` (empty for the whole document)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(path, message)
        self.path = path
        self.message = message

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def under(self, prefix: str) -> ConfigError:
        """The same error with ``prefix`` put in front of its path."""
        if not prefix:
            return self
        path = join_path(prefix, self.path)
        return ConfigError(path, self.message)


def join_path(prefix: str, suffix: str) -> str:
    """Join two field paths: ``a.b`` + ``c[0]`` -> ``a.b.c[0]``; ``a`` + ``[1]`` -> ``a[1]``."""
    if not prefix:
        return suffix
    if not suffix:
        return prefix
    if suffix.startswith("["):
        return prefix + suffix
    return f"{prefix}.{suffix}"
