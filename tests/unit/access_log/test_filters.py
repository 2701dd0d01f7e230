"""Access-log filters, create_access_logs, and the file / stdout / stderr loggers."""

from __future__ import annotations

import asyncio
import os
import random
import threading

import pytest
from envoy.config.accesslog.v3 import accesslog_pb2
from google.protobuf import json_format

from legatus.access_log.access_log import compile_filter, create_access_logs
from legatus.access_log.manager import AccessLogManager
from legatus.config.errors import ConfigError
from legatus.config.factory_context import FactoryContext
from legatus.config.proto_json import parse
from legatus.extensions.access_loggers import file as file_logger
from legatus.extensions.access_loggers import stream as stream_logger
from legatus.registry import Registry
from legatus.server.options import Options
from legatus.stats.store import Store
from legatus.stream_info import ResponseFlag, StreamInfo

FILE_TYPE = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def context(*, loop=None, manager=None, seed: int = 1) -> FactoryContext:
    registry = Registry()
    file_logger.register(registry)
    stream_logger.register(registry)
    return FactoryContext(
        registry=registry,
        store=Store(),
        options=Options(),
        random=random.Random(seed),
        loop=loop,
        access_log_manager=manager,
    )


def info(**fields) -> StreamInfo:
    result = StreamInfo(now_monotonic=10.0, now_wall=1795708919.284554)
    result.end_monotonic = 10.25
    for name, value in fields.items():
        setattr(result, name, value)
    return result


def flt(document: dict, ctx=None):
    proto = json_format.ParseDict(document, accesslog_pb2.AccessLogFilter())
    return compile_filter(proto, "f", ctx or context())


def passes(filter_, stream_info, req=None, resp=None, trl=None) -> bool:
    return filter_.evaluate(stream_info, req, resp, trl)


# Filters ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        ("GE", 404, True),
        ("GE", 405, False),
        ("EQ", 404, True),
        ("EQ", 0, False),
        ("LE", 404, True),
        ("LE", 403, False),
        ("NE", 1, True),
        ("NE", 404, False),
    ],
)
def test_status_code_filter(op, value, expected):
    # runtime_key names a runtime override; with no runtime layer the default applies.
    f = flt(
        {
            "status_code_filter": {
                "comparison": {
                    "op": op,
                    "value": {"default_value": value, "runtime_key": "access_log.status"},
                }
            }
        }
    )
    assert passes(f, info(response_code=404)) is expected


def test_status_code_filter_without_a_code_compares_zero():
    f = flt({"status_code_filter": {"comparison": {"op": "EQ", "value": {"default_value": 0}}}})
    assert passes(f, info())  # TCP: no response code, compared as 0


def test_duration_filter():
    f = flt({"duration_filter": {"comparison": {"op": "GE", "value": {"default_value": 250}}}})
    assert passes(f, info())
    assert not passes(f, info(end_monotonic=10.2499))
    assert not passes(f, info(end_monotonic=None))


def test_not_health_check_and_traceable():
    assert passes(flt({"not_health_check_filter": {}}), info())
    assert not passes(flt({"not_health_check_filter": {}}), info(health_check=True))
    assert not passes(flt({"traceable_filter": {}}), info())


def test_runtime_filter_samples_at_the_default_percent():
    always = flt(
        {
            "runtime_filter": {
                "runtime_key": "k",
                "percent_sampled": {"numerator": 100, "denominator": "HUNDRED"},
            }
        }
    )
    never = flt({"runtime_filter": {"runtime_key": "k"}})  # unset: 0%, as in Envoy
    half = flt(
        {
            "runtime_filter": {
                "runtime_key": "k",
                "percent_sampled": {"numerator": 5000, "denominator": "TEN_THOUSAND"},
            }
        }
    )
    assert all(passes(always, info()) for _ in range(100))
    assert not any(passes(never, info()) for _ in range(100))
    hits = sum(passes(half, info()) for _ in range(2000))
    assert 800 < hits < 1200


def test_and_or_filters():
    ok = {"status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": 0}}}}
    no = {"status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": 999}}}}
    assert passes(flt({"and_filter": {"filters": [ok, ok]}}), info())
    assert not passes(flt({"and_filter": {"filters": [ok, no]}}), info())
    assert passes(flt({"or_filter": {"filters": [no, ok]}}), info())
    assert not passes(flt({"or_filter": {"filters": [no, no]}}), info())
    nested = flt({"and_filter": {"filters": [ok, {"or_filter": {"filters": [no, ok]}}]}})
    assert passes(nested, info())


