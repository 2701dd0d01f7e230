"""Route configuration fields, Envoy against legatus: a virtual host's ``require_tls`` and
``include_is_timeout_retry_header``; the route configuration's ``internal_only_headers``,
``vhost_header`` and ``request_mirror_policies``; a route's ``host_rewrite_path_regex``;
``HeaderValue.raw_value`` in header mutations; a direct response's ``body_format``.

Each test also states, on the Envoy side, the fact it pins (what the client, the upstream
or the stats see), so that a harness change cannot make both sides agree on nothing.
"""

from __future__ import annotations

import base64
import json
import time

from tests.differential.http_scenario import (  # noqa: F401 (fixtures)
    INTERNAL_LOOPBACK,
    Cluster,
    Listener,
    Reply,
    http_pair_fixture,
    http_pair_processes_fixture,
    route,
    scenario,
)

FINALLY = Reply(body=b"finally")
SCRIPTS = {
    "/to-retry-timeout": Reply(delay=0.6, body=b"late", then=FINALLY),
    "/to-hedge": Reply(delay=0.6, body=b"late", then=FINALLY),
    "/to-retry-503": Reply(status=503, body=b"again", then=FINALLY),
}


def _add(name: str, value: str) -> dict:
    return {"header": {"key": name, "value": value}}


def _direct(text: str) -> dict:
    return {"direct_response": {"status": 200, "body": {"inline_string": text}}}


def _headers(request_or_response: dict) -> dict[str, str]:
    return dict(h.split(": ", 1) for h in request_or_response["headers"] if ": " in h)


def _sorted_upstream(observation) -> list:
    """The requests the upstream saw, in a stable order (a shadow races its main request)."""
    requests = [{k: v for k, v in r.items() if k != "connection"} for r in observation.upstream]
    return sorted(requests, key=lambda r: json.dumps(r, sort_keys=True))


# require_tls ----------------------------------------------------------------------------------


def _tls_vhosts(name: str, mode: str) -> list:
    return [{
        "name": name, "domains": ["*"], "require_tls": mode,
        "response_headers_to_add": [_add("x-vhost", "1")],
        "routes": [route("/", {"route": {"cluster": name}},
                         response_headers_to_add=[_add("x-route", "1")])],
    }]  # fmt: skip


@scenario(Listener(name="tls_all", virtual_hosts=_tls_vhosts("tls_all", "ALL"),
                   route_config={"response_headers_to_add": [_add("x-table", "1")]}),
          Cluster(name="tls_all"))  # fmt: skip
def test_require_tls_all_redirects_what_did_not_come_over_tls(http_pair):
    def traffic(side):
        return [r.view() for r in (
            side.request("tls_all", "GET", "/a/b?q=1", host="Example.com:8080"),
            side.request("tls_all", "POST", "/p", body=b"data"),
            side.request("tls_all", "GET", "/https", [("x-forwarded-proto", "https")]),
            side.request("tls_all", "GET", "/upper", [("x-forwarded-proto", "HTTPS")]),
            side.request("tls_all", "GET", "/internal", [("x-envoy-internal", "true")]),
        )]  # fmt: skip

    out = http_pair.run(traffic, full_stats=True)
    first = out.envoy.result[0]
    assert first["status"] == "HTTP/1.1 301 Moved Permanently" and first["body"] == ""
    # host and path as they came; no header mutation of any level
    assert first["headers"][0] == "location: https://Example.com:8080/a/b?q=1"
    assert not any(h.startswith("x-") for h in first["headers"])
    assert [r["status"][9:12] for r in out.envoy.result] == ["301", "301", "200", "301", "301"]
    assert [e["details"] for e in out.envoy.log][:2] == ["direct_response", "direct_response"]
    assert out.envoy.stats["http.tls_all.rq_direct_response"] == 4
    out.assert_same()


