"""``/runtime`` and ``/runtime_modify`` through the admin router, with Envoy 1.40's answers."""

from __future__ import annotations

import json

from envoy.config.bootstrap.v3 import bootstrap_pb2

from legatus.config.proto_json import parse
from legatus.runtime import Runtime, compile_runtime
from legatus.server.admin.router import handle, help_text

TEXT = "text/plain; charset=UTF-8"
FORM = "application/x-www-form-urlencoded"
USAGE = (
    "usage: /runtime_modify?key1=value1&key2=value2&keyN=valueN\n"
    "       or send the parameters as form values\n"
    "use an empty value to remove a previously added override"
)


class Context:
    """What the two endpoints need of the main process."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.changes: list[dict[str, str]] = []

    def modify_runtime(self, values: dict[str, str]) -> None:
        self.runtime.merge_values(values)
        self.changes.append(values)


def context(layers: list[dict] | None = None) -> Context:
    document = {} if layers is None else {"layered_runtime": {"layers": layers}}
    return Context(compile_runtime(parse(document, bootstrap_pb2.Bootstrap)))


async def call(ctx, path, method="GET", body=b"", content_type=""):
    response = await handle(ctx, method, path, body, content_type=content_type)
    return response.status, response.header("content-type"), response.body.decode()


LAYERS = [
    {"name": "base", "static_layer": {"a": {"b": 1}, "s": "hello"}},
    {"name": "admin", "admin_layer": {}},
    {"name": "over", "static_layer": {"s": "world"}},
]


async def test_runtime_without_layers():
    status, content_type, body = await call(context(), "/runtime")
    assert (status, content_type) == (200, "application/json")
    assert body == '{\n "entries": {},\n "layers": []\n}\n'


async def test_runtime_lists_each_layer_value_and_the_last_non_empty_one():
    ctx = context(LAYERS)
    await call(ctx, "/runtime_modify?a.b=5&new=x", method="POST")
    _, _, body = await call(ctx, "/runtime")
    assert json.loads(body) == {
        "entries": {
            "a.b": {"final_value": "5", "layer_values": ["1", "5", ""]},
            "new": {"final_value": "x", "layer_values": ["", "x", ""]},
            "s": {"final_value": "world", "layer_values": ["hello", "", "world"]},
        },
        "layers": ["base", "admin", "over"],
    }
    assert body.startswith('{\n "entries": {\n  "a.b": {\n   "final_value": "5",\n')


async def test_runtime_modify_answers():
    ctx = context(LAYERS)
    assert await call(ctx, "/runtime_modify") == (
        405,
        TEXT,
        "Method GET not allowed, POST required.",
    )
    assert await call(ctx, "/runtime_modify", method="POST") == (400, TEXT, USAGE)
    assert await call(ctx, "/runtime_modify?k=1&k=2&gone=", method="POST") == (200, TEXT, "OK\n")
    assert ctx.changes == [{"k": "1", "gone": ""}]  # the first value of a key wins
    status, _, body = await call(ctx, "/runtime_modify?bad=%7B", method="POST")
    assert status == 503 and "line 1" in body
    assert ctx.runtime.get_integer("k", 0) == 1


async def test_runtime_modify_without_an_admin_layer():
    assert await call(context(), "/runtime_modify?a=1", method="POST") == (
        503,
        TEXT,
        "No admin layer specified",
    )


async def test_form_values_count_only_without_query_parameters():
    ctx = context(LAYERS)
    assert (await call(ctx, "/runtime_modify", "POST", b"f=1&g=a+b", FORM))[0] == 200
    assert ctx.changes == [{"f": "1", "g": "a+b"}]
    await call(ctx, "/runtime_modify?q=1", "POST", b"ignored=1", FORM)
    assert ctx.changes[-1] == {"q": "1"}
    assert (await call(ctx, "/runtime_modify", "POST", b"f=1", "text/plain"))[0] == 400


def test_help_lists_both_endpoints_as_envoy():
    lines = help_text().splitlines()
    assert "  /runtime: print runtime values" in lines
    assert (
        "  /runtime_modify (POST): Adds or modifies runtime values as passed in query "
        "parameters. To delete a previously added key, use an empty string as the value. Note "
        "that deletion only applies to overrides added via this endpoint; values loaded from "
        "disk can be modified via override but not deleted. E.g. ?key1=value1&key2=value2..."
    ) in lines
    assert lines.index("  /runtime: print runtime values") == (
        lines.index("  /reset_counters (POST): reset all counters to zero") + 1
    )
