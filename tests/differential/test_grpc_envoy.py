"""gRPC over HTTP/1.1, Envoy against legatus: local replies, trailers, grpc-timeout, gRPC-Web and
the gRPC stats.

The upstream answers as a gRPC server would, over HTTP/1.1: message frames in a chunked body
and ``grpc-status`` in the trailers (both proxies read and forward HTTP/1 trailers only with
``enable_trailers``, which every listener and cluster here sets), or a trailers-only answer,
or a plain HTTP error. Each test compares what the client got (trailers included), what the
upstream was sent, the stats, and the ``%GRPC_STATUS%`` access-log operator in its three forms,
written to the proxy's stdout (``GRPCLOG`` lines) by every listener here.
"""

from __future__ import annotations

import base64
import re
import time

from legatus.grpc.common import frame
from tests.differential.http_scenario import (  # noqa: F401 (fixtures)
    Cluster,
    Listener,
    Reply,
    http_pair_fixture,
    http_pair_processes_fixture,
    scenario,
)

HPO = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
STDOUT_LOG = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
GRPC_WEB = "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"
GRPC_STATS = "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"
FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
LOG_LINE = ("GRPCLOG %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %GRPC_STATUS% "
            "%GRPC_STATUS(SNAKE_STRING)% %GRPC_STATUS(NUMBER)% %GRPC_STATUS_NUMBER%\n")  # fmt: skip

GRPC = (("content-type", "application/grpc"),)
OK_TRAILERS = (("grpc-status", "0"), ("grpc-message", "fine"))
MESSAGES = (frame(b"one"), frame(b"two"))
SCRIPTS = {
    "/": Reply(headers=GRPC, chunks=MESSAGES, trailers=OK_TRAILERS),
    "/svc.Echo/Fail": Reply(headers=GRPC, chunks=(frame(b"x"),),
                            trailers=(("grpc-status", "14"), ("grpc-message", "down 100%"))),
    "/svc.Echo/TrailersOnly": Reply(body=b"", headers=(
        *GRPC, ("grpc-status", "5"), ("grpc-message", "not here"))),
    "/svc.Echo/HttpError": Reply(status=503, body=b"oops"),
    "/svc.Echo/Unavailable": Reply(body=b"", headers=(*GRPC, ("grpc-status", "14"))),
    "/svc.Echo/NoTrailers": Reply(headers=GRPC, chunks=(frame(b"lone"),)),
    "/ut/": Reply(delay=0.5, headers=GRPC, chunks=MESSAGES, trailers=OK_TRAILERS),
    "/slow/": Reply(delay=0.5, headers=GRPC, chunks=MESSAGES, trailers=OK_TRAILERS),
}  # fmt: skip

TRAILERS_ON = {"typed_extension_protocol_options": {HPO: {
    "@type": f"type.googleapis.com/{HPO}",
    "explicit_http_config": {"http_protocol_options": {"enable_trailers": True}}}}}  # fmt: skip


def hcm(**extra) -> dict:
    log = {
        "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": STDOUT_LOG,
            "log_format": {"text_format_source": {"inline_string": LOG_LINE}},
        },
    }
    return {"http_protocol_options": {"enable_trailers": True}, "access_log": [log],
            "delayed_close_timeout": "0.1s", **extra}  # fmt: skip


def to(prefix: str, cluster: str, **action) -> dict:
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster, **action}}


def grpc_call(side, listener: str, path: str, *, headers=(), body: bytes = frame(b"hi"),
              content_type: str = "application/grpc") -> dict:  # fmt: skip
    response = side.request(listener, "POST", path, [("content-type", content_type), *headers],
                            body)  # fmt: skip
    return response.view()


def log_mark(side) -> int:
    return len(re.findall(r"GRPCLOG ", side.proxy.log()))


def grpc_log(side, mark: int, count: int) -> list[str]:
    """The ``count`` GRPCLOG lines written after ``mark`` (log_mark), once they all are."""
    deadline = time.monotonic() + 5
    while True:
        lines = re.findall(r"GRPCLOG [^\n]*", side.proxy.log())[mark:]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines


