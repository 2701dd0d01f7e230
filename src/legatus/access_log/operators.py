"""Envoy's access-log command operators (``%BYTES_SENT%``, ``%REQ(X?Y):N%``...).

``build`` turns one parsed ``%COMMAND(SUB):LENGTH%`` into a ``Provider`` (providers.py),
after Envoy's syntax checks (which operators take a parameter, which a ``:LENGTH``). The
stream-info operators are here (Envoy's stream_info_formatter.cc), the HTTP ones in
http_operators.py and ``DYNAMIC_METADATA`` in metadata.py; the error texts are Envoy's.

Durations are milliseconds from the stream's start (``%DURATION%`` to its end) to the
HTTP timing recorded on the stream info: ``%REQUEST_DURATION%`` the last request byte
received, ``%REQUEST_TX_DURATION%`` the last byte sent upstream, ``%RESPONSE_DURATION%``
the first upstream response byte; ``%RESPONSE_TX_DURATION%`` runs from that first upstream
byte to the last byte sent downstream. Each is unset (``-``) until its timing happened.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid

from legatus.access_log import log_type
from legatus.access_log.date_formatter import DEFAULT_LOCAL, DEFAULT_UTC, NEWLINE, DateFormatter
from legatus.access_log.http_operators import HTTP_OPERATORS
from legatus.access_log.metadata import METADATA_OPERATORS
from legatus.access_log.providers import (
    Factory,
    Provider,
    Syntax,
    address,
    milliseconds,
    optional_uint,
    simple,
    string,
    uint,
)
from legatus.access_log.tls_operators import TLS_OPERATORS
from legatus.config.errors import ConfigError
from legatus.stream_info import response_flags_string

# Envoy operators legatus does not implement yet: named in the error instead of Envoy's
# generic "Not supported field", so that an operator knows it is a gap, not a typo.
NOT_IMPLEMENTED = frozenset(
    {
        "DOWNSTREAM_HANDSHAKE_DURATION",
        "ROUNDTRIP_DURATION",
        "BYTES_RETRANSMITTED",
        "PACKETS_RETRANSMITTED",
        "UPSTREAM_WIRE_BYTES_RECEIVED",
        "UPSTREAM_HEADER_BYTES_RECEIVED",
        "DOWNSTREAM_WIRE_BYTES_RECEIVED",
        "DOWNSTREAM_HEADER_BYTES_RECEIVED",
        "UPSTREAM_WIRE_BYTES_SENT",
        "UPSTREAM_HEADER_BYTES_SENT",
        "DOWNSTREAM_WIRE_BYTES_SENT",
        "DOWNSTREAM_HEADER_BYTES_SENT",
        "COMMON_DURATION",
        "CUSTOM_FLAGS",
        "UPSTREAM_HOST_NAME",
        "UPSTREAM_HOST_NAME_WITHOUT_PORT",
        "DOWNSTREAM_DIRECT_LOCAL_ADDRESS",
        "DOWNSTREAM_DIRECT_LOCAL_ADDRESS_WITHOUT_PORT",
        "DOWNSTREAM_DIRECT_LOCAL_PORT",
        "DOWNSTREAM_PEER_OTHERNAME_SAN",
        "DOWNSTREAM_LOCAL_OTHERNAME_SAN",
        "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_256",
        "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_1",
        "DOWNSTREAM_PEER_CHAIN_SERIALS",
        "FILTER_CHAIN_NAME",
        "TLS_JA3_FINGERPRINT",
        "TLS_JA4_FINGERPRINT",
        "FILTER_STATE",
        "UPSTREAM_FILTER_STATE",
        "UPSTREAM_CONNECTION_POOL_READY_DURATION",
        "STREAM_INFO_REQ",
        "TRACE_ID",
        "UPSTREAM_DETECTED_CLOSE_TYPE",
        "DOWNSTREAM_DETECTED_CLOSE_TYPE",
        "UPSTREAM_LOCAL_CLOSE_REASON",
        "DOWNSTREAM_LOCAL_CLOSE_REASON",
    }
)

_WHITESPACE = str.maketrans({c: "_" for c in " \t\f\v\n\r"})
_HOSTNAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")


def build(command: str, sub: str, max_length: int | None, path: str) -> Provider:
    """The Provider for one parsed ``%COMMAND(sub):max_length%``."""
    entry = _TABLE.get(command)
    if entry is None:
        if command in NOT_IMPLEMENTED:
            raise ConfigError(
                path, f"Envoy's %{command}% command operator is not implemented by legatus yet"
            )
        raise ConfigError(path, f"Not supported field in StreamInfo: {command}")
    syntax, factory = entry
    if syntax == Syntax.COMMAND_ONLY and (sub or max_length is not None):
        raise ConfigError(path, f"{command} does not take any parameters or length")
    if syntax & Syntax.PARAMS_REQUIRED and not sub:
        raise ConfigError(path, f"{command} requires parameters")
    if not syntax & Syntax.LENGTH_ALLOWED and max_length is not None:
        raise ConfigError(path, f"{command} does not allow length to be specified.")
    return factory(sub, max_length, path)


# Times ---------------------------------------------------------------------------------


def _system_time(local: bool, emit: bool):
    """START_TIME(_LOCAL): the stream's start; EMIT_TIME(_LOCAL): when the line is written."""

    def factory(sub: str, _max_length, path: str) -> Provider:
        if NEWLINE.search(sub):
            raise ConfigError(path, "Invalid header configuration. Format string contains newline.")
        try:
            formatter = DateFormatter(sub or (DEFAULT_LOCAL if local else DEFAULT_UTC), local=local)
        except ValueError as e:
            raise ConfigError(path, f"invalid START_TIME format '{sub}': {e}") from None
        render = formatter.format
        if emit:

            def text(_info, _req, _resp, _trl):
                return render(time.time())

            return Provider(text, text, ("{0}({1}())", (render, time.time)))

        def start(info, _req, _resp, _trl):
            return render(info.start_time)

        return Provider(start, start, ("{0}(info.start_time)", (render,)))

    return factory


