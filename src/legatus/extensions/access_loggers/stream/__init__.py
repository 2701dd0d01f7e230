"""``envoy.access_loggers.stdout`` / ``envoy.access_loggers.stderr`` (StdoutAccessLog,
StderrAccessLog): the file logger writing to file descriptor 1 or 2, with the same
buffering and flush interval as files (as Envoy's stream loggers share its file writer).
"""

from __future__ import annotations

from legatus.config.supported import check_supported
from legatus.extensions.access_loggers.file import FileAccessLogger, formatter_for, open_log_file
from legatus.registry import Category, Extension, Registry

STDOUT_NAME = "envoy.access_loggers.stdout"
STDERR_NAME = "envoy.access_loggers.stderr"
STDOUT_TYPE = "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
STDERR_TYPE = "envoy.extensions.access_loggers.stream.v3.StderrAccessLog"


def _factory_for(device: str, what: str):
    def factory(proto, context, path: str) -> FileAccessLogger:
        check_supported(proto, ("log_format",), path, what)
        return FileAccessLogger(formatter_for(proto, path), open_log_file(device, context, path))

    return factory


def register(registry: Registry) -> None:
    registry.register(
        Extension(
            category=Category.ACCESS_LOGGER,
            name=STDOUT_NAME,
            config_types=(STDOUT_TYPE,),
            factory=_factory_for("/dev/stdout", "StdoutAccessLog"),
        )
    )
    registry.register(
        Extension(
            category=Category.ACCESS_LOGGER,
            name=STDERR_NAME,
            config_types=(STDERR_TYPE,),
            factory=_factory_for("/dev/stderr", "StderrAccessLog"),
        )
    )