def host_requests(side, cluster: str) -> dict[str, str]:
    """The host's rq_success / rq_error / rq_total from /clusters."""
    status, body = side.proxy.admin("/clusters")
    assert status == 200
    out = {}
    for line in body.splitlines():
        parts = line.split("::")
        if parts[0] == cluster and len(parts) == 4 and parts[2] in (
            "rq_success", "rq_error", "rq_total", "rq_timeout"
        ):  # fmt: skip
            out[parts[2]] = parts[3]
    return out


# Local replies ----------------------------------------------------------------------------

FAULT_FILTER = {
    "name": "envoy.filters.http.fault",
    "typed_config": {
        "@type": FAULT,
        "abort": {"header_abort": {}, "percentage": {"numerator": 100}},
    },
}
LOCAL_REPLY_ROUTES = [
    to("/nc", "grpc_missing"),
    to("/uh", "grpc_empty"),
    to("/uf", "grpc_dead"),
    to("/uo", "grpc_overflow"),
    to("/ut/", "grpc_lr_up", timeout="0.2s"),
    {"match": {"prefix": "/direct"}, "direct_response": {
        "status": 200, "body": {"inline_string": "hello\nthere"}}},
    {"match": {"prefix": "/d403"}, "direct_response": {
        "status": 403, "body": {"inline_string": "nope"}}},
    to("/", "grpc_lr_up"),
]  # fmt: skip
OVERFLOW = {"circuit_breakers": {"thresholds": [
    {"max_requests": 0, "max_pending_requests": 0, "max_connections": 0}]}}  # fmt: skip


@scenario(
    Listener(name="grpc_lr", routes=LOCAL_REPLY_ROUTES, hcm=hcm(), filters=[FAULT_FILTER],
             route_config={"validate_clusters": False}),
    Cluster(name="grpc_lr_up", extra=TRAILERS_ON),
    Cluster(name="grpc_empty", endpoint="none"),
    Cluster(name="grpc_dead", endpoint="refused"),
    Cluster(name="grpc_overflow", extra=OVERFLOW),
)  # fmt: skip
def test_grpc_local_replies(http_pair):
    """Every local reply to a gRPC request is trailers-only: 200, grpc-status from the HTTP
    status (a route timeout is UNAVAILABLE), the body as a percent-encoded grpc-message."""
    paths = ["/nomatch/x", "/nc/x", "/uh/x", "/uf/x", "/uo/x", "/ut/x", "/direct", "/d403"]

    def traffic(side):
        mark = log_mark(side)
        out = [grpc_call(side, "grpc_lr", p) for p in paths]
        out.append(grpc_call(side, "grpc_lr", "/uh/x", content_type="application/grpc+proto"))
        out.append(grpc_call(side, "grpc_lr", "/uh/x", content_type="application/grpc-web"))
        out.append(grpc_call(side, "grpc_lr", "/f/x",
                             headers=[("x-envoy-fault-abort-request", "503")]))  # fmt: skip
        out.append(grpc_call(side, "grpc_lr", "/f/x",
                             headers=[("x-envoy-fault-abort-grpc-request", "9")]))  # fmt: skip
        out.append(grpc_log(side, mark, len(out)))
        return out

    outcome = http_pair.run(traffic)
    envoy = outcome.envoy.result
    assert envoy[2]["status"] == "HTTP/1.1 200 OK"
    assert "grpc-status: 14" in envoy[2]["headers"]
    assert "grpc-message: no healthy upstream" in envoy[2]["headers"]
    assert "grpc-status: 14" in envoy[5]["headers"]  # the route timeout
    assert "grpc-message: hello%0Athere" in envoy[6]["headers"]
    assert envoy[9]["status"] == "HTTP/1.1 503 Service Unavailable"  # gRPC-Web: plain HTTP
    assert envoy[-1][0] == "GRPCLOG /nomatch/x 200 - OK OK 0 0"  # (the catch-all route)
    assert envoy[-1][2] == "GRPCLOG /uh/x 200 UH Unavailable UNAVAILABLE 14 14"
    outcome.assert_same()


# Trailers, host stats, outlier-relevant statuses -------------------------------------------