def _span(start_attr: str, end_attr: str):
    def get(info) -> int | None:
        start, end = getattr(info, start_attr), getattr(info, end_attr)
        return None if start is None or end is None else milliseconds(start, end)

    return simple(optional_uint(get))


# Stream-info strings --------------------------------------------------------------------


def _response_code_details(sub: str, _max_length, _path) -> Provider:
    if sub == "ALLOW_WHITESPACES":
        return string(lambda info: info.response_code_details)
    return string(
        lambda info: (
            None
            if info.response_code_details is None
            else info.response_code_details.translate(_WHITESPACE)
        )
    )


def _transport_failure_reason(info) -> str | None:
    reason = info.upstream_transport_failure_reason
    return reason.replace(" ", "_") if reason else None


def _requested_server_name(info) -> str | None:
    sni = info.requested_server_name
    if not sni:
        return None
    if all(c in _HOSTNAME_OK for c in sni):
        return sni
    return "invalid:" + "".join(c if c in _HOSTNAME_OK else "_" for c in sni)


def _hostname(_sub, _max_length, _path) -> Provider:
    name = socket.gethostname() or None
    return string(lambda _info: name)


def _environment(sub: str, max_length: int | None, _path) -> Provider:
    value = os.environ.get(sub)
    value = "-" if value is None else value[:max_length]
    return string(lambda _info: value)


def _unique_id(_sub, _max_length, _path) -> Provider:
    return string(lambda _info: str(uuid.uuid4()))


def _duration(info) -> int | None:
    end = info.end_monotonic
    return None if end is None else milliseconds(info.start_monotonic, end)


def _response_flags(info, _req, _resp, _trl):
    return response_flags_string(info.flag_order)


def _duration_text(info, _req, _resp, _trl):
    end = info.end_monotonic
    return None if end is None else str(milliseconds(info.start_monotonic, end))


# COALESCE ---------------------------------------------------------------------------------


def _coalesce(sub: str, max_length: int | None, path: str) -> Provider:
    """``%COALESCE({"operators": [...]}):Z%``: the first operator with a non-empty value.

    Each entry is a command name or ``{"command", "param", "max_length"}``; text skips
    unset and empty strings, JSON skips nulls and empty strings (Envoy's CoalesceFormatter).
    """
    try:
        config = json.loads(sub)
    except ValueError as e:
        raise ConfigError(
            path, f"COALESCE: failed to parse JSON configuration: JSON supplied is not valid. {e}"
        ) from None
    if not isinstance(config, dict) or "operators" not in config:
        raise ConfigError(path, "COALESCE: JSON configuration must contain 'operators' array")
    entries = config["operators"]
    if not isinstance(entries, list):
        raise ConfigError(path, "COALESCE: 'operators' must be an array")
    if not entries:
        raise ConfigError(path, "COALESCE: 'operators' array must not be empty")
    providers = []
    for i, entry in enumerate(entries):
        try:
            providers.append(_coalesce_entry(entry, path))
        except ConfigError as e:
            raise ConfigError(
                path, f"COALESCE: failed to parse operator at index {i}: {e.message}"
            ) from None
    texts = tuple(p.text for p in providers)
    values = tuple(p.value for p in providers)

    def text(info, req, resp, trl):
        for get in texts:
            value = get(info, req, resp, trl)
            if value:
                return value if max_length is None else value[:max_length]
        return None

    def value(info, req, resp, trl):
        for get in values:
            typed = get(info, req, resp, trl)
            if typed is None or typed == "":
                continue
            if typed.__class__ is str and max_length is not None:
                return typed[:max_length]
            return typed
        return None

    return Provider(text, value)


