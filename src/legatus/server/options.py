"""Envoy's command line, with Envoy's names, defaults and meanings.

Every flag Envoy operators pass (Istio's pilot-agent passes a dozen) parses.
A flag whose feature legatus does not have yet is accepted and named in a
warning at start-up (``Options.unimplemented``), never silently dropped.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

from legatus import __version__

ENVOY_API_VERSION = "1.40.0"
# Five slash-separated fields like Envoy's build version (sha/version/status/type/ssl),
# so tools that split Envoy's version string keep working.
BUILD_VERSION = f"legatus-{__version__}/{ENVOY_API_VERSION}/Clean/RELEASE/OpenSSL"
DEFAULT_LOG_FORMAT = "[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v"
MODES = ("serve", "validate", "init_only")
LOG_LEVELS = ("trace", "debug", "info", "warning", "warn", "error", "critical", "off")

# Flags accepted for compatibility whose feature does not exist yet: each one
# given on the command line is named in a start-up warning.
_NOT_YET = {
    "restart_epoch": "hot restart is not implemented yet",
    "base_id": "hot restart is not implemented yet",
    "use_dynamic_base_id": "hot restart is not implemented yet",
    "base_id_path": "hot restart is not implemented yet",
    "socket_path": "hot restart is not implemented yet",
    "socket_mode": "hot restart is not implemented yet",
    "parent_shutdown_time_s": "hot restart is not implemented yet",
    "skip_hot_restart_on_no_parent": "hot restart is not implemented yet",
    "skip_hot_restart_parent_stats": "hot restart is not implemented yet",
    "local_address_ip_version": "the local address is used by the HTTP connection manager, "
    "which is not implemented yet",
    "reject_unknown_dynamic_fields": "unknown fields in xDS resources are always rejected",
    "ignore_unknown_dynamic_fields": "unknown fields in xDS resources are always rejected",
    "enable_core_dump": "core dumps are not set up by legatus",
    "enable_mutex_tracing": "legatus has no mutexes to trace",
    "enable_fine_grain_logging": "fine-grain logging is not implemented yet",
    "disable_extensions": "--disable-extensions is not implemented yet",
}


class OptionsError(Exception):
    """A bad command line; Envoy prints the error and exits 1."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    config_path: str = ""
    config_yaml: str = ""
    mode: str = "serve"
    concurrency: int = 1
    log_level: str = "info"
    component_log_level: str = ""
    log_path: str = ""
    log_format: str = DEFAULT_LOG_FORMAT
    log_format_escaped: bool = False
    service_cluster: str = ""
    service_node: str = ""
    service_zone: str = ""
    drain_time_s: int = 600
    parent_shutdown_time_s: int = 900
    drain_strategy: str = "gradual"
    restart_epoch: int = 0
    disable_hot_restart: bool = False
    base_id: int = 0
    use_dynamic_base_id: bool = False
    file_flush_interval_msec: int = 10000
    socket_path: str = "@envoy_domain_socket"
    socket_mode: str = "600"
    local_address_ip_version: str = "v4"
    admin_address_path: str = ""
    allow_unknown_static_fields: bool = False
    reject_unknown_dynamic_fields: bool = False
    ignore_unknown_dynamic_fields: bool = False
    # Flags explicitly given whose feature does not exist yet: (flag, why).
    stats_tags: tuple[tuple[str, str], ...] = ()
    unimplemented: tuple[tuple[str, str], ...] = ()
    show_help: bool = False
    show_version: bool = False
    show_hot_restart_version: bool = False

    def to_proto(self):  # -> envoy.admin.v3.CommandLineOptions
        """The ``command_line_options`` of /server_info."""
        from envoy.admin.v3 import server_info_pb2
        from google.protobuf import duration_pb2

        o = server_info_pb2.CommandLineOptions
        return o(
            base_id=self.base_id,
            use_dynamic_base_id=self.use_dynamic_base_id,
            concurrency=self.concurrency,
            config_path=self.config_path,
            config_yaml=self.config_yaml,
            allow_unknown_static_fields=self.allow_unknown_static_fields,
            reject_unknown_dynamic_fields=self.reject_unknown_dynamic_fields,
            ignore_unknown_dynamic_fields=self.ignore_unknown_dynamic_fields,
            admin_address_path=self.admin_address_path,
            local_address_ip_version=o.IpVersion.Value(self.local_address_ip_version),
            log_level=self.log_level,
            component_log_level=self.component_log_level,
            log_format=self.log_format,
            log_format_escaped=self.log_format_escaped,
            log_path=self.log_path,
            service_cluster=self.service_cluster,
            service_node=self.service_node,
            service_zone=self.service_zone,
            mode=o.Mode.Value(
                {"serve": "Serve", "validate": "Validate"}.get(self.mode, "InitOnly")
            ),
            file_flush_interval=duration_pb2.Duration(
                seconds=self.file_flush_interval_msec // 1000,
                nanos=(self.file_flush_interval_msec % 1000) * 1_000_000,
            ),
            drain_time=duration_pb2.Duration(seconds=self.drain_time_s),
            drain_strategy=o.DrainStrategy.Value(self.drain_strategy.capitalize()),
            parent_shutdown_time=duration_pb2.Duration(seconds=self.parent_shutdown_time_s),
            disable_hot_restart=self.disable_hot_restart,
            restart_epoch=self.restart_epoch,
            socket_path=self.socket_path,
            stats_tag=[f"{k}:{v}" for k, v in self.stats_tags],
        )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise OptionsError(message)


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="legatus",
        description="legatus: the Envoy proxy, written in Python. Takes Envoy's flags.",
        add_help=False,
    )
    a = p.add_argument
    a("-h", "--help", action="store_true", help="Displays usage information and exits.")
    a("--version", action="store_true", help="Displays version information and exits.")
    a("-c", "--config-path", default="", help="Path to configuration file")
    a("--config-yaml", default="", help="YAML string for a v3 bootstrap proto")
    a(
        "--mode",
        default="serve",
        choices=MODES,
        help="One of 'serve' (default; validate configs "
        "and then serve traffic normally) or 'validate' (validate configs and exit) or "
        "'init_only' (initialize and exit).",
    )
    a("--concurrency", type=_non_negative, default=None, help="# of worker processes to run")
    a("-l", "--log-level", default="info", help="Log levels: [" + "|".join(LOG_LEVELS) + "]")
    a(
        "--component-log-level",
        default="",
        help="Comma-separated list of component log levels. "
        "For example upstream:debug,config:trace",
    )
    a("--log-path", default="", help="Path to logfile")
    a("--log-format", default=DEFAULT_LOG_FORMAT, help="Log message format in spdlog syntax")
    a("--log-format-escaped", action="store_true", help="Escape c-style escape sequences in logs")
    a("--enable-fine-grain-logging", action="store_true", help="Logger mode: fine-grain")
    a("--service-cluster", default="", help="Cluster name")
    a("--service-node", default="", help="Node name")
    a("--service-zone", default="", help="Zone name")
    a(
        "--drain-time-s",
        type=_non_negative,
        default=600,
        help="Hot restart and LDS removal drain time in seconds",
    )
    a(
        "--drain-strategy",
        default="gradual",
        choices=("gradual", "immediate"),
        help="Hot restart drain sequence behaviour, one of 'gradual' (default) or 'immediate'.",
    )
    a(
        "--parent-shutdown-time-s",
        type=_non_negative,
        default=900,
        help="Hot restart parent shutdown time in seconds",
    )
    a("--restart-epoch", type=_non_negative, default=0, help="hot restart epoch #")
    a("--disable-hot-restart", action="store_true", help="Disable hot restart functionality")
    a(
        "--base-id",
        type=_non_negative,
        default=0,
        help="Base ID so that multiple envoys can run on the same host if needed",
    )
    a(
        "--use-dynamic-base-id",
        action="store_true",
        help="The server chooses a base ID dynamically.",
    )
    a("--base-id-path", default="", help="Path to which the base ID is written")
    a("--socket-path", default="@envoy_domain_socket", help="Path to hot restart socket file")
    a("--socket-mode", default="600", help="Socket file permission")
    a("--skip-hot-restart-on-no-parent", action="store_true")
    a("--skip-hot-restart-parent-stats", action="store_true")
    a("--hot-restart-version", action="store_true", help="Hot restart compatibility version")
    a(
        "--file-flush-interval-msec",
        type=_non_negative,
        default=10000,
        help="Interval for log flushing in msec",
    )
    a(
        "--local-address-ip-version",
        default="v4",
        choices=("v4", "v6"),
        help="The local IP address version (v4 or v6).",
    )
    a("--admin-address-path", default="", help="Admin address path")
    a(
        "--allow-unknown-static-fields",
        action="store_true",
        help="Allow unknown fields in static configuration",
    )
    a(
        "--reject-unknown-dynamic-fields",
        action="store_true",
        help="Reject unknown fields in dynamic configuration",
    )
    a(
        "--ignore-unknown-dynamic-fields",
        action="store_true",
        help="Ignore unknown fields in dynamic configuration",
    )
    a("--stats-tag", action="append", default=[], help="Universal stats tag name:value")
    a(
        "--cpuset-threads",
        action="store_true",
        help="Get the default # of worker threads from cpuset size",
    )
    a("--enable-core-dump", action="store_true", help="Enable core dumps")
    a("--enable-mutex-tracing", action="store_true", help="Enable mutex contention tracing")
    a("--disable-extensions", default="", help="Comma-separated list of extensions to disable")
    a("--skip-deprecated-logs", action="store_true", help="Skip deprecated-feature logs")
    return p


