"""Envoy-style application logging: patterns, levels, the sink.

Expected strings marked "real Envoy" were printed by envoy 1.40.0 for the same
pattern (``--log-format``), level names, or admin request.
"""

from __future__ import annotations

import calendar
import io
import logging
import os
import re
import sys
import threading
import time

import pytest

import legatus
from legatus.server import logging as envoy_logging
from legatus.server.logging import (
    COMPONENTS,
    DEFAULT_FORMAT,
    LEVEL_NAMES,
    OFF,
    TRACE,
    EnvoyFormatter,
    configure_logging,
    get_logger,
    levels,
    parse_level,
    render_logging_error,
    render_logging_levels,
    serialize_log_tags,
)

SRC_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(legatus.__file__)))
MAIN_PY = os.path.join(SRC_ROOT, "legatus", "server", "main.py")
# 2018-03-27 15:25:06 UTC (the example in Envoy's --log-format docs) + 2**-7 s,
# exactly representable so the sub-second flags are exact.
CREATED = calendar.timegm((2018, 3, 27, 15, 25, 6)) + 0.0078125

# Real Envoy 1.40 stderr, default format.
REAL_ENVOY_LINE = (
    "[2026-11-26 15:54:30.138][3556][info][main] [source/server/server.cc:463] "
    "initializing epoch 0 (base id=19056736, hot restart version=11.104)"
)
DEFAULT_SHAPE = re.compile(
    r"^\[\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3}\]\[\d+\]"
    r"\[(trace|debug|info|warning|error|critical)\]\[[a-z0-9_]+\] \[[\w./-]+:\d+\] \S.*$"
)
# Real Envoy 1.40: POST /logging, component names in the order printed.
_REAL_LOGGERS = """
a2a admin ai_protocol_manager alternate_protocols_cache aws assert backtrace basic_auth
cache_filter client config connection conn_handler compression credential_injector decompression
dns dubbo envoy_bug ext_authz ext_proc rocketmq file filter forward_proxy geolocation grpc
happy_eyeballs hc health_checker http http2 hystrix init io jwt json_rpc kafka key_value_store lua
local_rate_limit main matcher mcp misc mongo multi_connection notification oauth2 quic quic_stream
pool rate_limit_quota rbac rds redis router runtime stats secret sse tap testing thrift tracing
upstream udp wasm websocket golang stats_sinks dynamic_modules ip_tagging
"""
REAL_LOGGER_NAMES = _REAL_LOGGERS.split()


@pytest.fixture
def tz():
    """Set the local time zone (POSIX TZ string) for the test, restore afterwards."""
    saved = os.environ.get("TZ")

    def set_tz(value: str) -> None:
        os.environ["TZ"] = value
        time.tzset()

    set_tz("UTC0")
    yield set_tz
    if saved is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = saved
    time.tzset()


@pytest.fixture
def sinks():
    """configure_logging into a StringIO (unless log_path), always undone afterwards."""
    made = []

    def configure(**kwargs):
        if "log_path" not in kwargs:
            kwargs.setdefault("stream", io.StringIO())
        sink = configure_logging(**kwargs)
        made.append(sink)
        return sink, kwargs.get("stream")

    yield configure
    for sink in reversed(made):
        sink.close()


def make_record(
    msg: str = "initializing epoch 0",
    *,
    name: str = "legatus.main",
    level: int = logging.INFO,
    pathname: str = MAIN_PY,
    lineno: int = 463,
    func: str = "initialize",
    created: float = CREATED,
    args: tuple = (),
    exc_info=None,
) -> logging.LogRecord:
    record = logging.LogRecord(name, level, pathname, lineno, msg, args, exc_info, func=func)
    record.created = created
    record.process = 3456
    return record


def render(pattern: str, record: logging.LogRecord | None = None, **kwargs) -> str:
    return EnvoyFormatter(pattern, **kwargs).format(record or make_record())


# --- levels -------------------------------------------------------------------


