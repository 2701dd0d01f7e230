"""The gRPC health check probe (Envoy's GrpcHealthCheck, ``grpc.health.v1.Health/Check``).

Each check is one HTTP/2 stream on a connection kept between checks (unless
``reuse_connection`` is false, or the upstream sent GOAWAY): the request Envoy sends —
``POST /grpc.health.v1.Health/Check`` with ``:authority`` (the endpoint's health-check
hostname, else ``authority``, else the cluster's name), ``content-type: application/grpc``,
``te: trailers``, ``user-agent: Envoy/HC``, ``initial_metadata`` and ``grpc-timeout`` (the
check's timeout) — carrying one framed
``HealthCheckRequest{service}``.

The host passes only when the response is HTTP 200 with a ``grpc-status`` of 0 and one
``HealthCheckResponse`` whose status is SERVING. Anything else the upstream answers
(NOT_SERVING, UNKNOWN, SERVICE_UNKNOWN, an error status such as UNIMPLEMENTED, a non-200) is
an active failure, which fails the host at once, as in Envoy; a connection that cannot be made
or breaks, or a stream reset, is a network failure (counted toward ``unhealthy_threshold``).

The ``h2`` package is the HTTP/2 engine here: one small request per host per interval, off
the data path, where a general and well-tested state machine is worth more than speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from grpc_health.v1 import health_pb2

from legatus.upstream.health_checker.config import USER_AGENT, GrpcCheckConfig
from legatus.upstream.health_checker.session import Outcome

_PATH = "/grpc.health.v1.Health/Check"
_READ_SIZE = 65536
_SERVING = health_pb2.HealthCheckResponse.SERVING


def request_headers(
    config: GrpcCheckConfig, authority: str, timeout: float
) -> list[tuple[str, str]]:
    """Envoy's request, in its order; ``grpc-timeout`` is the check's ``timeout``."""
    headers = [
        (":method", "POST"),
        (":path", _PATH),
        (":authority", authority),
        (":scheme", "http"),
        ("te", "trailers"),
        ("content-type", "application/grpc"),
        ("user-agent", USER_AGENT),
    ]
    headers += config.initial_metadata
    headers.append(("grpc-timeout", grpc_timeout(timeout)))
    return headers


def grpc_timeout(seconds: float) -> str:
    """Envoy's toGrpcTimeout: whole milliseconds, in the smallest unit (m, S, M, H) whose
    value fits the 8 digits gRPC allows."""
    value = int(seconds * 1000)
    for unit, divisor in (("m", 1), ("S", 1000), ("M", 60), ("H", 60)):
        value //= divisor
        if value <= 99_999_999 or unit == "H":
            return f"{min(value, 99_999_999)}{unit}"
    raise AssertionError("unreachable")


def request_body(config: GrpcCheckConfig) -> bytes:
    message = health_pb2.HealthCheckRequest(service=config.service_name).SerializeToString()
    return struct.pack(">BI", 0, len(message)) + message


def verdict(status: str | None, grpc_status: str | None, body: bytes) -> Outcome:
    """The outcome of one complete response (headers, trailers folded in, and body)."""
    if status != "200" or grpc_status != "0" or len(body) < 5:
        return Outcome.FAILED
    compressed, length = struct.unpack(">BI", body[:5])
    if compressed or len(body) - 5 != length:
        return Outcome.FAILED
    try:
        response = health_pb2.HealthCheckResponse.FromString(body[5:])
    except Exception:  # a malformed message is the upstream's failure, not ours
        return Outcome.FAILED
    return Outcome.SUCCESS if response.status == _SERVING else Outcome.FAILED


class GrpcProbe:
    def __init__(
        self,
        config: GrpcCheckConfig,
        *,
        address: tuple[str, int],
        authority: str,
        reuse: bool,
        timeout: float,
    ) -> None:
        self._config = config
        self._address = address
        self._reuse = reuse
        self._headers = request_headers(config, authority, timeout)
        self._body = request_body(config)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._h2: h2.connection.H2Connection | None = None
        self._goaway = False

    async def check(self) -> Outcome:
        """One check. The caller bounds it with the timeout (and then calls ``close``)."""
        try:
            if self._h2 is None or self._goaway or self._writer.is_closing():
                self.close()
                await self._connect()
            outcome = await self._exchange()
        except (OSError, EOFError, h2.exceptions.ProtocolError):
            self.close()
            return Outcome.NETWORK
        if not self._reuse or self._goaway:
            self.close()
        return outcome

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(*self._address)
        conn = self._h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="latin-1")
        )
        conn.initiate_connection()
        self._goaway = False
        self._writer.write(conn.data_to_send())

    async def _exchange(self) -> Outcome:
        conn = self._h2
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, self._headers)
        conn.send_data(stream_id, self._body, end_stream=True)
        self._writer.write(conn.data_to_send())
        status = grpc_status = None
        body = bytearray()
        while True:
            data = await self._reader.read(_READ_SIZE)
            if not data:
                raise EOFError("upstream closed before the end of the check")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ConnectionTerminated):
                    self._goaway = True
                    if event.last_stream_id is not None and event.last_stream_id < stream_id:
                        raise EOFError("GOAWAY before the check's stream")
                elif getattr(event, "stream_id", None) != stream_id:
                    continue
                elif isinstance(event, h2.events.ResponseReceived):
                    fields = dict(event.headers)
                    status = fields.get(":status")
                    grpc_status = fields.get("grpc-status")  # trailers-only
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
                elif isinstance(event, h2.events.TrailersReceived):
                    grpc_status = dict(event.headers).get("grpc-status", grpc_status)
                elif isinstance(event, h2.events.StreamReset):
                    raise EOFError("the check's stream was reset")
                if isinstance(event, h2.events.StreamEnded):
                    self._writer.write(conn.data_to_send())
                    return verdict(status, grpc_status, bytes(body))
            pending = conn.data_to_send()
            if pending:
                self._writer.write(pending)

    def close(self) -> None:
        writer = self._writer
        self._reader = self._writer = self._h2 = None
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()
