"""Envoy's access-log command operators (``%BYTES_SENT%``, ``%REQ(X?Y):N%``...).

Each operator compiles once into a ``Provider``: two functions of
``(info, request_headers, response_headers, response_trailers)``:

- ``text`` returns the operator's string, or None for "not set" (rendered ``-``, or
  nothing with ``omit_empty_values``);
- ``value`` returns the typed value used by JSON formats: ``int`` for counters, ports,
  durations and codes, ``str`` otherwise, None for "not set" (JSON ``null``).

The table and the syntax rules (which operators take a parameter, which a ``:LENGTH``)
follow Envoy's stream_info_formatter.cc and http_specific_formatter.cc; the error texts
are Envoy's. Header maps are mappings of lower-case name to value (pseudo-headers such
as ``:path`` included); a missing map (TCP) behaves as an empty one.
"""

from __future__ import annotations

import enum
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from legatus.access_log.date_formatter import DEFAULT_LOCAL, DEFAULT_UTC, NEWLINE, DateFormatter
from legatus.config.errors import ConfigError
from legatus.stream_info import response_flags_string

Getter = Callable[[Any, Any, Any, Any], Any]


@dataclass(frozen=True, slots=True)
class Provider:
    text: Getter
    value: Getter


class Syntax(enum.IntFlag):
    """Envoy's CommandSyntaxChecker flags."""

    COMMAND_ONLY = 0
    PARAMS_REQUIRED = 1
    PARAMS_OPTIONAL = 2
    LENGTH_ALLOWED = 4


# Envoy operators legatus does not implement yet: named in the error instead of Envoy's
# generic "Not supported field", so that an operator knows it is a gap, not a typo.
NOT_IMPLEMENTED = frozenset(
    {
        "REQUEST_DURATION",
        "REQUEST_TX_DURATION",
        "RESPONSE_DURATION",
        "RESPONSE_TX_DURATION",
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
        "UPSTREAM_PROTOCOL",
        "COMMON_DURATION",
        "CUSTOM_FLAGS",
        "UPSTREAM_HOST_NAME",
        "UPSTREAM_HOST_NAME_WITHOUT_PORT",
        "UPSTREAM_CLUSTER_RAW",
        "UPSTREAM_REMOTE_ADDRESS",
        "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
        "UPSTREAM_REMOTE_PORT",
        "UPSTREAM_REQUEST_ATTEMPT_COUNT",
        "UPSTREAM_TLS_CIPHER",
        "UPSTREAM_TLS_VERSION",
        "UPSTREAM_TLS_SESSION_ID",
        "UPSTREAM_PEER_ISSUER",
        "UPSTREAM_PEER_CERT",
        "UPSTREAM_PEER_SUBJECT",
        "DOWNSTREAM_DIRECT_LOCAL_ADDRESS",
        "DOWNSTREAM_DIRECT_LOCAL_ADDRESS_WITHOUT_PORT",
        "DOWNSTREAM_DIRECT_LOCAL_PORT",
        "UPSTREAM_PEER_URI_SAN",
        "UPSTREAM_PEER_DNS_SAN",
        "UPSTREAM_PEER_IP_SAN",
        "UPSTREAM_LOCAL_URI_SAN",
        "UPSTREAM_LOCAL_DNS_SAN",
        "UPSTREAM_LOCAL_IP_SAN",
        "DOWNSTREAM_PEER_URI_SAN",
        "DOWNSTREAM_PEER_DNS_SAN",
        "DOWNSTREAM_PEER_IP_SAN",
        "DOWNSTREAM_PEER_EMAIL_SAN",
        "DOWNSTREAM_PEER_OTHERNAME_SAN",
        "DOWNSTREAM_LOCAL_URI_SAN",
        "DOWNSTREAM_LOCAL_DNS_SAN",
        "DOWNSTREAM_LOCAL_IP_SAN",
        "DOWNSTREAM_LOCAL_EMAIL_SAN",
        "DOWNSTREAM_LOCAL_OTHERNAME_SAN",
        "DOWNSTREAM_PEER_SUBJECT",
        "DOWNSTREAM_LOCAL_SUBJECT",
        "DOWNSTREAM_TLS_SESSION_ID",
        "DOWNSTREAM_TLS_CIPHER",
        "DOWNSTREAM_TLS_VERSION",
        "DOWNSTREAM_PEER_FINGERPRINT_256",
        "DOWNSTREAM_PEER_FINGERPRINT_1",
        "DOWNSTREAM_PEER_SERIAL",
        "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_256",
        "DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_1",
        "DOWNSTREAM_PEER_CHAIN_SERIALS",
        "DOWNSTREAM_PEER_ISSUER",
        "DOWNSTREAM_PEER_CERT",
        "DOWNSTREAM_TRANSPORT_FAILURE_REASON",
        "DOWNSTREAM_PEER_CERT_V_START",
        "DOWNSTREAM_PEER_CERT_V_END",
        "UPSTREAM_PEER_CERT_V_START",
        "UPSTREAM_PEER_CERT_V_END",
        "FILTER_CHAIN_NAME",
        "VIRTUAL_CLUSTER_NAME",
        "TLS_JA3_FINGERPRINT",
        "TLS_JA4_FINGERPRINT",
        "STREAM_ID",
        "EMIT_TIME",
        "EMIT_TIME_LOCAL",
        "DYNAMIC_METADATA",
        "CLUSTER_METADATA",
        "UPSTREAM_METADATA",
        "FILTER_STATE",
        "UPSTREAM_FILTER_STATE",
        "UPSTREAM_CONNECTION_POOL_READY_DURATION",
        "LOCAL_REPLY_BODY",
        "ACCESS_LOG_TYPE",
        "GRPC_STATUS",
        "GRPC_STATUS_NUMBER",
        "REQUEST_HEADERS_BYTES",
        "RESPONSE_HEADERS_BYTES",
        "RESPONSE_TRAILERS_BYTES",
        "STREAM_INFO_REQ",
        "TRACE_ID",
        "QUERY_PARAM",
        "PATH",
        "COALESCE",
        "UPSTREAM_DETECTED_CLOSE_TYPE",
        "DOWNSTREAM_DETECTED_CLOSE_TYPE",
        "UPSTREAM_LOCAL_CLOSE_REASON",
        "DOWNSTREAM_LOCAL_CLOSE_REASON",
    }
)

