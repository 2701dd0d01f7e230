"""``POST /drain_listeners``: drain the server's listeners, as Envoy 1.40's admin does.

``graceful``: the listeners keep accepting while the drain sequence lasts (--drain-time-s) and
stop at its end; without it they stop at once. Either way their connections drain as
--drain-strategy says and stay open (nothing closes them when the listeners stop).
``skip_exit``: drain the connections but never stop the listeners. ``inboundonly``: only the
listeners of ``traffic_direction: INBOUND``. Always ``OK``; a graceful drain already
running for the direction is left alone.
"""

from __future__ import annotations

from typing import Any

from legatus.server.admin.response import AdminResponse, Query, text

PARAMS = (
    (
        "graceful",
        "When draining listeners, enter a graceful drain period prior to closing listeners. "
        "This behaviour and duration is configurable via server options or CLI",
    ),
    (
        "skip_exit",
        "When draining listeners, drain the connections but never stop the listeners. The "
        "graceful parameter has no effect when this is set, since the drain period only delays "
        "stopping the listeners",
    ),
    (
        "inboundonly",
        "Drains all inbound listeners. traffic_direction field in "
        "envoy_v3_api_msg_config.listener.v3.Listener is used to determine whether a listener "
        "is inbound or outbound.",
    ),
)


def handle_drain_listeners(context: Any, query: Query) -> AdminResponse:
    context.drain_listeners(
        graceful="graceful" in query,
        inbound_only="inboundonly" in query,
        skip_exit="skip_exit" in query,
    )
    return text("OK\n")