def test_response_flag_filter():
    any_flag = flt({"response_flag_filter": {}})
    uf = flt({"response_flag_filter": {"flags": ["UF", "UDO"]}})
    plain, failed = info(), info()
    failed.set_flag(ResponseFlag.UPSTREAM_CONNECTION_FAILURE)
    timeout = info()
    timeout.set_flag(ResponseFlag.DURATION_TIMEOUT)
    assert not passes(any_flag, plain) and passes(any_flag, failed) and passes(any_flag, timeout)
    assert passes(uf, failed) and not passes(uf, timeout)


@pytest.mark.parametrize(
    ("header", "headers", "expected"),
    [
        ({"name": "X-A"}, {"x-a": ""}, True),
        ({"name": "x-a"}, {}, False),
        ({"name": "x-a", "present_match": False}, {}, True),
        ({"name": "x-a", "invert_match": True}, {}, True),  # absent: inverted presence
        ({"name": "x-a", "present_match": True, "invert_match": True}, {}, True),
        ({"name": "x-a", "string_match": {"exact": "v"}}, {"x-a": "v"}, True),
        ({"name": "x-a", "string_match": {"exact": "V", "ignore_case": True}}, {"x-a": "v"}, True),
        ({"name": "x-a", "string_match": {"prefix": "ab"}}, {"x-a": "abc"}, True),
        ({"name": "x-a", "string_match": {"suffix": "bc"}}, {"x-a": "abc"}, True),
        ({"name": "x-a", "string_match": {"contains": "b"}}, {"x-a": "abc"}, True),
        ({"name": "x-a", "string_match": {"contains": "z"}}, {"x-a": "abc"}, False),
        ({"name": "x-a", "string_match": {"safe_regex": {"regex": "a.c"}}}, {"x-a": "abc"}, True),
        ({"name": "x-a", "string_match": {"safe_regex": {"regex": "a"}}}, {"x-a": "abc"}, False),
        (
            {"name": "x-a", "string_match": {"exact": "v"}, "invert_match": True},
            {"x-a": "v"},
            False,
        ),
        (
            {"name": "x-a", "string_match": {"exact": ""}, "treat_missing_header_as_empty": True},
            {},
            True,
        ),
        ({"name": "x-a", "range_match": {"start": 1, "end": 10}}, {"x-a": "9"}, True),
        ({"name": "x-a", "range_match": {"start": 1, "end": 10}}, {"x-a": "10"}, False),
        ({"name": "x-a", "range_match": {"start": -5, "end": 0}}, {"x-a": "-3"}, True),
        ({"name": "x-a", "exact_match": "v"}, {"x-a": "v"}, True),
        ({"name": "x-a", "prefix_match": "a"}, {"x-a": "b"}, False),
    ],
)
def test_header_filter(header, headers, expected):
    assert passes(flt({"header_filter": {"header": header}}), info(), req=headers) is expected


def test_header_filter_without_headers_is_an_empty_map():
    assert passes(flt({"header_filter": {"header": {"name": "x", "present_match": False}}}), info())


def test_grpc_status_filter():
    f = flt({"grpc_status_filter": {"statuses": ["OK", "UNAVAILABLE"]}})
    assert passes(f, info(), trl={"grpc-status": "0"})
    assert passes(f, info(response_code=200), resp={"grpc-status": "14"})
    assert passes(f, info(response_code=503))  # mapped from the HTTP status
    assert not passes(f, info(response_code=200))  # 200 maps to UNKNOWN, as in Envoy
    assert not passes(f, info(), trl={"grpc-status": "99"})  # invalid code
    excluded = flt({"grpc_status_filter": {"statuses": ["UNKNOWN"], "exclude": True}})
    assert not passes(excluded, info())
    assert passes(excluded, info(), trl={"grpc-status": "0"})


