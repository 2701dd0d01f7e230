"""The connection manager's timers and connection limits, Envoy against legatus.

stream_idle_timeout, request_timeout, request_headers_timeout, idle_timeout,
max_connection_duration, max_stream_duration and max_requests_per_connection, each set to a
fraction of a second on its own listener. Both proxies must send the same reply (or close
the connection the same way), within the same time window, and count the same stats
(downstream_rq_idle_timeout, downstream_cx_idle_timeout, downstream_cx_max_requests_reached,
...), with the same access-log entries. Timing facts are compared as "in bounds" (the window
allows for scheduling) rather than as durations.
"""

from __future__ import annotations

import time

from tests.differential.http_scenario import (  # noqa: F401 (fixtures)
    Cluster,
    Listener,
    Reply,
    http_pair_fixture,
    http_pair_processes_fixture,
    http_request,
    scenario,
    timed,
)

SCRIPTS = {"/slow": Reply(delay=1.0)}


def _proxy(name: str, **hcm) -> tuple[Listener, Cluster]:
    hcm.setdefault("delayed_close_timeout", "0.1s")
    return Listener(name=name, hcm=hcm), Cluster(name=name)


def _local(status: str, body: str, *, close: bool = False) -> dict:
    headers = [f"content-length: {len(body)}", "content-type: text/plain", "date: <date>",
               "server: envoy", *(["connection: close"] if close else [])]  # fmt: skip
    return {"status": status, "headers": headers, "body": body, "framing": "content-length"}


def _flags(out) -> list[tuple]:
    return [(e["code"], e["flags"], e["details"]) for e in out.envoy.log]


@scenario(*_proxy("stream_idle", stream_idle_timeout="0.3s"))
def test_stream_idle_timeout(http_pair):
    def traffic(side):
        out = []
        with side.connect("stream_idle") as c:
            c.send(http_request("GET", "/slow"))
            response, when = timed(c.response, (0.25, 0.9))
            out += [response.view(), when, c.ending(wait=0.3)]
        with side.connect("stream_idle") as c:  # the request body never completes
            c.send(http_request("POST", "/", [("content-length", "10")]) + b"abc")
            response, when = timed(c.response, (0.25, 0.9))
            out += [response.view(), when, c.ending()]
        return out

    out = http_pair.run(traffic)
    assert out.envoy.result == [
        _local("HTTP/1.1 504 Gateway Timeout", "stream timeout"), "in bounds", "open",
        _local("HTTP/1.1 408 Request Timeout", "stream timeout", close=True), "in bounds",
        "closed",
    ]  # fmt: skip
    assert _flags(out) == [(504, "SI", "stream_idle_timeout"), (408, "SI", "stream_idle_timeout")]
    assert out.envoy.stats["http.stream_idle.downstream_rq_idle_timeout"] == 2
    out.assert_same()


@scenario(*_proxy("request_timeout", request_timeout="0.3s"))
def test_request_timeout(http_pair):
    def traffic(side):
        out = []
        with side.connect("request_timeout") as c:
            c.send(http_request("POST", "/", [("content-length", "10")]) + b"abc")
            response, when = timed(c.response, (0.25, 0.9))
            out += [response.view(), when, c.ending()]
        # A complete request is not timed by request_timeout, however slow the response.
        out.append(side.request("request_timeout", "GET", "/slow").view())
        return out

    out = http_pair.run(traffic)
    assert out.envoy.result[:3] == [
        _local("HTTP/1.1 408 Request Timeout", "request timeout", close=True), "in bounds",
        "closed",
    ]  # fmt: skip
    assert out.envoy.result[3]["status"] == "HTTP/1.1 200 OK"
    assert _flags(out)[0] == (408, "-", "request_overall_timeout")
    assert out.envoy.stats["http.request_timeout.downstream_rq_timeout"] == 1
    out.assert_same()


