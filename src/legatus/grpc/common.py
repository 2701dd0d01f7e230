"""gRPC as the HTTP layer sees it: Envoy's ``Grpc::Common``, ``Grpc::Utility`` and frame codec.

Everything here is sans-I/O and works on header maps and bytes, for the filters and the router:

- which requests and responses are gRPC (``content-type: application/grpc`` or
  ``application/grpc+...``, and a ``:path``), gRPC-Web, or Connect;
- ``grpc-status`` as Envoy reads it (``grpc_status``), and Envoy's two status mappings:
  ``http_to_grpc_status`` (a local reply's status as a gRPC status) and
  ``grpc_to_http_status`` (what a gRPC status counts as for outlier detection and host stats);
- ``grpc-timeout``: ``parse_grpc_timeout`` (Envoy's getGrpcTimeout: at most 8 digits and a
  unit, microseconds and nanoseconds rounded up to the next millisecond) and
  ``format_grpc_timeout`` (Envoy's toGrpcTimeout: the smallest unit that fits in 8 digits);
- ``resolve_service_and_method``: ``/package.Service/Method`` as the stats name it;
- ``FrameInspector``: a streaming reader of the length-prefixed message framing (a flags byte,
  a 4-byte big-endian length, the message) that counts messages as their first byte arrives,
  as Envoy's FrameInspector does; ``FrameDecoder`` also collects the complete frames.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

GRPC_CONTENT_TYPE = "application/grpc"
FRAME_HEADER_SIZE = 5
FLAG_COMPRESSED = 0x01
FLAG_CONNECT_END_STREAM = 0x02
FLAG_WEB_TRAILERS = 0x80  # a gRPC-Web frame that carries the trailers
MAX_TIMEOUT_VALUE = 99_999_999  # grpc-timeout: "TimeoutValue" is at most 8 digits


class Status(enum.IntEnum):
    """The well-known gRPC status codes (``Grpc::Status::WellKnownGrpcStatus``)."""

    OK = 0
    CANCELED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


MAXIMUM_KNOWN = Status.UNAUTHENTICATED
INVALID_CODE = -1  # a grpc-status that is not a number (or, by default, not a known code)

# Grpc::Utility::httpToGrpcStatus (grpc's http-grpc-status-mapping.md); anything else: UNKNOWN.
_HTTP_TO_GRPC: Mapping[int, int] = {
    400: Status.INTERNAL,
    401: Status.UNAUTHENTICATED,
    403: Status.PERMISSION_DENIED,
    404: Status.UNIMPLEMENTED,
    429: Status.UNAVAILABLE,
    502: Status.UNAVAILABLE,
    503: Status.UNAVAILABLE,
    504: Status.UNAVAILABLE,
}
# Grpc::Utility::grpcToHttpStatus (Google's API design guide); anything else: 500.
_GRPC_TO_HTTP = (200, 499, 500, 400, 504, 404, 409, 403, 429, 400, 409, 400, 501, 500, 503, 500,
                 401)  # fmt: skip


def http_to_grpc_status(status: int) -> int:
    return _HTTP_TO_GRPC.get(status, Status.UNKNOWN)


def grpc_to_http_status(status: int) -> int:
    return _GRPC_TO_HTTP[status] if 0 <= status <= MAXIMUM_KNOWN else 500


# Kinds of messages -------------------------------------------------------------------------


def has_grpc_content_type(headers) -> bool:
    """``application/grpc`` or ``application/grpc+<anything>`` (not ``application/grpc-web``)."""
    content_type = headers.get("content-type")
    if content_type is None or not content_type.startswith(GRPC_CONTENT_TYPE):
        return False
    return len(content_type) == 16 or content_type[16] == "+"


def is_grpc_request_headers(headers) -> bool:
    """Envoy's isGrpcRequestHeaders: a ``:path`` and a gRPC content type."""
    return headers is not None and ":path" in headers and has_grpc_content_type(headers)


def is_grpc_response_headers(headers, end_stream: bool) -> bool:
    """A trailers-only response (headers that end the stream) needs only ``grpc-status``; any
    other gRPC response is a 200 with a gRPC content type."""
    if end_stream:
        return "grpc-status" in headers
    return headers.get(":status") == "200" and has_grpc_content_type(headers)


def is_connect_request_headers(headers) -> bool:
    """A Connect unary request: a ``:path`` and a ``connect-protocol-version`` header."""
    return ":path" in headers and "connect-protocol-version" in headers


def is_connect_streaming_request_headers(headers) -> bool:
    return ":path" in headers and headers.get("content-type", "").startswith("application/connect+")


def is_connect_streaming_response_headers(headers) -> bool:
    return headers.get(":status") == "200" and headers.get("content-type", "").startswith(
        "application/connect+"
    )


