"""The gRPC health check probe's pure parts: the grpc-timeout value and the verdict."""

from __future__ import annotations

import struct

from grpc_health.v1 import health_pb2

from legatus.upstream.health_checker.grpc import grpc_timeout, verdict
from legatus.upstream.health_checker.session import Outcome


def _framed(status: int) -> bytes:
    body = health_pb2.HealthCheckResponse(status=status).SerializeToString()
    return struct.pack(">BI", 0, len(body)) + body


def test_grpc_timeout_picks_the_smallest_unit_that_fits():
    assert grpc_timeout(0.5) == "500m"
    assert grpc_timeout(99_999.999) == "99999999m"
    assert grpc_timeout(100_000) == "100000S"
    assert grpc_timeout(1e9) == "16666666M"
    assert grpc_timeout(1e13) == "99999999H"


def test_only_serving_with_status_ok_passes():
    serving = health_pb2.HealthCheckResponse.SERVING
    assert verdict("200", "0", _framed(serving)) is Outcome.SUCCESS
    for status in (0, 2, 3):
        assert verdict("200", "0", _framed(status)) is Outcome.FAILED
    assert verdict("200", "12", b"") is Outcome.FAILED  # UNIMPLEMENTED, trailers-only
    assert verdict("503", "0", _framed(serving)) is Outcome.FAILED
    assert verdict("200", None, _framed(serving)) is Outcome.FAILED  # no grpc-status
    assert verdict("200", "0", _framed(serving)[:-1]) is Outcome.FAILED  # truncated frame
    assert verdict("200", "0", b"\x01" + _framed(serving)[1:]) is Outcome.FAILED  # compressed
