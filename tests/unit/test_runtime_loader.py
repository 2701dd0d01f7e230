"""The main process's runtime loader: disk layers read, reloaded on a symlink swap and on an
in-place edit, ``runtime.*`` stats counted as Envoy 1.40 counts them, the layers handed on
whole, and the RTDS layer's owner callbacks."""

from __future__ import annotations

import asyncio
import os

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.service.runtime.v3 import rtds_pb2
from google.protobuf import struct_pb2

from legatus.config.errors import ConfigError
from legatus.config.proto_json import parse
from legatus.config.subscription import ConfigUpdate, DecodedResource, UpdateFailureReason
from legatus.runtime import compile_runtime
from legatus.runtime_loader import RtdsLayerCallbacks, RuntimeLoader, RuntimeStats, open_runtime
from legatus.stats.store import Store

POLL_S = 0.02


def write(base, relative: str, text: str) -> None:
    path = base / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def swap(root, target) -> None:
    new = root.parent / f".{root.name}.new"
    new.symlink_to(target)
    os.replace(new, root)


def bootstrap(layers: list[dict], **document) -> bootstrap_pb2.Bootstrap:
    return parse({"layered_runtime": {"layers": layers}, **document}, bootstrap_pb2.Bootstrap)


def disk(name: str, root, subdirectory: str = "", **more) -> dict:
    spec = {"symlink_root": str(root), "subdirectory": subdirectory, **more}
    return {"name": name, "disk_layer": spec}


ADMIN = {"name": "admin", "admin_layer": {}}


class Harness:
    """A loader over a runtime, its stats, and what it handed on."""

    def __init__(self, runtime) -> None:
        self.store = Store()
        self.sent: list[dict] = []
        self.loader = RuntimeLoader(
            runtime,
            RuntimeStats(self.store.scope("runtime.")),
            on_change=self.sent.append,
            poll_interval=POLL_S,
        )
        self.runtime = runtime

    def stats(self) -> dict[str, int]:
        return {s.name.removeprefix("runtime."): s.value for s in self.store}

    def raw(self) -> dict[str, str]:
        return {key: entry.raw for key, entry in self.runtime.snapshot().values.items()}

    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.runtime.snapshot().layers]


@pytest.fixture
def tree(tmp_path):
    """v1 and v2 trees under ``data``, ``data/current`` pointing at v1."""
    data = tmp_path / "data"
    write(data, "v1/envoy/k", "1")
    write(data, "v1/envoy/a/b", "v1")
    write(data, "v1/override/web/k", "100")
    write(data, "v2/envoy/k", "2")
    (data / "current").symlink_to(data / "v1")
    return data


def test_loads_read_the_disk_layers_and_count_as_envoy(tree):
    h = Harness(
        compile_runtime(
            bootstrap(
                [{"name": "base", "static_layer": {"k": 0, "s": "static"}},
                 disk("disk", tree / "current", "envoy"),
                 disk("missing", tree / "current", "nope"), ADMIN]
            )
        )
    )  # fmt: skip
    h.loader.load()
    h.loader.load()  # Envoy's two loads at start-up
    assert h.layer_names() == ["base", "disk", "admin"]  # a missing directory is no layer
    assert h.raw() == {"k": "1", "a.b": "v1", "s": "static"}
    assert h.stats() == {
        "load_error": 0,
        "load_success": 2,
        "override_dir_exists": 0,  # Envoy: only when more than one disk layer was read
        "override_dir_not_exists": 2,
        "deprecated_feature_use": 0,
        "admin_overrides_active": 0,
        "deprecated_feature_seen_since_process_start": 0,
        "num_keys": 3,
        "num_layers": 3,
    }
    assert h.sent[-1] == h.runtime.dynamic_layers()
    assert h.sent[-1][2] is None and h.sent[-1][3] == {}


def test_two_disk_layers_read_count_override_dir_exists(tree):
    h = Harness(
        compile_runtime(
            bootstrap(
                [disk("envoy", tree / "current", "envoy"),
                 disk("override", tree / "current", "override", append_service_cluster=True)],
                node={"cluster": "web"},
            )
        )
    )  # fmt: skip
    h.loader.load()
    assert h.raw() == {"k": "100", "a.b": "v1"}
    assert (h.stats()["override_dir_exists"], h.stats()["override_dir_not_exists"]) == (1, 0)