@scenario(*_proxy("headers_timeout", request_headers_timeout="0.3s"))
def test_request_headers_timeout(http_pair):
    def traffic(side):
        with side.connect("headers_timeout") as c:
            c.send(b"GET / HTTP/1.1\r\nhost: example.com\r\n")
            response, when = timed(c.response, (0.25, 0.9))
            return [response.view(), when, c.ending()]

    out = http_pair.run(traffic)
    assert out.envoy.result == [
        _local("HTTP/1.1 408 Request Timeout", "request header timeout", close=True),
        "in bounds",
        "closed",
    ]
    assert _flags(out) == [(408, "-", "request_header_timeout")]
    assert out.envoy.stats["http.headers_timeout.downstream_rq_header_timeout"] == 1
    out.assert_same()


@scenario(*_proxy("idle", common_http_protocol_options={"idle_timeout": "0.3s"},
                  drain_timeout="0.5s"))  # fmt: skip
def test_connection_idle_timeout(http_pair):
    """The idle timeout starts the drain sequence: the connection closes drain_timeout later
    (5 s by default)."""

    def traffic(side):
        with side.connect("idle") as c:
            response = c.request("GET", "/")
            time.sleep(0.2)
            second = c.request("GET", "/")  # the timer runs only while no request is active
            ending, when = timed(lambda: c.ending(wait=2), (0.7, 1.4))
            return [response.view(), second.view(), ending, when]

    out = http_pair.run(traffic)
    assert out.envoy.result[2:] == ["closed", "in bounds"]
    assert out.envoy.stats["http.idle.downstream_cx_idle_timeout"] == 1
    out.assert_same()


@scenario(*_proxy("max_duration", common_http_protocol_options={
    "max_connection_duration": "0.3s"}, drain_timeout="0.5s"))  # fmt: skip
def test_max_connection_duration(http_pair):
    """Reaching max_connection_duration starts the drain sequence: an idle connection closes
    drain_timeout later; a response in flight gets `connection: close`."""

    def traffic(side):
        out = []
        with side.connect("max_duration") as c:  # idle when the duration is reached
            out.append(c.request("GET", "/").view())
            out += timed(lambda: c.ending(wait=2), (0.7, 1.4))
        with side.connect("max_duration") as c:  # a request in flight then
            c.send(http_request("GET", "/slow"))
            out.append(c.response().view())
            out += timed(lambda: c.ending(wait=2), (0.0, 0.5))
        return out

    out = http_pair.run(traffic)
    assert out.envoy.result[1:3] == ["closed", "in bounds"]
    assert out.envoy.result[3]["headers"][-1] == "connection: close"
    assert out.envoy.result[4:] == ["closed", "in bounds"]
    assert out.envoy.stats["http.max_duration.downstream_cx_max_duration_reached"] == 2
    out.assert_same()


@scenario(*_proxy("max_stream", common_http_protocol_options={"max_stream_duration": "0.3s"}))
def test_max_stream_duration(http_pair):
    def traffic(side):
        out = []
        for path in ("/slow", "/"):
            with side.connect("max_stream") as c:
                c.send(http_request("GET", path))
                response, when = timed(c.response, (0.0, 0.9))
                out += [response.view(), when, c.ending(wait=0.3)]
        return out

    out = http_pair.run(traffic)
    # A request already complete: 504 (408 while it is still arriving), no response flag,
    # and the connection stays open.
    assert out.envoy.result[:3] == [
        _local("HTTP/1.1 504 Gateway Timeout", "downstream duration timeout"),
        "in bounds",
        "open",
    ]
    assert _flags(out)[0] == (504, "-", "max_duration_timeout")
    assert out.envoy.stats["http.max_stream.downstream_rq_max_duration_reached"] == 1
    out.assert_same()


@scenario(*_proxy("max_requests", common_http_protocol_options={
    "max_requests_per_connection": 2}))  # fmt: skip
def test_max_requests_per_connection(http_pair):
    def traffic(side):
        with side.connect("max_requests") as c:
            responses = [c.request("GET", f"/{i}").view() for i in range(2)]
            return [*responses, c.ending()]

    out = http_pair.run(traffic)
    first, last, ending = out.envoy.result
    assert "connection: close" not in first["headers"]
    assert last["headers"][-1] == "connection: close"
    assert ending == "closed"
    assert out.envoy.stats["http.max_requests.downstream_cx_max_requests_reached"] == 1
    out.assert_same()
