"""The global rate limit filter (``envoy.filters.http.ratelimit``), Envoy against legatus.

A scripted rate limit service (tests/support/fake_rls.py) answers per descriptor, so both
proxies get the same verdicts: each route's ``rate_limits`` carry a ``generic_key`` entry
``verdict`` (ok / over / error / slow) and, for the x-ratelimit-* headers, ``limit``. The
service sits behind the HTTP/2 cluster ``rls``, used by Envoy's own gRPC client and by
legatus's grpcio client. Compared: responses (429 headers and body), what the upstream saw
(the service's request headers), access logs (flags RL / RLSE, details), the listener and
route cluster stats (``upstream_rq_429`` charged by the filter), and the filter's
``cluster.<route cluster>.ratelimit.*`` counters.
"""

from __future__ import annotations

import pytest

from tests.differential.http_scenario import (  # noqa: F401 (fixtures)
    Cluster,
    Listener,
    _free_ports,
    http_pair_fixture,
    http_pair_processes_fixture,
    scenario,
)
from tests.differential.test_http_filters_ratelimit_rbac import assert_same_filter_stats, views
from tests.support.fake_rls import FakeRateLimitService

RL = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit"
RL_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute"
HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
RLS_PORT = _free_ports(1)[0]
RLS = Cluster(name="rls", extra={
    "load_assignment": {"cluster_name": "rls", "endpoints": [{"lb_endpoints": [{"endpoint": {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": RLS_PORT}}}}]}]},
    "typed_extension_protocol_options": {HPO: {
        "@type": f"type.googleapis.com/{HPO}",
        "explicit_http_config": {"http2_protocol_options": {}}}},
})  # fmt: skip


def _rls_holder():
    """Puts the rls cluster in the bootstrap (no test compares its stats: Envoy's gRPC client
    counts upstream stats there that legatus's does not)."""


_rls_holder.http_specs = (RLS,)


@pytest.fixture(scope="module", autouse=True)
def fake_rls():
    service = FakeRateLimitService(RLS_PORT)
    yield service
    service.close()


def _filter(**extra) -> dict:
    return {"name": "envoy.filters.http.ratelimit", "typed_config": {
        "@type": RL, "domain": "test", "timeout": "0.25s",
        "rate_limit_service": {"transport_api_version": "V3",
                               "grpc_service": {"envoy_grpc": {"cluster_name": "rls"}}},
        **extra}}  # fmt: skip


def _verdict(value: str, *more) -> list:
    return [{"actions": [{"generic_key": {"descriptor_key": "verdict", "descriptor_value": value}},
                         *more]}]  # fmt: skip


def _route(prefix: str, cluster: str, rate_limits=None, **extra) -> dict:
    action = {"cluster": cluster}
    if rate_limits is not None:
        action["rate_limits"] = rate_limits
    return {"match": {"prefix": prefix}, "route": action, **extra}


def _limit(n: int, name: str | None = None) -> dict:
    action = {"generic_key": {"descriptor_key": "limit", "descriptor_value": str(n)}}
    if name is None:
        return action
    return [action, {"generic_key": {"descriptor_key": "name", "descriptor_value": name}}]


def _listener(name: str, routes: list, **filter_extra) -> tuple[Listener, Cluster]:
    return (
        Listener(name=name, filters=[_filter(**filter_extra)], routes=routes,
                 hcm={"delayed_close_timeout": "0.1s"}),
        Cluster(name=name),
    )  # fmt: skip


@scenario(*_listener("grl_basic", [
    _route("/ok", "grl_basic", _verdict("ok")),
    _route("/over", "grl_basic", _verdict("over")),
    _route("/error", "grl_basic", _verdict("error")),
    _route("/slow", "grl_basic", _verdict("slow")),
    _route("/absent", "grl_basic", [{"actions": [
        {"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}]}]),
    _route("/", "grl_basic"),
]))  # fmt: skip
def test_ok_over_limit_error_timeout(http_pair, fake_rls):
    def traffic(side):
        paths = ["/ok", "/over", "/error", "/slow", "/absent", "/none"]
        return views([side.request("grl_basic", "GET", p) for p in paths])

    out = http_pair.run(traffic)
    assert [r["status"].split(" ")[1] for r in out.envoy.result] == [
        "200", "429", "200", "200", "200", "200"]  # fmt: skip
    assert "x-envoy-ratelimited: true" in out.envoy.result[1]["headers"]
    assert [e["flags"] for e in out.envoy.log] == ["-", "RL", "-", "-", "-", "-"]
    assert out.envoy.log[1]["details"] == "request_rate_limited"
    out.assert_same()
    stats = assert_same_filter_stats(http_pair, r"^cluster\.grl_basic\.ratelimit\.")
    assert stats["cluster.grl_basic.ratelimit.error"] == 2


@scenario(*_listener("grl_deny", [
    _route("/error", "grl_deny", _verdict("error")),
    _route("/over", "grl_deny", _verdict("over")),
], failure_mode_deny=True, status_on_error={"code": 503}, rate_limited_status={"code": 403},
   disable_x_envoy_ratelimited_header=True, stat_prefix="edge"))  # fmt: skip
def test_failure_mode_deny_and_statuses(http_pair):
    def traffic(side):
        return views([side.request("grl_deny", "GET", p) for p in ("/error", "/over")])

    out = http_pair.run(traffic)
    assert out.envoy.result[0]["status"].split(" ")[1] == "503"
    assert [e["flags"] for e in out.envoy.log] == ["RLSE", "RL"]
    out.assert_same()
    assert_same_filter_stats(http_pair, r"^cluster\.grl_deny\.")


@scenario(*_listener("grl_headers", [
    _route("/ok", "grl_headers", [{"actions": [
        {"generic_key": {"descriptor_key": "verdict", "descriptor_value": "ok"}},
        _limit(10)]}, {"actions": _limit(5, "five")}]),
    _route("/over", "grl_headers", [{"actions": [
        {"generic_key": {"descriptor_key": "verdict", "descriptor_value": "over"}},
        _limit(7)]}]),
], enable_x_ratelimit_headers="DRAFT_VERSION_03"))  # fmt: skip
def test_x_ratelimit_headers_and_service_headers(http_pair):
    def traffic(side):
        return views([side.request("grl_headers", "GET", p) for p in ("/ok", "/over")])

    out = http_pair.run(traffic)
    assert 'x-ratelimit-limit: 5, 10;w=60, 5;w=60;name="five"' in out.envoy.result[0]["headers"]
    assert "x-rls-request: ok" in out.envoy.upstream[0]["headers"]
    assert "x-rls: over" in out.envoy.result[1]["headers"]
    out.assert_same()
    assert_same_filter_stats(http_pair, r"^cluster\.grl_headers\.ratelimit\.")


@scenario(*(lambda lc: (Listener(name="grl_vh", filters=[_filter()], virtual_hosts=[{
    "name": "grl_vh", "domains": ["*"], "rate_limits": _verdict("over"),
    "routes": [
        _route("/override", "grl_vh", _verdict("ok")),
        {"match": {"prefix": "/include"}, "route": {"cluster": "grl_vh",
         "rate_limits": _verdict("ok"), "include_vh_rate_limits": True}},
        _route("/ignore", "grl_vh", typed_per_filter_config={"envoy.filters.http.ratelimit": {
            "@type": RL_PER_ROUTE, "vh_rate_limits": "IGNORE"}}),
        _route("/", "grl_vh"),
    ]}], hcm={"delayed_close_timeout": "0.1s"}), lc))(Cluster(name="grl_vh")))  # fmt: skip
def test_virtual_host_rate_limits(http_pair):
    def traffic(side):
        paths = ["/override", "/include", "/ignore", "/vh"]
        return views([side.request("grl_vh", "GET", p) for p in paths])

    out = http_pair.run(traffic)
    assert [r["status"].split(" ")[1] for r in out.envoy.result] == ["200", "429", "200", "429"]
    out.assert_same()
    assert_same_filter_stats(http_pair, r"^cluster\.grl_vh\.ratelimit\.")