@scenario(
    Listener(name="grpc_pass", routes=[to("/", "grpc_pass_up")], hcm=hcm()),
    Cluster(name="grpc_pass_up", extra=TRAILERS_ON),
)
def test_grpc_responses_pass_with_their_trailers(http_pair):
    """Frames and trailers go through; the host's rq_success / rq_error follow grpc-status (a
    200 whose trailers say UNAVAILABLE is an error, one that never sent them too)."""
    paths = ["/svc.Echo/Call", "/svc.Echo/Fail", "/svc.Echo/TrailersOnly",
             "/svc.Echo/HttpError", "/svc.Echo/NoTrailers"]  # fmt: skip

    def traffic(side):
        mark = log_mark(side)
        out = [grpc_call(side, "grpc_pass", p, body=frame(b"a") + frame(b"b")) for p in paths]
        out.append(grpc_log(side, mark, len(paths)))
        out.append(host_requests(side, "grpc_pass_up"))
        return out

    outcome = http_pair.run(traffic)
    envoy = outcome.envoy.result
    assert envoy[0]["trailers"] == ["grpc-status: 0", "grpc-message: fine"]
    assert envoy[1]["trailers"] == ["grpc-status: 14", "grpc-message: down 100%"]
    assert envoy[-2] == [
        "GRPCLOG /svc.Echo/Call 200 - OK OK 0 0",
        "GRPCLOG /svc.Echo/Fail 200 - Unavailable UNAVAILABLE 14 14",
        "GRPCLOG /svc.Echo/TrailersOnly 200 - NotFound NOT_FOUND 5 5",
        "GRPCLOG /svc.Echo/HttpError 503 - Unavailable UNAVAILABLE 14 14",
        "GRPCLOG /svc.Echo/NoTrailers 200 - Unknown UNKNOWN 2 2",
    ]
    # Call and TrailersOnly (NOT_FOUND is a 404) are successes; a 14, a 503 and no trailers
    # are errors.
    assert envoy[-1] == {"rq_error": "3", "rq_success": "2", "rq_timeout": "0", "rq_total": "5"}
    outcome.assert_same()


OUTLIER = {**TRAILERS_ON, "outlier_detection": {
    "consecutive_5xx": 2, "interval": "30s", "base_ejection_time": "30s",
    "max_ejection_percent": 100}, "common_lb_config": {"healthy_panic_threshold": {}}}  # fmt: skip


@scenario(
    Listener(name="grpc_outlier", routes=[to("/", "grpc_outlier_up")], hcm=hcm()),
    Cluster(name="grpc_outlier_up", extra=OUTLIER),
)
def test_trailers_only_status_counts_for_outlier_detection(http_pair):
    """Two trailers-only UNAVAILABLE answers (HTTP 200) are two 503s to outlier detection:
    the host is ejected, and the third call finds no healthy upstream (no panic routing)."""

    def traffic(side):
        out = [grpc_call(side, "grpc_outlier", "/svc.Echo/Unavailable") for _ in range(2)]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the ejection may be decided a moment later
            if side.proxy.stats().get("cluster.grpc_outlier_up.outlier_detection.ejections_active"):
                break
            time.sleep(0.05)
        out.append(grpc_call(side, "grpc_outlier", "/svc.Echo/Call"))
        return out

    outcome = http_pair.run(traffic, full_stats=True)
    assert "grpc-status: 14" in outcome.envoy.result[2]["headers"]
    assert outcome.envoy.stats["cluster.grpc_outlier_up.outlier_detection.ejections_active"] == 1
    outcome.assert_same("result", "upstream", "log")
    # Outlier detection and the response codes; not the connection stats: Envoy also closes
    # the idle connection to the host it ejects, which legatus does not (yet).
    outlier = re.compile(r"^cluster\.grpc_outlier_up\.(outlier_detection|upstream_rq_)")
    envoy_stats = {k: v for k, v in outcome.envoy.stats.items() if outlier.match(k)}
    assert envoy_stats == {k: v for k, v in outcome.legatus.stats.items() if outlier.match(k)}


# grpc-timeout ---------------------------------------------------------------------------------

