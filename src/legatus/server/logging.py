"""Envoy's application log: named component loggers, spdlog patterns, one sink.

Theory of operation. Every legatus module logs through a component logger,
``get_logger("upstream")``, which is the stdlib logger ``legatus.upstream``;
the component names and their order are Envoy 1.40's, so ``/logging`` and
``--component-log-level`` read the same as Envoy's. Levels live on the
component loggers themselves, so a disabled ``logger.debug(...)`` costs one
cached ``isEnabledFor`` check and nothing else: the single handler sits on the
``legatus`` logger, has no filters and no level of its own.

``EnvoyFormatter`` compiles an spdlog ``--log-format`` pattern once into a list
of small functions, each taking ``(record, message, local_time, nanos)``, the
way spdlog compiles its pattern into flag formatters. Flag semantics (padding,
truncation, unknown flags, Envoy's custom ``%_ %j %+ %* %N``) were checked
against the real Envoy 1.40 binary.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import TextIO

import legatus

TRACE = 5
OFF = logging.CRITICAL + 10
logging.addLevelName(TRACE, "TRACE")
logging.addLevelName(OFF, "OFF")

# What -l and --component-log-level accept (case-sensitive, like Envoy).
LEVELS: Mapping[str, int] = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "off": OFF,
}
# Envoy's spelling of each level; the admin /logging endpoint accepts only these.
LEVEL_NAMES = ("trace", "debug", "info", "warning", "error", "critical", "off")
_SHORT = {"trace": "T", "debug": "D", "info": "I", "warning": "W", "error": "E", "critical": "C"}

DEFAULT_FORMAT = "[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v"
ROOT_LOGGER = "legatus"

# Envoy 1.40's logger ids in registration order, as POST /logging lists them.
_ENVOY_LOGGERS = """
a2a admin ai_protocol_manager alternate_protocols_cache aws assert backtrace basic_auth
cache_filter client config connection conn_handler compression credential_injector decompression
dns dubbo envoy_bug ext_authz ext_proc rocketmq file filter forward_proxy geolocation grpc
happy_eyeballs hc health_checker http http2 hystrix init io jwt json_rpc kafka key_value_store lua
local_rate_limit main matcher mcp misc mongo multi_connection notification oauth2 quic quic_stream
pool rate_limit_quota rbac rds redis router runtime stats secret sse tap testing thrift tracing
upstream udp wasm websocket golang stats_sinks dynamic_modules ip_tagging
"""
COMPONENTS: tuple[str, ...] = tuple(_ENVOY_LOGGERS.split())
_COMPONENT_SET = frozenset(COMPONENTS)

LOGGING_USAGE = (
    "usage: /logging?<name>=<level> (change single level)\n"
    "usage: /logging?paths=name1:level1,name2:level2,... (change multiple levels)\n"
    "usage: /logging?level=<level> (change all levels)\n"
    "usage: /logging?group=<group_name>:<level> (change group of loggers)\n"
    "levels: trace debug info warning error critical off \n"
)


def parse_level(name: str, *, allow_warn: bool = True) -> int:
    """The Python level for an Envoy level name; ``ValueError`` with Envoy's CLI text.

    The CLI prints ``error: <message>`` and exits 1. ``allow_warn=False`` is the
    admin endpoint's stricter spelling (it rejects ``warn``).
    """
    level = LEVELS.get(name)
    if level is None or (name == "warn" and not allow_warn):
        raise ValueError(f"invalid log level specified '{name}'")
    return level


_FLOORS = ((OFF, "off"), (50, "critical"), (40, "error"), (30, "warning"), (20, "info"))


def level_name(levelno: int) -> str:
    """Envoy's name for a Python level; in-between levels round down (15 -> debug)."""
    for floor, name in _FLOORS:
        if levelno >= floor:
            return name
    return "debug" if levelno >= logging.DEBUG else "trace"


def get_logger(component: str) -> logging.Logger:
    """The logger of one Envoy component, ``legatus.<component>``; unknown -> ValueError."""
    if component not in _COMPONENT_SET:
        raise ValueError(f"invalid component specified '{component}'")
    return logging.getLogger(f"{ROOT_LOGGER}.{component}")


def serialize_log_tags(tags: Mapping[str, str]) -> str:
    """Envoy's tagged-log prefix, ``[Tags: "ConnectionId":"7","StreamId":"9"] ``."""
    if not tags:
        return ""
    body = ",".join(f'"{key}":"{tags[key]}"' for key in sorted(tags))
    return f"[Tags: {body}] "


