"""Small connection-manager knobs, Envoy against legatus: what a 400 does to an HTTP/1
connection (``stream_error_on_invalid_http_message`` and its HTTP/1 and HTTP/2 overrides),
``ignore_http_11_upgrade``, the Proxy-Status name under ``use_node_id`` (the module's
bootstrap names the node), and the virtual cluster and route stats that a route
configuration update removes (over xDS, xds_scenario.py).

Each test runs the same raw traffic through both proxies and compares the responses, how the
connection ended, what the upstream saw, the access log and the stats; the Envoy facts the
behaviour rests on are asserted on Envoy's side too.
"""

from __future__ import annotations

import time

import httpx
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format

from legatus.config_subscription.decode import CLUSTER, LISTENER, ROUTE
from legatus.router.virtual_cluster import VirtualClusterStats
from tests.differential import xds_scenario
from tests.differential.http_scenario import (  # noqa: F401 (fixtures)
    Cluster,
    Listener,
    http_pair_fixture,
    http_pair_processes_fixture,
    http_request,
    scenario,
)
from tests.differential.test_http2_envoy import GET, H2Client, raw_headers, read_frames
from tests.differential.xds_scenario import side_by_side, static_cluster
from tests.integration.test_xds_lds_rds import listener as xds_listener
from tests.support.process import wait_for
from tests.support.xds_thread import ads_bootstrap

STREAM_ERROR = {"stream_error_on_invalid_http_message": True}
WEBSOCKET = "websocket"
NODE_ID = "edge-node-7"
BOOTSTRAP = {"node": {"id": NODE_ID, "cluster": "edge"}}
DRAIN_TIME = 1  # --drain-time-s of the xDS scenario


def _proxy(name: str, **hcm) -> tuple[Listener, Cluster]:
    return Listener(name=name, hcm=hcm), Cluster(name=name)


def _after_400s(side, listener: str) -> dict:
    """A missing Host, then a path that fails normalization, then a good request, on one
    connection: how far it gets."""
    out: dict = {}
    with side.connect(listener) as c:
        out["missing_host"] = c.request("GET", "/", host=None).view()
        out["missing_host_then"] = c.ending(1.5)
        if out["missing_host_then"] != "open":
            return out
        out["fragment"] = c.request("GET", "/a#b").view()
        out["fragment_then"] = c.ending(1.5)
        if out["fragment_then"] != "open":
            return out
        out["good"] = c.request("GET", "/good").view()
        out["good_then"] = c.ending(1.5)
    return out


def _codec_error(side, listener: str) -> dict:
    """A request line the codec refuses: a 400 that closes whatever the setting."""
    with side.connect(listener) as c:
        c.send(b"G@T / HTTP/1.1\r\nhost: a\r\n\r\n")
        return {"response": c.response().view(), "then": c.ending(1.5)}


def _codes(out) -> list[tuple]:
    return [(e["code"], e["details"]) for e in out.envoy.log]


# stream_error_on_invalid_http_message over HTTP/1 -------------------------------------------


@scenario(*_proxy("closes_by_default"))
def test_a_400_closes_the_connection_by_default(http_pair):
    out = http_pair.run(lambda side: _after_400s(side, "closes_by_default"))
    got = out.envoy.result
    assert got["missing_host"]["status"] == "HTTP/1.1 400 Bad Request"
    assert "connection: close" in got["missing_host"]["headers"]
    assert got["missing_host_then"] == "closed"
    out.assert_same()


@scenario(*_proxy("hcm_stream_error", **STREAM_ERROR))
def test_stream_error_keeps_the_connection_open_after_a_400(http_pair):
    def traffic(side):
        return [_after_400s(side, "hcm_stream_error"), _codec_error(side, "hcm_stream_error")]

    out = http_pair.run(traffic)
    got, codec = out.envoy.result
    assert got["missing_host"]["status"] == "HTTP/1.1 400 Bad Request"
    assert "connection: close" not in got["missing_host"]["headers"]
    assert got["missing_host_then"] == got["fragment_then"] == got["good_then"] == "open"
    assert got["fragment"]["status"] == "HTTP/1.1 400 Bad Request"
    assert got["good"]["status"] == "HTTP/1.1 200 OK"
    # A codec error still closes.
    assert codec["response"]["status"] == "HTTP/1.1 400 Bad Request"
    assert codec["then"] == "closed"
    assert _codes(out) == [(400, "missing_host_header"), (400, "path_normalization_failed"),
                           (200, "via_upstream"), (400, "http1.codec_error")]  # fmt: skip
    out.assert_same()