def test_level_mapping():
    assert parse_level("trace") == TRACE == 5
    assert parse_level("debug") == logging.DEBUG
    assert parse_level("info") == logging.INFO
    assert parse_level("warning") == parse_level("warn") == logging.WARNING
    assert parse_level("error") == logging.ERROR
    assert parse_level("critical") == logging.CRITICAL
    assert parse_level("off") == OFF > logging.CRITICAL
    assert LEVEL_NAMES == ("trace", "debug", "info", "warning", "error", "critical", "off")


@pytest.mark.parametrize("bad", ["bogus", "WARN", "Info", "", "warning "])
def test_bad_level_has_envoys_text(bad):
    # Real Envoy: "error: invalid log level specified 'WARN'" (levels are case-sensitive).
    with pytest.raises(ValueError, match=f"^invalid log level specified '{re.escape(bad)}'$"):
        parse_level(bad)


def test_admin_spelling_rejects_warn():
    # Real Envoy: POST /logging?level=warn -> "error: unknown logger level".
    with pytest.raises(ValueError):
        parse_level("warn", allow_warn=False)
    assert parse_level("warning", allow_warn=False) == logging.WARNING


# --- the pattern --------------------------------------------------------------


def test_default_pattern_has_the_shape_of_a_real_envoy_line(tz):
    assert DEFAULT_FORMAT == "[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v"
    assert DEFAULT_SHAPE.match(REAL_ENVOY_LINE)
    line = render(DEFAULT_FORMAT)
    assert DEFAULT_SHAPE.match(line), line
    tid = threading.get_native_id()
    assert line == (
        f"[2018-03-27 15:25:06.007][{tid}][info][main] "
        "[legatus/server/main.py:463] initializing epoch 0"
    )


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("%v", "initializing epoch 0"),
        ("%P", "3456"),
        ("%n", "main"),
        ("%l", "info"),
        ("%L", "I"),
        ("%a", "Tue"),
        ("%A", "Tuesday"),
        ("%b", "Mar"),
        ("%h", "Mar"),
        ("%B", "March"),
        ("%c", "Tue Mar 27 15:25:06 2018"),
        ("%C", "18"),
        ("%Y", "2018"),
        ("%D", "03/27/18"),
        ("%x", "03/27/18"),
        ("%m", "03"),
        ("%d", "27"),
        ("%H", "15"),
        ("%I", "03"),
        ("%M", "25"),
        ("%S", "06"),
        ("%e", "007"),
        ("%f", "007812"),
        ("%F", "007812500"),
        ("%p", "PM"),
        ("%r", "03:25:06 PM"),
        ("%R", "15:25"),
        ("%T", "15:25:06"),
        ("%X", "15:25:06"),
        ("%z", "+00:00"),
        ("%E", "1522164306"),
        ("%%", "%"),
        ("%@", "legatus/server/main.py:463"),
        ("%s", "main.py"),
        ("%g", "legatus/server/main.py"),
        ("%#", "463"),
        ("%!", "initialize"),
        ("%&", ""),
        ("%^x%$", "x"),
        ("%*", ""),
        ("%N", legatus.__version__),
    ],
)
def test_flag(tz, flag, expected):
    assert render(f"<{flag}>") == f"<{expected}>"


def test_thread_flag_is_the_native_id_of_the_logging_thread(tz):
    formatter = EnvoyFormatter("%t")
    seen = {}

    def worker():
        seen["tid"] = threading.get_native_id()
        seen["line"] = formatter.format(make_record())

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["line"] == str(seen["tid"])
    assert formatter.format(make_record()) == str(threading.get_native_id())


def test_time_is_local(tz):
    tz("<+0530>-5:30")
    assert render("%T %z %c") == "20:55:06 +05:30 Tue Mar 27 20:55:06 2018"
    tz("<-0330>3:30")
    assert render("%T %z %p %I") == "11:55:06 -03:30 AM 11"


def test_midnight_and_single_digit_day(tz):
    record = make_record(created=calendar.timegm((2018, 3, 1, 0, 5, 9)))
    # spdlog prints hour 0 as 00 in %I, and %c's day unpadded.
    assert render("%I|%p|%r|%c|%d", record) == "00|AM|00:05:09 AM|Thu Mar 1 00:05:09 2018|01"


