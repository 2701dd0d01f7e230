"""The router's local replies and response flags, Envoy against legatus.

One listener per outcome, each with its own cluster: no route (404 NR), an unknown cluster
(503 NC), a cluster without endpoints (503 UH), an endpoint that refuses (503 UF), circuit
breakers (503 UO and x-envoy-overloaded), an upstream that closes or resets before its
response head (503 UC), one that answers garbage (502 UPE), a route timeout (504 UT), and
the routes that answer themselves (direct_response, redirect). Both proxies must agree on
the status line, headers, body, what the upstream saw, the access log (%RESPONSE_FLAGS%,
%RESPONSE_CODE_DETAILS%, %UPSTREAM_TRANSPORT_FAILURE_REASON%...) and the stats; the exact
Envoy reply of each is also asserted.
"""

from __future__ import annotations

from tests.differential.http_scenario import (  # noqa: F401 (fixtures)
    Cluster,
    Listener,
    Reply,
    http_pair_fixture,
    http_pair_processes_fixture,
    http_request,
    route,
    scenario,
)
from tests.support.process import wait_for

SCRIPTS = {
    "/close": Reply(abort="close"),
    "/reset": Reply(abort="reset"),
    "/garbage": Reply(abort="garbage"),
    "/slow": Reply(delay=1.0),
    "/hold": Reply(hold=True),
}
UPSTREAM_ERROR = "upstream connect error or disconnect/reset before headers. reset reason: "


def _proxy(name: str, **cluster) -> tuple[Listener, Cluster]:
    return Listener(name=name), Cluster(name=name, **cluster)


def _reply(status: str, body: str, *, extra: tuple = ()) -> dict:
    """Envoy's local reply to a request that went to the router, on a connection kept open."""
    headers = [*extra, f"content-length: {len(body)}", "content-type: text/plain",
               "date: <date>", "server: envoy"]  # fmt: skip
    if not body:
        headers = [*extra, "date: <date>", "server: envoy", "content-length: 0"]
    return {"status": status, "headers": headers, "body": body, "framing": "content-length"}


def _flags(out) -> list[tuple]:
    return [(e["code"], e["flags"], e["details"], e["upstream_failure"]) for e in out.envoy.log]


@scenario(Listener(name="nr", routes=[route("/only", {"route": {"cluster": "nr"}})]),
          Cluster(name="nr"))  # fmt: skip
def test_no_route_is_404_nr(http_pair):
    def traffic(side):
        return [side.request("nr", "GET", "/elsewhere").view()]

    out = http_pair.run(traffic)
    assert out.envoy.result == [_reply("HTTP/1.1 404 Not Found", "")]
    assert _flags(out) == [(404, "NR", "route_not_found", None)]
    assert out.envoy.stats["http.nr.no_route"] == 1
    out.assert_same()


@scenario(Listener(name="nc", routes=[route("/", {"route": {"cluster": "missing"}})],
                   route_config={"validate_clusters": False}))  # fmt: skip
def test_unknown_cluster_is_503_nc(http_pair):
    def traffic(side):
        return [side.request("nc", "GET", "/").view()]

    out = http_pair.run(traffic)
    assert out.envoy.result == [_reply("HTTP/1.1 503 Service Unavailable", "")]
    assert _flags(out) == [(503, "NC", "cluster_not_found", None)]
    assert out.envoy.stats["http.nc.no_cluster"] == 1
    out.assert_same()


@scenario(*_proxy("uh", endpoint="none"))
def test_no_healthy_upstream_is_503_uh(http_pair):
    def traffic(side):
        return [side.request("uh", "GET", "/").view()]

    out = http_pair.run(traffic)
    assert out.envoy.result == [_reply("HTTP/1.1 503 Service Unavailable", "no healthy upstream")]
    assert _flags(out) == [(503, "UH", "no_healthy_upstream", None)]
    assert out.envoy.stats["cluster.uh.upstream_cx_none_healthy"] == 1
    out.assert_same()


