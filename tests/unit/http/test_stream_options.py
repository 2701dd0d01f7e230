"""The access-log options of a connection manager (http/stream_options.py): what compiles
from which fields, Envoy's errors, and what a stream gets (nothing without them)."""

from __future__ import annotations

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format

from legatus.access_log.access_log import AccessLog
from legatus.access_log.formatter import compile_format
from legatus.config.errors import ConfigError
from legatus.http.filter_chain import NO_HTTP_FILTERS
from legatus.http.stream_options import (
    AccessLogOptions,
    StreamOptions,
    compile_access_log_options,
    start_logging,
)
from legatus.stream_info import StreamInfo


def options(**fields):
    hcm = json_format.ParseDict(fields, hcm_pb2.HttpConnectionManager())
    return compile_access_log_options(hcm, "hcm")


def test_the_fields_and_the_deprecated_ones():
    assert options() is None
    assert options(access_log_options={}) == AccessLogOptions()
    assert options(access_log_options={
        "access_log_flush_interval": "0.25s", "flush_access_log_on_new_request": True,
        "flush_log_on_tunnel_successfully_established": True,
    }) == AccessLogOptions(flush_interval=0.25, on_new_request=True,
                           on_tunnel_established=True)  # fmt: skip
    assert options(access_log_flush_interval="2s", flush_access_log_on_new_request=True) == (
        AccessLogOptions(flush_interval=2.0, on_new_request=True)
    )


@pytest.mark.parametrize(
    ("fields", "path", "message"),
    [
        ({"access_log_flush_interval": "1s", "access_log_options": {}},
         "hcm.access_log_flush_interval",
         "Only one of access_log_flush_interval or access_log_options can be specified."),
        ({"flush_access_log_on_new_request": True, "access_log_options": {}},
         "hcm.flush_access_log_on_new_request",
         "Only one of flush_access_log_on_new_request or access_log_options can be specified."),
    ],
)  # fmt: skip
def test_deprecated_fields_with_the_options_are_envoys_errors(fields, path, message):
    with pytest.raises(ConfigError) as e:
        options(**fields)
    assert (e.value.path, e.value.message) == (path, message)


def test_what_a_stream_gets():
    assert StreamOptions.of(None, None) is None
    assert StreamOptions.of(AccessLogOptions(on_new_request=True), None) is None  # (the chain)
    periodic = StreamOptions.of(AccessLogOptions(flush_interval=1.0), None)
    assert periodic.flush_interval == 1.0 and not periodic.hooks_headers
    assert StreamOptions.of(AccessLogOptions(on_tunnel_established=True), None).hooks_headers


class _Recorder:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.formatter = compile_format("%ACCESS_LOG_TYPE% %DURATION%", "f")

    def log(self, info, req, resp, trl) -> None:
        self.lines.append(self.formatter.format(info, req, resp, trl))


class _Loop:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


class _Stream:
    """What the start entry reads of an ActiveStream."""

    request_headers = response_headers = response_trailers = None

    def __init__(self, recorder: _Recorder, now: float) -> None:
        self.info = StreamInfo(now_monotonic=10.0)
        access_log = AccessLog(name="r", filter=None, instance=recorder)
        config = type("Config", (), {"access_logs": (access_log,)})
        self.manager = type("Manager", (), {"config": config, "loop": _Loop(now)})


def test_the_start_entry_and_the_type_outside_an_entry():
    recorder = _Recorder()
    stream = _Stream(recorder, now=10.002)
    chain = start_logging(NO_HTTP_FILTERS)
    chain.create_filter_manager(stream, stream.info, 1024)
    assert recorder.lines == ["DownstreamStart 2"]  # %DURATION% so far
    assert stream.info.end_monotonic is None
    assert compile_format("%ACCESS_LOG_TYPE%", "f").format(stream.info) == "NotSet"