# --- escaping -------------------------------------------------------------

# %j: Envoy's JsonEscaper; UTF-8 passes through, other controls become \u00xx.
_JSON_TABLE = {cp: f"\\u{cp:04x}" for cp in range(0x20)}
_JSON_TABLE.update({ord(c): "\\" + e for c, e in zip('"\\\b\f\n\r\t', '"\\bfnrt', strict=True)})


def json_escape(text: str) -> str:
    return text.translate(_JSON_TABLE)


class _CEscapeTable(dict):
    """absl::CEscape over UTF-8 bytes: named escapes, other non-printables as octal."""

    def __missing__(self, cp: int) -> str:
        try:
            data = chr(cp).encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            data = chr(cp).encode("utf-8", "surrogatepass")
        self[cp] = escaped = "".join(f"\\{b:03o}" for b in data)
        return escaped


_C_TABLE = _CEscapeTable({cp: chr(cp) for cp in range(0x20, 0x7F)})
_C_TABLE.update({cp: f"\\{cp:03o}" for cp in [*range(0x20), 0x7F]})
_C_TABLE.update({ord(c): "\\" + e for c, e in zip("\n\r\t\"'\\", "nrt\"'\\", strict=True)})


def c_escape(text: str) -> str:
    """What ``--log-format-escaped`` does to a whole formatted line (absl::CEscape)."""
    return text.translate(_C_TABLE)


# --- pattern flags ----------------------------------------------------------

Part = Callable[[logging.LogRecord, str, time.struct_time, int], str]

# English names whatever the locale, as spdlog; struct_time's week starts on Monday.
_NAMES = """Monday Tuesday Wednesday Thursday Friday Saturday Sunday
January February March April May June July August September October November December"""
_FULL_DAYS, _FULL_MONTHS = (tuple(line.split()) for line in _NAMES.splitlines())
_DAYS, _MONTHS = (tuple(name[:3] for name in names) for names in (_FULL_DAYS, _FULL_MONTHS))
_MAX_WIDTH = 64  # spdlog caps padding widths
_TAGS_PREFIX = "[Tags: "
_TAGS_END = '"] '

_SRC_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(legatus.__file__))) + os.sep


@functools.cache
def _source_path(pathname: str) -> str:
    """%g: the file relative to the package root (``legatus/server/main.py``), as
    Envoy prints ``source/server/server.cc``; files outside it print as given."""
    return pathname.removeprefix(_SRC_ROOT)


@functools.cache
def _component(name: str) -> str:
    """%n: ``legatus.upstream`` -> ``upstream``."""
    return name.removeprefix(ROOT_LOGGER + ".")


def _to12h(t: time.struct_time) -> int:
    return t.tm_hour - 12 if t.tm_hour > 12 else t.tm_hour  # spdlog: hour 0 prints 00


def _ampm(t: time.struct_time) -> str:
    return "PM" if t.tm_hour >= 12 else "AM"


def _utc_offset(t: time.struct_time) -> str:
    minutes = abs(t.tm_gmtoff) // 60
    sign = "-" if t.tm_gmtoff < 0 else "+"
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _hms(t: time.struct_time) -> str:
    return f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"


def _mdy(t: time.struct_time) -> str:
    return f"{t.tm_mon:02d}/{t.tm_mday:02d}/{t.tm_year % 100:02d}"


def _extracted_tags(m: str) -> str:
    if not m.startswith(_TAGS_PREFIX):
        return ""
    return "," + m[len(_TAGS_PREFIX) : m.find(_TAGS_END) + 1]


def _extracted_message(m: str) -> str:
    if m.startswith(_TAGS_PREFIX):
        m = m[m.find(_TAGS_END) + len(_TAGS_END) :]
    return json_escape(m)