@scenario(*_proxy("http1_override", http_protocol_options={
    "override_stream_error_on_invalid_http_message": True}))  # fmt: skip
def test_the_http1_override_alone_keeps_the_connection_open(http_pair):
    out = http_pair.run(lambda side: _after_400s(side, "http1_override"))
    assert out.envoy.result["good_then"] == "open"
    out.assert_same()


@scenario(*_proxy("http1_override_beats", **STREAM_ERROR, http_protocol_options={
    "override_stream_error_on_invalid_http_message": False}))  # fmt: skip
def test_the_http1_override_beats_the_hcm_field(http_pair):
    out = http_pair.run(lambda side: _after_400s(side, "http1_override_beats"))
    assert out.envoy.result["missing_host_then"] == "closed"
    out.assert_same()


# ... and over HTTP/2 (the HCM field feeds the HTTP/2 codec's override) ---------------------


def _malformed_then_good(side, listener: str) -> list:
    with H2Client(side, listener) as c:
        c.send_bytes(raw_headers(1, [*GET, (":path", "/"), ("X-Upper", "1")]))
        c.send_bytes(raw_headers(3, [*GET, (":path", "/")]))
        c.raw = True
        return [read_frames(c), c.ending(0.5)]


@scenario(*_proxy("h2_hcm_stream_error", **STREAM_ERROR))
def test_stream_error_resets_only_the_malformed_http2_stream(http_pair):
    out = http_pair.run(lambda side: _malformed_then_good(side, "h2_hcm_stream_error"))
    frames, ending = out.envoy.result
    assert any("RST_STREAM" in f for f in frames) and ending == "open"
    out.assert_same()


@scenario(*_proxy("h2_override_beats", **STREAM_ERROR, http2_protocol_options={
    "override_stream_error_on_invalid_http_message": False}))  # fmt: skip
def test_the_http2_override_beats_the_hcm_field(http_pair):
    def traffic(side):
        with H2Client(side, "h2_override_beats", defer=True) as c:
            c.send_bytes(raw_headers(1, [*GET, (":path", "/"), ("X-Upper", "1")]))
            return c.ending()

    out = http_pair.run(traffic)
    assert out.envoy.result == "closed"
    out.assert_same()


# ignore_http_11_upgrade ----------------------------------------------------------------------


@scenario(*_proxy("ignore_upgrade", http_protocol_options={
    "ignore_http_11_upgrade": [{"exact": WEBSOCKET}, {"prefix": "tls/"}]}))  # fmt: skip
