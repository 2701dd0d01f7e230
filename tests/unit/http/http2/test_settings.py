"""Http2ProtocolOptions compiled into Http2Settings: Envoy's defaults, its ranges, and what
legatus refuses by field path."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import protocol_pb2
from google.protobuf import json_format

from legatus.config.errors import ConfigError
from legatus.http.http2 import Http2Settings
from legatus.http.http2 import frames as f

PATH = "hcm.http2_protocol_options"


def options(**fields) -> protocol_pb2.Http2ProtocolOptions:
    return json_format.ParseDict(fields, protocol_pb2.Http2ProtocolOptions())


def test_envoys_defaults_and_settings_frame():
    settings = Http2Settings.from_proto(None, path=PATH)
    assert settings == Http2Settings()
    assert settings.local_settings(client=False) == [
        (f.SETTINGS_HEADER_TABLE_SIZE, 4096),
        (f.SETTINGS_ENABLE_CONNECT_PROTOCOL, 0),
        (f.SETTINGS_MAX_CONCURRENT_STREAMS, 1024),
        (f.SETTINGS_INITIAL_WINDOW_SIZE, 1 << 24),
    ]
    assert settings.initial_connection_window_size == 24 << 20
    assert (settings.max_outbound_frames, settings.max_outbound_control_frames) == (10000, 1000)
    assert settings.max_consecutive_inbound_frames_with_empty_payload == 1
    assert settings.max_inbound_priority_frames_per_stream == 100
    assert settings.max_inbound_window_update_frames_per_data_frame_sent == 10
    assert (f.SETTINGS_ENABLE_PUSH, 0) in settings.local_settings(client=True)


def test_options_are_read():
    settings = Http2Settings.from_proto(
        options(
            maxConcurrentStreams=7,
            initialStreamWindowSize=65536,
            initialConnectionWindowSize=1 << 20,
            maxOutboundFrames=5,
            overrideStreamErrorOnInvalidHttpMessage=True,
            connectionKeepalive={"interval": "2s", "timeout": "1s"},
        ),
        max_headers_kb=10,
        path=PATH,
    )
    assert settings.max_concurrent_streams == 7 and settings.initial_stream_window_size == 65536
    assert settings.max_outbound_frames == 5 and settings.stream_error_on_invalid_http_messaging
    assert (settings.keepalive_interval, settings.keepalive_timeout) == (2.0, 1.0)
    assert settings.max_headers_kb == 10


def test_allow_connect_on_a_connection_manager_advertises_extended_connect():
    settings = Http2Settings.from_proto(options(allowConnect=True), path=PATH, server=True)
    assert settings.allow_connect
    assert (f.SETTINGS_ENABLE_CONNECT_PROTOCOL, 1) in settings.local_settings(client=False)
    assert (f.SETTINGS_ENABLE_CONNECT_PROTOCOL, 0) in settings.local_settings(client=True)


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"allowConnect": True}, "allow_connect"),  # (an upstream's: see above for the HCM)
        ({"allowMetadata": True}, "allow_metadata"),
        (
            {"customSettingsParameters": [{"identifier": 9, "value": 1}]},
            "custom_settings_parameters",
        ),
        ({"useOghttp2Codec": True}, "use_oghttp2_codec"),
        (
            {"connectionKeepalive": {"timeout": "1s", "connectionIdleInterval": "1s"}},
            "connection_keepalive.connection_idle_interval",
        ),
        ({"initialStreamWindowSize": 100}, ""),
        ({"maxConcurrentStreams": 0}, ""),
    ],
)
def test_refused_by_field_path(fields, where):
    with pytest.raises(ConfigError) as e:
        Http2Settings.from_proto(options(**fields), path=PATH)
    assert e.value.path == (f"{PATH}.{where}" if where else PATH)
