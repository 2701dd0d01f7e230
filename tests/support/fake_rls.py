"""A scripted rate limit service (grpcio, in a thread) for the rate limit filter tests.

Each descriptor's entries decide its status: an entry ``verdict: over`` is OVER_LIMIT,
``verdict: error`` makes the call fail (UNAVAILABLE), ``verdict: slow`` answers after
``SLOW`` seconds; ``limit: <n>`` gives the status a current limit of n per minute, n - 1
remaining and 30 s to reset (``name: <x>`` names it). Any OVER_LIMIT descriptor makes the
overall code OVER_LIMIT and adds ``x-rls: over`` to the response headers to add; an allowed
call adds ``x-rls-request: ok`` to the request. Calls are recorded in ``calls``.
"""

from __future__ import annotations

import time
from concurrent import futures

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

R = rls_pb2.RateLimitResponse
SLOW = 0.3


class _Servicer(rls_pb2_grpc.RateLimitServiceServicer):
    def __init__(self, calls: list) -> None:
        self.calls = calls

    def ShouldRateLimit(self, request, context):
        descriptors = [tuple((e.key, e.value) for e in d.entries) for d in request.descriptors]
        self.calls.append((request.domain, descriptors))
        response = R(overall_code=R.OK)
        for entries in descriptors:
            values = dict(entries)
            verdict = values.get("verdict")
            if verdict == "error":
                context.abort(grpc.StatusCode.UNAVAILABLE, "scripted error")
            if verdict == "slow":
                time.sleep(SLOW)
            status = response.statuses.add(code=R.OVER_LIMIT if verdict == "over" else R.OK)
            if "limit" in values:
                n = int(values["limit"])
                status.current_limit.requests_per_unit = n
                status.current_limit.unit = R.RateLimit.MINUTE
                if "name" in values:
                    status.current_limit.name = values["name"]
                status.limit_remaining = n - 1
                status.duration_until_reset.seconds = 30
            if verdict == "over":
                response.overall_code = R.OVER_LIMIT
        if response.overall_code == R.OVER_LIMIT:
            response.response_headers_to_add.add(key="x-rls", value="over")
        else:
            response.request_headers_to_add.add(key="x-rls-request", value="ok")
        return response


class FakeRateLimitService:
    def __init__(self, port: int = 0) -> None:
        self.calls: list = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server(_Servicer(self.calls), self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.server.start()

    def close(self) -> None:
        self.server.stop(None)