@pytest.mark.parametrize(
    ("levelno", "long", "short"),
    [
        (TRACE, "trace", "T"),
        (logging.DEBUG, "debug", "D"),
        (15, "debug", "D"),
        (logging.INFO, "info", "I"),
        (logging.WARNING, "warning", "W"),
        (logging.ERROR, "error", "E"),
        (logging.CRITICAL, "critical", "C"),
    ],
)
def test_level_flags(levelno, long, short):
    assert render("%l|%L", make_record(level=levelno)) == f"{long}|{short}"


def test_component_and_source_outside_the_package():
    record = make_record(name="asyncio", pathname="/usr/lib/python3/asyncio/base_events.py")
    assert render("%n|%g|%s", record) == "asyncio|/usr/lib/python3/asyncio/base_events.py|" + (
        "base_events.py"
    )
    assert render("%n", make_record(name="legatus.upstream")) == "upstream"


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [  # each from real Envoy with message "initializing epoch 0", function "initialize"
        ("%10l|%-10l|%=10l", "      info|info      |   info   "),
        ("%3!l|%-3!l|%=3!l|%=9l|%2!L", "inf|inf|inf|  info   | I"),
        ("%20v", "initializing epoch 0"),
        ("%3!v", "ini"),
        ("%5n|%8#|%05l", " main|     463| info"),
        ("%100l", " " * 60 + "info"),  # widths stop at 64
        ("%0l|%0!l|%-l|%=l", "info||info|info"),
        ("%!l", "initializel"),  # '!' is the function-name flag here
        ("%20!|", "          initialize|"),  # ...and here, padded
        ("%3!k", "initializek"),
        ("%-5k|%y|%q|%Z|%G|%.|% ", "%k|%y|%q|%Z|%G|%.|% "),  # unknown flags print as is
        ("%-|%=|%=", "%|%|"),  # "-"/"=" is eaten, "|" is an unknown flag; real Envoy
        ("end%", "end"),
        ("%3!_|%=12N|%10*|%5^", "initializing epoch 0|" + legatus.__version__ + "||"),
        ("%3!&|%4!+", "   |initializing epoch 0"),
    ],
)
def test_padding_truncation_and_unknown_flags(pattern, expected):
    assert render(pattern) == expected


def test_elapsed_flags():
    formatter = EnvoyFormatter("%O|%o|%i|%u")
    formatter.format(make_record(created=CREATED))
    assert formatter.format(make_record(created=CREATED + 1.5)) == "1|1500|1500000|1500000000"
    assert formatter.format(make_record(created=CREATED)) == "0|0|0|0"  # never negative


def test_pattern_is_compiled_once(monkeypatch):
    formatter = EnvoyFormatter("[%l][%n] %v")

    def no_parsing(*args, **kwargs):
        raise AssertionError("format() re-parsed the pattern")

    monkeypatch.setattr(envoy_logging, "compile_pattern", no_parsing)
    assert formatter.format(make_record()) == "[info][main] initializing epoch 0"


# --- messages and escaping ----------------------------------------------------

WEIRD = "a\"b'c\\d\ttab\nnl \u00e9.yaml"


def test_message_flags_escape_like_envoy():
    record = make_record(WEIRD)
    assert render("%v", record) == WEIRD
    # Real Envoy: %_ escapes newlines only; %j is JSON (UTF-8 passes, ' untouched).
    assert render("%_", record) == "a\"b'c\\d\ttab\\nnl \u00e9.yaml"
    assert render("%j", record) == "a\\\"b'c\\\\d\\ttab\\nnl \u00e9.yaml"
    controls = make_record("\x01\x1f\x7f\b\f\r")
    assert render("%j", controls) == "\\u0001\\u001f\x7f\\b\\f\\r"


def test_log_format_escaped_escapes_the_whole_line():
    # Real Envoy --log-format-escaped (absl::CEscape of the formatted line).
    record = make_record(WEIRD + " \x01\x7f")
    expected = "<a\\\"b\\'c\\\\d\\ttab\\nnl \\303\\251.yaml \\001\\177>"
    assert render("<%v>", record, escaped=True) == expected
    assert render("['%n']", record, escaped=True) == "[\\'main\\']"


