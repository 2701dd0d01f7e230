"""One HTTP/1.1 exchange at a time with a REST control plane, on the project's ClientCodec.

A REST subscription needs little of an HTTP client: POST a small JSON body, read the whole
response, one request at a time, every second or so. The sans-I/O ``ClientCodec`` (the
upstream codec of the data plane) does the HTTP/1.1 framing; this module only moves its bytes
over an asyncio stream. The connection is kept while the codec says it is reusable and is
dropped on any error or cancellation (the caller's request timeout cancels), so the next
request connects afresh, asking ``host_port_factory`` where to.

Envoy sends these requests through the cluster's async client and connection pool; legatus's
integrator decides how the cluster is reached and hands the subscription an async callable
that returns ``(host, port)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from legatus.http.headers import HeaderMap
from legatus.http.http1 import (
    ClientCodec,
    InformationalHeaders,
    ProtocolError,
    ResponseData,
    ResponseHeaders,
    ResponseTrailers,
)

__all__ = ["HostPortFactory", "HttpResponse", "RestClient"]

HostPortFactory = Callable[[], Awaitable[tuple[str, int]]]
_READ_SIZE = 65536


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes


class RestClient:
    """Sequential POSTs over one kept-alive HTTP/1.1 connection (see module doc)."""

    __slots__ = ("_codec", "_host_port_factory", "_reader", "_writer")

    def __init__(self, host_port_factory: HostPortFactory) -> None:
        self._host_port_factory = host_port_factory
        self._codec: ClientCodec | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(self, headers: HeaderMap, body: bytes) -> HttpResponse:
        """Send one request and read its whole response.

        Raises ``OSError`` (``ConnectionError``) when the connection fails or breaks, or the
        response is not HTTP/1; cancellation (a timeout) drops the connection.
        """
        try:
            if self._codec is None or not self._codec.reusable:
                await self._connect()
            return await self._exchange(headers, body)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._codec = self._reader = self._writer = None

    async def _connect(self) -> None:
        self.close()
        host, port = await self._host_port_factory()
        self._reader, self._writer = await asyncio.open_connection(host, port)
        self._codec = ClientCodec()

    async def _exchange(self, headers: HeaderMap, body: bytes) -> HttpResponse:
        codec, reader, writer = self._codec, self._reader, self._writer
        assert codec is not None and reader is not None and writer is not None
        writer.write(codec.encode_request_headers(headers, end_stream=not body))
        if body:
            writer.write(codec.encode_data(body, end_stream=True))
        await writer.drain()
        status = 0
        chunks: list[bytes] = []
        while True:
            data = await reader.read(_READ_SIZE)
            for event in codec.feed(data) if data else codec.feed_eof():
                if isinstance(event, ResponseHeaders):
                    status = int(event.headers[":status"])
                    if event.end_stream:
                        return self._done(status, chunks)
                elif isinstance(event, ResponseData):
                    chunks.append(event.data)
                    if event.end_stream:
                        return self._done(status, chunks)
                elif isinstance(event, ResponseTrailers):
                    return self._done(status, chunks)
                elif isinstance(event, ProtocolError):
                    raise ConnectionError(f"upstream protocol error: {event.details}")
                else:
                    assert isinstance(event, InformationalHeaders)
            if not data:
                raise ConnectionError("upstream connection closed before the response ended")

    def _done(self, status: int, chunks: list[bytes]) -> HttpResponse:
        if self._codec is not None and not self._codec.reusable:
            self.close()
        return HttpResponse(status=status, body=b"".join(chunks))