TIMEOUT_ROUTES = [
    to("/old/", "grpc_to_up", max_grpc_timeout="10s", grpc_timeout_offset="0.1s"),
    to("/old0/", "grpc_to_up", max_grpc_timeout="0s"),
    to("/slow/", "grpc_to_up", max_grpc_timeout="10s"),
    to("/retry/", "grpc_to_up", max_grpc_timeout="10s",
       retry_policy={"retry_on": "5xx", "num_retries": 1, "per_try_timeout": "3s"}),
    to("/", "grpc_to_up"),
]  # fmt: skip


@scenario(
    Listener(name="grpc_to", routes=TIMEOUT_ROUTES, hcm=hcm()),
    Cluster(name="grpc_to_up", extra=TRAILERS_ON),
)
def test_grpc_timeout_header(http_pair):
    """With max_grpc_timeout the route timeout is the request's grpc-timeout (capped, less the
    offset), and the upstream is told it in grpc-timeout and x-envoy-expected-rq-timeout-ms;
    the timeout reply is UNAVAILABLE."""
    cases = [
        ("/old/a", "2S"), ("/old/a", "100m"), ("/old/a", "20S"), ("/old/a", None),
        ("/old/a", "bogus"), ("/old/a", "99999999n"), ("/old/a", "1500001u"),
        ("/old/a", "99999999H"),
        ("/old0/a", "2S"), ("/old0/a", None), ("/retry/a", "5S"), ("/plain/a", "2S"),
    ]  # fmt: skip

    def traffic(side):
        mark = log_mark(side)
        out = []
        for path, timeout in cases:
            headers = [("grpc-timeout", timeout)] if timeout else []
            out.append(grpc_call(side, "grpc_to", path, headers=headers))
        out.append(grpc_call(side, "grpc_to", "/old/a", headers=[("grpc-timeout", "2S")],
                             content_type="text/plain"))  # fmt: skip
        out.append(grpc_call(side, "grpc_to", "/slow/a", headers=[("grpc-timeout", "200m")]))
        out.append(grpc_log(side, mark, len(out))[-1])
        return out

    outcome = http_pair.run(traffic)
    sent = [dict(line.split(": ", 1) for line in r["headers"]) for r in outcome.envoy.upstream]
    assert [(h.get("grpc-timeout"), h.get("x-envoy-expected-rq-timeout-ms")) for h in sent][:4] == [
        ("1900m", "1900"), ("100m", "100"), ("10000m", "10000"), ("10000m", "10000")]  # fmt: skip
    assert outcome.envoy.result[-1] == "GRPCLOG /slow/a 200 UT Unavailable UNAVAILABLE 14 14"
    outcome.assert_same()


DURATION_ROUTES = [
    to("/msd/", "grpc_msd_up", max_stream_duration={
        "grpc_timeout_header_max": "1s", "grpc_timeout_header_offset": "0.1s"}),
    to("/uncapped/", "grpc_msd_up", max_stream_duration={"grpc_timeout_header_max": "0s"}),
    to("/slow/", "grpc_msd_up", max_stream_duration={"max_stream_duration": "0.2s"}),
    to("/slowgrpc/", "grpc_msd_up", max_stream_duration={"grpc_timeout_header_max": "0s"}),
    to("/", "grpc_msd_up"),
]  # fmt: skip