def test_log_type_filter_reads_the_type_of_the_entry_being_written():
    f = flt({"log_type_filter": {"types": ["DownstreamStart", "DownstreamPeriodic"]}})
    entry = info()
    assert not passes(f, entry)  # outside an entry: NotSet
    entry.access_log_type = "DownstreamStart"
    assert passes(f, entry)
    entry.access_log_type = "DownstreamEnd"
    assert not passes(f, entry)
    excluded = flt({"log_type_filter": {"types": ["DownstreamEnd"], "exclude": True}})
    assert passes(excluded, entry) is False
    entry.access_log_type = "DownstreamPeriodic"
    assert passes(excluded, entry)


@pytest.mark.parametrize("document", [{"metadata_filter": {}}, {"extension_filter": {"name": "x"}}])
def test_unsupported_filters_are_config_errors(document):
    with pytest.raises(ConfigError) as e:
        flt(document)
    assert e.value.path == f"f.{next(iter(document))}"
    assert "not supported" in e.value.message


def test_bad_regex_is_a_config_error():
    with pytest.raises(ConfigError) as e:
        flt(
            {
                "header_filter": {
                    "header": {"name": "x", "string_match": {"safe_regex": {"regex": "("}}}
                }
            }
        )
    assert e.value.path == "f.header_filter.header.string_match.safe_regex.regex"


# create_access_logs and the loggers -------------------------------------------------


def access_logs(documents: list[dict], ctx):
    protos = [parse(d, accesslog_pb2.AccessLog) for d in documents]
    return create_access_logs(protos, ctx, "listeners[0].access_log")


def file_log(path, **config) -> dict:
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {"@type": FILE_TYPE, "path": str(path), **config},
    }


async def test_file_logger_writes_filtered_entries(tmp_path):
    manager = AccessLogManager(asyncio.get_running_loop(), 3600.0)
    ctx = context(loop=asyncio.get_running_loop(), manager=manager)
    path = tmp_path / "a.log"
    logs = access_logs(
        [
            {
                **file_log(
                    path,
                    log_format={
                        "text_format_source": {"inline_string": "%RESPONSE_FLAGS% %BYTES_SENT%\n"}
                    },
                ),
                "filter": {"response_flag_filter": {}},
            }
        ],
        ctx,
    )
    failed = info(bytes_sent=3)
    failed.set_flag(ResponseFlag.NO_HEALTHY_UPSTREAM)
    logs[0].log(info(bytes_sent=1))
    logs[0].log(failed)
    manager.close_all()
    assert path.read_text() == "UH 3\n"


async def test_file_logger_lines_are_written_off_the_loop_after_the_interval(tmp_path, monkeypatch):
    """An HTTP entry through the file logger: buffered on the loop, written by the writer
    thread once the flush interval passes, and the rest at shutdown."""
    loop = asyncio.get_running_loop()
    store = Store()
    manager = AccessLogManager(loop, 0.05, store=store)
    ctx = context(loop=loop, manager=manager)
    path = tmp_path / "http.log"
    fmt = "%REQ(:METHOD)% %PATH(NQ)% %PROTOCOL% %RESPONSE_CODE% %UPSTREAM_REQUEST_ATTEMPT_COUNT%\n"
    logs = access_logs([file_log(path, log_format={"text_format": fmt})], ctx)
    writers: list[str] = []
    real_write = os.write

    def recording_write(fd, data):
        writers.append(threading.current_thread().name)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", recording_write)
    request = {":method": "GET", ":path": "/a?b=1"}
    logs[0].log(info(protocol="HTTP/1.1", response_code=200), request, {":status": "200"})
    assert path.read_text() == ""
    for _ in range(100):
        await asyncio.sleep(0.01)
        if path.read_text():
            break
    assert path.read_text() == "GET /a HTTP/1.1 200 0\n"
    assert store.value("filesystem.flushed_by_timer") == 1
    logs[0].log(info(protocol="HTTP/1.0", response_code=404), {":method": "HEAD"}, None)
    manager.close_all()
    assert path.read_text() == "GET /a HTTP/1.1 200 0\nHEAD - HTTP/1.0 404 0\n"
    assert set(writers) == {"access-log-writer"}