@scenario(*_proxy("uf", endpoint="refused"))
def test_refused_connection_is_503_uf(http_pair):
    def traffic(side):
        return [side.request("uf", "GET", "/").view()]

    out = http_pair.run(traffic)
    # The transport failure reason is in the details and the log, not in the body.
    body = f"{UPSTREAM_ERROR}remote connection failure"
    assert out.envoy.result == [_reply("HTTP/1.1 503 Service Unavailable", body)]
    failure = "delayed_connect_error:_Connection_refused"
    details = f"upstream_reset_before_response_started{{remote_connection_failure|{failure}}}"
    assert _flags(out) == [(503, "UF", details, failure)]
    assert out.envoy.stats["cluster.uf.upstream_cx_connect_fail"] == 1
    out.assert_same()


@scenario(*_proxy("uo_pending", extra={"circuit_breakers": {"thresholds": [
    {"max_pending_requests": 0}]}}))  # fmt: skip
def test_pending_overflow_is_503_uo(http_pair):
    def traffic(side):
        return [side.request("uo_pending", "GET", "/").view()]

    out = http_pair.run(traffic)
    overloaded = ("x-envoy-overloaded: true",)
    assert out.envoy.result == [
        _reply("HTTP/1.1 503 Service Unavailable", f"{UPSTREAM_ERROR}overflow", extra=overloaded)
    ]
    assert _flags(out) == [(503, "UO", "upstream_reset_before_response_started{overflow}", None)]
    assert out.envoy.stats["cluster.uo_pending.upstream_rq_pending_overflow"] == 1
    out.assert_same()


@scenario(*_proxy("uo_requests", extra={"circuit_breakers": {"thresholds": [
    {"max_requests": 1}]}}))  # fmt: skip
def test_request_overflow_with_one_held_request_is_503_uo(http_pair):
    def traffic(side):
        held = side.upstream.held
        with side.connect("uo_requests") as first:
            first.send(http_request("GET", "/hold"))
            wait_for(lambda: side.upstream.held > held, timeout=3, what="the held request")
            overflow = side.request("uo_requests", "GET", "/second")
            side.upstream.release()
            return [overflow.view(), first.response().view()]

    out = http_pair.run(traffic)
    assert out.envoy.result[0] == _reply("HTTP/1.1 503 Service Unavailable",
                                         f"{UPSTREAM_ERROR}overflow",
                                         extra=("x-envoy-overloaded: true",))  # fmt: skip
    assert out.envoy.result[1]["status"] == "HTTP/1.1 200 OK"
    assert [u["request"] for u in out.envoy.upstream] == ["GET /hold HTTP/1.1"]
    # The pool opens a second connection for the second request, which overflows once it
    # is connected: an active (not pending) overflow, and an idle connection left open.
    assert out.envoy.stats["cluster.uo_requests.upstream_rq_active_overflow"] == 1
    assert out.envoy.stats["cluster.uo_requests.upstream_cx_total"] == 2
    out.assert_same()


@scenario(*_proxy("uc"))
def test_upstream_close_or_reset_before_headers_is_503_uc(http_pair):
    def traffic(side):
        return [side.request("uc", "GET", path).view() for path in ("/close", "/reset")]

    out = http_pair.run(traffic)
    body = f"{UPSTREAM_ERROR}connection termination"
    assert out.envoy.result == [_reply("HTTP/1.1 503 Service Unavailable", body)] * 2
    details = "upstream_reset_before_response_started{connection_termination}"
    assert _flags(out) == [(503, "UC", details, None)] * 2
    out.assert_same()


