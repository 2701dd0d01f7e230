"""The POST-only endpoints that act on the server: health checks, exit, counters, logs.

Each answers ``OK\n`` with 200, as Envoy 1.40 does. The router refuses any
other method with 405 ``Method GET not allowed, POST required.``
"""

from __future__ import annotations

import asyncio
from typing import Any

from legatus.server.admin.response import AdminResponse, Query, text


def handle_healthcheck_fail(context: Any, query: Query) -> AdminResponse:
    context.set_healthcheck_failed(True)
    return text("OK\n")


def handle_healthcheck_ok(context: Any, query: Query) -> AdminResponse:
    context.set_healthcheck_failed(False)
    return text("OK\n")


def handle_quitquitquit(context: Any, query: Query) -> AdminResponse:
    """Exit as on SIGTERM, after this answer is on its way (the shutdown runs on the
    next loop iteration; the listener writes the response before that)."""
    try:
        asyncio.get_running_loop().call_soon(context.shutdown)
    except RuntimeError:  # no loop (a synchronous caller): shut down right away
        context.shutdown()
    return text("OK\n")


def handle_reset_counters(context: Any, query: Query) -> AdminResponse:
    context.stats.reset_counters()
    return text("OK\n")


def handle_reopen_logs(context: Any, query: Query) -> AdminResponse:
    context.reopen_logs()
    return text("OK\n")
