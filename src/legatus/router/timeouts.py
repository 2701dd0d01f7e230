"""Route timeouts and gRPC deadlines, as Envoy computes them.

Two places in Envoy decide how long a request may take:

- the router's ``FilterUtility::finalTimeout`` / ``setTimeoutHeaders``: the route timeout
  (``timeout``, or for a gRPC request on a route with the deprecated ``max_grpc_timeout`` the
  request's ``grpc-timeout`` capped by it, less ``grpc_timeout_offset``; none at all on a route
  with ``max_stream_duration``), the per-try timeout, and what the upstream is told:
  ``x-envoy-expected-rq-timeout-ms`` and, with ``max_grpc_timeout``, a rewritten
  ``grpc-timeout``. The router (router.py, tries.py) calls ``grpc_route_timeout_ms`` and
  ``expected_timeout_ms``.
- the connection manager's ``ActiveStream::refreshDurationTimeout``, once the route is known:
  a route's ``max_stream_duration`` block (``max_stream_duration``, or the request's
  ``grpc-timeout`` capped by ``grpc_timeout_header_max`` less ``grpc_timeout_header_offset``)
  replaces the connection manager's ``max_stream_duration`` for the stream, and a gRPC
  request's ``grpc-timeout`` is rewritten to the time it gets. ``stream_duration`` is that
  decision, for the connection manager to apply.

All durations here are whole milliseconds, as in Envoy (0: no timeout).
"""

from __future__ import annotations

from dataclasses import dataclass

from legatus.grpc.common import format_grpc_timeout, is_grpc_request_headers, parse_grpc_timeout


@dataclass(frozen=True, slots=True, kw_only=True)
class MaxStreamDuration:
    """A route's ``max_stream_duration`` block (RouteAction.MaxStreamDuration), in ms; None:
    unset. Setting the block at all is Envoy's "new timeouts": the route ``timeout`` and the
    deprecated gRPC fields no longer apply."""

    max_stream_duration: int | None = None
    grpc_timeout_header_max: int | None = None
    grpc_timeout_header_offset: int | None = None


def grpc_route_timeout_ms(max_grpc_timeout: int, offset: int | None, headers) -> int:
    """The route timeout of a gRPC request on a route with the deprecated ``max_grpc_timeout``:
    its ``grpc-timeout`` (none or invalid: infinite) less ``offset`` when that leaves some
    time, capped by ``max_grpc_timeout`` (0: no cap)."""
    timeout = parse_grpc_timeout(headers.get("grpc-timeout")) or 0
    if offset and offset < timeout:
        timeout -= offset
    if max_grpc_timeout and (not timeout or timeout > max_grpc_timeout):
        timeout = max_grpc_timeout
    return timeout


def expected_timeout_ms(
    *, global_ms: int, per_try_ms: int, hedging: bool, elapsed_ms: int = 0
) -> int:
    """What the upstream is told it has (Envoy's setTimeoutHeaders), 0 for no header: the
    per-try timeout if any (and below the route timeout) unless hedging, else the route
    timeout; less what the tries so far used of the route timeout, and 1 (not 0, which would
    mean no timeout) once it is used up."""
    if global_ms and per_try_ms >= global_ms:
        per_try_ms = 0
    expected = per_try_ms
    if hedging or not expected:
        expected = global_ms
    if expected and global_ms:
        expected = 1 if elapsed_ms >= global_ms else min(expected, global_ms - elapsed_ms)
    return expected


def set_timeout_headers(headers, expected_ms: int, *, suppress: bool, grpc_timeout: bool) -> None:
    """``x-envoy-expected-rq-timeout-ms`` (unless the router suppresses Envoy headers) and, for
    a gRPC request on a ``max_grpc_timeout`` route, ``grpc-timeout`` with the same time."""
    if not expected_ms:
        return
    if not suppress:
        headers.set("x-envoy-expected-rq-timeout-ms", str(expected_ms))
    if grpc_timeout:
        headers.set("grpc-timeout", format_grpc_timeout(expected_ms))


# The connection manager's per-route stream duration -----------------------------------------

DISABLE = "disable"  # StreamDuration.timer: the stream runs no duration timer


@dataclass(frozen=True, slots=True)
class StreamDuration:
    """What ``stream_duration`` decided: ``timer`` is the stream's new max duration in ms,
    counted from the stream's start (0: it is already over), or ``DISABLE``; ``grpc_timeout``
    the request's new ``grpc-timeout`` value, "" to remove the header, None to leave it."""

    timer: int | str
    grpc_timeout: str | None = None


def stream_duration(
    route_duration: MaxStreamDuration | None,
    request_headers,
    hcm_max_stream_duration: int | None,
    *,
    timer_running: bool,
) -> StreamDuration:
    """Envoy's refreshDurationTimeout for a stream routed by a route whose action has
    ``route_duration`` (None: no ``max_stream_duration`` block). ``hcm_max_stream_duration``:
    the connection manager's own (common_http_protocol_options), in ms; ``timer_running``:
    the stream has a duration timer already (only then does disabling it drop a gRPC
    request's ``grpc-timeout``)."""
    new_timeouts = route_duration is not None
    route_duration = route_duration or _NO_DURATION
    grpc_timeout = parse_grpc_timeout(request_headers.get("grpc-timeout"))
    header_max = route_duration.grpc_timeout_header_max
    if grpc_timeout is None or header_max is None:
        timeout = route_duration.max_stream_duration
        if timeout is None:
            timeout = hcm_max_stream_duration or 0
        if not timeout:
            drop = timer_running and new_timeouts and is_grpc_request_headers(request_headers)
            return StreamDuration(DISABLE, "" if drop else None)
    else:
        timeout = grpc_timeout
        if header_max and timeout > header_max:
            timeout = header_max
        offset = route_duration.grpc_timeout_header_offset
        if timeout and offset:
            timeout = timeout - offset if offset < timeout else 0
    if new_timeouts and is_grpc_request_headers(request_headers):
        return StreamDuration(timeout, format_grpc_timeout(timeout))
    return StreamDuration(timeout)


_NO_DURATION = MaxStreamDuration()