# spdlog's flags; each may be padded (%8l, %-8l, %=8l) and truncated (%3!l).
# %t is the emitting thread's native id: legatus runs worker *processes*, each with
# its own pid, and the formatter runs synchronously in the thread that logged, so
# this prints what Envoy prints (gettid(); equal to the pid on the main thread).
_FLAGS: dict[str, Part] = {
    "v": lambda r, m, t, ns: m,
    "t": lambda r, m, t, ns: str(threading.get_native_id()),
    "P": lambda r, m, t, ns: str(r.process),
    "n": lambda r, m, t, ns: _component(r.name),
    "l": lambda r, m, t, ns: level_name(r.levelno),
    "L": lambda r, m, t, ns: _SHORT[level_name(r.levelno)],
    "a": lambda r, m, t, ns: _DAYS[t.tm_wday],
    "A": lambda r, m, t, ns: _FULL_DAYS[t.tm_wday],
    "b": lambda r, m, t, ns: _MONTHS[t.tm_mon - 1],
    "h": lambda r, m, t, ns: _MONTHS[t.tm_mon - 1],
    "B": lambda r, m, t, ns: _FULL_MONTHS[t.tm_mon - 1],
    "c": lambda r, m, t, ns: (
        f"{_DAYS[t.tm_wday]} {_MONTHS[t.tm_mon - 1]} {t.tm_mday} {_hms(t)} {t.tm_year}"
    ),
    "C": lambda r, m, t, ns: f"{t.tm_year % 100:02d}",
    "Y": lambda r, m, t, ns: str(t.tm_year),
    "D": lambda r, m, t, ns: _mdy(t),
    "x": lambda r, m, t, ns: _mdy(t),
    "m": lambda r, m, t, ns: f"{t.tm_mon:02d}",
    "d": lambda r, m, t, ns: f"{t.tm_mday:02d}",
    "H": lambda r, m, t, ns: f"{t.tm_hour:02d}",
    "I": lambda r, m, t, ns: f"{_to12h(t):02d}",
    "M": lambda r, m, t, ns: f"{t.tm_min:02d}",
    "S": lambda r, m, t, ns: f"{t.tm_sec:02d}",
    "e": lambda r, m, t, ns: f"{ns // 1_000_000:03d}",
    "f": lambda r, m, t, ns: f"{ns // 1_000:06d}",
    "F": lambda r, m, t, ns: f"{ns:09d}",
    "p": lambda r, m, t, ns: _ampm(t),
    "r": lambda r, m, t, ns: f"{_to12h(t):02d}:{t.tm_min:02d}:{t.tm_sec:02d} {_ampm(t)}",
    "R": lambda r, m, t, ns: f"{t.tm_hour:02d}:{t.tm_min:02d}",
    "T": lambda r, m, t, ns: _hms(t),
    "X": lambda r, m, t, ns: _hms(t),
    "z": lambda r, m, t, ns: _utc_offset(t),
    "E": lambda r, m, t, ns: str(int(r.created)),
    "%": lambda r, m, t, ns: "%",
    "@": lambda r, m, t, ns: f"{_source_path(r.pathname)}:{r.lineno}",
    "s": lambda r, m, t, ns: os.path.basename(r.pathname),
    "g": lambda r, m, t, ns: _source_path(r.pathname),
    "#": lambda r, m, t, ns: str(r.lineno),
    "!": lambda r, m, t, ns: r.funcName,
    "&": lambda r, m, t, ns: "",  # spdlog's MDC: legatus has none
}
# Envoy's custom flags (and spdlog's colour range markers) ignore padding.
_UNPADDED: dict[str, Part] = {
    "_": lambda r, m, t, ns: m.replace("\n", "\\n"),
    "j": lambda r, m, t, ns: json_escape(m),
    "+": lambda r, m, t, ns: _extracted_message(m),
    "*": lambda r, m, t, ns: _extracted_tags(m),
    "^": lambda r, m, t, ns: "",
    "$": lambda r, m, t, ns: "",
}
# Time since the previous message formatted by the same flag, in ns per unit.
_ELAPSED = {"o": 1_000_000, "i": 1_000, "u": 1, "O": 1_000_000_000}


def _literal(text: str) -> Part:
    return lambda r, m, t, ns: text