@scenario(Listener(name="tls_ext", virtual_hosts=_tls_vhosts("tls_ext", "EXTERNAL_ONLY")),
          Cluster(name="tls_ext"),
          Listener(name="tls_int", virtual_hosts=_tls_vhosts("tls_int", "EXTERNAL_ONLY"),
                   hcm=INTERNAL_LOOPBACK),
          Cluster(name="tls_int"))  # fmt: skip
def test_require_tls_external_only_spares_internal_requests(http_pair):
    def traffic(side):
        return [r.view() for r in (
            side.request("tls_ext", "GET", "/x"),
            side.request("tls_ext", "GET", "/y", [("x-forwarded-proto", "https")]),
            side.request("tls_int", "GET", "/z"),  # internal: x-envoy-internal: true
        )]  # fmt: skip

    out = http_pair.run(traffic, full_stats=True)
    assert [r["status"][9:12] for r in out.envoy.result] == ["301", "200", "200"]
    out.assert_same()


# internal_only_headers ------------------------------------------------------------------------

_IOH = {"internal_only_headers": ["x-secret", "X-Other", "x-request-id"]}
_IOH_ROUTES = [route("/", {"route": {"cluster": "ioh"}},
                     request_headers_to_add=[_add("x-secret", "from-route")])]  # fmt: skip


@scenario(Listener(name="ioh", routes=_IOH_ROUTES, route_config=_IOH), Cluster(name="ioh"),
          Listener(name="ioh_int", route_config=_IOH, hcm=INTERNAL_LOOPBACK),
          Cluster(name="ioh_int"))  # fmt: skip
def test_internal_only_headers_are_removed_from_external_requests(http_pair):
    sent = [("x-secret", "s"), ("x-other", "o"), ("x-secret", "t"), ("x-request-id", "abc"),
            ("x-kept", "k")]  # fmt: skip

    def traffic(side):
        return [r.view() for r in (
            side.request("ioh", "GET", "/x", sent),
            side.request("ioh_int", "GET", "/y", sent),
        )]  # fmt: skip

    out = http_pair.run(traffic)
    external, internal = out.envoy.upstream
    # Removed before the route's own headers are added, and before x-request-id is made.
    assert "x-other" not in _headers(external) and "x-kept" in _headers(external)
    assert _headers(external)["x-secret"] == "from-route"
    assert _headers(external)["x-request-id"] == "<uuid4>"
    assert internal["headers"][1:5] == ["x-secret: s", "x-other: o", "x-secret: t",
                                        "x-request-id: abc"]  # fmt: skip
    out.assert_same()


# vhost_header ---------------------------------------------------------------------------------

_VHH = [
    {"name": "a", "domains": ["a.com"], "routes": [route("/", _direct("a"))]},
    {"name": "b", "domains": ["b.com", "*.b.com"], "routes": [route("/", _direct("b"))]},
    {"name": "any", "domains": ["*"], "routes": [route("/", _direct("any"))]},
]


@scenario(Listener(name="vhh", virtual_hosts=_VHH, route_config={"vhost_header": "X-VHost"}),
          Listener(name="vhh_any", virtual_hosts=_VHH[2:],
                   route_config={"vhost_header": "x-vhost"}),
          Listener(name="vhh_port", virtual_hosts=_VHH,
                   route_config={"vhost_header": "x-vhost",
                                 "ignore_port_in_host_matching": True}))  # fmt: skip
def test_vhost_header_chooses_the_virtual_host(http_pair):
    def traffic(side):
        return [r.view() for r in (
            side.request("vhh", "GET", "/1", [("x-vhost", "b.com")], host="a.com"),
            side.request("vhh", "GET", "/2", [("x-vhost", "B.com")], host="a.com"),
            side.request("vhh", "GET", "/3", [("x-vhost", "x.b.com:80")], host="a.com"),
            side.request("vhh", "GET", "/4", host="b.com"),
            side.request("vhh", "GET", "/5", [("x-vhost", "")], host="b.com"),
            side.request("vhh", "GET", "/6", [("x-vhost", "a.com"), ("x-vhost", "b.com")]),
            side.request("vhh_port", "GET", "/7", [("x-vhost", "b.com:80")], host="a.com"),
            side.request("vhh_any", "GET", "/8", host="a.com"),
        )]  # fmt: skip

    out = http_pair.run(traffic)
    # No such header: no virtual host (404); a sole "*" virtual host needs none.
    assert [r["body"] for r in out.envoy.result] == ["b", "b", "any", "", "any", "a", "b", "any"]
    assert out.envoy.log[3]["details"] == "route_not_found"
    out.assert_same()


