"""``/init_dump``: the init targets not ready yet, as Envoy 1.40 lists them.

Envoy lists the unready targets of its listeners' init managers: a listener warming until
the RDS route configurations of its HTTP connection managers answer shows as
``init manager Listener-local-init-manager <name> <hash>`` with one
``shared target RdsRouteConfigSubscription RDS init <route_config>`` per route
configuration still awaited. Nothing unready (or a ``mask`` other than ``listener``): ``{}``.
The ``<hash>`` is legatus's own hash of the listener (xxHash64 of its serialization); Envoy's
is computed otherwise, so the two numbers differ for the same listener.
"""

from __future__ import annotations

import json
from typing import Any

from legatus.server.admin.response import AdminResponse, Query, json_body

__all__ = ["handle_init_dump"]


def handle_init_dump(context: Any, query: Query) -> AdminResponse:
    mask = query.get("mask", "")
    dumps = [] if mask not in ("", "listener") else context.unready_init_targets()
    if not dumps:
        return json_body("{}\n")
    out = {
        "unready_targets_dumps": [
            {"name": name, "target_names": list(targets)} for name, targets in dumps
        ]
    }
    return json_body(json.dumps(out, indent=1) + "\n")