@scenario(
    Listener(name="grpc_msd", routes=DURATION_ROUTES, hcm=hcm()),
    Cluster(name="grpc_msd_up", extra=TRAILERS_ON),
)
def test_route_max_stream_duration(http_pair):
    """A route's max_stream_duration (Envoy's "new timeouts"): the stream's duration comes
    from the request's grpc-timeout (capped by grpc_timeout_header_max, less the offset) or
    max_stream_duration, and a gRPC request's grpc-timeout is rewritten to it; the stream
    duration running out is answered by the connection manager."""
    # (A grpc-timeout under the offset makes a duration of 0: whether the request reaches the
    # upstream before that timer fires depends on the upstream connection being free at once,
    # a race on both sides; not compared.)
    cases = [
        ("/msd/a", "5S"), ("/msd/a", "300m"), ("/msd/a", None), ("/uncapped/a", "7S"),
        ("/plain/a", "2S"),
    ]  # fmt: skip

    def traffic(side):
        mark = log_mark(side)
        out = []
        for path, timeout in cases:
            headers = [("grpc-timeout", timeout)] if timeout else []
            out.append(grpc_call(side, "grpc_msd", path, headers=headers))
        out.append(grpc_call(side, "grpc_msd", "/msd/a", headers=[("grpc-timeout", "5S")],
                             content_type="text/plain"))  # fmt: skip
        out.append(grpc_call(side, "grpc_msd", "/slow/a"))
        out.append(grpc_call(side, "grpc_msd", "/slowgrpc/a", headers=[("grpc-timeout", "200m")]))
        out.append(grpc_log(side, mark, len(out))[-2:])
        return out

    outcome = http_pair.run(traffic)
    sent = [dict(line.split(": ", 1) for line in r["headers"]) for r in outcome.envoy.upstream]
    assert [h.get("grpc-timeout") for h in sent][:5] == ["900m", "200m", None, "7000m", "2S"]
    outcome.assert_same()


# gRPC-Web -------------------------------------------------------------------------------------

GRPC_WEB_FILTER = {"name": "envoy.filters.http.grpc_web", "typed_config": {"@type": GRPC_WEB}}
TEXT = "application/grpc-web-text"
ACCEPT_TEXT = [("accept", TEXT)]


@scenario(
    Listener(name="grpc_web", routes=[to("/uh", "grpc_empty"), to("/", "grpc_web_up")],
             hcm=hcm(), filters=[GRPC_WEB_FILTER]),
    Cluster(name="grpc_web_up", extra=TRAILERS_ON),
    Cluster(name="grpc_empty", endpoint="none"),
)  # fmt: skip
def test_grpc_web(http_pair):
    """gRPC-Web in, gRPC out: the request rewritten (and base64-decoded), the trailers moved
    into a 0x80 body frame, non-gRPC answers and local replies into grpc-message."""
    message = frame(b"hello")
    text = base64.b64encode(message)

    def traffic(side):
        calls = [
            ("/svc.Echo/Call", "application/grpc-web+proto", [], message),
            ("/svc.Echo/Call", "application/grpc-web", [], message),
            ("/svc.Echo/Call", TEXT, ACCEPT_TEXT, text),
            ("/svc.Echo/Call", TEXT, [], text),
            ("/svc.Echo/Call", "application/grpc-web-text+proto", [], text),
            ("/svc.Echo/Fail", TEXT, ACCEPT_TEXT, text),
            ("/svc.Echo/TrailersOnly", "application/grpc-web+proto", [], message),
            ("/svc.Echo/TrailersOnly", TEXT, ACCEPT_TEXT, text),
            ("/svc.Echo/HttpError", "application/grpc-web+proto", [], message),
            ("/svc.Echo/NoTrailers", "application/grpc-web+proto", [], message),
            ("/svc.Echo/Call", "application/grpc-web+json", [], message),
            ("/svc.Echo/Call", "application/grpc-web", [("grpc-accept-encoding", "gzip")],
             message),
            ("/uh/x", "application/grpc-web+proto", [], b""),
        ]  # fmt: skip
        mark = log_mark(side)
        out = [grpc_call(side, "grpc_web", p, content_type=c, headers=h, body=b)
               for p, c, h, b in calls]  # fmt: skip
        out.append(grpc_log(side, mark, len(calls)))
        return out

    outcome = http_pair.run(traffic)
    envoy = outcome.envoy.result
    block = b"grpc-status:0\r\ngrpc-message:fine\r\n"
    trailer_frame = b"\x80" + len(block).to_bytes(4, "big") + block
    assert envoy[0]["body"] == (frame(b"one") + frame(b"two") + trailer_frame).decode("latin-1")
    assert envoy[2]["body"] == (base64.b64encode(frame(b"one")) + base64.b64encode(frame(b"two"))
                                + base64.b64encode(trailer_frame)).decode()  # fmt: skip
    assert "grpc-message: oops" in envoy[8]["headers"]
    sent = outcome.envoy.upstream[0]
    assert sent["headers"][1:3] == ["content-type: application/grpc", "x-forwarded-proto: http"]
    assert sent["body"] == message.decode("latin-1") and sent["framing"] == "chunked"
    outcome.assert_same()