def _coalesce_entry(entry, path: str) -> Provider:
    if isinstance(entry, str):
        command, param, entry_max = entry, "", None
    elif isinstance(entry, dict):
        command = entry.get("command")
        if not isinstance(command, str):
            raise ConfigError(path, "operator object must have 'command' field")
        param = entry.get("param", "")
        if not isinstance(param, str):
            raise ConfigError(path, "'param' field must be a string")
        entry_max = entry.get("max_length")
        if entry_max is not None:
            if not isinstance(entry_max, int) or isinstance(entry_max, bool):
                raise ConfigError(path, "'max_length' field must be an integer")
            if entry_max <= 0:
                raise ConfigError(path, "'max_length' must be a positive integer")
    else:
        raise ConfigError(
            path,
            "operator entry must be either a string (command name) or an object with "
            "'command' field",
        )
    if command not in _TABLE or command == "COALESCE":
        raise ConfigError(path, f"unknown command: '{command}'")
    return build(command, param, entry_max, path)


_TABLE: dict[str, tuple[Syntax, Factory]] = {
    "START_TIME": (Syntax.PARAMS_OPTIONAL, _system_time(local=False, emit=False)),
    "START_TIME_LOCAL": (Syntax.PARAMS_OPTIONAL, _system_time(local=True, emit=False)),
    "EMIT_TIME": (Syntax.PARAMS_OPTIONAL, _system_time(local=False, emit=True)),
    "EMIT_TIME_LOCAL": (Syntax.PARAMS_OPTIONAL, _system_time(local=True, emit=True)),
    "DURATION": (
        Syntax.COMMAND_ONLY,
        simple(Provider(_duration_text, optional_uint(_duration).value)),
    ),
    "REQUEST_DURATION": (
        Syntax.COMMAND_ONLY,
        _span("start_monotonic", "last_downstream_rx_byte_received"),
    ),
    "REQUEST_TX_DURATION": (
        Syntax.COMMAND_ONLY,
        _span("start_monotonic", "last_upstream_tx_byte_sent"),
    ),
    "RESPONSE_DURATION": (
        Syntax.COMMAND_ONLY,
        _span("start_monotonic", "first_upstream_rx_byte_received"),
    ),
    "RESPONSE_TX_DURATION": (
        Syntax.COMMAND_ONLY,
        _span("first_upstream_rx_byte_received", "last_downstream_tx_byte_sent"),
    ),
    "BYTES_RECEIVED": (
        Syntax.COMMAND_ONLY,
        simple(uint(lambda i: i.bytes_received, "info.bytes_received")),
    ),
    "BYTES_SENT": (Syntax.COMMAND_ONLY, simple(uint(lambda i: i.bytes_sent, "info.bytes_sent"))),
    "RESPONSE_FLAGS": (
        Syntax.COMMAND_ONLY,
        simple(
            Provider(
                _response_flags,
                _response_flags,
                ("{0}(info.flag_order)", (response_flags_string,)),
                never_none=True,
            )
        ),
    ),
    "RESPONSE_FLAGS_LONG": (
        Syntax.COMMAND_ONLY,
        simple(string(lambda i: response_flags_string(i.flag_order, True))),
    ),
    "RESPONSE_CODE": (
        Syntax.COMMAND_ONLY,
        simple(uint(lambda i: i.response_code or 0, "(info.response_code or 0)")),
    ),
    "RESPONSE_CODE_DETAILS": (Syntax.PARAMS_OPTIONAL, _response_code_details),
    "CONNECTION_TERMINATION_DETAILS": (
        Syntax.COMMAND_ONLY,
        simple(string(lambda i: i.connection_termination_details)),
    ),
    "PROTOCOL": (Syntax.COMMAND_ONLY, simple(string(lambda i: i.protocol, "info.protocol"))),
    "UPSTREAM_PROTOCOL": (Syntax.COMMAND_ONLY, simple(string(lambda i: i.upstream_protocol))),
    "UPSTREAM_HOST": (Syntax.COMMAND_ONLY, simple(address("upstream_host", "full"))),
    # Envoy's UPSTREAM_CLUSTER is the cluster's alt_stat_name when it has one; the stream
    # info records the cluster's name, which is what UPSTREAM_CLUSTER_RAW shows.
    "UPSTREAM_CLUSTER": (Syntax.COMMAND_ONLY, simple(string(lambda i: i.upstream_cluster or None))),
    "UPSTREAM_CLUSTER_RAW": (
        Syntax.COMMAND_ONLY,
        simple(string(lambda i: i.upstream_cluster or None)),
    ),
    # The upstream connection's remote address is the host's address (no proxy between).
    "UPSTREAM_REMOTE_ADDRESS": (Syntax.COMMAND_ONLY, simple(address("upstream_host", "full"))),
    "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": (
        Syntax.COMMAND_ONLY,
        simple(address("upstream_host", "host")),
    ),
    "UPSTREAM_REMOTE_PORT": (Syntax.COMMAND_ONLY, simple(address("upstream_host", "port"))),
    "UPSTREAM_REQUEST_ATTEMPT_COUNT": (
        Syntax.COMMAND_ONLY,
        simple(uint(lambda i: i.upstream_request_attempt_count or 0)),
    ),
    "UPSTREAM_LOCAL_ADDRESS": (
        Syntax.COMMAND_ONLY,
        simple(address("upstream_local_address", "full")),
    ),
    "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": (
        Syntax.COMMAND_ONLY,
        simple(address("upstream_local_address", "host")),
    ),
    "UPSTREAM_LOCAL_PORT": (
        Syntax.COMMAND_ONLY,
        simple(address("upstream_local_address", "port")),
    ),
    "UPSTREAM_TRANSPORT_FAILURE_REASON": (
        Syntax.COMMAND_ONLY,
        simple(string(_transport_failure_reason)),
    ),
    "UPSTREAM_CONNECTION_ID": (
        Syntax.COMMAND_ONLY,
        simple(uint(lambda i: i.upstream_connection_id or 0)),
    ),
    "DOWNSTREAM_REMOTE_ADDRESS": (
        Syntax.COMMAND_ONLY,
        simple(address("downstream_remote_address", "full")),
    ),
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": (
        Syntax.COMMAND_ONLY,
        simple(address("downstream_remote_address", "host")),
    ),
    "DOWNSTREAM_REMOTE_PORT": (
        Syntax.COMMAND_ONLY,
        simple(address("downstream_remote_address", "port")),
    ),
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": (
        Syntax.COMMAND_ONLY,
        simple(address("downstream_direct_remote_address", "full")),
    ),
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": (
        Syntax.COMMAND_ONLY,
        simple(address("downstream_direct_remote_address", "host")),
    ),
    "DOWNSTREAM_DIRECT_REMOTE_PORT": (
        Syntax.COMMAND_ONLY,
        simple(address("downstream_direct_remote_address", "port")),
    ),
    "DOWNSTREAM_LOCAL_ADDRESS": (
        Syntax.COMMAND_ONLY,
        simple(address("downstream_local_address", "full")),
    ),
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": (
        Syntax.COMMAND_ONLY,
        simple(address("downstream_local_address", "host")),
    ),
    "DOWNSTREAM_LOCAL_PORT": (
        Syntax.COMMAND_ONLY,
        simple(address("downstream_local_address", "port")),
    ),
    "CONNECTION_ID": (Syntax.COMMAND_ONLY, simple(uint(lambda i: i.connection_id or 0))),
    "REQUESTED_SERVER_NAME": (Syntax.COMMAND_ONLY, simple(string(_requested_server_name))),
    "ROUTE_NAME": (Syntax.COMMAND_ONLY, simple(string(lambda i: i.route_name or None))),
    "VIRTUAL_CLUSTER_NAME": (
        Syntax.COMMAND_ONLY,
        simple(string(lambda i: i.virtual_cluster_name or None)),
    ),
    "HOSTNAME": (Syntax.COMMAND_ONLY, _hostname),
    "ENVIRONMENT": (Syntax.PARAMS_REQUIRED | Syntax.LENGTH_ALLOWED, _environment),
    "UNIQUE_ID": (Syntax.COMMAND_ONLY, _unique_id),
    "COALESCE": (Syntax.PARAMS_REQUIRED | Syntax.LENGTH_ALLOWED, _coalesce),
    # Why the entry is written (log_type.py); NotSet outside an access log.
    "ACCESS_LOG_TYPE": (Syntax.COMMAND_ONLY, simple(string(log_type.current))),
    **HTTP_OPERATORS,
    **METADATA_OPERATORS,
    **TLS_OPERATORS,
}