_HEADER_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")
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


# Helpers that build providers --------------------------------------------------------


def _string(get: Callable[[Any], str | None]) -> Provider:
    def text(info, _req, _resp, _trl):
        return get(info)

    return Provider(text, text)


def _uint(get: Callable[[Any], int]) -> Provider:
    def value(info, _req, _resp, _trl):
        return get(info)

    def text(info, _req, _resp, _trl):
        return str(get(info))

    return Provider(text, value)


def _optional_uint(get: Callable[[Any], int | None]) -> Provider:
    def text(info, _req, _resp, _trl):
        v = get(info)
        return None if v is None else str(v)

    def value(info, _req, _resp, _trl):
        return get(info)

    return Provider(text, value)


def split_address(address: str) -> tuple[str, str]:
    """``1.2.3.4:80`` -> (``1.2.3.4``, ``80``); ``[::1]:80`` -> (``::1``, ``80``)."""
    if address.startswith("["):
        host, _, port = address[1:].rpartition("]:")
        return host, port
    host, sep, port = address.rpartition(":")
    return (host, port) if sep else (address, "")


def _address(attr: str, part: str) -> Provider:
    """An ``ip:port`` StreamInfo field with its ``_WITHOUT_PORT`` / ``_PORT`` variants."""
    if part == "full":
        return _string(lambda info: getattr(info, attr))
    if part == "host":
        return _string(lambda info: _host_of(getattr(info, attr)))

    def port_text(info, _req, _resp, _trl):
        address = getattr(info, attr)
        return None if address is None else split_address(address)[1]

    def port_value(info, _req, _resp, _trl):
        address = getattr(info, attr)
        port = None if address is None else split_address(address)[1]
        return int(port) if port else None

    return Provider(port_text, port_value)


