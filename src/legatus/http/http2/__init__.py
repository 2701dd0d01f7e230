"""The HTTP/2 codec (sans-I/O, both roles): ``ServerConnection`` downstream,
``ClientConnection`` upstream, on a shared frame layer, flow control and settings
(connection.py); HPACK through the ``hpack`` package (hpack_codec.py)."""

from legatus.http.http2.client import ClientConnection
from legatus.http.http2.connection import CodecError, Http2Connection
from legatus.http.http2.header_validation import Head, Rejection
from legatus.http.http2.server import ServerConnection
from legatus.http.http2.settings import DEFAULT_SETTINGS, Http2Settings
from legatus.http.http2.stream import ResetReason, Stream, StreamDecoder, StreamState

__all__ = [
    "DEFAULT_SETTINGS",
    "ClientConnection",
    "CodecError",
    "Head",
    "Http2Connection",
    "Http2Settings",
    "Rejection",
    "ResetReason",
    "ServerConnection",
    "Stream",
    "StreamDecoder",
    "StreamState",
]
