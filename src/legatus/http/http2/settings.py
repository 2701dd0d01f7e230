"""HTTP/2 codec settings: Envoy's ``Http2ProtocolOptions``, compiled once from the config.

Defaults are Envoy 1.40's, as its downstream codec advertises them (SETTINGS
HEADER_TABLE_SIZE 4096, ENABLE_CONNECT_PROTOCOL 0, MAX_CONCURRENT_STREAMS 1024,
INITIAL_WINDOW_SIZE 16 MiB, then a connection WINDOW_UPDATE to 24 MiB) and as its protocol
constraints use them. ``allow_connect`` advertises ENABLE_CONNECT_PROTOCOL 1 (a server's
SETTINGS only): clients may then send extended CONNECT (RFC 8441, header_validation.py).
``from_proto`` refuses, by field path, what the codec does not do yet: METADATA frames,
custom SETTINGS parameters and the idle-connection keepalive probe.
"""

from __future__ import annotations

from dataclasses import dataclass

from legatus.config.errors import ConfigError, join_path
from legatus.http.http1.settings import HeadersWithUnderscoresAction
from legatus.http.http2 import frames as f

DEFAULT_MAX_CONCURRENT_STREAMS = 1024
DEFAULT_INITIAL_STREAM_WINDOW_SIZE = 16 * 1024 * 1024
DEFAULT_INITIAL_CONNECTION_WINDOW_SIZE = 24 * 1024 * 1024
DEFAULT_MAX_OUTBOUND_FRAMES = 10000
DEFAULT_MAX_OUTBOUND_CONTROL_FRAMES = 1000
DEFAULT_MAX_CONSECUTIVE_INBOUND_FRAMES_WITH_EMPTY_PAYLOAD = 1
DEFAULT_MAX_INBOUND_PRIORITY_FRAMES_PER_STREAM = 100
DEFAULT_MAX_INBOUND_WINDOW_UPDATE_FRAMES_PER_DATA_FRAME_SENT = 10
DEFAULT_KEEPALIVE_JITTER = 0.15  # KeepaliveSettings.interval_jitter: 15 %
# CONTINUATION frames one header block may take before the connection is closed, as Envoy.
MAX_CONTINUATIONS = 512

