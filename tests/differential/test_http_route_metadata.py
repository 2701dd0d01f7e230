"""Route, virtual-host, cluster, endpoint and listener ``metadata`` and ``%METADATA(...)%``,
``%CLUSTER_METADATA(...)%`` and ``%UPSTREAM_METADATA(...)%``, Envoy against legatus: the
metadata reaches headers the route adds (the access-log formatter writes them), so both the
upstream's view and the client's are compared."""

from __future__ import annotations

from tests.differential.http_scenario import (  # noqa: F401 (fixtures)
    Cluster,
    Listener,
    http_pair_fixture,
    http_pair_processes_fixture,
    scenario,
)

VHOST_METADATA = {"filter_metadata": {"team": {"name": "core", "size": 1000000}}}
ROUTE_METADATA = {"filter_metadata": {
    "acme": {"tier": "gold", "limits": {"rps": 50, "burst": 2.5, "big": 123456789012345},
             "tags": ["a", True, None, 0.25]},
}}  # fmt: skip


def _add(name: str, value: str) -> dict:
    return {"header": {"key": name, "value": value}}


REQUEST_HEADERS = [
    _add("x-tier", "%METADATA(ROUTE:acme:tier)%"),
    _add("x-limits", "%METADATA(ROUTE:acme:limits)%"),
    _add("x-rps", "%METADATA(ROUTE:acme:limits:rps)%"),
    _add("x-tags", "%METADATA(ROUTE:acme:tags)%"),
    _add("x-short", "%METADATA(ROUTE:acme):12%"),
    _add("x-team", "%METADATA(VIRTUAL_HOST:team)%"),
    _add("x-missing", "[%METADATA(ROUTE:acme:nope)%]"),
    _add("x-dynamic", "[%METADATA(DYNAMIC:acme)%]"),
]
VIRTUAL_HOSTS = [{
    "name": "meta", "domains": ["*"], "metadata": VHOST_METADATA,
    "response_headers_to_add": [_add("x-vhost-team", "%METADATA(VIRTUAL_HOST:team:name)%"),
                                _add("x-route-tier", "%METADATA(ROUTE:acme:tier)%")],
    "routes": [
        {"match": {"prefix": "/plain"}, "route": {"cluster": "meta"}},
        {"match": {"prefix": "/direct"}, "metadata": ROUTE_METADATA,
         "direct_response": {"status": 200, "body": {"inline_string": "ok"}}},
        {"match": {"prefix": "/"}, "metadata": ROUTE_METADATA, "route": {"cluster": "meta"},
         "request_headers_to_add": REQUEST_HEADERS},
    ],
}]  # fmt: skip


@scenario(Listener(name="meta", virtual_hosts=VIRTUAL_HOSTS), Cluster(name="meta"))
def test_route_and_virtual_host_metadata_in_headers(http_pair):
    def traffic(side):
        return [r.view() for r in (
            side.request("meta", "GET", "/"),
            side.request("meta", "GET", "/plain"),
            side.request("meta", "GET", "/direct"),
        )]  # fmt: skip

    out = http_pair.run(traffic)
    seen = dict(h.split(": ", 1) for h in out.envoy.upstream[0]["headers"] if ": " in h)
    assert seen["x-tier"] == "gold"
    assert seen["x-team"] == '{"name":"core","size":1e+06}'
    out.assert_same()


CLUSTER_METADATA = {"filter_metadata": {"ns": {"k": "cluster-v", "n": 3}}}
HOST_METADATA = {"filter_metadata": {"ns": {"k": "host-v"}, "envoy.lb": {"canary": True}}}
UPSTREAM_ROUTES = [{
    "match": {"prefix": "/"}, "route": {"cluster": "meta_up"},
    "request_headers_to_add": [_add("x-req-cluster", "%CLUSTER_METADATA(ns:k)%"),
                               _add("x-req-host", "[%UPSTREAM_METADATA(ns:k)%]")],
    "response_headers_to_add": [
        _add("x-cluster", "%CLUSTER_METADATA(ns:k)%"),
        _add("x-host", "%UPSTREAM_METADATA(ns:k)%"),
        _add("x-m-cluster", "%METADATA(CLUSTER:ns)%"),
        _add("x-m-host", "%METADATA(UPSTREAM_HOST:envoy.lb)%"),
        _add("x-m-host-short", "%METADATA(UPSTREAM_HOST:ns:k):4%"),
        _add("x-legacy-host", '%UPSTREAM_METADATA(["ns", "k"])%'),  # the old header syntax
        _add("x-listener", "%METADATA(LISTENER:ns:k)%"),
    ],
}]  # fmt: skip


@scenario(Listener(name="meta_up", routes=UPSTREAM_ROUTES,
                   listener={"metadata": {"filter_metadata": {"ns": {"k": "listener-v"}}}}),
          Cluster(name="meta_up", extra={"metadata": CLUSTER_METADATA},
                  endpoint_metadata=HOST_METADATA))  # fmt: skip
def test_cluster_and_endpoint_metadata_in_headers(http_pair):
    out = http_pair.run(lambda side: [side.request("meta_up", "GET", "/").view()])
    headers = out.envoy.result[0]["headers"]
    assert "x-cluster: cluster-v" in headers
    assert "x-host: host-v" in headers
    assert "x-legacy-host: host-v" in headers
    assert "x-listener: listener-v" in headers
    # request headers are made before a host is picked: only the cluster is known
    seen = out.envoy.upstream[0]["headers"]
    assert "x-req-cluster: cluster-v" in seen and "x-req-host: []" in seen
    out.assert_same()