# request_mirror_policies at the route configuration -------------------------------------------

_MIRROR_VHOSTS = [
    {"name": "table", "domains": ["table.com"], "routes": [
        route("/", {"route": {"cluster": "mirror"}})]},
    {"name": "vhost", "domains": ["vhost.com"],
     "request_mirror_policies": [{"cluster": "mirror_vh",
                                  "disable_shadow_host_suffix_append": True}],
     "routes": [route("/", {"route": {"cluster": "mirror"}})]},
    {"name": "route", "domains": ["*"],
     "request_mirror_policies": [{"cluster": "mirror_vh"}],
     "routes": [route("/", {"route": {"cluster": "mirror", "request_mirror_policies": [
         {"cluster": "mirror_rt", "host_rewrite_literal": "route-mirror"}]}})]},
]  # fmt: skip


@scenario(Listener(name="mirror", virtual_hosts=_MIRROR_VHOSTS, route_config={
    "request_mirror_policies": [{"cluster": "mirror_rc"}]}),
    Cluster(name="mirror"), Cluster(name="mirror_rc"), Cluster(name="mirror_vh"),
    Cluster(name="mirror_rt"))  # fmt: skip
def test_the_most_specific_mirror_policies_win(http_pair):
    def traffic(side):
        out = [r.view() for r in (
            side.request("mirror", "GET", "/1", host="table.com"),
            side.request("mirror", "GET", "/2", host="vhost.com"),
            side.request("mirror", "GET", "/3", host="other.com"),
        )]  # fmt: skip
        time.sleep(0.3)  # the shadows' responses, counted
        return out

    out = http_pair.run(traffic, full_stats=True)
    stats = out.envoy.stats
    # The route configuration's mirror for a virtual host and a route without their own;
    # the virtual host's for a route without; the route's own over both.
    assert stats["cluster.mirror_rc.internal.upstream_rq_200"] == 1
    assert stats["cluster.mirror_vh.internal.upstream_rq_200"] == 1
    assert stats["cluster.mirror_rt.internal.upstream_rq_200"] == 1
    assert _sorted_upstream(out.envoy) == _sorted_upstream(out.legatus)
    out.assert_same("result", "log", "stats")


# include_is_timeout_retry_header --------------------------------------------------------------

_RETRY = {"retry_on": "5xx", "num_retries": 1, "per_try_timeout": "0.3s",
          "retry_back_off": {"base_interval": "0.001s", "max_interval": "0.002s"}}  # fmt: skip


@scenario(Listener(name="itr", virtual_hosts=[{
    "name": "itr", "domains": ["*"], "include_is_timeout_retry_header": True,
    "routes": [route("/", {"route": {"cluster": "itr", "timeout": "0s", "retry_policy": _RETRY}})],
}]), Cluster(name="itr"))  # fmt: skip
def test_is_timeout_retry_header_on_retries(http_pair):
    def traffic(side):
        return [r.view() for r in (
            side.request("itr", "GET", "/to-retry-timeout"),
            side.request("itr", "GET", "/to-retry-503", [("x-envoy-is-timeout-retry", "x")]),
            side.request("itr", "GET", "/plain"),
        )]  # fmt: skip

    out = http_pair.run(traffic, full_stats=True)
    seen = [_headers(r).get("x-envoy-is-timeout-retry") for r in out.envoy.upstream]
    # first tries: nothing added (a client's value passes); retries: the cause, in place
    assert seen == [None, "true", "x", "false", None]
    assert out.envoy.upstream[3]["headers"][1] == "x-envoy-is-timeout-retry: false"
    out.assert_same()