@scenario(
    Listener(name="grpc_web_bad", routes=[to("/", "grpc_web_up")], hcm=hcm(),
             filters=[GRPC_WEB_FILTER]),
    Cluster(name="grpc_web_up", extra=TRAILERS_ON),
)  # fmt: skip
def test_grpc_web_bad_base64(http_pair):
    """A -text body that is not base64: 400, translated for the gRPC-Web client."""

    def traffic(side):
        return [grpc_call(side, "grpc_web_bad", "/svc.Echo/Call", content_type=TEXT,
                          headers=ACCEPT_TEXT, body=body)
                for body in (b"abc", b"YQ==YQ==", b"YR==")]  # fmt: skip

    outcome = http_pair.run(traffic)
    assert all(r["status"] == "HTTP/1.1 400 Bad Request" for r in outcome.envoy.result)
    without_close = [[h for h in r["headers"] if h != "connection: close"]
                     for r in outcome.legatus.result]  # fmt: skip
    assert without_close == [
        [h for h in r["headers"] if h != "connection: close"] for r in outcome.envoy.result
    ]
    # Only the answers: Envoy's HTTP/1 codec hands a body over before its end of stream, so
    # when the reply comes (before or after the request is complete) differs, and with it
    # whether the upstream was reached and the downstream_rq_* counts.
    outcome.assert_same("result")


# grpc_stats -----------------------------------------------------------------------------------


def stats_filter(**fields) -> dict:
    return {"name": "envoy.filters.http.grpc_stats", "typed_config": {"@type": GRPC_STATS,
                                                                      **fields}}  # fmt: skip


@scenario(
    Listener(name="grpc_stats_all", routes=[to("/", "grpc_stats_up")], hcm=hcm(), filters=[
        GRPC_WEB_FILTER, stats_filter(stats_for_all_methods=True, enable_upstream_stats=True,
                                      emit_filter_state=True)]),
    Listener(name="grpc_stats_some", routes=[to("/", "grpc_allow_up")], hcm=hcm(), filters=[
        stats_filter(individual_method_stats_allowlist={
            "services": [{"name": "svc.Echo", "method_names": ["Call"]}]})]),
    Cluster(name="grpc_stats_up", extra=TRAILERS_ON),
    Cluster(name="grpc_allow_up", extra=TRAILERS_ON),
)  # fmt: skip
def test_grpc_stats_names(http_pair):
    """cluster.<c>.grpc.<service>.<method>.* (and grpc-web.*), or without the method for
    what the allowlist leaves out; every stat of the clusters is compared."""

    def traffic(side):
        out = []
        for listener in ("grpc_stats_all", "grpc_stats_some"):
            for path in (
                "/svc.Echo/Call",
                "/svc.Echo/Fail",
                "/svc.Echo/TrailersOnly",
                "/svc.Echo/HttpError",
                "/svc.Echo/NoTrailers",
                "/notgrpc",
            ):
                out.append(grpc_call(side, listener, path, body=frame(b"a") + frame(b"b")))
        out.append(
            grpc_call(
                side,
                "grpc_stats_all",
                "/svc.Echo/Call",
                content_type="application/grpc-web",
                body=frame(b"w"),
            )
        )
        out.append(
            grpc_call(
                side,
                "grpc_stats_all",
                "/svc.Echo/Call",
                content_type="application/proto",
                headers=[("connect-protocol-version", "1")],
                body=b"{}",
            )
        )
        return out

    outcome = http_pair.run(traffic, full_stats=True)
    stats = outcome.envoy.stats
    assert stats["cluster.grpc_stats_up.grpc.svc.Echo.Call.success"] == 3
    assert stats["cluster.grpc_stats_up.grpc.svc.Echo.Fail.14"] == 1
    assert stats["cluster.grpc_allow_up.grpc.svc.Echo.Call.total"] == 1
    assert stats["cluster.grpc_allow_up.grpc.failure"] == 2
    assert "cluster.grpc_stats_up.grpc.svc.Echo.Call.upstream_rq_time" in outcome.envoy.histograms
    outcome.assert_same()
