"""The runtime: layers, what values read as, the admin, disk and RTDS layers, refusals.
Expected values are what Envoy 1.40 showed for the same configuration (``/runtime``, and
routes with a ``runtime_fraction`` answered over HTTP)."""

from __future__ import annotations

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from google.protobuf import struct_pb2

from legatus.config.bootstrap import load
from legatus.config.errors import ConfigError
from legatus.config.proto_json import parse
from legatus.runtime import (
    RTDS_SUPPORTED,
    Entry,
    Layer,
    Runtime,
    RuntimeModifyError,
    compile_runtime,
)
from legatus.server import control
from legatus.server.options import parse as parse_options


def runtime(layers: list[dict] | None = None, **document) -> Runtime:
    if layers is not None:
        document["layered_runtime"] = {"layers": layers}
    return compile_runtime(parse(document, bootstrap_pb2.Bootstrap))


def static(name: str = "base", **values) -> dict:
    return {"name": name, "static_layer": values}


def admin_only() -> Runtime:
    return Runtime([Layer(name="admin")], admin_index=0)


def raw_values(rt: Runtime) -> dict[str, str]:
    return {key: entry.raw for key, entry in rt.snapshot().values.items()}


# Layers -----------------------------------------------------------------------------------


def test_no_layered_runtime_means_no_layers_and_no_admin_layer():
    rt = runtime()
    assert rt.snapshot().layers == ()
    assert not rt.has_admin_layer
    with pytest.raises(RuntimeModifyError, match=r"^No admin layer specified$"):
        rt.merge_values({"a": "1"})
    assert rt.get_integer("a", 7) == 7


def test_layered_runtime_without_layers_gets_an_admin_layer_named_empty():
    rt = runtime(layered_runtime={})
    assert [layer.name for layer in rt.snapshot().layers] == [""]
    rt.merge_values({"a": "1"})
    assert rt.get_integer("a", 0) == 1


def test_static_layers_flatten_into_dotted_keys_and_later_layers_win():
    rt = runtime(
        [
            static(a={"b": {"c": 1, "d": 2}}, s="hello"),
            {"name": "admin", "admin_layer": {}},
            static("over", **{"a.b.c": 7, "s": "world"}),
        ]
    )
    assert [layer.name for layer in rt.snapshot().layers] == ["base", "admin", "over"]
    assert raw_values(rt) == {"a.b.c": "7", "a.b.d": "2", "s": "world"}
    rt.merge_values({"a.b.d": "5", "s": "admin"})
    assert (rt.get_integer("a.b.d", 0), rt.get_string("s")) == (5, "world")  # "over" is last


def test_objects_with_numerator_or_denominator_and_empty_objects_are_values():
    rt = runtime([static(f={"numerator": 5}, g={"denominator": "MILLION"}, e={}, n={"x": {}})])
    assert sorted(rt.snapshot().values) == ["e", "f", "g", "n.x"]


@pytest.mark.parametrize(
    ("layers", "path", "message"),
    [
        ([static(x=[1, 2])], "layered_runtime.layers[0].static_layer",
         "Invalid runtime entry value for x"),
        ([static(x={"y": None})], "layered_runtime.layers[0].static_layer",
         "Invalid runtime entry value for x.y"),
        ([static("a"), static("a")], "layered_runtime.layers[1].name", "Duplicate layer name: a"),
        ([{"name": "a", "admin_layer": {}}, {"name": "b", "admin_layer": {}}],
         "layered_runtime.layers[1].admin_layer",
         "Too many admin layers specified in LayeredRuntime, at most one may be specified"),
        ([{"name": "d", "disk_layer": {"symlink_root": "current"}}],
         "layered_runtime.layers[0].disk_layer.symlink_root", "invalid file path current"),
        ([{"name": "d", "disk_layer": {}}],
         "layered_runtime.layers[0].disk_layer.symlink_root", "invalid file path "),
        # Envoy checks names and kinds before the static values.
        ([static(x=[1]), static("a"), static("a")], "layered_runtime.layers[2].name",
         "Duplicate layer name: a"),
    ],
)  # fmt: skip
def test_refusals_name_the_layer(layers, path, message):
    with pytest.raises(ConfigError) as e:
        runtime(layers)
    assert (e.value.path, e.value.message) == (path, message)


# What a value reads as ----------------------------------------------------------------------


