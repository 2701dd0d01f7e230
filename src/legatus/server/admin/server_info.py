"""``/server_info`` (``envoy.admin.v3.ServerInfo``), ``/ready`` and ``/hot_restart_version``.

Envoy 1.40 prints ServerInfo with every field, zero values included, and one
field xds-protos 1.85 does not have yet (``hot_restart_initializing``), which
is appended so the shape stays Envoy's. The node is the bootstrap's node plus
the user agent Envoy reports; legatus speaks Envoy's API version 1.40.0 and
says so in the version string (``legatus-0.1.0/1.40.0/Clean/RELEASE/OpenSSL``),
whose five slash-separated fields tools already split.

Health-check failure shows as DRAINING, in ``/ready`` and here, as in Envoy.
"""

from __future__ import annotations

import time
from typing import Any

from envoy.admin.v3 import server_info_pb2
from envoy.config.core.v3 import base_pb2
from google.protobuf import duration_pb2

from legatus.server.admin.context import ServerState
from legatus.server.admin.response import AdminResponse, Query, dumps, json_body, proto_dict, text
from legatus.server.options import BUILD_VERSION, ENVOY_API_VERSION


def state_name(context: Any) -> str:
    """The state Envoy reports: DRAINING while health checks are failed."""
    if context.healthcheck_failed:
        return ServerState.DRAINING.name
    return ServerState(context.state).name


def node(context: Any) -> base_pb2.Node:
    """The bootstrap's node with the user agent Envoy fills in at start-up."""
    out = base_pb2.Node()
    bootstrap = context.bootstrap
    if bootstrap is not None and bootstrap.HasField("node"):
        out.CopyFrom(bootstrap.node)
    out.user_agent_name = "envoy"
    major, minor, patch = (int(x) for x in ENVOY_API_VERSION.split("."))
    build = out.user_agent_build_version
    build.version.major_number, build.version.minor_number, build.version.patch = (
        major,
        minor,
        patch,
    )
    sha, _, status, build_type, ssl = BUILD_VERSION.split("/")
    metadata = {
        "revision.sha": sha,
        "revision.status": status,
        "build.type": build_type,
        "ssl.version": ssl,
    }
    build.metadata.Clear()
    build.metadata.update(metadata)
    return out


def server_info(context: Any, now: float | None = None) -> server_info_pb2.ServerInfo:
    now = time.time() if now is None else now
    uptime = duration_pb2.Duration(seconds=max(0, int(now - context.start_time)))
    return server_info_pb2.ServerInfo(
        version=BUILD_VERSION,
        state=server_info_pb2.ServerInfo.State.Value(state_name(context)),
        uptime_current_epoch=uptime,
        uptime_all_epochs=uptime,  # no hot restart yet: one epoch
        hot_restart_version=context.hot_restart_version,
        command_line_options=context.options.to_proto(),
        node=node(context),
    )


def handle_server_info(context: Any, query: Query) -> AdminResponse:
    message = proto_dict(server_info(context))
    message["hot_restart_initializing"] = False
    return json_body(dumps(message))


def handle_ready(context: Any, query: Query) -> AdminResponse:
    state = state_name(context)
    return text(f"{state}\n", 200 if state == "LIVE" else 503)


def handle_hot_restart_version(context: Any, query: Query) -> AdminResponse:
    return text(context.hot_restart_version)