@scenario(Listener(name="itr_hedge", virtual_hosts=[{
    "name": "itr_hedge", "domains": ["*"], "include_is_timeout_retry_header": True,
    "hedge_policy": {"hedge_on_per_try_timeout": True},
    "routes": [route("/", {"route": {"cluster": "itr_hedge", "timeout": "0s",
                                     "retry_policy": _RETRY}})],
}]), Cluster(name="itr_hedge"))  # fmt: skip
def test_is_timeout_retry_header_on_a_hedged_try(http_pair):
    def traffic(side):
        out = [side.request("itr_hedge", "GET", "/to-hedge").view()]
        time.sleep(0.5)  # the first try's late answer, dropped
        return out

    out = http_pair.run(traffic, full_stats=True)
    seen = [_headers(r).get("x-envoy-is-timeout-retry") for r in out.envoy.upstream]
    assert seen == [None, "true"]
    assert out.envoy.result[0]["body"] == "finally"
    out.assert_same()


# host_rewrite_path_regex ----------------------------------------------------------------------

_HOST_REGEX = {"pattern": {"regex": "^/host/([^/]+)/.*$"}, "substitution": "\\1.internal"}


@scenario(Listener(name="hrx", routes=[
    route("/xfh", {"route": {"cluster": "hrx", "host_rewrite_path_regex": _HOST_REGEX,
                             "append_x_forwarded_host": True}}),
    route("/", {"route": {"cluster": "hrx", "host_rewrite_path_regex": _HOST_REGEX}}),
]), Cluster(name="hrx"))  # fmt: skip
def test_host_rewrite_path_regex(http_pair):
    def traffic(side):
        return [r.view() for r in (
            side.request("hrx", "GET", "/host/svc/a/b?x=/host/q/r"),
            side.request("hrx", "GET", "/other/path?q"),
            side.request("hrx", "GET", "/xfh/x", [("x-forwarded-host", "h0")]),
        )]  # fmt: skip

    out = http_pair.run(traffic)
    hosts = [_headers(r)["host"] for r in out.envoy.upstream]
    # The path without its query; a path the regex does not match becomes the host itself.
    assert hosts == ["svc.internal", "/other/path", "/xfh/x"]
    assert _headers(out.envoy.upstream[0])["x-envoy-original-host"] == "example.com"
    assert _headers(out.envoy.upstream[2])["x-forwarded-host"] == "h0,example.com"
    out.assert_same()


# raw_value ------------------------------------------------------------------------------------


def _raw(name: str, raw: bytes, value: str | None = None, **extra) -> dict:
    header = {"key": name, "raw_value": base64.b64encode(raw).decode()}
    if value is not None:
        header["value"] = value
    return {"header": header, **extra}


_RAW_REQUEST = [
    _raw("x-raw", b"a%REQ(x-in)%b"),
    _raw("x-both", b"raw", "value"),
    _raw("x-pct", b"50%"),
    _raw("x-empty", b""),
    _raw("x-keep", b"kept", keep_empty_value=True),
    _raw("x-in", b"over", append_action="OVERWRITE_IF_EXISTS_OR_ADD"),
]


@scenario(Listener(name="raw", virtual_hosts=[{
    "name": "raw", "domains": ["*"],
    "request_headers_to_add": [_raw("x-vh-raw", b"vh")],
    "response_headers_to_add": [_raw("x-vh-resp", b"%REQ(x-in)%")],
    "routes": [route("/", {"route": {"cluster": "raw"}}, request_headers_to_add=_RAW_REQUEST,
                     response_headers_to_add=[_raw("x-resp", b"r%%")])],
}], route_config={"request_headers_to_add": [_raw("x-table", b"t")]}),
    Cluster(name="raw"))  # fmt: skip
