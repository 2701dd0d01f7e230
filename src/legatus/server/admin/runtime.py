"""``/runtime`` and ``POST /runtime_modify``, with Envoy 1.40's answers.

``/runtime`` is ``{"entries": {key: {"final_value", "layer_values"}}, "layers": [names]}``:
one ``layer_values`` item per layer of the current snapshot in order (``""`` where the layer
lacks the key) and the last non-empty one as ``final_value``. The snapshot's layers are
Envoy's: a disk layer whose directory does not exist is not one of them, an RTDS layer is
(empty until its first update); a key whose value is empty text (an empty file) is listed
with ``""`` everywhere. Envoy prints these objects from a protobuf Struct, whose key order
changes from run to run; legatus sorts the keys.

``/runtime_modify?k1=v1&k2=v2`` sets keys of the admin layer (the first value of a repeated
key wins; an empty value removes the key) and answers ``OK``; without parameters it answers
400 with the usage text. A refusal (no admin layer, a value that is not YAML) is 503 with
the reason, and changes nothing.
"""

from __future__ import annotations

from typing import Any

from legatus.runtime import RuntimeModifyError
from legatus.server.admin.response import AdminResponse, Query, dumps, json_body, text

_USAGE = (
    "usage: /runtime_modify?key1=value1&key2=value2&keyN=valueN\n"
    "       or send the parameters as form values\n"
    "use an empty value to remove a previously added override"
)


def handle_runtime(context: Any, query: Query) -> AdminResponse:
    snapshot = context.runtime.snapshot()
    layers = snapshot.layers
    entries = {}
    for key in sorted({key for layer in layers for key in layer.values}):
        values = []
        for layer in layers:
            entry = layer.values.get(key)
            values.append("" if entry is None else entry.raw)
        final = next((value for value in reversed(values) if value), "")
        entries[key] = {"final_value": final, "layer_values": values}
    return json_body(dumps({"entries": entries, "layers": [layer.name for layer in layers]}))


def handle_runtime_modify(context: Any, query: Query) -> AdminResponse:
    if not len(query):
        return text(_USAGE, 400)
    overrides: dict[str, str] = {}
    for key, value in query:
        overrides.setdefault(key, value)
    try:
        context.modify_runtime(overrides)
    except RuntimeModifyError as e:
        return text(str(e), 503)
    return text("OK\n")