def parse(argv: list[str]) -> Options:
    """Parse ``argv`` (without the program name). Raises OptionsError."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    given = _given_flags(parser, argv)
    level = ns.log_level.lower()
    if level not in LOG_LEVELS:
        raise OptionsError(f"error: invalid log level specified '{ns.log_level}'")
    if ns.ignore_unknown_dynamic_fields and ns.reject_unknown_dynamic_fields:
        raise OptionsError(
            "error: --reject-unknown-dynamic-fields and --ignore-unknown-dynamic-fields are "
            "mutually exclusive"
        )
    concurrency = ns.concurrency
    if concurrency is None:
        # Envoy: the hardware threads, or with --cpuset-threads the CPUs this process may use.
        if ns.cpuset_threads and hasattr(os, "sched_getaffinity"):
            concurrency = len(os.sched_getaffinity(0))
        else:
            concurrency = os.cpu_count() or 1
    concurrency = max(concurrency, 1)
    stats_tags = []
    for tag in ns.stats_tag:
        name, sep, value = tag.partition(":")
        if not sep or not name or not value:
            raise OptionsError(f"error: misformatted stats-tag '{tag}'")
        stats_tags.append((name, value))
    unimplemented = tuple((_flag(dest), why) for dest, why in _NOT_YET.items() if dest in given)
    return Options(
        config_path=ns.config_path,
        config_yaml=ns.config_yaml,
        mode=ns.mode,
        concurrency=concurrency,
        log_level="warning" if level == "warn" else level,
        component_log_level=ns.component_log_level,
        log_path=ns.log_path,
        log_format=ns.log_format,
        log_format_escaped=ns.log_format_escaped,
        service_cluster=ns.service_cluster,
        service_node=ns.service_node,
        service_zone=ns.service_zone,
        drain_time_s=ns.drain_time_s,
        parent_shutdown_time_s=ns.parent_shutdown_time_s,
        drain_strategy=ns.drain_strategy,
        restart_epoch=ns.restart_epoch,
        disable_hot_restart=ns.disable_hot_restart,
        base_id=ns.base_id,
        use_dynamic_base_id=ns.use_dynamic_base_id,
        file_flush_interval_msec=ns.file_flush_interval_msec,
        socket_path=ns.socket_path,
        socket_mode=ns.socket_mode,
        local_address_ip_version=ns.local_address_ip_version,
        admin_address_path=ns.admin_address_path,
        allow_unknown_static_fields=ns.allow_unknown_static_fields,
        reject_unknown_dynamic_fields=ns.reject_unknown_dynamic_fields,
        ignore_unknown_dynamic_fields=ns.ignore_unknown_dynamic_fields,
        stats_tags=tuple(stats_tags),
        unimplemented=unimplemented,
        show_help=ns.help,
        show_version=ns.version,
        show_hot_restart_version=ns.hot_restart_version,
    )


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _given_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The dests of the flags that appear on the command line (not just defaults)."""
    by_option = {}
    for action in parser._actions:
        for opt in action.option_strings:
            by_option[opt] = action.dest
    given = set()
    for arg in argv:
        name = arg.split("=", 1)[0]
        if name in by_option:
            given.add(by_option[name])
    return given


def version_text() -> str:
    return f"\nlegatus  version: {BUILD_VERSION}\n\n"


def usage_text() -> str:
    return build_parser().format_help()


def main_usage_error(message: str) -> int:
    sys.stderr.write(
        f"PARSE ERROR: {message}\n\nFor complete USAGE and HELP type:\n   legatus --help\n"
    )
    return 1
