"""The admin endpoints of Envoy and legatus, side by side, after the same traffic (scenario.py).

Where legatus claims compatibility the answers must be equal (listener ports normalized to
`<listener name>`). Remaining differences are written down as exact expected-difference lists,
so a test fails when either side changes: shrink the lists as legatus catches up.
"""

from __future__ import annotations

import json
import re

from prometheus_client.parser import text_string_to_metric_families

# /server_info command_line_options that Envoy 1.40 prints and legatus does not.
MISSING_COMMAND_LINE_OPTIONS = ["file_flush_min_size", "log_stacktrace_single_entry"]

# command_line_options whose value differs (after the per-run paths are set aside).
COMMAND_LINE_OPTION_VALUE_DIFFERENCES: dict[str, dict] = {}

# legatus lists no extensions in `node.extensions` (Envoy lists every compiled-in one).
_NODE_EXTENSIONS = ["category", "disabled", "name", "type_descriptor", "type_urls"]

# JSON key paths (`[]` for list elements) Envoy has and legatus lacks, per endpoint/config.
MISSING_KEY_PATHS = {
    "config_dump:BootstrapConfigDump": [
        "bootstrap.node.extensions",
        "bootstrap.node.extensions[].category",
        "bootstrap.node.extensions[].name",
        "bootstrap.node.extensions[].type_urls",
    ],
    "config_dump:ClustersConfigDump": [],
    "config_dump:ListenersConfigDump": [],
    "config_dump:SecretsConfigDump": [],
    "server_info": [
        *(f"command_line_options.{k}" for k in MISSING_COMMAND_LINE_OPTIONS),
        *(f"node.extensions[].{k}" for k in _NODE_EXTENSIONS),
    ],
    "clusters?format=json": [],
    "listeners?format=json": [],
}

# /clusters per-host values that differ: {(cluster, stat): (envoy, legatus)}.
CLUSTERS_HOST_VALUE_DIFFERENCES: dict[tuple[str, str], tuple[str, str]] = {}

# Admin endpoints listed by Envoy's /help that legatus does not serve.
MISSING_ENDPOINTS = [
    "/allocprofiler",
    "/contention",
    "/cpuprofiler",
    "/heap_dump",
    "/heapprofiler",
    "/memory/tcmalloc",
    "/peak_heap_dump",
    "/stats/recentlookups",
    "/stats/recentlookups/clear",
    "/stats/recentlookups/disable",
    "/stats/recentlookups/enable",
]

# Shared endpoints whose /help entry differs, and why.
HELP_ENTRY_DIFFERENCES = {
    "/logging": "no fine-grain logging: the `paths` help omits the __FILE__/glob sentence",
    "/stats": "no active-html: `format` lists (html, text, json)",
}

# Prometheus families (name, type, label names) in the compared scopes, per side only.
PROM_SCOPE = re.compile(
    r"^envoy_(tcp_|cluster_(upstream_cx|membership_|max_host_weight|upstream_flow_control)"
    r"|cluster_manager_|listener_|server_)"
)
# The same gaps as test_stats_tcp_proxy.KNOWN_GAPS, as Prometheus families.
PROM_ENVOY_ONLY = [
    ("envoy_server_main_thread_watchdog_mega_miss", "counter", ()),
    ("envoy_server_main_thread_watchdog_miss", "counter", ()),
    ("envoy_server_worker_watchdog_mega_miss", "counter", ("envoy_worker_id",)),
    ("envoy_server_worker_watchdog_miss", "counter", ("envoy_worker_id",)),
]
PROM_LEGATUS_ONLY = [
    ("envoy_server_worker_restarts", "counter", ()),  # legatus only, see test_stats_tcp_proxy
]


def _get(run, path: str) -> tuple[int, str]:
    status, body = run.proxy.admin(path)
    return status, run.normalize(body)


def _both(pair, path: str) -> tuple[tuple[int, str], tuple[int, str]]:
    return _get(pair.envoy, path), _get(pair.legatus, path)


def _json(run, path: str):
    status, body = run.proxy.admin(path)
    assert status == 200, (run.name, path, body)
    return _normalize_ports(run, json.loads(body))


