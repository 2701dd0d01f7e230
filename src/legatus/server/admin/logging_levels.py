"""``POST /logging``: show or change log levels, with Envoy 1.40's answers.

One parameter at a time (more -> ``invalid number of parameters``):
``?level=<l>`` sets every logger, ``?<logger>=<l>`` one, ``?paths=a:l1,b:l2``
several; an empty level changes nothing. Levels are Envoy's spellings only
(``warn`` and ``DEBUG`` are refused). ``?group=`` needs fine-grain logging,
which legatus (like Envoy by default) does not have. Every answer ends with the
list of active loggers; errors are 400 with the usage text first.
"""

from __future__ import annotations

from typing import Any

from legatus.server.admin.response import AdminResponse, Query, text
from legatus.server.logging import LEVEL_NAMES, render_logging_error, render_logging_levels

_LEVELS = frozenset(LEVEL_NAMES)


def handle_logging(context: Any, query: Query) -> AdminResponse:
    sink = context.log_sink
    error = _apply(sink, query)
    if error is not None:
        return text(render_logging_error(error, sink.levels()), 400)
    levels = sink.levels()
    if len(query) and hasattr(context, "set_log_levels"):
        context.set_log_levels(levels)  # the workers log at the same levels
    return text(render_logging_levels(levels))


def _apply(sink: Any, query: Query) -> str | None:
    """Change levels as asked; the error text if the request is refused."""
    if len(query) == 0:
        return None
    if len(query) > 1:
        return "invalid number of parameters"
    ((name, value),) = query
    if name == "group":
        return "group parameter requires fine-grain logging to be enabled"
    known = sink.levels()
    if name == "paths":
        changes = []
        for item in value.split(","):
            logger, sep, level = item.partition(":")
            if not sep or not logger or not level:
                return "empty logger name or empty logger level"
            if level not in _LEVELS:
                return "unknown logger level"
            if logger not in known:
                return "unknown logger name"
            changes.append((logger, level))
        for logger, level in changes:
            sink.set_component_level(logger, level)
        return None
    if name != "level" and name not in known:
        return "unknown logger name"
    if value and value not in _LEVELS:
        return "unknown logger level"
    if not value:
        return None
    if name == "level":
        sink.set_level(value)
    else:
        sink.set_component_level(name, value)
    return None