def test_numbers_read_as_double_unsigned_integer_and_int32_boolean():
    rt = runtime([static(one=1, zero=0, half=0.5, neg=-3, big=1e15, huge=1e20, pct=2.5)])
    assert rt.get_integer("one", 9) == 1 and rt.get_boolean("one", False) is True
    assert rt.get_boolean("zero", True) is False
    assert (rt.get_integer("half", 9), rt.get_double("half", 0)) == (0, 0.5)
    assert rt.get_boolean("half", True) is True  # not integral: no boolean
    assert rt.get_integer("neg", 9) == 9 and rt.get_boolean("neg", False) is True
    assert rt.get_double("neg", 0) == -3
    assert rt.get_integer("big", 9) == 10**15 and rt.get_boolean("big", False) is False
    assert rt.get_integer("huge", 9) == 9  # beyond uint64
    assert rt.get_integer("pct", 0) == 2  # floored


def test_strings_read_as_numbers_only():
    rt = runtime([static(n="100", t="true", f="numerator: 100", x="abc", w=" 7 ")])
    assert rt.get_integer("n", 0) == 100 and rt.get_boolean("n", False) is True
    assert rt.get_boolean("t", False) is False  # Envoy 1.40 (reject_invalid_yaml)
    assert not rt.feature_enabled("f", 0, 100, 0)
    assert rt.get_string("x") == "abc" and rt.get_integer("x", 3) == 3
    assert rt.get_integer("w", 0) == 7


def test_booleans():
    rt = runtime([static(yes=True, no=False)])
    assert (rt.get_boolean("yes", False), rt.get_boolean("no", True)) == (True, False)
    assert raw_values(rt) == {"yes": "true", "no": "false"}
    assert rt.get_integer("yes", 4) == 4


def test_texts_are_envoys():
    rt = runtime([static(i=1, i7=1234567, i2=2147483647, neg=-3, s="x", f={"numerator": 5}, e={})])
    assert raw_values(rt) == {
        "i": "1",
        "i7": "1.23457e+06",  # absl::StrCat of a double
        "i2": "2.14748e+09",
        "neg": "-3",
        "s": "x",
        "f": 'fields {\n  key: "numerator"\n  value {\n    number_value: 5\n  }\n}\n',
        "e": "",
    }


def test_yaml_floats_and_large_integers_keep_their_text(tmp_path):
    config = tmp_path / "envoy.yaml"
    config.write_text(
        "layered_runtime:\n  layers:\n  - name: base\n    static_layer:\n"
        "      f: 3.0\n      sci: 1e20\n      tiny: 0.0001\n      big: 12345678901234\n"
        "      i: 7\n      nested: {x: 0.50}\n"
    )
    bootstrap = load(parse_options(["-c", str(config)])).bootstrap
    rt = compile_runtime(bootstrap)
    assert raw_values(rt) == {
        "f": "3.0",
        "sci": "1e20",
        "tiny": "0.0001",
        "big": "12345678901234",
        "i": "7",
        "nested.x": "0.50",
    }
    assert rt.get_double("sci", 0) == 1e20 and rt.get_integer("big", 0) == 12345678901234


def test_empty_key_is_never_found():
    rt = admin_only()
    rt.merge_values({"": "100"})
    assert rt.get_integer("", 5) == 5 and rt.get_string("") is None
    assert not rt.feature_enabled("", 0, 100, 0)


# feature_enabled ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "enabled_of_1000"),
    [
        (None, 300),  # the default: 30 %
        ({"numerator": 5}, 50),
        ({"numerator": 5, "denominator": "TEN_THOUSAND"}, 5),  # draws 0..4 of 0..999
        ({"numerator": 100, "foo": 1}, 300),  # not a fraction: the default
        ({"numerator": 100, "denominator": "BOGUS"}, 300),
        ({}, 0),  # an empty object is 0/100
        (150, 1000),  # an integer above 100 is always on
        (7, 70),
        (0.9, 0),  # floored to 0 %
        (-5, 300),
        (True, 300),
        ("20", 200),
    ],
)
def test_feature_enabled(value, enabled_of_1000):
    rt = runtime([static(k=value)]) if value is not None else runtime([static()])
    assert sum(rt.feature_enabled("k", 30, 100, r) for r in range(1000)) == enabled_of_1000


def test_feature_enabled_with_a_per_million_default():
    rt = runtime()
    assert rt.feature_enabled("k", 5, 1_000_000, 1_000_004)
    assert not rt.feature_enabled("k", 5, 1_000_000, 1_000_005)


# The admin layer ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "always"),
    [
        ("{numerator: 100}", True),
        ("{numerator: 0}", False),
        ("150", True),
        ("0", False),
        ("{numerator: 100, foo: 1}", False),
        ("true", False),
        ("{numerator: 10000, denominator: TEN_THOUSAND}", True),
        ("{numerator: 100, denominator: BOGUS}", False),
        ("{denominator: MILLION}", False),
        ("{}", False),
        ('"100"', False),  # a quoted string is read from its text, quotes included
        ("'100'", False),
        ("100.9", True),
        ("+100", True),
        (" 100 ", True),
        ("1e2", True),
        ("0x64", True),
        ("-5", False),
    ],
)
def test_admin_values_as_envoy_reads_them(text, always):
    """Each row: a route with ``runtime_fraction`` default 0 and this admin value, in Envoy."""
    rt = admin_only()
    rt.merge_values({"k": text})
    enabled = sum(rt.feature_enabled("k", 0, 100, r) for r in range(100))
    assert enabled == (100 if always else 0)
    assert rt.get_string("k") == text