def test_ignored_upgrades_are_served_as_plain_requests(http_pair):
    def traffic(side):
        out = {}
        with side.connect("ignore_upgrade") as c:
            out["with_connection"] = c.request("GET", "/a", [
                ("upgrade", WEBSOCKET), ("connection", "upgrade, x-nominated"),
                ("x-nominated", "1"), ("x-kept", "2")]).view()  # fmt: skip
            out["without_connection"] = c.request("GET", "/b", [("upgrade", WEBSOCKET)]).view()
            out["prefix"] = c.request("GET", "/c", [
                ("upgrade", "tls/1.3"), ("connection", "upgrade")]).view()  # fmt: skip
            out["chunked"] = c.request(
                "POST",
                "/d",
                [("upgrade", WEBSOCKET), ("connection", "upgrade")],
                b"body",
                chunked=True,
            ).view()
            out["sized"] = c.request("POST", "/e", [
                ("upgrade", WEBSOCKET), ("connection", "upgrade")], b"sized").view()  # fmt: skip
            out["then"] = c.ending(1.5)
        # Matched whole and case-sensitively: these are upgrades (refused: none configured).
        for name, value in (("case", "WebSocket"), ("list", "websocket, h2c")):
            with side.connect("ignore_upgrade") as c:
                c.send(http_request("GET", "/f", [("upgrade", value), ("connection", "upgrade")]))
                out[name] = c.response().view()
        return out

    out = http_pair.run(traffic)
    got = out.envoy.result
    for name in ("with_connection", "without_connection", "prefix", "chunked", "sized"):
        assert got[name]["status"] == "HTTP/1.1 200 OK", name
    assert got["then"] == "open"
    assert got["case"]["status"] == got["list"]["status"] == "HTTP/1.1 403 Forbidden"
    seen = out.envoy.upstream
    assert [u["request"] for u in seen] == [
        "GET /a HTTP/1.1", "GET /b HTTP/1.1", "GET /c HTTP/1.1", "POST /d HTTP/1.1",
        "POST /e HTTP/1.1"]  # fmt: skip
    assert not any(h.lower().startswith(("upgrade", "x-nominated")) for h in seen[0]["headers"])
    assert "x-kept: 2" in seen[0]["headers"]
    assert seen[3]["body"] == "body" and seen[4]["body"] == "sized"
    out.assert_same()


# proxy_status_config.use_node_id -------------------------------------------------------------


@scenario(Listener(name="node_id_status", hcm={"proxy_status_config": {"use_node_id": True}}),
          Cluster(name="node_id_status", endpoint="none"))  # fmt: skip
def test_use_node_id_names_the_proxy_by_the_node_id(http_pair):
    def traffic(side):
        return [side.request("node_id_status", "GET", "/").view()]

    out = http_pair.run(traffic)
    (response,) = out.envoy.result
    details = 'details="no_healthy_upstream; UH"'
    assert f"proxy-status: {NODE_ID}; error=destination_unavailable; {details}" in response[
        "headers"]  # fmt: skip
    out.assert_same()


# Virtual cluster and route stats a route configuration update removes --------------------
# Over ADS: the listener ``http`` takes its routes from RDS, ``inline`` from LDS; both start
# with the virtual clusters vc_a, vc_b and the route stat prefixes ra, rb, then lose vc_b
# and rb (RDS first, then LDS).


def _route_config(name: str, vhost: str, *, second: bool) -> route_pb2.RouteConfiguration:
    """One virtual host with the virtual cluster ``vc_a`` and the route stat prefix ``ra``;
    with ``second``, also ``vc_b`` and ``rb`` (for ``/b``)."""
    clusters = [{"name": "vc_a", "headers": [
        {"name": ":path", "string_match": {"prefix": "/a"}}]}]  # fmt: skip
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}, "stat_prefix": "ra"}]
    if second:
        clusters.append({"name": "vc_b", "headers": [
            {"name": ":path", "string_match": {"prefix": "/b"}}]})  # fmt: skip
        routes.insert(0, {"match": {"prefix": "/b"}, "route": {"cluster": "backend"},
                          "stat_prefix": "rb"})  # fmt: skip
    return json_format.ParseDict(
        {"name": name, "virtual_hosts": [{"name": vhost, "domains": ["*"], "routes": routes,
                                          "virtual_clusters": clusters}]},
        route_pb2.RouteConfiguration(),
    )  # fmt: skip


def _inline_listener(*, second: bool):
    """The LDS listener ``inline``, whose HCM has its route configuration inline."""
    proto = xds_listener(0, stat_prefix="inline")
    proto.name = "inline"
    typed = proto.filter_chains[0].filters[0].typed_config
    hcm = hcm_pb2.HttpConnectionManager()
    typed.Unpack(hcm)
    hcm.route_config.CopyFrom(_route_config("inline", "inl", second=second))
    typed.Pack(hcm)
    return proto


def _vhost_stats(side) -> dict:
    return side.settled_stats(lambda name: name.startswith("vhost."))