def test_tags_for_json_formats():
    message = serialize_log_tags({"StreamId": "9", "ConnectionId": "7"}) + 'got "x"'
    assert message == '[Tags: "ConnectionId":"7","StreamId":"9"] got "x"'
    record = make_record(message)
    assert render('{"msg":"%+"%*}', record) == (
        '{"msg":"got \\"x\\"","ConnectionId":"7","StreamId":"9"}'
    )
    assert render('{"msg":"%+"%*}', make_record('no "tags"')) == '{"msg":"no \\"tags\\""}'
    assert serialize_log_tags({}) == ""


def test_exception_text_is_part_of_the_message():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = make_record("failed", exc_info=sys.exc_info())
    line = render("%v", record)
    assert line.startswith("failed\nTraceback (most recent call last):")
    assert line.endswith("RuntimeError: boom")
    assert "\n" not in render("%_", record)


# --- components and configuration --------------------------------------------


def test_components_are_envoys():
    assert tuple(REAL_LOGGER_NAMES) == COMPONENTS
    for component in ("admin", "main", "config", "connection", "upstream", "conn_handler"):
        assert get_logger(component).name == f"legatus.{component}"
    with pytest.raises(ValueError, match="invalid component specified 'bogus'"):
        get_logger("bogus")


def test_global_and_component_levels(sinks):
    sink, out = sinks(level="warn", component_levels="upstream:debug,config:trace,hc:off")
    assert sink.levels() == levels()
    assert levels()["main"] == "warning"
    assert (levels()["upstream"], levels()["config"], levels()["hc"]) == ("debug", "trace", "off")

    get_logger("main").info("hidden")
    get_logger("main").warning("shown %d", 1)
    get_logger("upstream").debug("shown %d", 2)
    get_logger("config").log(TRACE, "shown %d", 3)
    get_logger("hc").critical("hidden")
    lines = out.getvalue().splitlines()
    assert [line.rsplit("] ", 1)[1] for line in lines] == ["shown 1", "shown 2", "shown 3"]
    assert all(DEFAULT_SHAPE.match(line) for line in lines)
    assert "test_logging.py:" in lines[0]  # %g: the file that logged