@pytest.mark.parametrize(
    ("text", "boolean"),
    [("true", True), ("True", True), ("TRUE", True), ("yes", True), ("on", True), ("y", True),
     ("off", False), ("N", False), ("tRUE", None), ("1", True), ("0", False), ("null", None)],
)  # fmt: skip
def test_admin_booleans_follow_yaml_cpp(text, boolean):
    rt = admin_only()
    rt.merge_values({"k": text})
    assert rt.snapshot().get("k").boolean is boolean


def test_merge_values_sets_removes_and_keeps_the_text():
    rt = admin_only()
    rt.merge_values({"a": "1", "b": "hello", "c": "a+b"})
    assert raw_values(rt) == {"a": "1", "b": "hello", "c": "a+b"}
    assert rt.admin_overrides() == {"a": "1", "b": "hello", "c": "a+b"}
    rt.merge_values({"a": "", "missing": ""})
    assert raw_values(rt) == {"b": "hello", "c": "a+b"}
    assert rt.admin_overrides() == {"b": "hello", "c": "a+b"}


def test_a_value_that_is_not_yaml_changes_nothing():
    rt = admin_only()
    rt.merge_values({"a": "1"})
    before = rt.snapshot()
    with pytest.raises(RuntimeModifyError, match="line 1"):
        rt.merge_values({"a": "2", "bad": "{"})
    assert rt.snapshot() is before and rt.get_integer("a", 0) == 1


def test_snapshots_are_replaced_not_changed():
    rt = admin_only()
    first = rt.snapshot()
    rt.merge_values({"a": "1"})
    assert first.values == {} and rt.snapshot() is not first


# Disk and RTDS layers --------------------------------------------------------------------------


def disk(name: str, root: str, subdirectory: str = "", **more) -> dict:
    return {
        "name": name,
        "disk_layer": {"symlink_root": root, "subdirectory": subdirectory, **more},
    }


def rtds(name: str, resource: str) -> dict:
    return {
        "name": name,
        "rtds_layer": {"name": resource, "rtds_config": {"path_config_source": {"path": "/x"}}},
    }


def with_rtds(layers: list[dict], **document) -> Runtime:
    document["layered_runtime"] = {"layers": layers}
    return compile_runtime(parse(document, bootstrap_pb2.Bootstrap), rtds_supported=True)


def struct(**values) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


def test_disk_layers_say_where_their_tree_is():
    rt = runtime(
        [disk("d0", "/srv/current", "envoy"),
         disk("d1", "/srv/current", "override", append_service_cluster=True),
         disk("d2", "/srv/current")],
        node={"cluster": "web"},
    )  # fmt: skip
    assert [(d.index, d.name, d.symlink_root, d.path) for d in rt.disk_layers()] == [
        (0, "d0", "/srv/current", "/srv/current/envoy"),
        (1, "d1", "/srv/current", "/srv/current/override/web"),
        (2, "d2", "/srv/current", "/srv/current/"),
    ]
    # Not read yet: absent from the snapshot, as a disk layer whose directory is missing.
    assert rt.snapshot().layers == ()
    assert rt.dynamic_layers() == {0: None, 1: None, 2: None}


def test_append_service_cluster_without_a_cluster_appends_an_empty_name():
    rt = runtime([disk("d", "/srv/current", "envoy", append_service_cluster=True)])
    assert rt.disk_layers()[0].path == "/srv/current/envoy/"


def test_an_rtds_layer_compiles_empty_until_its_first_update():
    assert RTDS_SUPPORTED is True  # the subscription lives in legatus.server.dynamic_config
    rt = runtime([static(), rtds("r", "res")])
    assert [layer.name for layer in rt.rtds_layers()] == ["r"]
    assert rt.snapshot().get("x") is None


def test_rtds_layers_list_what_to_subscribe_to():
    rt = with_rtds([static(), rtds("r1", "res1"), {"name": "admin", "admin_layer": {}},
                    rtds("r2", "res2")])  # fmt: skip
    layers = rt.rtds_layers()
    assert [(r.index, r.name, r.resource_name) for r in layers] == [
        (1, "r1", "res1"),
        (3, "r2", "res2"),
    ]
    assert layers[0].rtds_config.path_config_source.path == "/x"
    # Present and empty until an update arrives, as Envoy shows them.
    assert [layer.name for layer in rt.snapshot().layers] == ["base", "r1", "admin", "r2"]
    assert rt.snapshot().values == {}


