"""The HTTP/1.1 health check probe: one request per check, on a connection kept between
checks unless ``reuse_connection`` is false or the upstream asks to close.

The request is Envoy's: ``<method> <path> HTTP/1.1`` with ``host`` (the configured host, else
the cluster's name) and ``user-agent: Envoy/HC``, then ``request_headers_to_add``, minus
``request_headers_to_remove``; no body. The whole response is read; its status is checked
against ``expected_statuses`` (default: 200 only) and ``retriable_statuses``, and
``x-envoy-degraded`` marks a passing host degraded.
"""

from __future__ import annotations

import asyncio
import contextlib

import httptools

from legatus.upstream.health_checker.config import (
    USER_AGENT,
    AppendAction,
    HttpCheckConfig,
)
from legatus.upstream.health_checker.session import Outcome

_READ_SIZE = 65536


def build_request(config: HttpCheckConfig, host: str, hostname: str = "") -> bytes:
    """The check's request. Host: ``hostname`` (the endpoint's health_check_config), else the
    check's ``host``, else ``host`` (the cluster's name)."""
    headers: list[tuple[str, str]] = [
        ("host", hostname or config.host or host),
        ("user-agent", USER_AGENT),
    ]
    for h in config.headers_to_add:
        if not h.value and not h.keep_empty_value:
            continue
        present = any(name == h.name for name, _ in headers)
        if h.action is AppendAction.ADD_IF_ABSENT and present:
            continue
        if h.action in (AppendAction.OVERWRITE_IF_EXISTS_OR_ADD, AppendAction.OVERWRITE_IF_EXISTS):
            if h.action is AppendAction.OVERWRITE_IF_EXISTS and not present:
                continue
            headers = [(n, v) for n, v in headers if n != h.name]
        headers.append((h.name, h.value))
    headers = [(n, v) for n, v in headers if n not in config.headers_to_remove or n == "host"]
    lines = [f"{config.method} {config.path} HTTP/1.1"]
    lines += [f"{n}: {v}" for n, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Response:
    """httptools callbacks: the status, the headers we look at, completion."""

    __slots__ = ("close", "complete", "degraded", "parser", "status")

    def __init__(self) -> None:
        self.status = 0
        self.degraded = False
        self.close = False
        self.complete = False
        self.parser = None

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"x-envoy-degraded":
            self.degraded = True
        elif name == b"connection" and value.strip().lower() == b"close":
            self.close = True

    def on_headers_complete(self) -> None:
        parser = self.parser
        self.status = parser.get_status_code()
        if not parser.should_keep_alive():  # HTTP/1.0 without keep-alive, or close
            self.close = True

    def on_message_complete(self) -> None:
        self.complete = True


class HttpProbe:
    def __init__(
        self,
        config: HttpCheckConfig,
        *,
        address: tuple[str, int],
        cluster: str,
        reuse: bool,
        hostname: str = "",
    ) -> None:
        self._config = config
        self._address = address
        self._reuse = reuse
        self._request = build_request(config, cluster, hostname)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def check(self) -> Outcome:
        """One check. The caller bounds it with the timeout (and then calls ``close``)."""
        try:
            if self._writer is None or self._writer.is_closing() or self._reader.at_eof():
                self.close()
                self._reader, self._writer = await asyncio.open_connection(*self._address)
            self._writer.write(self._request)
            response = await self._read_response()
        except (OSError, EOFError, httptools.HttpParserError):
            self.close()
            return Outcome.NETWORK
        if response.close or not self._reuse:
            self.close()
        config = self._config
        if not config.is_expected(response.status):
            return Outcome.RETRIABLE if config.is_retriable(response.status) else Outcome.FAILED
        return Outcome.DEGRADED if response.degraded else Outcome.SUCCESS

    async def _read_response(self) -> _Response:
        response = _Response()
        parser = response.parser = httptools.HttpResponseParser(response)
        reader = self._reader
        while not response.complete:
            data = await reader.read(_READ_SIZE)
            if not data:
                raise EOFError("upstream closed before the end of the response")
            parser.feed_data(data)
        response.parser = None
        return response

    def close(self) -> None:
        writer = self._writer
        self._reader = self._writer = None
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()