async def test_default_and_deprecated_formats(tmp_path):
    manager = AccessLogManager(asyncio.get_running_loop(), 3600.0)
    ctx = context(loop=asyncio.get_running_loop(), manager=manager)
    logs = access_logs(
        [
            file_log(tmp_path / "default.log"),
            file_log(tmp_path / "old.log", format="OLD %BYTES_SENT% %PROTOCOL%\n"),
            file_log(tmp_path / "empty.log", format=""),
            file_log(
                tmp_path / "json.log", json_format={"zeta": "%BYTES_SENT%", "mid": "%PROTOCOL%"}
            ),
            file_log(tmp_path / "typed.log", typed_json_format={"zeta": "%BYTES_SENT%"}),
        ],
        ctx,
    )
    for log in logs:
        log.log(info(bytes_sent=12, upstream_host="127.0.0.1:1"))
    manager.close_all()
    default = '[2026-11-26T16:01:59.284Z] "- - -" 0 - 0 12 250 - "-" "-" "-" "-" "127.0.0.1:1"\n'
    assert (tmp_path / "default.log").read_text() == default
    assert (tmp_path / "empty.log").read_text() == default
    assert (tmp_path / "old.log").read_text() == "OLD 12 -\n"  # real Envoy
    assert (tmp_path / "json.log").read_text() == '{"mid":null,"zeta":12}\n'  # real Envoy
    assert (tmp_path / "typed.log").read_text() == '{"zeta":12}\n'  # real Envoy


async def test_stdout_and_stderr_loggers(capfd):
    manager = AccessLogManager(asyncio.get_running_loop(), 3600.0)
    ctx = context(loop=asyncio.get_running_loop(), manager=manager)
    stream = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3."
    logs = access_logs(
        [
            {
                "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": stream + "StdoutAccessLog",
                    "log_format": {"text_format": "out %BYTES_SENT%\n"},
                },
            },
            {
                "name": "envoy.access_loggers.stderr",
                "typed_config": {"@type": stream + "StderrAccessLog"},
            },
        ],
        ctx,
    )
    for log in logs:
        log.log(info(bytes_sent=5))
    manager.close_all()
    out, err = capfd.readouterr()
    assert out == "out 5\n"
    assert err.startswith("[2026-11-26T16:01:59.284Z] ")


def test_validate_mode_opens_no_file(tmp_path):
    logs = access_logs([file_log(tmp_path / "a.log")], context())
    logs[0].log(info())  # a no-op without a file
    assert not (tmp_path / "a.log").exists()


def test_missing_directory_is_envoys_start_up_error(tmp_path):
    path = tmp_path / "nope" / "a.log"
    with pytest.raises(ConfigError) as e:
        access_logs([file_log(path)], context())
    assert e.value.path == "listeners[0].access_log[0].typed_config.path"
    assert e.value.message == f"unable to open file '{path}': No such file or directory"


async def test_missing_directory_when_serving(tmp_path):
    manager = AccessLogManager(asyncio.get_running_loop(), 3600.0)
    ctx = context(loop=asyncio.get_running_loop(), manager=manager)
    with pytest.raises(ConfigError, match="No such file or directory"):
        access_logs([file_log(tmp_path / "nope" / "a.log")], ctx)


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError) as e:
        access_logs([file_log(tmp_path / "a.log", log_format={"text_format": "%FOO%"})], context())
    assert e.value.path == "listeners[0].access_log[0].typed_config.log_format.text_format"
    assert e.value.message == "Not supported field in StreamInfo: FOO"
    with pytest.raises(ConfigError) as e:
        access_logs([file_log("")], context())
    assert e.value.path == "listeners[0].access_log[0].typed_config.path"
    with pytest.raises(ConfigError) as e:
        access_logs(
            [{**file_log(tmp_path / "a.log"), "filter": {"metadata_filter": {}}}], context()
        )
    assert e.value.path == "listeners[0].access_log[0].filter.metadata_filter"


def test_unknown_logger_extension_is_an_error():
    with pytest.raises(ConfigError, match=r"does not implement this envoy\.access_loggers ext"):
        access_logs(
            [
                {
                    "name": "envoy.access_loggers.open_telemetry",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.access_loggers."
                        "open_telemetry.v3.OpenTelemetryAccessLogConfig"
                    },
                }
            ],
            context(),
        )


def test_a_failing_logger_never_raises(caplog):
    class Broken:
        def log(self, *args):
            raise RuntimeError("boom")

    from legatus.access_log.access_log import AccessLog

    AccessLog(name="broken", filter=None, instance=Broken()).log(info())
    assert "access log broken failed" in caplog.text