def test_raw_value_is_not_a_route_header_value(http_pair):
    def traffic(side):
        return [side.request("raw", "GET", "/x", [("x-in", "in")]).view()]

    out = http_pair.run(traffic)
    # Only ``value`` is formatted: a raw_value alone is an empty value.
    added = out.envoy.upstream[0]["headers"][-2:]
    assert added == ["x-both: value", "x-keep: "]
    assert "x-in: in" in out.envoy.upstream[0]["headers"]
    assert not any(h.startswith("x-") for h in out.envoy.result[0]["headers"][:2])
    out.assert_same()


# direct_response body_format ------------------------------------------------------------------


def _formatted(status: int, body_format: dict, body: str | None = None) -> dict:
    response: dict = {"status": status, "body_format": body_format}
    if body is not None:
        response["body"] = {"inline_string": body}
    return {"direct_response": response}


_TEXT = "[%LOCAL_REPLY_BODY%] %REQ(x-in)% %RESPONSE_CODE%"
_SOURCE = {"inline_string": "<%LOCAL_REPLY_BODY%|%RESPONSE_FLAGS%|%RESPONSE_CODE_DETAILS%>"}
_LOCAL_REPLY = {"body_format": {"text_format": "LR(%LOCAL_REPLY_BODY%)",
                                "content_type": "text/lr"}}  # fmt: skip


@scenario(Listener(name="dbf", routes=[
    route("/text", _formatted(200, {"text_format": _TEXT}, "body")),
    route("/json", _formatted(404, {"json_format": {"b": "%LOCAL_REPLY_BODY%",
                                                    "c": "%RESPONSE_CODE%"}}, "nope")),
    route("/ctype", _formatted(200, {"text_format": "x", "content_type": "text/html"})),
    route("/tplain", _formatted(200, {"text_format": "x", "content_type": "text/plain"})),
    route("/jplain", _formatted(200, {"json_format": {"a": "b"}, "content_type": "text/plain"})),
    route("/src", _formatted(503, {"text_format_source": _SOURCE}, "src")),
    route("/moved", _formatted(302, {"json_format": {"a": "%REQ(:PATH)%"}}),
          response_headers_to_add=[_add("x-route", "r")]),
    route("/empty", _formatted(200, {"text_format": "%REQ(x-none)%"})),
]), Listener(name="dbf_lr", hcm={"local_reply_config": _LOCAL_REPLY}, routes=[
    route("/text", _formatted(200, {"text_format": "[%LOCAL_REPLY_BODY%]"}, "body")),
    route("/plain", _direct("plain")),
]))  # fmt: skip
def test_direct_response_body_format(http_pair):
    def traffic(side):
        return [r.view() for r in (
            side.request("dbf", "GET", "/text", [("x-in", "in")]),
            side.request("dbf", "GET", "/json"),
            side.request("dbf", "GET", "/ctype"),
            side.request("dbf", "GET", "/tplain"),
            side.request("dbf", "GET", "/jplain"),
            side.request("dbf", "GET", "/src"),
            side.request("dbf", "GET", "/moved?q"),
            side.request("dbf", "GET", "/empty"),
            side.request("dbf", "HEAD", "/text"),
            side.request("dbf_lr", "GET", "/text"),
            side.request("dbf_lr", "GET", "/plain"),
        )]  # fmt: skip

    out = http_pair.run(traffic)
    result = out.envoy.result
    # Formatted before the reply exists: no response code, flags or details yet.
    assert result[0]["body"] == "[body] in 0" and result[5]["body"] == "<src|-|->"
    assert result[1]["body"] == '{"b":"nope","c":0}\n'
    # A text format's reply gets text/plain after content-length; an explicit content type
    # (or JSON's) comes first, after the location and the route's response headers.
    assert result[0]["headers"][:2] == ["content-length: 11", "content-type: text/plain"]
    assert result[3]["headers"][:2] == ["content-type: text/plain", "content-length: 1"]
    assert result[6]["headers"][:3] == ["location: http://example.com/moved?q", "x-route: r",
                                        "content-type: application/json"]  # fmt: skip
    # The connection manager's local_reply_config formats the result again.
    assert result[9]["body"] == "LR([body])"
    out.assert_same()