def test_set_rtds_layer_flattens_the_struct_like_a_static_layer():
    rt = with_rtds([static(a={"b": 1}), rtds("r", "res")])
    before = rt.snapshot()
    rt.set_rtds_layer("r", struct(a={"b": 5, "c": "x"}, f={"numerator": 3}, e={}))
    assert raw_values(rt) == {
        "a.b": "5",
        "a.c": "x",
        "f": 'fields {\n  key: "numerator"\n  value {\n    number_value: 3\n  }\n}\n',
        "e": "",
    }
    assert rt.get_integer("a.b", 0) == 5 and rt.snapshot().get("f").fraction == (3, 100)
    assert before.values["a.b"].raw == "1"  # the old snapshot is untouched
    rt.set_rtds_layer("r", struct())
    assert raw_values(rt) == {"a.b": "1"}


@pytest.mark.parametrize(
    ("values", "message"),
    [({"a": [1]}, "Invalid runtime entry value for a"),
     ({"a": {"b": None}}, "Invalid runtime entry value for a.b")],
)  # fmt: skip
def test_an_invalid_rtds_value_rejects_the_update_and_keeps_the_layer(values, message):
    rt = with_rtds([rtds("r", "res")])
    rt.set_rtds_layer("r", struct(k=1))
    before = rt.snapshot()
    with pytest.raises(ConfigError) as e:
        rt.set_rtds_layer("r", struct(ok=2, **values))
    assert str(e.value) == message
    assert rt.snapshot() is before and raw_values(rt) == {"k": "1"}


def test_set_rtds_layer_names_a_layer_that_exists():
    rt = with_rtds([rtds("r", "res"), static("s")])
    with pytest.raises(KeyError):
        rt.set_rtds_layer("res", struct(k=1))  # the resource's name is not the layer's
    with pytest.raises(KeyError):
        rt.set_rtds_layer("s", struct(k=1))


def test_later_layers_override_earlier_ones_whatever_their_kind():
    rt = with_rtds(
        [static(k="static", s=1), disk("disk", "/srv/current"), rtds("rtds", "res"),
         {"name": "admin", "admin_layer": {}}, static("last", last=1)]
    )  # fmt: skip
    assert rt.get_string("k") == "static"
    rt.replace_layers({1: {"k": Entry(raw="disk"), "d": Entry(raw="d")}})
    assert rt.get_string("k") == "disk"
    rt.set_rtds_layer("rtds", struct(k="rtds", d="r"))
    assert (rt.get_string("k"), rt.get_string("d")) == ("rtds", "r")
    rt.merge_values({"k": "admin"})
    assert rt.get_string("k") == "admin"
    assert [layer.name for layer in rt.snapshot().layers] == [
        "base", "disk", "rtds", "admin", "last"]  # fmt: skip
    rt.replace_layers({1: None})  # the disk layer's directory went away
    assert [layer.name for layer in rt.snapshot().layers] == ["base", "rtds", "admin", "last"]
    assert rt.get_string("d") == "r"


def test_a_worker_takes_the_main_processes_layers_whole():
    document = {"node": {"cluster": "c"}}
    layers = [static(k=1), disk("disk", "/srv/current"), rtds("rtds", "res"),
              {"name": "admin", "admin_layer": {}}]  # fmt: skip
    main, worker = with_rtds(layers, **document), with_rtds(layers, **document)
    main.replace_layers({1: {"d": Entry(raw="7", uint=7, double=7.0)}})
    main.set_rtds_layer("rtds", struct(r="x"))
    main.merge_values({"a": "1"})
    worker.merge_values({"stale": "1"})
    sent = main.dynamic_layers()
    assert sorted(sent) == [1, 2, 3]
    message = control.FrameDecoder().feed(control.encode(control.UpdateRuntime(layers=sent)))[0]
    worker.replace_layers(message.layers)
    assert raw_values(worker) == raw_values(main) == {"k": "1", "d": "7", "r": "x", "a": "1"}
    assert worker.get_integer("d", 0) == 7 and worker.admin_overrides() == {"a": "1"}
    main.replace_layers({1: None})
    worker.replace_layers(main.dynamic_layers())
    assert [layer.name for layer in worker.snapshot().layers] == ["base", "rtds", "admin"]


def test_replace_layers_refuses_static_layers_and_absent_non_disk_layers():
    rt = runtime([static(), disk("d", "/srv/current"), {"name": "admin", "admin_layer": {}}])
    with pytest.raises(ValueError):
        rt.replace_layers({0: {}})
    with pytest.raises(ValueError):
        rt.replace_layers({2: None})
    with pytest.raises(ValueError):
        rt.replace_layers({7: {}})
