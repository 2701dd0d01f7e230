"""``envoy.access_loggers.file``: entries formatted into a file (FileAccessLog).

The format is ``log_format`` (a SubstitutionFormatString), or one of the deprecated fields
Envoy 1.40 still accepts: ``format`` (a text format; empty means the default),
``json_format`` and ``typed_json_format`` (both rendered typed in 1.40), or Envoy's
default format when none is set. Files are shared per path through the process's
AccessLogManager. In validate mode no file is opened, but a path Envoy could not open
(missing directory, no permission) is the same start-up error.
"""

from __future__ import annotations

from legatus.access_log.formatter import (
    DEFAULT_FORMAT,
    LogFormatter,
    compile_format,
    compile_json,
    compile_substitution_format,
)
from legatus.access_log.manager import AccessLogFile, check_openable, open_error
from legatus.config.errors import ConfigError, join_path
from legatus.config.supported import check_supported
from legatus.registry import Category, Extension, Registry

NAME = "envoy.access_loggers.file"
CONFIG_TYPE = "envoy.extensions.access_loggers.file.v3.FileAccessLog"
_SUPPORTED = ("path", "format", "json_format", "typed_json_format", "log_format")


class FileAccessLogger:
    """Formats each entry and hands it to a shared, buffered AccessLogFile."""

    __slots__ = ("file", "formatter")

    def __init__(self, formatter: LogFormatter, file: AccessLogFile | None) -> None:
        self.formatter = formatter
        self.file = file  # None in validate mode

    def log(
        self, info, request_headers=None, response_headers=None, response_trailers=None
    ) -> None:
        if self.file is not None:
            self.file.write(
                self.formatter.format(info, request_headers, response_headers, response_trailers)
            )


def open_log_file(file_path: str, context, path: str) -> AccessLogFile | None:
    """The shared file for ``file_path``; in validate mode only check it could be opened."""
    try:
        if context.loop is None:
            check_openable(file_path)
            return None
        if context.access_log_manager is None:
            raise ConfigError(path, "access logs need an AccessLogManager in the context")
        return context.access_log_manager.open(file_path)
    except OSError as e:
        raise ConfigError(path, open_error(file_path, e)) from None


def formatter_for(proto, path: str) -> LogFormatter:
    """The formatter of a FileAccessLog / Stdout / StderrAccessLog's format oneof."""
    which = proto.WhichOneof("access_log_format")
    if which is None:
        return compile_format(DEFAULT_FORMAT, path)
    if which == "log_format":
        return compile_substitution_format(proto.log_format, join_path(path, which))
    if which == "format":
        return compile_format(proto.format or DEFAULT_FORMAT, join_path(path, which))
    return compile_json(getattr(proto, which), join_path(path, which))


def _factory(proto, context, path: str) -> FileAccessLogger:
    check_supported(proto, _SUPPORTED, path, "FileAccessLog")
    formatter = formatter_for(proto, path)
    return FileAccessLogger(formatter, open_log_file(proto.path, context, join_path(path, "path")))


def register(registry: Registry) -> None:
    registry.register(
        Extension(
            category=Category.ACCESS_LOGGER,
            name=NAME,
            config_types=(CONFIG_TYPE,),
            factory=_factory,
        )
    )
