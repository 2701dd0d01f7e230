"""``envoy.service.ratelimit.v3.RateLimitService``: the decisions, and the gRPC server.

For each descriptor of a ``RateLimitRequest`` the configured limit is looked up
(config.py); matched limits count the request's hits (the descriptor's ``hits_addend``, else
the request's, else 1) in a fixed window of the limit's unit::

    window_start = now - now % window           (now: whole Unix seconds)
    key          = "<domain>_<k1>_<v1>_<k2>_<v2>_<window_start>"
    over limit   = counter after the hits > requests_per_unit
    remaining    = requests_per_unit - counter   (0 when over)
    reset        = window - now % window         (seconds)

A descriptor without a limit (or ``unlimited``, or replaced) is OK with no ``current_limit``;
an over-limit descriptor of a ``shadow_mode`` limit answers OK. ``overall_code`` is
OVER_LIMIT when any descriptor is. A backend failure is a gRPC ``UNAVAILABLE`` error, which
Envoy counts as a service error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from legatus.ratelimit.backends import BackendError, Increment
from legatus.ratelimit.config import Limit, RateLimitConfig

log = logging.getLogger("legatus.ratelimit")

Response = rls_pb2.RateLimitResponse
OK = Response.OK
OVER_LIMIT = Response.OVER_LIMIT
_UNLIMITED_REMAINING = 2**32 - 1


class RequestError(Exception):
    """A request the service refuses (gRPC INVALID_ARGUMENT... as envoyproxy/ratelimit, an
    error the caller counts as a service error)."""


def cache_key(domain: str, entries, window_start: int) -> str:
    parts = [domain, "_"]
    for entry in entries:
        parts += (entry.key, "_", entry.value, "_")
    parts.append(str(window_start))
    return "".join(parts)


def window(now: int, seconds: int) -> tuple[int, int]:
    """(start of the window ``now`` is in, seconds until it resets)."""
    into = now % seconds
    return now - into, seconds - into


class RateLimitService:
    """The decisions over a config and a counter backend; ``clock`` gives Unix seconds."""

    def __init__(self, config: RateLimitConfig, backend, clock: Callable[[], float] = time.time):
        self.config = config
        self.backend = backend
        self.clock = clock

    async def should_rate_limit(self, request: rls_pb2.RateLimitRequest) -> Response:
        domain = request.domain
        if not domain:
            raise RequestError("rate limit domain must not be empty")
        if not request.descriptors:
            raise RequestError("rate limit descriptor list must not be empty")
        config = self.config
        limits: list[Limit | None] = [
            config.get_limit(domain, ((e.key, e.value) for e in d.entries))
            for d in request.descriptors
        ]
        replaced = {name for lim in limits if lim is not None for name in lim.replaces}
        if replaced:
            limits = [None if lim is not None and lim.name in replaced else lim for lim in limits]
        now = int(self.clock())
        default_hits = request.hits_addend or 1
        increments = []
        slots = []  # (descriptor index, limit, seconds until reset)
        for i, (descriptor, limit) in enumerate(zip(request.descriptors, limits, strict=True)):
            if limit is None or limit.unlimited:
                continue
            hits = (
                descriptor.hits_addend.value if descriptor.HasField("hits_addend") else default_hits
            )
            start, reset = window(now, limit.window)
            increments.append(
                Increment(cache_key(domain, descriptor.entries, start), hits, limit.window)
            )
            slots.append((i, limit, reset))
        counts = await self.backend.increment(increments) if increments else []
        response = Response(overall_code=OK)
        statuses = [Response.DescriptorStatus(code=OK) for _ in request.descriptors]
        for i, limit in enumerate(limits):
            if limit is not None and limit.unlimited:
                statuses[i].limit_remaining = _UNLIMITED_REMAINING
        for (i, limit, reset), count in zip(slots, counts, strict=True):
            status = statuses[i]
            status.current_limit.requests_per_unit = limit.requests_per_unit
            status.current_limit.unit = limit.unit
            if limit.name:
                status.current_limit.name = limit.name
            status.duration_until_reset.seconds = reset
            if count > limit.requests_per_unit:
                status.limit_remaining = 0
                if not limit.shadow_mode:
                    status.code = OVER_LIMIT
                    response.overall_code = OVER_LIMIT
            else:
                status.limit_remaining = limit.requests_per_unit - count
        response.statuses.extend(statuses)
        return response


class RateLimitServicer(rls_pb2_grpc.RateLimitServiceServicer):
    """The gRPC face of a RateLimitService (grpc.aio)."""

    def __init__(self, service: RateLimitService) -> None:
        self.service = service

    async def ShouldRateLimit(self, request, context):
        try:
            return await self.service.should_rate_limit(request)
        except RequestError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except BackendError as e:
            log.warning("rate limit backend error: %s", e)
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(e))


async def start_server(service: RateLimitService, address: str) -> tuple[grpc.aio.Server, int]:
    """Start a grpc.aio server for ``service`` on ``address`` ("host:port"); returns the
    server and the port it bound."""
    server = grpc.aio.server()
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(RateLimitServicer(service), server)
    port = server.add_insecure_port(address)
    if not port:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    return server, port