@pytest.mark.parametrize(
    ("spec", "message"),
    [  # real Envoy's texts (after "error: "), in the order Envoy checks
        ("bogus:debug", "invalid component specified 'bogus'"),
        ("admin", "component log level not correctly specified 'admin'"),
        ("admin:debug,", "component log level not correctly specified ''"),
        ("a:b:c", "component log level not correctly specified 'a:b:c'"),
        ("bogus:bogus", "invalid log level specified 'bogus'"),
        ("admin:", "invalid log level specified ''"),
        (":debug", "invalid component specified ''"),
        ("admin:WARNING", "invalid log level specified 'WARNING'"),
    ],
)
def test_bad_component_levels(sinks, spec, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        sinks(level="info", component_levels=spec)


def test_component_levels_accept_warn(sinks):
    sinks(level="info", component_levels="admin:warn")
    assert levels()["admin"] == "warning"


def test_disabled_logging_does_no_work(sinks):
    _, out = sinks(level="info")
    rendered = []

    class Expensive:
        def __str__(self):
            rendered.append(1)
            return "x"

    get_logger("pool").debug("%s", Expensive())
    assert not get_logger("pool").isEnabledFor(logging.DEBUG)
    assert rendered == [] and out.getvalue() == ""


def test_admin_level_changes(sinks):
    sink, out = sinks(level="info")
    sink.set_component_level("admin", "trace")
    assert levels()["admin"] == "trace" and levels()["main"] == "info"
    sink.set_level("debug")
    assert set(levels().values()) == {"debug"}
    # Envoy logs the change on [misc] before applying it, so going up from
    # critical is silent.
    sink.set_level("critical")
    sink.set_level("info")
    changes = [line for line in out.getvalue().splitlines() if "change all log levels" in line]
    assert len(changes) == 2
    assert "[info][misc]" in changes[0] and changes[0].endswith("level='debug'")
    assert changes[1].endswith("level='critical'")


def test_render_logging_levels_is_envoys_text(sinks):
    sink, _ = sinks(level="info")
    real = "active loggers:\n" + "".join(f"  {n}: info\n" for n in REAL_LOGGER_NAMES) + "\n"
    assert render_logging_levels() == real
    sink.set_component_level("admin", "trace")
    assert "\n  admin: trace\n" in render_logging_levels()
    assert render_logging_levels({"a": "off"}) == "active loggers:\n  a: off\n\n"


def test_render_logging_error_is_envoys_text():
    body = render_logging_error("unknown logger level", {"admin": "info"})
    assert body == (  # real Envoy: POST /logging?level=bogus (400)
        "error: unknown logger level\n\n"
        "usage: /logging?<name>=<level> (change single level)\n"
        "usage: /logging?paths=name1:level1,name2:level2,... (change multiple levels)\n"
        "usage: /logging?level=<level> (change all levels)\n"
        "usage: /logging?group=<group_name>:<level> (change group of loggers)\n"
        "levels: trace debug info warning error critical off \n"
        "active loggers:\n  admin: info\n\n"
    )


def test_custom_format_and_escaping_through_configure(sinks):
    _, out = sinks(level="info", log_format="%L|%n|%v", escaped=True)
    get_logger("router").info("two\nlines")
    assert out.getvalue() == "I|router|two\\nlines\n"


def test_reconfigure_replaces_the_sink(sinks):
    _, first = sinks(level="info")
    _, second = sinks(level="info", log_format="%v")
    get_logger("main").info("hello")
    assert first.getvalue() == "" and second.getvalue() == "hello\n"


def test_close_restores_the_loggers(sinks):
    sink, _ = sinks(level="trace")
    sink.close()
    root = logging.getLogger("legatus")
    assert root.propagate and root.level == logging.NOTSET and root.handlers == []
    assert get_logger("main").level == logging.NOTSET


# --- log file -----------------------------------------------------------------


def test_log_file_appends_and_reopens(sinks, tmp_path):
    path = tmp_path / "envoy.log"
    path.write_text("preexisting\n")
    sink, _ = sinks(level="info", log_path=str(path), log_format="%n|%v")
    get_logger("main").info("before")
    assert path.read_text() == "preexisting\nmain|before\n"

    os.rename(path, tmp_path / "envoy.log.1")  # what logrotate does
    get_logger("main").info("still old")
    sink.reopen()
    get_logger("main").info("after")
    assert (tmp_path / "envoy.log.1").read_text() == "preexisting\nmain|before\nmain|still old\n"
    assert path.read_text() == "main|after\n"


def test_failed_reopen_keeps_the_old_file(sinks, tmp_path):
    directory = tmp_path / "logs"
    directory.mkdir()
    path = directory / "envoy.log"
    sink, _ = sinks(level="info", log_path=str(path), log_format="%v")
    os.rename(path, tmp_path / "moved.log")
    directory.rmdir()
    sink.reopen()
    get_logger("main").info("kept")
    text = (tmp_path / "moved.log").read_text()
    assert text.startswith(f"Failed to open log-file '{path}'")
    assert text.endswith("kept\n")


def test_unopenable_log_path_has_envoys_text(sinks, tmp_path):
    path = tmp_path / "missing" / "x.log"
    # Real Envoy: "Failed to open log-file '/nonexistent/dir/x.log'. e.what(): unable to
    # open file '/nonexistent/dir/x.log': No such file or directory"
    expected = (
        f"Failed to open log-file '{path}'. e.what(): unable to open file '{path}': "
        "No such file or directory"
    )
    with pytest.raises(OSError, match=f"^{re.escape(expected)}$"):
        sinks(level="info", log_path=str(path))


def test_reopen_without_a_file_is_a_no_op(sinks):
    sink, out = sinks(level="info", log_format="%v")
    sink.reopen()
    get_logger("main").info("x")
    assert out.getvalue() == "x\n"
