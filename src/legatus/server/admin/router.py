"""The admin endpoint table and ``handle()``, the one entry point the listener calls.

``handle(context, method, path_and_query, body)`` is sans-I/O apart from
awaiting ``context.refresh_stats()`` for the endpoints that show worker stats;
handlers themselves are plain functions ``(context, query) -> AdminResponse``.

Routing follows Envoy 1.40: the path before ``?`` must equal an endpoint's
path exactly (``/stats/`` and ``/STATS`` are unknown); an unknown path is 404
with ``invalid path. `` and the help text; a mutating endpoint answers any
method but POST with 405 ``Method <M> not allowed, POST required.`` (no
newline); other endpoints accept any method. A POST without query parameters takes
them from its form-encoded body, as Envoy's admin UI relies on (with query
parameters, Envoy ignores the body).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from legatus.server.admin import (
    certs,
    clusters,
    config_dump,
    drain_listeners,
    init_dump,
    listeners,
    logging_levels,
    memory,
    runtime,
    server_control,
    server_info,
    stats,
)
from legatus.server.admin.response import HTML, AdminResponse, Query, respond, text
from legatus.server.logging import get_logger

Handler = Callable[[Any, Query], AdminResponse]
_log = get_logger("admin")

_STATS_FILTER = "Regular expression (Google re2) for filtering stats"
_USED_ONLY = "Only include stats that have been written by system since restart"


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    path: str
    help: str
    handler: Handler
    mutates: bool = False
    refresh_stats: bool = False  # pull the workers' stats first
    params: tuple[tuple[str, str], ...] = ()


# fmt: off
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(path="/", help="Admin home page", handler=lambda c, q: home_page()),
    Endpoint(
        path="/clusters",
        help="upstream cluster status",
        handler=clusters.handle_clusters,
        refresh_stats=True,
        params=(("filter", "Regular expression (Google re2) for filtering clusters by name"),),
    ),
    Endpoint(path="/certs", help="print certs on machine", handler=certs.handle_certs),
    Endpoint(
        path="/config_dump",
        help="dump current Envoy configs",
        handler=config_dump.handle_config_dump,
        params=(
            ("resource", "The resource to dump"),
            ("mask", "The mask to apply. When both resource and mask are specified, the mask is "
             "applied to every element in the desired repeated field so that only a subset of "
             "fields are returned. The mask is parsed as a Protobuf::FieldMask"),
            ("name_regex", "Dump only the currently loaded configurations whose names match the "
             "specified regex. Can be used with both resource and mask query parameters."),
            ("include_eds", "Dump currently loaded configuration including EDS. See the response "
             "definition for more information"),
        ),
    ),
    Endpoint(
        path="/drain_listeners",
        help="drain listeners",
        handler=drain_listeners.handle_drain_listeners,
        mutates=True,
        params=drain_listeners.PARAMS,
    ),
    Endpoint(
        path="/healthcheck/fail",
        help="cause the server to fail health checks",
        handler=server_control.handle_healthcheck_fail,
        mutates=True,
    ),
    Endpoint(
        path="/healthcheck/ok",
        help="cause the server to pass health checks",
        handler=server_control.handle_healthcheck_ok,
        mutates=True,
    ),
    Endpoint(path="/help", help="print out list of admin commands",
             handler=lambda c, q: text(help_text())),
    Endpoint(
        path="/hot_restart_version",
        help="print the hot restart compatibility version",
        handler=server_info.handle_hot_restart_version,
    ),
    Endpoint(
        path="/init_dump",
        help="dump current Envoy init manager information (experimental)",
        handler=init_dump.handle_init_dump,
        params=(("mask", "The desired component to dump unready targets. The mask is parsed as "
                 "a Protobuf::FieldMask. For example, get the unready targets of all listeners "
                 "with /init_dump?mask=listener`"),),
    ),
    Endpoint(
        path="/listeners",
        help="print listener info",
        handler=listeners.handle_listeners,
        params=(("format", "File format to use; One of (text, json)"),),
    ),
    Endpoint(
        path="/logging",
        help="query/change logging levels",
        handler=logging_levels.handle_logging,
        mutates=True,
        params=(
            ("paths", "Change multiple logging levels by setting to "
             "<logger_name1>:<desired_level1>,<logger_name2>:<desired_level2>."),
            ("group", "Change given logger group to desired level, set to "
             "<logger_group_name>:<desired_level>. logger_group_name must be a logger name."),
            ("level", "desired logging level, this will change all loggers's level; One of (, "
             "trace, debug, info, warning, error, critical, off)"),
        ),
    ),
    Endpoint(path="/memory", help="print current allocation/heap usage",
             handler=memory.handle_memory),
    Endpoint(path="/quitquitquit", help="exit the server",
             handler=server_control.handle_quitquitquit, mutates=True),
    Endpoint(
        path="/ready",
        help="print server state, return 200 if LIVE, otherwise return 503",
        handler=server_info.handle_ready,
    ),
    Endpoint(path="/reopen_logs", help="reopen access logs",
             handler=server_control.handle_reopen_logs, mutates=True),
    Endpoint(path="/reset_counters", help="reset all counters to zero",
             handler=server_control.handle_reset_counters, mutates=True),
    Endpoint(path="/runtime", help="print runtime values", handler=runtime.handle_runtime),
    Endpoint(
        path="/runtime_modify",
        help="Adds or modifies runtime values as passed in query parameters. To delete a "
        "previously added key, use an empty string as the value. Note that deletion only "
        "applies to overrides added via this endpoint; values loaded from disk can be "
        "modified via override but not deleted. E.g. ?key1=value1&key2=value2...",
        handler=runtime.handle_runtime_modify,
        mutates=True,
    ),
    Endpoint(
        path="/server_info",
        help="print server version/status information",
        handler=server_info.handle_server_info,
    ),
    Endpoint(
        path="/stats",
        help="print server stats",
        handler=stats.handle_stats,
        refresh_stats=True,
        params=(
            ("usedonly", _USED_ONLY),
            ("filter", _STATS_FILTER),
            ("invert_filter", "Invert the filter regex"),
            ("format", "Format to use; One of (html, text, json)"),
            ("type", "Stat types to include.; One of (All, Counters, Histograms, Gauges, "
             "TextReadouts)"),
            ("histogram_buckets", "Histogram bucket display mode; One of (cumulative, disjoint, "
             "detailed, summary)"),
        ),
    ),
    Endpoint(
        path="/stats/prometheus",
        help="print server stats in prometheus format",
        handler=stats.handle_prometheus,
        refresh_stats=True,
        params=(
            ("usedonly", _USED_ONLY),
            ("text_readouts", "Render text_readouts as new gaugues with value 0 (increases "
             "Prometheus data size)"),
            ("filter", _STATS_FILTER),
            ("invert_filter", "Invert the filter regex"),
            ("histogram_buckets", "Histogram bucket display mode; One of (cumulative, summary)"),
        ),
    ),
)
# fmt: on
_BY_PATH = {e.path: e for e in ENDPOINTS}
_FORM = "application/x-www-form-urlencoded"


async def handle(
    context: Any,
    method: str,
    path_and_query: str,
    body: bytes = b"",
    *,
    content_type: str = "",
) -> AdminResponse:
    """Answer one admin request; never raises (a failing handler answers 500)."""
    path, _, query_string = path_and_query.partition("?")
    endpoint = _BY_PATH.get(path)
    if endpoint is None:
        return text("invalid path. " + help_text(), 404)
    if endpoint.mutates and method != "POST":
        return text(f"Method {method} not allowed, POST required.", 405)
    query = Query.parse(query_string)
    if (
        not len(query)
        and method == "POST"
        and body
        and content_type.split(";")[0].strip().lower() == _FORM
    ):
        query = Query.parse(body.decode("utf-8", "replace"))
    try:
        if endpoint.refresh_stats:
            await context.refresh_stats()
        return endpoint.handler(context, query)
    except Exception as exc:  # an admin bug must not take the listener down
        _log.exception("admin handler for %s failed", path)
        return text(f"internal error: {type(exc).__name__}: {exc}\n", 500)


def help_text() -> str:
    """``/help``, in Envoy's shape, listing only the endpoints legatus serves."""
    lines = ["admin commands are:\n"]
    for e in ENDPOINTS:
        post = " (POST)" if e.mutates else ""
        lines.append(f"  {e.path}{post}: {e.help}\n")
        lines.extend(f"      {name}: {doc}\n" for name, doc in e.params)
    return "".join(lines)


def home_page() -> AdminResponse:
    """A plain HTML index: GET endpoints as links, POST ones as buttons in forms."""
    rows = []
    for e in ENDPOINTS[1:]:
        name = e.path[1:]
        if e.mutates:
            cell = f"<form action='{name}' method='post'><button>{name}</button></form>"
        else:
            cell = f"<a href='{name}'>{name}</a>"
        rows.append(f"<tr><td>{cell}</td><td>{e.help}</td></tr>\n")
    page = (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<title>legatus admin</title>\n</head>\n"
        "<body>\n<table>\n<thead><tr><th>Command</th><th>Description</th></tr></thead>\n"
        "<tbody>\n" + "".join(rows) + "</tbody>\n</table>\n</body>\n</html>\n"
    )
    return respond(page, content_type=HTML)
