"""HTTP/2 frames (RFC 9113 section 4 and 6): the constants and the bytes of each frame.

The codec parses frame headers itself (``FRAME_HEADER.unpack_from`` over its input buffer:
one call, no object per frame) and writes frames with the functions here, which return
``bytes`` the connection appends to its output buffer. Nothing here holds state.
"""

from __future__ import annotations

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# What Envoy looks for to pick HTTP/2 on a cleartext connection with codec_type AUTO.
PREFACE_PREFIX = b"PRI * HTTP/2"

FRAME_HEADER_SIZE = 9
# (length high 16 bits, length low 8 bits, type, flags, stream id with the reserved bit)
FRAME_HEADER = struct.Struct(">HBBBL")
_U32 = struct.Struct(">L")
_U32_U32 = struct.Struct(">LL")
_SETTING = struct.Struct(">HL")

# Frame types.
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

# Flags.
FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20

# Error codes (section 7).
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
SETTINGS_TIMEOUT = 0x4
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
CONNECT_ERROR = 0xA
ENHANCE_YOUR_CALM = 0xB
INADEQUATE_SECURITY = 0xC
HTTP_1_1_REQUIRED = 0xD

# Settings (section 6.5.2, RFC 8441 for ENABLE_CONNECT_PROTOCOL).
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6
SETTINGS_ENABLE_CONNECT_PROTOCOL = 0x8

DEFAULT_WINDOW_SIZE = 65535
DEFAULT_MAX_FRAME_SIZE = 16384
MAX_MAX_FRAME_SIZE = (1 << 24) - 1
MAX_WINDOW_SIZE = (1 << 31) - 1
MAX_STREAM_ID = (1 << 31) - 1
DEFAULT_HEADER_TABLE_SIZE = 4096


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame: the 9-byte header, then ``payload``."""
    n = len(payload)
    return FRAME_HEADER.pack(n >> 8, n & 0xFF, kind, flags, stream_id) + payload


def frame_header(kind: int, flags: int, stream_id: int, length: int) -> bytes:
    return FRAME_HEADER.pack(length >> 8, length & 0xFF, kind, flags, stream_id)


def settings(values: list[tuple[int, int]]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in values))


SETTINGS_ACK = frame(SETTINGS, FLAG_ACK, 0)


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    """(identifier, value) pairs; the caller checked that the length is a multiple of 6."""
    return [_SETTING.unpack_from(payload, i) for i in range(0, len(payload), 6)]


def ping(opaque: bytes, *, ack: bool) -> bytes:
    return frame(PING, FLAG_ACK if ack else 0, 0, opaque)


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(increment))


def rst_stream(stream_id: int, error_code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, _U32.pack(error_code))


def goaway(last_stream_id: int, error_code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, _U32_U32.pack(last_stream_id, error_code) + debug)


def u32(payload: bytes, offset: int = 0) -> int:
    """The 31-bit value at ``offset`` (the reserved high bit cleared)."""
    return _U32.unpack_from(payload, offset)[0] & 0x7FFFFFFF


def u32_pair(payload: bytes) -> tuple[int, int]:
    return _U32_U32.unpack_from(payload, 0)


def header_block_frames(
    stream_id: int, block: bytes, end_stream: bool, max_frame_size: int
) -> tuple[bytes, int]:
    """HEADERS (and CONTINUATION frames when ``block`` is larger than a frame) carrying one
    header block; returns (bytes, frame count)."""
    n = len(block)
    flags = FLAG_END_STREAM if end_stream else 0
    if n <= max_frame_size:
        return FRAME_HEADER.pack(n >> 8, n & 0xFF, HEADERS, flags | FLAG_END_HEADERS,
                                 stream_id) + block, 1  # fmt: skip
    parts = [frame(HEADERS, flags, stream_id, block[:max_frame_size])]
    at = max_frame_size
    while at < n:
        piece = block[at : at + max_frame_size]
        at += len(piece)
        parts.append(frame(CONTINUATION, FLAG_END_HEADERS if at >= n else 0, stream_id, piece))
    return b"".join(parts), len(parts)