def _host_of(address: str | None) -> str | None:
    return None if address is None else split_address(address)[0]


def _simple(provider: Provider) -> Callable[[str, int | None, str], Provider]:
    return lambda _sub, _max_length, _path: provider


# Operators ---------------------------------------------------------------------------


def _start_time(local: bool):
    def factory(sub: str, _max_length, path: str) -> Provider:
        if NEWLINE.search(sub):
            raise ConfigError(path, "Invalid header configuration. Format string contains newline.")
        try:
            formatter = DateFormatter(sub or (DEFAULT_LOCAL if local else DEFAULT_UTC), local=local)
        except ValueError as e:
            raise ConfigError(path, f"invalid START_TIME format '{sub}': {e}") from None

        def text(info, _req, _resp, _trl):
            return formatter.format(info.start_time)

        return Provider(text, text)

    return factory


def _duration(info) -> int | None:
    return info.duration_ms()


def _response_code_details(sub: str, _max_length, _path) -> Provider:
    if sub == "ALLOW_WHITESPACES":
        return _string(lambda info: info.response_code_details)
    return _string(
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
    return _string(lambda _info: name)


def _environment(sub: str, max_length: int | None, _path) -> Provider:
    value = os.environ.get(sub)
    value = "-" if value is None else value[:max_length]
    return _string(lambda _info: value)


def _unique_id(_sub, _max_length, _path) -> Provider:
    return _string(lambda _info: str(uuid.uuid4()))


def _valid_header_name(name: str) -> bool:
    """Envoy's HeaderUtility::headerNameIsValid on the lower-cased name."""
    if name.startswith(":"):
        return len(name) > 1 and all(c in _HEADER_TOKEN for c in name[1:])
    return all(c in _HEADER_TOKEN for c in name)


def _header(which: int):
    """REQ / RESP / TRAILER: ``(main?alternative):max_length``, first value found."""

    def factory(sub: str, max_length: int | None, path: str) -> Provider:
        names = sub.split("?")
        if len(names) > 2:
            raise ConfigError(path, "More than 1 alternative header specified in token: " + sub)
        main = names[0].lower()
        alternative = names[1].lower() if len(names) == 2 else ""
        if not _valid_header_name(main) or not _valid_header_name(alternative):
            raise ConfigError(
                path, "Invalid header configuration. Format string contains invalid characters."
            )

        def text(_info, req, resp, trl):
            headers = (req, resp, trl)[which]
            if not headers:
                return None
            value = headers.get(main)
            if value is None and alternative:
                value = headers.get(alternative)
            if value is None:
                return None
            return value if max_length is None else value[:max_length]

        return Provider(text, text)

    return factory


_TABLE: dict[str, tuple[Syntax, Callable[[str, int | None, str], Provider]]] = {
    "START_TIME": (Syntax.PARAMS_OPTIONAL, _start_time(local=False)),
    "START_TIME_LOCAL": (Syntax.PARAMS_OPTIONAL, _start_time(local=True)),
    "DURATION": (Syntax.COMMAND_ONLY, _simple(_optional_uint(_duration))),
    "BYTES_RECEIVED": (Syntax.COMMAND_ONLY, _simple(_uint(lambda i: i.bytes_received))),
    "BYTES_SENT": (Syntax.COMMAND_ONLY, _simple(_uint(lambda i: i.bytes_sent))),
    "RESPONSE_FLAGS": (
        Syntax.COMMAND_ONLY,
        _simple(_string(lambda i: response_flags_string(i.flag_order))),
    ),
    "RESPONSE_FLAGS_LONG": (
        Syntax.COMMAND_ONLY,
        _simple(_string(lambda i: response_flags_string(i.flag_order, True))),
    ),
    "RESPONSE_CODE": (Syntax.COMMAND_ONLY, _simple(_uint(lambda i: i.response_code or 0))),
    "RESPONSE_CODE_DETAILS": (Syntax.PARAMS_OPTIONAL, _response_code_details),
    "CONNECTION_TERMINATION_DETAILS": (
        Syntax.COMMAND_ONLY,
        _simple(_string(lambda i: i.connection_termination_details)),
    ),
    "PROTOCOL": (Syntax.COMMAND_ONLY, _simple(_string(lambda i: i.protocol))),
    "UPSTREAM_HOST": (Syntax.COMMAND_ONLY, _simple(_address("upstream_host", "full"))),
    "UPSTREAM_CLUSTER": (
        Syntax.COMMAND_ONLY,
        _simple(_string(lambda i: i.upstream_cluster or None)),
    ),
    "UPSTREAM_LOCAL_ADDRESS": (
        Syntax.COMMAND_ONLY,
        _simple(_address("upstream_local_address", "full")),
    ),
    "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": (
        Syntax.COMMAND_ONLY,
        _simple(_address("upstream_local_address", "host")),
    ),
    "UPSTREAM_LOCAL_PORT": (
        Syntax.COMMAND_ONLY,
        _simple(_address("upstream_local_address", "port")),
    ),
    "UPSTREAM_TRANSPORT_FAILURE_REASON": (
        Syntax.COMMAND_ONLY,
        _simple(_string(_transport_failure_reason)),
    ),
    "UPSTREAM_CONNECTION_ID": (
        Syntax.COMMAND_ONLY,
        _simple(_uint(lambda i: i.upstream_connection_id or 0)),
    ),
    "DOWNSTREAM_REMOTE_ADDRESS": (
        Syntax.COMMAND_ONLY,
        _simple(_address("downstream_remote_address", "full")),
    ),
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": (
        Syntax.COMMAND_ONLY,
        _simple(_address("downstream_remote_address", "host")),
    ),
    "DOWNSTREAM_REMOTE_PORT": (
        Syntax.COMMAND_ONLY,
        _simple(_address("downstream_remote_address", "port")),
    ),
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS": (
        Syntax.COMMAND_ONLY,
        _simple(_address("downstream_direct_remote_address", "full")),
    ),
    "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": (
        Syntax.COMMAND_ONLY,
        _simple(_address("downstream_direct_remote_address", "host")),
    ),
    "DOWNSTREAM_DIRECT_REMOTE_PORT": (
        Syntax.COMMAND_ONLY,
        _simple(_address("downstream_direct_remote_address", "port")),
    ),
    "DOWNSTREAM_LOCAL_ADDRESS": (
        Syntax.COMMAND_ONLY,
        _simple(_address("downstream_local_address", "full")),
    ),
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": (
        Syntax.COMMAND_ONLY,
        _simple(_address("downstream_local_address", "host")),
    ),
    "DOWNSTREAM_LOCAL_PORT": (
        Syntax.COMMAND_ONLY,
        _simple(_address("downstream_local_address", "port")),
    ),
    "CONNECTION_ID": (Syntax.COMMAND_ONLY, _simple(_uint(lambda i: i.connection_id or 0))),
    "REQUESTED_SERVER_NAME": (Syntax.COMMAND_ONLY, _simple(_string(_requested_server_name))),
    "ROUTE_NAME": (Syntax.COMMAND_ONLY, _simple(_string(lambda i: i.route_name or None))),
    "HOSTNAME": (Syntax.COMMAND_ONLY, _hostname),
    "ENVIRONMENT": (Syntax.PARAMS_REQUIRED | Syntax.LENGTH_ALLOWED, _environment),
    "UNIQUE_ID": (Syntax.COMMAND_ONLY, _unique_id),
    "REQ": (Syntax.PARAMS_REQUIRED | Syntax.LENGTH_ALLOWED, _header(0)),
    "RESP": (Syntax.PARAMS_REQUIRED | Syntax.LENGTH_ALLOWED, _header(1)),
    "TRAILER": (Syntax.PARAMS_REQUIRED | Syntax.LENGTH_ALLOWED, _header(2)),
}
