"""gRPC local replies: which requests get trailers-only answers (as they arrived, not as a filter
left them) and the statuses Envoy gives them."""

from __future__ import annotations

from legatus.http.headers import HeaderMap
from legatus.http.local_reply import (
    ENVOY_LOCAL_REPLIES,
    LocalReply,
    latch_grpc_request,
    render_local_reply,
)
from legatus.stream_info import StreamInfo


def grpc_request(content_type: str = "application/grpc") -> HeaderMap:
    return HeaderMap([(":method", "POST"), (":path", "/s/m"), ("content-type", content_type)])


def render(name: str, request: HeaderMap, info: StreamInfo | None = None, **kw):
    return render_local_reply(ENVOY_LOCAL_REPLIES[name], request_headers=request, info=info, **kw)


def test_max_duration_timeout_is_deadline_exceeded():
    headers, body = render("max_duration_timeout", grpc_request())
    assert list(headers.items()) == [
        (":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "4"),
        ("grpc-message", "downstream duration timeout"),
    ]  # fmt: skip
    assert body == b""
    # Callers that pass only the status, body and details get it too.
    reply = LocalReply(status=504, body="downstream duration timeout",
                       details="max_duration_timeout")  # fmt: skip
    headers, _ = render_local_reply(reply, request_headers=grpc_request())
    assert headers.get("grpc-status") == "4"


def test_route_timeouts_stay_unavailable():
    headers, _ = render("upstream_request_timeout", grpc_request("application/grpc+proto"))
    assert (headers.get(":status"), headers.get("grpc-status")) == ("200", "14")


def test_the_latch_decides_over_the_headers_at_reply_time():
    """A gRPC-Web request the grpc_web filter turned into gRPC: a plain HTTP reply."""
    request = grpc_request("application/grpc-web")
    info = StreamInfo(now_monotonic=0.0)
    latch_grpc_request(info, request)
    request.set("content-type", "application/grpc")
    latch_grpc_request(info, request)  # the first answer stays
    headers, body = render("no_healthy_upstream", request, info)
    assert headers.get(":status") == "503" and body == b"no healthy upstream"
    # And the other way round: a gRPC request whose content type a filter changed.
    request = grpc_request()
    info = StreamInfo(now_monotonic=0.0)
    latch_grpc_request(info, request)
    request.set("content-type", "text/plain")
    headers, body = render("no_healthy_upstream", request, info)
    assert headers.get("grpc-status") == "14" and body == b""


def test_an_explicit_answer_wins():
    headers, _ = render("no_healthy_upstream", grpc_request(), grpc=False)
    assert headers.get(":status") == "503"
    headers, _ = render("no_healthy_upstream", HeaderMap([(":path", "/")]), grpc=True)
    assert headers.get("grpc-status") == "14"