_SUPPORTED = frozenset({
    "hpack_table_size", "max_concurrent_streams", "initial_stream_window_size",
    "initial_connection_window_size", "allow_connect", "allow_metadata", "max_outbound_frames",
    "max_outbound_control_frames", "max_consecutive_inbound_frames_with_empty_payload",
    "max_inbound_priority_frames_per_stream",
    "max_inbound_window_update_frames_per_data_frame_sent",
    "stream_error_on_invalid_http_messaging", "override_stream_error_on_invalid_http_message",
    "connection_keepalive", "use_oghttp2_codec",
})  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class Http2Settings:
    """What one HTTP/2 connection (either role) needs to know about its configuration."""

    hpack_table_size: int = f.DEFAULT_HEADER_TABLE_SIZE
    max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS
    initial_stream_window_size: int = DEFAULT_INITIAL_STREAM_WINDOW_SIZE
    initial_connection_window_size: int = DEFAULT_INITIAL_CONNECTION_WINDOW_SIZE
    max_outbound_frames: int = DEFAULT_MAX_OUTBOUND_FRAMES
    max_outbound_control_frames: int = DEFAULT_MAX_OUTBOUND_CONTROL_FRAMES
    max_consecutive_inbound_frames_with_empty_payload: int = (
        DEFAULT_MAX_CONSECUTIVE_INBOUND_FRAMES_WITH_EMPTY_PAYLOAD
    )
    max_inbound_priority_frames_per_stream: int = DEFAULT_MAX_INBOUND_PRIORITY_FRAMES_PER_STREAM
    max_inbound_window_update_frames_per_data_frame_sent: int = (
        DEFAULT_MAX_INBOUND_WINDOW_UPDATE_FRAMES_PER_DATA_FRAME_SENT
    )
    # A malformed request resets its stream only (True) or closes the connection (False,
    # Envoy's default for HTTP/2).
    stream_error_on_invalid_http_messaging: bool = False
    # From the HCM: the header limits and the underscore policy apply to HTTP/2 too.
    max_headers_kb: int = 60
    max_headers_count: int = 100
    headers_with_underscores_action: HeadersWithUnderscoresAction = (
        HeadersWithUnderscoresAction.ALLOW
    )
    # connection_keepalive: PING every ``keepalive_interval`` (+- jitter), the connection
    # closes when its ACK does not come within ``keepalive_timeout``. None: no keepalive.
    keepalive_interval: float | None = None
    keepalive_timeout: float | None = None
    keepalive_jitter: float = DEFAULT_KEEPALIVE_JITTER
    # allow_connect: extended CONNECT (RFC 8441) is accepted and advertised.
    allow_connect: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.max_concurrent_streams <= f.MAX_STREAM_ID:
            raise ValueError("max_concurrent_streams must be in [1, 2147483647]")
        for name in ("initial_stream_window_size", "initial_connection_window_size"):
            if not f.DEFAULT_WINDOW_SIZE <= getattr(self, name) <= f.MAX_WINDOW_SIZE:
                raise ValueError(f"{name} must be in [65535, 2147483647]")
        for name in ("max_outbound_frames", "max_outbound_control_frames",
                     "max_inbound_window_update_frames_per_data_frame_sent"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.keepalive_interval is not None and self.keepalive_timeout is None:
            raise ValueError("connection_keepalive.timeout is required")

    def local_settings(self, *, client: bool) -> list[tuple[int, int]]:
        """The SETTINGS this side sends first, in Envoy's order (a client also turns push
        off, which a server must not send)."""
        out = [(f.SETTINGS_HEADER_TABLE_SIZE, self.hpack_table_size)]
        if client:  # Envoy's client: push off first, then the table, then no extended CONNECT
            out.insert(0, (f.SETTINGS_ENABLE_PUSH, 0))
        out.append((f.SETTINGS_ENABLE_CONNECT_PROTOCOL, int(self.allow_connect and not client)))
        out.append((f.SETTINGS_MAX_CONCURRENT_STREAMS, self.max_concurrent_streams))
        out.append((f.SETTINGS_INITIAL_WINDOW_SIZE, self.initial_stream_window_size))
        return out

    @classmethod
    def from_proto(
        cls,
        proto=None,
        common_http_protocol_options=None,
        *,
        max_headers_kb: int = 0,
        path: str = "",
        server: bool = False,
    ) -> Http2Settings:
        """From an ``Http2ProtocolOptions`` (None: Envoy's defaults), the HCM's
        ``common_http_protocol_options`` and ``max_request_headers_kb`` (0: the default).
        ``path`` names the Http2ProtocolOptions field for errors; ``server``: the options
        are a connection manager's (``allow_connect`` is only implemented there)."""
        kwargs: dict = {}
        if max_headers_kb:
            kwargs["max_headers_kb"] = max_headers_kb
        common = common_http_protocol_options
        if common is not None:
            if common.HasField("max_headers_count"):
                kwargs["max_headers_count"] = common.max_headers_count.value
            kwargs["headers_with_underscores_action"] = HeadersWithUnderscoresAction(
                common.headers_with_underscores_action
            )
        if proto is not None:
            _check(proto, path, server)
            for name in (
                "hpack_table_size", "max_concurrent_streams", "initial_stream_window_size",
                "initial_connection_window_size", "max_outbound_frames",
                "max_outbound_control_frames", "max_consecutive_inbound_frames_with_empty_payload",
                "max_inbound_priority_frames_per_stream",
                "max_inbound_window_update_frames_per_data_frame_sent",
            ):  # fmt: skip
                if proto.HasField(name):
                    kwargs[name] = getattr(proto, name).value
            stream_error = proto.stream_error_on_invalid_http_messaging
            if proto.HasField("override_stream_error_on_invalid_http_message"):
                stream_error = proto.override_stream_error_on_invalid_http_message.value
            kwargs["stream_error_on_invalid_http_messaging"] = stream_error
            kwargs["allow_connect"] = proto.allow_connect
            if proto.HasField("connection_keepalive"):
                kwargs.update(_keepalive(proto.connection_keepalive,
                                         join_path(path, "connection_keepalive")))  # fmt: skip
        try:
            return cls(**kwargs)
        except ValueError as e:
            raise ConfigError(path, str(e)) from None


def _check(proto, path: str, server: bool) -> None:
    for field, _ in proto.ListFields():
        if field.name not in _SUPPORTED:
            raise ConfigError(
                join_path(path, field.name),
                f"field '{field.name}' of Http2ProtocolOptions is not supported by legatus yet",
            )
    if proto.allow_connect and not server:
        raise ConfigError(
            join_path(path, "allow_connect"),
            "extended CONNECT to an upstream (WebSocket over HTTP/2 upstream) is not supported "
            "by legatus yet",
        )
    if proto.allow_metadata:
        raise ConfigError(
            join_path(path, "allow_metadata"), "METADATA frames are not supported by legatus"
        )
    if proto.HasField("use_oghttp2_codec") and proto.use_oghttp2_codec.value:
        raise ConfigError(
            join_path(path, "use_oghttp2_codec"),
            "legatus has its own HTTP/2 codec (it behaves as Envoy's default one); "
            "oghttp2 cannot be selected",
        )


def _keepalive(keepalive, path: str) -> dict:
    from legatus.upstream.cluster import duration

    if keepalive.HasField("connection_idle_interval"):
        raise ConfigError(
            join_path(path, "connection_idle_interval"), "not supported by legatus yet"
        )
    if not keepalive.HasField("timeout"):
        raise ConfigError(join_path(path, "timeout"), "value is required")
    out: dict = {"keepalive_timeout": duration(keepalive.timeout)}
    if keepalive.HasField("interval"):
        out["keepalive_interval"] = duration(keepalive.interval)
    if keepalive.HasField("interval_jitter"):
        out["keepalive_jitter"] = keepalive.interval_jitter.value / 100.0
    return out


DEFAULT_SETTINGS = Http2Settings()