def _get(side, listener: str, path: str) -> int:
    port = side.proxy.listener_port(listener)
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5).status_code


def _removals(side) -> dict:
    out = {}
    wait_for(lambda: _answered_listeners(side), timeout=10, what="the listeners")
    out["served"] = [_get(side, "http", "/b"), _get(side, "http", "/a"),
                     _get(side, "inline", "/b"), _get(side, "inline", "/a")]  # fmt: skip
    out["before"] = _vhost_stats(side)
    since = side.mark()
    side.push(ROUTE, [_route_config("routes", "all", second=False)])
    side.reply(ROUTE, since)
    out["after_rds"] = _vhost_stats(side)
    since = side.mark()
    side.push(LISTENER, [xds_listener(0), _inline_listener(second=False)])
    side.reply(LISTENER, since)
    out["after_lds"] = _vhost_stats(side)
    time.sleep(DRAIN_TIME + 1.5)  # the replaced listener drained away
    out["after_drain"] = _vhost_stats(side)
    return out


def _answered_listeners(side) -> bool:
    try:
        side.proxy.listener_port("http")
        side.proxy.listener_port("inline")
    except (KeyError, AssertionError):
        return False
    return True


def _xds_config(xds_port: int, *, delta: bool, access_log) -> dict:
    return ads_bootstrap(
        xds_port, delta=delta,
        dynamic_resources={"lds_config": {"ads": {}, "resource_api_version": "V3"}},
    )  # fmt: skip


def test_removed_virtual_clusters_and_route_stat_prefixes_drop_their_counters(
    tmp_path, monkeypatch
):
    original = xds_scenario._command

    def command(name):
        binary, args = original(name)
        return binary, [*args, "--drain-time-s", str(DRAIN_TIME)]

    monkeypatch.setattr(xds_scenario, "_command", command)

    def before_start(xds, upstreams):
        xds.set_resources(CLUSTER, [static_cluster("backend", upstreams[0].port)])
        xds.set_resources(ROUTE, [_route_config("routes", "all", second=True)])
        xds.set_resources(LISTENER, [xds_listener(0), _inline_listener(second=True)])

    runs = xds_scenario.run_both(
        tmp_path, delta=False, before_start=before_start, scenario=_removals, config=_xds_config
    )
    envoy, legatus = runs["envoy"], runs["legatus"]
    assert envoy["served"] == [200] * 4
    before, after_rds = envoy["before"], envoy["after_rds"]
    assert before["vhost.all.vcluster.vc_b.upstream_rq_total"] == 1
    assert before["vhost.all.route.rb.upstream_rq_total"] == 1
    dropped = {n for n in before if n not in after_rds}
    assert dropped == {f"vhost.all.{s}.{c}" for s in ("vcluster.vc_b", "route.rb")
                       for c in VirtualClusterStats.names()}  # fmt: skip
    assert "vhost.all.vcluster.vc_b.upstream_rq_200" in after_rds
    # An LDS update of an inline route configuration: the old one stays while the replaced
    # listener drains, then goes.
    inline = {n.replace("vhost.all.", "vhost.inl.") for n in dropped}
    assert inline <= set(envoy["after_lds"])
    assert inline.isdisjoint(envoy["after_drain"])
    # (Known gap: Envoy also drops the response code stats the drained listener made, of
    # every virtual cluster and route stat prefix, kept or not; legatus keeps them.)
    assert "vhost.inl.route.ra.upstream_rq_200" not in envoy["after_drain"]
    for key in ("served", "before", "after_rds", "after_lds"):
        assert envoy[key] == legatus[key], f"{key}: {side_by_side(envoy[key], legatus[key])}"
    envoy_six, legatus_six = _six(envoy["after_drain"]), _six(legatus["after_drain"])
    assert envoy_six == legatus_six, side_by_side(envoy_six, legatus_six)


def _six(stats: dict) -> dict:
    """The VirtualClusterStats counters of ``stats``."""
    six = set(VirtualClusterStats.names())
    return {n: v for n, v in stats.items() if n.rpartition(".")[2] in six}