def _elapsed(unit_ns: int) -> Part:
    last = time.time()  # spdlog starts counting when the pattern is compiled

    def part(r: logging.LogRecord, m: str, t: time.struct_time, ns: int) -> str:
        nonlocal last
        delta = max(r.created - last, 0.0)
        last = r.created
        return str(int(delta * 1e9) // unit_ns)

    return part


def _padded(part: Part, width: int, side: str, truncate: bool) -> Part:
    def padded(r: logging.LogRecord, m: str, t: time.struct_time, ns: int) -> str:
        text = part(r, m, t, ns)
        gap = width - len(text)
        if gap > 0:
            if side == "-":
                return text + " " * gap
            if side == "=":
                return " " * (gap // 2) + text + " " * (gap - gap // 2)
            return " " * gap + text
        if gap < 0 and truncate:
            return text[:width]
        return text

    return padded


def compile_pattern(pattern: str, *, version: str = "") -> list[Part]:
    """Compile an spdlog pattern to parts, as spdlog's pattern_formatter does.

    ``%<w>`` right-aligns, ``%-<w>`` left-aligns, ``%=<w>`` centres (w <= 64) and a
    trailing ``!`` truncates; an unknown flag prints as itself (``%y``), except
    after ``!`` where the ``!`` was the function-name flag; a lone trailing ``%``
    is dropped. ``%N`` prints ``version`` (Envoy prints its build version).
    """
    unpadded = {**_UNPADDED, "N": _literal(version)}
    parts: list[Part] = []
    text: list[str] = []
    i, end = 0, len(pattern)

    def add(part: Part) -> None:
        if text:
            parts.append(_literal("".join(text)))
            text.clear()
        parts.append(part)

    while i < end:
        ch = pattern[i]
        i += 1
        if ch != "%":
            text.append(ch)
            continue
        if i == end:
            break
        side, width, truncate, padding = "", 0, False, False
        if pattern[i] in "-=":
            side = pattern[i]
            i += 1
        if i < end and pattern[i].isdigit():
            start = i
            while i < end and pattern[i].isdigit():
                i += 1
            width, padding = min(int(pattern[start:i]), _MAX_WIDTH), True
            if i < end and pattern[i] == "!":
                truncate = True
                i += 1
        if i == end:
            break
        flag = pattern[i]
        i += 1
        if flag in unpadded:
            add(unpadded[flag])
        elif flag in _FLAGS or flag in _ELAPSED:
            part = _FLAGS[flag] if flag in _FLAGS else _elapsed(_ELAPSED[flag])
            add(_padded(part, width, side, truncate) if padding else part)
        elif truncate:  # "%20!|": the '!' was the function name, padded
            add(_padded(_FLAGS["!"], width, side, False))
            text.append(flag)
        else:
            text.append("%" + flag)
    if text:
        parts.append(_literal("".join(text)))
    return parts


class EnvoyFormatter(logging.Formatter):
    """Renders records with an Envoy ``--log-format`` pattern, compiled once.

    Timestamps are local time, as Envoy prints them. The message (``%v``) is
    ``record.getMessage()`` with any traceback appended after a newline.
    ``escaped`` is ``--log-format-escaped``: like Envoy, it C-escapes the whole
    formatted line, not only the message.
    """

    def __init__(
        self, pattern: str = DEFAULT_FORMAT, *, escaped: bool = False, version: str = ""
    ) -> None:
        super().__init__()
        self.pattern = pattern
        self.escaped = escaped
        self._parts = compile_pattern(pattern, version=version or legatus.__version__)
        self._clock: tuple[int, time.struct_time] = (-1, time.localtime(0))

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            message = f"{message}\n{record.exc_text}"
        if record.stack_info:
            message = f"{message}\n{self.formatStack(record.stack_info)}"
        created = record.created
        seconds = int(created)
        clock = self._clock
        if clock[0] != seconds:
            self._clock = clock = (seconds, time.localtime(seconds))
        nanos = int((created - seconds) * 1e9)
        line = "".join([part(record, message, clock[1], nanos) for part in self._parts])
        return c_escape(line) if self.escaped else line


# --- the sink ---------------------------------------------------------------


class _SinkHandler(logging.StreamHandler):
    """Writes each formatted line and flushes; no filters, no level of its own."""

    def __init__(self, stream: TextIO, *, owns_stream: bool) -> None:
        super().__init__(stream)
        self.owns_stream = owns_stream

    def close(self) -> None:
        with self.lock:
            if self.owns_stream and not self.stream.closed:
                self.stream.close()
        super().close()


def _open_log_file(path: str) -> TextIO:
    try:
        return open(path, "a", encoding="utf-8", errors="backslashreplace")
    except OSError as exc:
        raise OSError(
            f"Failed to open log-file '{path}'. e.what(): unable to open file '{path}': "
            f"{exc.strerror}"
        ) from exc


def _logger_level(logger: logging.Logger) -> str:
    return level_name(logger.level or logger.getEffectiveLevel())


def levels() -> dict[str, str]:
    """Each component's level as Envoy names it, in Envoy's order."""
    return {c: _logger_level(logging.getLogger(f"{ROOT_LOGGER}.{c}")) for c in COMPONENTS}


def render_logging_levels(current: Mapping[str, str] | None = None) -> str:
    """The body of a successful ``POST /logging``, byte for byte as Envoy 1.40."""
    current = levels() if current is None else current
    lines = "".join(f"  {name}: {level}\n" for name, level in current.items())
    return f"active loggers:\n{lines}\n"


def render_logging_error(error: str, current: Mapping[str, str] | None = None) -> str:
    """The body of a 400 from ``/logging``: ``error: unknown logger level``, usage, levels."""
    return f"error: {error}\n\n{LOGGING_USAGE}{render_logging_levels(current)}"


def parse_component_levels(spec: str) -> list[tuple[str, int]]:
    """``--component-log-level upstream:debug,config:trace``; ValueError with Envoy's text."""
    result = []
    for item in spec.split(",") if spec else ():
        fields = item.split(":")
        if len(fields) != 2:
            raise ValueError(f"component log level not correctly specified '{item}'")
        name, level = fields
        levelno = parse_level(level)  # Envoy checks the level before the name
        if name not in _COMPONENT_SET:
            raise ValueError(f"invalid component specified '{name}'")
        result.append((name, levelno))
    return result


class LogSink:
    """Where the application log goes (stderr or ``--log-path``), and its levels.

    ``reopen`` is a plain synchronous method for SIGUSR1 (via
    ``loop.add_signal_handler``) and ``POST /reopen_logs``: it opens the path
    anew, swaps the stream under the handler's lock and closes the old one.
    """

    def __init__(self, handler: _SinkHandler, path: str | None) -> None:
        self._handler = handler
        self.path = path

    def reopen(self) -> None:
        if self.path is None:
            return
        try:
            stream = _open_log_file(self.path)
        except OSError as exc:  # keep writing to the old file rather than lose lines
            get_logger("main").error("%s", exc)
            return
        old = self._handler.setStream(stream)
        if old is not None:
            old.close()

    def set_level(self, level: str | int) -> None:
        """``POST /logging?level=``: every component, logged first as Envoy does."""
        levelno = parse_level(level) if isinstance(level, str) else level
        get_logger("misc").info("change all log levels: level='%s'", level_name(levelno))
        _set_all_levels(levelno)

    def set_component_level(self, name: str, level: str | int) -> None:
        levelno = parse_level(level) if isinstance(level, str) else level
        get_logger(name).setLevel(levelno)

    def levels(self) -> dict[str, str]:
        return levels()

    def close(self) -> None:
        """Detach the sink and return the legatus loggers to their unconfigured state."""
        root = logging.getLogger(ROOT_LOGGER)
        root.removeHandler(self._handler)
        self._handler.close()
        if not any(isinstance(h, _SinkHandler) for h in root.handlers):
            root.propagate = True
            _set_all_levels(logging.NOTSET)


def _set_all_levels(levelno: int) -> None:
    logging.getLogger(ROOT_LOGGER).setLevel(levelno)
    for component in COMPONENTS:
        logging.getLogger(f"{ROOT_LOGGER}.{component}").setLevel(levelno)


def configure_logging(
    *,
    level: str,
    component_levels: str = "",
    log_path: str | None = None,
    log_format: str = DEFAULT_FORMAT,
    escaped: bool = False,
    stream: TextIO | None = None,
) -> LogSink:
    """Set up the ``legatus`` loggers from ``-l``, ``--component-log-level``,
    ``--log-path``, ``--log-format`` and ``--log-format-escaped``.

    Raises ValueError with Envoy's text for a bad level or component, and
    OSError with Envoy's text if ``log_path`` can't be opened (appended to).
    ``stream`` (default: ``sys.stderr``) is used when there is no ``log_path``.
    A second call replaces the previous sink.
    """
    levelno = parse_level(level)
    overrides = parse_component_levels(component_levels)
    formatter = EnvoyFormatter(log_format, escaped=escaped)
    target = _open_log_file(log_path) if log_path is not None else (stream or sys.stderr)

    handler = _SinkHandler(target, owns_stream=log_path is not None)
    handler.setFormatter(formatter)
    root = logging.getLogger(ROOT_LOGGER)
    for old in [h for h in root.handlers if isinstance(h, _SinkHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.propagate = False  # the sink is the one place legatus's log goes
    _set_all_levels(levelno)
    for name, component_level in overrides:
        get_logger(name).setLevel(component_level)
    return LogSink(handler, log_path)
