"""The admin listener's access logs: ``Admin.access_log`` and the deprecated ``access_log_path``.

Envoy serves admin requests through an HTTP connection manager of its own and logs each one
like any other stream, so the same loggers, filters and format operators apply here. What that
connection manager does to the request shows in the entries, and is reproduced here:

- ``use_remote_address`` is on: ``x-forwarded-for`` gets the peer's address appended, or the
  node's own address for a loopback peer (Envoy's rule, ``conn_manager_utility``);
- no ``x-request-id`` is generated, and there is no upstream (``%UPSTREAM_HOST%`` is ``-``);
- ``%BYTES_RECEIVED%`` / ``%BYTES_SENT%`` count body bytes, ``%PROTOCOL%`` is HTTP/1.1;
- a request the codec refuses (unparseable, HTTP/1.0, too large) is logged with the
  ``DPE`` flag and no request headers, as Envoy logs its codec errors.

``access_log_path`` becomes a file logger in Envoy's default format, placed before the
``access_log`` entries, as Envoy builds them.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2

from legatus.access_log.access_log import AccessLog, create_access_logs
from legatus.access_log.log_type import DOWNSTREAM_END
from legatus.http.conn_manager_utility import node_local_address
from legatus.http.headers import HeaderMap
from legatus.network.address import is_loopback
from legatus.stream_info import ResponseFlag, StreamInfo


def compile_admin_access_logs(admin, context) -> tuple[AccessLog, ...]:
    """The admin listener's loggers (validate mode: only checked, no file opened)."""
    logs: tuple[AccessLog, ...] = ()
    if admin.access_log_path:
        proto = accesslog_pb2.AccessLog(name="envoy.access_loggers.file")
        proto.typed_config.Pack(file_pb2.FileAccessLog(path=admin.access_log_path))
        # The synthetic entry's errors name the field the operator wrote.
        logs += _compile_path_log(proto, context)
    if admin.access_log:
        logs += create_access_logs(
            admin.access_log, context, "admin.access_log", log_type=DOWNSTREAM_END
        )
    return logs


def _compile_path_log(proto, context) -> tuple[AccessLog, ...]:
    from legatus.config.errors import ConfigError

    try:
        return create_access_logs(
            [proto], context, "admin.access_log_path", log_type=DOWNSTREAM_END
        )
    except ConfigError as e:  # "admin.access_log_path[0].typed_config.path: ..." -> the field
        raise ConfigError("admin.access_log_path", e.message) from None


class AdminAccessLogger:
    """Writes one entry per admin request (see module doc)."""

    __slots__ = ("_local_address", "_logs")

    def __init__(self, logs: tuple[AccessLog, ...], local_address_version: str = "v4") -> None:
        self._logs = logs
        self._local_address = node_local_address(local_address_version)

    def log_request(
        self,
        *,
        started: float,
        started_monotonic: float,
        ended_monotonic: float,
        peer: tuple[Any, ...] | None,
        local: tuple[Any, ...] | None,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        request_body_bytes: int,
        status: int,
        response_body_bytes: int,
        forwarded: bool = True,
    ) -> None:
        """One answered request; ``forwarded``: the connection manager's header policy ran
        (x-forwarded-for), as for every request but one refused for its missing host."""
        info = self._info(started, started_monotonic, ended_monotonic, peer, local)
        request = HeaderMap()
        request.add(":method", method)
        request.add(":path", target)
        request.add(":scheme", "http")
        for name, value in headers:
            if name == "host":
                request.add(":authority", value)
            else:
                request.add(name, value)
        peer_ip = _ip(peer) if forwarded else None
        if peer_ip is not None:
            appended = self._local_address if _is_loopback(peer_ip) else peer_ip
            xff = request.get("x-forwarded-for")
            request.set("x-forwarded-for", f"{xff},{appended}" if xff else appended)
        info.bytes_received = request_body_bytes
        info.bytes_sent = response_body_bytes
        info.response_code = status
        info.response_code_details = "admin_filter_response"
        self._write(info, request, _response_headers(status))

    def log_refusal(
        self,
        *,
        started: float,
        started_monotonic: float,
        ended_monotonic: float,
        peer: tuple[Any, ...] | None,
        local: tuple[Any, ...] | None,
        status: int,
        response_body_bytes: int,
    ) -> None:
        info = self._info(started, started_monotonic, ended_monotonic, peer, local)
        info.set_flag(ResponseFlag.DOWNSTREAM_PROTOCOL_ERROR)
        info.bytes_sent = response_body_bytes
        info.response_code = status
        info.response_code_details = "codec_error"
        self._write(info, None, _response_headers(status))

    @staticmethod
    def _info(started, started_monotonic, ended_monotonic, peer, local) -> StreamInfo:
        info = StreamInfo(now_monotonic=started_monotonic, now_wall=started)
        info.end_monotonic = ended_monotonic
        info.protocol = "HTTP/1.1"
        info.downstream_remote_address = info.downstream_direct_remote_address = _text(peer)
        info.downstream_local_address = _text(local)
        return info

    def _write(self, info, request, response) -> None:
        for access_log in self._logs:
            access_log.log(info, request, response, None)


def _response_headers(status: int) -> HeaderMap:
    headers = HeaderMap()
    headers.add(":status", str(status))
    return headers


def _ip(address: tuple[Any, ...] | None) -> str | None:
    if not address or not isinstance(address, tuple):
        return None
    return str(address[0])


def _is_loopback(ip: str) -> bool:
    try:
        return is_loopback(ipaddress.ip_address(ip))
    except ValueError:
        return False


def _text(address: tuple[Any, ...] | None) -> str | None:
    if not address or not isinstance(address, tuple):
        return None
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
