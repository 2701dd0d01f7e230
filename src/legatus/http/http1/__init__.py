"""HTTP/1.1 codecs (sans-I/O, on httptools): ``ServerCodec`` downstream, ``ClientCodec``
upstream, their events and settings."""

from legatus.http.http1.client_codec import ClientCodec
from legatus.http.http1.events import (
    ClientEvent,
    InformationalHeaders,
    ProtocolError,
    RequestData,
    RequestHeaders,
    RequestTrailers,
    ResponseData,
    ResponseHeaders,
    ResponseTrailers,
    ServerEvent,
)
from legatus.http.http1.server_codec import ServerCodec
from legatus.http.http1.settings import (
    DEFAULT_SETTINGS,
    HeadersWithUnderscoresAction,
    Http1Settings,
)

__all__ = [
    "DEFAULT_SETTINGS",
    "ClientCodec",
    "ClientEvent",
    "HeadersWithUnderscoresAction",
    "Http1Settings",
    "InformationalHeaders",
    "ProtocolError",
    "RequestData",
    "RequestHeaders",
    "RequestTrailers",
    "ResponseData",
    "ResponseHeaders",
    "ResponseTrailers",
    "ServerCodec",
    "ServerEvent",
]
