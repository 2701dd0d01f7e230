"""``/listeners``: ``name::address`` lines, or ``envoy.admin.v3.Listeners`` with
``?format=json``; any other format prints text, like Envoy 1.40. Addresses are
the bound ones (port 0 resolved)."""

from __future__ import annotations

from typing import Any

from envoy.admin.v3 import listeners_pb2

from legatus.server.admin.clusters import socket_address
from legatus.server.admin.response import AdminResponse, Query, json_body, proto_json, text


def handle_listeners(context: Any, query: Query) -> AdminResponse:
    listeners = context.listeners()
    if query.get("format") == "json":
        out = listeners_pb2.Listeners()
        for listener in listeners:
            status = out.listener_statuses.add(name=listener.name)
            status.local_address.CopyFrom(socket_address(listener.address))
        return json_body(proto_json(out))
    return text("".join(f"{listener.name}::{listener.address}\n" for listener in listeners))
