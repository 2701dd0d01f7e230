"""Route timeouts and gRPC deadlines: the deprecated max_grpc_timeout, what the upstream is told
(x-envoy-expected-rq-timeout-ms, grpc-timeout), and the per-route stream duration decision."""

from __future__ import annotations

import pytest

from legatus.config.proto_json import parse
from legatus.http.headers import HeaderMap
from legatus.router.action import compile_max_stream_duration
from legatus.router.timeouts import (
    DISABLE,
    MaxStreamDuration,
    StreamDuration,
    expected_timeout_ms,
    grpc_route_timeout_ms,
    set_timeout_headers,
    stream_duration,
)
from tests.unit.router.support import forward, routes_config, table

GRPC = (("content-type", "application/grpc"),)


def request(*headers) -> HeaderMap:
    return HeaderMap([(":method", "POST"), (":path", "/s/m"), *headers])


@pytest.mark.parametrize(
    ("header", "max_ms", "offset", "expected"),
    [("2S", 10000, 100, 1900), ("50m", 10000, 100, 50), ("20S", 10000, 100, 10000),
     (None, 10000, 100, 10000), ("bogus", 10000, None, 10000), ("100000000H", 10000, None, 10000),
     ("1n", 10000, None, 1), ("1500u", 10000, None, 2), ("2S", 0, None, 2000), (None, 0, None, 0),
     ("100m", 0, 100, 100)],
)  # fmt: skip
def test_grpc_route_timeout(header, max_ms, offset, expected):
    headers = request(*GRPC, *((("grpc-timeout", header),) if header else ()))
    assert grpc_route_timeout_ms(max_ms, offset, headers) == expected


@pytest.mark.parametrize(
    ("global_ms", "per_try_ms", "hedging", "elapsed", "expected"),
    [(15000, 0, False, 0, 15000), (15000, 3000, False, 0, 3000), (15000, 3000, True, 0, 15000),
     (3000, 15000, False, 0, 3000), (0, 3000, False, 0, 3000), (0, 0, False, 0, 0),
     (1000, 0, False, 400, 600), (1000, 300, False, 800, 200), (1000, 0, False, 1000, 1),
     (1000, 0, False, 5000, 1)],
)  # fmt: skip
def test_expected_timeout(global_ms, per_try_ms, hedging, elapsed, expected):
    assert (
        expected_timeout_ms(
            global_ms=global_ms, per_try_ms=per_try_ms, hedging=hedging, elapsed_ms=elapsed
        )
        == expected
    )


def test_timeout_headers():
    headers = request(("grpc-timeout", "2S"))
    set_timeout_headers(headers, 1900, suppress=False, grpc_timeout=True)
    assert list(headers.items())[2:] == [
        ("grpc-timeout", "1900m"),
        ("x-envoy-expected-rq-timeout-ms", "1900"),
    ]
    headers = request(("grpc-timeout", "2S"))
    set_timeout_headers(headers, 1900, suppress=True, grpc_timeout=False)
    assert list(headers.items())[2:] == [("grpc-timeout", "2S")]
    set_timeout_headers(headers, 0, suppress=False, grpc_timeout=True)  # no timeout: no header
    assert list(headers.items())[2:] == [("grpc-timeout", "2S")]


def test_route_action_grpc_fields():
    action = table(routes_config([forward("r", {
        "cluster": "c1", "max_grpc_timeout": "10s", "grpc_timeout_offset": "0.1005s"})]),
    ).virtual_hosts[0].routes[0].action  # fmt: skip
    assert (action.max_grpc_timeout, action.grpc_timeout_offset) == (10000, 100)
    plain = table(routes_config([forward("r", {"cluster": "c1"})])).virtual_hosts[0].routes[0]
    assert plain.action.max_grpc_timeout is None and plain.action.max_stream_duration is None


def test_max_stream_duration_compiles_for_the_connection_manager():
    from envoy.config.route.v3 import route_components_pb2

    proto = parse({"grpc_timeout_header_max": "10s", "grpc_timeout_header_offset": "0.1s"},
                  route_components_pb2.RouteAction.MaxStreamDuration, path="")  # fmt: skip
    assert compile_max_stream_duration(proto, "msd") == MaxStreamDuration(
        grpc_timeout_header_max=10000, grpc_timeout_header_offset=100
    )


# The connection manager's per-route stream duration ------------------------------------------

NEW = MaxStreamDuration(grpc_timeout_header_max=10000, grpc_timeout_header_offset=100)


@pytest.mark.parametrize(
    ("route", "headers", "hcm", "running", "expected"),
    [
        # grpc_timeout_header_max: the header, capped, less the offset; rewritten upstream.
        (NEW, (*GRPC, ("grpc-timeout", "2S")), None, False, StreamDuration(1900, "1900m")),
        (NEW, (*GRPC, ("grpc-timeout", "20S")), None, False, StreamDuration(9900, "9900m")),
        (NEW, (*GRPC, ("grpc-timeout", "50m")), None, False, StreamDuration(0, "0m")),
        (NEW, (*GRPC, ("grpc-timeout", "0S")), None, False, StreamDuration(0, "0m")),
        # Not gRPC: the header still sets the duration, but is not rewritten.
        (NEW, (("grpc-timeout", "300m"),), None, False, StreamDuration(200)),
        # No header: the route's max_stream_duration, else the connection manager's.
        (NEW, GRPC, 5000, True, StreamDuration(5000, "5000m")),
        (NEW, GRPC, None, True, StreamDuration(DISABLE, "")),  # and grpc-timeout dropped
        (NEW, GRPC, None, False, StreamDuration(DISABLE)),
        (MaxStreamDuration(max_stream_duration=5000), (*GRPC, ("grpc-timeout", "2S")), None,
         False, StreamDuration(5000, "5000m")),
        (MaxStreamDuration(max_stream_duration=0), GRPC, 3000, True, StreamDuration(DISABLE, "")),
        (MaxStreamDuration(grpc_timeout_header_max=0), (*GRPC, ("grpc-timeout", "1H")), None,
         False, StreamDuration(3600000, "3600000m")),
        # No max_stream_duration block: the connection manager's own, nothing rewritten.
        (None, (*GRPC, ("grpc-timeout", "2S")), 3000, True, StreamDuration(3000)),
        (None, GRPC, None, True, StreamDuration(DISABLE)),
    ],
)  # fmt: skip
def test_stream_duration(route, headers, hcm, running, expected):
    decision = stream_duration(route, request(*headers), hcm, timer_running=running)
    assert decision == expected