def _normalize_ports(run, value):
    """Replace this run's listener ports (`port_value`) with `<listener name>`."""
    names = {port: f"<{name}>" for name, port in run.ports.items()}
    if isinstance(value, dict):
        return {
            k: names.get(v, v) if k == "port_value" else _normalize_ports(run, v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_normalize_ports(run, v) for v in value]
    return value


def _key_paths(value, prefix: str = "") -> set[str]:
    out: set[str] = set()
    if isinstance(value, dict):
        for k, v in value.items():
            path = f"{prefix}.{k}" if prefix else k
            out.add(path)
            out |= _key_paths(v, path)
    elif isinstance(value, list):
        for v in value:
            out |= _key_paths(v, prefix + "[]")
    return out


def _compare_key_paths(envoy, legatus, what: str) -> None:
    e, g = _key_paths(envoy), _key_paths(legatus)
    assert sorted(g - e) == [], f"{what}: legatus has keys Envoy does not"
    assert sorted(e - g) == MISSING_KEY_PATHS[what], what


# /ready, /help, unknown paths, /quitquitquit


def test_ready(pair):
    envoy, legatus = _both(pair, "/ready")
    assert envoy == (200, "LIVE\n")
    assert legatus == envoy


def test_help_first_line(pair):
    (e_status, e_body), (l_status, l_body) = _both(pair, "/help")
    assert (l_status, l_body.splitlines()[0]) == (e_status, e_body.splitlines()[0])


def _endpoints(help_text: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^  (/[^\s:]*)", help_text, re.M)}


def test_help_lists_envoy_endpoints(pair):
    (_, envoy), (_, legatus) = _both(pair, "/help")
    assert sorted(_endpoints(legatus) - _endpoints(envoy)) == []
    assert sorted(_endpoints(envoy) - _endpoints(legatus)) == MISSING_ENDPOINTS


def test_help_lines_of_shared_endpoints(pair):
    """An endpoint's help line (and its parameters) reads as Envoy's."""
    (_, envoy), (_, legatus) = _both(pair, "/help")

    def entries(text: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        current = None
        for line in text.splitlines()[1:]:
            if line.startswith("  /"):
                current = line.split(":", 1)[0].split()[0]
                out[current] = [line]
            elif current is not None:
                out[current].append(line)
        return out

    e, g = entries(envoy), entries(legatus)
    differ = sorted(p for p in set(e) & set(g) if e[p] != g[p])
    assert differ == sorted(HELP_ENTRY_DIFFERENCES), {p: (e[p], g[p]) for p in differ}


def test_unknown_path(pair):
    (e_status, e_body), (l_status, l_body) = _both(pair, "/no/such/endpoint")
    assert e_status == 404
    assert l_status == e_status
    assert l_body.splitlines()[0] == e_body.splitlines()[0]


def test_quitquitquit_needs_post(pair):
    envoy, legatus = _both(pair, "/quitquitquit")
    assert envoy[0] == 405
    assert legatus == envoy
    assert pair.legatus.proxy.proc.poll() is None


# /listeners


def test_listeners_text(pair):
    envoy, legatus = _both(pair, "/listeners")
    assert envoy[0] == 200
    assert legatus == envoy


def test_listeners_json(pair):
    envoy = _json(pair.envoy, "/listeners?format=json")
    legatus = _json(pair.legatus, "/listeners?format=json")
    _compare_key_paths(envoy, legatus, "listeners?format=json")
    assert legatus == envoy


# /clusters

_HOST_LINE = re.compile(r"^([^:]+)::(\d+\.\d+\.\d+\.\d+:\d+)::([^:]+)::(.*)$")


def _clusters(run) -> tuple[list[str], dict[tuple[str, str, str], str]]:
    """(cluster-level lines, {(cluster, host, stat): value})."""
    status, body = _get(run, "/clusters")
    assert status == 200, body
    cluster_lines, host_stats = [], {}
    for line in body.splitlines():
        m = _HOST_LINE.match(line)
        if m:
            host_stats[m.group(1), m.group(2), m.group(3)] = m.group(4)
        else:
            cluster_lines.append(line)
    return cluster_lines, host_stats


def test_clusters_cluster_lines(pair):
    envoy, _ = _clusters(pair.envoy)
    legatus, _ = _clusters(pair.legatus)
    assert sorted(legatus) == sorted(envoy)


def test_clusters_host_stat_names(pair):
    _, envoy = _clusters(pair.envoy)
    _, legatus = _clusters(pair.legatus)
    assert sorted(legatus) == sorted(envoy)


def test_clusters_host_values(pair):
    _, envoy = _clusters(pair.envoy)
    _, legatus = _clusters(pair.legatus)
    differ = {
        (cluster, stat): (envoy[key], legatus[key])
        for key in sorted(set(envoy) & set(legatus))
        for cluster, _host, stat in [key]
        if envoy[key] != legatus[key]
    }
    assert differ == CLUSTERS_HOST_VALUE_DIFFERENCES


def test_clusters_json_shape(pair):
    envoy = _json(pair.envoy, "/clusters?format=json")
    legatus = _json(pair.legatus, "/clusters?format=json")
    _compare_key_paths(envoy, legatus, "clusters?format=json")


# /server_info


def test_server_info_shape(pair):
    envoy = _json(pair.envoy, "/server_info")
    legatus = _json(pair.legatus, "/server_info")
    assert sorted(legatus) == sorted(envoy)
    assert sorted(legatus["node"]) == sorted(envoy["node"])
    assert legatus["state"] == envoy["state"] == "LIVE"
    # BUILD_SHA/1.40.0/Clean/RELEASE/SSL: tools split it on `/`.
    assert legatus["version"].split("/")[1:4] == envoy["version"].split("/")[1:4]
    _compare_key_paths(envoy, legatus, "server_info")


def test_server_info_command_line_options(pair):
    envoy = _json(pair.envoy, "/server_info")["command_line_options"]
    legatus = _json(pair.legatus, "/server_info")["command_line_options"]
    assert sorted(set(legatus) - set(envoy)) == []
    assert sorted(set(envoy) - set(legatus)) == MISSING_COMMAND_LINE_OPTIONS
    per_run = {"config_path", "admin_address_path"}
    differ = {
        k: {"envoy": envoy[k], "legatus": legatus[k]}
        for k in sorted((set(envoy) & set(legatus)) - per_run)
        if envoy[k] != legatus[k]
    }
    assert differ == COMMAND_LINE_OPTION_VALUE_DIFFERENCES


# /config_dump


def _config_dump(run) -> dict[str, dict]:
    dump = _json(run, "/config_dump")
    return {c["@type"].rsplit(".", 1)[1]: c for c in dump["configs"]}


def test_config_dump_types(pair):
    envoy = _json(pair.envoy, "/config_dump")
    legatus = _json(pair.legatus, "/config_dump")
    assert [c["@type"] for c in legatus["configs"]] == [c["@type"] for c in envoy["configs"]]


def test_config_dump_shapes(pair):
    envoy, legatus = _config_dump(pair.envoy), _config_dump(pair.legatus)
    for kind in envoy:
        _compare_key_paths(envoy[kind], legatus.get(kind, {}), f"config_dump:{kind}")


def _without_last_updated(value):
    if isinstance(value, dict):
        return {k: _without_last_updated(v) for k, v in value.items() if k != "last_updated"}
    if isinstance(value, list):
        return [_without_last_updated(v) for v in value]
    return value


def test_config_dump_static_resources(pair):
    """The listeners and clusters dumped read as Envoy dumps them (defaults, ordering...)."""
    envoy, legatus = _config_dump(pair.envoy), _config_dump(pair.legatus)
    for kind in ("ListenersConfigDump", "ClustersConfigDump"):
        assert _without_last_updated(legatus[kind]) == _without_last_updated(envoy[kind]), kind
    e_boot = envoy["BootstrapConfigDump"]["bootstrap"]
    g_boot = legatus["BootstrapConfigDump"]["bootstrap"]
    assert g_boot["static_resources"] == e_boot["static_resources"]


# /stats/prometheus


def _families(run) -> set[tuple[str, str, tuple[str, ...]]]:
    status, body = run.proxy.admin("/stats/prometheus")
    assert status == 200, body
    out = set()
    for family in text_string_to_metric_families(body):
        if PROM_SCOPE.match(family.name):
            labels = tuple(sorted({k for s in family.samples for k in s.labels}))
            out.add((family.name, family.type, labels))
    return out


def test_prometheus_families(pair):
    envoy, legatus = _families(pair.envoy), _families(pair.legatus)
    assert sorted(legatus - envoy) == PROM_LEGATUS_ONLY
    assert sorted(envoy - legatus) == PROM_ENVOY_ONLY