@scenario(*_proxy("upe"))
def test_upstream_garbage_is_502_upe(http_pair):
    def traffic(side):
        return [side.request("upe", "GET", "/garbage").view()]

    out = http_pair.run(traffic)
    assert out.envoy.result == [
        _reply("HTTP/1.1 502 Bad Gateway", f"{UPSTREAM_ERROR}protocol error")
    ]
    details = "upstream_reset_before_response_started{protocol_error}"
    assert _flags(out) == [(502, "UPE", details, None)]
    assert out.envoy.stats["cluster.upe.upstream_cx_protocol_error"] == 1
    out.assert_same()


@scenario(Listener(name="ut", routes=[route("/", {"route": {"cluster": "ut", "timeout": "0.5s"}})]),
          Cluster(name="ut"))  # fmt: skip
def test_route_timeout_is_504_ut(http_pair):
    def traffic(side):
        return [side.request("ut", "GET", "/slow").view()]

    out = http_pair.run(traffic)
    assert out.envoy.result == [_reply("HTTP/1.1 504 Gateway Timeout", "upstream request timeout")]
    assert _flags(out) == [(504, "UT", "response_timeout", None)]
    assert out.envoy.stats["cluster.ut.upstream_rq_timeout"] == 1
    out.assert_same()


DIRECT_ROUTES = [
    route("/direct-empty", {"direct_response": {"status": 503}}),
    route("/direct", {"direct_response": {"status": 200, "body": {"inline_string": "direct"}}},
          response_headers_to_add=[{"header": {"key": "x-direct", "value": "1"}}]),
    route("/created", {"direct_response": {"status": 201, "body": {"inline_string": "made"}}}),
    route("/redirect-host", {"redirect": {"host_redirect": "elsewhere.example"}}),
    route("/redirect-https", {"redirect": {"https_redirect": True,
                                           "response_code": "PERMANENT_REDIRECT"}}),
    route("/redirect-path", {"redirect": {"path_redirect": "/new", "strip_query": True}}),
    route("/redirect-prefix", {"redirect": {"prefix_rewrite": "/moved",
                                            "response_code": "SEE_OTHER"}}),
]  # fmt: skip


@scenario(Listener(name="direct", routes=DIRECT_ROUTES))
def test_direct_responses_and_redirects(http_pair):
    paths = ["/direct", "/direct-empty", "/created", "/redirect-host?q=1", "/redirect-https/p",
             "/redirect-path?q=1", "/redirect-prefix/x?y=2"]  # fmt: skip

    def traffic(side):
        out = {}
        with side.connect("direct") as c:
            for path in paths:
                out[path] = c.request("GET", path).view()
            out["head"] = c.request("HEAD", "/direct").view()
            out["ending"] = c.ending(wait=0.3)
        return out

    out = http_pair.run(traffic)
    got = out.envoy.result
    assert got["/direct"] == {
        "status": "HTTP/1.1 200 OK",
        "headers": ["x-direct: 1", "content-length: 6", "content-type: text/plain",
                    "date: <date>", "server: envoy"],
        "body": "direct",
        "framing": "content-length",
    }  # fmt: skip
    assert got["/redirect-host?q=1"]["status"] == "HTTP/1.1 301 Moved Permanently"
    assert "location: http://elsewhere.example/redirect-host?q=1" in got[
        "/redirect-host?q=1"]["headers"]  # fmt: skip
    assert "location: https://example.com/redirect-https/p" in got["/redirect-https/p"]["headers"]
    assert got["/redirect-https/p"]["status"] == "HTTP/1.1 308 Permanent Redirect"
    assert "location: http://example.com/new" in got["/redirect-path?q=1"]["headers"]
    assert got["ending"] == "open"
    # A 201 direct response gets a location; redirects are direct responses for the log and
    # the stats (rq_redirect stays 0).
    assert got["/created"]["headers"][0] == "location: http://example.com/created"
    assert [e["details"] for e in out.envoy.log] == ["direct_response"] * 8
    assert out.envoy.stats["http.direct.rq_direct_response"] == 8
    assert out.envoy.stats["http.direct.rq_redirect"] == 0
    out.assert_same()