def grpc_status(headers, *, allow_user_defined: bool = False) -> int | None:
    """Envoy's getGrpcStatus: None without a (non-empty) ``grpc-status``; ``INVALID_CODE``
    when it is not an unsigned number or (unless ``allow_user_defined``) not a known code."""
    if headers is None:
        return None
    value = headers.get("grpc-status")
    if not value:
        return None
    code = _simple_atoi(value)
    if code is None or code < 0 or (code > MAXIMUM_KNOWN and not allow_user_defined):
        return INVALID_CODE
    return code


def _simple_atoi(value: str) -> int | None:
    """absl::SimpleAtoi: surrounding ASCII whitespace and one sign allowed, digits only."""
    text = value.strip(" \t\n\v\f\r")
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    number = int(digits)
    return -number if text[0] == "-" else number


# grpc-timeout --------------------------------------------------------------------------------

_UNIT_MS = {"H": 3_600_000, "M": 60_000, "S": 1000, "m": 1}


def parse_grpc_timeout(value: str | None) -> int | None:
    """The ``grpc-timeout`` header in milliseconds, or None when it is absent or invalid."""
    if not value:
        return None
    number = _simple_atoi(value[:-1])
    if number is None or number < 0 or number > MAX_TIMEOUT_VALUE:
        return None
    unit = value[-1]
    factor = _UNIT_MS.get(unit)
    if factor is not None:
        return number * factor
    if unit == "u":
        return -(-number // 1000)  # rounded up
    if unit == "n":
        return -(-number // 1_000_000)
    return None


def format_grpc_timeout(ms: int) -> str:
    """Envoy's toGrpcTimeout: milliseconds, else seconds, minutes, hours (clipped there)."""
    if ms <= MAX_TIMEOUT_VALUE:
        return f"{ms}m"
    value = ms // 1000
    for unit, next_factor in (("S", 60), ("M", 60)):
        if value <= MAX_TIMEOUT_VALUE:
            return f"{value}{unit}"
        value //= next_factor
    return f"{min(value, MAX_TIMEOUT_VALUE)}H"


# Service and method --------------------------------------------------------------------------


def resolve_service_and_method(path: str | None) -> tuple[str, str] | None:
    """``/service/method`` (the query ignored, empty segments skipped) as (service, method);
    None for any other shape."""
    if path is None:
        return None
    query = path.find("?")
    if query >= 0:
        path = path[:query]
    parts = [p for p in path.split("/") if p]
    if len(parts) != 2:
        return None
    return parts[0], parts[1]


# Frames --------------------------------------------------------------------------------------


class FrameInspector:
    """Reads the length-prefixed framing from pieces of a body; ``inspect`` returns how many
    frames started in the piece (a frame counts from its flags byte on, as in Envoy).

    Subclasses see the frames through ``frame_start`` (return False to stop reading: the rest
    of the body is then ignored), ``frame_data`` and ``frame_end``."""

    __slots__ = ("_header", "_remaining", "_stopped", "count")

    def __init__(self) -> None:
        self.count = 0
        self._header = bytearray()  # the frame header read so far (flags + length)
        self._remaining = 0  # message bytes still to come
        self._stopped = False

    def inspect(self, data: bytes | bytearray | memoryview) -> int:
        if self._stopped:
            return 0
        view = memoryview(data)
        size = len(view)
        at = 0
        delta = 0
        header = self._header
        while at < size:
            if self._remaining:
                take = min(self._remaining, size - at)
                self.frame_data(view[at : at + take])
                at += take
                self._remaining -= take
                if not self._remaining:
                    self.frame_end()
                continue
            if not header:
                if not self.frame_start(view[at]):
                    self._stopped = True
                    return delta
                self.count += 1
                delta += 1
            take = min(FRAME_HEADER_SIZE - len(header), size - at)
            header += view[at : at + take]
            at += take
            if len(header) == FRAME_HEADER_SIZE:
                self._remaining = int.from_bytes(header[1:5], "big")
                header.clear()
                if not self._remaining:
                    self.frame_end()
        return delta

    # Hooks ----------------------------------------------------------------------------------

    def frame_start(self, flags: int) -> bool:
        return True

    def frame_data(self, data: memoryview) -> None:
        """Part of the current frame's message."""

    def frame_end(self) -> None:
        """The current frame is complete."""


class FrameDecoder(FrameInspector):
    """A FrameInspector that keeps the complete frames as (flags, message) until ``take``."""

    __slots__ = ("_flags", "_frames", "_message")

    def __init__(self) -> None:
        super().__init__()
        self._frames: list[tuple[int, bytes]] = []
        self._flags = 0
        self._message = bytearray()

    def frame_start(self, flags: int) -> bool:
        self._flags = flags
        return True

    def frame_data(self, data: memoryview) -> None:
        self._message += data

    def frame_end(self) -> None:
        self._frames.append((self._flags, bytes(self._message)))
        self._message.clear()

    def take(self) -> list[tuple[int, bytes]]:
        frames, self._frames = self._frames, []
        return frames


def frame(message: bytes, flags: int = 0) -> bytes:
    """One frame: the flags byte, the big-endian length, the message."""
    return bytes((flags,)) + len(message).to_bytes(4, "big") + message