def test_a_bad_tree_counts_an_error_and_keeps_the_last_good_values(tree):
    h = Harness(compile_runtime(bootstrap([disk("disk", tree / "current", "envoy")])))
    h.loader.load()
    before = h.runtime.snapshot()
    write(tree, "v3/envoy/k", "3")
    write(tree, "v3/envoy/bad", "{")
    swap(tree / "current", tree / "v3")
    h.loader.load()
    assert h.raw() == {"k": "1", "a.b": "v1"}
    assert h.runtime.snapshot() is not before  # a new snapshot all the same, as Envoy
    assert (h.stats()["load_success"], h.stats()["load_error"]) == (1, 1)
    (tree / "v3/envoy/bad").write_text("fixed")
    h.loader.load()
    assert h.raw() == {"k": "3", "bad": "fixed"}
    assert (h.stats()["load_success"], h.stats()["load_error"]) == (2, 1)


def test_a_bad_tree_at_the_first_load_is_no_layer(tree):
    write(tree, "v1/envoy/bad", "{")
    h = Harness(compile_runtime(bootstrap([disk("disk", tree / "current", "envoy"), ADMIN])))
    h.loader.load()
    assert h.layer_names() == ["admin"]
    assert h.stats()["load_error"] == 1 and h.stats()["num_layers"] == 1


def test_runtime_modify_reloads_the_disk_too(tree):
    h = Harness(compile_runtime(bootstrap([disk("disk", tree / "current", "envoy"), ADMIN])))
    h.loader.load()
    write(tree, "v1/envoy/k", "11")  # Envoy re-reads every disk layer for any new snapshot
    h.loader.merge_values({"x": "1"})
    assert h.raw() == {"k": "11", "a.b": "v1", "x": "1"}
    assert h.stats()["admin_overrides_active"] == 1 and h.stats()["load_success"] == 2
    with pytest.raises(Exception, match="line 1"):
        h.loader.merge_values({"x": "{"})
    assert h.stats()["load_success"] == 2 and h.raw()["x"] == "1"
    h.loader.merge_values({"x": ""})
    assert h.stats()["admin_overrides_active"] == 0


async def wait_until(predicate, what: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(POLL_S / 2)


async def test_a_symlink_swap_reloads_once_per_disk_layer_under_the_root(tree):
    h = Harness(
        compile_runtime(
            bootstrap([disk("envoy", tree / "current", "envoy"),
                       disk("again", tree / "current", "envoy"), ADMIN])
        )
    )  # fmt: skip
    h.loader.load()
    h.loader.start(asyncio.get_running_loop())
    try:
        await asyncio.sleep(POLL_S * 3)
        assert h.stats()["load_success"] == 1  # nothing changed: no reload
        swap(tree / "current", tree / "v2")
        await wait_until(lambda: h.raw().get("k") == "2", "the swap read")
        await asyncio.sleep(POLL_S * 3)
        assert h.stats()["load_success"] == 3  # one per disk layer watching the root
        assert h.raw() == {"k": "2"}
        assert h.sent[-1][0] == h.sent[-1][1] == {"k": h.runtime.snapshot().get("k")}
    finally:
        h.loader.stop()


async def test_an_in_place_edit_reloads_once_settled(tree):
    h = Harness(compile_runtime(bootstrap([disk("disk", tree / "current", "envoy")])))
    h.loader.load()
    h.loader.start(asyncio.get_running_loop())
    try:
        write(tree, "v1/envoy/k", "42")
        write(tree, "v1/envoy/new/key", "x")
        await wait_until(lambda: h.raw().get("new.key") == "x", "the edit read")
        assert h.raw()["k"] == "42"
        await asyncio.sleep(POLL_S * 4)
        assert h.stats()["load_success"] == 2  # one reload for the settled change
        (tree / "v1/envoy/new/key").unlink()
        await wait_until(lambda: "new.key" not in h.raw(), "the removal read")
    finally:
        h.loader.stop()


async def test_a_layer_directory_that_appears_is_read(tree):
    h = Harness(compile_runtime(bootstrap([disk("disk", tree / "current", "later"), ADMIN])))
    h.loader.load()
    assert h.layer_names() == ["admin"]
    h.loader.start(asyncio.get_running_loop())
    try:
        write(tree, "v1/later/k", "5")
        await wait_until(lambda: h.layer_names() == ["disk", "admin"], "the new layer")
        assert h.raw() == {"k": "5"}
    finally:
        h.loader.stop()


def test_start_without_disk_layers_watches_nothing():
    h = Harness(compile_runtime(bootstrap([ADMIN])))
    loop = asyncio.new_event_loop()
    try:
        h.loader.start(loop)
        assert not asyncio.all_tasks(loop)
        h.loader.stop()
    finally:
        loop.close()


def test_open_runtime_checks_each_root_can_be_watched(tmp_path):
    ok = bootstrap([disk("d", tmp_path / "current")])
    assert open_runtime(ok).disk_layers()[0].symlink_root == f"{tmp_path}/current"
    with pytest.raises(ConfigError) as e:
        open_runtime(bootstrap([ADMIN, disk("d", tmp_path / "nope" / "current")]))
    assert e.value.path == "layered_runtime.layers[1].disk_layer.symlink_root"
    assert e.value.message == (
        f"unable to add filesystem watch for file {tmp_path}/nope/current: "
        "No such file or directory"
    )


# RTDS -------------------------------------------------------------------------------------------


def rtds_harness() -> tuple[Harness, RtdsLayerCallbacks, list[str]]:
    layer = {
        "name": "rt",
        "rtds_layer": {"name": "res", "rtds_config": {"path_config_source": {"path": "/x"}}},
    }
    runtime = compile_runtime(
        bootstrap([{"name": "base", "static_layer": {"k": "static"}}, layer, ADMIN]),
        rtds_supported=True,
    )
    h = Harness(runtime)
    ready: list[str] = []
    (config,) = runtime.rtds_layers()
    return h, RtdsLayerCallbacks(h.loader, config, on_ready=lambda: ready.append("ready")), ready


def resource(name: str, **values) -> DecodedResource:
    layer = struct_pb2.Struct()
    layer.update(values)
    return DecodedResource(name=name, resource=rtds_pb2.Runtime(name=name, layer=layer))


def update(added=(), removed=(), sotw=True) -> ConfigUpdate:
    return ConfigUpdate(
        type_url="type.googleapis.com/envoy.service.runtime.v3.Runtime",
        added=list(added),
        removed=list(removed),
        version_info="1",
        state_of_the_world=sotw,
    )


def test_an_rtds_update_sets_the_layer_and_loads_a_snapshot():
    h, callbacks, ready = rtds_harness()
    h.loader.load()
    assert h.layer_names() == ["base", "rt", "admin"] and h.raw() == {"k": "static"}
    callbacks.on_config_update(update([resource("res", k={"x": 5}, f="y")]))
    assert h.raw() == {"k": "static", "k.x": "5", "f": "y"}
    assert h.stats()["load_success"] == 2 and ready == ["ready"]
    assert h.sent[-1][1] == {key: h.runtime.snapshot().get(key) for key in ("k.x", "f")}
    callbacks.on_config_update(update(removed=["res"], sotw=False))  # delta: removed
    assert h.raw() == {"k": "static"} and ready == ["ready"]


@pytest.mark.parametrize(
    ("the_update", "message"),
    [
        (update([]), "Unexpected RTDS resource length, number of added recources 0, "
                     "number of removed recources 0"),
        (update([resource("res", a=1), resource("res", b=1)]),
         "Unexpected RTDS resource length, number of added recources 2, "
         "number of removed recources 0"),
        (update([resource("other", a=1)]), "Unexpected RTDS runtime (expecting res): other"),
        (update(removed=["other"], sotw=False),
         "Unexpected removal of unknown RTDS runtime layer other, expected res"),
        (update([resource("res", a=[1, 2])]), "Invalid runtime entry value for a"),
    ],
)  # fmt: skip
def test_rtds_updates_envoy_rejects(the_update, message):
    h, callbacks, _ = rtds_harness()
    h.loader.load()
    callbacks.on_config_update(update([resource("res", keep=1)]))
    before = h.stats()["load_success"]
    with pytest.raises(ConfigError) as e:
        callbacks.on_config_update(the_update)
    assert str(e.value) == message
    assert h.raw() == {"k": "static", "keep": "1"}
    assert h.stats()["load_success"] == before


def test_an_rtds_failure_makes_the_layer_ready_and_leaves_it_empty():
    h, callbacks, ready = rtds_harness()
    callbacks.on_config_update_failed(UpdateFailureReason.FETCH_TIMEDOUT, None)
    callbacks.on_config_update_failed(UpdateFailureReason.CONNECTION_FAILURE, None)
    assert ready == ["ready"] and h.runtime.snapshot().values == {
        "k": h.runtime.snapshot().get("k")
    }
